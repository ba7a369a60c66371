//! What the virtual path costs: the real daemon driven through a real
//! vhost-user socket by the in-process harness, each figure beside a
//! baseline measured in the same run.
//!
//! cargo bench -p virtio-accel-integration --bench accel [-- --quick] [--json PATH]
//!
//! Prints a table and writes the same figures as JSON (default
//! target/bench-accel.json). `--quick` runs each part for a fraction of a
//! second, so CI keeps the program working; its numbers mean little.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde_json::json;
use vhost_device_accel::backend::sim::{SimNpu, Tile};
use vhost_device_accel::memory::MemStats;
use vhost_device_accel::Config;
use virtio_accel_guest::workloads::{self, Workload};
use virtio_accel_integration::bench::{buffers, pct, Opts, Report};
use virtio_accel_integration::*;
use virtio_accel_protocol::snpu::{DType, OpDesc, Program, TensorDesc};
use virtio_accel_protocol::*;
use vmm_sys_util::eventfd::EventFd;

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
    (pct(&v, 0.5), pct(&v, 0.99))
}

/// Restricts this thread (and every thread it creates from now on) to
/// CPU 0, or back to all CPUs.
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

fn caps_request() -> Vec<u8> {
    Request::GetCaps(GetCaps {
        hdr: Hdr::new(VIRTIO_ACCEL_CMD_GET_CAPS, 0),
        ..Default::default()
    })
    .encode()
}

fn round_trip(o: &Opts, r: &mut Report) {
    let n = if o.quick { 2_000 } else { 100_000 };
    let all = sched_getaffinity(Pid::from_raw(0)).unwrap();
    let req = caps_request();
    for pinned in [false, true] {
        pin(pinned, &all);
        let tag = if pinned { "pinned" } else { "unpinned" };
        let floor_efd = eventfd_pingpong(n);
        let dir = daemon::unique_dir();
        let echo = echo::start(&dir);
        let d = Daemon::start(Config::default(), 1);
        for mode in [WaitMode::Block, WaitMode::Spin] {
            let opts = GuestOptions {
                wait: mode,
                ..GuestOptions::default()
            };
            let mut e = Guest::connect(&echo, opts.clone());
            let floor_echo = latency(n, || {
                e.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &req, 112);
            });
            drop(e);
            let mut g = Guest::connect(d.socket(0), opts);
            let accel = latency(n, || {
                let (len, _) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &req, 112);
                assert_eq!(len, 112);
            });
            drop(g);
            d.wait_disconnected(0);
            let m = if mode == WaitMode::Block {
                "block"
            } else {
                "spin"
            };
            let floor = if mode == WaitMode::Block {
                floor_efd
            } else {
                floor_echo
            };
            let floor_name = if mode == WaitMode::Block {
                "eventfd"
            } else {
                "echo"
            };
            r.rows.push(format!(
                "round trip {m:5} {tag:8} | p50 {:7.2} µs p99 {:7.2} µs | echo p50 {:7.2} µs | eventfd p50 {:7.2} µs | {:.2}x {floor_name} floor",
                accel.0, accel.1, floor_echo.0, floor_efd.0, accel.0 / floor.0
            ));
            r.out.insert(
                format!("round_trip.{m}.{tag}"),
                json!({
                    "p50_us": accel.0, "p99_us": accel.1,
                    "echo_p50_us": floor_echo.0, "echo_p99_us": floor_echo.1,
                    "eventfd_p50_us": floor_efd.0, "eventfd_p99_us": floor_efd.1,
                    "ratio_to_floor": accel.0 / floor.0, "floor": floor_name,
                }),
            );
        }
        pin(false, &all);
    }
}

fn throughput(o: &Opts, r: &mut Report) {
    let jobs = if o.quick { 500 } else { 50_000 };
    let d = Daemon::start(Config::default(), 1);
    for depth in [1usize, 16, 64] {
        let mut g = Guest::connect(d.socket(0), GuestOptions::default());
        assert!(g.features & guest::VIRTIO_RING_F_EVENT_IDX != 0);
        let c = g.ctx_create();
        let mut fence = 0;
        let t = Instant::now();
        let mut inflight = 0;
        let mut done = 0;
        while done < jobs {
            while inflight < depth && fence < jobs as u64 {
                fence += 1;
                g.submit_async(&Guest::nop_request(c, fence, &[], 1));
                inflight += 1;
            }
            let (_, r) = g.wait_any_submit();
            assert_eq!(r.status(), VIRTIO_ACCEL_RESP_OK);
            inflight -= 1;
            done += 1;
        }
        let rate = jobs as f64 / t.elapsed().as_secs_f64();
        r.rows.push(format!(
            "no-op jobs, depth {depth:2}   | {rate:10.0} jobs/s"
        ));
        r.out.insert(
            format!("throughput.depth{depth}"),
            json!({ "jobs_per_s": rate }),
        );
        g.ctx_destroy(c);
        drop(g);
        d.wait_disconnected(0);
    }
}

fn data_path(o: &Opts, r: &mut Report) {
    let size: usize = 64 << 20;
    let reps = if o.quick { 2 } else { 10 };
    // memcpy of the same size, prefaulted.
    let src = vec![1u8; size];
    let mut dst = vec![0u8; size];
    dst.copy_from_slice(&src);
    let t_memcpy: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let memcpy_gbs = size as f64 / pct(&t_memcpy, 0.5) / 1e9;
    drop((src, dst));

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
    let before = d.vm_stats(0).unwrap();
    let mut times = Vec::new();
    for f in 1..=reps as u64 + 1 {
        let req = Guest::submit_request(
            c,
            f,
            &[
                (a.handle, VIRTIO_ACCEL_ACCESS_READ),
                (b.handle, VIRTIO_ACCEL_ACCESS_WRITE),
            ],
            &[],
            CmdSource::Inline(prog.clone()),
        );
        let t = Instant::now();
        let r = g.submit(&req);
        let el = t.elapsed().as_secs_f64();
        assert_eq!(r.status(), VIRTIO_ACCEL_RESP_OK);
        if f > 1 {
            times.push(el);
        }
    }
    let after = d.vm_stats(0).unwrap();
    assert_eq!(g.read_bo(&b, (size - 16) as u64, 16), vec![3u8; 16]);
    let copy_gbs = size as f64 / pct(&times, 0.5) / 1e9;
    let jobs = reps as u64 + 1;
    let staged = after.npu_bytes_read - before.npu_bytes_read;
    let written = after.npu_bytes_written - before.npu_bytes_written;
    let cmd = after.cmd_bytes_copied - before.cmd_bytes_copied;
    r.rows.push(format!(
        "copy job 64 MiB          | {copy_gbs:6.2} GB/s vs memcpy {memcpy_gbs:6.2} GB/s = {:5.1}% | NPU writes {} B/job, staged reads {} B, daemon copies beyond output 0 B + {} B of command stream",
        100.0 * copy_gbs / memcpy_gbs,
        written / jobs,
        staged,
        cmd / jobs,
    ));
    r.out.insert(
        "data_path".into(),
        json!({
            "copy_gb_s": copy_gbs, "memcpy_gb_s": memcpy_gbs, "ratio": copy_gbs / memcpy_gbs,
            "npu_written_bytes_per_job": written / jobs, "npu_staged_read_bytes": staged,
            "cmd_stream_bytes_per_job": cmd / jobs,
        }),
    );
    g.ctx_destroy(c);
}

/// Runs a workload natively: the same software NPU on the same inputs,
/// called directly on memory of this process.
fn native(w: &Workload, reps: usize) -> f64 {
    let (mem, backings) = buffers(w);
    let stats = MemStats::default();
    let bos: Vec<_> = backings
        .iter()
        .map(|b| b.resolve(&mem, &stats).unwrap())
        .collect();
    let t: Vec<f64> = (0..reps + 2)
        .map(|_| {
            let t = Instant::now();
            SimNpu::run_program(&w.program, &bos, Tile::WHOLE).unwrap();
            t.elapsed().as_secs_f64()
        })
        .skip(2)
        .collect();
    let mut out = vec![0u8; w.output_len()];
    bos[w.output.0].read(w.output.1, &mut out).unwrap();
    w.check(&out).unwrap();
    pct(&t, 0.5)
}

fn inference(o: &Opts, r: &mut Report) {
    let reps = if o.quick { 5 } else { 300 };
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
        // Latency: one job at a time, submit to completion, split into
        // the NPU's own time (reported by the device) and the rest.
        let mut t = Vec::new();
        let mut dev = Vec::new();
        for i in 0..reps + 2 {
            fence += 1;
            let req = Guest::run_request(c, fence, w, &l);
            let s = Instant::now();
            let r = g.submit(&req);
            let el = s.elapsed().as_secs_f64();
            let Response::Submit(rs) = r else {
                panic!("unexpected {r:?}")
            };
            assert_eq!(rs.hdr.type_.get(), VIRTIO_ACCEL_RESP_OK);
            if i >= 2 {
                t.push(el);
                dev.push(rs.device_time_ns.get() as f64 / 1e9);
            }
        }
        w.check(&g.output(w, &l)).unwrap();
        let virt = pct(&t, 0.5);
        let npu = pct(&dev, 0.5);
        // Throughput: four jobs kept in flight, time per job.
        let s = Instant::now();
        let mut inflight = 0;
        for _ in 0..reps {
            if inflight == 4 {
                assert_eq!(g.wait_any_submit().1.status(), VIRTIO_ACCEL_RESP_OK);
                inflight -= 1;
            }
            fence += 1;
            g.submit_async(&Guest::run_request(c, fence, w, &l));
            inflight += 1;
        }
        for _ in 0..inflight {
            assert_eq!(g.wait_any_submit().1.status(), VIRTIO_ACCEL_RESP_OK);
        }
        let per_job = s.elapsed().as_secs_f64() / reps as f64;
        let nat = native(w, reps);
        let lat = 100.0 * (virt - nat) / nat;
        let thr = 100.0 * (per_job - nat) / nat;
        r.rows.push(format!(
            "{:<10} inference     | native {:6.3} ms | depth 1: {:6.3} ms (NPU {:6.3} ms + transport {:5.1} µs), overhead {lat:5.1}% | depth 4: {:6.3} ms/job, overhead {thr:5.1}%",
            w.name,
            nat * 1e3,
            virt * 1e3,
            npu * 1e3,
            (virt - npu) * 1e6,
            per_job * 1e3,
        ));
        r.out.insert(
            format!("inference.{}", w.name),
            json!({
                "native_ms": nat * 1e3,
                "depth1_ms": virt * 1e3, "depth1_overhead_pct": lat,
                "depth1_npu_ms": npu * 1e3, "depth1_transport_us": (virt - npu) * 1e6,
                "depth4_ms_per_job": per_job * 1e3, "depth4_overhead_pct": thr,
            }),
        );
    }
}

fn scaling(o: &Opts, r: &mut Report) {
    let secs = if o.quick { 0.3 } else { 3.0 };
    // A job of a few hundred microseconds, so the shared NPU is what the
    // VMs compete for.
    let w = workloads::mlp(21, 16, 128, 256, 32);
    let mut base = 0.0;
    for vms in [1usize, 2, 4, 8] {
        let d = Arc::new(Daemon::start(Config::default(), vms));
        let start = Arc::new(Barrier::new(vms));
        let handles: Vec<_> = (0..vms)
            .map(|i| {
                let (d, start, w) = (d.clone(), start.clone(), w.clone());
                std::thread::spawn(move || {
                    let mut g = Guest::connect(d.socket(i), GuestOptions::default());
                    let c = g.ctx_create();
                    let l = g.load(c, &w, Layout::Contiguous);
                    start.wait();
                    let t = Instant::now();
                    let (mut fence, mut inflight, mut done) = (0u64, 0, 0u64);
                    while t.elapsed().as_secs_f64() < secs {
                        while inflight < 4 {
                            fence += 1;
                            g.submit_async(&Guest::run_request(c, fence, &w, &l));
                            inflight += 1;
                        }
                        let (_, r) = g.wait_any_submit();
                        assert_eq!(r.status(), VIRTIO_ACCEL_RESP_OK);
                        inflight -= 1;
                        done += 1;
                    }
                    let rate = done as f64 / t.elapsed().as_secs_f64();
                    while inflight > 0 {
                        g.wait_any_submit();
                        inflight -= 1;
                    }
                    rate
                })
            })
            .collect();
        let rates: Vec<f64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let total: f64 = rates.iter().sum();
        let jain = total * total / (vms as f64 * rates.iter().map(|x| x * x).sum::<f64>());
        if vms == 1 {
            base = total;
        }
        r.rows.push(format!(
            "{vms} VM(s), MLP jobs       | aggregate {total:8.0} jobs/s = {:5.1}% of 1 VM | Jain {jain:.4}",
            100.0 * total / base
        ));
        r.out.insert(
            format!("scaling.vms{vms}"),
            json!({ "aggregate_jobs_per_s": total, "per_vm": rates, "ratio_to_one_vm": total / base, "jain": jain }),
        );
    }
}

fn main() {
    let opts = Opts::from_args("accel");
    let mut report = Report::default();
    round_trip(&opts, &mut report);
    throughput(&opts, &mut report);
    data_path(&opts, &mut report);
    inference(&opts, &mut report);
    scaling(&opts, &mut report);
    report.finish("virtio-accel benchmark", &opts);
}
