//! What a migration needs from the device, over a real socket: the pages
//! the NPU writes are marked in the vhost-user dirty log, and the device's
//! state moves from one daemon to another.

use std::os::fd::AsRawFd;

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost::{VhostBackend, VhostUserDirtyLogRegion};
use vhost_device_accel::Config;
use virtio_accel_guest::workloads;
use virtio_accel_integration::*;
use virtio_accel_protocol::*;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

const OK: u32 = VIRTIO_ACCEL_RESP_OK;
const PAGE: u64 = 4096;

#[track_caller]
fn assert_status(got: u32, want: u32) {
    assert_eq!(status_name(got), status_name(want), "status {got:#x}");
}

fn pages(ranges: &[(u64, u32)]) -> Vec<u64> {
    let mut p: Vec<u64> = ranges
        .iter()
        .flat_map(|&(a, l)| (a / PAGE)..(a + u64::from(l)).div_ceil(PAGE))
        .collect();
    p.sort();
    p.dedup();
    p
}

/// A dirty log as a VMM keeps one: a bit per 4 KiB guest page.
struct DirtyLog {
    file: std::fs::File,
    len: usize,
}

impl DirtyLog {
    fn new(g: &Guest) -> DirtyLog {
        let end = g.mem.iter().map(|r| r.last_addr().0 + 1).max().unwrap();
        let len = (end / PAGE).div_ceil(8) as usize;
        let file = memfd::MemfdOptions::default()
            .create("dirty-log")
            .unwrap()
            .into_file();
        file.set_len(len as u64).unwrap();
        DirtyLog { file, len }
    }

    /// Starts logging as QEMU does for a migration: LOG_ALL in the
    /// features, then SET_LOG_BASE with the log's fd.
    fn start(&self, g: &mut Guest) {
        g.frontend
            .set_features(g.features | VhostUserVirtioFeatures::LOG_ALL.bits())
            .unwrap();
        g.frontend
            .set_log_base(
                0,
                Some(VhostUserDirtyLogRegion {
                    mmap_size: self.len as u64,
                    mmap_offset: 0,
                    mmap_handle: self.file.as_raw_fd(),
                }),
            )
            .unwrap();
    }

    fn dirty(&self) -> Vec<u64> {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; self.len];
        self.file.read_exact_at(&mut b, 0).unwrap();
        (0..self.len as u64 * 8)
            .filter(|&p| b[(p / 8) as usize] & (1 << (p % 8)) != 0)
            .collect()
    }
}

#[test]
fn the_dirty_log_marks_exactly_the_pages_the_device_wrote() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let c = g.ctx_create();
    // Scattered pages: the output's pages are not one run.
    let w = workloads::mlp(7, 16, 256, 128, 32);
    let l = g.load(c, &w, Layout::Scattered);
    let log = DirtyLog::new(&g);
    log.start(&mut g);
    assert!(log.dirty().is_empty(), "pages marked before any write");

    let p = g.submit_async(&Guest::run_request(c, 1, &w, &l));
    let response = g.response_buffer(p);
    assert_status(g.wait_submit(p).status(), OK);
    w.check(&g.output(&w, &l)).unwrap();

    let dirty = log.dirty();
    // Every page of the buffers the job writes, none of those it only reads.
    for (b, spec) in l.bos.iter().zip(&w.bos) {
        let written = spec.access & VIRTIO_ACCEL_ACCESS_WRITE != 0;
        for page in pages(&b.ranges) {
            assert_eq!(
                dirty.contains(&page),
                written,
                "page {page:#x} of a buffer the job {}",
                if written { "writes" } else { "only reads" }
            );
        }
    }
    // And beyond them, only what the device wrote to answer: the response
    // and the used rings (used entries, and the avail event it publishes).
    let mut answer = pages(&[(response, 32)]);
    for r in &g.rings {
        answer.extend(pages(&[(r.used, 8 * u32::from(r.size) + 6)]));
    }
    let outputs: Vec<u64> = l
        .bos
        .iter()
        .zip(&w.bos)
        .filter(|(_, s)| s.access & VIRTIO_ACCEL_ACCESS_WRITE != 0)
        .flat_map(|(b, _)| pages(&b.ranges))
        .collect();
    for page in &dirty {
        assert!(
            outputs.contains(page) || answer.contains(page),
            "page {page:#x} marked, but the device wrote nothing there"
        );
    }
    assert!(pages(&[(response, 32)]).iter().all(|p| dirty.contains(p)));
}

#[test]
fn the_device_state_moves_to_another_daemon_and_jobs_carry_on() {
    // Jobs of 50 ms on the source: one is on the NPU when the VM stops.
    let mut slow = Config::default();
    slow.sim.faults.latency_us = 50_000;
    let src = Daemon::start(slow, 1);
    let dst = Daemon::start(Config::default(), 1);
    let mut g = Guest::connect(src.socket(0), GuestOptions::default());
    let c = g.ctx_create();
    let c2 = g.ctx_create();
    let w = workloads::mlp(3, 64, 256, 256, 64);
    let l = g.load(c, &w, Layout::Scattered);
    assert_status(g.submit(&Guest::run_request(c, 1, &w, &l)).status(), OK);
    // In flight across the migration: a job on the NPU at the stop (its
    // answer not written yet), and jobs queued behind it and elsewhere.
    let running = g.submit_async(&Guest::run_request(c, 2, &w, &l));
    let queued = g.submit_async(&Guest::nop_request(c, 3, &[], 1));
    let other = g.submit_async(&Guest::nop_request(c2, 1, &[(c, 3)], 1));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while src.vm_stats(0).unwrap().counts.running == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the job never started"
        );
        std::thread::sleep(std::time::Duration::from_micros(200));
    }

    let bases = g.vm_stop();
    // The stop let the running job end; its answer and the queued jobs
    // wait in the device.
    let s = src.vm_stats(0).unwrap();
    assert_eq!((s.counts.running, s.counts.jobs), (0, 2));
    assert_eq!((s.counts.completions, s.parked_chains), (1, 3));
    let state = g.save_state().expect("save");
    g.migrate_to(dst.socket(0), &state, &bases).expect("load");
    // The source VM is gone.
    src.wait_disconnected(0);

    for p in [running, queued, other] {
        assert_status(g.wait_submit(p).status(), OK);
    }
    w.check(&g.output(&w, &l)).unwrap();
    // The same objects on the new daemon.
    g.write_bo(&l.bos[w.output.0], 0, &[0; 64]);
    assert_status(g.submit(&Guest::run_request(c, 4, &w, &l)).status(), OK);
    w.check(&g.output(&w, &l)).unwrap();
    let s = dst.vm_stats(0).unwrap();
    assert_eq!(
        (s.counts.contexts, s.counts.jobs, s.parked_chains),
        (2, 0, 0)
    );
    assert_eq!(s.counts.bos, w.bos.len() + 1);
}

#[test]
fn a_state_another_daemon_cannot_take_is_refused_and_changes_nothing() {
    let src = Daemon::start(Config::default(), 1);
    let mut small = Config::default();
    small.limits.max_bos = 2;
    let dst = Daemon::start(small, 2);
    let mut g = Guest::connect(src.socket(0), GuestOptions::default());
    let c = g.ctx_create();
    for _ in 0..3 {
        g.bo(c, 4096, Layout::Contiguous);
    }
    let bases = g.vm_stop();
    let state = g.save_state().expect("save");

    // More buffers than the destination allows.
    let err = g.migrate_to(dst.socket(0), &state, &bases).unwrap_err();
    assert!(err.contains("CHECK_DEVICE_STATE"), "{err}");
    // Another version of the format, and damaged bytes.
    let mut v2 = state.clone();
    v2[8] = 2;
    assert!(g.migrate_to(dst.socket(1), &v2, &bases).is_err());
    let cut = &state[..state.len() - 3];
    assert!(g.migrate_to(dst.socket(1), cut, &bases).is_err());
    for i in 0..2 {
        if let Some(s) = dst.vm_stats(i) {
            assert_eq!(s.counts, Default::default());
        }
    }
}

#[test]
fn a_state_that_does_not_fit_guest_memory_comes_back_as_lost_contexts() {
    let mut slow = Config::default();
    slow.sim.faults.latency_us = 50_000;
    let src = Daemon::start(slow, 1);
    let dst = Daemon::start(Config::default(), 1);
    let mut g = Guest::connect(src.socket(0), GuestOptions::default());
    let c = g.ctx_create();
    let bo = g.bo(c, 4096, Layout::Contiguous);
    g.submit(&Guest::nop_request(c, 1, &[], 1));
    let queued = [
        g.submit_async(&Guest::nop_request(c, 2, &[], 1)),
        g.submit_async(&Guest::nop_request(c, 3, &[], 1)),
    ];
    let bases = g.vm_stop();
    // The state names a buffer outside the destination's guest memory:
    // nothing a check without memory can see.
    let mut state = vhost_device_accel::state::VmState::decode(&g.save_state().unwrap()).unwrap();
    let b = &mut state.device.contexts[0].bos[0];
    assert_eq!(b.handle, bo.handle);
    b.backing = Some(vec![(1 << 40, 4096)]);
    g.migrate_to(dst.socket(0), &state.encode().unwrap(), &bases)
        .expect("load");

    // The driver learns its context is gone, and why; its jobs end.
    for p in queued {
        let r = g.wait_submit(p);
        assert!(
            [VIRTIO_ACCEL_RESP_OK, VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST].contains(&r.status()),
            "{}",
            status_name(r.status())
        );
    }
    let ev = g.wait_event();
    assert_eq!(
        (ev.hdr.ctx_id.get(), ev.reason.get()),
        (c, VIRTIO_ACCEL_LOST_RESET)
    );
    assert_status(
        g.status(&Request::BoInfo(Guest::bo_req(
            VIRTIO_ACCEL_CMD_BO_INFO,
            c,
            bo.handle,
        ))),
        VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST,
    );
    // It keeps a working device.
    let c2 = g.ctx_create();
    assert_status(g.submit(&Guest::nop_request(c2, 1, &[], 1)).status(), OK);
    assert_eq!(g.ctx_destroy(c), OK);
}
