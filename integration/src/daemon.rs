//! The real daemon, started in this process on real Unix sockets.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_device_accel::backend::sim::SimNpu;
use vhost_device_accel::backend::Backend;
use vhost_device_accel::config::VmConfig;
use vhost_device_accel::server::VmStats;
use vhost_device_accel::{Config, Server};

/// A daemon serving `sockets.len()` VMs.
pub struct Daemon<B: Backend = SimNpu> {
    pub server: Arc<Server<B>>,
    pub sockets: Vec<PathBuf>,
}

pub fn unique_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "virtio-accel-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Daemon {
    /// Starts a daemon on the software NPU with `vms` sockets of weight 1.
    pub fn start(config: Config, vms: usize) -> Daemon {
        Self::start_weighted(config, &vec![1; vms])
    }

    /// Starts a daemon on the software NPU with one socket per weight.
    pub fn start_weighted(config: Config, weights: &[u32]) -> Daemon {
        Daemon::start_with(
            Server::new_sim(config).expect("start the software NPU"),
            weights,
        )
    }
}

impl<B: Backend> Daemon<B> {
    /// Starts a daemon on `server` (any backend) with one socket per
    /// weight.
    pub fn start_with(server: Arc<Server<B>>, weights: &[u32]) -> Daemon<B> {
        let dir = unique_dir();
        let vms: Vec<VmConfig> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| VmConfig {
                socket: dir.join(format!("vm{i}.sock")),
                name: Some(format!("vm{i}")),
                weight,
            })
            .collect();
        let sockets = vms.iter().map(|v| v.socket.clone()).collect::<Vec<_>>();
        for vm in vms {
            server.spawn(vm).expect("spawn a socket thread");
        }
        for s in &sockets {
            wait_for_socket(s);
        }
        Daemon { server, sockets }
    }

    pub fn socket(&self, i: usize) -> &PathBuf {
        &self.sockets[i]
    }

    /// State of the VM on socket `i`, if one is connected.
    pub fn vm_stats(&self, i: usize) -> Option<VmStats> {
        self.server
            .stats()
            .into_iter()
            .find(|(p, _)| p == &self.sockets[i])
            .map(|(_, s)| s)
    }

    /// Waits until the VM on socket `i` is gone and the socket is served
    /// again.
    pub fn wait_disconnected(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.vm_stats(i).is_some() {
            assert!(Instant::now() < deadline, "VM {i} still attached");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Waits until something listens on `path`.
pub fn wait_for_socket(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
