//! How the daemon shares one NPU between VMs: device-time shares for jobs
//! of different sizes and weights, a small-job VM's latency beside a
//! large-job VM, a single long op under the job timeout, and what slicing
//! costs. Real daemon, real sockets, the software NPU on one engine (so the
//! VMs compete for it and the harness's guests keep the other core).
//!
//! cargo bench -p virtio-accel-integration --bench sharing [-- --quick] [--json PATH]
//!
//! Every figure is measured in this run: shares and latencies over
//! repeated rounds (median and range), the slicing cost from paired,
//! interleaved rounds (sliced, unsliced, unsliced, sliced, …).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;
use vhost_device_accel::backend::sim::{Exec, Progress, SimNpu, Tile};
use vhost_device_accel::memory::MemStats;
use vhost_device_accel::Config;
use virtio_accel_guest::workloads::{self, Workload};
use virtio_accel_integration::bench::{buffers, pct, spread, Opts, Report};
use virtio_accel_integration::*;
use virtio_accel_protocol::*;

/// The config every part uses: one engine.
fn config() -> Config {
    Config {
        workers: 1,
        ..Default::default()
    }
}

/// Median time of `w` run whole on the calling thread.
fn native_ms(w: &Workload) -> f64 {
    let (mem, backings) = buffers(w);
    let stats = MemStats::default();
    let bos: Vec<_> = backings
        .iter()
        .map(|b| b.resolve(&mem, &stats).unwrap())
        .collect();
    let t: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            SimNpu::run_program(&w.program, &bos, Tile::WHOLE).unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    pct(&t, 0.5)
}

/// An MLP whose job takes about `ms` on this machine (calibrated in two
/// steps: time is not quite linear in the batch).
fn mlp_of(ms: f64, seed: u64) -> Workload {
    let mut batch = 64u32;
    for _ in 0..4 {
        let t = native_ms(&workloads::mlp(seed, batch, 256, 256, 64));
        let f = (ms / t).clamp(0.25, 4.0);
        batch = ((f64::from(batch) * f).round() as u32).clamp(1, 65536);
    }
    workloads::mlp(seed, batch, 256, 256, 64)
}

/// Keeps `depth` jobs of `w` in flight on VM `i` until `stop`; returns
/// each job's latency (submit to answer) in ms.
fn drive(
    d: &Daemon,
    i: usize,
    w: &Workload,
    depth: usize,
    go: &Barrier,
    stop: &AtomicBool,
) -> Vec<f64> {
    let mut g = Guest::connect(d.socket(i), GuestOptions::default());
    let c = g.ctx_create();
    let l = g.load(c, w, Layout::Contiguous);
    go.wait();
    let mut sent = HashMap::new();
    let (mut fence, mut lat) = (0u64, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        while sent.len() < depth {
            fence += 1;
            let p = g.submit_async(&Guest::run_request(c, fence, w, &l));
            sent.insert(p, Instant::now());
        }
        let (p, r) = g.wait_any_submit();
        assert_eq!(r.status(), VIRTIO_ACCEL_RESP_OK);
        lat.push(sent.remove(&p).unwrap().elapsed().as_secs_f64() * 1e3);
    }
    while !sent.is_empty() {
        let (p, _) = g.wait_any_submit();
        sent.remove(&p);
    }
    lat
}

/// Runs one load per VM for `secs` after a warm-up; returns each VM's
/// device-time share of the window and its latencies.
fn contend(weights: &[u32], loads: &[(Workload, usize)], secs: f64) -> (Vec<f64>, Vec<Vec<f64>>) {
    let d = Arc::new(Daemon::start_weighted(config(), weights));
    let go = Arc::new(Barrier::new(loads.len() + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = loads
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, (w, depth))| {
            let (d, go, stop) = (d.clone(), go.clone(), stop.clone());
            std::thread::spawn(move || drive(&d, i, &w, depth, &go, &stop))
        })
        .collect();
    go.wait();
    std::thread::sleep(Duration::from_millis(200));
    let dev = |i| d.vm_stats(i).map_or(0.0, |s| s.device_seconds);
    let before: Vec<f64> = (0..loads.len()).map(dev).collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let after: Vec<f64> = (0..loads.len()).map(dev).collect();
    stop.store(true, Ordering::Relaxed);
    let lats = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let used: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: f64 = used.iter().sum();
    (used.iter().map(|u| u / total).collect(), lats)
}

fn jain(x: &[f64]) -> f64 {
    let s: f64 = x.iter().sum();
    s * s / (x.len() as f64 * x.iter().map(|v| v * v).sum::<f64>())
}

fn fairness(o: &Opts, r: &mut Report) {
    let (rounds, secs) = if o.quick { (1, 0.3) } else { (5, 2.0) };
    let big = mlp_of(10.0, 1);
    let small = mlp_of(0.5, 2);
    let (nb, ns) = (native_ms(&big), native_ms(&small));
    for (name, weights, target) in [("equal", [1, 1], 0.5), ("3:1", [3, 1], 0.75)] {
        let loads = [(big.clone(), 8), (small.clone(), 1)];
        let shares: Vec<f64> = (0..rounds)
            .map(|_| contend(&weights, &loads, secs).0[0])
            .collect();
        let (m, lo, hi) = spread(&shares);
        r.rows.push(format!(
            "weights {name:<5} A {nb:5.2} ms jobs ×8, B {ns:4.2} ms jobs ×1 | A's share {:5.1}% [{:5.1}–{:5.1}] over {rounds} rounds (target {:.0}% ± 5)",
            m * 100.0, lo * 100.0, hi * 100.0, target * 100.0
        ));
        r.out.insert(
            format!("fairness.{name}"),
            json!({ "a_job_ms": nb, "b_job_ms": ns, "a_share": shares, "median": m, "target": target }),
        );
    }
    // Eight VMs, job sizes log-spaced over 0.1–10 ms, two in flight each.
    let sizes: Vec<f64> = (0..8).map(|i| 0.1 * 100f64.powf(i as f64 / 7.0)).collect();
    let loads: Vec<(Workload, usize)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &ms)| (mlp_of(ms, 10 + i as u64), 2))
        .collect();
    let js: Vec<f64> = (0..rounds)
        .map(|_| jain(&contend(&[1; 8], &loads, secs).0))
        .collect();
    let (m, lo, hi) = spread(&js);
    r.rows.push(format!(
        "8 VMs, jobs 0.1–10 ms, equal weights    | Jain index over device time {m:.4} [{lo:.4}–{hi:.4}] (target ≥ 0.99)"
    ));
    r.out.insert(
        "fairness.eight_vms".into(),
        json!({ "sizes_ms": sizes, "jain": js }),
    );
}

fn noisy_neighbour(o: &Opts, r: &mut Report) {
    let (pairs, secs) = if o.quick { (1, 0.3) } else { (4, 2.0) };
    let big = mlp_of(10.0, 1);
    let small = mlp_of(0.5, 2);
    let (mut solo, mut beside) = (Vec::new(), Vec::new());
    let (mut solo50, mut beside50) = (Vec::new(), Vec::new());
    for r in 0..pairs {
        // Interleaved, order alternating: solo/beside, beside/solo, …
        for first in [r % 2 == 0, r % 2 != 0] {
            if first {
                let (_, l) = contend(&[1], &[(small.clone(), 1)], secs);
                solo.push(pct(&l[0], 0.99));
                solo50.push(pct(&l[0], 0.5));
            } else {
                let (_, l) = contend(&[1, 1], &[(small.clone(), 1), (big.clone(), 8)], secs);
                beside.push(pct(&l[0], 0.99));
                beside50.push(pct(&l[0], 0.5));
            }
        }
    }
    let (s, slo, shi) = spread(&solo);
    let (b, blo, bhi) = spread(&beside);
    let quantum_ms = config().quantum_us as f64 / 1e3;
    r.rows.push(format!(
        "noisy neighbour: B's p99 solo {s:5.2} ms [{slo:.2}–{shi:.2}], beside A {b:5.2} ms [{blo:.2}–{bhi:.2}] | +{:.2} ms (target ≤ 2 slices = {:.1} ms); p50 {:.2} → {:.2} ms",
        b - s,
        2.0 * quantum_ms,
        spread(&solo50).0,
        spread(&beside50).0,
    ));
    r.out.insert(
        "noisy_neighbour".into(),
        json!({ "solo_p99_ms": solo, "beside_p99_ms": beside, "solo_p50_ms": solo50, "beside_p50_ms": beside50, "slice_ms": quantum_ms }),
    );
}

fn timeout(o: &Opts, r: &mut Report) {
    let rounds = if o.quick { 1 } else { 5 };
    let mut cfg = config();
    cfg.job_timeout_ms = 100;
    let (mut lost_ms, mut nop_max, mut nop_p99) = (Vec::new(), Vec::new(), Vec::new());
    let mut used_ms = Vec::new();
    for _ in 0..rounds {
        let d = Daemon::start(cfg.clone(), 2);
        let mut a = Guest::connect(d.socket(0), GuestOptions::default());
        let mut b = Guest::connect(d.socket(1), GuestOptions::default());
        let ca = a.ctx_create();
        let cb = b.ctx_create();
        let req = a.broadcast_matmul(ca, 2048);
        let t = Instant::now();
        let p = a.submit_async(&req);
        while d.vm_stats(0).unwrap().counts.running == 0 {
            std::thread::yield_now();
        }
        let mut lat = Vec::new();
        let mut f = 0;
        // B's NOPs, one at a time, while A's op is on the NPU.
        while d.vm_stats(0).unwrap().counts.jobs > 0 {
            f += 1;
            let s = Instant::now();
            assert_eq!(
                b.submit(&Guest::nop_request(cb, f, &[], 1)).status(),
                VIRTIO_ACCEL_RESP_OK
            );
            lat.push(s.elapsed().as_secs_f64() * 1e3);
        }
        let r = a.wait_submit(p);
        assert_eq!(r.status(), VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST);
        lost_ms.push(t.elapsed().as_secs_f64() * 1e3);
        // The op was A's only job: A's device time is the op's.
        used_ms.push(d.vm_stats(0).unwrap().device_seconds * 1e3);
        nop_max.push(lat.iter().copied().fold(0.0, f64::max));
        nop_p99.push(pct(&lat, 0.99));
    }
    let (l, _, _) = spread(&lost_ms);
    let (u, ulo, uhi) = spread(&used_ms);
    let (m, mlo, mhi) = spread(&nop_max);
    let (p, plo, phi) = spread(&nop_p99);
    let q = cfg.quantum_us as f64 / 1e3;
    let limit = cfg.job_timeout_ms;
    r.rows.push(format!(
        "2048³ MATMUL, timeout {limit} ms: lost after {u:6.1} ms [{ulo:.1}–{uhi:.1}] of its device time (target ≤ {limit} + 1 slice), {l:.1} ms wall beside B"
    ));
    r.rows.push(format!(
        "  … B's NOPs meanwhile: p99 {p:.2} ms [{plo:.2}–{phi:.2}], max {m:.2} ms [{mlo:.2}–{mhi:.2}] (target ≤ 2 slices = {:.1} ms)",
        2.0 * q
    ));
    r.out.insert(
        "timeout".into(),
        json!({ "lost_after_device_ms": used_ms, "lost_after_wall_ms": lost_ms, "b_nop_max_ms": nop_max, "b_nop_p99_ms": nop_p99, "timeout_ms": limit }),
    );
}

/// One job of `w` on the software NPU's executor with `tile`, asking
/// between steps whether to go on as an engine does; its time in ms and
/// the steps it took.
fn run_once(
    w: &Workload,
    bos: &[vhost_device_accel::memory::BoMem<'_>],
    tile: Tile,
) -> (f64, u64, f64) {
    let stop = AtomicBool::new(false);
    let mut steps = 0u64;
    let t = Instant::now();
    let (mut last, mut longest) = (t, Duration::ZERO);
    let mut exec = Exec::new(w.program.clone(), tile);
    loop {
        let go = &mut || {
            steps += 1;
            let now = Instant::now();
            longest = longest.max(now - last);
            last = now;
            !stop.load(Ordering::Relaxed)
        };
        if let Progress::Done { .. } = exec.run(bos, go).unwrap() {
            break;
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(t.elapsed()), steps + 1, ms(longest.max(last.elapsed())))
}

fn slicing_cost(o: &Opts, r: &mut Report) {
    let pairs = if o.quick { 10 } else { 200 };
    // About 1 ms (mostly whole tiles) and about 10 ms (many tiles).
    for w in [
        workloads::mlp(11, 128, 256, 512, 64),
        workloads::conv2d(12, 56, 16, 48, 3, 1, 1),
        workloads::mlp(13, 1024, 256, 1024, 256),
        workloads::conv2d(14, 112, 32, 64, 3, 1, 1),
    ] {
        let (mem, backings) = buffers(&w);
        let stats = MemStats::default();
        let bos: Vec<_> = backings
            .iter()
            .map(|b| b.resolve(&mem, &stats).unwrap())
            .collect();
        let (_, steps, _) = run_once(&w, &bos, Tile::SLICED);
        let mut longest = Vec::new();
        for _ in 0..5 {
            run_once(&w, &bos, Tile::SLICED);
            run_once(&w, &bos, Tile::WHOLE);
        }
        // Paired and interleaved, the order alternating pair by pair.
        let (mut ts, mut tw, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..pairs {
            let (s, u) = if i % 2 == 0 {
                let s = run_once(&w, &bos, Tile::SLICED);
                (s, run_once(&w, &bos, Tile::WHOLE).0)
            } else {
                let u = run_once(&w, &bos, Tile::WHOLE).0;
                (run_once(&w, &bos, Tile::SLICED), u)
            };
            longest.push(s.2);
            let s = s.0;
            ts.push(s);
            tw.push(u);
            ratio.push(s / u - 1.0);
        }
        let mut got = vec![0u8; w.output_len()];
        bos[w.output.0].read(w.output.1, &mut got).unwrap();
        w.check(&got).unwrap();
        let (m, q1, q3) = (pct(&ratio, 0.5), pct(&ratio, 0.25), pct(&ratio, 0.75));
        r.rows.push(format!(
            "slicing cost, {:<7} | sliced ({steps:4} steps, longest p50 {:.2} ms p99 {:.2} ms) {:6.3} ms vs whole ops {:6.3} ms per job: {:+5.1}% (IQR {:+.1} – {:+.1}) over {pairs} paired jobs (target ≤ 2%)",
            w.name,
            pct(&longest, 0.5),
            pct(&longest, 0.99),
            pct(&ts, 0.5),
            pct(&tw, 0.5),
            m * 100.0,
            q1 * 100.0,
            q3 * 100.0
        ));
        r.out.insert(
            format!("slicing_cost.{}_{:.0}ms", w.name, pct(&tw, 0.5)),
            json!({ "steps": steps, "longest_step_ms": longest, "sliced_ms_p50": pct(&ts, 0.5), "whole_ms_p50": pct(&tw, 0.5), "ratio_minus_one_p50": m, "iqr": [q1, q3], "pairs": pairs }),
        );
    }
}

fn main() {
    let opts = Opts::from_args("sharing");
    let mut report = Report::default();
    type Part = fn(&Opts, &mut Report);
    let parts: [(&str, Part); 4] = [
        ("slicing", slicing_cost),
        ("timeout", timeout),
        ("fairness", fairness),
        ("noisy", noisy_neighbour),
    ];
    for (name, part) in parts {
        if opts.runs(name) {
            part(&opts, &mut report);
        }
    }
    report.finish("virtio-accel NPU sharing, one engine", &opts);
}
