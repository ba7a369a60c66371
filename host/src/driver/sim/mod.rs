//! The built-in software NPU: runs the SNPU command stream (spec appendix A)
//! on the CPU, reading and writing guest buffers in place, with fault
//! injection for testing guest drivers.

mod exec;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use virtio_accel_protocol::snpu::{self, Program, SNPU_OPS_ALL, SNPU_VERSION};
use virtio_accel_protocol::{VIRTIO_ACCEL_CMD_FORMAT_SNPU, VIRTIO_ACCEL_NPU_SIM};

use super::{CtxCounters, DriverError, ExecReport, IoctlError, NpuDriver, NpuInfo, Prepared};
use crate::memory::BoMem;

/// `SNPU_IOCTL_GET_STATS`: the calling context's counters, 4 × le64.
pub const SNPU_IOCTL_GET_STATS: u32 = 1;

/// Faults the software NPU injects, counted over all jobs it runs (1-based).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Jobs that fail (`ERR_JOB_FAILED`) instead of running.
    #[serde(default)]
    pub fail_jobs: Vec<u64>,
    /// Jobs that hang until the job timeout (the context is then lost).
    #[serde(default)]
    pub hang_jobs: Vec<u64>,
    /// Extra time every job takes, in microseconds.
    #[serde(default)]
    pub latency_us: u64,
}

pub struct SimNpu {
    faults: Faults,
    jobs_run: AtomicU64,
}

impl SimNpu {
    pub fn new(faults: Faults) -> SimNpu {
        SimNpu {
            faults,
            jobs_run: AtomicU64::new(0),
        }
    }

    /// Runs a program directly on buffers, as the device would: the native
    /// baseline the benchmarks compare the virtual path with.
    pub fn run_program(&self, program: &Program, bos: &[BoMem<'_>]) -> Result<u64, DriverError> {
        exec::run(program, bos, Instant::now() + Duration::from_secs(3600))
    }
}

/// Appendix A: an access outside a buffer or a range that overflows is
/// `ERR_OUT_OF_RANGE`, every other refusal `ERR_INVALID`.
fn cmd_error(e: snpu::CmdError) -> DriverError {
    match e {
        snpu::CmdError::OutOfBounds { .. } | snpu::CmdError::Overflow { .. } => {
            DriverError::OutOfRange(e.to_string())
        }
        _ => DriverError::Invalid(e.to_string()),
    }
}

impl NpuDriver for SimNpu {
    fn info(&self) -> NpuInfo {
        NpuInfo {
            kind: VIRTIO_ACCEL_NPU_SIM,
            version: 1 << 16,
            name: "virtio-accel software NPU".into(),
            cmd_format: VIRTIO_ACCEL_CMD_FORMAT_SNPU,
            cmd_format_version: SNPU_VERSION.into(),
            ops: SNPU_OPS_ALL,
        }
    }

    fn prepare(&self, cmd: &[u8], bos: &[(u64, u32)]) -> Result<Prepared, DriverError> {
        let program = snpu::parse(cmd).map_err(cmd_error)?;
        program.check_bounds(bos).map_err(cmd_error)?;
        Ok(Prepared {
            work_bytes: program.work_bytes(),
            job: Box::new(program),
        })
    }

    fn execute(
        &self,
        job: &Prepared,
        bos: &[BoMem<'_>],
        deadline: Instant,
    ) -> Result<ExecReport, DriverError> {
        let n = self.jobs_run.fetch_add(1, Ordering::Relaxed) + 1;
        if self.faults.latency_us > 0 {
            std::thread::sleep(Duration::from_micros(self.faults.latency_us));
        }
        if self.faults.fail_jobs.contains(&n) {
            return Err(DriverError::Failed(format!("injected failure of job {n}")));
        }
        if self.faults.hang_jobs.contains(&n) {
            // A hung engine: nothing completes until the watchdog fires.
            let now = Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            }
            return Err(DriverError::Hang);
        }
        let program = job
            .job
            .downcast_ref::<Program>()
            .ok_or_else(|| DriverError::Failed("job prepared by another driver".into()))?;
        let ops = exec::run(program, bos, deadline)?;
        Ok(ExecReport { ops })
    }

    fn ioctl(
        &self,
        cmd: u32,
        input: &[u8],
        out_max: usize,
        ctx: &CtxCounters,
    ) -> Result<Vec<u8>, IoctlError> {
        match cmd {
            SNPU_IOCTL_GET_STATS => {
                if !input.is_empty() {
                    return Err(IoctlError::Invalid {
                        cmd,
                        why: "takes no input",
                    });
                }
                if out_max < 32 {
                    return Err(IoctlError::Invalid {
                        cmd,
                        why: "needs 32 bytes of output",
                    });
                }
                let mut out = Vec::with_capacity(32);
                for v in [
                    ctx.jobs_completed,
                    ctx.jobs_failed,
                    ctx.device_time_ns,
                    ctx.ops_executed,
                ] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Ok(out)
            }
            _ => Err(IoctlError::Unsupported(cmd)),
        }
    }
}
