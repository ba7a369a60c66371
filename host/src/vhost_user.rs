//! The vhost-user glue: virtqueues, notifications and memory-table updates.
//!
//! Chains are taken apart here ([`crate::queue`]), requests decoded with the
//! protocol crate and handed to the device model; responses are written
//! back and every popped chain is completed exactly once. Submit chains are
//! parked until their job completes; the scheduler signals completions
//! through an eventfd on this thread's epoll loop, and only this thread
//! touches the rings.

use std::collections::HashMap;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
use vmm_sys_util::eventfd::EventFd;
use zerocopy::IntoBytes;

use crate::backend::Backend;
use crate::config::Config;
use crate::device::{Device, Outcome};
use crate::memory::{GuestMem, MemStats, VmMemory};
use crate::metrics::VmMetrics;
use crate::queue::{self, WriteArea};
use crate::sched::{Scheduler, VmSlot};

/// Epoll id of the completion eventfd (ids up to the queue count are the
/// library's).
pub const COMPLETION_EVENT: u16 = VIRTIO_ACCEL_NUM_QUEUES as u16 + 1;

/// Device feature bits this device offers.
pub const DEVICE_FEATURES: u64 = (1 << VIRTIO_ACCEL_F_INLINE_CMD)
    | (1 << VIRTIO_ACCEL_F_IOCTL)
    | (1 << VIRTIO_ACCEL_F_CROSS_CTX_FENCE)
    | (1 << VIRTIO_ACCEL_F_QUOTAS);

#[derive(Debug, thiserror::Error)]
pub enum GlueError {
    #[error("unknown device event {0}")]
    UnknownEvent(u16),
    #[error("queue {0}: {1}")]
    Ring(u16, virtio_queue::Error),
    #[error("eventfd: {0}")]
    EventFd(io::Error),
    #[error("the VM's device state was left broken by a panic")]
    Poisoned,
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

struct Inner<B: Backend> {
    config: Config,
    sched: Arc<Scheduler<B>>,
    vm: Arc<VmSlot<B>>,
    event_idx: AtomicBool,
    parked: Mutex<HashMap<u64, Parked>>,
    next_token: AtomicU64,
    /// Queues found broken (bit per queue): not processed until reset.
    broken: AtomicU8,
    /// Queues with chains left after a wake-up's passes (bit per queue).
    more: AtomicU8,
    /// Set once the VM's state was left inconsistent by a panic: it is no
    /// longer served, and nothing of it is touched again.
    dead: AtomicBool,
}

/// Locks a mutex the VM owns; a poisoned one means the VM is broken.
fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, GlueError> {
    m.lock().map_err(|_| GlueError::Poisoned)
}

/// One VM's device, as the vhost-user daemon drives it.
pub struct AccelBackend<B: Backend> {
    inner: Arc<Inner<B>>,
}

impl<B: Backend> Clone for AccelBackend<B> {
    fn clone(&self) -> Self {
        AccelBackend {
            inner: self.inner.clone(),
        }
    }
}

impl<B: Backend> AccelBackend<B> {
    pub fn new(
        config: Config,
        sched: Arc<Scheduler<B>>,
        mem: GuestMemoryAtomic<GuestMem>,
        weight: u32,
        metrics: Arc<VmMetrics>,
    ) -> io::Result<AccelBackend<B>> {
        let mem = VmMemory {
            mem,
            npu_stats: Arc::new(MemStats::default()),
        };
        let device = Device::new(
            config.limits.clone(),
            sched.backend().clone(),
            mem.clone(),
            metrics.clone(),
        );
        let vm = Arc::new(VmSlot::new(device, mem, weight, metrics)?);
        sched.add_vm(&vm);
        Ok(AccelBackend {
            inner: Arc::new(Inner {
                config,
                sched,
                vm,
                event_idx: AtomicBool::new(false),
                parked: Mutex::new(HashMap::new()),
                next_token: AtomicU64::new(1),
                broken: AtomicU8::new(0),
                more: AtomicU8::new(0),
                dead: AtomicBool::new(false),
            }),
        })
    }

    pub fn vm(&self) -> &Arc<VmSlot<B>> {
        &self.inner.vm
    }

    /// Chains waiting for their job.
    pub fn parked(&self) -> usize {
        self.inner.parked.lock().map_or(0, |p| p.len())
    }

    pub fn completion_fd(&self) -> &EventFd {
        &self.inner.vm.completion
    }

    fn device(&self) -> Result<MutexGuard<'_, Device<B>>, GlueError> {
        lock(&self.inner.vm.device)
    }

    /// Tells the driver about used buffers, honouring EVENT_IDX.
    fn notify(&self, q: u16, vring: &VringRwLock) {
        let needed = if self.inner.event_idx.load(Ordering::Relaxed) {
            vring.needs_notification().unwrap_or(true)
        } else {
            true
        };
        if needed {
            if let Err(e) = vring.signal_used_queue() {
                tracing::warn!("queue {q}: notifying the driver: {e}");
            }
        }
    }

    /// Returns a used chain. A head the queue refuses is logged, never
    /// fatal: the chains after it are still answered.
    fn add_used(&self, q: u16, vring: &VringRwLock, head: u16, used: u32) {
        if let Err(e) = vring.add_used(head, used) {
            tracing::warn!("queue {q}: returning chain {head}: {e}");
        }
    }

    /// Drains a request queue: disable notifications, process, re-enable,
    /// and go again if the driver added chains meanwhile.
    /// A bounded number of passes per wake-up: chains added while they
    /// run (by the driver, or by responses a driver pointed at its own
    /// avail ring) are taken on a later wake-up (see `MORE_WORK`), so one
    /// event never keeps this thread for an unbounded time.
    fn drain_queue(&self, q: u16, vring: &VringRwLock) -> Result<(), GlueError> {
        const PASSES: usize = 4;
        if self.inner.event_idx.load(Ordering::Relaxed) {
            for _ in 0..PASSES {
                vring
                    .disable_notification()
                    .map_err(|e| GlueError::Ring(q, e))?;
                self.process_queue(q, vring)?;
                if !vring
                    .enable_notification()
                    .map_err(|e| GlueError::Ring(q, e))?
                {
                    return Ok(());
                }
            }
            // More is available: come back through the completion eventfd.
            self.inner.more.fetch_or(1 << q, Ordering::Relaxed);
            let _ = self.inner.vm.completion.write(1);
        } else {
            self.process_queue(q, vring)?;
        }
        Ok(())
    }

    /// The heads of the chains the driver made available, with the queue's
    /// descriptor table and size. An avail index the queue refuses (more
    /// chains than entries) breaks the ring.
    fn pop_heads(
        &self,
        q: u16,
        vring: &VringRwLock,
        mem: &GuestMem,
    ) -> Result<(u64, u16, Vec<u16>), GlueError> {
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        let (table, size) = (queue.desc_table(), queue.size());
        let heads = queue
            .iter(mem)
            .map_err(|e| GlueError::Ring(q, e))?
            .map(|c| c.head_index())
            .collect();
        Ok((table, size, heads))
    }

    fn process_queue(&self, q: u16, vring: &VringRwLock) -> Result<(), GlueError> {
        let mem = self.inner.vm.mem.mem.memory();
        let (table, size, heads) = self.pop_heads(q, vring, &mem)?;
        if heads.is_empty() {
            return Ok(());
        }
        let max = self.inner.config.max_request_bytes();
        let limits = self.inner.config.decode_limits();
        let mut queued = false;
        for head in heads {
            if head >= size {
                // No used entry can name it; the chains after it go on.
                tracing::warn!("queue {q}: avail entry names descriptor {head} of {size}");
                continue;
            }
            let mut split = queue::split(&mem, table, size, head, max);
            let decoded = match &split.error {
                Some(e) => {
                    tracing::debug!("queue {q}: malformed chain {head}: {e}");
                    Err(None)
                }
                None => Request::decode(&split.request, &limits).map_err(Some),
            };
            let response = match decoded {
                Err(e) => {
                    let hdr = request::peek_hdr(&split.request).unwrap_or_default();
                    let status = e.map_or(VIRTIO_ACCEL_RESP_ERR_INVALID, |e| {
                        tracing::debug!("queue {q}: bad request: {e}");
                        e.status()
                    });
                    Response::error(hdr.type_.get(), hdr.ctx_id.get(), status)
                }
                Ok(req) if split.write.len() < req.response_size() => {
                    // Validate, then act: a request whose answer cannot be
                    // written is refused before it changes anything.
                    let hdr = req.hdr();
                    Response::error(
                        hdr.type_.get(),
                        hdr.ctx_id.get(),
                        VIRTIO_ACCEL_RESP_ERR_INVALID,
                    )
                }
                Ok(req) => {
                    let ctx_id = req.hdr().ctx_id.get();
                    let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
                    // A parked chain keeps only what its response needs.
                    split.write.truncate(req.response_size());
                    // Park first: the job may complete before this returns.
                    lock(&self.inner.parked)?.insert(
                        token,
                        Parked {
                            head,
                            write: split.write.clone(),
                            ctx_id,
                        },
                    );
                    let outcome = self.device()?.handle(q, req, &mem, token);
                    match outcome {
                        Outcome::Queued => {
                            queued = true;
                            continue;
                        }
                        Outcome::Respond(r) => {
                            lock(&self.inner.parked)?.remove(&token);
                            r
                        }
                    }
                }
            };
            let ctx = response.hdr().ctx_id.get();
            let used = split.write.respond(&mem, &response.encode(), ctx);
            self.add_used(q, vring, head, used);
        }
        if queued {
            self.inner.sched.kick();
        }
        self.notify(q, vring);
        Ok(())
    }

    /// Completes the submit chains whose jobs finished.
    fn complete_jobs(&self, vring: &VringRwLock) -> Result<(), GlueError> {
        let done = self.device()?.take_completions();
        if done.is_empty() {
            return Ok(());
        }
        let mem = self.inner.vm.mem.mem.memory();
        for c in done {
            let Some(p) = lock(&self.inner.parked)?.remove(&c.token) else {
                continue;
            };
            let used = p.write.respond(&mem, &c.response.encode(), p.ctx_id);
            self.add_used(VIRTIO_ACCEL_VQ_SUBMIT, vring, p.head, used);
        }
        self.notify(VIRTIO_ACCEL_VQ_SUBMIT, vring);
        Ok(())
    }

    /// Moves pending events into eventq buffers.
    fn deliver_events(&self, vring: &VringRwLock) -> Result<(), GlueError> {
        const Q: u16 = VIRTIO_ACCEL_VQ_EVENT;
        if self.is_broken(Q) {
            return Ok(());
        }
        let mem = self.inner.vm.mem.mem.memory();
        let mut delivered = false;
        // At most a queue's worth of buffers per call: a driver that keeps
        // offering unusable buffers cannot hold this thread here.
        let mut budget = usize::from(vring.get_ref().get_queue().size());
        loop {
            if budget == 0 {
                break;
            }
            budget -= 1;
            let Some(ev) = self.device()?.pop_event() else {
                break;
            };
            let next = {
                let mut state = vring.get_mut();
                let queue = state.get_queue_mut();
                let (table, size) = (queue.desc_table(), queue.size());
                queue
                    .iter(&*mem)
                    .map_err(|e| GlueError::Ring(Q, e))
                    .map(|mut it| it.next().map(|c| (table, size, c.head_index())))
            };
            let (table, size, head) = match next {
                Ok(Some(n)) => n,
                Ok(None) => {
                    self.device()?.unpop_event(ev);
                    break;
                }
                Err(e) => {
                    self.device()?.unpop_event(ev);
                    return Err(e);
                }
            };
            if head >= size {
                tracing::warn!("eventq: avail entry names descriptor {head} of {size}");
                self.device()?.unpop_event(ev);
                continue;
            }
            let split = queue::split(&mem, table, size, head, 0);
            // Only a whole event is written; `respond`'s short-buffer
            // fallback is a response header, not an event.
            let used = if split.error.is_none() && split.write.len() >= ev.as_bytes().len() {
                split
                    .write
                    .respond(&mem, ev.as_bytes(), ev.hdr.ctx_id.get())
            } else {
                0
            };
            self.add_used(Q, vring, head, used);
            delivered = true;
            if used == 0 {
                // Unusable buffer: the event waits for the next one.
                self.device()?.unpop_event(ev);
            }
        }
        // With EVENT_IDX, publish how far the device has read so the
        // driver notifies it when it adds buffers; without this its
        // refills after the first events are never kicked.
        vring
            .enable_notification()
            .map_err(|e| GlueError::Ring(Q, e))?;
        if delivered {
            self.notify(Q, vring);
        }
        Ok(())
    }

    fn is_broken(&self, q: u16) -> bool {
        self.inner.broken.load(Ordering::Relaxed) & (1 << q) != 0
    }

    /// A ring the device cannot use any more (its avail index claims more
    /// chains than it has entries): the queue is no longer processed, every
    /// context is lost with `VIRTIO_ACCEL_LOST_DEVICE_ERROR`, and the driver
    /// must reset the device. Other VMs are not affected.
    fn ring_broken(&self, q: u16, err: &virtio_queue::Error, event: &VringRwLock) {
        tracing::warn!("queue {q} is broken ({err}); the driver must reset the device");
        self.inner.broken.fetch_or(1 << q, Ordering::Relaxed);
        match self.device() {
            Ok(mut d) => d.lose_all(VIRTIO_ACCEL_LOST_DEVICE_ERROR),
            Err(_) => return,
        }
        let _ = self.deliver_events(event);
    }

    /// The work behind one epoll event.
    fn dispatch(&self, device_event: u16, vrings: &[VringRwLock]) -> Result<(), GlueError> {
        let [control, submit, event] = vrings else {
            return Ok(());
        };
        match device_event {
            VIRTIO_ACCEL_VQ_CONTROL | VIRTIO_ACCEL_VQ_SUBMIT => {
                let vring = if device_event == VIRTIO_ACCEL_VQ_CONTROL {
                    control
                } else {
                    submit
                };
                if !self.is_broken(device_event) {
                    self.drain_queue(device_event, vring)?;
                }
                // A rejected submit may have been answered at once, and a
                // destroy may have cancelled jobs.
                self.complete_jobs(submit)?;
                self.deliver_events(event)?;
            }
            VIRTIO_ACCEL_VQ_EVENT => self.deliver_events(event)?,
            COMPLETION_EVENT => {
                let _ = self.inner.vm.completion.read();
                let more = self.inner.more.swap(0, Ordering::Relaxed);
                for (q, vring) in [
                    (VIRTIO_ACCEL_VQ_CONTROL, control),
                    (VIRTIO_ACCEL_VQ_SUBMIT, submit),
                ] {
                    if more & (1 << q) != 0 && !self.is_broken(q) {
                        self.drain_queue(q, vring)?;
                    }
                }
                self.complete_jobs(submit)?;
                self.deliver_events(event)?;
            }
            e => return Err(GlueError::UnknownEvent(e)),
        }
        Ok(())
    }
}

impl<B: Backend> VhostUserBackend for AccelBackend<B> {
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
        if let Ok(mut d) = self.device() {
            d.set_features(features & DEVICE_FEATURES);
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn reset_device(&self) {
        if let Ok(mut d) = self.device() {
            d.reset();
        }
        if let Ok(mut p) = lock(&self.inner.parked) {
            p.clear();
        }
        self.inner.broken.store(0, Ordering::Relaxed);
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
        if evset != EventSet::IN || self.inner.dead.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Nothing a guest does ends this loop: a broken ring stops its
        // queue, a broken device state stops this VM, and every other VM
        // goes on.
        let result = catch_unwind(AssertUnwindSafe(|| self.dispatch(device_event, vrings)));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(GlueError::Ring(q, e))) => {
                if let Some(event) = vrings.get(usize::from(VIRTIO_ACCEL_VQ_EVENT)) {
                    self.ring_broken(q, &e, event);
                }
            }
            Ok(Err(GlueError::UnknownEvent(e))) => tracing::warn!("unknown device event {e}"),
            Ok(Err(e)) => {
                tracing::error!("{e}; this VM is no longer served");
                self.inner.dead.store(true, Ordering::Relaxed);
            }
            Err(_) => {
                tracing::error!("panic while serving this VM; it is no longer served");
                self.inner.dead.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}
