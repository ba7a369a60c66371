//! The vrings as this device keeps them: vhost-user-backend's
//! `VringRwLock`, and a signal when the frontend starts a ring.
//!
//! The library tells a backend when a ring stops (`stop_vring`, at
//! `GET_VRING_BASE`) but not when it starts again: after a VM's `cont` no
//! kick need arrive, yet jobs that ended while the VM was stopped are still
//! to be answered. Every ring here writes the VM's wake-up eventfd when it
//! is made ready, enabled or given a kick fd, and the glue looks at its
//! rings' state on that wake-up.
//!
//! The library creates the vrings itself, inside `VhostUserDaemon::new`.
//! [`collect`] runs that constructor with the wake-up eventfd at hand and
//! returns the rings it made, so that the glue holds handles on the same
//! rings (they share their state) from the start.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::sync::Arc;

use vhost_user_backend::{VringRwLock, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::{Error as VirtQueError, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::EventFd;

/// A vring that signals its starts.
pub struct AccelVring<M: GuestAddressSpace> {
    ring: VringRwLock<M>,
    started: Option<Arc<EventFd>>,
}

impl<M: GuestAddressSpace> Clone for AccelVring<M> {
    fn clone(&self) -> Self {
        AccelVring {
            ring: self.ring.clone(),
            started: self.started.clone(),
        }
    }
}

/// What the constructor finds while [`collect`] runs on this thread.
struct Collector {
    started: Arc<EventFd>,
    made: Vec<Box<dyn std::any::Any>>,
}

thread_local! {
    static COLLECTOR: RefCell<Option<Collector>> = const { RefCell::new(None) };
}

/// Runs `make` (which creates the vrings, e.g. `VhostUserDaemon::new`) so
/// that the rings it creates signal `started`, and returns its result with
/// handles on those rings, in creation order.
pub fn collect<M: GuestAddressSpace + 'static, R>(
    started: Arc<EventFd>,
    make: impl FnOnce() -> R,
) -> (R, Vec<AccelVring<M>>) {
    COLLECTOR.with(|c| {
        *c.borrow_mut() = Some(Collector {
            started,
            made: Vec::new(),
        })
    });
    let r = make();
    let made = COLLECTOR
        .with(|c| c.borrow_mut().take())
        .map(|c| c.made)
        .unwrap_or_default();
    let rings = made
        .into_iter()
        .filter_map(|b| b.downcast::<AccelVring<M>>().ok().map(|b| *b))
        .collect();
    (r, rings)
}

impl<M: GuestAddressSpace + 'static> AccelVring<M> {
    fn signal(&self) {
        if let Some(e) = &self.started {
            let _ = e.write(1);
        }
    }

    /// Whether the device may use the ring: the frontend started it
    /// (kick fd, `ready`) and enabled it.
    pub fn running(&self) -> bool {
        let s = self.ring.get_ref();
        s.get_queue().ready() && s.is_enabled()
    }
}

impl<'a, M: 'a + GuestAddressSpace> VringStateGuard<'a, M> for AccelVring<M> {
    type G = <VringRwLock<M> as VringStateGuard<'a, M>>::G;
}

impl<'a, M: 'a + GuestAddressSpace> VringStateMutGuard<'a, M> for AccelVring<M> {
    type G = <VringRwLock<M> as VringStateMutGuard<'a, M>>::G;
}

impl<M: 'static + GuestAddressSpace> VringT<M> for AccelVring<M> {
    fn new(mem: M, max_queue_size: u16) -> Result<Self, VirtQueError> {
        let ring = VringRwLock::new(mem, max_queue_size)?;
        let started = COLLECTOR.with(|c| c.borrow().as_ref().map(|c| c.started.clone()));
        let v = AccelVring { ring, started };
        COLLECTOR.with(|c| {
            if let Some(c) = c.borrow_mut().as_mut() {
                c.made.push(Box::new(v.clone()));
            }
        });
        Ok(v)
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, M>>::G {
        self.ring.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, M>>::G {
        self.ring.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.ring.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.ring.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.ring.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.ring.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.ring.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.ring.set_enabled(enabled);
        if enabled {
            self.signal();
        }
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), VirtQueError> {
        self.ring.set_queue_info(desc_table, avail_ring, used_ring)
    }

    fn queue_next_avail(&self) -> u16 {
        self.ring.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.ring.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.ring.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.ring.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        self.ring.set_queue_size(num)
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.ring.set_queue_event_idx(enabled)
    }

    fn set_queue_ready(&self, ready: bool) {
        self.ring.set_queue_ready(ready);
        if ready {
            self.signal();
        }
    }

    fn set_kick(&self, file: Option<File>) {
        let some = file.is_some();
        self.ring.set_kick(file);
        if some {
            self.signal();
        }
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.ring.read_kick()
    }

    fn set_call(&self, file: Option<File>) {
        self.ring.set_call(file)
    }

    fn set_err(&self, file: Option<File>) {
        self.ring.set_err(file)
    }
}
