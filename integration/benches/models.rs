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
use virtio_accel_integration::bench::stats::{quantile as pct, Figure, Unit};
use virtio_accel_integration::bench::{table, Opts, Report};
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
        let device = s
            .device
            .expect("the daemon reports every job's device time");
        dev.push(device.as_secs_f64() * 1e3);
    }
    let runs = pairs.max(3);
    let (o1, o2) = (ort(dir, name, runs, 1), ort(dir, name, runs, 2));
    let c = &m.compiled;
    let ms = Unit::Of("ms");
    let label = match name {
        "squeezenet_random" => "SqueezeNet 1.0 (random weights)",
        "resnet50_random" => "ResNet-50 (random weights)",
        other => other,
    };
    let jobs = c.segments.len();
    r.figure(
        &format!("{name}.full_vs_in_process"),
        Figure::new(
            format!("{label}, {jobs} job(s) per inference: full path / in-process time"),
            Unit::Times,
            &ratio,
        )
        .floor("the same software NPU called in this process on the same lowered program")
        .side("full path", ms, &a)
        .side("in-process", ms, &b)
        .side("NPU time", ms, &dev),
    );
    // The transport's share: what the full path costs beyond the device
    // time the daemon reports for the same inference.
    let transport: Vec<f64> = a.iter().zip(&dev).map(|(t, d)| t - d).collect();
    r.figure(
        &format!("{name}.transport"),
        Figure::new(format!("{label}: full path minus NPU time"), ms, &transport)
            .floor("the device time the daemon reports"),
    );
    let (s1, s2) = (pct(&o1, 0.5), pct(&o2, 0.5));
    r.figure(
        &format!("{name}.in_process_vs_ort"),
        Figure::new(
            format!("{label}: in-process time / ONNX Runtime median, 1 thread"),
            Unit::Times,
            &b.iter().map(|t| t / s1).collect::<Vec<_>>(),
        )
        .floor("ONNX Runtime's CPU kernels on the host, one thread")
        .side("ONNX Runtime, 1 thread", ms, &o1)
        .side("ONNX Runtime, 2 threads", ms, &o2),
    );
    r.data.insert(
        name.into(),
        json!({
            "full_path_ms": a,
            "npu_ms": dev,
            "in_process_ms": b,
            "ratio": ratio,
            "pairs": pairs,
            "jobs": jobs,
            "snpu_ops": c.op_count(),
            "ort_1_thread_ms": o1,
            "ort_2_threads_ms": o2,
            "ort_medians_ms": [s1, s2],
        }),
    );
    m.unload(&mut npu).unwrap();
}

fn main() {
    virtio_accel_integration::bench::fixed_allocator();
    let o = Opts::from_args("models");
    if !o.table.is_empty() {
        match table::render(&o.table) {
            Ok(t) => print!("{t}"),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        return;
    }
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
