//! `SUBMIT`: every check first, then the job is queued. Nothing changes unless every check
//! passed: no seqno is consumed, no buffer marked busy, no quota used.

use std::collections::HashSet;
use std::time::Instant;

use virtio_accel_protocol::*;

use super::context::Job;
use super::{Device, Status};
use crate::backend::{Backend, BackendError};
use crate::memory::GuestMem;

impl<B: Backend> Device<B> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn submit(
        &mut self,
        q: &Submit,
        bos: &[SubmitBo],
        in_fences: &[FenceRef],
        inline_cmd: Vec<u8>,
        mem: &GuestMem,
        token: u64,
    ) -> Result<(), Status> {
        let ctx_id = q.hdr.ctx_id.get();
        let inline = q.flags.get() & VIRTIO_ACCEL_SUBMIT_F_INLINE != 0;
        let cross = self.has(VIRTIO_ACCEL_F_CROSS_CTX_FENCE);
        if inline && !self.has(VIRTIO_ACCEL_F_INLINE_CMD) {
            return Err(VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED);
        }
        let max_cmd = self.limits.max_cmd_size;
        let c = self
            .contexts
            .get(&ctx_id)
            .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
        if c.lost.is_some() {
            return Err(VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST);
        }
        if self.jobs_in_flight >= self.limits.max_jobs_in_flight {
            return Err(VIRTIO_ACCEL_RESP_ERR_QUOTA);
        }
        let out_fence = q.out_fence.get();
        if out_fence <= c.timeline.last_submitted {
            return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
        }
        if q.cmd_size.get() == 0 {
            return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
        }
        if q.cmd_size.get() > max_cmd {
            return Err(VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE);
        }
        // Fences: every wait must be one that can be satisfied; keep only
        // those not signalled yet.
        let mut waits = Vec::new();
        for f in in_fences {
            let (fc, seq) = (f.ctx_id.get(), f.seqno.get());
            if fc == ctx_id {
                // Only an earlier job of this context can signal it.
                if seq >= out_fence || seq > c.timeline.last_submitted {
                    return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
                }
                if seq > c.timeline.completed {
                    waits.push((fc, seq));
                }
                continue;
            }
            if !cross {
                return Err(VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED);
            }
            let other = self
                .contexts
                .get(&fc)
                .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
            if seq > other.timeline.last_submitted {
                return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
            }
            if seq > other.timeline.completed {
                waits.push((fc, seq));
            }
        }
        let mut seen = HashSet::with_capacity(bos.len());
        let mut list = Vec::with_capacity(bos.len());
        let mut access = Vec::with_capacity(bos.len());
        let mut shapes = Vec::with_capacity(bos.len());
        for b in bos {
            let h = b.bo_handle.get();
            let bo = c.bos.get(&h).ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
            if !seen.insert(h) {
                return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
            }
            let a = bo.attached.as_ref().ok_or(VIRTIO_ACCEL_RESP_ERR_INVALID)?;
            list.push(h);
            access.push(b.access.get());
            shapes.push((&a.buffer, b.access.get(), bo.size));
        }
        // Copy the command stream out of guest memory once; only the copy
        // is validated and run.
        let cmd = if inline {
            inline_cmd
        } else {
            let bo = c
                .bos
                .get(&q.cmd_bo_handle.get())
                .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
            let backing = &bo
                .attached
                .as_ref()
                .ok_or(VIRTIO_ACCEL_RESP_ERR_INVALID)?
                .backing;
            let (off, len) = (q.cmd_offset.get(), u64::from(q.cmd_size.get()));
            if off.checked_add(len).is_none_or(|end| end > bo.size) {
                return Err(VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE);
            }
            let m = backing
                .resolve(mem, &self.cmd_stats)
                .map_err(|_| VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE)?;
            // len ≤ max_cmd_size, a u32.
            let mut buf = Vec::new();
            buf.try_reserve_exact(len as usize)
                .map_err(|_| VIRTIO_ACCEL_RESP_ERR_NO_MEMORY)?;
            buf.resize(len as usize, 0);
            m.read(off, &mut buf)
                .map_err(|_| VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE)?;
            buf
        };
        let prepared = self
            .backend
            .prepare(&c.hw, &cmd, &shapes)
            .map_err(|e| match e {
                BackendError::OutOfRange(_) => VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE,
                BackendError::NoMemory(_) => VIRTIO_ACCEL_RESP_ERR_NO_MEMORY,
                BackendError::Unsupported(_) => VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED,
                _ => VIRTIO_ACCEL_RESP_ERR_INVALID,
            })?;
        if prepared.work_bytes > self.limits.max_job_memory {
            return Err(VIRTIO_ACCEL_RESP_ERR_QUOTA);
        }

        // A wait that can never be satisfied (a lost context's unsignalled
        // fence, or an own fence only a cancelled job carried) is refused.
        let (waits, never) =
            self.wait_states(ctx_id, &waits, c.live_fence_before(c.queue.len()), None);
        if never {
            return Err(VIRTIO_ACCEL_RESP_ERR_CANCELED);
        }

        // Every check passed: from here on the request acts.
        let job = Job {
            token,
            out_fence,
            prepared: Some(prepared.job),
            bos: list,
            access,
            cmd,
            in_fences: waits,
            doomed: None,
            id: None,
            queued_at: Instant::now(),
        };
        let c = self
            .contexts
            .get_mut(&ctx_id)
            .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
        for h in &job.bos {
            if let Some(bo) = c.bos.get_mut(h) {
                bo.busy += 1;
            }
        }
        c.timeline.last_submitted = out_fence;
        c.queue.push_back(job);
        self.jobs_in_flight += 1;
        self.settle(ctx_id);
        Ok(())
    }
}
