//! Real ONNX models through the guest library's runner, on the harness and
//! the real daemon, against ONNX Runtime's outputs on the same inputs
//! (`integration/models/prepare.sh` makes both).

use std::path::Path;

use vhost_device_accel::Config;
use virtio_accel_guest::model::Loaded;
use virtio_accel_integration::model::{max_error, models_dir, read_npy_f32, HarnessNpu};
use virtio_accel_integration::*;

/// Guest memory for the largest model here (ResNet-50's 100 MB of
/// weights with random values).
fn guest(d: &Daemon) -> Guest {
    Guest::connect(
        d.socket(0),
        GuestOptions {
            regions: vec![64 << 20, 448 << 20],
            timeout: std::time::Duration::from_secs(600),
            ..GuestOptions::default()
        },
    )
}

fn config() -> Config {
    let mut c = Config::default();
    // Tests build without optimizations; a segment of the big models may
    // take seconds there.
    c.job_timeout_ms = 120_000;
    c
}

/// Runs model `name` on its input; every output within 1e-4 of ONNX
/// Runtime's relative to its range. Returns the worst relative error.
fn check(dir: &Path, name: &str) -> f32 {
    let d = Daemon::start(config(), 1);
    let mut g = guest(&d);
    let mut npu = HarnessNpu::new(&mut g);
    let model = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
    let (dims, x) = read_npy_f32(&dir.join(format!("{name}.input.npy")));
    let m = Loaded::new(&mut npu, &model, Some(&[dims])).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (outs, stats) = m
        .run(&mut npu, &[&x])
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut worst = 0f32;
    for (o, file) in outs.iter().zip(["output", "logits"]) {
        let p = dir.join(format!("{name}.{file}.npy"));
        if !p.exists() {
            continue;
        }
        let (rdims, want) = read_npy_f32(&p);
        assert_eq!(o.dims, rdims, "{name} {}", o.name);
        let (abs, rel) = max_error(&o.values, &want);
        eprintln!(
            "{name}: {} {:?}: max abs error {abs:e}, relative {rel:e}; {} jobs, {:?}",
            o.name, o.dims, stats.jobs, stats.wall
        );
        assert!(rel <= 1e-4, "{name} {}: relative error {rel:e}", o.name);
        worst = worst.max(rel);
    }
    m.unload(&mut npu).unwrap();
    worst
}

#[test]
fn squeezenet_light_matches_onnx_runtime() {
    let Some(dir) = models_dir() else { return };
    check(&dir, "squeezenet");
    check(&dir, "squeezenet_random");
}
