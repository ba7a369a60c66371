//! The vhost-user glue: virtqueues, notifications and memory-table updates.
//!
//! Chains are taken apart here ([`crate::queue`]), requests decoded with the
//! protocol crate and handed to the device model; responses are written
//! back and every popped chain is completed exactly once. Submit chains are
//! parked until their job completes; completions arrive through an eventfd
//! on this thread's epoll loop.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_accel_protocol::*;
use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zerocopy::IntoBytes;

use crate::config::Config;
use crate::device::{Device, Outcome};
use crate::memory::{GuestMem, MemStats};
use crate::queue::{self, WriteArea};
use crate::sched::{Scheduler, VmSlot};

/// Epoll id of the completion eventfd (ids up to the queue count are the
/// library's).
pub const COMPLETION_EVENT: u16 = VIRTIO_ACCEL_NUM_QUEUES as u16 + 1;

/// Device feature bits this device offers.
pub const DEVICE_FEATURES: u64 = (1 << VIRTIO_ACCEL_F_INLINE_CMD)
    | (1 << VIRTIO_ACCEL_F_IOCTL)
    | (1 << VIRTIO_ACCEL_F_CROSS_CTX_FENCE);

#[derive(Debug, thiserror::Error)]
pub enum GlueError {
    #[error("unknown device event {0}")]
    UnknownEvent(u16),
    #[error("virtqueue: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error("eventfd: {0}")]
    EventFd(io::Error),
}

impl From<GlueError> for io::Error {
    fn from(e: GlueError) -> Self {
        io::Error::other(e)
    }
}

struct Parked {
    head: u16,
    write: WriteArea,
    ctx_id: u32,
}

struct Inner {
    config: Config,
    sched: Arc<Scheduler>,
    vm: Arc<VmSlot>,
    event_idx: AtomicBool,
    parked: Mutex<HashMap<u64, Parked>>,
    next_token: AtomicU64,
    complete_lock: Mutex<()>,
}

/// One VM's device, as the vhost-user daemon drives it.
#[derive(Clone)]
pub struct AccelBackend {
    inner: Arc<Inner>,
}

impl AccelBackend {
    pub fn new(
        config: Config,
        sched: Arc<Scheduler>,
        mem: GuestMemoryAtomic<GuestMem>,
    ) -> io::Result<AccelBackend> {
        let device = Device::new(config.limits.clone(), sched.driver().clone());
        let vm = Arc::new(VmSlot {
            device: Mutex::new(device),
            mem,
            completion: EventFd::new(EFD_NONBLOCK)?,
            completer: OnceLock::new(),
            npu_stats: MemStats::default(),
        });
        sched.add_vm(&vm);
        Ok(AccelBackend {
            inner: Arc::new(Inner {
                config,
                sched,
                vm,
                event_idx: AtomicBool::new(false),
                parked: Mutex::new(HashMap::new()),
                next_token: AtomicU64::new(1),
                complete_lock: Mutex::new(()),
            }),
        })
    }

    pub fn vm(&self) -> &Arc<VmSlot> {
        &self.inner.vm
    }

    /// Chains waiting for their job.
    pub fn parked(&self) -> usize {
        self.inner.parked.lock().unwrap().len()
    }

    pub fn completion_fd(&self) -> &EventFd {
        &self.inner.vm.completion
    }

    /// Tells the driver about used buffers, honouring EVENT_IDX.
    fn notify(&self, vring: &VringRwLock) -> Result<(), GlueError> {
        if !self.inner.event_idx.load(Ordering::Relaxed) || vring.needs_notification()? {
            vring.signal_used_queue().map_err(GlueError::EventFd)?;
        }
        Ok(())
    }

    /// Drains a request queue: disable notifications, process, re-enable,
    /// and go again if the driver added chains meanwhile.
    fn drain_queue(&self, q: u16, vring: &VringRwLock) -> Result<(), GlueError> {
        if self.inner.event_idx.load(Ordering::Relaxed) {
            loop {
                vring.disable_notification()?;
                self.process_queue(q, vring)?;
                if !vring.enable_notification()? {
                    break;
                }
            }
        } else {
            self.process_queue(q, vring)?;
        }
        Ok(())
    }

    fn process_queue(&self, q: u16, vring: &VringRwLock) -> Result<(), GlueError> {
        let mem = self.inner.vm.mem.memory();
        let chains: Vec<_> = vring.get_mut().get_queue_mut().iter(mem.clone())?.collect();
        if chains.is_empty() {
            return Ok(());
        }
        let max = self.inner.config.max_request_bytes();
        let limits = self.inner.config.decode_limits();
        let mut queued = false;
        for chain in chains {
            let head = chain.head_index();
            let split = queue::split(chain, &mem, max);
            let decoded = match &split.error {
                Some(e) => {
                    tracing::debug!("malformed chain {head}: {e}");
                    Err(None)
                }
                None => Request::decode(&split.request, &limits).map_err(Some),
            };
            let response = match decoded {
                Err(e) => {
                    let hdr = request::peek_hdr(&split.request).unwrap_or_default();
                    let status = e.map_or(VIRTIO_ACCEL_RESP_ERR_INVALID, |e| {
                        tracing::debug!("bad request: {e}");
                        e.status()
                    });
                    Response::error(hdr.type_.get(), hdr.ctx_id.get(), status)
                }
                Ok(req) => {
                    let ctx_id = req.hdr().ctx_id.get();
                    let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
                    // Park first: the job may complete before this returns.
                    let write = split.write.clone();
                    self.inner.parked.lock().unwrap().insert(
                        token,
                        Parked {
                            head,
                            write,
                            ctx_id,
                        },
                    );
                    let outcome = self
                        .inner
                        .vm
                        .device
                        .lock()
                        .unwrap()
                        .handle(q, req, &mem, token);
                    match outcome {
                        Outcome::Queued => {
                            queued = true;
                            continue;
                        }
                        Outcome::Respond(r) => {
                            self.inner.parked.lock().unwrap().remove(&token);
                            r
                        }
                    }
                }
            };
            let ctx = response.hdr().ctx_id.get();
            let used = split.write.respond(&mem, &response.encode(), ctx);
            vring.add_used(head, used)?;
        }
        if queued {
            self.inner.sched.kick();
        }
        self.notify(vring)
    }

    /// Lets NPU workers complete chains themselves. The vrings live as long
    /// as the daemon; the closure holds the backend weakly.
    fn install_completer(&self, submit: &VringRwLock, event: &VringRwLock) {
        if self.inner.vm.completer.get().is_some() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let (submit, event) = (submit.clone(), event.clone());
        let _ = self.inner.vm.completer.set(Box::new(move || {
            let Some(inner) = weak.upgrade() else {
                return false;
            };
            let b = AccelBackend { inner };
            b.complete_jobs(&submit).is_ok() && b.deliver_events(&event).is_ok()
        }));
    }

    /// Completes the submit chains whose jobs finished.
    fn complete_jobs(&self, vring: &VringRwLock) -> Result<(), GlueError> {
        // Workers and the vring thread both complete chains: taking and
        // writing under one lock keeps the used ring in fence order.
        let _order = self.inner.complete_lock.lock().unwrap();
        let done = self.inner.vm.device.lock().unwrap().take_completions();
        if done.is_empty() {
            return Ok(());
        }
        let mem = self.inner.vm.mem.memory();
        for c in done {
            let Some(p) = self.inner.parked.lock().unwrap().remove(&c.token) else {
                continue;
            };
            let used = p.write.respond(&mem, &c.response.encode(), p.ctx_id);
            vring.add_used(p.head, used)?;
        }
        self.notify(vring)
    }

    /// Moves pending events into eventq buffers.
    fn deliver_events(&self, vring: &VringRwLock) -> Result<(), GlueError> {
        let mem = self.inner.vm.mem.memory();
        let mut delivered = false;
        loop {
            let Some(ev) = self.inner.vm.device.lock().unwrap().pop_event() else {
                break;
            };
            let Some(chain) = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone())
            else {
                self.inner.vm.device.lock().unwrap().unpop_event(ev);
                break;
            };
            let head = chain.head_index();
            let split = queue::split(chain, &mem, 0);
            // Only a whole event is written; `respond`'s short-buffer
            // fallback is a response header, not an event.
            let used = if split.write.len() >= ev.as_bytes().len() {
                split
                    .write
                    .respond(&mem, ev.as_bytes(), ev.hdr.ctx_id.get())
            } else {
                0
            };
            vring.add_used(head, used)?;
            delivered = true;
            if used == 0 {
                // Unusable buffer: the event waits for the next one.
                self.inner.vm.device.lock().unwrap().unpop_event(ev);
            }
        }
        // With EVENT_IDX, publish how far the device has read so the
        // driver notifies it when it adds buffers; without this its
        // refills after the first events are never kicked.
        vring.enable_notification()?;
        if delivered {
            self.notify(vring)?;
        }
        Ok(())
    }
}

impl VhostUserBackend for AccelBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        VIRTIO_ACCEL_NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        self.inner.config.queue_size
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | DEVICE_FEATURES
    }

    fn acked_features(&self, features: u64) {
        self.inner
            .vm
            .device
            .lock()
            .unwrap()
            .set_features(features & DEVICE_FEATURES);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn reset_device(&self) {
        self.inner.vm.device.lock().unwrap().reset();
        self.inner.parked.lock().unwrap().clear();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.inner.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.inner.config.device_config();
        let bytes = cfg.as_bytes();
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        bytes[start..end].to_vec()
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMem>) -> io::Result<()> {
        // The daemon hands us the same atomic it updates in place; jobs and
        // chains resolve guest addresses against its current snapshot.
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // The driver is stopping the device (reset or VM stop): its chains
        // go with the rings, so drop every object it held.
        if queue_index == u32::from(VIRTIO_ACCEL_VQ_CONTROL) {
            self.reset_device();
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        let [control, submit, event] = vrings else {
            return Ok(());
        };
        self.install_completer(submit, event);
        match device_event {
            VIRTIO_ACCEL_VQ_CONTROL => {
                self.drain_queue(VIRTIO_ACCEL_VQ_CONTROL, control)?;
                // CTX_DESTROY cancels queued jobs: answer their chains.
                self.complete_jobs(submit)?;
                self.deliver_events(event)?;
            }
            VIRTIO_ACCEL_VQ_SUBMIT => {
                self.drain_queue(VIRTIO_ACCEL_VQ_SUBMIT, submit)?;
                // A rejected submit may have been answered at once, and a
                // destroy may have cancelled jobs.
                self.complete_jobs(submit)?;
            }
            VIRTIO_ACCEL_VQ_EVENT => self.deliver_events(event)?,
            COMPLETION_EVENT => {
                let _ = self.inner.vm.completion.read();
                self.complete_jobs(submit)?;
                self.deliver_events(event)?;
            }
            e => return Err(GlueError::UnknownEvent(e).into()),
        }
        Ok(())
    }
}
