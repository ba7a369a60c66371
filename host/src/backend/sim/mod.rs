//! The built-in software NPU: runs the SNPU command stream (spec appendix A)
//! on the CPU, reading and writing guest buffers in place, in time slices
//! on its own engine threads, with fault injection for testing guest
//! drivers and the daemon.

mod engine;
mod exec;
mod io;
mod kernels;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use virtio_accel_protocol::snpu::{self, Program, SNPU_OPS_ALL, SNPU_VERSION};
use virtio_accel_protocol::{VIRTIO_ACCEL_CMD_FORMAT_SNPU, VIRTIO_ACCEL_NPU_SIM};

use super::{Backend, BackendError, Caps, Completion, Imported, IoctlError, JobId, Prepared};
use crate::memory::{Backing, BoMem, VmMemory};
use engine::Engine;
pub use exec::{requantize, Exec, Progress, Tile};

/// `SNPU_IOCTL_GET_STATS`: the calling context's counters, 4 × le64.
pub const SNPU_IOCTL_GET_STATS: u32 = 1;
/// The answer of [`SNPU_IOCTL_GET_STATS`]: four le64 counters.
pub const SNPU_STATS_LEN: usize = 32;

/// The software NPU's ioctl allowlist (spec 6.5): `GET_STATS`, with no
/// input and room for its answer. Also what a device forwarding to a
/// virtio-accel node checks before the node's device sees the request.
pub fn check_ioctl(cmd: u32, input: &[u8], out_max: usize) -> Result<(), IoctlError> {
    if cmd != SNPU_IOCTL_GET_STATS {
        return Err(IoctlError::Unsupported(cmd));
    }
    if !input.is_empty() {
        return Err(IoctlError::Invalid {
            cmd,
            why: "takes no input",
        });
    }
    if out_max < SNPU_STATS_LEN {
        return Err(IoctlError::Invalid {
            cmd,
            why: "needs 32 bytes of output",
        });
    }
    Ok(())
}

/// Faults the software NPU injects, counted over all jobs it runs (1-based).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Jobs that fail (`ERR_JOB_FAILED`) instead of running.
    #[serde(default)]
    pub fail_jobs: Vec<u64>,
    /// Jobs that never end: the daemon's job timeout loses their context.
    /// A hung job holds no engine thread.
    #[serde(default)]
    pub hang_jobs: Vec<u64>,
    /// Jobs whose kernel panics (the NPU failing): their context is lost
    /// with `DEVICE_ERROR`.
    #[serde(default)]
    pub panic_jobs: Vec<u64>,
    /// Jobs whose submission makes the NPU fail as a whole: the VM's device
    /// loses every context (`DEVICE_ERROR`) and asks its driver for a reset.
    #[serde(default)]
    pub device_error_jobs: Vec<u64>,
    /// Extra time every job takes, in microseconds.
    #[serde(default)]
    pub latency_us: u64,
}

/// How the software NPU runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimOptions {
    pub faults: Faults,
    /// Engine threads.
    pub engines: usize,
    /// The most work between two preemption points.
    pub tile: Tile,
}

/// Why a slice of a job stopped with an error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecError {
    #[error("access outside a buffer: {0}")]
    OutOfRange(String),
    #[error("job failed: {0}")]
    Failed(String),
    #[error("the host could not allocate the job's working memory")]
    NoMemory,
}

/// A software NPU context: its counters for `SNPU_IOCTL_GET_STATS`.
#[derive(Debug, Default)]
pub struct SimContext {
    jobs_completed: AtomicU64,
    jobs_failed: AtomicU64,
    device_time_ns: AtomicU64,
    ops_executed: AtomicU64,
}

impl SimContext {
    fn add_time(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.device_time_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn count_done(&self, ops: u64) {
        self.jobs_completed.fetch_add(1, Ordering::Relaxed);
        self.ops_executed.fetch_add(ops, Ordering::Relaxed);
    }

    fn count_failed(&self) {
        self.jobs_failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Guest memory imported as a buffer.
pub struct SimBuffer {
    backing: Backing,
    mem: VmMemory,
}

/// A validated job with its context and buffers.
pub struct SimJob {
    ctx: Arc<SimContext>,
    bufs: Vec<Arc<SimBuffer>>,
    exec: Exec,
    panic: bool,
    latency: Option<Duration>,
    /// Working memory it may hold (`Program::work_bytes`).
    work_bytes: u64,
}

impl SimJob {
    /// Runs the job to its end on the calling thread, without an engine:
    /// for tests and fuzzing that need a deterministic schedule.
    pub fn run_inline(&mut self) -> Result<u64, ExecError> {
        loop {
            if let Progress::Done { ops } = engine::slice(self, &mut || true)? {
                return Ok(ops);
            }
        }
    }
}

pub struct SimNpu {
    faults: Faults,
    tile: Tile,
    engines: usize,
    jobs_run: AtomicU64,
    engine: Arc<Engine>,
}

impl SimNpu {
    pub fn new(opts: SimOptions) -> std::io::Result<SimNpu> {
        let engines = opts.engines.max(1);
        Ok(SimNpu {
            engine: Engine::start(engines)?,
            faults: opts.faults,
            tile: opts.tile,
            engines,
            jobs_run: AtomicU64::new(0),
        })
    }

    /// Runs a program directly on buffers, whole, as a dedicated device
    /// would: the native baseline the benchmarks compare the virtual path
    /// with.
    pub fn run_program(program: &Program, bos: &[BoMem<'_>], tile: Tile) -> Result<u64, ExecError> {
        let mut exec = Exec::new(program.clone(), tile);
        loop {
            if let Progress::Done { ops } = exec.run(bos, &mut || true)? {
                return Ok(ops);
            }
        }
    }
}

impl Drop for SimNpu {
    fn drop(&mut self) {
        self.engine.shutdown();
    }
}

/// Appendix A: an access outside a buffer or a range that overflows is
/// `ERR_OUT_OF_RANGE`, every other refusal `ERR_INVALID`.
fn cmd_error(e: snpu::CmdError) -> BackendError {
    match e {
        snpu::CmdError::OutOfBounds { .. } | snpu::CmdError::Overflow { .. } => {
            BackendError::OutOfRange(e.to_string())
        }
        _ => BackendError::Invalid(e.to_string()),
    }
}

impl Backend for SimNpu {
    type Context = Arc<SimContext>;
    type Buffer = Arc<SimBuffer>;
    type Job = SimJob;

    fn caps(&self) -> Caps {
        Caps {
            kind: VIRTIO_ACCEL_NPU_SIM,
            version: 1 << 16,
            name: "virtio-accel software NPU".into(),
            cmd_format: VIRTIO_ACCEL_CMD_FORMAT_SNPU,
            cmd_format_version: SNPU_VERSION.into(),
            ops: SNPU_OPS_ALL,
            engines: self.engines,
            preemptible: true,
            page_aligned: false,
        }
    }

    fn create_context(&self, _priority: u32) -> Result<Arc<SimContext>, BackendError> {
        Ok(Arc::default())
    }

    fn destroy_context(&self, _ctx: Arc<SimContext>) {}

    fn import(
        &self,
        _ctx: &Arc<SimContext>,
        backing: &Backing,
        mem: &VmMemory,
    ) -> Result<Imported<Arc<SimBuffer>>, BackendError> {
        Ok(Imported {
            buffer: Arc::new(SimBuffer {
                backing: backing.clone(),
                mem: mem.clone(),
            }),
            device_addr: None,
        })
    }

    fn release(&self, _ctx: &Arc<SimContext>, _buffer: Arc<SimBuffer>) {}

    fn prepare(
        &self,
        ctx: &Arc<SimContext>,
        cmd: &[u8],
        bos: &[(&Arc<SimBuffer>, u32, u64)],
    ) -> Result<Prepared<SimJob>, BackendError> {
        let program = snpu::parse(cmd).map_err(cmd_error)?;
        let shapes: Vec<(u64, u32)> = bos
            .iter()
            .map(|&(_, access, size)| (size, access))
            .collect();
        program.check_bounds(&shapes).map_err(cmd_error)?;
        Ok(Prepared {
            work_bytes: program.work_bytes(),
            job: SimJob {
                ctx: ctx.clone(),
                bufs: bos.iter().map(|(b, _, _)| Arc::clone(b)).collect(),
                work_bytes: program.work_bytes(),
                exec: Exec::new(program, self.tile),
                panic: false,
                latency: None,
            },
        })
    }

    fn submit(&self, id: JobId, mut job: SimJob) {
        let n = self.jobs_run.fetch_add(1, Ordering::Relaxed) + 1;
        if self.faults.fail_jobs.contains(&n) {
            job.ctx.count_failed();
            let why = format!("injected failure of job {n}");
            self.engine
                .complete(id, super::Outcome::Failed(why), Duration::ZERO);
            return;
        }
        if self.faults.device_error_jobs.contains(&n) {
            let why = format!("injected NPU failure at job {n}");
            let outcome = super::Outcome::Lost {
                reason: super::LostReason::NeedsReset,
                why,
            };
            self.engine.complete(id, outcome, Duration::ZERO);
            return;
        }
        job.panic = self.faults.panic_jobs.contains(&n);
        if self.faults.latency_us > 0 {
            job.latency = Some(Duration::from_micros(self.faults.latency_us));
        }
        self.engine
            .submit(id, job, self.faults.hang_jobs.contains(&n));
    }

    fn resume(&self, id: JobId) {
        self.engine.resume(id);
    }

    fn preempt(&self, id: JobId) {
        self.engine.preempt(id);
    }

    fn abort(&self, id: JobId) {
        self.engine.abort(id);
    }

    fn completion_fd(&self) -> RawFd {
        self.engine.fd()
    }

    fn take_completions(&self, out: &mut Vec<Completion>) {
        self.engine.take(out);
    }

    fn ioctl(
        &self,
        ctx: &Arc<SimContext>,
        cmd: u32,
        input: &[u8],
        out_max: usize,
    ) -> Result<Vec<u8>, IoctlError> {
        check_ioctl(cmd, input, out_max)?;
        let mut out = Vec::with_capacity(SNPU_STATS_LEN);
        for v in [
            &ctx.jobs_completed,
            &ctx.jobs_failed,
            &ctx.device_time_ns,
            &ctx.ops_executed,
        ] {
            out.extend_from_slice(&v.load(Ordering::Relaxed).to_le_bytes());
        }
        Ok(out)
    }

    fn shutdown(&self) {
        self.engine.shutdown();
    }
}
