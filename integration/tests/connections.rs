//! A VM connection, however it ends, leaves no file open in the daemon.

use std::time::Duration;
use virtio_accel_guest::workloads;
use virtio_accel_integration::daemon::unique_dir;
use virtio_accel_integration::process::DaemonProcess;
use virtio_accel_integration::{Guest, GuestOptions, Layout};

const BIN: &str = env!("CARGO_BIN_EXE_accel-daemon");

/// The daemon's open files by kind (the path, or socket/pipe/anon_inode
/// type), sorted.
fn kinds(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.display().to_string())
        .map(|t| match t.split_once(":[") {
            Some((k, _)) if k != "anon_inode" => k.to_owned(),
            _ => t,
        })
        .collect();
    v.sort();
    v
}

/// One VM: a context, buffers and a job; the connection then closes
/// with the job answered, or with eight jobs in flight.
fn cycle(a: &std::path::Path, inflight: bool) {
    let mut g = Guest::connect(a, GuestOptions::default());
    let ctx = g.ctx_create();
    let w = &workloads::standard()[0];
    let l = g.load(ctx, w, Layout::Contiguous);
    if inflight {
        for f in 1..=8 {
            g.submit_async(&Guest::run_request(ctx, f, w, &l));
        }
        std::thread::sleep(Duration::from_millis(50));
    } else {
        g.submit(&Guest::run_request(ctx, 1, w, &l));
    }
    drop(g);
}

/// Waits up to 10 s for the daemon's files to be `want` again.
fn settle(pid: u32, want: &[String]) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = kinds(pid);
        if now == want || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connections_leave_no_file_behind() {
    let dir = unique_dir();
    let a = dir.join("a.sock");
    // Jobs of 100 ms, so that the in-flight ones are on the NPU when the
    // VM goes.
    let d = DaemonProcess::start(BIN, &a, &["--latency-us", "100000"]);
    // The first VM makes what the daemon keeps for all.
    cycle(&a, false);
    // Its teardown ends within the second after it goes.
    std::thread::sleep(Duration::from_secs(2));
    let before = kinds(d.pid());
    for inflight in [false, true, false, true] {
        cycle(&a, inflight);
        let now = settle(d.pid(), &before);
        assert_eq!(now, before, "after a VM with jobs in flight: {inflight}");
    }
}
