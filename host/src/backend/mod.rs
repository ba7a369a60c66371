//! The NPU backend interface: what the device model and the scheduler need
//! from an accelerator, shaped as hardware is.
//!
//! - A backend context is created and destroyed with each guest context; it
//!   is the unit of isolation (a host driver's open file, an NPU address
//!   space).
//! - Buffers are imported once, at `BO_ATTACH_BACKING`: the backend gets the
//!   guest-physical ranges and the guest memory to map them, and may report
//!   a device address back.
//! - A command stream is validated by [`Backend::prepare`] into a typed job;
//!   [`Backend::submit`] returns at once. The backend runs jobs on its own
//!   engines and reports every change through [`Backend::take_completions`],
//!   signalled on [`Backend::completion_fd`].
//! - A running job can be asked to stop at its next preemption point
//!   ([`Backend::preempt`], it is then [`Outcome::Yielded`] and can be
//!   [`Backend::resume`]d) or to stop for good ([`Backend::abort`]).
//! - A backend reports a context it lost and why ([`Outcome::Lost`]).
//!
//! Nothing here knows virtio: buffers are guest memory ranges, command
//! streams are bytes, and jobs are named by the caller's [`JobId`].

pub mod accel;
pub mod sim;

use std::os::fd::RawFd;
use std::time::Duration;

use crate::memory::{Backing, VmMemory};

/// The caller's name for a submitted job, unique while the job lives.
pub type JobId = u64;

/// What `GET_CAPS` reports about the NPU, and how the scheduler may use it.
#[derive(Debug, Clone)]
pub struct Caps {
    pub kind: u32,
    pub version: u32,
    pub name: String,
    pub cmd_format: u32,
    pub cmd_format_version: u32,
    pub ops: u64,
    /// Jobs the backend runs at once (engines); the scheduler keeps at most
    /// this many submitted and not yielded.
    pub engines: usize,
    /// Whether jobs stop at [`Backend::preempt`]; without it the scheduler
    /// shares the NPU only at job boundaries.
    pub preemptible: bool,
    /// Whether the backend imports buffers page by page (a host driver's
    /// buffers over the guest's pages): backing entries must then be
    /// page-aligned (`VIRTIO_ACCEL_F_PAGE_ALIGNED`).
    pub page_aligned: bool,
}

/// A validated job, ready to submit.
pub struct Prepared<J> {
    pub job: J,
    /// Host memory the job needs while it runs, beyond the guest's buffers;
    /// the device model refuses jobs above its per-job limit.
    pub work_bytes: u64,
}

/// A buffer the backend imported.
pub struct Imported<B> {
    pub buffer: B,
    /// The buffer's address in the NPU's address space, if it has one.
    pub device_addr: Option<u64>,
}

/// Why a request to the backend was refused. Nothing changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("access outside a buffer: {0}")]
    OutOfRange(String),
    #[error("the host could not allocate: {0}")]
    NoMemory(String),
    #[error("the NPU refused: {0}")]
    Device(String),
    /// The backend cannot serve this at all (memory it cannot hand to its
    /// host driver, a buffer above the host's import limits).
    #[error("not supported by this NPU: {0}")]
    Unsupported(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IoctlError {
    #[error("ioctl {0:#x} is not allowlisted")]
    Unsupported(u32),
    #[error("ioctl {cmd:#x}: {why}")]
    Invalid { cmd: u32, why: &'static str },
    /// The host driver refused the call (its errno).
    #[error("ioctl {cmd:#x}: the host driver answered errno {errno}")]
    Host { cmd: u32, errno: i32 },
}

/// Why a backend lost a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// The job stopped making progress (the backend's own hang detection).
    Hang,
    /// The NPU failed.
    DeviceError,
    /// The NPU failed as a whole and must be reset: every context of the
    /// job's VM is lost (`_DEVICE_ERROR`) and its driver is told to reset
    /// the device.
    NeedsReset,
}

/// What became of a submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran to its end; `ops` is what it executed.
    Done { ops: u64 },
    /// It ran and failed: its out-fence signals with the error.
    Failed(String),
    /// The host could not allocate the job's working memory.
    NoMemory,
    /// It stopped at a preemption point and waits for [`Backend::resume`].
    Yielded,
    /// It was aborted and never writes again.
    Aborted,
    /// The backend lost the job's context.
    Lost { reason: LostReason, why: String },
}

/// A report from the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub job: JobId,
    pub outcome: Outcome,
    /// NPU time the job used since it was last submitted or resumed.
    pub device_time: Duration,
}

/// An NPU the daemon forwards guest work to.
pub trait Backend: Send + Sync + 'static {
    /// Per guest context state (an open file of a host driver, an address
    /// space).
    type Context: Send + Sync;
    /// An imported buffer.
    type Buffer: Send + Sync;
    /// A validated job; it holds what it needs of its context and buffers.
    type Job: Send;

    fn caps(&self) -> Caps;

    /// A context for a new guest context of `priority` (higher first).
    fn create_context(&self, priority: u32) -> Result<Self::Context, BackendError>;

    /// Destroys a context none of whose jobs is submitted any more.
    fn destroy_context(&self, ctx: Self::Context);

    /// Imports guest memory as a buffer of the context.
    fn import(
        &self,
        ctx: &Self::Context,
        backing: &Backing,
        mem: &VmMemory,
    ) -> Result<Imported<Self::Buffer>, BackendError>;

    /// Releases a buffer no submitted job lists.
    fn release(&self, ctx: &Self::Context, buffer: Self::Buffer);

    /// Validates a command stream (already copied out of guest memory)
    /// against the job's buffers: `bos[i]` is buffer index `i` with its
    /// `VIRTIO_ACCEL_ACCESS_*` bits and size.
    fn prepare(
        &self,
        ctx: &Self::Context,
        cmd: &[u8],
        bos: &[(&Self::Buffer, u32, u64)],
    ) -> Result<Prepared<Self::Job>, BackendError>;

    /// Starts a job; returns at once. Its end comes as a [`Completion`].
    fn submit(&self, id: JobId, job: Self::Job);

    /// Continues a job that [`Outcome::Yielded`].
    fn resume(&self, id: JobId);

    /// Asks a running job to stop at its next preemption point. A job that
    /// ends first ends as usual.
    fn preempt(&self, id: JobId);

    /// Stops a job for good, running or yielded: it is answered
    /// [`Outcome::Aborted`] (or its own outcome, had it ended first) and
    /// writes no buffer after that report.
    fn abort(&self, id: JobId);

    /// Readable while completions wait in [`Backend::take_completions`].
    fn completion_fd(&self) -> RawFd;

    /// Moves the completions reported so far into `out`.
    fn take_completions(&self, out: &mut Vec<Completion>);

    /// A driver-specific request on a context, allowlisted by the backend.
    /// `out_max` is the room the guest gave for the answer.
    fn ioctl(
        &self,
        ctx: &Self::Context,
        cmd: u32,
        input: &[u8],
        out_max: usize,
    ) -> Result<Vec<u8>, IoctlError>;

    /// Stops the backend's engines (daemon shutdown).
    fn shutdown(&self) {}
}
