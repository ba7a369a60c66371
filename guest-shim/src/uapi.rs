//! The accel node's UAPI (`guest-shim/linux/include/uapi/drm/virtio_accel_drm.h`)
//! in Rust. `tests/c_layout.rs` compiles the header and checks every size and
//! offset against these definitions.

/// `DRM_COMMAND_BASE` of the DRM ioctl space.
pub const DRM_COMMAND_BASE: u32 = 0x40;
pub const DRM_VACCEL_GET_CAPS: u32 = 0x00;
pub const DRM_VACCEL_BO_CREATE: u32 = 0x01;
pub const DRM_VACCEL_BO_INFO: u32 = 0x02;
pub const DRM_VACCEL_SUBMIT: u32 = 0x03;
pub const DRM_VACCEL_BO_WAIT: u32 = 0x04;
pub const DRM_VACCEL_IOCTL: u32 = 0x05;

pub const DRM_VACCEL_BO_READ: u32 = 1 << 0;
pub const DRM_VACCEL_BO_WRITE: u32 = 1 << 1;

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'd' as u32) << 8) | (DRM_COMMAND_BASE + nr)
}

pub const DRM_IOCTL_VACCEL_GET_CAPS: u32 = ioc(
    IOC_READ | IOC_WRITE,
    DRM_VACCEL_GET_CAPS,
    size_of::<DrmVaccelCaps>(),
);
pub const DRM_IOCTL_VACCEL_BO_CREATE: u32 = ioc(
    IOC_READ | IOC_WRITE,
    DRM_VACCEL_BO_CREATE,
    size_of::<DrmVaccelBoCreate>(),
);
pub const DRM_IOCTL_VACCEL_BO_INFO: u32 = ioc(
    IOC_READ | IOC_WRITE,
    DRM_VACCEL_BO_INFO,
    size_of::<DrmVaccelBoInfo>(),
);
pub const DRM_IOCTL_VACCEL_SUBMIT: u32 =
    ioc(IOC_WRITE, DRM_VACCEL_SUBMIT, size_of::<DrmVaccelSubmit>());
pub const DRM_IOCTL_VACCEL_BO_WAIT: u32 = ioc(
    IOC_READ | IOC_WRITE,
    DRM_VACCEL_BO_WAIT,
    size_of::<DrmVaccelBoWait>(),
);
pub const DRM_IOCTL_VACCEL_IOCTL: u32 = ioc(
    IOC_READ | IOC_WRITE,
    DRM_VACCEL_IOCTL,
    size_of::<DrmVaccelIoctl>(),
);

/// `DRM_VACCEL_JOB_STATUS_*`: what became of a job (BO_WAIT's `job_status`).
pub const DRM_VACCEL_JOB_STATUS_OK: u32 = 0;
pub const DRM_VACCEL_JOB_STATUS_FAILED: u32 = 1;
pub const DRM_VACCEL_JOB_STATUS_NO_MEMORY: u32 = 2;
pub const DRM_VACCEL_JOB_STATUS_CANCELED: u32 = 3;
pub const DRM_VACCEL_JOB_STATUS_CONTEXT_LOST: u32 = 4;
pub const DRM_VACCEL_JOB_STATUS_DEVICE_LOST: u32 = 5;

/// `struct drm_vaccel_caps`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrmVaccelCaps {
    pub capset: u32,
    pub pad: u32,
    pub npu_kind: u32,
    pub npu_version: u32,
    pub cmd_format: u32,
    pub cmd_format_version: u32,
    pub max_bo_size: u64,
    pub max_cmd_size: u32,
    pub max_submit_bos: u32,
    pub max_in_syncobjs: u32,
    pub features: u32,
    pub ops: u64,
    pub name: [u8; 32],
}

/// `struct drm_vaccel_bo_create`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrmVaccelBoCreate {
    pub size: u64,
    pub flags: u32,
    pub handle: u32,
}

/// `struct drm_vaccel_bo_info`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrmVaccelBoInfo {
    pub handle: u32,
    pub pad: u32,
    pub size: u64,
    pub mmap_offset: u64,
}

/// `struct drm_vaccel_submit_bo`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrmVaccelSubmitBo {
    pub handle: u32,
    pub access: u32,
}

/// `struct drm_vaccel_submit`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrmVaccelSubmit {
    pub bos: u64,
    pub in_syncobjs: u64,
    pub cmd_bo: u32,
    pub cmd_offset: u32,
    pub cmd_size: u32,
    pub nr_bos: u32,
    pub nr_in_syncobjs: u32,
    pub out_syncobj: u32,
    pub flags: u32,
    pub pad: u32,
}

/// `struct drm_vaccel_bo_wait`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrmVaccelBoWait {
    pub handle: u32,
    pub pad: u32,
    pub timeout_ns: i64,
    pub job_status: u32,
    pub pad2: u32,
}

/// `struct drm_vaccel_ioctl`: a request of the NPU driver behind the device.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrmVaccelIoctl {
    pub cmd: u32,
    pub in_size: u32,
    pub out_size: u32,
    pub pad: u32,
    pub in_: u64,
    pub out: u64,
}
