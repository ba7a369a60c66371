//! `vhost-user-null`: a vhost-user backend that does nothing but the
//! handshake. It offers what `vhost-device-accel` offers a VMM (3 queues of
//! up to 1024 entries, a configuration space read as zeros, the same ring
//! features) and never touches a ring. `integration/vm/qemu-reconnect.sh`
//! runs QEMU against it to show which backend restarts QEMU survives
//! whatever the backend does.
//!
//! Usage: `vhost-user-null --socket-path PATH`. Serves one VMM at a time,
//! for ever; logs every request it acts on to stderr.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock};
use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

type Mem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

#[derive(Clone)]
struct Null {
    start: Instant,
    requests: Arc<AtomicU64>,
}

impl Null {
    fn log(&self, what: &str) {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        eprintln!(
            "vhost-user-null: {:8.3} s: request {n}: {what}",
            self.start.elapsed().as_secs_f64()
        );
    }
}

impl VhostUserBackend for Null {
    type Bitmap = ();
    type Vring = VringRwLock<Mem>;

    fn num_queues(&self) -> usize {
        3
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        self.log("features");
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        self.log(&format!("acked features {features:#x}"));
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.log("protocol features");
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.log(&format!("event idx {enabled}"));
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.log(&format!("config {offset}+{size}"));
        vec![0; size as usize]
    }

    fn update_memory(&self, _mem: Mem) -> io::Result<()> {
        self.log("memory table");
        Ok(())
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        self.log(&format!("ring {queue_index} stopped"));
        Ok(())
    }

    fn reset_device(&self) {
        self.log("reset");
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        _vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        self.log(&format!("kick on queue {device_event}, ignored"));
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let socket = match args.as_slice() {
        [flag, path] if flag == "--socket-path" => PathBuf::from(path),
        _ => {
            eprintln!("usage: vhost-user-null --socket-path PATH");
            return std::process::ExitCode::from(2);
        }
    };
    let null = Null {
        start: Instant::now(),
        requests: Arc::default(),
    };
    loop {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = match VhostUserDaemon::new("vhost-user-null".into(), null.clone(), mem) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("vhost-user-null: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        eprintln!("vhost-user-null: listening on {}", socket.display());
        let result = daemon.serve(&socket);
        eprintln!(
            "vhost-user-null: {:8.3} s: the frontend left ({result:?}) after {} requests",
            null.start.elapsed().as_secs_f64(),
            null.requests.load(Ordering::Relaxed)
        );
    }
}
