//! Intel NPU (`intel_vpu`): `include/uapi/drm/ivpu_accel.h`.
//!
//! Each host file is an NPU context with its own MMU address space. Guest
//! buffers come from guest memory (virtio `BO_CREATE` + `ATTACH_BACKING`,
//! imported as dma-bufs); jobs come as the command stream of a virtio
//! `SUBMIT`; completion is the job's fence, never a wait in the device.

use super::{f, iow, iowr, Count, Dir, Ioctl, Pointer, Refused, Route, Rule, Table};

/// `JOB_MAX_BUFFER_COUNT` in the driver.
const MAX_BUFFERS: u32 = 65535;

/// `DRM_IVPU_PARAM_*` a guest may read: those about the NPU or the
/// caller's own context. Refused: `ENGINE_HEARTBEAT` (9, a firmware call
/// each time) and `UNIQUE_INFERENCE_ID` (10, a device-wide counter that
/// shows other VMs' work).
const PARAMS: &[u64] = &[0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 14];

/// `DRM_IVPU_JOB_PRIORITY_DEFAULT`, `_IDLE` and `_NORMAL`: `_FOCUS` and
/// `_REALTIME` would take the NPU from other VMs, whose share is the
/// operator's to set.
const PRIORITIES: &[u64] = &[0, 1, 2];
const PRIORITY_WHY: &str = "priority above NORMAL: the NPU's shares between VMs are the operator's";

const BUFFERS: Rule = Rule::Pointer(Pointer::values(
    Count::Field {
        name: "buffer_count",
        off: 8,
        width: 4,
    },
    4,
    MAX_BUFFERS,
    Dir::In,
    true,
));

pub static TABLE: Table = Table {
    drivers: &["intel_vpu", "intel_npu"],
    header: "drm/ivpu_accel.h",
    ioctls: &[
        Ioctl {
            name: "DRM_IOCTL_IVPU_GET_PARAM",
            code: iowr(0x00, 16),
            c_struct: "drm_ivpu_param",
            size: 16,
            route: Route::Ioctl,
            fields: &[f(
                "param",
                0,
                4,
                Rule::OneOf(PARAMS, "not a readable DRM_IVPU_PARAM"),
            )],
        },
        Ioctl {
            name: "DRM_IOCTL_IVPU_BO_INFO",
            code: iowr(0x03, 32),
            c_struct: "drm_ivpu_bo_info",
            size: 32,
            route: Route::Ioctl,
            fields: &[
                f("handle", 0, 4, Rule::Handle),
                f(
                    "mmap_offset",
                    16,
                    8,
                    Rule::Scrub("the host file's mmap offset"),
                ),
            ],
        },
        Ioctl {
            name: "DRM_IOCTL_IVPU_SUBMIT",
            code: iow(0x05, 32),
            c_struct: "drm_ivpu_submit",
            size: 32,
            route: Route::Submit,
            fields: &[
                f("buffers_ptr", 0, 8, BUFFERS),
                f(
                    "engine",
                    12,
                    4,
                    Rule::OneOf(&[0], "only DRM_IVPU_ENGINE_COMPUTE"),
                ),
                f("flags", 16, 4, Rule::Zero("reserved")),
                f("priority", 24, 4, Rule::OneOf(PRIORITIES, PRIORITY_WHY)),
            ],
        },
        Ioctl {
            name: "DRM_IOCTL_IVPU_BO_WAIT",
            code: iowr(0x06, 24),
            c_struct: "drm_ivpu_bo_wait",
            size: 24,
            route: Route::Ioctl,
            fields: &[
                f("handle", 0, 4, Rule::Handle),
                f("flags", 4, 4, Rule::Zero("reserved")),
                f(
                    "timeout_ns",
                    8,
                    8,
                    Rule::Zero("the device does not wait: a guest waits on the job's fence"),
                ),
                f("pad", 20, 4, Rule::Zero("padding")),
            ],
        },
        Ioctl {
            name: "DRM_IOCTL_IVPU_CMDQ_CREATE",
            code: iowr(0x0b, 12),
            c_struct: "drm_ivpu_cmdq_create",
            size: 12,
            route: Route::Ioctl,
            fields: &[
                f("priority", 4, 4, Rule::OneOf(PRIORITIES, PRIORITY_WHY)),
                f(
                    "flags",
                    8,
                    4,
                    Rule::Zero("DRM_IVPU_CMDQ_FLAG_TURBO raises the whole NPU's power"),
                ),
            ],
        },
        Ioctl {
            name: "DRM_IOCTL_IVPU_CMDQ_DESTROY",
            code: iow(0x0c, 4),
            c_struct: "drm_ivpu_cmdq_destroy",
            size: 4,
            route: Route::Ioctl,
            fields: &[f("cmdq_id", 0, 4, Rule::Handle)],
        },
        Ioctl {
            name: "DRM_IOCTL_IVPU_CMDQ_SUBMIT",
            code: iow(0x0d, 32),
            c_struct: "drm_ivpu_cmdq_submit",
            size: 32,
            route: Route::Submit,
            fields: &[
                f("buffers_ptr", 0, 8, BUFFERS),
                f("cmdq_id", 12, 4, Rule::Handle),
                f("flags", 16, 4, Rule::Zero("reserved")),
                f("reserved", 28, 4, Rule::Zero("reserved")),
            ],
        },
    ],
    refused: &[
        Refused {
            name: "DRM_IOCTL_IVPU_SET_PARAM",
            code: iow(0x01, 16),
            why: "sets the context's priority, which is the operator's",
        },
        Refused {
            name: "DRM_IOCTL_IVPU_BO_CREATE",
            code: iowr(0x02, 24),
            why: "host memory outside the VM's quota: buffers are guest memory (virtio BO_CREATE and ATTACH_BACKING)",
        },
        Refused {
            name: "DRM_IOCTL_IVPU_METRIC_STREAMER_START",
            code: iowr(0x07, 32),
            why: "device-wide telemetry shows other VMs' work",
        },
        Refused {
            name: "DRM_IOCTL_IVPU_METRIC_STREAMER_STOP",
            code: iow(0x08, 8),
            why: "device-wide telemetry shows other VMs' work",
        },
        Refused {
            name: "DRM_IOCTL_IVPU_METRIC_STREAMER_GET_DATA",
            code: iowr(0x09, 32),
            why: "device-wide telemetry shows other VMs' work",
        },
        Refused {
            name: "DRM_IOCTL_IVPU_METRIC_STREAMER_GET_INFO",
            code: iowr(0x0a, 32),
            why: "device-wide telemetry shows other VMs' work",
        },
        Refused {
            name: "DRM_IOCTL_IVPU_BO_CREATE_FROM_USERPTR",
            code: iowr(0x0e, 32),
            why: "takes a host virtual address",
        },
    ],
};
