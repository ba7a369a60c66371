//! The NPU scheduler shared by every VM the daemon serves.
//!
//! Worker threads take runnable jobs round robin across VMs (so each VM gets
//! an equal share of the NPU whatever its queue depth), run them outside any
//! lock, hand the result back to the VM's device model and wake the VM's
//! vring thread through its completion eventfd. The vring threads never
//! wait for a job.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::eventfd::EventFd;

use crate::device::Device;
use crate::driver::{DriverError, NpuDriver};
use crate::memory::{GuestMem, MemStats};

/// Delivers a VM's finished jobs to its guest.
pub type Completer = Box<dyn Fn() -> bool + Send + Sync>;

/// One VM as the scheduler sees it.
pub struct VmSlot {
    pub device: Mutex<Device>,
    pub mem: GuestMemoryAtomic<GuestMem>,
    /// Written when the device model has completions for the vring thread.
    pub completion: EventFd,
    /// Completes finished jobs' chains from the worker itself, saving the
    /// vring thread a wake-up; returns false when it cannot (not set up
    /// yet, or the VM is going away), and the eventfd is used instead.
    pub completer: OnceLock<Completer>,
    /// Bytes the NPU moved through this VM's buffers.
    pub npu_stats: MemStats,
}

struct State {
    vms: Vec<Weak<VmSlot>>,
    cursor: usize,
    shutdown: bool,
}

pub struct Scheduler {
    state: Mutex<State>,
    wake: Condvar,
    driver: Arc<dyn NpuDriver>,
    timeout: Duration,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Scheduler {
    pub fn new(driver: Arc<dyn NpuDriver>, workers: usize, timeout: Duration) -> Arc<Scheduler> {
        let s = Arc::new(Scheduler {
            state: Mutex::new(State {
                vms: Vec::new(),
                cursor: 0,
                shutdown: false,
            }),
            wake: Condvar::new(),
            driver,
            timeout,
            workers: Mutex::new(Vec::new()),
        });
        let handles = (0..workers)
            .map(|i| {
                let s = s.clone();
                std::thread::Builder::new()
                    .name(format!("npu-worker-{i}"))
                    .spawn(move || s.worker())
                    .expect("spawn NPU worker")
            })
            .collect();
        *s.workers.lock().unwrap_or_else(PoisonError::into_inner) = handles;
        s
    }

    /// The scheduler's own state: a list of VMs and a cursor, consistent
    /// at every point a panic could leave it, so a poisoned lock is used
    /// as it is.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn driver(&self) -> &Arc<dyn NpuDriver> {
        &self.driver
    }

    pub fn add_vm(&self, vm: &Arc<VmSlot>) {
        let mut st = self.state();
        st.vms.retain(|w| w.strong_count() > 0);
        st.vms.push(Arc::downgrade(vm));
    }

    /// Tells the workers there may be new work. Call without holding any
    /// VM's device lock.
    pub fn kick(&self) {
        drop(self.state());
        self.wake.notify_all();
    }

    /// Stops the workers after their current job.
    pub fn shutdown(&self) {
        self.state().shutdown = true;
        self.wake.notify_all();
        for h in self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = h.join();
        }
    }

    /// Picks the next job, waiting for one. A worker that just finished a
    /// job polls for `POLL` before sleeping: a guest waiting on one job at a
    /// time submits the next within tens of microseconds, and waking a
    /// sleeping thread costs about as much again.
    fn pick(&self, last_job: Option<Instant>) -> Option<(Arc<VmSlot>, crate::device::Ticket)> {
        const POLL: Duration = Duration::from_micros(200);
        let mut st = self.state();
        loop {
            if st.shutdown {
                return None;
            }
            st.vms.retain(|w| w.strong_count() > 0);
            let n = st.vms.len();
            let mut busy = false;
            for i in 0..n {
                let idx = (st.cursor + i) % n;
                let Some(vm) = st.vms[idx].upgrade() else {
                    continue;
                };
                // A VM whose state a panic left broken is skipped, never
                // unwrapped: it must not cost the others anything. Nor is
                // a VM's lock waited for under the scheduler's: a VM busy
                // in its own request handling is tried again next round.
                let ticket = match vm.device.try_lock() {
                    Ok(mut d) => catch_unwind(AssertUnwindSafe(|| d.next_job())).unwrap_or(None),
                    Err(TryLockError::WouldBlock) => {
                        busy = true;
                        None
                    }
                    Err(TryLockError::Poisoned(_)) => None,
                };
                if let Some(t) = ticket {
                    st.cursor = idx + 1;
                    return Some((vm, t));
                }
            }
            if busy || last_job.is_some_and(|t| t.elapsed() < POLL) {
                drop(st);
                std::thread::yield_now();
                st = self.state();
                continue;
            }
            st = self.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn worker(self: Arc<Self>) {
        let mut last_job = None;
        while let Some((vm, ticket)) = self.pick(last_job) {
            let start = Instant::now();
            // A panic in the NPU fails this job (its context is lost with a
            // device error); the worker lives on.
            let result = catch_unwind(AssertUnwindSafe(|| {
                let mem = vm.mem.memory();
                let resolved: Result<Vec<_>, _> = ticket
                    .backings
                    .iter()
                    .map(|b| b.resolve(&mem, &vm.npu_stats))
                    .collect();
                match resolved {
                    Ok(bos) => self
                        .driver
                        .execute(&ticket.prepared, &bos, start + self.timeout),
                    Err(e) => Err(DriverError::OutOfRange(e.to_string())),
                }
            }))
            .unwrap_or_else(|_| Err(DriverError::Internal("the NPU panicked".into())));
            if let Err(e) = &result {
                tracing::debug!(ctx = ticket.ctx_id, "job failed: {e}");
            }
            // Completing runs device-model and ring code for this VM; a
            // panic there poisons only this VM's lock, never the worker.
            let delivered = catch_unwind(AssertUnwindSafe(|| {
                if let Ok(mut d) = vm.device.lock() {
                    d.finish(ticket.ctx_id, result, start.elapsed());
                }
                vm.completer.get().is_some_and(|c| c())
            }))
            .unwrap_or(true);
            if !delivered {
                let _ = vm.completion.write(1);
            }
            last_job = Some(Instant::now());
            // A finished job may unblock jobs waiting on its fence.
            self.kick();
        }
    }
}
