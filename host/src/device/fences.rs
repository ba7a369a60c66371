//! Fence timelines seen from outside a context: waits on other contexts'
//! fences, which become satisfiable or impossible as contexts complete,
//! are lost or go away, and `FENCE_POLL`.
//!
//! Rules kept here:
//! - a wait that can no longer be satisfied (its context lost, or destroyed
//!   with nothing left that could signal it) dooms the waiter with
//!   `ERR_CANCELED` at once (its buffers idle from then on);
//! - a wait on a fence that signalled before its context went away is
//!   satisfied.

use virtio_accel_protocol::*;

use super::context::Context;
use super::{resp, Device};
use crate::backend::Backend;

/// Where a fence stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    Signalled,
    Pending,
    Never,
}

impl<B: Backend> Device<B> {
    /// State of fence `seq` of another context `ctx`. `departed` is a
    /// context being dropped right now, with its last completed seqno.
    fn fence(&self, ctx: u32, seq: u64, departed: Option<(u32, u64)>) -> Fence {
        let state = |c: &Context<B>, live: bool| {
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
            if !decisions.is_empty() {
                self.dirty.context(id);
            }
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

    pub(super) fn fence_poll(&self, q: &FencePoll) -> Response {
        let ctx = q.hdr.ctx_id.get();
        let Some(c) = self.contexts.get(&ctx) else {
            return resp(
                VIRTIO_ACCEL_CMD_FENCE_POLL,
                ctx,
                VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE,
            );
        };
        let completed = c.timeline.completed;
        let status = if q.seqno.get() <= completed {
            VIRTIO_ACCEL_RESP_OK
        } else if c.lost.is_some() {
            VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST
        } else {
            VIRTIO_ACCEL_RESP_ERR_BUSY
        };
        Response::Fence(RespFence {
            hdr: Hdr::new(status, ctx),
            completed: completed.into(),
        })
    }
}
