//! The NPU driver interface the device model drives. It knows buffers as
//! memory ([`BoMem`]) and command streams as bytes; nothing about virtio.

pub mod sim;

use std::any::Any;
use std::time::Instant;

use crate::memory::BoMem;

/// What `GET_CAPS` reports about the NPU.
#[derive(Debug, Clone)]
pub struct NpuInfo {
    pub kind: u32,
    pub version: u32,
    pub name: String,
    pub cmd_format: u32,
    pub cmd_format_version: u32,
    pub ops: u64,
}

/// A command stream the driver has validated, ready to run.
pub struct Prepared {
    pub job: Box<dyn Any + Send + Sync>,
    /// Host memory the job needs while it runs, beyond the guest's buffers;
    /// the device model refuses jobs above its per-job limit.
    pub work_bytes: u64,
}

/// Per-context counters a driver may report through an ioctl.
#[derive(Debug, Clone, Copy, Default)]
pub struct CtxCounters {
    pub jobs_completed: u64,
    pub jobs_failed: u64,
    pub device_time_ns: u64,
    pub ops_executed: u64,
}

/// Result of a job the driver ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecReport {
    pub ops: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriverError {
    #[error("invalid command stream: {0}")]
    Invalid(String),
    #[error("access outside a buffer: {0}")]
    OutOfRange(String),
    #[error("job failed: {0}")]
    Failed(String),
    #[error("job exceeded its deadline")]
    Hang,
    #[error("the host could not allocate the job's working memory")]
    NoMemory,
    #[error("the NPU failed internally: {0}")]
    Internal(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IoctlError {
    #[error("ioctl {0:#x} is not allowlisted")]
    Unsupported(u32),
    #[error("ioctl {cmd:#x}: {why}")]
    Invalid { cmd: u32, why: &'static str },
}

/// An NPU the daemon forwards jobs to.
pub trait NpuDriver: Send + Sync {
    fn info(&self) -> NpuInfo;

    /// Validates a command stream (already copied out of guest memory)
    /// against the job's buffers: `bos[i]` is buffer `i`'s size and access.
    fn prepare(&self, cmd: &[u8], bos: &[(u64, u32)]) -> Result<Prepared, DriverError>;

    /// Runs a prepared job on the job's buffers. Must give up with
    /// [`DriverError::Hang`] once `deadline` has passed.
    fn execute(
        &self,
        job: &Prepared,
        bos: &[BoMem<'_>],
        deadline: Instant,
    ) -> Result<ExecReport, DriverError>;

    /// A driver-specific request, allowlisted by the driver. `out_max` is
    /// the room the guest gave for the answer.
    fn ioctl(
        &self,
        cmd: u32,
        input: &[u8],
        out_max: usize,
        ctx: &CtxCounters,
    ) -> Result<Vec<u8>, IoctlError>;
}
