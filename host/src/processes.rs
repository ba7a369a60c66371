//! One process per VM (`--vm-processes`, always with `--driver accel`):
//! the daemon started by the operator supervises, and each VM is served by
//! the same program started again for that VM alone, under the seccomp
//! allowlist. A VM's process that dies (a crash, a kill) takes only that
//! VM's device with it; the supervisor starts it again on the same socket,
//! where the VMM reconnects.
//!
//! Processes are started with `exec`, not forked from this one: the
//! supervisor has threads, and a fork of a threaded process may only exec.

use std::ffi::OsString;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use crate::config::VmConfig;

/// The option that makes a process serve the VM at this index.
pub const SERVE_VM: &str = "--serve-vm";

/// Below this lifetime a process that ended is started again only after
/// as long, so a VM whose process cannot start does not spin.
const MIN_LIFE: Duration = Duration::from_secs(1);

struct Vm {
    label: String,
    child: Option<Child>,
    started: Instant,
}

/// The supervisor's pid, in the environment of a VM's process.
const SUPERVISOR_ENV: &str = "VHOST_DEVICE_ACCEL_SUPERVISOR";

fn start(args: &[OsString], i: usize) -> std::io::Result<Child> {
    // This very program, even if its file was replaced since it started.
    Command::new("/proc/self/exe")
        .args(args)
        .arg(SERVE_VM)
        .arg(i.to_string())
        .env(SUPERVISOR_ENV, std::process::id().to_string())
        .spawn()
}

/// SIGINT and SIGTERM, which stop the daemon (a VM's process or the
/// supervisor); the error is said and is the exit status.
pub fn stop_signals() -> Result<signal_hook::iterator::Signals, ExitCode> {
    signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .map_err(|e| {
            eprintln!("vhost-device-accel: signals: {e}");
            ExitCode::FAILURE
        })
}

/// Starts one process per VM with the daemon's own arguments `args` and
/// keeps them running until SIGINT or SIGTERM, then stops them.
pub fn supervise(args: &[OsString], vms: &[VmConfig]) -> ExitCode {
    let mut signals = match stop_signals() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut procs = Vec::new();
    for (i, vm) in vms.iter().enumerate() {
        match start(args, i) {
            Ok(c) => {
                tracing::info!("{}: served by process {}", vm.label(), c.id());
                procs.push(Vm {
                    label: vm.label(),
                    child: Some(c),
                    started: Instant::now(),
                });
            }
            Err(e) => {
                eprintln!(
                    "vhost-device-accel: starting the process of {}: {e}",
                    vm.label()
                );
                stop(&mut procs);
                return ExitCode::FAILURE;
            }
        }
    }
    loop {
        if let Some(sig) = signals.pending().next() {
            tracing::info!("signal {sig}: stopping the VMs' processes");
            stop(&mut procs);
            for vm in vms {
                let _ = std::fs::remove_file(&vm.socket);
            }
            return ExitCode::SUCCESS;
        }
        for (i, p) in procs.iter_mut().enumerate() {
            let ended = match p.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Ok(None)) => None,
                Some(Err(e)) => Some(e.to_string()),
                None => Some("not running".into()),
            };
            let Some(why) = ended else { continue };
            if p.child.is_some() {
                tracing::warn!(
                    "{}: its process ended ({why}); the other VMs are served",
                    p.label
                );
                p.child = None;
            }
            if p.started.elapsed() < MIN_LIFE {
                continue;
            }
            p.started = Instant::now();
            match start(args, i) {
                Ok(c) => {
                    tracing::info!("{}: served again by process {}", p.label, c.id());
                    p.child = Some(c);
                }
                Err(e) => tracing::error!("{}: starting its process: {e}", p.label),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long the VMs' processes get to end after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

fn stop(procs: &mut [Vm]) {
    for c in procs.iter_mut().filter_map(|p| p.child.as_mut()) {
        if let Ok(pid) = libc::pid_t::try_from(c.id()) {
            // SAFETY: kill(2) on the pid of a child not yet waited for.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for c in procs.iter_mut().filter_map(|p| p.child.as_mut()) {
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// In a VM's process: ends it when the supervisor ends, however it ends,
/// also if it ended before this process got here.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and changes
    // only this process's own attribute.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let supervisor = std::env::var(SUPERVISOR_ENV).ok();
    // SAFETY: getppid(2) has no arguments and cannot fail.
    let parent = unsafe { libc::getppid() };
    if supervisor.is_some_and(|s| s != parent.to_string()) {
        std::process::exit(1);
    }
}
