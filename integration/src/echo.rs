//! The floor for request round trips: a minimal vhost-user device on the
//! same library stack as the daemon, which copies each request into the
//! response area and completes it. It speaks no virtio-accel; it only
//! measures what the transport itself costs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueOwnedT;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

type Mem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

#[derive(Clone)]
struct Echo {
    mem: Mem,
    event_idx: Arc<AtomicBool>,
}

impl Echo {
    fn process(&self, vring: &VringRwLock) -> io::Result<()> {
        let mem = self.mem.memory();
        let chains: Vec<_> = vring
            .get_mut()
            .get_queue_mut()
            .iter(mem.clone())
            .map_err(io::Error::other)?
            .collect();
        let mut buf = [0u8; 256];
        for chain in chains {
            let head = chain.head_index();
            let mut n = 0usize;
            let mut used = 0u32;
            for d in chain {
                let len = (d.len() as usize).min(buf.len());
                if d.is_write_only() {
                    let w = len.min(n);
                    mem.write_slice(&buf[..w], d.addr())
                        .map_err(io::Error::other)?;
                    used += w as u32;
                } else {
                    mem.read_slice(&mut buf[..len], d.addr())
                        .map_err(io::Error::other)?;
                    n = len;
                }
            }
            vring.add_used(head, used).map_err(io::Error::other)?;
        }
        if !self.event_idx.load(Ordering::Relaxed)
            || vring.needs_notification().map_err(io::Error::other)?
        {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

impl VhostUserBackend for Echo {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        3
    }
    fn max_queue_size(&self) -> usize {
        1024
    }
    fn features(&self) -> u64 {
        (1 << 32) | (1 << 29) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
    }
    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }
    fn get_config(&self, _offset: u32, size: u32) -> Vec<u8> {
        vec![0; size as usize]
    }
    fn update_memory(&self, _mem: Mem) -> io::Result<()> {
        Ok(())
    }
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }
    fn handle_event(
        &self,
        q: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _t: usize,
    ) -> io::Result<()> {
        let Some(vring) = vrings.get(q as usize) else {
            return Ok(());
        };
        if self.event_idx.load(Ordering::Relaxed) {
            loop {
                vring.disable_notification().map_err(io::Error::other)?;
                self.process(vring)?;
                if !vring.enable_notification().map_err(io::Error::other)? {
                    break;
                }
            }
            Ok(())
        } else {
            self.process(vring)
        }
    }
}

/// Starts an echo device serving connections on a new socket, one after
/// another; returns its path. The socket stays bound between connections,
/// so a guest that connects while the last one is torn down waits in the
/// backlog instead of reaching a socket about to close.
pub fn start(dir: &Path) -> PathBuf {
    let path = dir.join("echo.sock");
    let mut listener = Listener::new(&path, true).expect("bind the echo socket");
    std::thread::spawn(move || loop {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let echo = Echo {
            mem: mem.clone(),
            event_idx: Arc::new(AtomicBool::new(false)),
        };
        let Ok(mut daemon) = VhostUserDaemon::new("echo".into(), echo, mem) else {
            return;
        };
        let handlers = daemon.get_epoll_handlers();
        if daemon.start(&mut listener).is_err() {
            return;
        }
        let _ = daemon.wait();
        // The worker threads only leave their loop on the exit event.
        for h in &handlers {
            h.send_exit_event();
        }
    });
    crate::daemon::wait_for_socket(&path);
    path
}
