//! A device's life over a real socket, played as QEMU plays it: a VM stop
//! and `cont` lose nothing and touch nothing while stopped; a reset or a
//! disconnect stops every write to the guest's memory before it is
//! acknowledged.

use std::time::{Duration, Instant};

use vhost::vhost_user::VhostUserFrontend;
use vhost_device_accel::Config;
use virtio_accel_integration::*;
use virtio_accel_protocol::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

const OK: u32 = VIRTIO_ACCEL_RESP_OK;

#[track_caller]
fn assert_status(got: u32, want: u32) {
    assert_eq!(status_name(got), status_name(want), "status {got:#x}");
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not reached");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Every byte of the guest's memory.
fn snapshot(g: &Guest) -> Vec<u8> {
    let mut all = Vec::new();
    for r in g.mem.iter() {
        let mut b = vec![0u8; r.len() as usize];
        g.mem.read_slice(&mut b, r.start_addr()).unwrap();
        all.extend(b);
    }
    all
}

#[test]
fn stop_and_cont_keep_every_object_and_answer_every_chain_once() {
    let d = Daemon::start(
        Config {
            workers: 1,
            ..Default::default()
        },
        1,
    );
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let c = g.ctx_create();
    // Of lower priority, so that its job never preempts the writer.
    let (c2_status, c2) = g.ctx_create_status(VIRTIO_ACCEL_PRIORITY_LOW);
    assert_status(c2_status, OK);
    let w = Writer::new(&mut g, c, 1, 512);
    let running = g.submit_async(&w.request(c, 1));
    // Queued behind the running job (its own context), and in another
    // context (the only engine is busy).
    let queued = g.submit_async(&Guest::nop_request(c, 2, &[], 1));
    let other = g.submit_async(&Guest::nop_request(c2, 1, &[], 1));
    wait_until("the writer on the NPU", || {
        d.vm_stats(0).is_some_and(|s| s.counts.running == 1)
    });

    // The stop returns once the running job has ended; nothing starts and
    // nothing is answered while the rings are stopped.
    let bases = g.vm_stop();
    let s = d.vm_stats(0).unwrap();
    assert_eq!(s.counts.running, 0, "a job still on the NPU after the stop");
    assert_eq!(s.counts.jobs, 2, "the queued jobs were started or dropped");
    assert_eq!(s.parked_chains, 3, "every taken chain is kept");
    assert_eq!(s.counts.contexts, 2);
    let before = snapshot(&g);
    std::thread::sleep(Duration::from_millis(300));
    // The jobs are COPYs: the NPU's buffer-to-buffer bytes would move.
    let npu = |s: &vhost_device_accel::server::VmStats| s.npu_bytes_written + s.npu_bytes_copied;
    assert_eq!(
        npu(&d.vm_stats(0).unwrap()),
        npu(&s),
        "the NPU moved bytes while the device was stopped"
    );
    assert!(
        before == snapshot(&g),
        "guest memory changed while the device was stopped"
    );

    g.vm_cont(&bases);
    let r = g.wait_submit(running);
    assert_status(r.status(), OK);
    assert_eq!(
        g.read_bo(&w.dst, 0, w.dst.size as usize),
        vec![0xab; w.dst.size as usize]
    );
    assert_status(g.wait_submit(queued).status(), OK);
    assert_status(g.wait_submit(other).status(), OK);
    // The objects are the ones from before the stop.
    let info = g.call(&Request::BoInfo(Guest::bo_req(
        VIRTIO_ACCEL_CMD_BO_INFO,
        c,
        w.dst.handle,
    )));
    assert_status(info.status(), OK);
    assert_status(g.submit(&w.request(c, 3)).status(), OK);
    assert_status(g.submit(&Guest::nop_request(c2, 2, &[], 1)).status(), OK);
    let s = d.vm_stats(0).unwrap();
    assert_eq!((s.counts.jobs, s.parked_chains), (0, 0));
}

#[test]
fn stop_and_cont_repeatedly_under_load_lose_no_chain() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let c = g.ctx_create();
    let w = Writer::new(&mut g, c, 1, 16);
    let mut fence = 0;
    for _ in 0..20 {
        let mut pending = Vec::new();
        for _ in 0..4 {
            fence += 1;
            pending.push(g.submit_async(&w.request(c, fence)));
        }
        let bases = g.vm_stop();
        g.vm_cont(&bases);
        for p in pending {
            assert_status(g.wait_submit(p).status(), OK);
        }
    }
    assert_eq!(d.vm_stats(0).unwrap().parked_chains, 0);
}

/// A reset of each kind, while a job writes: once it is acknowledged the
/// device never writes the guest's memory again.
#[test]
fn reset_mid_job_stops_every_write_before_it_is_acknowledged() {
    let d = Daemon::start(
        Config {
            workers: 1,
            ..Default::default()
        },
        1,
    );
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    for round in 0..100 {
        let c = g.ctx_create();
        let w = Writer::new(&mut g, c, 1, 1024);
        g.submit_async(&w.request(c, 1));
        wait_until("the writer on the NPU", || {
            d.vm_stats(0).is_some_and(|s| s.counts.running == 1)
        });
        match round % 3 {
            // RESET_DEVICE, then fresh rings.
            0 => g.device_reset(),
            // A guest reset as QEMU shows it: a stop, then fresh rings in
            // the same place or elsewhere.
            1 => g.driver_reset(true),
            _ => g.driver_reset(false),
        }
        assert!(
            !w.written_after_zeroing(&g, Duration::from_millis(5)),
            "round {round}: the job wrote guest memory after the reset"
        );
        // A driver reset is found when the new rings start: ask something.
        assert_status(g.caps().hdr.type_.get(), OK);
        let s = d.vm_stats(0).unwrap();
        assert_eq!(s.counts, Default::default(), "round {round}");
        assert_eq!(s.parked_chains, 0, "round {round}");
        for b in [&w.src, &w.dst, &w.cmd] {
            g.free_backing(&b.ranges);
        }
    }
    // The device works after all of it.
    let c = g.ctx_create();
    assert_status(g.submit(&Guest::nop_request(c, 1, &[], 1)).status(), OK);
}

#[test]
fn a_reset_while_stopped_drops_everything_and_answers_nothing_old() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let c = g.ctx_create();
    let w = Writer::new(&mut g, c, 1, 64);
    g.submit_async(&w.request(c, 1));
    g.submit_async(&Guest::nop_request(c, 2, &[], 1));
    // The guest resets the device while the VM is stopped: the rings stop,
    // then come back fresh. An answer for an old chain on the new rings
    // would fail the harness ("bad head").
    g.driver_reset(false);
    // The device finds the new rings when they start, before it takes
    // anything from them.
    assert_status(
        g.call(&Request::BoInfo(Guest::bo_req(
            VIRTIO_ACCEL_CMD_BO_INFO,
            c,
            w.dst.handle,
        )))
        .status(),
        VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE,
    );
    let s = d.vm_stats(0).unwrap();
    assert_eq!((s.counts, s.parked_chains), (Default::default(), 0));
    let c = g.ctx_create();
    assert_status(g.submit(&Guest::nop_request(c, 1, &[], 1)).status(), OK);
    assert!(g.events().is_empty());
}

#[test]
fn a_disconnect_mid_job_stops_every_write_before_the_socket_serves_again() {
    // With injected latency a job holds its engine for 100 ms whatever an
    // abort says: the VM must not be gone before its job is.
    for latency_us in [0, 100_000] {
        let mut cfg = Config {
            workers: 1,
            ..Default::default()
        };
        cfg.sim.faults.latency_us = latency_us;
        let d = Daemon::start(cfg, 1);
        for _ in 0..5 {
            let mut g = Guest::connect(d.socket(0), GuestOptions::default());
            let c = g.ctx_create();
            let w = Writer::new(&mut g, c, 1, 1024);
            g.submit_async(&w.request(c, 1));
            wait_until("the writer on the NPU", || {
                d.vm_stats(0).is_some_and(|s| s.counts.running == 1)
            });
            // The VMM goes away; its memory stays here to watch.
            let Guest { mem, frontend, .. } = g;
            drop(frontend);
            d.wait_disconnected(0);
            // The VM went only once its job had left the NPU.
            let metrics = d.server.metrics().encode();
            assert!(
                metrics.lines().any(|l| l == "vaccel_engines_busy 0"),
                "an engine still busy after the disconnect:\n{metrics}"
            );
            let dst = w.dst.ranges[0];
            mem.write_slice(&vec![0u8; dst.1 as usize], GuestAddress(dst.0))
                .unwrap();
            std::thread::sleep(Duration::from_millis(5));
            let mut back = vec![0u8; dst.1 as usize];
            mem.read_slice(&mut back, GuestAddress(dst.0)).unwrap();
            assert!(
                back.iter().all(|&b| b == 0),
                "the job wrote guest memory after the VM was gone"
            );
        }
    }
}

#[test]
fn reset_device_is_acknowledged_only_after_the_aborted_job_stopped() {
    let d = Daemon::start(
        Config {
            workers: 1,
            ..Default::default()
        },
        1,
    );
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let c = g.ctx_create();
    let w = Writer::new(&mut g, c, 4, 1024);
    g.submit_async(&w.request(c, 1));
    wait_until("the writer on the NPU", || {
        d.vm_stats(0).is_some_and(|s| s.counts.running == 1)
    });
    g.frontend.reset_device().unwrap();
    assert_eq!(d.vm_stats(0).unwrap().counts.running, 0);
}
