//! Runs the reference workloads (MLP, int8 matmul, conv2d) through the
//! accel node and checks each output against the CPU reference. Also checks
//! that the kernel refuses malformed submits. Exits non-zero on any failure,
//! printing what became of a job that did not run (failed, cancelled,
//! context lost, device lost).
//!
//! `accel-run --hang`: against a device that hangs the first job, checks it
//! is reported as a lost context. `accel-run --one-job`: runs one no-op job
//! and prints its status.
//!
//! `accel-run --model PATH [--input FILE.npy] [--expect FILE.npy]
//! [--runs N] [DEVICE]` runs an ONNX model instead: prints its top outputs
//! and the time per inference, and with `--expect` compares the first
//! output with a reference (within 1e-4 of the reference's range).

use std::process::ExitCode;

use virtio_accel_guest::accel::{Accel, JobBo};
use virtio_accel_guest::job::{JobError, JobStatus};
use virtio_accel_guest::uapi::{DrmVaccelSubmit, DRM_VACCEL_BO_READ, DRM_VACCEL_BO_WRITE};
use virtio_accel_guest::workloads::{self, Workload};

fn run(dev: &Accel, w: &Workload) -> Result<(), String> {
    let name = w.name;
    let e = |what: &'static str| move |err: std::io::Error| format!("{name}: {what}: {err}");
    let mut bos = Vec::new();
    for spec in &w.bos {
        let bo = dev.bo_create(spec.size).map_err(e("BO_CREATE"))?;
        if !spec.init.is_empty() {
            dev.map(bo).map_err(e("mmap"))?.write(0, &spec.init);
        }
        bos.push(JobBo {
            bo,
            access: spec.access,
        });
    }
    let stream = w.program.encode();
    let cmd = dev
        .bo_create(stream.len() as u64)
        .map_err(e("BO_CREATE cmd"))?;
    dev.map(cmd).map_err(e("mmap cmd"))?.write(0, &stream);
    // Two jobs chained by a syncobj: the second waits for the first.
    let first = dev.syncobj_create().map_err(e("SYNCOBJ_CREATE"))?;
    let second = dev.syncobj_create().map_err(e("SYNCOBJ_CREATE"))?;
    dev.submit(&bos, cmd, 0, stream.len() as u32, &[], first)
        .map_err(e("SUBMIT"))?;
    dev.submit(&bos, cmd, 0, stream.len() as u32, &[first], second)
        .map_err(e("SUBMIT chained"))?;
    dev.wait_job(second, 30_000).map_err(e("second job"))?;
    dev.wait_job(first, 0).map_err(e("first job"))?;
    let (i, off) = w.output;
    match dev.bo_wait(bos[i].bo, 1000).map_err(e("BO_WAIT"))? {
        JobStatus::Ok => {}
        s => return Err(format!("{name}: BO_WAIT: job {s}")),
    }
    let out = dev
        .map(bos[i].bo)
        .map_err(e("mmap output"))?
        .read(off as usize, w.output_len());
    w.check(&out)?;
    for b in bos.iter().map(|b| b.bo).chain([cmd]) {
        dev.bo_close(b).map_err(e("GEM_CLOSE"))?;
    }
    dev.syncobj_destroy(first).map_err(e("SYNCOBJ_DESTROY"))?;
    dev.syncobj_destroy(second).map_err(e("SYNCOBJ_DESTROY"))?;
    Ok(())
}

/// The kernel must refuse malformed submits before they reach the device.
fn bad_submits(dev: &Accel) -> Result<(), String> {
    let bo = dev.bo_create(4096).map_err(|e| e.to_string())?;
    let list = [virtio_accel_guest::uapi::DrmVaccelSubmitBo {
        handle: bo.handle,
        access: DRM_VACCEL_BO_READ,
    }];
    let good = DrmVaccelSubmit {
        bos: list.as_ptr() as u64,
        cmd_bo: bo.handle,
        cmd_size: 16,
        nr_bos: 1,
        ..Default::default()
    };
    let cases: [(&str, DrmVaccelSubmit, i32); 5] = [
        (
            "nonzero pad",
            DrmVaccelSubmit { pad: 1, ..good },
            libc::EINVAL,
        ),
        (
            "unknown flag",
            DrmVaccelSubmit { flags: 4, ..good },
            libc::EINVAL,
        ),
        (
            "unknown buffer",
            DrmVaccelSubmit {
                cmd_bo: 9999,
                ..good
            },
            libc::ENOENT,
        ),
        (
            "command past the buffer",
            DrmVaccelSubmit {
                cmd_offset: 4090,
                ..good
            },
            libc::EINVAL,
        ),
        (
            "bad user pointer",
            DrmVaccelSubmit { bos: 16, ..good },
            libc::EFAULT,
        ),
    ];
    for (what, mut args, want) in cases {
        match dev.submit_raw(&mut args) {
            Err(e) if e.raw_os_error() == Some(want) => {}
            r => return Err(format!("{what}: got {r:?}, want errno {want}")),
        }
    }
    let _ = DRM_VACCEL_BO_WRITE;
    dev.bo_close(bo).map_err(|e| e.to_string())
}

/// Against a device that hangs the first job (`--hang-jobs 1`): the job's
/// fence must complete, the device must report the context lost, and the
/// node must refuse further work on it.
fn hang(dev: &Accel) -> Result<(), String> {
    let (cmd, len) = nop(dev)?;
    let done = dev.syncobj_create().map_err(|e| e.to_string())?;
    dev.submit(&[], cmd, 0, len, &[], done)
        .map_err(|e| format!("first submit: {e}"))?;
    match dev.wait_job(done, 60_000) {
        Err(e) if JobError::of(&e) == Some(JobStatus::ContextLost) => {
            println!("accel-run: hung job: {e}");
        }
        r => return Err(format!("hung job: got {r:?}, want a lost context")),
    }
    match dev.submit(&[], cmd, 0, len, &[], 0) {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(()),
        r => Err(format!("submit on a lost context: got {r:?}, want EIO")),
    }
}

/// A command buffer holding one NOP; returns it and the stream's length.
fn nop(dev: &Accel) -> Result<(virtio_accel_guest::accel::Bo, u32), String> {
    let stream = virtio_accel_protocol::snpu::Program {
        ops: vec![virtio_accel_protocol::snpu::OpDesc::Nop],
    }
    .encode();
    let cmd = dev.bo_create(4096).map_err(|e| e.to_string())?;
    dev.map(cmd).map_err(|e| e.to_string())?.write(0, &stream);
    Ok((cmd, stream.len() as u32))
}

/// Runs one no-op job and returns its status.
fn one_job(dev: &Accel) -> Result<JobStatus, String> {
    let (cmd, len) = nop(dev)?;
    let done = dev.syncobj_create().map_err(|e| e.to_string())?;
    dev.submit(&[], cmd, 0, len, &[], done)
        .map_err(|e| format!("submit: {e}"))?;
    dev.syncobj_wait(&[done], 60_000)
        .map_err(|e| format!("wait: {e}"))?;
    dev.job_status(done).map_err(|e| format!("status: {e}"))
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--model") {
        return match model::main(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("accel-run: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mode = args
        .first()
        .filter(|a| a.starts_with("--"))
        .cloned()
        .unwrap_or_default();
    if !mode.is_empty() {
        args.remove(0);
    }
    let path = args
        .first()
        .cloned()
        .unwrap_or_else(|| "/dev/accel/accel0".into());
    let dev = match Accel::open(&path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("accel-run: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if mode == "--one-job" {
        return match one_job(&dev) {
            Ok(s) => {
                println!("accel-run: one job: {s}");
                if s == JobStatus::Ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(3)
                }
            }
            Err(e) => {
                println!("accel-run: one job FAIL: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if mode == "--hang" {
        return match hang(&dev) {
            Ok(()) => {
                println!("accel-run: hung job lost its context PASS");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("accel-run: hung job FAIL: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut failed = 0;
    for w in workloads::standard() {
        match run(&dev, &w) {
            Ok(()) => println!("accel-run: {} PASS", w.name),
            Err(e) => {
                println!("accel-run: {} FAIL: {e}", w.name);
                failed += 1;
            }
        }
    }
    match bad_submits(&dev) {
        Ok(()) => println!("accel-run: malformed submits refused PASS"),
        Err(e) => {
            println!("accel-run: malformed submits FAIL: {e}");
            failed += 1;
        }
    }
    if failed == 0 {
        println!("accel-run: OK");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

mod model {
    use std::process::ExitCode;

    use virtio_accel_guest::accel::Accel;
    use virtio_accel_guest::model::cli;

    pub fn main(args: &[String]) -> Result<ExitCode, String> {
        let opts = cli::Opts::parse(args)?;
        let mut npu = Accel::open(&opts.device).map_err(|e| format!("{}: {e}", opts.device))?;
        let ok = cli::run(&mut npu, &opts, &mut std::io::stdout())?;
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
