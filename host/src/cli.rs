//! The `vhost-device-accel` command line: options, config file, and serving
//! the VMs until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::ffi::OsString;
use std::sync::Arc;

use vhost::vhost_user::Listener;

use crate::backend::accel::AccelNpu;
use crate::backend::Backend;
use crate::config::VmConfig;
use crate::server::ServeError;
use crate::{metrics, Config, Server};
use crate::{processes, sandbox};
use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Driver {
    /// The built-in software NPU.
    Sim,
    /// A Linux accel driver on the host (--device), identified by its
    /// name; each guest context is one open file of its node.
    Accel,
}

#[derive(Parser, Debug)]
#[command(version, about = "virtio-accel vhost-user device backend")]
struct Args {
    /// Unix socket to serve one VM on, with weight 1; repeat for more VMs.
    #[arg(long = "socket-path")]
    socket_path: Vec<PathBuf>,
    /// A VM with its share of the NPU: socket=PATH[,weight=N][,name=NAME].
    /// Weights are relative (1 to 10000); the name labels its metrics.
    #[arg(long = "vm", value_parser = VmConfig::parse)]
    vm: Vec<VmConfig>,
    /// Serve N VMs on sockets PREFIX0 .. PREFIX{N-1} (with --socket-prefix).
    #[arg(long, requires = "socket_prefix")]
    socket_count: Option<u32>,
    /// Path prefix for --socket-count.
    #[arg(long)]
    socket_prefix: Option<String>,
    /// NPU driver the device forwards jobs to.
    #[arg(long, value_enum, default_value = "sim")]
    driver: Driver,
    /// The host accel node for --driver accel (e.g. /dev/accel/accel0).
    /// Needs /dev/udmabuf and guest memory the VMM shares as sealed memfds
    /// (QEMU's memory-backend-memfd).
    #[arg(long, required_if_eq("driver", "accel"))]
    device: Option<PathBuf>,
    /// TOML file with limits, workers, job timeout and fault injection.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Fail these jobs (1-based, counted over all VMs); software NPU only.
    #[arg(long, value_delimiter = ',')]
    fail_jobs: Vec<u64>,
    /// Hang these jobs until the job timeout; software NPU only.
    #[arg(long, value_delimiter = ',')]
    hang_jobs: Vec<u64>,
    /// At these jobs the NPU fails as a whole: the submitting VM's device
    /// loses every context and asks its driver for a reset; software NPU only.
    #[arg(long, value_delimiter = ',')]
    device_error_jobs: Vec<u64>,
    /// Add this many microseconds to every job; software NPU only.
    #[arg(long)]
    latency_us: Option<u64>,
    /// Serve Prometheus metrics on HOST:PORT (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Keep each VM's device state in DIR, so that the daemon started
    /// again with the same DIR carries on where this one stopped.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Fault injection: abort right after the Nth commit of answers to
    /// the state directory, before they are written (restart tests).
    #[arg(long, requires = "state_dir")]
    crash_after_commits: Option<u64>,
    /// Serve each VM in its own process, under a seccomp allowlist
    /// (always so with --driver accel): a crash of one VM's process leaves
    /// the others serving, and it is started again. With --metrics-addr,
    /// the Nth VM's process serves its metrics on the port plus N.
    #[arg(long)]
    vm_processes: bool,
    /// What a VM's process does on a system call outside its allowlist:
    /// kill (the process), log (the kernel logs it; it goes through), off.
    #[arg(long, value_enum, default_value = "kill")]
    seccomp: sandbox::Mode,
    /// A VM's process: serve the VM at this index of the configuration.
    #[arg(long = "serve-vm", hide = true)]
    serve_vm: Option<usize>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// Runs the daemon as its command line says.
pub fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(&args.log_level))
        .with_writer(std::io::stderr)
        .init();
    let mut config = match config_of(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-device-accel: {e}");
            return ExitCode::FAILURE;
        }
    };
    let per_vm = args.vm_processes || matches!(args.driver, Driver::Accel);
    let mut metrics_addr = args.metrics_addr;
    match args.serve_vm {
        None if per_vm => {
            // A node this backend cannot serve is refused here, once.
            if let (Driver::Accel, Some(dev)) = (args.driver, &args.device) {
                if let Err(e) = AccelNpu::open(dev, 1) {
                    eprintln!("vhost-device-accel: --driver accel: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
            return processes::supervise(&argv, &config.vm);
        }
        None => {}
        Some(i) => {
            processes::die_with_parent();
            let Some(vm) = config.vm.get(i).cloned() else {
                eprintln!("vhost-device-accel: --serve-vm {i}: no such VM");
                return ExitCode::FAILURE;
            };
            config.vm = vec![vm];
            if let Some(a) = metrics_addr.as_mut().filter(|a| a.port() != 0) {
                a.set_port(
                    a.port()
                        .saturating_add(u16::try_from(i).unwrap_or(u16::MAX)),
                );
            }
        }
    }
    let vms = config.vm.clone();
    if let Some(d) = &config.state_dir {
        if let Err(e) = std::fs::create_dir_all(d) {
            eprintln!("vhost-device-accel: state directory {}: {e}", d.display());
            return ExitCode::FAILURE;
        }
    }
    match (args.driver, &args.device) {
        (Driver::Sim, _) => serve(Server::new_sim(config), &args, &vms, metrics_addr),
        // One job per VM in the host driver at a time: the driver shares
        // its NPU between its open files, and a VM's job does not wait
        // there behind its own.
        (Driver::Accel, Some(dev)) => match AccelNpu::open(dev, 1) {
            Ok(npu) => serve(
                Server::new(config, Arc::new(npu)),
                &args,
                &vms,
                metrics_addr,
            ),
            Err(e) => {
                eprintln!("vhost-device-accel: --driver accel: {e}");
                ExitCode::FAILURE
            }
        },
        (Driver::Accel, None) => {
            eprintln!("vhost-device-accel: --driver accel needs --device");
            ExitCode::FAILURE
        }
    }
}

/// Serves `vms` until SIGINT or SIGTERM.
fn serve<B: Backend>(
    server: Result<Arc<Server<B>>, ServeError>,
    args: &Args,
    vms: &[VmConfig],
    metrics_addr: Option<SocketAddr>,
) -> ExitCode {
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vhost-device-accel: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = metrics_addr {
        match metrics::serve(addr, server.metrics().clone()) {
            Ok(a) => tracing::info!("metrics on http://{a}/metrics"),
            Err(e) => {
                eprintln!("vhost-device-accel: metrics on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut signals = match processes::stop_signals() {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Every socket is bound before a VM's process locks itself down.
    let mut listeners = Vec::new();
    for vm in vms {
        match Listener::new(&vm.socket, true) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("vhost-device-accel: {}: {e}", vm.socket.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if args.serve_vm.is_some() {
        if let Err(e) = sandbox::apply(args.seccomp) {
            eprintln!("vhost-device-accel: seccomp: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut threads = Vec::new();
    for (vm, l) in vms.iter().zip(listeners) {
        tracing::info!("serving {} (weight {})", vm.socket.display(), vm.weight);
        match server.spawn_on(vm.clone(), l) {
            Ok(t) => threads.push(t),
            Err(e) => {
                eprintln!("vhost-device-accel: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if args.serve_vm.is_some() {
        // A VM's process whose VM is no longer served ends, so that the
        // supervisor starts it again.
        loop {
            if let Some(sig) = signals.pending().next() {
                tracing::info!("signal {sig}: shutting down");
                break;
            }
            if threads.iter().any(std::thread::JoinHandle::is_finished) {
                tracing::error!("the VM is no longer served; ending its process");
                server.shutdown();
                return ExitCode::FAILURE;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    } else if let Some(sig) = signals.forever().next() {
        tracing::info!("signal {sig}: shutting down");
    }
    // Jobs are abandoned with the process; VMs see their sockets close.
    for vm in vms {
        let _ = std::fs::remove_file(&vm.socket);
    }
    server.shutdown();
    ExitCode::SUCCESS
}

/// The configuration the command line asks for: the config file, then the
/// options over it; checked.
fn config_of(args: &Args) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let faulty = !args.fail_jobs.is_empty()
        || !args.hang_jobs.is_empty()
        || !args.device_error_jobs.is_empty()
        || args.latency_us.is_some();
    if faulty && !matches!(args.driver, Driver::Sim) {
        return Err("fault injection is the software NPU's (--driver sim)".into());
    }
    if args.device.is_some() && matches!(args.driver, Driver::Sim) {
        return Err("--device names a host node for --driver accel".into());
    }
    let faults = &mut config.sim.faults;
    faults.fail_jobs.extend(&args.fail_jobs);
    faults.hang_jobs.extend(&args.hang_jobs);
    faults.device_error_jobs.extend(&args.device_error_jobs);
    if let Some(l) = args.latency_us {
        faults.latency_us = l;
    }
    config.vm.extend(args.vm.iter().cloned());
    config
        .vm
        .extend(args.socket_path.iter().cloned().map(VmConfig::new));
    if let (Some(n), Some(prefix)) = (args.socket_count, &args.socket_prefix) {
        config
            .vm
            .extend((0..n).map(|i| VmConfig::new(PathBuf::from(format!("{prefix}{i}")))));
    }
    if let Some(d) = &args.state_dir {
        config.state_dir = Some(d.clone());
    }
    if args.crash_after_commits.is_some() {
        config.crash_after_commits = args.crash_after_commits;
    }
    if config.vm.is_empty() {
        return Err("no VM to serve: give --socket-path, --vm or [[vm]]".into());
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, String> {
        let args =
            Args::try_parse_from(std::iter::once("vhost-device-accel").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        config_of(&args)
    }

    #[test]
    fn fault_options_reach_the_software_npu() {
        let c = config(&[
            "--socket-path",
            "/tmp/a.sock",
            "--fail-jobs",
            "3,5",
            "--hang-jobs",
            "7",
            "--device-error-jobs",
            "4,9",
            "--latency-us",
            "250",
        ])
        .unwrap();
        let f = &c.sim.faults;
        assert_eq!(f.fail_jobs, [3, 5]);
        assert_eq!(f.hang_jobs, [7]);
        assert_eq!(f.device_error_jobs, [4, 9]);
        assert_eq!(f.latency_us, 250);
    }

    #[test]
    fn vms_come_from_every_option() {
        let c = config(&[
            "--socket-path",
            "/tmp/a.sock",
            "--vm",
            "socket=/tmp/b.sock,weight=3,name=b",
            "--socket-count",
            "2",
            "--socket-prefix",
            "/tmp/c",
        ])
        .unwrap();
        let socks: Vec<String> =
            c.vm.iter()
                .map(|v| v.socket.display().to_string())
                .collect();
        assert_eq!(socks, ["/tmp/b.sock", "/tmp/a.sock", "/tmp/c0", "/tmp/c1"]);
        assert_eq!(c.vm[0].weight, 3);
    }

    #[test]
    fn no_vm_and_bad_values_are_refused() {
        assert!(config(&[]).unwrap_err().contains("no VM to serve"));
        assert!(config(&["--socket-path", "/tmp/a", "--fail-jobs", "x"]).is_err());
        assert!(config(&["--crash-after-commits", "1", "--socket-path", "/tmp/a"]).is_err());
    }

    #[test]
    fn the_accel_driver_needs_a_device_and_no_faults() {
        let s = ["--socket-path", "/tmp/a"];
        let with = |extra: &[&str]| config(&[&s[..], extra].concat());
        assert!(with(&["--driver", "accel"])
            .unwrap_err()
            .contains("--device"));
        assert!(with(&["--driver", "accel", "--device", "/dev/accel/accel0"]).is_ok());
        let e = with(&["--driver", "accel", "--device", "/d", "--hang-jobs", "1"]).unwrap_err();
        assert!(e.contains("software NPU"), "{e}");
        assert!(with(&["--device", "/dev/accel/accel0"]).is_err());
    }
}
