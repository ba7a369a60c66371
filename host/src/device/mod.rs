//! The device model of one VM: contexts, buffer objects, fences and jobs.
//!
//! It takes decoded requests and answers with responses; it knows nothing
//! of vhost-user or virtqueues. Jobs wait here until the scheduler takes
//! them ([`Device::next_job`]) and come back through [`Device::finish`];
//! their responses are then collected by the glue with
//! [`Device::take_completions`]. Every status a guest sees is chosen here.

pub mod context;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use virtio_accel_protocol::*;

use crate::config::Limits;
use crate::driver::{DriverError, ExecReport, IoctlError, NpuDriver, Prepared};
use crate::memory::{Backing, GuestMem, MemStats};
use context::{Bo, Context, Job};

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
    pub jobs: usize,
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
    /// Destroyed contexts whose running job has not finished yet.
    zombies: BTreeMap<u32, Context>,
    next_ctx: u32,
    bo_count: usize,
    bo_bytes: u64,
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
            jobs_in_flight: 0,
            completions: Vec::new(),
            events: VecDeque::new(),
            last_pick: 0,
            cmd_stats: Arc::new(MemStats::default()),
        }
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
        self.jobs_in_flight = 0;
        self.completions.clear();
        self.events.clear();
    }

    pub fn counts(&self) -> Counts {
        Counts {
            contexts: self.contexts.len(),
            bos: self.bo_count,
            bo_bytes: self.bo_bytes,
            jobs: self.jobs_in_flight as usize,
            completions: self.completions.len(),
            events: self.events.len(),
        }
    }

    /// Handles one request that arrived on queue `queue`. `token` names the
    /// chain, should the request be a job.
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
        let n = info.name.len().min(31);
        name[..n].copy_from_slice(&info.name.as_bytes()[..n]);
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
        for job in c.queue.drain(..) {
            self.jobs_in_flight -= 1;
            self.completions.push(Completion {
                token: job.token,
                response: submit_resp(id, VIRTIO_ACCEL_RESP_ERR_CANCELED, job.out_fence, 0),
            });
        }
        for bo in c.bos.values() {
            self.bo_bytes -= bo.size;
        }
        self.bo_count -= c.bos.len();
        c.bos.clear();
        self.events.retain(|e| e.hdr.ctx_id.get() != id);
        if c.running.is_some() {
            self.zombies.insert(id, c);
        }
        Ok(Response::NoData(Hdr::new(VIRTIO_ACCEL_RESP_OK, id)))
    }

    fn bo_create(&mut self, q: &BoCreate) -> Result<Response, Status> {
        let ctx_id = q.hdr.ctx_id.get();
        self.ctx_mut(ctx_id)?;
        let size = q.size.get();
        if q.flags.get() & VIRTIO_ACCEL_BO_F_HOST != 0 {
            return Err(VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED);
        }
        if size > self.limits.max_bo_size {
            return Err(VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE);
        }
        if self.bo_count >= self.limits.max_bos as usize
            || self.bo_bytes + size > self.limits.max_total_bo_bytes
        {
            return Err(VIRTIO_ACCEL_RESP_ERR_QUOTA);
        }
        let c = self.ctx_mut(ctx_id)?;
        let h = c.alloc_handle();
        c.bos.insert(
            h,
            Bo {
                size,
                flags: q.flags.get(),
                backing: None,
                busy: 0,
            },
        );
        self.bo_count += 1;
        self.bo_bytes += size;
        Ok(Response::BoCreate(RespBoCreate {
            hdr: Hdr::new(VIRTIO_ACCEL_RESP_OK, ctx_id),
            bo_handle: h.into(),
            padding: 0.into(),
            size: size.into(),
        }))
    }

    fn bo_mut(&mut self, ctx: u32, h: u32) -> Result<&mut Bo, Status> {
        self.ctx_mut(ctx)?
            .bos
            .get_mut(&h)
            .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)
    }

    fn bo_destroy(&mut self, q: &BoReq) -> Result<Response, Status> {
        let (ctx, h) = (q.hdr.ctx_id.get(), q.bo_handle.get());
        if self.bo_mut(ctx, h)?.busy > 0 {
            return Err(VIRTIO_ACCEL_RESP_ERR_BUSY);
        }
        let bo = self.ctx_mut(ctx)?.bos.remove(&h).expect("looked up above");
        self.bo_count -= 1;
        self.bo_bytes -= bo.size;
        Ok(Response::NoData(Hdr::new(VIRTIO_ACCEL_RESP_OK, ctx)))
    }

    fn bo_info(&mut self, q: &BoReq) -> Result<Response, Status> {
        let ctx = q.hdr.ctx_id.get();
        let bo = self.bo_mut(ctx, q.bo_handle.get())?;
        let mut state = 0;
        if bo.backing.is_some() {
            state |= VIRTIO_ACCEL_BO_STATE_BACKED;
        }
        if bo.busy > 0 {
            state |= VIRTIO_ACCEL_BO_STATE_BUSY;
        }
        Ok(Response::BoInfo(RespBoInfo {
            hdr: Hdr::new(VIRTIO_ACCEL_RESP_OK, ctx),
            bo_handle: q.bo_handle,
            flags: bo.flags.into(),
            size: bo.size.into(),
            shm_offset: 0.into(),
            nr_entries: (bo.backing.as_ref().map_or(0, |b| b.entries()) as u32).into(),
            state: state.into(),
        }))
    }

    fn bo_attach(
        &mut self,
        q: &BoAttachBacking,
        entries: &[MemEntry],
        mem: &GuestMem,
    ) -> Result<Response, Status> {
        let ctx = q.hdr.ctx_id.get();
        let bo = self.bo_mut(ctx, q.bo_handle.get())?;
        if bo.backing.is_some() || bo.flags & VIRTIO_ACCEL_BO_F_HOST != 0 {
            return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
        }
        let backing = Backing::new(
            entries
                .iter()
                .map(|e| (e.addr.get(), e.length.get()))
                .collect(),
        );
        if backing.len() != bo.size {
            return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
        }
        backing
            .check(mem)
            .map_err(|_| VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE)?;
        bo.backing = Some(Arc::new(backing));
        Ok(Response::NoData(Hdr::new(VIRTIO_ACCEL_RESP_OK, ctx)))
    }

    fn bo_detach(&mut self, q: &BoReq) -> Result<Response, Status> {
        let ctx = q.hdr.ctx_id.get();
        let bo = self.bo_mut(ctx, q.bo_handle.get())?;
        if bo.busy > 0 {
            return Err(VIRTIO_ACCEL_RESP_ERR_BUSY);
        }
        bo.backing.take().ok_or(VIRTIO_ACCEL_RESP_ERR_INVALID)?;
        Ok(Response::NoData(Hdr::new(VIRTIO_ACCEL_RESP_OK, ctx)))
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
        let out = self
            .driver
            .ioctl(q.cmd.get(), payload, q.out_size.get() as usize, &counters)
            .map_err(|e| match e {
                IoctlError::Unsupported(_) => VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED,
                IoctlError::Invalid { .. } => VIRTIO_ACCEL_RESP_ERR_INVALID,
            })?;
        if out.len() > q.out_size.get() as usize {
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

    #[allow(clippy::too_many_arguments)]
    fn submit(
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
        if self.jobs_in_flight >= self.limits.max_jobs_in_flight {
            // Checked after the context, so an unknown context says so.
            self.ctx_mut(ctx_id)?;
            return Err(VIRTIO_ACCEL_RESP_ERR_QUOTA);
        }
        let out_fence = q.out_fence.get();
        // Fences: keep only those not yet signalled.
        let mut waits = Vec::new();
        for f in in_fences {
            let (fc, seq) = (f.ctx_id.get(), f.seqno.get());
            if fc != ctx_id && !cross {
                return Err(VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED);
            }
            if fc == ctx_id && seq >= out_fence {
                return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
            }
            let other = self
                .contexts
                .get(&fc)
                .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
            if seq > other.timeline.completed {
                waits.push((fc, seq));
            }
        }
        let max_cmd = self.limits.max_cmd_size;
        let cmd_stats = self.cmd_stats.clone();
        let c = self.ctx_mut(ctx_id)?;
        if out_fence <= c.timeline.last_submitted {
            return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
        }
        if q.cmd_size.get() > max_cmd {
            return Err(VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE);
        }
        let mut seen = HashSet::with_capacity(bos.len());
        let mut list = Vec::with_capacity(bos.len());
        let mut shapes = Vec::with_capacity(bos.len());
        for b in bos {
            let h = b.bo_handle.get();
            let bo = c.bos.get(&h).ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
            if !seen.insert(h) {
                return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
            }
            let backing = bo.backing.clone().ok_or(VIRTIO_ACCEL_RESP_ERR_INVALID)?;
            list.push((h, backing));
            shapes.push((bo.size, b.access.get()));
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
            let backing = bo.backing.as_ref().ok_or(VIRTIO_ACCEL_RESP_ERR_INVALID)?;
            let (off, len) = (q.cmd_offset.get(), u64::from(q.cmd_size.get()));
            if off.checked_add(len).is_none_or(|end| end > bo.size) {
                return Err(VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE);
            }
            let m = backing
                .resolve(mem, &cmd_stats)
                .map_err(|_| VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE)?;
            let mut buf = vec![0u8; len as usize];
            m.read(off, &mut buf)
                .map_err(|_| VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE)?;
            buf
        };
        let prepared = self.driver.prepare(&cmd, &shapes).map_err(|e| match e {
            DriverError::OutOfRange(_) => VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE,
            _ => VIRTIO_ACCEL_RESP_ERR_INVALID,
        })?;
        let c = self.ctx_mut(ctx_id)?;
        for (h, _) in &list {
            c.bos.get_mut(h).expect("listed above").busy += 1;
        }
        c.timeline.last_submitted = out_fence;
        c.queue.push_back(Job {
            token,
            out_fence,
            prepared: Arc::new(prepared),
            bos: list,
            in_fences: waits,
        });
        self.jobs_in_flight += 1;
        Ok(())
    }

    /// Whether a job's in-fences have all signalled; `Err` when one never
    /// will (its context was lost or destroyed).
    fn ready(&self, job: &Job) -> Result<bool, ()> {
        for &(ctx, seq) in &job.in_fences {
            match self.contexts.get(&ctx) {
                Some(c) if c.timeline.completed >= seq => {}
                Some(c) if c.lost.is_none() => return Ok(false),
                _ => return Err(()),
            }
        }
        Ok(true)
    }

    /// Takes the next runnable job, highest priority first and round robin
    /// among contexts of equal priority; the job stays accounted to its
    /// context until [`Device::finish`].
    pub fn next_job(&mut self) -> Option<Ticket> {
        let mut best: Option<(u32, u32)> = None; // (priority, ctx)
        let ids: Vec<u32> = self
            .contexts
            .range(self.last_pick.wrapping_add(1)..)
            .chain(self.contexts.range(..=self.last_pick))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let c = &self.contexts[&id];
            if c.running.is_some() || c.lost.is_some() {
                continue;
            }
            let Some(job) = c.queue.front() else {
                continue;
            };
            match self.ready(job) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(()) => {
                    // A dependency will never signal: cancel this job.
                    let c = self.contexts.get_mut(&id).expect("listed");
                    let job = c.queue.pop_front().expect("front exists");
                    self.cancel(id, job, VIRTIO_ACCEL_RESP_ERR_CANCELED);
                    return self.next_job();
                }
            }
            if best.is_none_or(|(p, _)| c.priority > p) {
                best = Some((c.priority, id));
            }
        }
        let (_, id) = best?;
        self.last_pick = id;
        let c = self.contexts.get_mut(&id).expect("picked");
        let job = c.queue.pop_front().expect("picked with a job");
        let ticket = Ticket {
            ctx_id: id,
            prepared: job.prepared.clone(),
            backings: job.bos.iter().map(|(_, b)| b.clone()).collect(),
        };
        c.running = Some(job);
        Some(ticket)
    }

    /// Answers a job that will not run, releasing what it held.
    fn cancel(&mut self, ctx_id: u32, job: Job, status: Status) {
        if let Some(c) = self.contexts.get_mut(&ctx_id) {
            for (h, _) in &job.bos {
                if let Some(bo) = c.bos.get_mut(h) {
                    bo.busy -= 1;
                }
            }
        }
        self.jobs_in_flight -= 1;
        self.completions.push(Completion {
            token: job.token,
            response: submit_resp(ctx_id, status, job.out_fence, 0),
        });
    }

    /// Records the end of the running job of `ctx_id`.
    pub fn finish(&mut self, ctx_id: u32, result: Result<ExecReport, DriverError>, time: Duration) {
        let ns = time.as_nanos().min(u64::MAX.into()) as u64;
        if let Some(mut z) = self.zombies.remove(&ctx_id) {
            // Destroyed while running: answer the job, drop the context.
            if let Some(job) = z.running.take() {
                self.jobs_in_flight -= 1;
                let status = match result {
                    Ok(_) => VIRTIO_ACCEL_RESP_OK,
                    Err(_) => VIRTIO_ACCEL_RESP_ERR_JOB_FAILED,
                };
                self.completions.push(Completion {
                    token: job.token,
                    response: submit_resp(ctx_id, status, job.out_fence, ns),
                });
            }
            return;
        }
        let Some(c) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        let Some(job) = c.running.take() else {
            return;
        };
        for (h, _) in &job.bos {
            if let Some(bo) = c.bos.get_mut(h) {
                bo.busy -= 1;
            }
        }
        self.jobs_in_flight -= 1;
        c.counters.device_time_ns += ns;
        let status = match &result {
            Ok(r) => {
                c.counters.jobs_completed += 1;
                c.counters.ops_executed += r.ops;
                VIRTIO_ACCEL_RESP_OK
            }
            Err(DriverError::Hang) => VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST,
            Err(_) => {
                c.counters.jobs_failed += 1;
                VIRTIO_ACCEL_RESP_ERR_JOB_FAILED
            }
        };
        if status != VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST {
            c.timeline.completed = job.out_fence;
        }
        self.completions.push(Completion {
            token: job.token,
            response: submit_resp(ctx_id, status, job.out_fence, ns),
        });
        if status == VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST {
            self.lose(ctx_id, VIRTIO_ACCEL_LOST_HANG);
        }
    }

    /// Marks a context lost: its queued jobs fail and the driver is told.
    pub fn lose(&mut self, ctx_id: u32, reason: u32) {
        let Some(c) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        c.lost = Some(reason);
        let completed = c.timeline.completed;
        let jobs: Vec<Job> = c.queue.drain(..).collect();
        for job in jobs {
            self.cancel(ctx_id, job, VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST);
        }
        self.events.retain(|e| e.hdr.ctx_id.get() != ctx_id);
        self.events.push_back(Event {
            hdr: Hdr::new(VIRTIO_ACCEL_EVENT_CONTEXT_LOST, ctx_id),
            fence: completed.into(),
            reason: reason.into(),
            padding: 0.into(),
        });
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

fn submit_resp(ctx: u32, status: Status, fence: u64, ns: u64) -> Response {
    Response::Submit(RespSubmit {
        hdr: Hdr::new(status, ctx),
        fence: fence.into(),
        device_time_ns: ns.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::sim::{Faults, SimNpu};
    use vm_memory::GuestAddress;

    fn dev() -> (Device, GuestMem) {
        let d = Device::new(Limits::default(), Arc::new(SimNpu::new(Faults::default())));
        (
            d,
            GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
        )
    }

    fn ok(o: Outcome) -> Response {
        match o {
            Outcome::Respond(r) => {
                assert_eq!(status_name(r.status()), "VIRTIO_ACCEL_RESP_OK");
                r
            }
            Outcome::Queued => panic!("queued"),
        }
    }

    fn create(d: &mut Device, m: &GuestMem, prio: u32) -> u32 {
        let r = ok(d.handle(
            VIRTIO_ACCEL_VQ_CONTROL,
            Request::CtxCreate(CtxCreate {
                hdr: Hdr::new(VIRTIO_ACCEL_CMD_CTX_CREATE, 0),
                priority: prio.into(),
                padding: 0.into(),
            }),
            m,
            0,
        ));
        r.hdr().ctx_id.get()
    }

    fn submit(
        d: &mut Device,
        m: &GuestMem,
        ctx: u32,
        fence: u64,
        waits: &[(u32, u64)],
        token: u64,
    ) {
        d.set_features(DEVICE_BITS);
        let nop = virtio_accel_protocol::snpu::Program { ops: vec![] }.encode();
        let req = Request::Submit {
            req: Submit {
                hdr: Hdr::new(VIRTIO_ACCEL_CMD_SUBMIT, ctx),
                out_fence: fence.into(),
                flags: VIRTIO_ACCEL_SUBMIT_F_INLINE.into(),
                cmd_size: (nop.len() as u32).into(),
                nr_in_fences: (waits.len() as u32).into(),
                ..Default::default()
            },
            bos: vec![],
            in_fences: waits
                .iter()
                .map(|&(c, s)| FenceRef {
                    ctx_id: c.into(),
                    padding: 0.into(),
                    seqno: s.into(),
                })
                .collect(),
            inline_cmd: nop,
        };
        assert!(matches!(
            d.handle(VIRTIO_ACCEL_VQ_SUBMIT, req, m, token),
            Outcome::Queued
        ));
    }

    const DEVICE_BITS: u64 =
        (1 << VIRTIO_ACCEL_F_INLINE_CMD) | (1 << VIRTIO_ACCEL_F_CROSS_CTX_FENCE);

    fn run_next(d: &mut Device) -> u32 {
        let t = d.next_job().expect("a runnable job");
        d.finish(
            t.ctx_id,
            Ok(ExecReport { ops: 0 }),
            Duration::from_micros(1),
        );
        t.ctx_id
    }

    #[test]
    fn higher_priority_context_runs_first_and_equal_ones_alternate() {
        let (mut d, m) = dev();
        let low = create(&mut d, &m, VIRTIO_ACCEL_PRIORITY_LOW);
        let a = create(&mut d, &m, VIRTIO_ACCEL_PRIORITY_NORMAL);
        let b = create(&mut d, &m, VIRTIO_ACCEL_PRIORITY_NORMAL);
        for f in 1..=2 {
            submit(&mut d, &m, low, f, &[], 0);
            submit(&mut d, &m, a, f, &[], 0);
            submit(&mut d, &m, b, f, &[], 0);
        }
        let order: Vec<u32> = (0..6).map(|_| run_next(&mut d)).collect();
        assert_eq!(&order[4..], &[low, low]);
        assert_ne!(order[0], order[1], "equal priorities alternate");
        assert!(d.next_job().is_none());
        assert_eq!(d.take_completions().len(), 6);
    }

    #[test]
    fn a_context_runs_one_job_at_a_time_in_order() {
        let (mut d, m) = dev();
        let c = create(&mut d, &m, 1);
        submit(&mut d, &m, c, 1, &[], 10);
        submit(&mut d, &m, c, 2, &[], 11);
        let t = d.next_job().unwrap();
        assert!(d.next_job().is_none(), "second job must wait for the first");
        d.finish(t.ctx_id, Ok(ExecReport::default()), Duration::ZERO);
        assert!(d.next_job().is_some());
    }

    #[test]
    fn in_fence_on_another_context_blocks_until_signalled() {
        let (mut d, m) = dev();
        let a = create(&mut d, &m, 1);
        let b = create(&mut d, &m, 1);
        submit(&mut d, &m, b, 1, &[(a, 1)], 20);
        assert!(d.next_job().is_none(), "A's fence 1 has not signalled");
        submit(&mut d, &m, a, 1, &[], 21);
        assert_eq!(run_next(&mut d), a);
        assert_eq!(run_next(&mut d), b);
    }

    #[test]
    fn dependency_on_a_lost_context_cancels_the_job() {
        let (mut d, m) = dev();
        let a = create(&mut d, &m, 1);
        let b = create(&mut d, &m, 1);
        submit(&mut d, &m, a, 1, &[], 1);
        submit(&mut d, &m, b, 1, &[(a, 1)], 2);
        let t = d.next_job().unwrap();
        d.finish(t.ctx_id, Err(DriverError::Hang), Duration::ZERO);
        assert!(d.next_job().is_none());
        let c = d.take_completions();
        let st: Vec<u32> = c.iter().map(|c| c.response.status()).collect();
        assert_eq!(
            st,
            [
                VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST,
                VIRTIO_ACCEL_RESP_ERR_CANCELED
            ]
        );
        let ev = d.pop_event().unwrap();
        assert_eq!((ev.hdr.ctx_id.get(), ev.fence.get()), (a, 0));
        assert_eq!(d.counts().jobs, 0);
    }

    #[test]
    fn destroying_a_context_with_a_running_job_answers_it_later() {
        let (mut d, m) = dev();
        let c = create(&mut d, &m, 1);
        submit(&mut d, &m, c, 1, &[], 7);
        let t = d.next_job().unwrap();
        ok(d.handle(
            VIRTIO_ACCEL_VQ_CONTROL,
            Request::CtxDestroy(Hdr::new(VIRTIO_ACCEL_CMD_CTX_DESTROY, c)),
            &m,
            0,
        ));
        assert_eq!(d.counts().contexts, 0);
        assert_eq!(d.counts().jobs, 1);
        d.finish(t.ctx_id, Ok(ExecReport::default()), Duration::ZERO);
        let c = d.take_completions();
        assert_eq!((c.len(), c[0].token), (1, 7));
        assert_eq!(d.counts(), Counts::default());
    }
}
