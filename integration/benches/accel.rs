//! What the virtual path costs: the real daemon driven through real
//! vhost-user sockets by the in-process harness. Every ratio comes from
//! paired, interleaved rounds (both sides back to back in each round,
//! the order alternating) and is quoted as the median of the per-round
//! ratios with its interquartile range; instruction counts come from
//! callgrind and are checked against a committed baseline.
//!
//! cargo bench -p virtio-accel-integration --bench accel [-- --quick] [--json PATH] [--only PART]
//! cargo bench -p virtio-accel-integration --bench accel -- --only instructions --write-baseline
//! cargo bench -p virtio-accel-integration --bench accel -- --table RUN.json..
//!
//! Prints each figure as it is measured and writes them all as JSON with
//! the machine they ran on (default target/bench-accel.json). `--quick`
//! runs three short rounds of each part (CI keeps the program working and
//! checks the instruction counts; its times mean little).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde_json::{json, Value};
use vhost_device_accel::server::VmStats;
use vhost_device_accel::Config;
use virtio_accel_guest::workloads::{self, Workload};
use virtio_accel_integration::bench::load::{contend, jain, Load};
use virtio_accel_integration::bench::pipe::Pipe;
use virtio_accel_integration::bench::stats::NOISY_IQR;
use virtio_accel_integration::bench::{
    cost, interleaved, mlp_of, native, quantile, ratios, table, Figure, Opts, Report, Target, Unit,
};
use virtio_accel_integration::*;
use virtio_accel_protocol::snpu::{DType, OpDesc, Program, TensorDesc};
use virtio_accel_protocol::*;
use vmm_sys_util::eventfd::EventFd;

const US: Unit = Unit::Of("µs");

/// p50 and p99 in microseconds of `n` timed calls of `f` after warm-up.
fn latency(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..n / 10 + 10 {
        f();
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    (quantile(&v, 0.5), quantile(&v, 0.99))
}

/// Two threads waking each other through eventfds: the wake-up floor a
/// blocking round trip cannot go below.
fn eventfd_pingpong(n: usize) -> (f64, f64) {
    let a = Arc::new(EventFd::new(0).unwrap());
    let b = Arc::new(EventFd::new(0).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let (a2, b2, stop2) = (a.clone(), b.clone(), stop.clone());
    let t = std::thread::spawn(move || loop {
        a2.read().unwrap();
        if stop2.load(Ordering::Relaxed) {
            return;
        }
        b2.write(1).unwrap();
    });
    let r = latency(n, || {
        a.write(1).unwrap();
        b.read().unwrap();
    });
    stop.store(true, Ordering::Relaxed);
    a.write(1).unwrap();
    t.join().unwrap();
    r
}

fn caps_request() -> Request {
    Request::GetCaps(GetCaps {
        hdr: Hdr::new(VIRTIO_ACCEL_CMD_GET_CAPS, 0),
        ..Default::default()
    })
}

/// The bytes the daemon copied to or from guest memory between two
/// snapshots, per operation, by path.
fn copied(before: &VmStats, after: &VmStats, ops: u64) -> Value {
    let d = |a: u64, b: u64| (a - b) as f64 / ops as f64;
    json!({
        "desc_read": d(after.desc_bytes_read, before.desc_bytes_read),
        "request_read": d(after.request_bytes_read, before.request_bytes_read),
        "response_written": d(after.response_bytes_written, before.response_bytes_written),
        "event_written": d(after.event_bytes_written, before.event_bytes_written),
        "cmd_read": d(after.cmd_bytes_copied, before.cmd_bytes_copied),
        "npu_staged_read": d(after.npu_bytes_read, before.npu_bytes_read),
        "npu_written": d(after.npu_bytes_written, before.npu_bytes_written),
        "npu_buffer_to_buffer": d(after.npu_bytes_copied, before.npu_bytes_copied),
    })
}

/// Records the per-operation byte counts under `bytes.NAME` and prints
/// them.
fn bytes(r: &mut Report, name: &str, v: Value) {
    let parts: Vec<String> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| format!("{k} {}", n.as_f64().unwrap_or(f64::NAN)))
        .collect();
    r.line(format!(
        "bytes copied to/from guest memory per {name}: {}",
        parts.join(", ")
    ));
    r.data.insert(format!("bytes.{name}"), v);
}

/// Restricts the calling thread (and the threads it creates from now on)
/// to CPU 0, or back to every CPU.
fn pin(on: bool, all: &CpuSet) {
    let set = if on {
        let mut s = CpuSet::new();
        s.set(0).unwrap();
        s
    } else {
        *all
    };
    sched_setaffinity(Pid::from_raw(0), &set).expect("sched_setaffinity");
}

fn round_trip(o: &Opts, r: &mut Report) {
    let n = if o.quick { 300 } else { 2000 };
    let all = sched_getaffinity(Pid::from_raw(0)).unwrap();
    let d = Daemon::start(Config::default(), 2);
    let (echo_b, echo_s) = (
        echo::start(&daemon::unique_dir()),
        echo::start(&daemon::unique_dir()),
    );
    // A second daemon and echo whose threads all run on CPU 0, as the
    // guest will while it drives them: every wake-up stays on one CPU.
    pin(true, &all);
    let dp = Daemon::start(Config::default(), 1);
    let echo_p = echo::start(&daemon::unique_dir());
    pin(false, &all);
    let with = |wait| GuestOptions {
        wait,
        ..GuestOptions::default()
    };
    let mut gb = Guest::connect(d.socket(0), with(WaitMode::Block));
    let mut gs = Guest::connect(d.socket(1), with(WaitMode::Spin));
    let mut gp = Guest::connect(dp.socket(0), with(WaitMode::Block));
    let mut eb = Guest::connect(&echo_b, with(WaitMode::Block));
    let mut es = Guest::connect(&echo_s, with(WaitMode::Spin));
    let mut ep = Guest::connect(&echo_p, with(WaitMode::Block));
    let caps = caps_request();
    let (req, resp) = (caps.encode(), caps.response_size());
    let before = d.vm_stats(0).unwrap();
    let got = interleaved(o.rounds(), 7, |i| {
        let g = match i {
            0 => &mut gb,
            1 => &mut eb,
            2 => return eventfd_pingpong(n),
            3 => &mut gs,
            4 => &mut es,
            5 => &mut gp,
            _ => &mut ep,
        };
        let pinned = i >= 5;
        pin(pinned, &all);
        let l = latency(n, || {
            g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &req, resp);
        });
        pin(false, &all);
        l
    });
    let after = d.vm_stats(0).unwrap();
    let calls = (n + n / 10 + 10) as u64 * o.rounds() as u64;
    let p = |i: usize, k: usize| -> Vec<f64> {
        got[i]
            .iter()
            .map(|x| if k == 0 { x.0 } else { x.1 })
            .collect()
    };
    let echo_floor =
        "the echo device: the same vhost-user stack completing each chain with no work";
    r.figure(
        "round_trip.block_vs_echo",
        Figure::new(
            "GET_CAPS round trip, blocking: daemon / echo (p50)",
            Unit::Times,
            &ratios(&p(0, 0), &p(1, 0)),
        )
        .target(Target::AtMost(1.2))
        .floor(echo_floor)
        .side("daemon p50", US, &p(0, 0))
        .side("daemon p99", US, &p(0, 1))
        .side("echo p50", US, &p(1, 0))
        .side("echo p99", US, &p(1, 1)),
    );
    r.figure(
        "round_trip.block_vs_eventfd",
        Figure::new(
            "GET_CAPS round trip, blocking: daemon / eventfd ping-pong (p50)",
            Unit::Times,
            &ratios(&p(0, 0), &p(2, 0)),
        )
        .target(Target::AtMost(1.5))
        .floor("two threads waking each other through eventfds: the wake-ups alone")
        .side("daemon p50", US, &p(0, 0))
        .side("eventfd p50", US, &p(2, 0))
        .side("eventfd p99", US, &p(2, 1)),
    );
    r.figure(
        "round_trip.spin_vs_echo",
        Figure::new(
            "GET_CAPS round trip, guest spinning: daemon / echo (p50)",
            Unit::Times,
            &ratios(&p(3, 0), &p(4, 0)),
        )
        .target(Target::AtMost(2.0))
        .floor(echo_floor)
        .side("daemon p50", US, &p(3, 0))
        .side("daemon p99", US, &p(3, 1))
        .side("echo p50", US, &p(4, 0))
        .side("echo p99", US, &p(4, 1)),
    );
    r.figure(
        "round_trip.pinned_vs_echo",
        Figure::new(
            "GET_CAPS round trip, blocking, all on one CPU: daemon / echo (p50)",
            Unit::Times,
            &ratios(&p(5, 0), &p(6, 0)),
        )
        .target(Target::AtMost(1.2))
        .floor(echo_floor)
        .side("daemon p50", US, &p(5, 0))
        .side("daemon p99", US, &p(5, 1))
        .side("echo p50", US, &p(6, 0))
        .side("echo p99", US, &p(6, 1)),
    );
    bytes(r, "GET_CAPS", copied(&before, &after, calls));
}

fn jobs(o: &Opts, r: &mut Report) {
    let n: u64 = if o.quick { 300 } else { 2000 };
    let d = Daemon::start(Config::default(), 1);
    let echo = echo::start(&daemon::unique_dir());
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let mut e = Guest::connect(&echo, GuestOptions::default());
    assert!(g.features & guest::VIRTIO_RING_F_EVENT_IDX != 0);
    let c = g.ctx_create();
    let req_max = Guest::nop_request(c, 1, &[], 1).encode().len();
    let resp = 32u32;
    let mut fence = 0u64;
    for depth in [1usize, 16, 64] {
        let mut pg = Pipe::new(&mut g, VIRTIO_ACCEL_VQ_SUBMIT, depth, req_max, resp);
        let mut pe = Pipe::new(&mut e, VIRTIO_ACCEL_VQ_SUBMIT, depth, req_max, resp);
        let before = d.vm_stats(0).unwrap();
        let f = std::cell::Cell::new(fence);
        let make = |_| {
            f.set(f.get() + 1);
            Guest::nop_request(c, f.get(), &[], 1).encode()
        };
        let got = interleaved(o.rounds(), 2, |i| {
            if i == 0 {
                n as f64
                    / pg.run(&mut g, n, make, |len, b| {
                        assert_eq!(len, resp);
                        let status = u32::from_le_bytes(b[..4].try_into().unwrap());
                        assert_eq!(status, VIRTIO_ACCEL_RESP_OK);
                    })
            } else {
                n as f64 / pe.run(&mut e, n, make, |len, _| assert_eq!(len, resp))
            }
        });
        fence = f.get();
        let after = d.vm_stats(0).unwrap();
        let per_s = Unit::Of("jobs/s");
        r.figure(
            &format!("jobs.depth{depth}"),
            Figure::new(
                format!("no-op jobs, {depth} in flight: daemon / echo chains per second"),
                Unit::Percent,
                &ratios(&got[0], &got[1]),
            )
            .target(Target::AtLeast(0.5))
            .floor("the echo device completing the same chains at the same depth")
            .side("daemon", per_s, &got[0])
            .side("echo", per_s, &got[1]),
        );
        if depth == 1 {
            bytes(
                r,
                "no-op job",
                copied(&before, &after, n * o.rounds() as u64),
            );
        }
    }
}

fn copy(o: &Opts, r: &mut Report) {
    let size: usize = 64 << 20;
    let reps = 3;
    let mut src = vec![1u8; size];
    let mut dst = vec![0u8; size];
    dst.copy_from_slice(&src);
    src[size - 1] = 2;
    let d = Daemon::start(Config::default(), 1);
    let mut g = Guest::connect(
        d.socket(0),
        GuestOptions {
            regions: vec![320 << 20],
            ..GuestOptions::default()
        },
    );
    let c = g.ctx_create();
    let a = g.bo(c, size as u64, Layout::Contiguous);
    let b = g.bo(c, size as u64, Layout::Contiguous);
    g.write_bo(&a, 0, &vec![3u8; size]);
    g.write_bo(&b, 0, &vec![0u8; size]);
    let n = (size / 4) as u32;
    let prog = Program {
        ops: vec![OpDesc::Copy {
            src: TensorDesc::dense(0, DType::F32, 0, &[n]),
            dst: TensorDesc::dense(1, DType::F32, 0, &[n]),
        }],
    }
    .encode();
    let mut fence = 0u64;
    let mut job = || {
        fence += 1;
        let req = Guest::submit_request(
            c,
            fence,
            &[
                (a.handle, VIRTIO_ACCEL_ACCESS_READ),
                (b.handle, VIRTIO_ACCEL_ACCESS_WRITE),
            ],
            &[],
            CmdSource::Inline(prog.clone()),
        );
        let t = Instant::now();
        let resp = g.submit(&req);
        let s = t.elapsed().as_secs_f64();
        assert_eq!(resp.status(), VIRTIO_ACCEL_RESP_OK);
        s
    };
    job();
    let before = d.vm_stats(0).unwrap();
    let got = interleaved(o.rounds(), 2, |i| {
        let t: Vec<f64> = (0..reps)
            .map(|_| {
                if i == 0 {
                    return job();
                }
                let t = Instant::now();
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&dst);
                t.elapsed().as_secs_f64()
            })
            .collect();
        size as f64 / quantile(&t, 0.5) / 1e9
    });
    let after = d.vm_stats(0).unwrap();
    assert_eq!(g.read_bo(&b, (size - 16) as u64, 16), vec![3u8; 16]);
    let gbs = Unit::Of("GB/s");
    r.figure(
        "copy.vs_memcpy",
        Figure::new(
            format!("COPY job of {} MiB: daemon / memcpy throughput", size >> 20),
            Unit::Percent,
            &ratios(&got[0], &got[1]),
        )
        .target(Target::AtLeast(0.9))
        .floor("memcpy of the same size in this process: the memory bandwidth")
        .side("copy job", gbs, &got[0])
        .side("memcpy", gbs, &got[1]),
    );
    bytes(
        r,
        "COPY job",
        copied(&before, &after, (reps * o.rounds()) as u64),
    );
}

/// `jobs` jobs of `w` one at a time: median submit-to-answer time and
/// median device time, seconds.
fn one_at_a_time(
    g: &mut Guest,
    c: u32,
    fence: &mut u64,
    w: &Workload,
    l: &guest::Loaded,
    jobs: usize,
) -> (f64, f64) {
    let (mut t, mut dev) = (Vec::new(), Vec::new());
    for _ in 0..jobs {
        *fence += 1;
        let req = Guest::run_request(c, *fence, w, l);
        let s = Instant::now();
        let resp = g.submit(&req);
        t.push(s.elapsed().as_secs_f64());
        let Response::Submit(rs) = resp else {
            panic!("unexpected {resp:?}")
        };
        assert_eq!(rs.hdr.type_.get(), VIRTIO_ACCEL_RESP_OK);
        dev.push(rs.device_time_ns.get() as f64 / 1e9);
    }
    (quantile(&t, 0.5), quantile(&dev, 0.5))
}

/// `jobs` jobs of `w`, `depth` in flight: seconds per job.
fn in_flight(
    g: &mut Guest,
    c: u32,
    fence: &mut u64,
    w: &Workload,
    l: &guest::Loaded,
    jobs: usize,
    depth: usize,
) -> f64 {
    let s = Instant::now();
    let mut inflight = 0;
    for _ in 0..jobs {
        if inflight == depth {
            assert_eq!(g.wait_any_submit().1.status(), VIRTIO_ACCEL_RESP_OK);
            inflight -= 1;
        }
        *fence += 1;
        g.submit_async(&Guest::run_request(c, *fence, w, l));
        inflight += 1;
    }
    for _ in 0..inflight {
        assert_eq!(g.wait_any_submit().1.status(), VIRTIO_ACCEL_RESP_OK);
    }
    s.elapsed().as_secs_f64() / jobs as f64
}

fn inference(o: &Opts, r: &mut Report) {
    const DEPTH: usize = 4;
    let jobs = if o.quick { 5 } else { 30 };
    // About 1 ms of compute each on the software NPU.
    let ws = [
        workloads::mlp(11, 128, 256, 512, 64),
        workloads::conv2d(12, 56, 16, 48, 3, 1, 1),
    ];
    let d = Daemon::start(Config::default(), 1);
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let c = g.ctx_create();
    let mut fence = 0;
    for w in &ws {
        // Guest buffers are scattered pages, as a guest's GEM objects are.
        let l = g.load(c, w, Layout::Scattered);
        one_at_a_time(&mut g, c, &mut fence, w, &l, 2);
        w.check(&g.output(w, &l)).unwrap();
        let before = d.vm_stats(0).unwrap();
        let f0 = fence;
        let mut nat = native(w);
        let got = interleaved(o.rounds(), 3, |i| match i {
            0 => one_at_a_time(&mut g, c, &mut fence, w, &l, jobs),
            1 => (in_flight(&mut g, c, &mut fence, w, &l, jobs, DEPTH), 0.0),
            _ => {
                let t: Vec<f64> = (0..jobs).map(|_| nat()).collect();
                (quantile(&t, 0.5), 0.0)
            }
        });
        let ran = fence - f0;
        let after = d.vm_stats(0).unwrap();
        let col = |i: usize, k: usize| -> Vec<f64> {
            got[i]
                .iter()
                .map(|x| 1e3 * if k == 0 { x.0 } else { x.1 })
                .collect()
        };
        let (virt, dev, depth4, nat) = (col(0, 0), col(0, 1), col(1, 0), col(2, 0));
        let ms = Unit::Of("ms");
        let native_floor = "the same kernel called in-process on the same inputs (native)";
        let name = w.name;
        r.figure(
            &format!("inference.{name}.depth1"),
            Figure::new(
                format!("{name}, one job at a time: virtual / native time"),
                Unit::Times,
                &ratios(&virt, &nat),
            )
            .target(Target::AtMost(1.10))
            .floor(native_floor)
            .side("virtual", ms, &virt)
            .side("NPU time", ms, &dev)
            .side("native", ms, &nat),
        );
        r.figure(
            &format!("inference.{name}.depth4"),
            Figure::new(
                format!("{name}, {DEPTH} jobs in flight: virtual / native time per job"),
                Unit::Times,
                &ratios(&depth4, &nat),
            )
            .target(Target::AtMost(1.05))
            .floor(native_floor)
            .side("virtual", ms, &depth4)
            .side("native", ms, &nat),
        );
        r.figure(
            &format!("inference.{name}.npu"),
            Figure::new(
                format!("{name}: NPU time on the engine / native time"),
                Unit::Times,
                &ratios(&dev, &nat),
            )
            .target(Target::AtMost(1.05))
            .floor(native_floor),
        );
        let transport: Vec<f64> = virt.iter().zip(&dev).map(|(v, d)| (v - d) * 1e3).collect();
        r.figure(
            &format!("inference.{name}.transport"),
            Figure::new(
                format!("{name}, one job at a time: submit-to-answer minus NPU time"),
                US,
                &transport,
            ),
        );
        w.check(&g.output(w, &l)).unwrap();
        bytes(r, &format!("{name} job"), copied(&before, &after, ran));
    }
}

fn scaling(o: &Opts, r: &mut Report) {
    let (warm, secs) = if o.quick { (0.05, 0.1) } else { (0.1, 0.3) };
    // One engine: the NPU's capacity is fixed, so the ratio is what
    // sharing it between VMs costs. Jobs of a few hundred microseconds.
    let cfg = Config {
        workers: 1,
        ..Config::default()
    };
    let load = Load {
        workload: workloads::mlp(21, 16, 128, 256, 32),
        depth: 4,
    };
    let counts = [1usize, 2, 8];
    let got = interleaved(o.rounds(), counts.len(), |i| {
        let vms = counts[i];
        contend(&cfg, &vec![1; vms], &vec![load.clone(); vms], warm, secs).jobs_per_s()
    });
    let per_s = Unit::Of("jobs/s");
    for (i, &vms) in counts.iter().enumerate().skip(1) {
        r.figure(
            &format!("scaling.vms{vms}"),
            Figure::new(
                format!(
                    "{vms} VMs vs 1 VM on one engine, MLP jobs ×{} each: aggregate jobs/s",
                    load.depth
                ),
                Unit::Percent,
                &ratios(&got[i], &got[0]),
            )
            .target(Target::AtLeast(0.9))
            .floor("one VM keeping the one engine busy: the NPU's capacity for this job")
            .side(format!("{vms} VMs"), per_s, &got[i])
            .side("1 VM", per_s, &got[0]),
        );
    }
}

/// Jain's index of shares divided by weights: 1 when every VM got what
/// its weight entitles it to.
fn weighted_jain(shares: &[f64], weights: &[u32]) -> f64 {
    let x: Vec<f64> = shares
        .iter()
        .zip(weights)
        .map(|(s, w)| s / f64::from(*w))
        .collect();
    jain(&x)
}

fn fairness(o: &Opts, r: &mut Report) {
    let (warm, secs) = if o.quick { (0.05, 0.15) } else { (0.2, 0.5) };
    let cfg = Config {
        workers: 1,
        ..Config::default()
    };
    // Unequal jobs and depths: a scheduler that shares by jobs, or lets
    // deep queues or long jobs take more, shows here.
    let shape = [(0.3, 1usize), (0.6, 2), (1.5, 4), (4.0, 8)];
    let loads: Vec<Load> = shape
        .iter()
        .enumerate()
        .map(|(i, &(ms, depth))| Load {
            workload: mlp_of(ms, 30 + i as u64),
            depth,
        })
        .collect();
    let equal = vec![1u32; loads.len()];
    // A deliberately unfair configuration the figure must flag: the VM
    // with the most demand weighted 4 (it can use the share it is given).
    let heavy = loads.len() - 1;
    let mut skewed = equal.clone();
    skewed[heavy] = 4;
    let skew = format!("the {} ms VM weighted {}", shape[heavy].0, skewed[heavy]);
    let got = interleaved(o.rounds(), 2, |i| {
        let weights = if i == 0 { &equal } else { &skewed };
        contend(&cfg, weights, &loads, warm, secs).shares()
    });
    let index = Unit::Plain;
    let jains = |v: &[Vec<f64>]| -> Vec<f64> { v.iter().map(|s| jain(s)).collect() };
    let what = shape
        .iter()
        .map(|(ms, d)| format!("{ms} ms ×{d}"))
        .collect::<Vec<_>>()
        .join(", ");
    r.figure(
        "fairness.equal_weights",
        Figure::new(
            format!(
                "{} VMs, jobs {what}, equal weights: Jain over device time",
                loads.len()
            ),
            index,
            &jains(&got[0]),
        )
        .target(Target::AtLeast(0.99))
        .floor("equal shares of one engine's time"),
    );
    r.figure(
        "fairness.control_skewed",
        Figure::new(
            format!("same, {skew} (unfair on purpose): Jain over device time"),
            index,
            &jains(&got[1]),
        )
        .target(Target::AtMost(0.99))
        .floor("must fall below the fairness target: the figure can see unfairness"),
    );
    let wj: Vec<f64> = got[1].iter().map(|s| weighted_jain(s, &skewed)).collect();
    r.figure(
        "fairness.control_weighted",
        Figure::new(
            format!("same, {skew}: Jain over device time / weight"),
            index,
            &wj,
        )
        .target(Target::AtLeast(0.99))
        .floor("shares in proportion to the weights"),
    );
    let per_vm = |v: &[Vec<f64>]| -> Vec<f64> {
        (0..loads.len())
            .map(|i| quantile(&v.iter().map(|s| s[i]).collect::<Vec<_>>(), 0.5))
            .collect()
    };
    let show = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{:.1}%", s * 100.0))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (pf, pu) = (per_vm(&got[0]), per_vm(&got[1]));
    r.line(format!(
        "device-time shares by VM (median): equal weights {}; weights {skewed:?} {}",
        show(&pf),
        show(&pu)
    ));
    r.data.insert(
        "fairness.shares".into(),
        json!({ "shape_ms_depth": shape, "equal": got[0], "skewed": got[1], "skewed_weights": skewed }),
    );
}

fn instructions(o: &Opts, r: &mut Report) {
    let runs = if o.quick { 1 } else { 2 };
    let mut counts = Vec::new();
    for _ in 0..runs {
        match cost::measure() {
            Ok(c) => counts.push(c),
            Err(e) => {
                r.line(format!("instruction counts: {e}"));
                r.failed = true;
                return;
            }
        }
    }
    let base = cost::baseline();
    let count = Unit::Of("instructions");
    for &(op, n, what) in cost::OPS {
        let v: Vec<f64> = counts.iter().map(|c| c[op]).collect();
        let mut f = Figure::new(format!("{what} (mean of {n})"), count, &v)
            .floor("callgrind count of the daemon process alone (the guest runs natively)");
        if let Some(b) = base.as_ref().and_then(|b| b.get(op)) {
            f = f.target(Target::AtMost(b * (1.0 + cost::TOLERANCE)));
            let (growth, ok) = cost::against(v[0], *b);
            r.line(format!(
                "{op}: {} instructions vs baseline {} ({:+.1}%, limit {:+.0}%) {}",
                v[0].round(),
                b.round(),
                growth * 100.0,
                cost::TOLERANCE * 100.0,
                if ok { "ok" } else { "GREW TOO MUCH" }
            ));
            r.failed |= !ok && !o.write_baseline;
        } else {
            r.line(format!(
                "{op}: no baseline in {}",
                cost::baseline_path().display()
            ));
            r.failed |= !o.write_baseline;
        }
        r.figure(&format!("instructions.{op}"), f);
    }
    let per_run = |k: &str| counts.iter().map(|c| c[k]).collect::<Vec<f64>>();
    r.figure(
        "instructions.mlp_kernel",
        Figure::new(
            "the MLP job's kernel (Exec::run), left out above",
            count,
            &per_run("mlp_kernel"),
        )
        .floor("the software NPU's own work"),
    );
    r.figure(
        "instructions.request_vs_echo",
        Figure::new(
            "GET_CAPS round trip: daemon / echo instructions",
            Unit::Times,
            &ratios(&per_run("request"), &per_run("echo_request")),
        )
        .floor("the echo device's instructions for the same chain"),
    );
    if runs > 1 {
        let worst = cost::OPS
            .iter()
            .map(|&(op, _, _)| {
                let v = per_run(op);
                (v[1] - v[0]).abs() / v[0]
            })
            .fold(0.0, f64::max);
        r.line(format!(
            "instruction counts, run 1 vs run 2: largest difference {:.3}%",
            worst * 100.0
        ));
    }
    r.data.insert("instructions.runs".into(), json!(counts));
    if o.write_baseline {
        cost::write_baseline(&counts[0]).expect("write the baseline");
        r.line(format!(
            "baseline written to {}",
            cost::baseline_path().display()
        ));
    }
}

fn main() {
    cost::serve_if_asked();
    let opts = Opts::from_args("accel");
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
    println!(
        "paired rounds: {}; a figure is noisy when its IQR is wider than {:.0}% of its median",
        opts.rounds(),
        NOISY_IQR * 100.0
    );
    let mut report = Report::default();
    type Part = fn(&Opts, &mut Report);
    let parts: [(&str, Part); 7] = [
        ("round_trip", round_trip),
        ("jobs", jobs),
        ("copy", copy),
        ("inference", inference),
        ("scaling", scaling),
        ("fairness", fairness),
        ("instructions", instructions),
    ];
    for (name, part) in parts {
        if opts.runs(name) {
            let t = Instant::now();
            part(&opts, &mut report);
            report.time(name, t.elapsed().as_secs_f64());
        }
    }
    report.finish("virtio-accel benchmark", &opts);
}
