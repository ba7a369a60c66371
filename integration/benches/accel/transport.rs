//! The transport: request round trips against the echo device and an
//! eventfd ping-pong, and no-op jobs against echo chains at the same
//! depth. The guest runs on one CPU and the device threads on the other
//! (or, for the same-CPU figures, all on one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use vhost_device_accel::Config;
use virtio_accel_integration::bench::pipe::Pipe;
use virtio_accel_integration::bench::place::{self, GUEST};
use virtio_accel_integration::bench::{
    interleaved, quantile, ratios, Figure, Opts, Report, Target, Unit,
};
use virtio_accel_integration::*;
use virtio_accel_protocol::*;
use vmm_sys_util::eventfd::EventFd;

use crate::{bytes, copied, US};

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

/// Two threads waking each other through eventfds, the other one on
/// `cpu`: the wake-up floor a blocking round trip cannot go below.
fn eventfd_pingpong(n: usize, cpu: usize) -> (f64, f64) {
    let a = Arc::new(EventFd::new(0).unwrap());
    let b = Arc::new(EventFd::new(0).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let (a2, b2, stop2) = (a.clone(), b.clone(), stop.clone());
    let t = place::on(cpu, || {
        std::thread::spawn(move || loop {
            a2.read().unwrap();
            if stop2.load(Ordering::Relaxed) {
                return;
            }
            b2.write(1).unwrap();
        })
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

const ECHO_FLOOR: &str =
    "the echo device: the same vhost-user stack completing each chain with no work";
const EVENTFD_FLOOR: &str = "two threads waking each other through eventfds: the wake-ups alone";

pub fn round_trip(o: &Opts, r: &mut Report) {
    place::on(GUEST, || round_trip_placed(o, r));
}

fn round_trip_placed(o: &Opts, r: &mut Report) {
    let n = if o.quick { 300 } else { 2000 };
    let dev = place::device();
    // Device threads on the other CPU: a daemon with a socket for a
    // blocking and one for a spinning guest, and an echo device for each.
    let (d, echo_b, echo_s) = place::on(dev, || {
        (
            Daemon::start(Config::default(), 2),
            echo::start(&daemon::unique_dir()),
            echo::start(&daemon::unique_dir()),
        )
    });
    // And all on the guest's CPU.
    let (dp, echo_p) = (
        Daemon::start(Config::default(), 1),
        echo::start(&daemon::unique_dir()),
    );
    let with = |wait| GuestOptions {
        wait,
        ..GuestOptions::default()
    };
    let caps = caps_request();
    let (req, resp) = (caps.encode(), caps.response_size());
    // Each side of each round on a new connection (new guest memory, new
    // rings, a new vring thread), so that where those happen to land is
    // part of the spread of the rounds rather than one run's bias.
    let call = |path: &std::path::Path, wait| {
        let mut g = Guest::connect(path, with(wait));
        latency(n, || {
            g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &req, resp);
        })
    };
    let got = interleaved(o.rounds(), 8, |i| match i {
        0 => call(d.socket(0), WaitMode::Block),
        1 => call(&echo_b, WaitMode::Block),
        2 => eventfd_pingpong(n, dev),
        3 => call(d.socket(1), WaitMode::Spin),
        4 => call(&echo_s, WaitMode::Spin),
        5 => call(dp.socket(0), WaitMode::Block),
        6 => call(&echo_p, WaitMode::Block),
        _ => eventfd_pingpong(n, GUEST),
    });
    let p = |i: usize, k: usize| -> Vec<f64> {
        got[i]
            .iter()
            .map(|x| if k == 0 { x.0 } else { x.1 })
            .collect()
    };
    let pair = |what: &str, a: usize, b: usize, an: &str, bn: &str, floor: &str, t: f64| {
        Figure::new(what, Unit::Times, &ratios(&p(a, 0), &p(b, 0)))
            .target(Target::AtMost(t))
            .floor(floor)
            .side(format!("{an} p50"), US, &p(a, 0))
            .side(format!("{an} p99"), US, &p(a, 1))
            .side(format!("{bn} p50"), US, &p(b, 0))
            .side(format!("{bn} p99"), US, &p(b, 1))
    };
    r.figure(
        "round_trip.block_vs_echo",
        pair(
            "GET_CAPS round trip, blocking, guest and device on two CPUs: daemon / echo (p50)",
            0,
            1,
            "daemon",
            "echo",
            ECHO_FLOOR,
            1.2,
        ),
    );
    r.figure(
        "round_trip.block_vs_eventfd",
        pair(
            "same: daemon / eventfd ping-pong across the two CPUs (p50)",
            0,
            2,
            "daemon",
            "eventfd",
            EVENTFD_FLOOR,
            1.5,
        ),
    );
    r.figure(
        "round_trip.spin_vs_echo",
        pair(
            "GET_CAPS round trip, guest spinning, two CPUs: daemon / echo (p50)",
            3,
            4,
            "daemon",
            "echo",
            ECHO_FLOOR,
            2.0,
        ),
    );
    r.figure(
        "round_trip.one_cpu_vs_echo",
        pair(
            "GET_CAPS round trip, blocking, all on one CPU: daemon / echo (p50)",
            5,
            6,
            "daemon",
            "echo",
            ECHO_FLOOR,
            1.2,
        ),
    );
    r.figure(
        "round_trip.one_cpu_vs_eventfd",
        pair(
            "same: daemon / eventfd ping-pong on one CPU (p50)",
            5,
            7,
            "daemon",
            "eventfd",
            EVENTFD_FLOOR,
            1.5,
        ),
    );
    // What one request copies, counted on a connection of its own.
    let mut g = Guest::connect(d.socket(0), with(WaitMode::Block));
    let before = d.vm_stats(0).unwrap();
    for _ in 0..n {
        g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &req, resp);
    }
    let after = d.vm_stats(0).unwrap();
    bytes(r, "GET_CAPS", copied(&before, &after, n as u64));
}

pub fn jobs(o: &Opts, r: &mut Report) {
    place::on(GUEST, || jobs_placed(o, r));
}

fn jobs_placed(o: &Opts, r: &mut Report) {
    let n: u64 = if o.quick { 300 } else { 2000 };
    let (d, echo) = place::on(place::device(), || {
        (
            Daemon::start(Config::default(), 1),
            echo::start(&daemon::unique_dir()),
        )
    });
    let resp = 32u32;
    let req_max = Guest::nop_request(1, 1, &[], 1).encode().len();
    for depth in [1usize, 16, 64] {
        // Each side of each round on a new connection, as for round trips.
        let mut bytes_per_job = None;
        let got = interleaved(o.rounds(), 2, |i| {
            let path = if i == 0 { d.socket(0) } else { &echo };
            let mut g = Guest::connect(path, GuestOptions::default());
            assert!(g.features & guest::VIRTIO_RING_F_EVENT_IDX != 0);
            // The same requests for both (the echo device copies them
            // back); the daemon's need a context and growing fences.
            let c = if i == 0 { g.ctx_create() } else { 1 };
            let fence = std::cell::Cell::new(0u64);
            let make = |_| {
                fence.set(fence.get() + 1);
                Guest::nop_request(c, fence.get(), &[], 1).encode()
            };
            let mut pipe = Pipe::new(&mut g, VIRTIO_ACCEL_VQ_SUBMIT, depth, req_max, resp);
            let before = (i == 0).then(|| d.vm_stats(0).unwrap());
            let secs = pipe.run(&mut g, n, make, |len, b| {
                assert_eq!(len, resp);
                if i == 0 {
                    let status = u32::from_le_bytes(b[..4].try_into().unwrap());
                    assert_eq!(status, VIRTIO_ACCEL_RESP_OK);
                }
            });
            if let Some(before) = before {
                let after = d.vm_stats(0).unwrap();
                bytes_per_job.get_or_insert_with(|| copied(&before, &after, n));
            }
            n as f64 / secs
        });
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
        if let (1, Some(b)) = (depth, bytes_per_job) {
            bytes(r, "no-op job", b);
        }
    }
}
