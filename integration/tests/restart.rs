//! The daemon killed (SIGKILL) under a running guest and started again with
//! the same `--state-dir`: the guest reconnects as QEMU does with
//! `reconnect-ms` (every ring restarted at the used index in its memory, so
//! chains taken and not answered are offered again) and its contexts,
//! buffers and fences carry on. The daemon runs as its own process.

use std::path::PathBuf;
use std::time::Duration;

use virtio_accel_guest::workloads;
use virtio_accel_integration::daemon::unique_dir;
use virtio_accel_integration::process::DaemonProcess;
use virtio_accel_integration::*;
use virtio_accel_protocol::*;

const OK: u32 = VIRTIO_ACCEL_RESP_OK;
const DAEMON: &str = env!("CARGO_BIN_EXE_accel-daemon");

#[track_caller]
fn assert_status(got: u32, want: u32) {
    assert_eq!(status_name(got), status_name(want), "status {got:#x}");
}

struct Setup {
    socket: PathBuf,
    state: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = unique_dir();
        Setup {
            socket: dir.join("vm.sock"),
            state: dir.join("state").display().to_string(),
        }
    }

    fn daemon(&self) -> DaemonProcess {
        DaemonProcess::start(DAEMON, &self.socket, &["--state-dir", &self.state])
    }
}

#[test]
fn a_daemon_killed_mid_job_and_started_again_carries_on() {
    let s = Setup::new();
    let mut d = s.daemon();
    let mut g = Guest::connect(&s.socket, GuestOptions::default());
    let c = g.ctx_create();
    let c2 = g.ctx_create();
    let w = workloads::mlp(5, 32, 256, 128, 32);
    let l = g.load(c2, &w, Layout::Scattered);
    assert_status(g.submit(&Guest::run_request(c2, 1, &w, &l)).status(), OK);
    // Seconds of copying on the NPU, killed in the middle.
    let writer = Writer::new(&mut g, c, 4, 1024);
    let long = g.submit_async(&writer.request(c, 1));
    // Answered out of order, before the kill: the frontend's restart at the
    // used index offers this chain again, and it must not be answered twice.
    assert_status(g.submit(&Guest::nop_request(c2, 2, &[], 1)).status(), OK);
    // Queued behind the long job, and waiting on it from another context.
    let behind = g.submit_async(&Guest::nop_request(c, 2, &[], 1));
    let waiting = g.submit_async(&Guest::nop_request(c2, 3, &[(c, 2)], 1));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        g.rings[VIRTIO_ACCEL_VQ_SUBMIT as usize].used_idx(&g.mem),
        2,
        "the long job ended before the kill"
    );
    d.kill();

    let _d = s.daemon();
    g.reconnect(&s.socket);
    for p in [long, behind, waiting] {
        assert_status(g.wait_submit(p).status(), OK);
    }
    assert!(
        g.read_bo(&writer.dst, 0, writer.dst.size as usize)
            .iter()
            .all(|&b| b == 0xab),
        "the job that was killed did not run again to its end"
    );
    // The same contexts, buffers and timelines.
    g.write_bo(&l.bos[w.output.0], 0, &[0; 64]);
    assert_status(g.submit(&Guest::run_request(c2, 4, &w, &l)).status(), OK);
    w.check(&g.output(&w, &l)).unwrap();
    assert_status(g.submit(&writer.request(c, 3)).status(), OK);
    // A fence that already signalled is not submitted again.
    assert_status(
        g.submit(&Guest::nop_request(c, 3, &[], 1)).status(),
        VIRTIO_ACCEL_RESP_ERR_INVALID,
    );
    // New contexts do not take old ids.
    let c3 = g.ctx_create();
    assert!(![c, c2].contains(&c3));
}

#[test]
fn control_requests_carry_on_across_restarts_with_nothing_in_flight() {
    let s = Setup::new();
    let mut g;
    let (c, bo);
    {
        let _d = s.daemon();
        g = Guest::connect(&s.socket, GuestOptions::default());
        c = g.ctx_create();
        bo = g.bo(c, 8192, Layout::Scattered);
        g.write_bo(&bo, 0, &[7; 8192]);
    }
    // Dropped: killed.
    for round in 0..3 {
        let _d = s.daemon();
        g.reconnect(&s.socket);
        let info = g.call(&Request::BoInfo(Guest::bo_req(
            VIRTIO_ACCEL_CMD_BO_INFO,
            c,
            bo.handle,
        )));
        assert_status(info.status(), OK);
        let extra = g.bo(c, 4096, Layout::Contiguous);
        assert_ne!(extra.handle, bo.handle, "round {round}");
        assert_status(
            g.submit(&Guest::nop_request(c, round + 1, &[], 1)).status(),
            OK,
        );
    }
}

#[test]
fn a_guest_that_reset_while_the_daemon_was_down_starts_afresh() {
    let s = Setup::new();
    let mut d = s.daemon();
    let mut g = Guest::connect(&s.socket, GuestOptions::default());
    let c = g.ctx_create();
    let writer = Writer::new(&mut g, c, 4, 1024);
    g.submit_async(&writer.request(c, 1));
    d.kill();
    let _d = s.daemon();
    // The guest reboots: new rings, nothing in flight.
    let mut g = Guest::connect(&s.socket, GuestOptions::default());
    assert_status(
        g.status(&Request::CtxDestroy(Hdr::new(
            VIRTIO_ACCEL_CMD_CTX_DESTROY,
            c,
        ))),
        VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE,
    );
    let c2 = g.ctx_create();
    assert_status(g.submit(&Guest::nop_request(c2, 1, &[], 1)).status(), OK);
    assert!(g.events().is_empty());
}

#[test]
fn a_vm_that_goes_away_leaves_no_state_behind() {
    let s = Setup::new();
    let _d = s.daemon();
    let c;
    {
        let mut g = Guest::connect(&s.socket, GuestOptions::default());
        c = g.ctx_create();
        g.bo(c, 4096, Layout::Contiguous);
    }
    // The same guest memory and rings could come back only through a
    // restart; a VM that disconnects from a live daemon is gone.
    let mut g = Guest::connect(&s.socket, GuestOptions::default());
    assert_status(
        g.status(&Request::CtxDestroy(Hdr::new(
            VIRTIO_ACCEL_CMD_CTX_DESTROY,
            c,
        ))),
        VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE,
    );
}

/// The daemon dies right after it recorded answers and before it wrote
/// them, at every point of a burst of requests: after the restart every
/// chain is answered exactly once (the harness fails on a second answer),
/// and what the answers say holds.
#[test]
fn a_daemon_dying_between_recording_and_writing_answers_loses_and_repeats_nothing() {
    let mut crashes = 0;
    for crash_at in 1.. {
        let s = Setup::new();
        let (c, bo) = {
            let _d = s.daemon();
            let mut g = Guest::connect(&s.socket, GuestOptions::default());
            let c = g.ctx_create();
            let bo = g.bo(c, 4096, Layout::Contiguous);
            (c, (g, bo))
        };
        let (mut g, bo) = bo;
        let at = crash_at.to_string();
        let mut d = DaemonProcess::start(
            DAEMON,
            &s.socket,
            &["--state-dir", &s.state, "--crash-after-commits", &at],
        );
        g.reconnect(&s.socket);
        // A burst the daemon dies in the middle of: buffers created and
        // asked about, jobs on the submit queue.
        let mut created = Vec::new();
        let mut asked = Vec::new();
        let mut jobs = Vec::new();
        for i in 0..6u64 {
            created.push(g.post(&Request::BoCreate(BoCreate {
                hdr: Hdr::new(VIRTIO_ACCEL_CMD_BO_CREATE, c),
                size: 4096.into(),
                flags: 0.into(),
                padding: 0.into(),
            })));
            asked.push(g.post(&Request::BoInfo(Guest::bo_req(
                VIRTIO_ACCEL_CMD_BO_INFO,
                c,
                bo.handle,
            ))));
            jobs.push(g.submit_async(&Guest::nop_request(c, i + 1, &[], 1)));
            // Several passes of the daemon, so several commits to die after.
            std::thread::sleep(Duration::from_millis(2));
        }
        // Past the burst's last commit the daemon lives: killed instead.
        let crashed = d.wait_exit(Duration::from_secs(3));
        d.kill();
        let _d = s.daemon();
        g.reconnect(&s.socket);
        let mut handles = Vec::new();
        for p in created {
            let r = g.wait_posted(p);
            assert_status(r.status(), OK);
            let Response::BoCreate(b) = r else {
                unreachable!()
            };
            handles.push(b.bo_handle.get());
        }
        for p in asked {
            assert_status(g.wait_posted(p).status(), OK);
        }
        for p in jobs {
            assert_status(g.wait_submit(p).status(), OK);
        }
        // Every buffer an answer named exists, once.
        handles.sort();
        handles.dedup();
        assert_eq!(handles.len(), 6, "crash at {crash_at}");
        for h in handles {
            let info = g.call(&Request::BoInfo(Guest::bo_req(
                VIRTIO_ACCEL_CMD_BO_INFO,
                c,
                h,
            )));
            assert_status(info.status(), OK);
        }
        assert_status(g.submit(&Guest::nop_request(c, 7, &[], 1)).status(), OK);
        if !crashed {
            break;
        }
        crashes += 1;
    }
    assert!(crashes >= 3, "the burst made only {crashes} commits");
}
