//! Serving sockets: one vhost-user daemon per VM connection, a fresh device
//! model per connection (a disconnect drops everything the VM held), and
//! the socket served again once the VM has gone.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;

use crate::backend::sim::{SimNpu, SimOptions, Tile};
use crate::backend::Backend;
use crate::config::{Config, VmConfig};
use crate::device::Counts;
use crate::memory::GuestMem;
use crate::metrics::DaemonMetrics;
use crate::sched::Scheduler;
use crate::state_dir::Store;
use crate::vhost_user::{AccelBackend, COMPLETION_EVENT};
use crate::vring;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("creating the device: {0}")]
    Backend(std::io::Error),
    #[error("creating the vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    #[error("registering the completion eventfd: {0}")]
    Register(std::io::Error),
    #[error("listening on the socket: {0}")]
    Listen(vhost::vhost_user::Error),
    #[error("starting the NPU: {0}")]
    Npu(std::io::Error),
}

/// What one connected VM holds right now, and every byte the daemon has
/// copied to or from its guest memory, by path: the ring paths since it
/// connected, the buffer paths since the daemon started (they are the
/// VM's Prometheus counters, which a reconnect continues).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct VmStats {
    pub counts: Counts,
    pub parked_chains: usize,
    /// Descriptor-table entries read walking chains.
    pub desc_bytes_read: u64,
    /// Requests copied out of chains (inline command streams included).
    pub request_bytes_read: u64,
    /// Responses written into chains.
    pub response_bytes_written: u64,
    /// Events written into eventq buffers.
    pub event_bytes_written: u64,
    /// Command streams copied out of buffers.
    pub cmd_bytes_copied: u64,
    /// Buffer bytes read into the NPU's staging buffer.
    pub npu_bytes_read: u64,
    /// Buffer bytes written from the NPU's working memory.
    pub npu_bytes_written: u64,
    /// Bytes the NPU copied buffer to buffer (COPY), each read and written
    /// once.
    pub npu_bytes_copied: u64,
    /// NPU time the VM's jobs used.
    pub device_seconds: f64,
}

/// The daemon: a shared NPU scheduler and the VMs attached to it.
pub struct Server<B: Backend> {
    config: Config,
    sched: Arc<Scheduler<B>>,
    metrics: Arc<DaemonMetrics>,
    vms: Mutex<Vec<(PathBuf, Weak<AccelBackendHandle<B>>)>>,
}

/// Keeps a connected backend visible to [`Server::stats`].
pub struct AccelBackendHandle<B: Backend>(AccelBackend<B>);

impl Server<SimNpu> {
    /// A server on the built-in software NPU.
    pub fn new_sim(config: Config) -> Result<Arc<Server<SimNpu>>, ServeError> {
        let npu = SimNpu::new(SimOptions {
            faults: config.sim.faults.clone(),
            engines: config.workers,
            tile: if config.sim.slicing {
                Tile::SLICED
            } else {
                Tile::WHOLE
            },
        })
        .map_err(ServeError::Npu)?;
        Server::new(config, Arc::new(npu))
    }
}

impl<B: Backend> Server<B> {
    pub fn new(config: Config, backend: Arc<B>) -> Result<Arc<Server<B>>, ServeError> {
        let metrics = DaemonMetrics::new(backend.caps().engines);
        let sched = Scheduler::new(
            backend,
            Duration::from_millis(config.job_timeout_ms),
            Duration::from_micros(config.quantum_us),
            metrics.clone(),
        )
        .map_err(ServeError::Npu)?;
        Ok(Arc::new(Server {
            config,
            sched,
            metrics,
            vms: Mutex::new(Vec::new()),
        }))
    }

    pub fn metrics(&self) -> &Arc<DaemonMetrics> {
        &self.metrics
    }

    /// Serves one VM connection accepted on `listener` (bound to the VM's
    /// socket), returning when it disconnects.
    pub fn serve_once(&self, vm: &VmConfig, listener: &mut Listener) -> Result<(), ServeError> {
        let path = vm.socket.as_path();
        let mem = GuestMemoryAtomic::new(GuestMem::new());
        // A store that cannot be opened keeps nothing; the VM is served.
        let store = self.config.state_dir.as_ref().and_then(|dir| {
            Store::open(&dir.join(vm.state_file()))
                .inspect_err(|e| tracing::error!("{e}; this VM's device state is not kept"))
                .ok()
        });
        let backend = AccelBackend::new(
            self.config.clone(),
            self.sched.clone(),
            mem.clone(),
            vm.weight,
            self.metrics.vm(&vm.label(), vm.weight, &self.config.limits),
            store,
        )
        .map_err(ServeError::Backend)?;
        // The rings signal their starts on the VM's completion eventfd.
        let started = Arc::new(
            backend
                .completion_fd()
                .try_clone()
                .map_err(ServeError::Backend)?,
        );
        let (daemon, vrings) = vring::collect(started, || {
            VhostUserDaemon::new("vhost-device-accel".into(), backend.clone(), mem)
        });
        let mut daemon = daemon.map_err(ServeError::Daemon)?;
        backend.set_vrings(vrings);
        let handlers = daemon.get_epoll_handlers();
        for h in &handlers {
            h.register_listener(
                backend.completion_fd().as_raw_fd(),
                EventSet::IN,
                u64::from(COMPLETION_EVENT),
            )
            .map_err(ServeError::Register)?;
        }
        // Blocks until a VM connects.
        let started = daemon.start(listener);
        let handle = Arc::new(AccelBackendHandle(backend));
        if started.is_ok() {
            let mut vms = self.vms.lock().unwrap_or_else(PoisonError::into_inner);
            vms.retain(|(_, w)| w.strong_count() > 0);
            vms.push((path.to_owned(), Arc::downgrade(&handle)));
        }
        let result = started.and_then(|()| daemon.wait());
        // Nothing of the VM runs or touches its memory after this.
        handle.0.disconnect();
        // The worker threads only leave their loop on the exit event.
        for h in &handlers {
            h.send_exit_event();
        }
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => tracing::info!("{}: VM disconnected", path.display()),
            Err(e) => tracing::warn!("{}: connection ended: {e}", path.display()),
        }
        // Dropping the daemon joins its vring threads.
        drop(handlers);
        drop(daemon);
        handle.0.close_exit_fds();
        Ok(())
    }

    /// Serves a VM's socket forever, one VM after another. The socket stays
    /// bound between VMs, so a VMM that reconnects while the last one is
    /// torn down waits in the backlog instead of finding no socket.
    pub fn serve_forever(&self, vm: &VmConfig) -> Result<(), ServeError> {
        let listener = Listener::new(&vm.socket, true).map_err(ServeError::Listen)?;
        self.serve_listener(vm, listener)
    }

    /// Serves the VM's socket, already bound to `listener`, forever.
    pub fn serve_listener(&self, vm: &VmConfig, mut listener: Listener) -> Result<(), ServeError> {
        loop {
            self.serve_once(vm, &mut listener)?;
        }
    }

    /// Starts a thread serving a VM's socket forever.
    pub fn spawn(self: &Arc<Self>, vm: VmConfig) -> std::io::Result<std::thread::JoinHandle<()>> {
        let listener = Listener::new(&vm.socket, true).map_err(std::io::Error::other)?;
        self.spawn_on(vm, listener)
    }

    /// Starts a thread serving a VM's socket, already bound to `listener`,
    /// forever.
    pub fn spawn_on(
        self: &Arc<Self>,
        vm: VmConfig,
        listener: Listener,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let s = self.clone();
        std::thread::Builder::new()
            .name(format!("vm-{}", vm.label()))
            .spawn(move || {
                if let Err(e) = s.serve_listener(&vm, listener) {
                    tracing::error!("{}: {e}", vm.socket.display());
                }
            })
    }

    /// Per-VM state of the VMs connected now, by socket path.
    pub fn stats(&self) -> Vec<(PathBuf, VmStats)> {
        let vms = self.vms.lock().unwrap_or_else(PoisonError::into_inner);
        vms.iter()
            .filter_map(|(p, w)| w.upgrade().map(|h| (p.clone(), h)))
            .filter_map(|(p, h)| {
                let b = &h.0;
                let vm = b.vm();
                let dev = vm.device.lock().ok()?;
                let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                let (ring, npu) = (b.ring_stats(), &vm.mem.npu_stats);
                let c = |c: &prometheus_client::metrics::counter::Counter| c.get();
                let s = VmStats {
                    counts: dev.counts(),
                    parked_chains: b.parked(),
                    desc_bytes_read: n(&ring.desc_read),
                    request_bytes_read: n(&ring.request_read),
                    response_bytes_written: n(&ring.response_written),
                    event_bytes_written: n(&ring.event_written),
                    cmd_bytes_copied: c(&dev.cmd_stats.npu_read),
                    npu_bytes_read: c(&npu.npu_read),
                    npu_bytes_written: c(&npu.npu_written),
                    npu_bytes_copied: c(&npu.npu_copied),
                    device_seconds: vm.metrics.device_seconds(),
                };
                Some((p, s))
            })
            .collect()
    }

    pub fn shutdown(&self) {
        self.sched.shutdown();
    }
}
