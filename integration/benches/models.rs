//! Per-inference time of real ONNX models: through the full path (guest
//! library runner → virtqueues → vhost-user → daemon → scheduler → the
//! software NPU) against the same software NPU called in-process on the
//! same lowered program, in paired, interleaved rounds (A/B, then B/A);
//! and ONNX Runtime on the host CPU, the number a user would otherwise get.
//!
//!   cargo bench -p virtio-accel-integration --bench models [-- --quick]
//!
//! The paired loop is self-contained: a round is one inference each way.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use vhost_device_accel::backend::sim::{SimNpu, Tile};
use vhost_device_accel::memory::{Backing, GuestMem, MemStats};
use vhost_device_accel::Config;
use virtio_accel_guest::model::{Compiled, Device, Loaded, Output, RunStats};
use virtio_accel_integration::bench::stats::quantile as pct;
use virtio_accel_integration::bench::{Opts, Report};
use virtio_accel_integration::model::{max_error, models_dir, read_npy_f32, HarnessNpu};
use virtio_accel_integration::{Daemon, Guest, GuestOptions};
use vm_memory::GuestAddress;

/// The compiled model's buffers (arena, then weights) in this process's
/// memory.
struct InProcess {
    mem: GuestMem,
    bufs: Vec<Backing>,
}

impl InProcess {
    fn new(c: &Compiled) -> InProcess {
        let mut sizes = vec![c.arena_bytes];
        sizes.extend(c.weights.iter().map(|w| (w.len() as u64).max(64)));
        let total: u64 = sizes.iter().map(|s| s.next_multiple_of(4096)).sum();
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), total as usize)]).unwrap();
        let mut at = 0;
        let bufs: Vec<Backing> = sizes
            .iter()
            .map(|&s| {
                let b = Backing::new(vec![(at, s as u32)]);
                at += s.next_multiple_of(4096);
                b
            })
            .collect();
        let stats = MemStats::default();
        for (b, w) in bufs[1..].iter().zip(&c.weights) {
            b.resolve(&mem, &stats).unwrap().write(0, w).unwrap();
        }
        InProcess { mem, bufs }
    }

    /// One inference: the input written, every segment run, the first
    /// output read.
    fn run(&self, c: &Compiled, x: &[u8]) -> Vec<f32> {
        let stats = MemStats::default();
        let bos: Vec<_> = self
            .bufs
            .iter()
            .map(|b| b.resolve(&self.mem, &stats).unwrap())
            .collect();
        bos[0].write(c.inputs[0].offset.unwrap(), x).unwrap();
        for seg in &c.segments {
            SimNpu::run_program(seg, &bos, Tile::SLICED).unwrap();
        }
        let o = &c.outputs[0];
        let mut b = vec![0u8; o.dims.iter().product::<usize>() * 4];
        bos[0].read(o.offset.unwrap(), &mut b).unwrap();
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// One inference through the full path.
fn full<D: Device>(m: &Loaded<D>, npu: &mut D, x: &[f32]) -> (f64, Vec<Output>, RunStats) {
    let t = Instant::now();
    let (o, s) = m.run(npu, &[x]).unwrap();
    (t.elapsed().as_secs_f64(), o, s)
}

fn iqr(v: &[f64]) -> (f64, f64, f64) {
    (pct(v, 0.25), pct(v, 0.5), pct(v, 0.75))
}

fn ort(dir: &std::path::Path, name: &str, runs: usize, threads: usize) -> Vec<f64> {
    let py = dir.join("venv/bin/python");
    let out = Command::new(py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/models/ort_time.py"))
        .arg(dir.join(format!("{name}.onnx")))
        .arg(dir.join(format!("{name}.input.npy")))
        .arg(runs.to_string())
        .arg(threads.to_string())
        .output()
        .expect("run ort_time.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn model(dir: &std::path::Path, name: &str, pairs: usize, r: &mut Report) {
    let config = Config {
        workers: 1,
        ..Config::default()
    };
    let d = Daemon::start(config, 1);
    let mut g = Guest::connect(
        d.socket(0),
        GuestOptions {
            regions: vec![64 << 20, 448 << 20],
            timeout: Duration::from_secs(120),
            ..GuestOptions::default()
        },
    );
    let mut npu = HarnessNpu::new(&mut g);
    let bytes = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
    let (dims, x) = read_npy_f32(&dir.join(format!("{name}.input.npy")));
    let (_, want) = read_npy_f32(&dir.join(format!("{name}.output.npy")));
    let m = Loaded::new(&mut npu, &bytes, Some(&[dims])).unwrap();
    let local = InProcess::new(&m.compiled);
    let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let inproc = || {
        let t = Instant::now();
        let o = local.run(&m.compiled, &xb);
        (t.elapsed().as_secs_f64(), o)
    };
    // Warm-up, and both ways agree with ONNX Runtime.
    let (_, o, _) = full(&m, &mut npu, &x);
    assert!(max_error(&o[0].values, &want).1 <= 1e-4);
    assert!(max_error(&inproc().1, &want).1 <= 1e-4);
    let (mut a, mut b, mut ratio, mut dev) = (vec![], vec![], vec![], vec![]);
    for i in 0..pairs {
        let (ta, tb, s) = if i % 2 == 0 {
            let (ta, _, s) = full(&m, &mut npu, &x);
            (ta, inproc().0, s)
        } else {
            let tb = inproc().0;
            let (ta, _, s) = full(&m, &mut npu, &x);
            (ta, tb, s)
        };
        a.push(ta * 1e3);
        b.push(tb * 1e3);
        ratio.push(ta / tb);
        dev.push(s.device.map_or(0.0, |d| d.as_secs_f64() * 1e3));
    }
    let runs = pairs.max(3);
    let (o1, o2) = (ort(dir, name, runs, 1), ort(dir, name, runs, 2));
    let (a, b, ratio, dev, o1, o2) = (iqr(&a), iqr(&b), iqr(&ratio), iqr(&dev), iqr(&o1), iqr(&o2));
    let c = &m.compiled;
    r.line(format!(
        "{name:<18} full path {:8.2} ms [IQR {:.2}-{:.2}] (NPU {:.2} ms, {} jobs) | in-process {:8.2} ms [{:.2}-{:.2}] | ratio {:.3} [IQR {:.3}-{:.3}], {pairs} pairs | ONNX Runtime 1 thread {:.2} ms [{:.2}-{:.2}], 2 threads {:.2} ms",
        a.1, a.0, a.2, dev.1, c.segments.len(), b.1, b.0, b.2, ratio.1, ratio.0, ratio.2, o1.1, o1.0, o1.2, o2.1
    ));
    r.data.insert(
        name.into(),
        json!({
            "full_path_ms": {"p25": a.0, "median": a.1, "p75": a.2},
            "npu_ms": {"p25": dev.0, "median": dev.1, "p75": dev.2},
            "in_process_ms": {"p25": b.0, "median": b.1, "p75": b.2},
            "ratio": {"p25": ratio.0, "median": ratio.1, "p75": ratio.2},
            "pairs": pairs,
            "jobs": c.segments.len(),
            "snpu_ops": c.op_count(),
            "ort_1_thread_ms": {"p25": o1.0, "median": o1.1, "p75": o1.2},
            "ort_2_threads_ms": {"p25": o2.0, "median": o2.1, "p75": o2.2},
        }),
    );
    m.unload(&mut npu).unwrap();
}

fn main() {
    let o = Opts::from_args("models");
    let Some(dir) = models_dir() else {
        eprintln!("models benchmark: needs python3 with venv for its models");
        return;
    };
    let mut r = Report::default();
    for (name, pairs) in [("squeezenet_random", 30), ("resnet50_random", 12)] {
        if !o.runs(name) || (o.quick && name != "squeezenet_random") {
            continue;
        }
        model(&dir, name, if o.quick { 2 } else { pairs }, &mut r);
    }
    r.finish(
        "models: per inference, full path vs in-process vs ONNX Runtime",
        &o,
    );
}
