//! The software NPU's engines: worker threads that run jobs a slice at a
//! time. A slice runs until the job ends or is preempted or aborted, which
//! it notices within one tile of work. A job between slices, or hung, holds
//! no thread.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::exec::Progress;
use super::{ExecError, SimJob};
use crate::backend::{Completion, JobId, LostReason, Outcome};

enum State {
    /// Waiting for an engine.
    Queued,
    /// On an engine now.
    Running,
    /// Stopped at a preemption point.
    Paused,
    /// A hung job: it never ends by itself. `since` is when its current
    /// slice began, if it is in one.
    Hung { since: Option<Instant> },
}

struct Slot {
    /// The job, while no engine holds it.
    job: Option<SimJob>,
    state: State,
    preempt: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
}

#[derive(Default)]
struct Table {
    queue: VecDeque<JobId>,
    slots: HashMap<JobId, Slot>,
    shutdown: bool,
}

pub(super) struct Engine {
    table: Mutex<Table>,
    work: Condvar,
    done: Mutex<Vec<Completion>>,
    fd: EventFd,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Frees the working memory of jobs that ended, off the engines: giving
    /// back tens of MiB takes milliseconds the next job should not wait.
    reaper: Mutex<Option<std::sync::mpsc::Sender<SimJob>>>,
}

/// How long an engine looks for more work before it sleeps.
const POLL: Duration = Duration::from_micros(200);

/// Jobs holding less than this are freed on the engine.
const REAP_BYTES: u64 = 1 << 20;

/// The engine's state is a table of jobs, consistent at every point a
/// panic could leave it; a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Engine {
    pub(super) fn start(engines: usize) -> std::io::Result<Arc<Engine>> {
        let e = Arc::new(Engine {
            table: Mutex::new(Table::default()),
            work: Condvar::new(),
            done: Mutex::new(Vec::new()),
            fd: EventFd::new(EFD_NONBLOCK)?,
            workers: Mutex::new(Vec::new()),
            reaper: Mutex::new(None),
        });
        let (tx, rx) = std::sync::mpsc::channel::<SimJob>();
        let mut handles = Vec::with_capacity(engines + 1);
        handles.push(
            std::thread::Builder::new()
                .name("snpu-reaper".into())
                .spawn(move || rx.iter().for_each(drop))?,
        );
        *lock(&e.reaper) = Some(tx);
        for i in 0..engines {
            let e2 = e.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("snpu-engine-{i}"))
                    .spawn(move || e2.worker())?,
            );
        }
        *lock(&e.workers) = handles;
        Ok(e)
    }

    pub(super) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(super) fn complete(&self, job: JobId, outcome: Outcome, device_time: Duration) {
        lock(&self.done).push(Completion {
            job,
            outcome,
            device_time,
        });
        let _ = self.fd.write(1);
    }

    pub(super) fn take(&self, out: &mut Vec<Completion>) {
        let _ = self.fd.read();
        out.append(&mut lock(&self.done));
    }

    /// Adds a job; `hung` ones never run.
    pub(super) fn submit(&self, id: JobId, job: SimJob, hung: bool) {
        let mut t = lock(&self.table);
        let state = if hung {
            State::Hung {
                since: Some(Instant::now()),
            }
        } else {
            t.queue.push_back(id);
            State::Queued
        };
        t.slots.insert(
            id,
            Slot {
                job: Some(job),
                state,
                preempt: Arc::new(AtomicBool::new(false)),
                abort: Arc::new(AtomicBool::new(false)),
            },
        );
        drop(t);
        self.work.notify_one();
    }

    pub(super) fn resume(&self, id: JobId) {
        let mut t = lock(&self.table);
        let Some(slot) = t.slots.get_mut(&id) else {
            return;
        };
        match slot.state {
            State::Paused => {
                slot.state = State::Queued;
                t.queue.push_back(id);
                drop(t);
                self.work.notify_one();
            }
            State::Hung { since: None } => {
                slot.state = State::Hung {
                    since: Some(Instant::now()),
                }
            }
            _ => {}
        }
    }

    pub(super) fn preempt(&self, id: JobId) {
        let mut t = lock(&self.table);
        let Some(slot) = t.slots.get_mut(&id) else {
            return;
        };
        let used = match slot.state {
            State::Running => {
                slot.preempt.store(true, Ordering::Relaxed);
                return;
            }
            State::Hung { since: Some(s) } => {
                slot.state = State::Hung { since: None };
                s.elapsed()
            }
            State::Queued => {
                slot.state = State::Paused;
                t.queue.retain(|&q| q != id);
                Duration::ZERO
            }
            _ => return,
        };
        drop(t);
        self.complete(id, Outcome::Yielded, used);
    }

    pub(super) fn abort(&self, id: JobId) {
        let mut t = lock(&self.table);
        let Some(slot) = t.slots.get_mut(&id) else {
            return;
        };
        if let State::Running = slot.state {
            // The engine stops within a tile and reports.
            slot.abort.store(true, Ordering::Relaxed);
            return;
        }
        let used = match slot.state {
            State::Hung { since: Some(s) } => s.elapsed(),
            _ => Duration::ZERO,
        };
        let slot = t.slots.remove(&id);
        t.queue.retain(|&q| q != id);
        drop(t);
        self.complete(id, Outcome::Aborted, used);
        if let Some(job) = slot.and_then(|s| s.job) {
            self.reap(job);
        }
    }

    /// Frees a job that ended; a large one on the reaper thread.
    fn reap(&self, job: SimJob) {
        if job.work_bytes >= REAP_BYTES {
            if let Some(tx) = lock(&self.reaper).as_ref() {
                let _ = tx.send(job);
            }
        }
    }

    pub(super) fn shutdown(&self) {
        lock(&self.table).shutdown = true;
        self.work.notify_all();
        // The reaper ends when its channel closes.
        lock(&self.reaper).take();
        for h in lock(&self.workers).drain(..) {
            let _ = h.join();
        }
    }

    /// The next queued job, taken onto this engine. An engine that just
    /// finished a job looks for the next one for [`POLL`] before it sleeps:
    /// a guest waiting on one job at a time submits the next within tens of
    /// microseconds, and waking a sleeping thread on an idle vCPU costs as
    /// much again. Kept out of line, as the scheduler's wait is, so that
    /// instruction counts can leave out polling.
    #[inline(never)]
    fn next(
        &self,
        last: Option<Instant>,
    ) -> Option<(JobId, SimJob, Arc<AtomicBool>, Arc<AtomicBool>)> {
        let mut t = lock(&self.table);
        loop {
            if t.shutdown {
                return None;
            }
            while let Some(id) = t.queue.pop_front() {
                let Some(slot) = t.slots.get_mut(&id) else {
                    continue;
                };
                let Some(job) = slot.job.take() else {
                    continue;
                };
                slot.state = State::Running;
                return Some((id, job, slot.preempt.clone(), slot.abort.clone()));
            }
            if last.is_some_and(|l| l.elapsed() < POLL) {
                drop(t);
                std::thread::yield_now();
                t = lock(&self.table);
                continue;
            }
            t = self.work.wait(t).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn worker(self: Arc<Self>) {
        let mut last = None;
        while let Some((id, mut job, preempt, abort)) = self.next(last) {
            // Device time is the engine thread's CPU time (time it was
            // descheduled is not the job's), plus injected latency.
            let start = thread_cpu();
            let slept = job.latency.unwrap_or_default();
            // A panic in a kernel loses the job's context; the engine
            // lives on.
            let result = catch_unwind(AssertUnwindSafe(|| {
                slice(&mut job, &mut || {
                    !preempt.load(Ordering::Relaxed) && !abort.load(Ordering::Relaxed)
                })
            }));
            let used = thread_cpu().saturating_sub(start) + slept;
            job.ctx.add_time(used);
            let mut t = lock(&self.table);
            let outcome = match result {
                Ok(Ok(Progress::Paused)) if !abort.load(Ordering::Relaxed) => {
                    if let Some(slot) = t.slots.get_mut(&id) {
                        preempt.store(false, Ordering::Relaxed);
                        slot.state = State::Paused;
                        slot.job = Some(job);
                    }
                    // Reported before the lock is let go: an abort of the
                    // paused job is reported after this slice's time.
                    self.complete(id, Outcome::Yielded, used);
                    drop(t);
                    last = Some(Instant::now());
                    continue;
                }
                Ok(Ok(Progress::Paused)) => Outcome::Aborted,
                Ok(Ok(Progress::Done { ops })) => {
                    job.ctx.count_done(ops);
                    Outcome::Done { ops }
                }
                Ok(Err(ExecError::NoMemory)) => {
                    job.ctx.count_failed();
                    Outcome::NoMemory
                }
                Ok(Err(e)) => {
                    job.ctx.count_failed();
                    Outcome::Failed(e.to_string())
                }
                Err(_) => Outcome::Lost {
                    reason: LostReason::DeviceError,
                    why: "the NPU panicked".into(),
                },
            };
            t.slots.remove(&id);
            drop(t);
            self.complete(id, outcome, used);
            self.reap(job);
            last = Some(Instant::now());
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| {
            Duration::new(
                t.tv_sec().max(0) as u64,
                t.tv_nsec().clamp(0, 999_999_999) as u32,
            )
        })
        .unwrap_or_default()
}

/// Runs one slice of a job on the buffers' current guest memory.
pub(super) fn slice(job: &mut SimJob, go: &mut dyn FnMut() -> bool) -> Result<Progress, ExecError> {
    if job.panic {
        panic!("injected NPU fault");
    }
    if let Some(d) = job.latency.take() {
        std::thread::sleep(d);
    }
    // Each buffer is resolved against the memory table of now: the VMM may
    // have replaced it since the last slice.
    let guards: Vec<_> = job.bufs.iter().map(|b| b.mem.mem.memory()).collect();
    let bos = job
        .bufs
        .iter()
        .zip(&guards)
        .map(|(b, g)| b.backing.resolve(g, &b.mem.npu_stats))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ExecError::OutOfRange(e.to_string()))?;
    job.exec.run(&bos, go)
}

#[cfg(test)]
mod tests;
