//! Jobs on a host accel node: one thread submits them with the driver's
//! own ioctls, one thread learns their ends by polling each job's
//! out-fence as a sync_file. No thread per job; the scheduler thread never
//! waits on the host driver (a driver that throttles its submissions
//! blocks the submitter only).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use virtio_accel_guest::accel::{sync_file_status, Accel, Bo, JobBo, Mapping};
use virtio_accel_guest::job::JobStatus;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::{Completion, JobId, LostReason, Outcome};

/// A job ready for the host driver: its context's node and command
/// buffers, its buffers (the context's GEM handles with their access) and
/// its command stream.
pub struct AccelJob {
    pub(super) node: Arc<Accel>,
    pub(super) slots: Slots,
    pub(super) bos: Vec<JobBo>,
    pub(super) cmd: Vec<u8>,
}

/// A context's command buffers and out-syncobjs kept between jobs: a job
/// then costs the host driver a copy, its submit and a fence export, not
/// a buffer and a syncobj made, mapped and destroyed. The kernel frees
/// them with the context's file.
pub type Slots = Arc<Mutex<Vec<Slot>>>;

/// A command buffer, mapped, and a syncobj for a job's out-fence.
pub struct Slot {
    cmd: Bo,
    map: Mapping,
    syncobj: u32,
}

/// The smallest command buffer made (streams are rounded up to this, then
/// to a power of two, so that a slot serves the context's next jobs).
const MIN_CMD: u64 = 64 << 10;

/// A job the host driver holds.
struct Running {
    node: Arc<Accel>,
    slots: Slots,
    slot: Slot,
    sync: OwnedFd,
    start: Instant,
}

struct Shared {
    done: Mutex<Vec<Completion>>,
    done_fd: EventFd,
    running: Mutex<HashMap<JobId, Running>>,
    jobs: Mutex<Jobs>,
    epoll: Epoll,
    stop: EventFd,
}

/// The jobs given and not reported yet, and which of them were aborted:
/// the host driver cannot stop one job, so an aborted job is reported when
/// its fence says it wrote its last byte.
#[derive(Default)]
struct Jobs {
    live: HashSet<JobId>,
    aborted: HashSet<JobId>,
}

enum Msg {
    Submit(JobId, AccelJob),
    Stop,
}

/// Epoll data of the stop eventfd; job ids are the caller's and never this.
const STOP: u64 = u64::MAX;

/// A wait for a fence with no end (in ms, far from overflowing the
/// nanosecond deadline it becomes).
const FOREVER_MS: i64 = i64::MAX / 4_000_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) struct Engine {
    shared: Arc<Shared>,
    tx: Mutex<Sender<Msg>>,
}

impl Engine {
    pub(super) fn new() -> io::Result<Engine> {
        let shared = Arc::new(Shared {
            done: Mutex::new(Vec::new()),
            done_fd: EventFd::new(EFD_NONBLOCK)?,
            running: Mutex::new(HashMap::new()),
            jobs: Mutex::default(),
            epoll: Epoll::new()?,
            stop: EventFd::new(EFD_NONBLOCK)?,
        });
        shared.epoll.ctl(
            ControlOperation::Add,
            shared.stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        let (tx, rx) = mpsc::channel();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("accel-submit".into())
            .spawn(move || submitter(&s, &rx))?;
        let s = shared.clone();
        std::thread::Builder::new()
            .name("accel-fences".into())
            .spawn(move || waiter(&s))?;
        Ok(Engine {
            shared,
            tx: Mutex::new(tx),
        })
    }

    pub(super) fn submit(&self, id: JobId, job: AccelJob) {
        lock(&self.shared.jobs).live.insert(id);
        if lock(&self.tx).send(Msg::Submit(id, job)).is_err() {
            self.shared
                .complete(id, Outcome::Failed("the backend stopped".into()), None);
        }
    }

    pub(super) fn abort(&self, id: JobId) {
        let mut j = lock(&self.shared.jobs);
        if j.live.contains(&id) {
            j.aborted.insert(id);
        }
    }

    pub(super) fn fd(&self) -> RawFd {
        self.shared.done_fd.as_raw_fd()
    }

    pub(super) fn take(&self, out: &mut Vec<Completion>) {
        let _ = self.shared.done_fd.read();
        out.append(&mut lock(&self.shared.done));
    }

    /// Ends both threads once they are free: neither is joined, since the
    /// submitter may wait in a host driver that throttles it.
    pub(super) fn shutdown(&self) {
        let _ = lock(&self.tx).send(Msg::Stop);
        let _ = self.shared.stop.write(1);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    fn complete(&self, job: JobId, outcome: Outcome, start: Option<Instant>) {
        let mut j = lock(&self.jobs);
        j.live.remove(&job);
        let outcome = if j.aborted.remove(&job) {
            Outcome::Aborted
        } else {
            outcome
        };
        drop(j);
        lock(&self.done).push(Completion {
            job,
            outcome,
            // The host driver's own time is not known: the time the job
            // spent in it stands for it.
            device_time: start.map_or(Duration::ZERO, |s| s.elapsed()),
        });
        let _ = self.done_fd.write(1);
    }
}

/// Hands jobs to the host driver in the order they came.
fn submitter(s: &Shared, rx: &Receiver<Msg>) {
    while let Ok(Msg::Submit(id, job)) = rx.recv() {
        if lock(&s.jobs).aborted.contains(&id) {
            s.complete(id, Outcome::Aborted, None);
            continue;
        }
        let start = Instant::now();
        match start_job(&job) {
            Ok((slot, sync)) => {
                let fd = sync.as_raw_fd();
                lock(&s.running).insert(
                    id,
                    Running {
                        node: job.node,
                        slots: job.slots,
                        slot,
                        sync,
                        start,
                    },
                );
                // Level-triggered: a fence that signalled already is
                // reported at once.
                if let Err(e) =
                    s.epoll
                        .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, id))
                {
                    if let Some(r) = lock(&s.running).remove(&id) {
                        tracing::error!("job {id}: polling its fence: {e}");
                        // Its end cannot be learned: wait for it here, so
                        // nothing writes after the report.
                        let _ = r.node.syncobj_wait(&[r.slot.syncobj], FOREVER_MS);
                        finish(s, id, r);
                    }
                }
            }
            Err(e) => {
                tracing::debug!("job {id}: the host driver refused it: {e}");
                s.complete(id, refused(&e), None);
            }
        }
    }
}

/// A slot of the context whose buffer holds `len` bytes: a kept one, or
/// a new one.
fn slot(job: &AccelJob, len: u64) -> io::Result<Slot> {
    let kept = {
        let mut slots = lock(&job.slots);
        let i = slots.iter().position(|s| s.map.len() as u64 >= len);
        i.map(|i| slots.swap_remove(i))
    };
    if let Some(s) = kept {
        return Ok(s);
    }
    let n = &job.node;
    let size = len.max(MIN_CMD).next_power_of_two();
    let cmd = n.bo_create(size)?;
    let made = n.map(cmd).and_then(|map| Ok((map, n.syncobj_create()?)));
    match made {
        Ok((map, syncobj)) => Ok(Slot { cmd, map, syncobj }),
        Err(e) => {
            let _ = n.bo_close(cmd);
            Err(e)
        }
    }
}

/// Writes the command stream into a command buffer of the context and
/// submits the job; its out-fence comes back as a sync_file. A job the
/// driver took is never given up before it ended.
fn start_job(job: &AccelJob) -> io::Result<(Slot, OwnedFd)> {
    let n = &job.node;
    let len =
        u32::try_from(job.cmd.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let mut slot = slot(job, u64::from(len))?;
    slot.map.write(0, &job.cmd);
    if let Err(e) = n.submit(&job.bos, slot.cmd, 0, len, &[], slot.syncobj) {
        lock(&job.slots).push(slot);
        return Err(e);
    }
    // Submitted: from here the job runs, and its buffers are the NPU's
    // until its fence signals.
    match n.sync_file(slot.syncobj) {
        Ok(sync) => Ok((slot, sync)),
        Err(e) => {
            tracing::error!("a job's fence cannot be polled ({e}); waiting for it here");
            let _ = n.syncobj_wait(&[slot.syncobj], FOREVER_MS);
            lock(&job.slots).push(slot);
            Err(io::Error::other(format!(
                "its fence could not be polled: {e}"
            )))
        }
    }
}

/// What a refused submission means for the job.
fn refused(e: &io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(libc::ENOMEM) => Outcome::NoMemory,
        // The host driver takes no more jobs on a context it lost.
        Some(libc::EIO) | Some(libc::ENODEV) => Outcome::Lost {
            reason: LostReason::DeviceError,
            why: format!("the host driver refused the job: {e}"),
        },
        _ => Outcome::Failed(format!("the host driver refused the job: {e}")),
    }
}

/// What a signalled fence's status means for the job.
pub(super) fn outcome(status: JobStatus) -> Outcome {
    match status {
        JobStatus::Ok => Outcome::Done { ops: 0 },
        JobStatus::NoMemory => Outcome::NoMemory,
        JobStatus::ContextLost => Outcome::Lost {
            reason: LostReason::Hang,
            why: "the host driver lost the job's context".into(),
        },
        JobStatus::DeviceLost => Outcome::Lost {
            reason: LostReason::DeviceError,
            why: "the host device was lost".into(),
        },
        s => Outcome::Failed(format!("the host driver ended the job: {s}")),
    }
}

/// Reports a job whose fence signalled and releases what it held.
fn finish(s: &Shared, id: JobId, r: Running) {
    let result = match sync_file_status(r.sync.as_fd()) {
        Ok(Some(st)) => outcome(st),
        Ok(None) => {
            // Not ended after all: it is waited for, not reported.
            let _ = r.node.syncobj_wait(&[r.slot.syncobj], FOREVER_MS);
            match r.node.job_status(r.slot.syncobj) {
                Ok(st) => outcome(st),
                Err(e) => Outcome::Failed(format!("the job's fence: {e}")),
            }
        }
        Err(e) => {
            // Its status is unknown, its end is not: the fence was ready.
            Outcome::Lost {
                reason: LostReason::DeviceError,
                why: format!("reading the job's fence: {e}"),
            }
        }
    };
    // The job has ended: its command buffer and syncobj serve the next.
    lock(&r.slots).push(r.slot);
    s.complete(id, result, Some(r.start));
}

/// Learns the ends of the jobs the host driver holds.
fn waiter(s: &Shared) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match s.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("polling job fences: {e}; no job end is learned any more");
                return;
            }
        };
        for ev in &events[..n] {
            let id = ev.data();
            if id == STOP {
                return;
            }
            let Some(r) = lock(&s.running).remove(&id) else {
                continue;
            };
            let _ = s.epoll.ctl(
                ControlOperation::Delete,
                r.sync.as_raw_fd(),
                EpollEvent::default(),
            );
            finish(s, id, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_statuses_become_outcomes() {
        assert_eq!(outcome(JobStatus::Ok), Outcome::Done { ops: 0 });
        assert_eq!(outcome(JobStatus::NoMemory), Outcome::NoMemory);
        assert!(matches!(
            outcome(JobStatus::ContextLost),
            Outcome::Lost {
                reason: LostReason::Hang,
                ..
            }
        ));
        assert!(matches!(
            outcome(JobStatus::DeviceLost),
            Outcome::Lost {
                reason: LostReason::DeviceError,
                ..
            }
        ));
        for s in [
            JobStatus::Failed,
            JobStatus::Canceled,
            JobStatus::Unknown(9),
        ] {
            assert!(matches!(outcome(s), Outcome::Failed(_)), "{s}");
        }
        assert_eq!(
            refused(&io::Error::from_raw_os_error(libc::ENOMEM)),
            Outcome::NoMemory
        );
        assert!(matches!(
            refused(&io::Error::from_raw_os_error(libc::EIO)),
            Outcome::Lost { .. }
        ));
        assert!(matches!(
            refused(&io::Error::from_raw_os_error(libc::EINVAL)),
            Outcome::Failed(_)
        ));
    }
}
