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
