//! The scheduler thread: backend completions in, ends handed to the VMs'
//! device models, the job timeout, and dispatch and preemption by the
//! policy.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, TryLockError, Weak};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::policy::{Candidate, Policy, Preempt, Running, VmKey};
use super::{lock, Scheduler, VmSlot};
use crate::backend::{Backend, Completion, JobId, Outcome};
use crate::device::JobEnd;

/// How long a VM whose lock was busy waits for the next try, and how often
/// the scheduler looks again while jobs wait for the NPU: an idle vCPU
/// takes tens of microseconds to wake, so under contention the scheduler
/// keeps its CPU awake rather than sleep until the computed preemption
/// time (measured in the sharing benchmark: shares and tail latency of a
/// small-job VM beside a large-job one both suffer without it).
const RETRY: Duration = Duration::from_micros(50);

/// How often a VM whose lock stayed busy for many cycles is tried.
const BUSY_BACKOFF: Duration = Duration::from_millis(1);

/// A preemption due sooner than this is polled for; one due later is slept
/// for until this long before.
const PREEMPT_NEAR: Duration = Duration::from_millis(1);

/// How long the scheduler polls for the next event before it sleeps.
const POLL: Duration = Duration::from_micros(200);

/// A job the backend holds.
struct Run<B: Backend> {
    vm: Weak<VmSlot<B>>,
    job: Candidate,
    /// Device time of its finished slices.
    device_ns: u64,
    /// When its current slice began, while it has one.
    slice: Option<Instant>,
    preempting: bool,
    /// Preempted because its estimated device time reached the timeout; the
    /// time the backend measures for the slice decides.
    checking: bool,
    /// Aborted for running past the job timeout.
    timed_out: bool,
}

/// A job the backend gave back, for its VM's device model.
struct Finish<B: Backend> {
    vm: Weak<VmSlot<B>>,
    ctx: u32,
    id: JobId,
    end: JobEnd,
    device_ns: u64,
}

impl<B: Backend> Run<B> {
    fn used(&self, now: Instant) -> Duration {
        let cur = self
            .slice
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        Duration::from_nanos(self.device_ns) + cur
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

const EV_BACKEND: u64 = 0;
const EV_KICK: u64 = 1;
const EV_TIMER: u64 = 2;

pub(super) struct Loop<B: Backend> {
    s: Arc<Scheduler<B>>,
    epoll: Epoll,
    timer: TimerFd,
    policy: Policy,
    vms: BTreeMap<VmKey, Weak<VmSlot<B>>>,
    runs: HashMap<JobId, Run<B>>,
    on_engine: usize,
    engines: usize,
    preemptible: bool,
    next_id: JobId,
    done: Vec<Completion>,
    /// Ends not yet delivered: their VM's lock was busy.
    finishing: Vec<Finish<B>>,
    /// Consecutive cycles that found a VM's lock busy.
    busy_streak: u32,
}

impl<B: Backend> Loop<B> {
    pub(super) fn new(s: Arc<Scheduler<B>>) -> std::io::Result<Loop<B>> {
        let epoll = Epoll::new()?;
        let timer = TimerFd::new()?;
        for (fd, ev) in [
            (s.backend.completion_fd(), EV_BACKEND),
            (s.kick.as_raw_fd(), EV_KICK),
            (timer.as_raw_fd(), EV_TIMER),
        ] {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, ev))?;
        }
        let caps = s.backend.caps();
        Ok(Loop {
            policy: Policy::new(nanos(s.quantum)),
            s,
            epoll,
            timer,
            vms: BTreeMap::new(),
            runs: HashMap::new(),
            on_engine: 0,
            engines: caps.engines.max(1),
            preemptible: caps.preemptible,
            next_id: 1,
            done: Vec::new(),
            finishing: Vec::new(),
            busy_streak: 0,
        })
    }

    pub(super) fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 4];
        loop {
            {
                let mut ib = lock(&self.s.inbox);
                if ib.shutdown {
                    return;
                }
                for (key, vm, weight) in ib.vms.drain(..) {
                    self.policy.add_vm(key, weight);
                    self.vms.insert(key, vm);
                }
            }
            let wake = self.cycle();
            let armed = match wake {
                Some(d) => self.timer.reset(d.max(Duration::from_micros(1)), None),
                None => self.timer.clear(),
            };
            if let Err(e) = armed {
                tracing::warn!("scheduler timer: {e}");
            }
            let n = self.wait(&mut events);
            for ev in events.iter().take(n) {
                match ev.data() {
                    EV_KICK => {
                        let _ = self.s.kick.read();
                    }
                    EV_TIMER => {
                        let _ = self.timer.wait();
                    }
                    _ => {}
                }
            }
        }
    }

    /// Waits for an event. For [`POLL`] after the last one it polls rather
    /// than sleeps: the next job of a guest waiting on one job at a time, or
    /// the end of a short job, comes within tens of microseconds, and a
    /// thread sleeping on an idle vCPU takes about as long to wake.
    /// Kept out of line so that instruction counts (the accel benchmark's
    /// callgrind part) can leave out polling, whose cost is time, not work.
    #[inline(never)]
    fn wait(&mut self, events: &mut [EpollEvent]) -> usize {
        let since = Instant::now();
        loop {
            let polling = since.elapsed() < POLL;
            match self.epoll.wait(if polling { 0 } else { -1 }, events) {
                Ok(0) if polling => std::thread::yield_now(),
                Ok(n) => return n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return 0,
                Err(e) => {
                    tracing::error!("scheduler epoll: {e}");
                    std::thread::sleep(Duration::from_millis(1));
                    return 0;
                }
            }
        }
    }

    /// Handles what happened and starts what can start; returns when to
    /// look again if nothing wakes the thread before.
    fn cycle(&mut self) -> Option<Duration> {
        self.completions();
        // Before the ends reach the guests: what they see next is current.
        self.utilisation();
        let undelivered = self.deliver();
        self.watchdog();
        let (busy, preempt_in) = self.dispatch();
        // Again, for the jobs just started.
        let mut wake = self.watchdog();
        // A VM that keeps its lock busy is tried less often, so that it
        // cannot keep this thread spinning.
        let stuck = busy || undelivered;
        self.busy_streak = if stuck {
            self.busy_streak.saturating_add(1)
        } else {
            0
        };
        let retry = stuck.then_some(if self.busy_streak > 16 {
            BUSY_BACKOFF
        } else {
            RETRY
        });
        for w in [retry, preempt_in].into_iter().flatten() {
            wake = Some(wake.map_or(w, |x| x.min(w)));
        }
        self.utilisation();
        wake
    }

    /// Engines in use, for the metrics; their busy time is the sum of the
    /// slices' device time (see `completions`).
    fn utilisation(&self) {
        self.s.metrics.set_on_engine(self.on_engine);
    }

    fn completions(&mut self) {
        self.done.clear();
        self.s.backend.take_completions(&mut self.done);
        let done = std::mem::take(&mut self.done);
        for c in &done {
            let Some(run) = self.runs.get_mut(&c.job) else {
                continue;
            };
            let ns = nanos(c.device_time);
            // Only the end of a slice counts: an abort of a yielded job
            // reports no time and ends no slice.
            if run.slice.take().is_some() {
                self.on_engine = self.on_engine.saturating_sub(1);
                self.policy.stopped(run.job, ns);
            }
            self.s.metrics.add_busy(ns);
            run.device_ns = run.device_ns.saturating_add(ns);
            run.preempting = false;
            if let Some(vm) = run.vm.upgrade() {
                vm.metrics.add_device_time(ns);
            }
            if c.outcome == Outcome::Yielded {
                if std::mem::take(&mut run.checking)
                    && Duration::from_nanos(run.device_ns) >= self.s.timeout
                {
                    run.timed_out = true;
                    self.s.backend.abort(c.job);
                }
                continue;
            }
            let Some(run) = self.runs.remove(&c.job) else {
                continue;
            };
            let end = match &c.outcome {
                Outcome::Done { ops } => JobEnd::Done { ops: *ops },
                Outcome::Failed(why) => JobEnd::Failed(why.clone()),
                Outcome::NoMemory => JobEnd::NoMemory,
                Outcome::Aborted if run.timed_out => JobEnd::TimedOut,
                Outcome::Aborted | Outcome::Yielded => JobEnd::Aborted,
                Outcome::Lost { reason, why } => JobEnd::Lost(*reason, why.clone()),
            };
            self.finishing.push(Finish {
                vm: run.vm,
                ctx: run.job.ctx,
                id: c.job,
                end,
                device_ns: run.device_ns,
            });
        }
        self.done = done;
    }

    /// Gives ended jobs to their VMs' device models and wakes their vring
    /// threads. A VM whose lock is busy is not waited for: its ends are
    /// kept for the next cycle. True if some were kept.
    fn deliver(&mut self) -> bool {
        let mut kept = Vec::new();
        for f in std::mem::take(&mut self.finishing) {
            let Some(vm) = f.vm.upgrade() else {
                continue;
            };
            let lock = vm.device.try_lock();
            match lock {
                Ok(mut d) => {
                    // A panic in the device model poisons only this VM's
                    // lock.
                    let time = Duration::from_nanos(f.device_ns);
                    let (ctx, id, end) = (f.ctx, f.id, f.end);
                    let r = catch_unwind(AssertUnwindSafe(|| d.finish(ctx, id, end, time)));
                    drop(d);
                    vm.idle.notify_all();
                    if r.is_err() {
                        tracing::error!("panic finishing a job; the VM is no longer served");
                    }
                    let _ = vm.completion.write(1);
                }
                Err(TryLockError::WouldBlock) => kept.push(f),
                Err(TryLockError::Poisoned(_)) => {}
            }
        }
        self.finishing = kept;
        !self.finishing.is_empty()
    }

    /// Aborts jobs past the timeout; returns when the next one would be.
    fn watchdog(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Duration> = None;
        for (&id, run) in self.runs.iter_mut() {
            if run.timed_out || run.checking {
                continue;
            }
            let used = run.used(now);
            if used >= self.s.timeout {
                if run.slice.is_some() && self.preemptible {
                    // The estimate counts wall time; the backend measures
                    // the slice when it stops (within one tile).
                    run.checking = true;
                    if !run.preempting {
                        run.preempting = true;
                        self.s.backend.preempt(id);
                    }
                } else {
                    tracing::debug!(ctx = run.job.ctx, "job ran past the job timeout");
                    run.timed_out = true;
                    self.s.backend.abort(id);
                }
            } else if run.slice.is_some() {
                let left = self.s.timeout - used;
                next = Some(next.map_or(left, |n| n.min(left)));
            }
        }
        next
    }

    /// Starts and preempts jobs by the policy. Returns whether a VM's lock
    /// was busy (try again soon), and when a running slice would next be
    /// due for preemption.
    fn dispatch(&mut self) -> (bool, Option<Duration>) {
        let mut retry = false;
        // Work that could run: yielded jobs, and the next job of every
        // context with one ready.
        let mut cands: Vec<(Candidate, Option<JobId>)> = self
            .runs
            .iter()
            .filter(|(_, r)| r.slice.is_none() && !r.timed_out)
            .map(|(&id, r)| (r.job, Some(id)))
            .collect();
        let mut gone = Vec::new();
        for (&key, w) in &self.vms {
            let Some(vm) = w.upgrade() else {
                gone.push(key);
                continue;
            };
            let ready = match vm.device.try_lock() {
                Ok(d) => catch_unwind(AssertUnwindSafe(|| d.runnable())).unwrap_or_default(),
                Err(TryLockError::WouldBlock) => {
                    retry = true;
                    continue;
                }
                Err(TryLockError::Poisoned(_)) => continue,
            };
            cands.extend(ready.into_iter().map(|(ctx, priority)| {
                let c = Candidate {
                    vm: key,
                    ctx,
                    priority,
                };
                (c, None)
            }));
        }
        for key in gone {
            self.vms.remove(&key);
            self.policy.remove_vm(key);
        }
        while self.on_engine < self.engines && !cands.is_empty() {
            let list: Vec<Candidate> = cands.iter().map(|c| c.0).collect();
            let Some(i) = self.policy.pick(&list) else {
                break;
            };
            let (c, id) = cands.swap_remove(i);
            let started = match id {
                Some(id) => {
                    self.s.backend.resume(id);
                    if let Some(r) = self.runs.get_mut(&id) {
                        r.slice = Some(Instant::now());
                    }
                    true
                }
                None => self.start(c),
            };
            if started {
                self.on_engine += 1;
            } else {
                // Counted in flight by `pick`; nothing ran.
                self.policy.stopped(c, 0);
                retry = true;
            }
        }
        let mut due = None;
        if self.preemptible && !cands.is_empty() && self.on_engine >= self.engines {
            // Far from due: sleep until shortly before; close: poll.
            due = self
                .preempt(&cands)
                .map(|d| match d.checked_sub(PREEMPT_NEAR) {
                    Some(early) if early > PREEMPT_NEAR => early,
                    _ => d.min(RETRY),
                });
        }
        (retry, due)
    }

    /// Takes the next job of a context from its VM and submits it.
    fn start(&mut self, c: Candidate) -> bool {
        let Some(vm) = self.vms.get(&c.vm).and_then(Weak::upgrade) else {
            return false;
        };
        let id = self.next_id;
        let Ok(mut d) = vm.device.try_lock() else {
            return false;
        };
        let job = catch_unwind(AssertUnwindSafe(|| d.start(c.ctx, id))).unwrap_or(None);
        let Some(job) = job else {
            return false;
        };
        // Submitted under the VM's lock: an abort the device model sends
        // for this job (a destroy, a loss, a reset) comes after it.
        self.s.backend.submit(id, job);
        drop(d);
        self.next_id += 1;
        self.runs.insert(
            id,
            Run {
                vm: Arc::downgrade(&vm),
                job: c,
                device_ns: 0,
                slice: Some(Instant::now()),
                preempting: false,
                checking: false,
                timed_out: false,
            },
        );
        true
    }

    /// Preempts a slice if the policy says so; otherwise returns when to
    /// ask again.
    fn preempt(&mut self, cands: &[(Candidate, Option<JobId>)]) -> Option<Duration> {
        let now = Instant::now();
        let running: Vec<(JobId, Running)> = self
            .runs
            .iter()
            .filter(|(_, r)| !r.preempting && !r.timed_out)
            .filter_map(|(&id, r)| {
                let s = r.slice?;
                Some((
                    id,
                    Running {
                        job: r.job,
                        elapsed_ns: nanos(now.saturating_duration_since(s)),
                    },
                ))
            })
            .collect();
        let list: Vec<Running> = running.iter().map(|r| r.1).collect();
        let waiting: Vec<Candidate> = cands.iter().map(|c| c.0).collect();
        match self.policy.preempt(&list, &waiting) {
            Preempt::Now(i) => {
                if let Some(&(id, _)) = running.get(i) {
                    if let Some(r) = self.runs.get_mut(&id) {
                        r.preempting = true;
                    }
                    self.s.backend.preempt(id);
                }
                // The slice's end wakes the scheduler.
                None
            }
            Preempt::After(ns) => Some(Duration::from_nanos(ns)),
            Preempt::Never => None,
        }
    }
}
