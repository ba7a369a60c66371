//! One guest context: its buffer objects, its fence timeline, its job queue
//! and its backend context. Handles are per context; nothing here is
//! visible to another.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::backend::{Backend, JobId};
use crate::memory::Backing;

/// Guest memory a buffer is attached to, as the device and the backend
/// hold it.
pub struct Attached<B: Backend> {
    pub backing: Backing,
    pub buffer: B::Buffer,
}

/// A buffer object. Its bytes are the guest pages of its backing.
pub struct Bo<B: Backend> {
    pub size: u64,
    pub flags: u32,
    pub attached: Option<Attached<B>>,
    /// Queued or running jobs that list this buffer.
    pub busy: u32,
}

/// A context's fence timeline: seqnos are assigned by the guest and only
/// grow; completing N completes everything up to N.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timeline {
    pub last_submitted: u64,
    pub completed: u64,
}

/// A validated job waiting for its turn, or running.
pub struct Job<B: Backend> {
    /// The glue's handle on the parked descriptor chain.
    pub token: u64,
    pub out_fence: u64,
    /// The backend's job, until it is submitted.
    pub prepared: Option<B::Job>,
    /// Handles of the listed buffers, in the job's index order.
    pub bos: Vec<u32>,
    /// Their `VIRTIO_ACCEL_ACCESS_*` bits, and the command stream as
    /// copied at `SUBMIT`: what a saved device state needs to prepare the
    /// job again elsewhere.
    pub access: Vec<u32>,
    pub cmd: Vec<u8>,
    /// `(context, seqno)` fences still to signal before the job may run.
    pub in_fences: Vec<(u32, u64)>,
    /// Set once the job can never run: the status it will be answered with
    /// when every earlier job of its context has been answered.
    pub doomed: Option<u32>,
    /// The scheduler's name for it once submitted.
    pub id: Option<JobId>,
    pub queued_at: Instant,
}

pub struct Context<B: Backend> {
    pub priority: u32,
    pub bos: BTreeMap<u32, Bo<B>>,
    pub next_bo: u32,
    pub timeline: Timeline,
    pub queue: VecDeque<Job<B>>,
    /// The job on the NPU now, if any.
    pub running: Option<Job<B>>,
    /// Why the context was lost, once it was.
    pub lost: Option<u32>,
    /// The backend's side of the context.
    pub hw: B::Context,
    /// Dropped by a reset while its job ran: the job's end is not answered.
    pub silent: bool,
}

impl<B: Backend> Bo<B> {
    /// Backing entries the device keeps for this buffer.
    pub fn entries(&self) -> u64 {
        self.attached
            .as_ref()
            .map_or(0, |a| a.backing.entries() as u64)
    }
}

impl<B: Backend> Context<B> {
    pub fn new(priority: u32, hw: B::Context) -> Context<B> {
        Context {
            priority,
            bos: BTreeMap::new(),
            next_bo: 1,
            timeline: Timeline::default(),
            queue: VecDeque::new(),
            running: None,
            lost: None,
            hw,
            silent: false,
        }
    }

    /// A fresh nonzero handle not in use in this context; `None` only when
    /// every handle is taken (the BO limit keeps that from happening).
    pub fn alloc_handle(&mut self) -> Option<u32> {
        for _ in 0..=self.bos.len() {
            let h = self.next_bo;
            self.next_bo = self.next_bo.wrapping_add(1).max(1);
            if !self.bos.contains_key(&h) {
                return Some(h);
            }
        }
        None
    }

    /// Jobs queued or running.
    pub fn jobs(&self) -> usize {
        self.queue.len() + usize::from(self.running.is_some())
    }

    /// Dooms queued job `i` (see [`Job::doomed`]) unless it already is;
    /// its buffers are idle and its backend job dropped from now on.
    pub fn doom(&mut self, i: usize, status: u32) {
        let Some(job) = self.queue.get_mut(i) else {
            return;
        };
        if job.doomed.is_some() {
            return;
        }
        job.doomed = Some(status);
        job.prepared = None;
        let listed = std::mem::take(&mut job.bos);
        release(&mut self.bos, &listed);
    }

    /// The out-fence of the last job ahead of queue position `i` that can
    /// still signal (the running job, or a queued one not doomed).
    pub fn live_fence_before(&self, i: usize) -> Option<u64> {
        self.queue
            .iter()
            .take(i)
            .rev()
            .find(|j| j.doomed.is_none())
            .or(self.running.as_ref())
            .map(|j| j.out_fence)
    }

    /// Releases the buffers a job held.
    pub fn unbusy(&mut self, job: &Job<B>) {
        release(&mut self.bos, &job.bos);
    }
}

/// Marks the buffers in `listed` no longer held by one job.
fn release<B: Backend>(bos: &mut BTreeMap<u32, Bo<B>>, listed: &[u32]) {
    for h in listed {
        if let Some(bo) = bos.get_mut(h) {
            bo.busy = bo.busy.saturating_sub(1);
        }
    }
}
