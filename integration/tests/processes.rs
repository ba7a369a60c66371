//! `--vm-processes`: each VM served by its own process under the seccomp
//! allowlist; a VM's process killed leaves the other VM serving and is
//! started again on its socket.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_accel_guest::workloads;
use virtio_accel_integration::daemon::unique_dir;
use virtio_accel_integration::process::DaemonProcess;
use virtio_accel_integration::{Guest, GuestOptions, Layout};
use virtio_accel_protocol::*;

const BIN: &str = env!("CARGO_BIN_EXE_accel-daemon");

/// The supervisor's child that serves the VM at `index`.
fn vm_process(supervisor: u32, index: usize) -> Option<u32> {
    let want = format!("--serve-vm\0{index}\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces, not ')'.
        let ppid: u32 = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (ppid == supervisor && String::from_utf8_lossy(&cmdline).contains(&want)).then_some(pid)
    })
}

fn wait_vm_process(supervisor: u32, index: usize, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(p) = vm_process(supervisor, index).filter(|&p| Some(p) != not) {
            return p;
        }
        assert!(Instant::now() < deadline, "no process serves VM {index}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn seccomp_mode(pid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .unwrap_or("?")
        .trim()
        .to_owned()
}

/// Waits for the process to have installed its seccomp filter (mode 2),
/// which it does once its socket is bound.
fn wait_sandboxed(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while seccomp_mode(pid) != "2" {
        assert!(
            Instant::now() < deadline,
            "process {pid}: seccomp mode {}",
            seccomp_mode(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_workloads(g: &mut Guest) {
    let ctx = g.ctx_create();
    for (k, w) in workloads::standard().iter().enumerate() {
        let l = g.load(ctx, w, Layout::Scattered);
        let r = g.submit(&Guest::run_request(ctx, k as u64 + 1, w, &l));
        assert_eq!(
            status_name(r.status()),
            "VIRTIO_ACCEL_RESP_OK",
            "{}",
            w.name
        );
        w.check(&g.output(w, &l)).unwrap();
    }
}

#[test]
fn a_killed_vm_process_leaves_the_other_vm_serving_and_comes_back() {
    let dir = unique_dir();
    let (a, b): (PathBuf, PathBuf) = (dir.join("a.sock"), dir.join("b.sock"));
    let b_arg = b.to_str().unwrap().to_owned();
    // The state directory (SQLite) and the metrics port run under the
    // filter too.
    let state = dir.join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let mut d = DaemonProcess::start(
        BIN,
        &a,
        &[
            "--socket-path",
            &b_arg,
            "--vm-processes",
            "--state-dir",
            &state_arg,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    virtio_accel_integration::daemon::wait_for_socket(&b);
    let pa = wait_vm_process(d.pid(), 0, None);
    let pb = wait_vm_process(d.pid(), 1, None);
    // Mode 2: a seccomp filter. The workloads below run under it.
    wait_sandboxed(pa);
    wait_sandboxed(pb);
    let mut ga = Guest::connect(&a, GuestOptions::default());
    let mut gb = Guest::connect(&b, GuestOptions::default());
    run_workloads(&mut ga);
    run_workloads(&mut gb);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pa as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    run_workloads(&mut gb);
    let pa2 = wait_vm_process(d.pid(), 0, Some(pa));
    wait_sandboxed(pa2);
    drop(ga);
    let mut ga = Guest::connect(&a, GuestOptions::default());
    run_workloads(&mut ga);
    assert_eq!(
        vm_process(d.pid(), 1),
        Some(pb),
        "VM b's process was not touched"
    );
    assert!(
        std::fs::read_dir(&state).unwrap().count() >= 2,
        "each VM's process keeps its state"
    );

    // SIGTERM to the supervisor ends the VMs' processes, then itself.
    drop((ga, gb));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(d.wait_exit(Duration::from_secs(20)), "the supervisor ended");
    for p in [pb, pa2] {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "VM process {p} still runs: {stat}"
        );
    }
}
