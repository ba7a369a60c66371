//! The real daemon, started in this process on real Unix sockets.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_device_accel::server::VmStats;
use vhost_device_accel::{Config, Server};

/// A daemon serving `sockets.len()` VMs.
pub struct Daemon {
    pub server: Arc<Server>,
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
    /// Starts a daemon on the software NPU with `vms` sockets.
    pub fn start(config: Config, vms: usize) -> Daemon {
        Self::start_with(Server::new_sim(config), vms)
    }

    /// Starts a daemon on `server` (any NPU driver) with `vms` sockets.
    pub fn start_with(server: Arc<Server>, vms: usize) -> Daemon {
        let dir = unique_dir();
        let sockets: Vec<PathBuf> = (0..vms).map(|i| dir.join(format!("vm{i}.sock"))).collect();
        for s in &sockets {
            server.spawn(s.clone());
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
