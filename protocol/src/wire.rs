//! Wire structs and constants (specification sections 2–5).
//!
//! Field names match `guest-shim/linux/include/uapi/linux/virtio_accel.h`
//! (a Rust field `type_` is the C field `type`); a test compiles the header
//! and compares every size and offset.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Provisional virtio device ID (not assigned by OASIS; see spec 1).
pub const VIRTIO_ACCEL_DEVICE_ID: u32 = 59;
/// Device ID the tests borrow under QEMU 11.1, whose generic vhost-user
/// device only accepts IDs from its own name table.
pub const VIRTIO_ACCEL_TEST_DEVICE_ID: u32 = 39;

/// Virtqueue indices.
pub const VIRTIO_ACCEL_VQ_CONTROL: u16 = 0;
pub const VIRTIO_ACCEL_VQ_SUBMIT: u16 = 1;
pub const VIRTIO_ACCEL_VQ_EVENT: u16 = 2;
pub const VIRTIO_ACCEL_NUM_QUEUES: usize = 3;

/// Feature bits (device-specific range 0–23).
pub const VIRTIO_ACCEL_F_INLINE_CMD: u32 = 0;
pub const VIRTIO_ACCEL_F_IOCTL: u32 = 1;
pub const VIRTIO_ACCEL_F_CROSS_CTX_FENCE: u32 = 2;
pub const VIRTIO_ACCEL_F_SHM_BLOB: u32 = 3;
/// The configuration carries the per-driver quotas (`max_total_bo_bytes`,
/// `max_job_memory`, `max_bos`, `max_backing_entries`) after `padding`.
pub const VIRTIO_ACCEL_F_QUOTAS: u32 = 4;
/// Backing entries must be page-aligned: address and length multiples of
/// [`VIRTIO_ACCEL_PAGE_SIZE`] (a device forwarding to a host driver that
/// imports guest memory page by page).
pub const VIRTIO_ACCEL_F_PAGE_ALIGNED: u32 = 5;
/// `BO_INFO` answers [`RespBoInfoExt`]: the buffer's address in the NPU's
/// address space and its handle in the NPU driver.
pub const VIRTIO_ACCEL_F_DEVICE_ADDR: u32 = 6;
/// The page size of `VIRTIO_ACCEL_F_PAGE_ALIGNED`.
pub const VIRTIO_ACCEL_PAGE_SIZE: u64 = 4096;

/// Request types.
pub const VIRTIO_ACCEL_CMD_GET_CAPS: u32 = 0x0100;
pub const VIRTIO_ACCEL_CMD_CTX_CREATE: u32 = 0x0101;
pub const VIRTIO_ACCEL_CMD_CTX_DESTROY: u32 = 0x0102;
pub const VIRTIO_ACCEL_CMD_BO_CREATE: u32 = 0x0200;
pub const VIRTIO_ACCEL_CMD_BO_DESTROY: u32 = 0x0201;
pub const VIRTIO_ACCEL_CMD_BO_INFO: u32 = 0x0202;
pub const VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING: u32 = 0x0203;
pub const VIRTIO_ACCEL_CMD_BO_DETACH_BACKING: u32 = 0x0204;
pub const VIRTIO_ACCEL_CMD_BO_MAP_SHM: u32 = 0x0205;
pub const VIRTIO_ACCEL_CMD_BO_UNMAP_SHM: u32 = 0x0206;
pub const VIRTIO_ACCEL_CMD_FENCE_POLL: u32 = 0x0300;
pub const VIRTIO_ACCEL_CMD_IOCTL: u32 = 0x0400;
pub const VIRTIO_ACCEL_CMD_SUBMIT: u32 = 0x0500;

/// Every request type with its specification name.
pub const REQUEST_TYPES: &[(u32, &str)] = &[
    (VIRTIO_ACCEL_CMD_GET_CAPS, "VIRTIO_ACCEL_CMD_GET_CAPS"),
    (VIRTIO_ACCEL_CMD_CTX_CREATE, "VIRTIO_ACCEL_CMD_CTX_CREATE"),
    (VIRTIO_ACCEL_CMD_CTX_DESTROY, "VIRTIO_ACCEL_CMD_CTX_DESTROY"),
    (VIRTIO_ACCEL_CMD_BO_CREATE, "VIRTIO_ACCEL_CMD_BO_CREATE"),
    (VIRTIO_ACCEL_CMD_BO_DESTROY, "VIRTIO_ACCEL_CMD_BO_DESTROY"),
    (VIRTIO_ACCEL_CMD_BO_INFO, "VIRTIO_ACCEL_CMD_BO_INFO"),
    (
        VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING,
        "VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING",
    ),
    (
        VIRTIO_ACCEL_CMD_BO_DETACH_BACKING,
        "VIRTIO_ACCEL_CMD_BO_DETACH_BACKING",
    ),
    (VIRTIO_ACCEL_CMD_BO_MAP_SHM, "VIRTIO_ACCEL_CMD_BO_MAP_SHM"),
    (
        VIRTIO_ACCEL_CMD_BO_UNMAP_SHM,
        "VIRTIO_ACCEL_CMD_BO_UNMAP_SHM",
    ),
    (VIRTIO_ACCEL_CMD_FENCE_POLL, "VIRTIO_ACCEL_CMD_FENCE_POLL"),
    (VIRTIO_ACCEL_CMD_IOCTL, "VIRTIO_ACCEL_CMD_IOCTL"),
    (VIRTIO_ACCEL_CMD_SUBMIT, "VIRTIO_ACCEL_CMD_SUBMIT"),
];

/// Response types (the `type` field of a response header).
pub const VIRTIO_ACCEL_RESP_OK: u32 = 0x1000;
pub const VIRTIO_ACCEL_RESP_ERR_INVALID: u32 = 0x1100;
pub const VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE: u32 = 0x1101;
pub const VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE: u32 = 0x1102;
pub const VIRTIO_ACCEL_RESP_ERR_NO_MEMORY: u32 = 0x1103;
pub const VIRTIO_ACCEL_RESP_ERR_QUOTA: u32 = 0x1104;
pub const VIRTIO_ACCEL_RESP_ERR_BUSY: u32 = 0x1105;
pub const VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST: u32 = 0x1106;
pub const VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED: u32 = 0x1107;
pub const VIRTIO_ACCEL_RESP_ERR_JOB_FAILED: u32 = 0x1108;
pub const VIRTIO_ACCEL_RESP_ERR_CANCELED: u32 = 0x1109;

/// Every response status with its specification name.
pub const RESPONSE_STATUSES: &[(u32, &str)] = &[
    (VIRTIO_ACCEL_RESP_OK, "VIRTIO_ACCEL_RESP_OK"),
    (
        VIRTIO_ACCEL_RESP_ERR_INVALID,
        "VIRTIO_ACCEL_RESP_ERR_INVALID",
    ),
    (
        VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE,
        "VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE",
    ),
    (
        VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE,
        "VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE",
    ),
    (
        VIRTIO_ACCEL_RESP_ERR_NO_MEMORY,
        "VIRTIO_ACCEL_RESP_ERR_NO_MEMORY",
    ),
    (VIRTIO_ACCEL_RESP_ERR_QUOTA, "VIRTIO_ACCEL_RESP_ERR_QUOTA"),
    (VIRTIO_ACCEL_RESP_ERR_BUSY, "VIRTIO_ACCEL_RESP_ERR_BUSY"),
    (
        VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST,
        "VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST",
    ),
    (
        VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED,
        "VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED",
    ),
    (
        VIRTIO_ACCEL_RESP_ERR_JOB_FAILED,
        "VIRTIO_ACCEL_RESP_ERR_JOB_FAILED",
    ),
    (
        VIRTIO_ACCEL_RESP_ERR_CANCELED,
        "VIRTIO_ACCEL_RESP_ERR_CANCELED",
    ),
];

/// Event types (eventq).
pub const VIRTIO_ACCEL_EVENT_CONTEXT_LOST: u32 = 0x2000;
/// Why a context was lost.
pub const VIRTIO_ACCEL_LOST_HANG: u32 = 1;
pub const VIRTIO_ACCEL_LOST_RESET: u32 = 2;
pub const VIRTIO_ACCEL_LOST_DEVICE_ERROR: u32 = 3;

/// Context priorities.
pub const VIRTIO_ACCEL_PRIORITY_LOW: u32 = 0;
pub const VIRTIO_ACCEL_PRIORITY_NORMAL: u32 = 1;
pub const VIRTIO_ACCEL_PRIORITY_HIGH: u32 = 2;

/// `virtio_accel_bo_create.flags`: the host allocates the memory and maps it
/// into the shared memory region (needs `VIRTIO_ACCEL_F_SHM_BLOB`).
pub const VIRTIO_ACCEL_BO_F_HOST: u32 = 1 << 0;
pub const VIRTIO_ACCEL_BO_F_ALL: u32 = VIRTIO_ACCEL_BO_F_HOST;

/// `virtio_accel_resp_bo_info.state` bits.
pub const VIRTIO_ACCEL_BO_STATE_BACKED: u32 = 1 << 0;
pub const VIRTIO_ACCEL_BO_STATE_MAPPED: u32 = 1 << 1;
pub const VIRTIO_ACCEL_BO_STATE_BUSY: u32 = 1 << 2;

/// `virtio_accel_submit.flags`: the command stream follows the fence list
/// in the request itself (needs `VIRTIO_ACCEL_F_INLINE_CMD`).
pub const VIRTIO_ACCEL_SUBMIT_F_INLINE: u32 = 1 << 0;
pub const VIRTIO_ACCEL_SUBMIT_F_ALL: u32 = VIRTIO_ACCEL_SUBMIT_F_INLINE;

/// `virtio_accel_submit_bo.access` bits.
pub const VIRTIO_ACCEL_ACCESS_READ: u32 = 1 << 0;
pub const VIRTIO_ACCEL_ACCESS_WRITE: u32 = 1 << 1;
pub const VIRTIO_ACCEL_ACCESS_ALL: u32 = VIRTIO_ACCEL_ACCESS_READ | VIRTIO_ACCEL_ACCESS_WRITE;

/// NPU kinds reported by `GET_CAPS`.
pub const VIRTIO_ACCEL_NPU_SIM: u32 = 1;
pub const VIRTIO_ACCEL_NPU_IVPU: u32 = 2;
pub const VIRTIO_ACCEL_NPU_AMDXDNA: u32 = 3;
pub const VIRTIO_ACCEL_NPU_OTHER: u32 = 0xffff;

/// Command-stream formats reported by `GET_CAPS`.
pub const VIRTIO_ACCEL_CMD_FORMAT_SNPU: u32 = 1;
pub const VIRTIO_ACCEL_CMD_FORMAT_NATIVE: u32 = 2;

/// Hard protocol ceilings: a device never advertises more than these, and
/// the decoder rejects counts above them before allocating anything.
pub const VIRTIO_ACCEL_MAX_SG_ENTRIES: u32 = 1 << 18;
pub const VIRTIO_ACCEL_MAX_SUBMIT_BOS: u32 = 4096;
pub const VIRTIO_ACCEL_MAX_IN_FENCES: u32 = 256;
pub const VIRTIO_ACCEL_MAX_INLINE_CMD: u32 = 64 * 1024;
pub const VIRTIO_ACCEL_MAX_IOCTL_PAYLOAD: u32 = 4096;

/// Common header of every request, response and event (16 bytes).
///
/// In a request `type_` is a `VIRTIO_ACCEL_CMD_*`, in a response a
/// `VIRTIO_ACCEL_RESP_*`, in an event a `VIRTIO_ACCEL_EVENT_*`.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct Hdr {
    pub type_: U32,
    pub flags: U32,
    pub ctx_id: U32,
    pub padding: U32,
}

/// Device configuration space (read-only, initialization-time facts).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct Config {
    pub num_capsets: U32,
    pub max_contexts: U32,
    pub max_bo_size: U64,
    pub max_cmd_size: U32,
    pub max_inline_cmd_size: U32,
    pub max_submit_bos: U32,
    pub max_in_fences: U32,
    pub max_sg_entries: U32,
    pub max_jobs_in_flight: U32,
    pub shm_id: u8,
    pub padding: [u8; 7],
    /// With `VIRTIO_ACCEL_F_QUOTAS`: sum of the sizes of the driver's BOs.
    pub max_total_bo_bytes: U64,
    /// With `VIRTIO_ACCEL_F_QUOTAS`: working memory of one job.
    pub max_job_memory: U64,
    /// With `VIRTIO_ACCEL_F_QUOTAS`: BOs the driver may hold at once.
    pub max_bos: U32,
    /// With `VIRTIO_ACCEL_F_QUOTAS`: backing entries of all the driver's
    /// BOs together.
    pub max_backing_entries: U32,
}

/// `VIRTIO_ACCEL_CMD_GET_CAPS` request.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct GetCaps {
    pub hdr: Hdr,
    pub capset: U32,
    pub padding: U32,
}

/// `VIRTIO_ACCEL_CMD_GET_CAPS` response.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct RespCaps {
    pub hdr: Hdr,
    pub npu_kind: U32,
    pub npu_version: U32,
    pub cmd_format: U32,
    pub cmd_format_version: U32,
    pub max_bo_size: U64,
    pub max_contexts: U32,
    pub max_jobs_in_flight: U32,
    pub max_cmd_size: U32,
    pub max_inline_cmd_size: U32,
    pub max_submit_bos: U32,
    pub max_in_fences: U32,
    pub max_sg_entries: U32,
    pub padding: U32,
    pub ops: U64,
    pub name: [u8; 32],
}

/// `VIRTIO_ACCEL_CMD_CTX_CREATE` request.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct CtxCreate {
    pub hdr: Hdr,
    pub priority: U32,
    pub padding: U32,
}

/// `BO_CREATE` request.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct BoCreate {
    pub hdr: Hdr,
    pub size: U64,
    pub flags: U32,
    pub padding: U32,
}

/// `BO_CREATE` response.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct RespBoCreate {
    pub hdr: Hdr,
    pub bo_handle: U32,
    pub padding: U32,
    pub size: U64,
}

/// Request naming one buffer object: `BO_DESTROY`, `BO_INFO`,
/// `BO_DETACH_BACKING`, `BO_MAP_SHM`, `BO_UNMAP_SHM`.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct BoReq {
    pub hdr: Hdr,
    pub bo_handle: U32,
    pub padding: U32,
}

/// `BO_INFO` response.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct RespBoInfo {
    pub hdr: Hdr,
    pub bo_handle: U32,
    pub flags: U32,
    pub size: U64,
    pub shm_offset: U64,
    pub nr_entries: U32,
    pub state: U32,
}

/// `BO_INFO` response with `VIRTIO_ACCEL_F_DEVICE_ADDR`: [`RespBoInfo`],
/// then where the NPU sees the buffer.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct RespBoInfoExt {
    pub base: RespBoInfo,
    /// The buffer's address in the NPU's address space; zero if it has
    /// none (no backing yet, or an NPU without one).
    pub device_addr: U64,
    /// The NPU driver's handle of the buffer in the context's host file
    /// (what native command streams and driver ioctls name); zero if none.
    pub device_handle: U32,
    pub padding: U32,
}

/// `BO_ATTACH_BACKING` request; followed by `nr_entries` [`MemEntry`].
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct BoAttachBacking {
    pub hdr: Hdr,
    pub bo_handle: U32,
    pub nr_entries: U32,
}

/// One guest-physical range of a buffer's backing.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct MemEntry {
    pub addr: U64,
    pub length: U32,
    pub padding: U32,
}

/// `BO_MAP_SHM` response.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct RespMapShm {
    pub hdr: Hdr,
    pub shm_offset: U64,
}

/// `FENCE_POLL` request.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct FencePoll {
    pub hdr: Hdr,
    pub seqno: U64,
}

/// `FENCE_POLL` response.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct RespFence {
    pub hdr: Hdr,
    pub completed: U64,
}

/// `IOCTL` request; followed by `in_size` payload bytes.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct Ioctl {
    pub hdr: Hdr,
    pub cmd: U32,
    pub in_size: U32,
    pub out_size: U32,
    pub padding: U32,
}

/// `IOCTL` response; followed by `out_size` payload bytes.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct RespIoctl {
    pub hdr: Hdr,
    pub out_size: U32,
    pub padding: U32,
}

/// `SUBMIT` request; followed by `nr_bos` [`SubmitBo`], `nr_in_fences`
/// [`FenceRef`] and, with `VIRTIO_ACCEL_SUBMIT_F_INLINE`, `cmd_size` bytes of
/// command stream.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct Submit {
    pub hdr: Hdr,
    pub out_fence: U64,
    pub cmd_bo_handle: U32,
    pub flags: U32,
    pub cmd_offset: U64,
    pub cmd_size: U32,
    pub nr_bos: U32,
    pub nr_in_fences: U32,
    pub padding: U32,
}

/// A buffer object a job touches, with the access it needs.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct SubmitBo {
    pub bo_handle: U32,
    pub access: U32,
}

/// A point on a context's fence timeline.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct FenceRef {
    pub ctx_id: U32,
    pub padding: U32,
    pub seqno: U64,
}

/// `SUBMIT` response, returned when the job's out-fence signals.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct RespSubmit {
    pub hdr: Hdr,
    pub fence: U64,
    pub device_time_ns: U64,
}

/// An event on the event queue.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct Event {
    pub hdr: Hdr,
    pub fence: U64,
    pub reason: U32,
    pub padding: U32,
}

macro_rules! assert_size {
    ($($t:ty => $n:expr),* $(,)?) => { $(const _: () = assert!(core::mem::size_of::<$t>() == $n);)* };
}
assert_size! {
    Hdr => 16, Config => 72, GetCaps => 24, RespCaps => 112, CtxCreate => 24,
    BoCreate => 32, RespBoCreate => 32, BoReq => 24, RespBoInfo => 48, RespBoInfoExt => 64,
    BoAttachBacking => 24, MemEntry => 16, RespMapShm => 24, FencePoll => 24,
    RespFence => 24, Ioctl => 32, RespIoctl => 24, Submit => 56, SubmitBo => 8,
    FenceRef => 16, RespSubmit => 32, Event => 32,
}

impl Hdr {
    /// A header with the given type and context.
    pub fn new(type_: u32, ctx_id: u32) -> Self {
        Hdr {
            type_: type_.into(),
            ctx_id: ctx_id.into(),
            ..Default::default()
        }
    }
}

/// Name of a request type, for logs.
pub fn request_name(type_: u32) -> &'static str {
    REQUEST_TYPES
        .iter()
        .find(|(t, _)| *t == type_)
        .map_or("UNKNOWN", |(_, n)| n)
}

/// Name of a response status, for logs and test messages.
pub fn status_name(status: u32) -> &'static str {
    RESPONSE_STATUSES
        .iter()
        .find(|(t, _)| *t == status)
        .map_or("UNKNOWN", |(_, n)| n)
}
