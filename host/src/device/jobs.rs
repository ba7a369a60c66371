//! Jobs after validation: handed to the scheduler, given back when the
//! backend is done with them, cancelled, and lost with their context.
//!
//! Rules kept here:
//! - a context's jobs are answered in fence order: a job that will never
//!   run is *doomed* and answered once every earlier job of its context
//!   has been answered;
//! - a destroyed or lost context's running job is aborted, and answered
//!   (before its cancelled queued jobs) only once the backend has given
//!   it back: from then on it writes nothing.

use std::time::Duration;

use virtio_accel_protocol::*;

use super::context::{Context, Job};
use super::{Completion, Device, Status};
use crate::backend::{Backend, JobId, LostReason};

/// How the backend gave a job back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Done {
        ops: u64,
    },
    Failed(String),
    NoMemory,
    /// Aborted because its context was destroyed or lost.
    Aborted,
    /// Aborted by the scheduler at the job timeout.
    TimedOut,
    Lost(LostReason, String),
}

fn submit_resp(ctx: u32, status: Status, fence: u64, ns: u64) -> Response {
    // §6.1: fields after the header are zero on error, except `fence`.
    let ns = if status == VIRTIO_ACCEL_RESP_OK {
        ns
    } else {
        0
    };
    Response::Submit(RespSubmit {
        hdr: Hdr::new(status, ctx),
        fence: fence.into(),
        device_time_ns: ns.into(),
    })
}

/// Whether a finished job's status signals its out-fence.
fn signals(status: Status) -> bool {
    matches!(
        status,
        VIRTIO_ACCEL_RESP_OK | VIRTIO_ACCEL_RESP_ERR_JOB_FAILED | VIRTIO_ACCEL_RESP_ERR_NO_MEMORY
    )
}

impl<B: Backend> Device<B> {
    /// Answers the doomed jobs at the front of a context's queue, if no
    /// job of the context is running.
    pub(super) fn settle(&mut self, ctx_id: u32) {
        self.dirty.context(ctx_id);
        loop {
            let Some(c) = self.contexts.get_mut(&ctx_id) else {
                return;
            };
            if c.running.is_some() {
                return;
            }
            let status = match c.queue.front().and_then(|j| j.doomed) {
                Some(s) => s,
                None => return,
            };
            let Some(job) = c.queue.pop_front() else {
                return;
            };
            c.unbusy(&job);
            self.answer(ctx_id, job, status, 0);
        }
    }

    /// Answers every queued job of a context that is going away, in order.
    pub(super) fn answer_doomed(&mut self, ctx_id: u32, c: &mut Context<B>) {
        while let Some(job) = c.queue.pop_front() {
            let status = job.doomed.unwrap_or(VIRTIO_ACCEL_RESP_ERR_CANCELED);
            self.answer(ctx_id, job, status, 0);
        }
    }

    /// Queues the response of a job that is over.
    fn answer(&mut self, ctx_id: u32, job: Job<B>, status: Status, ns: u64) {
        self.dirty.context(ctx_id);
        self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
        self.metrics.job_answered(status, job.queued_at.elapsed());
        self.completions.push(Completion {
            token: job.token,
            response: submit_resp(ctx_id, status, job.out_fence, ns),
        });
    }

    /// Contexts whose next job could start now, with their priorities.
    pub fn runnable(&self) -> Vec<(u32, u32)> {
        if self.stopped {
            return Vec::new();
        }
        self.contexts
            .iter()
            .filter(|(_, c)| c.running.is_none() && c.lost.is_none())
            .filter(|(_, c)| {
                c.queue
                    .front()
                    .is_some_and(|j| j.doomed.is_none() && j.in_fences.is_empty())
            })
            .map(|(&id, c)| (id, c.priority))
            .collect()
    }

    /// Takes the next job of a context for the backend, as job `id`; the
    /// job stays accounted to its context until [`Device::finish`].
    pub fn start(&mut self, ctx_id: u32, id: JobId) -> Option<B::Job> {
        if self.stopped {
            return None;
        }
        let c = self.contexts.get_mut(&ctx_id)?;
        if c.running.is_some() || c.lost.is_some() {
            return None;
        }
        let front = c.queue.front()?;
        if front.doomed.is_some() || !front.in_fences.is_empty() {
            return None;
        }
        let mut job = c.queue.pop_front()?;
        self.dirty.context(ctx_id);
        let Some(prepared) = job.prepared.take() else {
            // Cannot happen: only doomed jobs lose theirs. Answer it.
            c.unbusy(&job);
            self.answer(ctx_id, job, VIRTIO_ACCEL_RESP_ERR_CANCELED, 0);
            return None;
        };
        job.id = Some(id);
        c.running = Some(job);
        Some(prepared)
    }

    /// Records the end of job `id`, the running job of `ctx_id`, after
    /// `time` of device time. A job the backend lost loses its context
    /// (`_HANG` or `_DEVICE_ERROR`), as does one past the job timeout; an
    /// NPU that needs a reset loses every context of the VM.
    pub fn finish(&mut self, ctx_id: u32, id: JobId, end: JobEnd, time: Duration) {
        self.dirty.context(ctx_id);
        let ns = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        let (mut status, lost) = match &end {
            JobEnd::Done { .. } => (VIRTIO_ACCEL_RESP_OK, None),
            JobEnd::Failed(_) => (VIRTIO_ACCEL_RESP_ERR_JOB_FAILED, None),
            JobEnd::NoMemory => (VIRTIO_ACCEL_RESP_ERR_NO_MEMORY, None),
            JobEnd::Aborted => (VIRTIO_ACCEL_RESP_ERR_CANCELED, None),
            JobEnd::TimedOut | JobEnd::Lost(LostReason::Hang, _) => (
                VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST,
                Some(VIRTIO_ACCEL_LOST_HANG),
            ),
            JobEnd::Lost(LostReason::DeviceError | LostReason::NeedsReset, _) => (
                VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST,
                Some(VIRTIO_ACCEL_LOST_DEVICE_ERROR),
            ),
        };
        let whole_device = matches!(end, JobEnd::Lost(LostReason::NeedsReset, _));
        let is_it = |c: &Context<B>| c.running.as_ref().is_some_and(|j| j.id == Some(id));
        if self.zombies.get(&ctx_id).is_some_and(is_it) {
            // Destroyed while running: answer the job, then the jobs that
            // were queued behind it, then let the context go.
            let Some(mut z) = self.zombies.remove(&ctx_id) else {
                return;
            };
            if z.silent {
                self.release_context(z);
                return;
            }
            if let Some(job) = z.running.take() {
                if z.lost.is_some() {
                    status = VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST;
                }
                if signals(status) {
                    z.timeline.completed = job.out_fence;
                }
                self.answer(ctx_id, job, status, ns);
            }
            self.answer_doomed(ctx_id, &mut z);
            let completed = z.timeline.completed;
            self.release_context(z);
            self.resolve_waits(Some((ctx_id, completed)));
            if whole_device {
                self.lose_all(VIRTIO_ACCEL_LOST_DEVICE_ERROR);
            }
            self.publish_counts();
            return;
        }
        let Some(c) = self.contexts.get_mut(&ctx_id).filter(|c| is_it(c)) else {
            return;
        };
        let Some(job) = c.running.take() else {
            return;
        };
        c.unbusy(&job);
        if c.lost.is_some() {
            // Lost while it ran: its fence does not signal.
            status = VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST;
        }
        if signals(status) {
            c.timeline.completed = job.out_fence;
        }
        self.answer(ctx_id, job, status, ns);
        match lost {
            Some(reason) if whole_device => self.lose_all(reason),
            Some(reason) => self.lose(ctx_id, reason),
            None => {}
        }
        self.settle(ctx_id);
        self.resolve_waits(None);
        self.publish_counts();
    }

    /// Marks a context lost: its running job is aborted, its queued jobs
    /// are answered `ERR_CONTEXT_LOST` (after the running one), waits on
    /// its unsignalled fences are cancelled, and the driver is told by
    /// event.
    pub fn lose(&mut self, ctx_id: u32, reason: u32) {
        self.dirty.context(ctx_id);
        let Some(c) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        if c.lost.is_some() {
            return;
        }
        c.lost = Some(reason);
        if let Some(id) = c.running.as_ref().and_then(|j| j.id) {
            self.backend.abort(id);
        }
        for i in 0..c.queue.len() {
            c.doom(i, VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST);
        }
        let completed = c.timeline.completed;
        self.push_lost_event(ctx_id, completed, reason);
        self.settle(ctx_id);
        self.resolve_waits(None);
    }

    /// Loses every context, as when the device finds its rings broken,
    /// then queues a context-lost event for context 0 (no context): the
    /// device as a whole needs a reset, even if the driver held nothing.
    pub fn lose_all(&mut self, reason: u32) {
        let ids: Vec<u32> = self.contexts.keys().copied().collect();
        for id in ids {
            self.lose(id, reason);
        }
        self.push_lost_event(0, 0, reason);
    }
}
