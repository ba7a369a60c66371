//! The device model of one VM: contexts, buffer objects, fences and jobs.
//!
//! It takes decoded requests and answers with responses; it knows nothing
//! of vhost-user or virtqueues. Every request is validated completely
//! before anything changes, so a rejected request leaves no trace. Jobs wait
//! here until the scheduler takes them ([`Device::start`]) and come back
//! through [`Device::finish`]; their responses are then collected by the
//! glue with [`Device::take_completions`], in fence order within each
//! context. Every status a guest sees is chosen here.
//!
//! - this file: request dispatch, capabilities, contexts, ioctls;
//! - [`buffers`]: buffer objects, their backing and import;
//! - [`submit`]: validation of `SUBMIT`;
//! - [`fences`]: timelines, fence waits and `FENCE_POLL`;
//! - [`jobs`]: jobs to and from the scheduler, completion, context loss;
//! - [`events`]: the eventq's queue and the answered jobs' responses.

mod buffers;
pub mod context;
mod events;
mod fences;
mod jobs;
mod saved;
mod submit;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use virtio_accel_protocol::*;

use crate::backend::{Backend, IoctlError};
use crate::config::Limits;
use crate::memory::{GuestMem, MemStats, VmMemory};
use crate::metrics::VmMetrics;
use context::Context;
pub use jobs::JobEnd;

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

pub struct Device<B: Backend> {
    limits: Limits,
    /// The backend takes only page-aligned backing.
    page_aligned: bool,
    backend: Arc<B>,
    mem: VmMemory,
    metrics: Arc<VmMetrics>,
    /// Device feature bits the driver acknowledged.
    features: u64,
    contexts: BTreeMap<u32, Context<B>>,
    /// Destroyed contexts whose running job the backend has not given back
    /// yet; they keep their buffers until it has, and their queued jobs,
    /// doomed, to answer them after the running one.
    zombies: BTreeMap<u32, Context<B>>,
    next_ctx: u32,
    bo_count: usize,
    bo_bytes: u64,
    /// Backing entries of every attached BO.
    backing_entries: u64,
    jobs_in_flight: u32,
    completions: Vec<Completion>,
    events: VecDeque<Event>,
    /// The driver's rings are stopped (a VM stop, or a reset not told
    /// apart from one yet): no job starts; running ones go on to their end.
    stopped: bool,
    /// Bytes of command streams copied out of guest memory.
    pub cmd_stats: Arc<MemStats>,
    /// What changed since [`Device::take_dirty`], for a state kept on disk.
    dirty: Dirty,
}

/// What changed in the device model: contexts (their timelines, jobs,
/// loss; gone if no longer there), buffers, events. Kept coarse: a request
/// marks what it names, job events mark their context.
/// Only a device whose state is kept ([`Device::track_changes`]) names
/// contexts and buffers here: the sets are emptied by the one who keeps
/// the state, and a guest naming handles at random must not grow them for
/// nobody.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    /// Everything may have changed (a reset, a restore).
    pub all: bool,
    pub contexts: BTreeSet<u32>,
    pub bos: BTreeSet<(u32, u32)>,
    pub events: bool,
    tracked: bool,
}

impl Dirty {
    fn context(&mut self, id: u32) {
        if self.tracked {
            self.contexts.insert(id);
        }
    }

    fn bo(&mut self, ctx: u32, handle: u32) {
        if self.tracked {
            self.bos.insert((ctx, handle));
        }
    }
}

fn resp(req_type: u32, ctx: u32, status: Status) -> Response {
    Response::error(req_type, ctx, status)
}

/// A context that is not lost, from the map alone (so the rest of the
/// device can be borrowed beside it).
fn live<B: Backend>(
    contexts: &mut BTreeMap<u32, Context<B>>,
    id: u32,
) -> Result<&mut Context<B>, Status> {
    let c = contexts
        .get_mut(&id)
        .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
    if c.lost.is_some() {
        return Err(VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST);
    }
    Ok(c)
}

impl<B: Backend> Device<B> {
    pub fn new(
        limits: Limits,
        backend: Arc<B>,
        mem: VmMemory,
        metrics: Arc<VmMetrics>,
    ) -> Device<B> {
        let cmd_stats = Arc::new(metrics.cmd_copy_stats());
        Device {
            limits,
            page_aligned: backend.caps().page_aligned,
            backend,
            mem,
            metrics,
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
            stopped: false,
            cmd_stats,
            dirty: Dirty::default(),
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

    /// Stops starting jobs: the rings are stopped. Jobs on the NPU go on
    /// to their end and are answered once the rings run again; queued jobs
    /// wait. Objects are kept.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Lets jobs start again after [`Device::stop`].
    pub fn resume(&mut self) {
        self.stopped = false;
    }

    /// Drops every object, aborting jobs without answering them: used when
    /// the driver resets the device and its rings go away. The aborted jobs
    /// may write their buffers until the backend gives them back
    /// ([`Counts::running`] falls to zero); the caller waits for that
    /// before it acknowledges the reset.
    pub fn reset(&mut self) {
        self.stopped = false;
        self.dirty.all = true;
        self.abort_running();
        let all: Vec<(u32, Context<B>)> = std::mem::take(&mut self.contexts)
            .into_iter()
            .chain(std::mem::take(&mut self.zombies))
            .collect();
        for (id, mut c) in all {
            if c.running.is_some() {
                // Its buffers stay with the backend until the aborted job
                // is given back; nothing of it is answered.
                c.queue.clear();
                c.silent = true;
                self.zombies.insert(id, c);
            } else {
                self.release_context(c);
            }
        }
        self.bo_count = 0;
        self.bo_bytes = 0;
        self.backing_entries = 0;
        self.jobs_in_flight = 0;
        self.completions.clear();
        self.events.clear();
        self.publish_counts();
    }

    /// Asks the backend to stop every job it runs for this VM.
    fn abort_running(&self) {
        for c in self.contexts.values().chain(self.zombies.values()) {
            if let Some(id) = c.running.as_ref().and_then(|j| j.id) {
                self.backend.abort(id);
            }
        }
    }

    /// Gives a context's buffers and backend context back to the backend.
    fn release_context(&self, c: Context<B>) {
        for bo in c.bos.into_values() {
            if let Some(a) = bo.attached {
                self.backend.release(&c.hw, a.buffer);
            }
        }
        self.backend.destroy_context(c.hw);
    }

    /// The VM's objects, for the metrics.
    fn publish_counts(&self) {
        self.metrics.set_objects(
            self.contexts.len() as u64,
            self.bo_count as u64,
            self.bo_bytes,
            self.jobs_in_flight.into(),
        );
    }

    /// Keeps what changed for [`Device::take_dirty`], which its caller
    /// then calls at least once per pass over the queues.
    pub fn track_changes(&mut self) {
        self.dirty.tracked = true;
    }

    /// What changed since the last call.
    pub fn take_dirty(&mut self) -> Dirty {
        let tracked = self.dirty.tracked;
        std::mem::replace(
            &mut self.dirty,
            Dirty {
                tracked,
                ..Dirty::default()
            },
        )
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
        if ctx != 0 {
            self.dirty.context(ctx);
        }
        match &req {
            Request::BoDestroy(q)
            | Request::BoDetachBacking(q)
            | Request::BoMapShm(q)
            | Request::BoUnmapShm(q) => {
                self.dirty.bo(ctx, q.bo_handle.get());
            }
            Request::BoAttachBacking { req, .. } => {
                self.dirty.bo(ctx, req.bo_handle.get());
            }
            _ => {}
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
            Request::FencePoll(q) => Ok(self.fence_poll(&q)),
            Request::Ioctl { req, payload } => self.ioctl(&req, &payload),
            Request::Submit {
                req,
                bos,
                in_fences,
                inline_cmd,
            } => match self.submit(&req, &bos, &in_fences, inline_cmd, mem, token) {
                Ok(()) => {
                    self.publish_counts();
                    return Outcome::Queued;
                }
                Err(s) => Err(s),
            },
        };
        let r = r.unwrap_or_else(|s| resp(t, ctx, s));
        if let Response::BoCreate(b) = &r {
            self.dirty.bo(ctx, b.bo_handle.get());
        }
        if t == VIRTIO_ACCEL_CMD_CTX_CREATE {
            self.dirty.context(r.hdr().ctx_id.get());
        }
        self.metrics.request(t, r.hdr().type_.get());
        self.publish_counts();
        Outcome::Respond(r)
    }

    fn ctx_mut(&mut self, id: u32) -> Result<&mut Context<B>, Status> {
        live(&mut self.contexts, id)
    }

    fn get_caps(&self, q: &GetCaps) -> Result<Response, Status> {
        if q.capset.get() != 0 {
            return Err(VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE);
        }
        let info = self.backend.caps();
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
        let hw = self
            .backend
            .create_context(q.priority.get())
            .map_err(|_| VIRTIO_ACCEL_RESP_ERR_NO_MEMORY)?;
        self.contexts.insert(id, Context::new(q.priority.get(), hw));
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
        self.events.retain(|e| e.hdr.ctx_id.get() != id);
        for i in 0..c.queue.len() {
            c.doom(i, VIRTIO_ACCEL_RESP_ERR_CANCELED);
        }
        let completed = c.timeline.completed;
        if let Some(run) = &c.running {
            // The running job is aborted. It may still write its buffers
            // until the backend gives it back: it is answered then, and
            // the queued ones after it (see `finish`).
            if let Some(jid) = run.id {
                self.backend.abort(jid);
            }
            self.zombies.insert(id, c);
            self.resolve_waits(None);
        } else {
            self.answer_doomed(id, &mut c);
            self.release_context(c);
            self.resolve_waits(Some((id, completed)));
        }
        Ok(Response::NoData(Hdr::new(VIRTIO_ACCEL_RESP_OK, id)))
    }

    fn ioctl(&mut self, q: &Ioctl, payload: &[u8]) -> Result<Response, Status> {
        if !self.has(VIRTIO_ACCEL_F_IOCTL) {
            return Err(VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED);
        }
        let ctx = q.hdr.ctx_id.get();
        let out_max = q.out_size.get() as usize;
        let hw = &live(&mut self.contexts, ctx)?.hw;
        let out = self
            .backend
            .ioctl(hw, q.cmd.get(), payload, out_max)
            .map_err(|e| match e {
                IoctlError::Unsupported(_) => VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED,
                IoctlError::Invalid { .. } => VIRTIO_ACCEL_RESP_ERR_INVALID,
                IoctlError::Host { .. } => VIRTIO_ACCEL_RESP_ERR_INVALID,
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
}

impl<B: Backend> Drop for Device<B> {
    /// A device that goes away (its VM disconnected) stops its jobs.
    fn drop(&mut self) {
        self.abort_running();
    }
}

#[cfg(test)]
mod tests;
