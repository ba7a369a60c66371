//! AMD XDNA (`amdxdna`): `include/uapi/drm/amdxdna_accel.h`.
//!
//! Each host file has its own hardware contexts and syncobjs. Command
//! buffers carry GEM handles (`ERT_CMD_CHAIN`) and device addresses, so
//! the host file's handles are the ones the guest sees and nothing is
//! rewritten. Guest buffers come from guest memory (virtio `BO_CREATE` +
//! `ATTACH_BACKING`, imported as dma-bufs); the device heap, device and
//! command buffers the driver allocates itself are charged to the VM.

use super::{f, iow, iowr, Count, Dir, Ioctl, Pointer, Refused, Route, Rule, Table};

/// `AMDXDNA_BO_DEV_HEAP`, `_DEV` and `_CMD`: `_SHARE` buffers are guest
/// memory, imported.
const BO_TYPES: &[u64] = &[2, 3, 4];

/// `DRM_AMDXDNA_QUERY_AIE_METADATA`, `_AIE_VERSION`, `_CLOCK_METADATA`,
/// `_FIRMWARE_VERSION`, `GET_POWER_MODE`, `GET_FORCE_PREEMPT_STATE`,
/// `GET_FRAME_BOUNDARY_PREEMPT_STATE`. Refused: `_AIE_STATUS` (a pointer
/// inside the answer), `_SENSORS`, `_HW_CONTEXTS`, `_TELEMETRY` and
/// `QUERY_RESOURCE_INFO` (the device's current load: other VMs' work).
const INFO_PARAMS: &[u64] = &[1, 2, 3, 8, 9, 11, 13];

/// `AMDXDNA_QOS_NORMAL_PRIORITY` and `_LOW_PRIORITY`: `_REALTIME` and
/// `_HIGH` (and 0 or unknown values, which the driver treats as high)
/// would take the NPU from other VMs.
const QOS_PRIORITIES: &[u64] = &[0x200, 0x280];
const QOS_WHY: &str = "QoS priority above NORMAL: the NPU's shares between VMs are the operator's";

/// The driver copies at most a page for one query or configuration.
const MAX_PARAM_BYTES: u32 = 4096;

/// `MAX_ARG_COUNT` in the driver: arguments of one command.
const MAX_ARGS: u32 = 4095;

pub static TABLE: Table = Table {
    drivers: &["amdxdna"],
    header: "drm/amdxdna_accel.h",
    ioctls: &[
        Ioctl {
            name: "DRM_IOCTL_AMDXDNA_CREATE_HWCTX",
            code: iowr(0x00, 56),
            c_struct: "amdxdna_drm_create_hwctx",
            size: 56,
            route: Route::Ioctl,
            fields: &[
                f("ext", 0, 8, Rule::Zero("reserved")),
                f("ext_flags", 8, 8, Rule::Zero("reserved")),
                f(
                    "qos_p",
                    16,
                    8,
                    Rule::Pointer(Pointer {
                        elem_struct: "amdxdna_qos_info",
                        elem_fields: &[f("priority", 20, 4, Rule::OneOf(QOS_PRIORITIES, QOS_WHY))],
                        ..Pointer::values(Count::Fixed(1), 24, 1, Dir::In, false)
                    }),
                ),
                f("umq_bo", 24, 4, Rule::Handle),
                f("log_buf_bo", 28, 4, Rule::Handle),
                f(
                    "umq_doorbell",
                    44,
                    4,
                    Rule::Scrub("an offset in the host file's doorbell space"),
                ),
            ],
        },
        Ioctl {
            name: "DRM_IOCTL_AMDXDNA_DESTROY_HWCTX",
            code: iowr(0x01, 8),
            c_struct: "amdxdna_drm_destroy_hwctx",
            size: 8,
            route: Route::Ioctl,
            fields: &[
                f("handle", 0, 4, Rule::Handle),
                f("pad", 4, 4, Rule::Zero("padding")),
            ],
        },
        Ioctl {
            name: "DRM_IOCTL_AMDXDNA_CONFIG_HWCTX",
            code: iowr(0x02, 24),
            c_struct: "amdxdna_drm_config_hwctx",
            size: 24,
            route: Route::Ioctl,
            fields: &[
                f("handle", 0, 4, Rule::Handle),
                f(
                    "param_type",
                    4,
                    4,
                    Rule::OneOf(
                        &[0],
                        "only DRM_AMDXDNA_HWCTX_CONFIG_CU: the debug buffers are host memory",
                    ),
                ),
                f(
                    "param_val",
                    8,
                    8,
                    Rule::Pointer(Pointer::values(
                        Count::Field {
                            name: "param_val_size",
                            off: 16,
                            width: 4,
                        },
                        1,
                        MAX_PARAM_BYTES,
                        Dir::In,
                        false,
                    )),
                ),
                f("pad", 20, 4, Rule::Zero("padding")),
            ],
        },
        Ioctl {
            name: "DRM_IOCTL_AMDXDNA_CREATE_BO",
            code: iowr(0x03, 32),
            c_struct: "amdxdna_drm_create_bo",
            size: 32,
            route: Route::Ioctl,
            fields: &[
                f("flags", 0, 8, Rule::Zero("reserved")),
                f(
                    "vaddr",
                    8,
                    8,
                    Rule::Zero("host virtual addresses or a host fd (va_tbl)"),
                ),
                f("size", 16, 8, Rule::HostBytes),
                f(
                    "type",
                    24,
                    4,
                    Rule::OneOf(
                        BO_TYPES,
                        "shared buffers are guest memory (virtio BO_CREATE and ATTACH_BACKING)",
                    ),
                ),
            ],
        },
        Ioctl {
            name: "DRM_IOCTL_AMDXDNA_GET_BO_INFO",
            code: iowr(0x04, 48),
            c_struct: "amdxdna_drm_get_bo_info",
            size: 48,
            route: Route::Ioctl,
            fields: &[
                f("ext", 0, 8, Rule::Zero("reserved")),
                f("ext_flags", 8, 8, Rule::Zero("reserved")),
                f("handle", 16, 4, Rule::Handle),
                f("pad", 20, 4, Rule::Zero("padding")),
                f(
                    "map_offset",
                    24,
                    8,
                    Rule::Scrub("the host file's mmap offset"),
                ),
                f("vaddr", 32, 8, Rule::Scrub("a host virtual address")),
            ],
        },
        Ioctl {
            name: "DRM_IOCTL_AMDXDNA_SYNC_BO",
            code: iowr(0x05, 24),
            c_struct: "amdxdna_drm_sync_bo",
            size: 24,
            route: Route::Ioctl,
            fields: &[
                f("handle", 0, 4, Rule::Handle),
                f(
                    "direction",
                    4,
                    4,
                    Rule::OneOf(&[0, 1], "not a SYNC_DIRECT_*"),
                ),
            ],
        },
        Ioctl {
            name: "DRM_IOCTL_AMDXDNA_EXEC_CMD",
            code: iowr(0x06, 56),
            c_struct: "amdxdna_drm_exec_cmd",
            size: 56,
            route: Route::Submit,
            fields: &[
                f("ext", 0, 8, Rule::Zero("reserved")),
                f("ext_flags", 8, 8, Rule::Zero("reserved")),
                f("hwctx", 16, 4, Rule::Handle),
                f(
                    "type",
                    20,
                    4,
                    Rule::OneOf(
                        &[0],
                        "only AMDXDNA_CMD_SUBMIT_EXEC_BUF: dependencies are the job's fences",
                    ),
                ),
                f("cmd_handles", 24, 8, Rule::Handle),
                f(
                    "args",
                    32,
                    8,
                    Rule::Pointer(Pointer::values(
                        Count::Field {
                            name: "arg_count",
                            off: 44,
                            width: 4,
                        },
                        4,
                        MAX_ARGS,
                        Dir::In,
                        true,
                    )),
                ),
                f(
                    "cmd_count",
                    40,
                    4,
                    Rule::OneOf(
                        &[1],
                        "one command per job (a chain is one ERT_CMD_CHAIN command)",
                    ),
                ),
            ],
        },
        Ioctl {
            name: "DRM_IOCTL_AMDXDNA_GET_INFO",
            code: iowr(0x07, 16),
            c_struct: "amdxdna_drm_get_info",
            size: 16,
            route: Route::Ioctl,
            fields: &[
                f(
                    "param",
                    0,
                    4,
                    Rule::OneOf(
                        INFO_PARAMS,
                        "a query that shows other VMs' work or host pointers",
                    ),
                ),
                f(
                    "buffer",
                    8,
                    8,
                    Rule::Pointer(Pointer::values(
                        Count::Field {
                            name: "buffer_size",
                            off: 4,
                            width: 4,
                        },
                        1,
                        MAX_PARAM_BYTES,
                        Dir::InOut,
                        false,
                    )),
                ),
            ],
        },
    ],
    refused: &[
        Refused {
            name: "DRM_IOCTL_AMDXDNA_SET_STATE",
            code: iowr(0x08, 16),
            why: "sets device-wide state (power mode, preemption) and needs CAP_SYS_ADMIN",
        },
        Refused {
            name: "DRM_IOCTL_AMDXDNA_GET_ARRAY",
            code: iowr(0x0a, 24),
            why: "lists every context of the device, or another process's usage by pid",
        },
        Refused {
            name: "DRM_IOCTL_AMDXDNA_WAIT_CMD",
            code: iow(0x09, 16),
            why: "blocks the caller (timeout 0 waits for ever): a guest waits on the job's fence",
        },
    ],
};
