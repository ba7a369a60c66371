//! Real ONNX models through the guest library's runner, on the harness and
//! the real daemon, against ONNX Runtime's outputs on the same inputs
//! (`integration/models/prepare.sh` makes both).

use std::path::Path;

use vhost_device_accel::Config;
use virtio_accel_guest::model::Loaded;
use virtio_accel_integration::model::{
    max_error, models_dir, read_npy_f32, read_npy_i64, HarnessNpu,
};
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
    // Tests build without optimizations; a segment of the big models may
    // take seconds there.
    Config {
        job_timeout_ms: 120_000,
        ..Config::default()
    }
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

#[test]
fn resnet50_light_matches_onnx_runtime() {
    let Some(dir) = models_dir() else { return };
    check(&dir, "resnet50");
    check(&dir, "resnet50_random");
}

#[test]
fn other_light_models_match_onnx_runtime() {
    let Some(dir) = models_dir() else { return };
    for name in [
        "shufflenet",
        "shufflenet_random",
        "densenet121",
        "densenet121_random",
        "inception_v1",
        "inception_v1_random",
        "bvlc_alexnet",
    ] {
        check(&dir, name);
    }
}

#[test]
fn trained_digits_classifier_is_as_accurate_as_onnx_runtime() {
    let Some(dir) = models_dir() else { return };
    // Class probabilities within tolerance...
    check(&dir, "digits");
    // ...and the held-out accuracy exactly ONNX Runtime's.
    let d = Daemon::start(config(), 1);
    let mut g = guest(&d);
    let mut npu = HarnessNpu::new(&mut g);
    let model = std::fs::read(dir.join("digits.onnx")).unwrap();
    let (dims, x) = read_npy_f32(&dir.join("digits.input.npy"));
    let labels = read_npy_i64(&dir.join("digits.labels.npy"));
    let ort = read_npy_i64(&dir.join("digits.ort_labels.npy"));
    let m = Loaded::new(&mut npu, &model, Some(&[dims])).unwrap();
    let (outs, _) = m.run(&mut npu, &[&x]).unwrap();
    let classes = outs[0].dims[1];
    let predicted: Vec<i64> = outs[0]
        .values
        .chunks(classes)
        .map(|p| {
            let best = p
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > p[b] { i } else { b });
            best as i64
        })
        .collect();
    let correct = |pred: &[i64]| pred.iter().zip(&labels).filter(|(a, b)| a == b).count();
    let (npu_ok, ort_ok) = (correct(&predicted), correct(&ort));
    eprintln!(
        "digits: held-out accuracy {npu_ok}/{n} on the NPU, {ort_ok}/{n} with ONNX Runtime",
        n = labels.len()
    );
    assert_eq!(npu_ok, ort_ok);
    assert_eq!(predicted, ort, "the same prediction for every sample");
    assert!(
        npu_ok * 10 > labels.len() * 9,
        "a trained model, not chance"
    );
}

#[test]
fn accel_run_model_prints_top_outputs_time_and_agreement() {
    let Some(dir) = models_dir() else { return };
    use virtio_accel_guest::model::cli;
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let args: Vec<String> = [
        "--model",
        &p("squeezenet_random.onnx"),
        "--input",
        &p("squeezenet_random.input.npy"),
        "--expect",
        &p("squeezenet_random.output.npy"),
        "--runs",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let opts = cli::Opts::parse(&args).unwrap();
    let d = Daemon::start(config(), 1);
    let mut g = guest(&d);
    let mut npu = HarnessNpu::new(&mut g);
    let mut out = Vec::new();
    let ok = cli::run(&mut npu, &opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    eprintln!("{text}");
    assert!(ok, "{text}");
    assert!(text.contains("top 5:") && text.contains("ms per inference"));
    assert!(text.contains("of its range: PASS"));
    // The same run against another model's output fails.
    let mut wrong = opts.clone();
    wrong.expect = Some(p("resnet50_random.output.npy"));
    assert!(!cli::run(&mut npu, &wrong, &mut Vec::new()).unwrap());
}
