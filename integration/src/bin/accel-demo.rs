//! Two VMs share the software NPU, each running a real ONNX model at the
//! same time: the daemon in this process on real vhost-user sockets, two
//! harness guests driving it with the guest library's model runner.
//! Prints each VM's results, their agreement with ONNX Runtime, and the
//! NPU time each VM got, from the daemon's own accounting.
//!
//!   cargo run --release -p virtio-accel-integration --bin accel-demo \
//!       [-- --seconds S] [--models A,B]
//!
//! The models are made on first use by integration/models/prepare.sh
//! (Python venv; ONNX Runtime computes the references).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use vhost_device_accel::Config;
use virtio_accel_guest::model::Loaded;
use virtio_accel_integration::model::{max_error, models_dir, read_npy_f32, HarnessNpu};
use virtio_accel_integration::{Daemon, Guest, GuestOptions};

struct VmResult {
    model: String,
    runs: usize,
    per_inference: Duration,
    top: Vec<(usize, f32)>,
    rel_error: f32,
    jobs: usize,
}

/// Meets the other VMs and the clock at the start line once, however the
/// VM's thread gets there: loaded, failed or panicking.
struct StartLine(Option<Arc<Barrier>>);

impl StartLine {
    fn arrive(&mut self) {
        if let Some(b) = self.0.take() {
            b.wait();
        }
    }
}

impl Drop for StartLine {
    fn drop(&mut self) {
        self.arrive();
    }
}

fn vm(
    socket: PathBuf,
    dir: PathBuf,
    name: String,
    secs: f64,
    start: Arc<Barrier>,
) -> Result<VmResult, String> {
    let mut start = StartLine(Some(start));
    let mut g = Guest::connect(
        &socket,
        GuestOptions {
            // Room for the largest light model (VGG-19, 575 MB of weights).
            regions: vec![64 << 20, 1 << 30],
            timeout: Duration::from_secs(120),
            ..GuestOptions::default()
        },
    );
    let mut npu = HarnessNpu::new(&mut g);
    let file = |ext: &str| dir.join(format!("{name}.{ext}"));
    let bytes = std::fs::read(file("onnx")).map_err(|e| e.to_string())?;
    let (dims, x) = read_npy_f32(&file("input.npy"));
    let (_, want) = read_npy_f32(&file("output.npy"));
    let m = Loaded::new(&mut npu, &bytes, Some(&[dims])).map_err(|e| format!("{name}: {e}"))?;
    start.arrive();
    let t0 = Instant::now();
    let mut runs = 0;
    let mut worst = 0f32;
    let mut last = Vec::new();
    let mut jobs = 0;
    while runs == 0 || t0.elapsed().as_secs_f64() < secs {
        let (outs, stats) = m.run(&mut npu, &[&x]).map_err(|e| format!("{name}: {e}"))?;
        worst = worst.max(max_error(&outs[0].values, &want).1);
        last = outs[0].values.clone();
        jobs = stats.jobs;
        runs += 1;
    }
    let per_inference = t0.elapsed() / runs as u32;
    let mut top: Vec<(usize, f32)> = last.into_iter().enumerate().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(3);
    Ok(VmResult {
        model: name,
        runs,
        per_inference,
        top,
        rel_error: worst,
        jobs,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
    };
    let secs: f64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let models: Vec<String> = arg("--models")
        .map(|s| s.split(',').map(String::from).collect())
        .unwrap_or_else(|| vec!["squeezenet_random".into(), "resnet50_random".into()]);
    let Some(dir) = models_dir() else {
        eprintln!("accel-demo: needs python3 with venv to make the models");
        return ExitCode::FAILURE;
    };
    // One NPU engine: the two VMs compete for it, equal weights.
    let config = Config {
        workers: 1,
        ..Config::default()
    };
    let d = Daemon::start_weighted(config, &[1, 1]);
    println!(
        "accel-demo: vhost-device-accel on the software NPU (1 engine), 2 VMs on {}",
        d.sockets[0].parent().unwrap_or(Path::new("")).display()
    );
    let start = Arc::new(Barrier::new(3));
    let handles: Vec<_> = models
        .iter()
        .take(2)
        .enumerate()
        .map(|(i, name)| {
            let (s, dir, name, start) = (
                d.socket(i).clone(),
                dir.clone(),
                name.clone(),
                start.clone(),
            );
            std::thread::spawn(move || vm(s, dir, name, secs, start))
        })
        .collect();
    start.wait();
    // Device time each VM's jobs used over the window, from the daemon.
    let device = |d: &Daemon| -> Vec<f64> {
        (0..2)
            .map(|i| d.vm_stats(i).map_or(0.0, |s| s.device_seconds))
            .collect()
    };
    let before = device(&d);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let after = device(&d);
    let window = t0.elapsed().as_secs_f64();
    let results: Vec<Result<VmResult, String>> = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("VM thread panicked".into()))
        })
        .collect();
    let used: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: f64 = used.iter().sum();
    let mut ok = true;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(r) => {
                let agree = r.rel_error <= 1e-4;
                ok &= agree;
                println!(
                    "VM {i}: {:<18} {:>4} inferences, {:>8.2} ms each ({} jobs each), top {:?}",
                    r.model,
                    r.runs,
                    r.per_inference.as_secs_f64() * 1e3,
                    r.jobs,
                    r.top
                        .iter()
                        .map(|(k, v)| format!("[{k}] {v:.4}"))
                        .collect::<Vec<_>>()
                );
                println!(
                    "      agreement with ONNX Runtime: max error {:.2e} of the output range: {}",
                    r.rel_error,
                    if agree { "PASS" } else { "FAIL" }
                );
                println!(
                    "      NPU time over {window:.1} s: {:.2} s, share {:.1}%",
                    used[i],
                    if total > 0.0 {
                        100.0 * used[i] / total
                    } else {
                        0.0
                    }
                );
            }
            Err(e) => {
                ok = false;
                println!("VM {i}: FAILED: {e}");
            }
        }
    }
    println!(
        "accel-demo: NPU busy {:.1}% of the window; {}",
        100.0 * total / window,
        if ok { "PASS" } else { "FAIL" }
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
