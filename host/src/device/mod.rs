//! The device model of one VM: contexts, buffer objects, fences and jobs.
//!
//! It takes decoded requests and answers with responses; it knows nothing
//! of vhost-user or virtqueues. Every request is validated completely
//! before anything changes, so a rejected request leaves no trace. Jobs wait
//! here until the scheduler takes them ([`Device::next_job`]) and come back
//! through [`Device::finish`]; their responses are then collected by the
//! glue with [`Device::take_completions`], in fence order within each
//! context. Every status a guest sees is chosen here.
//!
//! - [`buffers`]: buffer objects and their backing;
//! - [`submit`]: validation of `SUBMIT`;
//! - [`jobs`]: job order, fence waits, completion and context loss.

mod buffers;
pub mod context;
mod jobs;
mod submit;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use virtio_accel_protocol::*;

use crate::config::Limits;
use crate::driver::{NpuDriver, Prepared};
use crate::memory::{Backing, GuestMem, MemStats};
use context::Context;

/// What became of a request.
pub enum Outcome {
    /// Answer now.
    Respond(Response),
    /// A job was queued; its response comes through `take_completions`.
    Queued,
}

/// A finished job's response, for the chain parked under `token`.
pub struct Completion {
    pub token: u64,
    pub response: Response,
}

/// A job handed to the NPU.
pub struct Ticket {
    pub ctx_id: u32,
    pub prepared: Arc<Prepared>,
    pub backings: Vec<Arc<Backing>>,
}

/// Live objects of one VM, for tests and leak checks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub contexts: usize,
    pub bos: usize,
    pub bo_bytes: u64,
    pub backing_entries: u64,
    pub jobs: usize,
    /// Jobs on the NPU now (of live or destroyed contexts).
    pub running: usize,
    pub completions: usize,
    pub events: usize,
}

type Status = u32;

pub struct Device {
    limits: Limits,
    driver: Arc<dyn NpuDriver>,
    /// Device feature bits the driver acknowledged.
    features: u64,
    contexts: BTreeMap<u32, Context>,
    /// Destroyed contexts whose running job has not finished yet; they keep
    /// their queued jobs, doomed, to answer them after the running one.
    zombies: BTreeMap<u32, Context>,
    next_ctx: u32,
    bo_count: usize,
    bo_bytes: u64,
    /// Backing entries of every attached BO.
    backing_entries: u64,
    jobs_in_flight: u32,
    completions: Vec<Completion>,
    events: VecDeque<Event>,
    /// Context id after which the next pick starts (round robin).
    last_pick: u32,
    /// Bytes of command streams copied out of guest memory.
    pub cmd_stats: Arc<MemStats>,
}

fn resp(req_type: u32, ctx: u32, status: Status) -> Response {
    Response::error(req_type, ctx, status)
}

impl Device {
    pub fn new(limits: Limits, driver: Arc<dyn NpuDriver>) -> Device {
        Device {
            limits,
            driver,
            features: 0,
            contexts: BTreeMap::new(),
            zombies: BTreeMap::new(),
            next_ctx: 1,
            bo_count: 0,
            bo_bytes: 0,
            backing_entries: 0,
            jobs_in_flight: 0,
            completions: Vec::new(),
            events: VecDeque::new(),
            last_pick: 0,
            cmd_stats: Arc::new(MemStats::default()),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn set_features(&mut self, features: u64) {
        self.features = features;
    }

    fn has(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    /// Drops every object, cancelling jobs without answering them: used when
    /// the driver resets the device and its rings go away.
    pub fn reset(&mut self) {
        self.contexts.clear();
        self.zombies.clear();
        self.bo_count = 0;
        self.bo_bytes = 0;
        self.backing_entries = 0;
        self.jobs_in_flight = 0;
        self.completions.clear();
        self.events.clear();
    }

    pub fn counts(&self) -> Counts {
        Counts {
            contexts: self.contexts.len(),
            bos: self.bo_count,
            bo_bytes: self.bo_bytes,
            backing_entries: self.backing_entries,
            running: self
                .contexts
                .values()
                .chain(self.zombies.values())
                .filter(|c| c.running.is_some())
                .count(),
            jobs: self.jobs_in_flight as usize,
            completions: self.completions.len(),
            events: self.events.len(),
        }
    }

    /// Handles one request that arrived on queue `queue`. `token` names the
    /// chain, should the request be a job. The caller has checked that the
    /// chain's writable part holds the whole response
    /// ([`Request::response_size`]); a request that fails any check
    /// changes nothing.
    pub fn handle(&mut self, queue: u16, req: Request, mem: &GuestMem, token: u64) -> Outcome {
        let hdr = *req.hdr();
        let (t, ctx) = (hdr.type_.get(), hdr.ctx_id.get());
        let is_submit = matches!(req, Request::Submit { .. });
        if is_submit != (queue == VIRTIO_ACCEL_VQ_SUBMIT) {
            return Outcome::Respond(resp(t, ctx, VIRTIO_ACCEL_RESP_ERR_INVALID));
        }
        let r = match req {
            Request::GetCaps(q) => self.get_caps(&q),
            Request::CtxCreate(q) => self.ctx_create(&q),
            Request::CtxDestroy(_) => self.ctx_destroy(ctx),
            Request::BoCreate(q) => self.bo_create(&q),
            Request::BoDestroy(q) => self.bo_destroy(&q),
            Request::BoInfo(q) => self.bo_info(&q),
            Request::BoAttachBacking { req, entries } => self.bo_attach(&req, &entries, mem),
            Request::BoDetachBacking(q) => self.bo_detach(&q),
            Request::BoMapShm(_) | Request::BoUnmapShm(_) => {
                // VIRTIO_ACCEL_F_SHM_BLOB is never offered by this device.
                Err(VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED)
            }
            Request::FencePoll(q) => return Outcome::Respond(self.fence_poll(&q)),
            Request::Ioctl { req, payload } => self.ioctl(&req, &payload),
            Request::Submit {
                req,
                bos,
                in_fences,
                inline_cmd,
            } => match self.submit(&req, &bos, &in_fences, inline_cmd, mem, token) {
                Ok(()) => return Outcome::Queued,
                Err(s) => Err(s),
            },
        };
        Outcome::Respond(r.unwrap_or_else(|s| resp(t, ctx, s)))
    }

    fn ctx_mut(&mut self, id: u32) -> Result<&mut Context, Status> {
        let c = self
            .contexts
            .get_mut(&id)
            .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
        if c.lost.is_some() {
            return Err(VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST);
        }
        Ok(c)
    }

    fn get_caps(&self, q: &GetCaps) -> Result<Response, Status> {
        if q.capset.get() != 0 {
            return Err(VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE);
        }
        let info = self.driver.info();
        let l = &self.limits;
        let mut name = [0u8; 32];
        for (d, s) in name.iter_mut().take(31).zip(info.name.bytes()) {
            *d = s;
        }
        Ok(Response::Caps(RespCaps {
            hdr: Hdr::new(VIRTIO_ACCEL_RESP_OK, 0),
            npu_kind: info.kind.into(),
            npu_version: info.version.into(),
            cmd_format: info.cmd_format.into(),
            cmd_format_version: info.cmd_format_version.into(),
            max_bo_size: l.max_bo_size.into(),
            max_contexts: l.max_contexts.into(),
            max_jobs_in_flight: l.max_jobs_in_flight.into(),
            max_cmd_size: l.max_cmd_size.into(),
            max_inline_cmd_size: l.max_inline_cmd_size.into(),
            max_submit_bos: l.max_submit_bos.into(),
            max_in_fences: l.max_in_fences.into(),
            max_sg_entries: l.max_sg_entries.into(),
            padding: 0.into(),
            ops: info.ops.into(),
            name,
        }))
    }

    fn ctx_create(&mut self, q: &CtxCreate) -> Result<Response, Status> {
        if self.contexts.len() >= self.limits.max_contexts as usize {
            return Err(VIRTIO_ACCEL_RESP_ERR_QUOTA);
        }
        // At most max_contexts + zombies ids are taken, far below 2^32.
        let id = loop {
            let id = self.next_ctx;
            self.next_ctx = self.next_ctx.wrapping_add(1).max(1);
            if !self.contexts.contains_key(&id) && !self.zombies.contains_key(&id) {
                break id;
            }
        };
        self.contexts.insert(id, Context::new(q.priority.get()));
        Ok(Response::NoData(Hdr::new(VIRTIO_ACCEL_RESP_OK, id)))
    }

    fn ctx_destroy(&mut self, id: u32) -> Result<Response, Status> {
        let mut c = self
            .contexts
            .remove(&id)
            .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
        let bytes = c.bos.values().fold(0u64, |a, b| a.saturating_add(b.size));
        self.bo_bytes = self.bo_bytes.saturating_sub(bytes);
        let entries = c
            .bos
            .values()
            .fold(0u64, |a, b| a.saturating_add(b.entries()));
        self.backing_entries = self.backing_entries.saturating_sub(entries);
        self.bo_count = self.bo_count.saturating_sub(c.bos.len());
        c.bos.clear();
        self.events.retain(|e| e.hdr.ctx_id.get() != id);
        for i in 0..c.queue.len() {
            c.doom(i, VIRTIO_ACCEL_RESP_ERR_CANCELED);
        }
        let completed = c.timeline.completed;
        if c.running.is_some() {
            // The running job still writes its buffers: it is answered
            // first, then the queued ones (see `finish`).
            self.zombies.insert(id, c);
            self.resolve_waits(None);
        } else {
            self.answer_doomed(id, &mut c);
            self.resolve_waits(Some((id, completed)));
        }
        Ok(Response::NoData(Hdr::new(VIRTIO_ACCEL_RESP_OK, id)))
    }

    fn fence_poll(&self, q: &FencePoll) -> Response {
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

    fn ioctl(&mut self, q: &Ioctl, payload: &[u8]) -> Result<Response, Status> {
        if !self.has(VIRTIO_ACCEL_F_IOCTL) {
            return Err(VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED);
        }
        let ctx = q.hdr.ctx_id.get();
        let counters = self.ctx_mut(ctx)?.counters;
        let out_max = q.out_size.get() as usize;
        let out = self
            .driver
            .ioctl(q.cmd.get(), payload, out_max, &counters)
            .map_err(|e| match e {
                crate::driver::IoctlError::Unsupported(_) => VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED,
                crate::driver::IoctlError::Invalid { .. } => VIRTIO_ACCEL_RESP_ERR_INVALID,
            })?;
        if out.len() > out_max {
            return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
        }
        Ok(Response::Ioctl {
            resp: RespIoctl {
                hdr: Hdr::new(VIRTIO_ACCEL_RESP_OK, ctx),
                out_size: (out.len() as u32).into(),
                padding: 0.into(),
            },
            payload: out,
        })
    }

    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// The next event for the eventq, if any.
    pub fn pop_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Puts back an event that found no eventq buffer.
    pub fn unpop_event(&mut self, ev: Event) {
        self.events.push_front(ev);
    }
}

#[cfg(test)]
mod tests;
