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

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use vhost_device_accel::backend::sim::{Exec, Progress, Tile};
use vhost_device_accel::memory::MemStats;
use vhost_device_accel::Config;
use virtio_accel_guest::workloads;
use virtio_accel_integration::bench::load::{contend, jain, Load};
use virtio_accel_integration::bench::{
    buffers, interleaved, mlp_of, native_ms, quantile, ratios, table, Figure, Opts, Report, Target,
    Unit,
};
use virtio_accel_integration::*;
use virtio_accel_protocol::*;

const MS: Unit = Unit::Of("ms");

/// The config every part uses: one engine.
fn config() -> Config {
    Config {
        workers: 1,
        ..Default::default()
    }
}

fn fairness(o: &Opts, r: &mut Report) {
    let (rounds, warm, secs) = if o.quick {
        (1, 0.1, 0.3)
    } else {
        (7, 0.2, 1.0)
    };
    let big = mlp_of(10.0, 1);
    let small = mlp_of(0.5, 2);
    let (nb, ns) = (native_ms(&big), native_ms(&small));
    let loads = [
        Load {
            workload: big.clone(),
            depth: 8,
        },
        Load {
            workload: small.clone(),
            depth: 1,
        },
    ];
    let (da, db) = (loads[0].depth, loads[1].depth);
    for (name, weights, target) in [("equal", [1, 1], 0.5), ("3:1", [3, 1], 0.75)] {
        let shares: Vec<f64> = (0..rounds)
            .map(|_| contend(&config(), &weights, &loads, warm, secs).shares()[0])
            .collect();
        r.figure(
            &format!("fairness.{name}"),
            Figure::new(
                format!("weights {name}: A ({nb:.2} ms jobs ×{da}) beside B ({ns:.2} ms ×{db}): A's device-time share"),
                Unit::Percent,
                &shares,
            )
            .target(Target::Within(target - 0.05, target + 0.05))
            .floor(format!("{:.0}% of one engine's time", target * 100.0)),
        );
    }
    // Eight VMs, job sizes log-spaced over 0.1–10 ms, two in flight each.
    let sizes: Vec<f64> = (0..8).map(|i| 0.1 * 100f64.powf(i as f64 / 7.0)).collect();
    let depth = 2;
    let loads: Vec<Load> = sizes
        .iter()
        .enumerate()
        .map(|(i, &ms)| Load {
            workload: mlp_of(ms, 10 + i as u64),
            depth,
        })
        .collect();
    let measured: Vec<f64> = loads.iter().map(|l| native_ms(&l.workload)).collect();
    let js: Vec<f64> = (0..rounds)
        .map(|_| jain(&contend(&config(), &vec![1; loads.len()], &loads, warm, secs).shares()))
        .collect();
    r.figure(
        "fairness.eight_vms",
        Figure::new(
            format!(
                "8 VMs, jobs {:.2}–{:.1} ms ×{depth}, equal weights: Jain over device time",
                measured.iter().copied().fold(f64::INFINITY, f64::min),
                measured.iter().copied().fold(0.0, f64::max)
            ),
            Unit::Plain,
            &js,
        )
        .target(Target::AtLeast(0.99))
        .floor("equal shares of one engine's time"),
    );
}

fn noisy_neighbour(o: &Opts, r: &mut Report) {
    let (warm, secs) = if o.quick { (0.1, 0.3) } else { (0.2, 1.0) };
    let big = Load {
        workload: mlp_of(10.0, 1),
        depth: 8,
    };
    let small = Load {
        workload: mlp_of(0.5, 2),
        depth: 1,
    };
    // Paired, interleaved: B alone, then B beside A (order alternating).
    let got = interleaved(o.rounds(), 2, |i| {
        let w = if i == 0 {
            contend(&config(), &[1], std::slice::from_ref(&small), warm, secs)
        } else {
            contend(
                &config(),
                &[1, 1],
                &[small.clone(), big.clone()],
                warm,
                secs,
            )
        };
        (
            quantile(&w.latency_ms[0], 0.99),
            quantile(&w.latency_ms[0], 0.5),
        )
    });
    let col = |i: usize, k: usize| -> Vec<f64> {
        got[i]
            .iter()
            .map(|x| if k == 0 { x.0 } else { x.1 })
            .collect()
    };
    let (solo, beside) = (col(0, 0), col(1, 0));
    let quantum_ms = config().quantum_us as f64 / 1e3;
    let added: Vec<f64> = beside.iter().zip(&solo).map(|(b, s)| b - s).collect();
    r.figure(
        "noisy_neighbour.p99_added",
        Figure::new(
            "noisy neighbour: B's p99 job latency beside A minus alone",
            MS,
            &added,
        )
        .target(Target::AtMost(2.0 * quantum_ms))
        .floor("two scheduling quanta: what B may wait behind A's running slice")
        .side("B alone p99", MS, &solo)
        .side("B beside A p99", MS, &beside)
        .side("B alone p50", MS, &col(0, 1))
        .side("B beside A p50", MS, &col(1, 1)),
    );
    r.figure(
        "noisy_neighbour.p99_ratio",
        Figure::new(
            "noisy neighbour: B's p99 job latency beside A / alone",
            Unit::Times,
            &ratios(&beside, &solo),
        )
        .floor("B alone on the NPU"),
    );
}

fn timeout(o: &Opts, r: &mut Report) {
    const N: u32 = 2048;
    let rounds = o.rounds();
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
        let req = a.broadcast_matmul(ca, N);
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
        nop_p99.push(quantile(&lat, 0.99));
    }
    let q = cfg.quantum_us as f64 / 1e3;
    let limit = cfg.job_timeout_ms as f64;
    r.figure(
        "timeout.lost_after",
        Figure::new(
            format!("one {N}³ f32 MATMUL, timeout {limit} ms: device time when lost"),
            MS,
            &used_ms,
        )
        .target(Target::AtMost(limit + q))
        .floor("the timeout plus one slice")
        .side("wall time, B beside it", MS, &lost_ms),
    );
    r.figure(
        "timeout.b_nop_p99",
        Figure::new("B's NOPs meanwhile: p99 latency", MS, &nop_p99)
            .target(Target::AtMost(2.0 * q))
            .floor("two slices: B waits at most one slice of A's op"),
    );
    r.figure(
        "timeout.b_nop_max",
        Figure::new("B's NOPs meanwhile: longest latency", MS, &nop_max)
            .target(Target::AtMost(2.0 * q))
            .floor("two slices: B waits at most one slice of A's op"),
    );
}

/// One job of `w` on the software NPU's executor with `tile`, asking
/// between steps whether to go on as an engine does; its time in ms and
/// the steps it took.
fn run_once(
    w: &workloads::Workload,
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
    for (size, w) in [
        ("small", workloads::mlp(11, 128, 256, 512, 64)),
        ("small", workloads::conv2d(12, 56, 16, 48, 3, 1, 1)),
        ("large", workloads::mlp(13, 1024, 256, 1024, 256)),
        ("large", workloads::conv2d(14, 112, 32, 64, 3, 1, 1)),
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
            ratio.push(s / u);
        }
        let mut got = vec![0u8; w.output_len()];
        bos[w.output.0].read(w.output.1, &mut got).unwrap();
        w.check(&got).unwrap();
        let key = format!("slicing_cost.{}_{size}", w.name);
        r.figure(
            &key,
            Figure::new(
                format!(
                    "slicing cost, {} ~{:.0} ms ({steps} steps): sliced / whole-op time",
                    w.name,
                    quantile(&tw, 0.5)
                ),
                Unit::Times,
                &ratio,
            )
            .target(Target::AtMost(1.02))
            .floor("the same job run with no preemption points (whole ops)")
            .side("sliced", MS, &ts)
            .side("whole", MS, &tw)
            .side("longest step", MS, &longest),
        );
        r.data.insert(
            key,
            json!({ "longest_step_p99_ms": quantile(&longest, 0.99), "pairs": pairs }),
        );
    }
}

fn main() {
    virtio_accel_integration::bench::fixed_allocator();
    let opts = Opts::from_args("sharing");
    if !opts.table.is_empty() {
        match table::render(&opts.table) {
            Ok(t) => print!("{t}"),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        return;
    }
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
            let t = Instant::now();
            part(&opts, &mut report);
            report.time(name, t.elapsed().as_secs_f64());
        }
    }
    report.finish("virtio-accel NPU sharing, one engine", &opts);
}
