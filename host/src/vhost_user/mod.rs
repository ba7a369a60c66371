//! The vhost-user glue: virtqueues, notifications, memory-table updates
//! and the rings' life (stop, start, reset, disconnect).
//!
//! Chains are taken apart here ([`crate::queue`]), requests decoded with the
//! protocol crate and handed to the device model; responses are written
//! back and every popped chain is completed exactly once ([`serve`]).
//! Submit chains are parked until their job completes; the scheduler
//! signals completions through an eventfd on this thread's epoll loop, and
//! only this thread touches the rings. What a stop, a start and a reset do
//! is decided in [`crate::lifecycle`] and carried out here.

mod persist;
mod serve;
mod transfer;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_accel_protocol::*;
use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::IntoBytes;

use crate::backend::Backend;
use crate::config::Config;
use crate::device::Device;
use crate::lifecycle::{RingConfig, Rings, Start};
use crate::memory::{GuestMem, VmMemory};
use crate::metrics::VmMetrics;
use crate::queue::{RingStats, WriteArea};
use crate::sched::{Scheduler, VmSlot};
use crate::state_dir::Store;
use crate::vring::AccelVring;
use persist::Persist;
use transfer::Pending;

/// The vrings of this device.
pub type Vring = AccelVring<GuestMemoryAtomic<GuestMem>>;

/// How long a stop or a reset waits for the VM's jobs to leave the NPU
/// beyond the job timeout (which bounds a running job's device time).
const STOP_SLACK: Duration = Duration::from_secs(2);

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
    /// The rings' life. Held while the vring thread serves the rings, so
    /// that a stop or a reset (on the frontend's thread) finds the rings
    /// untouched once it holds it.
    rings: Mutex<Rings<{ VIRTIO_ACCEL_NUM_QUEUES }>>,
    /// Handles on the rings the library made for this VM.
    vrings: OnceLock<Vec<Vring>>,
    /// A device state moving in or out (migration).
    transfer: Mutex<Option<transfer::Transfer>>,
    /// A loaded device state, restored when the rings start.
    pending: Mutex<Option<Pending>>,
    /// The VM's device kept on disk (`--state-dir`).
    persist: Option<Mutex<Persist>>,
    /// Bytes the ring code copied to and from guest memory.
    ring_stats: RingStats,
    /// The exit-event consumers given to the library's vring threads.
    /// vhost-user-backend 0.24 registers each with `into_raw_fd()` and
    /// never closes it: one eventfd per connection would leak.
    exit_fds: Mutex<Vec<RawFd>>,
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
    /// One VM's device. With `store`, its state is kept there, and what a
    /// previous daemon left in it is restored when the rings start.
    pub fn new(
        config: Config,
        sched: Arc<Scheduler<B>>,
        mem: GuestMemoryAtomic<GuestMem>,
        weight: u32,
        metrics: Arc<VmMetrics>,
        store: Option<Store>,
    ) -> io::Result<AccelBackend<B>> {
        let crash_after = config.crash_after_commits;
        let persist = store.map(|s| Persist::new(s, crash_after));
        let pending = persist
            .as_ref()
            .and_then(Persist::load)
            .map(Pending::Restarted);
        let mem = VmMemory {
            mem,
            npu_stats: Arc::new(metrics.npu_copy_stats()),
        };
        let mut device = Device::new(
            config.limits.clone(),
            sched.backend().clone(),
            mem.clone(),
            metrics.clone(),
        );
        if persist.is_some() {
            device.track_changes();
        }
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
                rings: Mutex::new(Rings::default()),
                vrings: OnceLock::new(),
                transfer: Mutex::new(None),
                pending: Mutex::new(pending),
                persist: persist.map(Mutex::new),
                ring_stats: RingStats::default(),
                exit_fds: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Gives the glue the rings the library made (see [`crate::vring`]).
    /// Closes the exit-event consumers the library leaked, once the
    /// daemon that used them is gone (its vring threads joined).
    pub fn close_exit_fds(&self) {
        if let Ok(mut fds) = lock(&self.inner.exit_fds) {
            for fd in fds.drain(..) {
                // SAFETY: the library took this eventfd with into_raw_fd()
                // and never closes it; its epoll and threads ended with the
                // daemon, so nothing uses the fd and nothing else closes it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }

    pub fn set_vrings(&self, vrings: Vec<Vring>) {
        let _ = self.inner.vrings.set(vrings);
    }

    pub fn vm(&self) -> &Arc<VmSlot<B>> {
        &self.inner.vm
    }

    /// Bytes the ring code copied to and from this VM's memory.
    pub fn ring_stats(&self) -> &RingStats {
        &self.inner.ring_stats
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

    /// A ring the device cannot use any more (its avail index claims more
    /// chains than it has entries): the queue is no longer processed, every
    /// context is lost with `VIRTIO_ACCEL_LOST_DEVICE_ERROR`, and the driver
    /// must reset the device. Other VMs are not affected.
    fn ring_broken(&self, q: u16, err: &virtio_queue::Error, event: &Vring) {
        tracing::warn!("queue {q} is broken ({err}); the driver must reset the device");
        let Ok(_serving) = lock(&self.inner.rings) else {
            return;
        };
        self.inner.broken.fetch_or(1 << q, Ordering::Relaxed);
        match self.device() {
            Ok(mut d) => d.lose_all(VIRTIO_ACCEL_LOST_DEVICE_ERROR),
            Err(_) => return,
        }
        let _ = self.deliver_events(event);
    }

    /// How long a stop or a reset may wait for the VM's jobs to leave the
    /// NPU: a running job's device time is bounded by the job timeout.
    fn stop_limit(&self) -> Duration {
        Duration::from_millis(self.inner.config.job_timeout_ms) + STOP_SLACK
    }

    /// Drops everything the VM holds: every job is aborted, and once the
    /// NPU has given every one of them back (they write nothing after
    /// that), objects, queued jobs, parked chains and events go. The
    /// caller holds `rings`.
    fn reset_objects(&self) {
        if let Ok(mut d) = self.device() {
            d.reset();
        }
        self.inner.sched.kick();
        let limit = self.stop_limit();
        if !self.inner.vm.wait_idle(limit) {
            tracing::error!("reset: the VM's jobs were still on the NPU after {limit:?}");
        }
        if let Ok(mut p) = lock(&self.inner.parked) {
            p.clear();
        }
        self.inner.broken.store(0, Ordering::Relaxed);
        self.inner.more.store(0, Ordering::Relaxed);
    }

    /// The VM's connection is gone: as a reset, waiting for the NPU to stop
    /// its jobs before its memory can go.
    pub fn disconnect(&self) {
        if let Ok(mut rings) = lock(&self.inner.rings) {
            self.reset_objects();
            rings.reset();
        }
        self.forget();
    }

    /// The work behind one epoll event.
    fn dispatch(&self, device_event: u16, vrings: &[Vring]) -> Result<(), GlueError> {
        let [control, submit, event] = vrings else {
            return Ok(());
        };
        // Until now the rings were only handed over by the server.
        let _ = self.inner.vrings.set(vrings.to_vec());
        if device_event == COMPLETION_EVENT {
            let _ = self.inner.vm.completion.read();
        }
        // Held while the rings are used: a stop waits for it.
        let mut rings = lock(&self.inner.rings)?;
        let now = [
            ring_config(control),
            ring_config(submit),
            ring_config(event),
        ];
        let start = rings.start(now);
        if start == Start::First {
            self.rings_started(&now);
            match lock(&self.inner.pending)?.take() {
                Some(Pending::Migrated(s)) => self.restore_migrated(s, now)?,
                Some(Pending::Restarted(l)) => self.restore_restarted(l, now)?,
                None => {}
            }
        }
        match start {
            Start::Resume => {
                self.device()?.resume();
                self.inner.sched.kick();
            }
            Start::Reset => {
                tracing::info!("the driver reset the device while it was stopped");
                self.reset_objects();
            }
            Start::First | Start::Wait => {}
        }
        if !rings.running() {
            return Ok(());
        }
        // On a start, chains the driver made available meanwhile are taken
        // without waiting for a kick.
        let mut drain = if start == Start::Wait { 0u8 } else { 0b11 };
        match device_event {
            VIRTIO_ACCEL_VQ_CONTROL | VIRTIO_ACCEL_VQ_SUBMIT => drain |= 1 << device_event,
            VIRTIO_ACCEL_VQ_EVENT => {}
            COMPLETION_EVENT => drain |= self.inner.more.swap(0, Ordering::Relaxed),
            e => return Err(GlueError::UnknownEvent(e)),
        }
        for (q, vring) in [
            (VIRTIO_ACCEL_VQ_CONTROL, control),
            (VIRTIO_ACCEL_VQ_SUBMIT, submit),
        ] {
            if drain & (1 << q) != 0 && !self.is_broken(q) && vring.running() {
                self.drain_queue(q, vring)?;
            }
        }
        // A rejected submit may have been answered at once, a destroy may
        // have cancelled jobs, and jobs may have ended.
        self.complete_jobs(submit)?;
        self.deliver_events(event)?;
        Ok(())
    }
}

/// Where a ring is, whether or not it runs.
fn ring_place(v: &Vring) -> RingConfig {
    let s = v.get_ref();
    let q = s.get_queue();
    RingConfig {
        size: q.size(),
        desc: q.desc_table(),
        avail: q.avail_ring(),
        used: q.used_ring(),
        next_avail: q.next_avail(),
        next_used: q.next_used(),
    }
}

/// Where a ring is, if it runs.
fn ring_config(v: &Vring) -> Option<RingConfig> {
    v.running().then(|| ring_place(v))
}

impl<B: Backend> AccelBackend<B> {
    /// The device feature bits this device offers on its backend.
    fn device_features(&self) -> u64 {
        let page_aligned = self.inner.sched.backend().caps().page_aligned;
        DEVICE_FEATURES | (u64::from(page_aligned) << VIRTIO_ACCEL_F_PAGE_ALIGNED)
    }
}

impl<B: Backend> VhostUserBackend for AccelBackend<B> {
    type Bitmap = BitmapMmapRegion;
    type Vring = Vring;

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
            | VhostUserVirtioFeatures::LOG_ALL.bits()
            | self.device_features()
    }

    fn acked_features(&self, features: u64) {
        if let Ok(mut d) = self.device() {
            d.set_features(features & self.device_features());
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::DEVICE_STATE
    }

    fn reset_device(&self) {
        // RESET_DEVICE: acknowledged once nothing of the VM runs any more.
        self.disconnect();
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
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()?;
        if let Ok(mut fds) = lock(&self.inner.exit_fds) {
            fds.push(consumer.as_raw_fd());
        }
        Some((consumer, notifier))
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: a VM stop, or a reset the frontend shows as one.
        // The first stop stops the device; once the jobs on the NPU have
        // ended (they are answered when the rings run again) nothing of the
        // VM touches its memory, and the frontend gets its answer.
        let Some(v) = self
            .inner
            .vrings
            .get()
            .and_then(|v| v.get(queue_index as usize))
        else {
            return Ok(());
        };
        let mut rings = lock(&self.inner.rings)?;
        if rings.stop(queue_index as usize, ring_place(v)) {
            self.device()?.stop();
            self.inner.sched.kick();
            let limit = self.stop_limit();
            if !self.inner.vm.wait_idle(limit) {
                tracing::error!("stop: the VM's jobs were still on the NPU after {limit:?}");
            }
        }
        Ok(())
    }

    fn set_device_state_fd(
        &self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: File,
    ) -> io::Result<Option<File>> {
        self.state_fd(direction, phase, file)
    }

    fn check_device_state(&self) -> io::Result<()> {
        self.check_state_transfer()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
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
