//! The NPU scheduler shared by every VM the daemon serves.
//!
//! One thread does it all, so the order of events is plain: it watches the
//! backend's completion fd, gives each finished job to its VM's device
//! model and wakes that VM's vring thread through its completion eventfd,
//! enforces the job timeout, and asks [`policy`] which job runs next and
//! which running slice to preempt. It never waits for a VM's lock and never
//! touches a virtqueue; the vring threads never wait for a job.

pub mod policy;
mod thread;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::Backend;
use crate::device::Device;
use crate::memory::VmMemory;
use crate::metrics::{DaemonMetrics, VmMetrics};
use policy::VmKey;

/// One VM as the scheduler sees it.
pub struct VmSlot<B: Backend> {
    pub device: Mutex<Device<B>>,
    pub mem: VmMemory,
    /// Written when the device model has completions for the vring thread.
    pub completion: EventFd,
    /// Notified, with `device`'s mutex, each time a job of this VM is
    /// given back: what waits for the VM's jobs to stop waits on it.
    pub idle: Condvar,
    pub metrics: Arc<VmMetrics>,
    weight: u32,
    key: AtomicU64,
}

impl<B: Backend> VmSlot<B> {
    pub fn new(
        device: Device<B>,
        mem: VmMemory,
        weight: u32,
        metrics: Arc<VmMetrics>,
    ) -> std::io::Result<VmSlot<B>> {
        Ok(VmSlot {
            device: Mutex::new(device),
            mem,
            completion: EventFd::new(EFD_NONBLOCK)?,
            idle: Condvar::new(),
            metrics,
            weight,
            key: AtomicU64::new(0),
        })
    }

    /// Waits until none of this VM's jobs is on the NPU (every job the
    /// backend held has been given back), for at most `limit`. False if
    /// the limit passed first, or the device state is broken.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let Ok(mut d) = self.device.lock() else {
            return false;
        };
        loop {
            if d.counts().running == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            d = match self
                .idle
                .wait_timeout(d, left.min(Duration::from_millis(10)))
            {
                Ok((d, _)) => d,
                Err(_) => return false,
            };
        }
    }
}

struct Inbox<B: Backend> {
    vms: Vec<(VmKey, Weak<VmSlot<B>>, u32)>,
    next_key: VmKey,
    shutdown: bool,
}

pub struct Scheduler<B: Backend> {
    backend: Arc<B>,
    timeout: Duration,
    quantum: Duration,
    inbox: Mutex<Inbox<B>>,
    kick: EventFd,
    thread: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<DaemonMetrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: Backend> Scheduler<B> {
    /// Starts the scheduler thread over `backend`: a job that has used
    /// `timeout` of device time is aborted and its context lost; a VM more
    /// than `quantum` ahead of a waiting one is preempted.
    pub fn new(
        backend: Arc<B>,
        timeout: Duration,
        quantum: Duration,
        metrics: Arc<DaemonMetrics>,
    ) -> std::io::Result<Arc<Scheduler<B>>> {
        let s = Arc::new(Scheduler {
            backend,
            timeout,
            quantum,
            inbox: Mutex::new(Inbox {
                vms: Vec::new(),
                next_key: 1,
                shutdown: false,
            }),
            kick: EventFd::new(EFD_NONBLOCK)?,
            thread: Mutex::new(None),
            metrics,
        });
        let s2 = s.clone();
        let mut lp = thread::Loop::new(s2)?;
        let h = std::thread::Builder::new()
            .name("npu-scheduler".into())
            .spawn(move || lp.run())?;
        *lock(&s.thread) = Some(h);
        Ok(s)
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    pub fn add_vm(&self, vm: &Arc<VmSlot<B>>) {
        let mut ib = lock(&self.inbox);
        let key = ib.next_key;
        ib.next_key += 1;
        vm.key.store(key, Ordering::Relaxed);
        ib.vms.push((key, Arc::downgrade(vm), vm.weight));
        drop(ib);
        self.kick();
    }

    /// Tells the scheduler there may be new work. Call without holding any
    /// VM's device lock.
    pub fn kick(&self) {
        let _ = self.kick.write(1);
    }

    /// Stops the scheduler thread; jobs still on the backend are left to it.
    pub fn shutdown(&self) {
        lock(&self.inbox).shutdown = true;
        self.kick();
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
        self.backend.shutdown();
    }
}
