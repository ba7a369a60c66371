//! The data path: a COPY job against the same copy made in this process,
//! and inference jobs against the same kernel called in this process.
//! Both baselines run on the guest's own buffers (the same memfd pages,
//! mapped again here) and on the device's CPU, so the only difference
//! between the sides is the virtual path.

use std::sync::mpsc;
use std::time::Instant;

use vhost_device_accel::backend::sim::{SimNpu, Tile};
use vhost_device_accel::memory::{Backing, GuestMem, MemStats};
use vhost_device_accel::Config;
use virtio_accel_guest::workloads::{self, Workload};
use virtio_accel_integration::bench::place::{self, GUEST};
use virtio_accel_integration::bench::{
    interleaved, quantile, ratios, Figure, Opts, Report, Target, Unit,
};
use virtio_accel_integration::guest::Loaded;
use virtio_accel_integration::*;
use virtio_accel_protocol::snpu::{DType, OpDesc, Program, TensorDesc};
use virtio_accel_protocol::*;

use crate::{bytes, copied, US};

pub fn copy(o: &Opts, r: &mut Report) {
    place::on(GUEST, || copy_placed(o, r));
}

fn copy_placed(o: &Opts, r: &mut Report) {
    let size: usize = 64 << 20;
    let reps = 3;
    let dev = place::device();
    let d = place::on(dev, || Daemon::start(Config::default(), 1));
    let n = (size / 4) as u32;
    let prog = Program {
        ops: vec![OpDesc::Copy {
            src: TensorDesc::dense(0, DType::F32, 0, &[n]),
            dst: TensorDesc::dense(1, DType::F32, 0, &[n]),
        }],
    }
    .encode();
    // Each round on a new guest with new buffers, so that where their
    // pages happen to lie is part of the spread of the rounds rather
    // than one run's bias. Both sides of a round copy the same pages.
    let mut bytes_per_job = None;
    let mut round = |virtual_first: bool| {
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
        let mut fence = 0u64;
        let mut job = |g: &mut Guest| {
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
        job(&mut g);
        // The baseline: the same bytes copied between the same pages, in
        // this process, by the copy the NPU's COPY makes (a memcpy).
        let host = place::host_view(&g.mem);
        let stats = MemStats::default();
        let (ba, bb) = (
            Backing::new(a.ranges.clone()),
            Backing::new(b.ranges.clone()),
        );
        let memcpy = || {
            let (ma, mb) = (
                ba.resolve(&host, &stats).unwrap(),
                bb.resolve(&host, &stats).unwrap(),
            );
            let t = Instant::now();
            ma.copy_to(0, &mb, 0, size).unwrap();
            t.elapsed().as_secs_f64()
        };
        let rate = |t: Vec<f64>| size as f64 / quantile(&t, 0.5) / 1e9;
        let before = d.vm_stats(0).unwrap();
        // Both sides on this round's buffers, in the round's order.
        let (mut virt, mut mem) = (0.0, 0.0);
        let order = if virtual_first {
            [true, false]
        } else {
            [false, true]
        };
        for job_side in order {
            if job_side {
                virt = rate((0..reps).map(|_| job(&mut g)).collect());
            } else {
                mem = rate(place::on(dev, || (0..reps).map(|_| memcpy()).collect()));
            }
        }
        let after = d.vm_stats(0).unwrap();
        assert_eq!(g.read_bo(&b, (size - 16) as u64, 16), vec![3u8; 16]);
        bytes_per_job.get_or_insert_with(|| copied(&before, &after, reps as u64));
        (virt, mem)
    };
    // A new guest each round (the order of the sides alternating).
    let got: Vec<(f64, f64)> = (0..o.rounds()).map(|i| round(i % 2 == 0)).collect();
    let virt: Vec<f64> = got.iter().map(|x| x.0).collect();
    let mem: Vec<f64> = got.iter().map(|x| x.1).collect();
    let gbs = Unit::Of("GB/s");
    r.figure(
        "copy.vs_memcpy",
        Figure::new(
            format!("COPY job of {} MiB: daemon / memcpy throughput", size >> 20),
            Unit::Percent,
            &ratios(&virt, &mem),
        )
        .target(Target::AtLeast(0.9))
        .floor("memcpy between the same pages on the device's CPU, in this process: the memory bandwidth")
        .side("copy job", gbs, &virt)
        .side("memcpy", gbs, &mem),
    );
    if let Some(b) = bytes_per_job {
        bytes(r, "COPY job", b);
    }
}

/// Times one run of `w` on the software NPU in this process, on this
/// thread, with no preemption points, on the guest's own buffers `l`
/// (through `host`): the native baseline.
fn native<'a>(host: &'a GuestMem, w: &'a Workload, l: &Loaded) -> impl FnMut() -> f64 + 'a {
    let backings: Vec<Backing> = l
        .bos
        .iter()
        .map(|b| Backing::new(b.ranges.clone()))
        .collect();
    move || {
        let stats = MemStats::default();
        let bos: Vec<_> = backings
            .iter()
            .map(|b| b.resolve(host, &stats).unwrap())
            .collect();
        let t = Instant::now();
        SimNpu::run_program(&w.program, &bos, Tile::WHOLE).unwrap();
        t.elapsed().as_secs_f64()
    }
}

/// `jobs` jobs of `w` one at a time: median submit-to-answer time and
/// median device time, seconds.
fn one_at_a_time(
    g: &mut Guest,
    c: u32,
    fence: &mut u64,
    w: &Workload,
    l: &Loaded,
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
    l: &Loaded,
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

pub fn inference(o: &Opts, r: &mut Report) {
    place::on(GUEST, || inference_placed(o, r));
}

fn inference_placed(o: &Opts, r: &mut Report) {
    const DEPTH: usize = 4;
    let jobs = if o.quick { 5 } else { 30 };
    // About 1 ms of compute each on the software NPU.
    let ws = [
        workloads::mlp(11, 128, 256, 512, 64),
        workloads::conv2d(12, 56, 16, 48, 3, 1, 1),
    ];
    let dev = place::device();
    let d = place::on(dev, || Daemon::start(Config::default(), 1));
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let host = place::host_view(&g.mem);
    let c = g.ctx_create();
    let mut fence = 0;
    for w in &ws {
        // Guest buffers are scattered pages, as a guest's GEM objects are.
        let l = g.load(c, w, Layout::Scattered);
        one_at_a_time(&mut g, c, &mut fence, w, &l, 2);
        w.check(&g.output(w, &l)).unwrap();
        let before = d.vm_stats(0).unwrap();
        let f0 = fence;
        // The native runs are made by a thread of their own on the
        // device's CPU, as the engine's are: on the benchmark's main
        // thread, whose allocator had served the earlier parts' large
        // buffers, the kernel's working arrays were at times fresh pages
        // on every run (in one run of three, native took 1.5× as long).
        let (host, l) = (&host, &l);
        let got = std::thread::scope(|s| {
            let (ask, asked) = mpsc::channel::<usize>();
            let (give, given) = mpsc::channel::<Vec<f64>>();
            s.spawn(move || {
                place::pin(dev);
                let mut nat = native(host, w, l);
                for n in asked {
                    let _ = give.send((0..n).map(|_| nat()).collect());
                }
            });
            interleaved(o.rounds(), 3, |i| match i {
                0 => one_at_a_time(&mut g, c, &mut fence, w, l, jobs),
                1 => (in_flight(&mut g, c, &mut fence, w, l, jobs, DEPTH), 0.0),
                _ => {
                    ask.send(jobs).unwrap();
                    (quantile(&given.recv().unwrap(), 0.5), 0.0)
                }
            })
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
        let transport: Vec<f64> = virt.iter().zip(&dev).map(|(v, d)| (v - d) * 1e3).collect();
        let ms = Unit::Of("ms");
        let native_floor = "the same kernel called in this process on the guest's own buffers, on the device's CPU (native)";
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
            .side("native", ms, &nat)
            .side("transport (virtual minus NPU time)", US, &transport),
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
        w.check(&g.output(w, l)).unwrap();
        bytes(r, &format!("{name} job"), copied(&before, &after, ran));
    }
}
