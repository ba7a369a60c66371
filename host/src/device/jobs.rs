//! Jobs after validation: which runs next within the VM, fence waits,
//! completion, cancellation and context loss.
//!
//! Rules kept here:
//! - a context's jobs are answered in fence order: a job that will never
//!   run is *doomed* and answered once every earlier job of its context
//!   has been answered;
//! - a wait that can no longer be satisfied (its context lost, or destroyed
//!   with nothing left that could signal it) dooms the waiter with
//!   `ERR_CANCELED` at once (its buffers idle from then on), and a wait on
//!   a fence that signalled before its context went away is satisfied;
//! - a destroyed context's running job is answered before its cancelled
//!   queued jobs.

use std::time::Duration;

use virtio_accel_protocol::*;

use super::context::{Context, Job};
use super::{Completion, Device, Status, Ticket};
use crate::driver::{DriverError, ExecReport};

/// Where a fence stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    Signalled,
    Pending,
    Never,
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

impl Device {
    /// State of fence `seq` of another context `ctx`. `departed` is a
    /// context being dropped right now, with its last completed seqno.
    fn fence(&self, ctx: u32, seq: u64, departed: Option<(u32, u64)>) -> Fence {
        let state = |c: &Context, live: bool| {
            if c.timeline.completed >= seq {
                Fence::Signalled
            } else if c.lost.is_some() {
                Fence::Never
            } else if live || c.running.as_ref().is_some_and(|j| j.out_fence >= seq) {
                // A live context may still submit the job that signals it;
                // a destroyed one only has its running job.
                Fence::Pending
            } else {
                Fence::Never
            }
        };
        if let Some(c) = self.contexts.get(&ctx) {
            state(c, true)
        } else if let Some(z) = self.zombies.get(&ctx) {
            state(z, false)
        } else {
            match departed {
                Some((id, completed)) if id == ctx && completed >= seq => Fence::Signalled,
                _ => Fence::Never,
            }
        }
    }

    /// Sorts a job's waits: returns those still pending and whether one can
    /// never be satisfied. A wait on the job's own context `ctx_id` can
    /// only be signalled by a job ahead of it; `own_ahead` is the out-fence
    /// of the last such job that can still signal.
    pub(super) fn wait_states(
        &self,
        ctx_id: u32,
        waits: &[(u32, u64)],
        own_ahead: Option<u64>,
        departed: Option<(u32, u64)>,
    ) -> (Vec<(u32, u64)>, bool) {
        let mut pending = Vec::new();
        let mut never = false;
        for &(fc, seq) in waits {
            let state = if fc == ctx_id {
                let completed = self
                    .contexts
                    .get(&ctx_id)
                    .map_or(0, |c| c.timeline.completed);
                if completed >= seq {
                    Fence::Signalled
                } else if own_ahead.is_some_and(|f| f >= seq) {
                    Fence::Pending
                } else {
                    Fence::Never
                }
            } else {
                self.fence(fc, seq, departed)
            };
            match state {
                Fence::Signalled => {}
                Fence::Pending => pending.push((fc, seq)),
                Fence::Never => never = true,
            }
        }
        (pending, never)
    }

    /// Re-evaluates every queued job's waits after a fence signalled or a
    /// context was lost or destroyed, dooms the jobs whose waits can never
    /// be satisfied, and answers what fence order allows. One pass: dooming
    /// a job only affects later jobs of its own context (another context's
    /// wait on a live context stays pending), and those are decided after
    /// it in the same pass. Cost: one step per wait.
    pub(super) fn resolve_waits(&mut self, departed: Option<(u32, u64)>) {
        let ids: Vec<u32> = self.contexts.keys().copied().collect();
        for id in ids {
            let decisions = {
                let Some(c) = self.contexts.get(&id) else {
                    continue;
                };
                let mut ahead = c.running.as_ref().map(|j| j.out_fence);
                let mut out = Vec::new();
                for (i, job) in c.queue.iter().enumerate() {
                    let mut doomed = job.doomed.is_some();
                    if !doomed && !job.in_fences.is_empty() {
                        let (pending, never) =
                            self.wait_states(id, &job.in_fences, ahead, departed);
                        if never || pending.len() != job.in_fences.len() {
                            out.push((i, pending, never));
                        }
                        doomed = never;
                    }
                    if !doomed {
                        ahead = Some(job.out_fence);
                    }
                }
                out
            };
            if let Some(c) = self.contexts.get_mut(&id) {
                for (i, pending, never) in decisions {
                    if never {
                        c.doom(i, VIRTIO_ACCEL_RESP_ERR_CANCELED);
                    } else if let Some(job) = c.queue.get_mut(i) {
                        job.in_fences = pending;
                    }
                }
            }
            self.settle(id);
        }
    }

    /// Answers the doomed jobs at the front of a context's queue, if no
    /// job of the context is running.
    pub(super) fn settle(&mut self, ctx_id: u32) {
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
    pub(super) fn answer_doomed(&mut self, ctx_id: u32, c: &mut Context) {
        while let Some(job) = c.queue.pop_front() {
            let status = job.doomed.unwrap_or(VIRTIO_ACCEL_RESP_ERR_CANCELED);
            self.answer(ctx_id, job, status, 0);
        }
    }

    /// Queues the response of a job that is over.
    fn answer(&mut self, ctx_id: u32, job: Job, status: Status, ns: u64) {
        self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
        self.completions.push(Completion {
            token: job.token,
            response: submit_resp(ctx_id, status, job.out_fence, ns),
        });
    }

    /// Takes the next runnable job, highest priority first and round robin
    /// among contexts of equal priority; the job stays accounted to its
    /// context until [`Device::finish`].
    pub fn next_job(&mut self) -> Option<Ticket> {
        let after = self.last_pick;
        let mut best: Option<(u32, u32)> = None; // (priority, ctx)
        let order = self
            .contexts
            .range(after.wrapping_add(1)..)
            .chain(self.contexts.range(..=after));
        for (&id, c) in order {
            if c.running.is_some() || c.lost.is_some() {
                continue;
            }
            let Some(job) = c.queue.front() else {
                continue;
            };
            if job.doomed.is_some() || !job.in_fences.is_empty() {
                continue;
            }
            if best.is_none_or(|(p, _)| c.priority > p) {
                best = Some((c.priority, id));
            }
        }
        let (_, id) = best?;
        self.last_pick = id;
        let c = self.contexts.get_mut(&id)?;
        let job = c.queue.pop_front()?;
        let ticket = Ticket {
            ctx_id: id,
            prepared: job.prepared.clone(),
            backings: job.bos.iter().map(|(_, b)| b.clone()).collect(),
        };
        c.running = Some(job);
        Some(ticket)
    }

    /// Records the end of the running job of `ctx_id`. A job that panicked
    /// or hit an internal NPU error loses its context with
    /// `VIRTIO_ACCEL_LOST_DEVICE_ERROR`; a hang with `_HANG`.
    pub fn finish(&mut self, ctx_id: u32, result: Result<ExecReport, DriverError>, time: Duration) {
        let ns = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        let (mut status, lost) = match &result {
            Ok(_) => (VIRTIO_ACCEL_RESP_OK, None),
            Err(DriverError::Hang) => (
                VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST,
                Some(VIRTIO_ACCEL_LOST_HANG),
            ),
            Err(DriverError::Internal(_)) => (
                VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST,
                Some(VIRTIO_ACCEL_LOST_DEVICE_ERROR),
            ),
            Err(DriverError::NoMemory) => (VIRTIO_ACCEL_RESP_ERR_NO_MEMORY, None),
            Err(_) => (VIRTIO_ACCEL_RESP_ERR_JOB_FAILED, None),
        };
        if let Some(mut z) = self.zombies.remove(&ctx_id) {
            // Destroyed while running: answer the job, then the jobs that
            // were queued behind it, then drop the context.
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
            self.resolve_waits(Some((ctx_id, z.timeline.completed)));
            return;
        }
        let Some(c) = self.contexts.get_mut(&ctx_id) else {
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
        c.counters.device_time_ns = c.counters.device_time_ns.saturating_add(ns);
        match &result {
            Ok(r) if status == VIRTIO_ACCEL_RESP_OK => {
                c.counters.jobs_completed += 1;
                c.counters.ops_executed = c.counters.ops_executed.saturating_add(r.ops);
            }
            _ if signals(status) => c.counters.jobs_failed += 1,
            _ => {}
        }
        if signals(status) {
            c.timeline.completed = job.out_fence;
        }
        self.answer(ctx_id, job, status, ns);
        if let Some(reason) = lost {
            self.lose(ctx_id, reason);
        }
        self.settle(ctx_id);
        self.resolve_waits(None);
    }

    /// Marks a context lost: its queued jobs are answered
    /// `ERR_CONTEXT_LOST` (after a running job, if any), waits on its
    /// unsignalled fences are cancelled, and the driver is told by event.
    pub fn lose(&mut self, ctx_id: u32, reason: u32) {
        let Some(c) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        if c.lost.is_some() {
            return;
        }
        c.lost = Some(reason);
        for i in 0..c.queue.len() {
            c.doom(i, VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST);
        }
        let completed = c.timeline.completed;
        self.events.retain(|e| e.hdr.ctx_id.get() != ctx_id);
        self.events.push_back(Event {
            hdr: Hdr::new(VIRTIO_ACCEL_EVENT_CONTEXT_LOST, ctx_id),
            fence: completed.into(),
            reason: reason.into(),
            padding: 0.into(),
        });
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
        self.events.retain(|e| e.hdr.ctx_id.get() != 0);
        self.events.push_back(Event {
            hdr: Hdr::new(VIRTIO_ACCEL_EVENT_CONTEXT_LOST, 0),
            fence: 0.into(),
            reason: reason.into(),
            padding: 0.into(),
        });
    }
}
