//! The device model taken out of the daemon and put back: what a migration
//! saves and loads, and what a restart restores ([`crate::state`] is the
//! format).
//!
//! A saved state is checked completely before anything is created: limits
//! this daemon advertises, handles, buffers of jobs, backing inside guest
//! memory, command streams the NPU accepts. A state that fails a check
//! restores nothing ([`Device::restore`]); the caller may then restore
//! its contexts as lost ([`Device::restore_lost`]), so the driver learns
//! what happened to them and keeps a working device.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

use virtio_accel_protocol::*;

use super::context::{Attached, Bo, Context, Job};
use super::{Completion, Device};
use crate::backend::Backend;
use crate::memory::{Backing, GuestMem};
use crate::state::{
    AnswerState, BoState, ContextState, DeviceState, EventState, JobState, StateError,
};

fn job_state<B: Backend>(j: &Job<B>, ran: bool) -> JobState {
    JobState {
        token: j.token,
        out_fence: j.out_fence,
        bos: j
            .bos
            .iter()
            .copied()
            .zip(j.access.iter().copied())
            .collect(),
        waits: j.in_fences.clone(),
        cmd: j.cmd.clone(),
        doomed: j.doomed,
        ran,
    }
}

fn context_state<B: Backend>(id: u32, c: &Context<B>) -> ContextState {
    ContextState {
        id,
        priority: c.priority,
        next_bo: c.next_bo,
        last_submitted: c.timeline.last_submitted,
        completed: c.timeline.completed,
        lost: c.lost,
        bos: c
            .bos
            .iter()
            .map(|(&handle, b)| BoState {
                handle,
                size: b.size,
                flags: b.flags,
                backing: b.attached.as_ref().map(|a| a.backing.ranges().to_vec()),
            })
            .collect(),
        jobs: c
            .running
            .iter()
            .map(|j| job_state(j, true))
            .chain(c.queue.iter().map(|j| job_state(j, false)))
            .collect(),
    }
}

fn inconsistent(what: String) -> StateError {
    StateError::Inconsistent(what)
}

impl<B: Backend> Device<B> {
    /// The device model, for a migration: the device must be stopped with
    /// no job on the NPU (a stop drains them).
    pub fn save(&self) -> Result<DeviceState, StateError> {
        if self.contexts.values().any(|c| c.running.is_some()) || !self.zombies.is_empty() {
            return Err(StateError::Busy("a job is on the NPU"));
        }
        Ok(self.snapshot())
    }

    /// The device model as it is now; a job on the NPU is saved to run
    /// again from its start, and a destroyed context's running job is not
    /// saved (it is over for the driver once its answer is written).
    pub fn snapshot(&self) -> DeviceState {
        DeviceState {
            contexts: self
                .contexts
                .iter()
                .map(|(&id, c)| context_state(id, c))
                .collect(),
            answers: self
                .completions
                .iter()
                .map(|c| AnswerState {
                    token: c.token,
                    response: c.response.encode(),
                })
                .collect(),
            ..self.snapshot_meta()
        }
    }

    /// A context as a state on disk keeps it: without its buffers (kept
    /// one by one) and its jobs' command streams (kept with their chains).
    /// `None` once it is gone (destroyed, even while its job runs).
    pub fn context_record(&self, id: u32) -> Option<ContextState> {
        let mut c = context_state(id, self.contexts.get(&id)?);
        c.bos.clear();
        for j in &mut c.jobs {
            j.cmd.clear();
        }
        Some(c)
    }

    pub fn bo_record(&self, ctx: u32, handle: u32) -> Option<BoState> {
        let b = self.contexts.get(&ctx)?.bos.get(&handle)?;
        Some(BoState {
            handle,
            size: b.size,
            flags: b.flags,
            backing: b.attached.as_ref().map(|a| a.backing.ranges().to_vec()),
        })
    }

    /// The command stream of the job answering chain `token`.
    pub fn job_cmd(&self, token: u64) -> Option<Vec<u8>> {
        self.contexts
            .values()
            .chain(self.zombies.values())
            .flat_map(|c| c.running.iter().chain(c.queue.iter()))
            .find(|j| j.token == token)
            .map(|j| j.cmd.clone())
    }

    /// The out-fence of the job answering chain `token`.
    pub fn job_fence(&self, token: u64) -> Option<u64> {
        self.contexts
            .values()
            .chain(self.zombies.values())
            .flat_map(|c| c.running.iter().chain(c.queue.iter()))
            .find(|j| j.token == token)
            .map(|j| j.out_fence)
    }

    /// Answers of jobs that are over, not taken for their rings yet:
    /// `(token, encoded response)`.
    pub fn pending_answers(&self) -> Vec<(u64, Vec<u8>)> {
        self.completions
            .iter()
            .map(|c| (c.token, c.response.encode()))
            .collect()
    }

    /// Answers chain `token`, a job of context `ctx` that was destroyed
    /// while the job ran, as such a job is answered: cancelled.
    pub fn answer_orphan(&mut self, token: u64, ctx: u32, fence: u64) {
        self.completions.push(Completion {
            token,
            response: Response::Submit(RespSubmit {
                hdr: Hdr::new(VIRTIO_ACCEL_RESP_ERR_CANCELED, ctx),
                fence: fence.into(),
                device_time_ns: 0.into(),
            }),
        });
    }

    /// Ids of the live contexts and the buffers of each.
    pub fn object_ids(&self) -> Vec<(u32, Vec<u32>)> {
        self.contexts
            .iter()
            .map(|(&id, c)| (id, c.bos.keys().copied().collect()))
            .collect()
    }

    /// Device-wide fields: acknowledged features, the next context id,
    /// pending events.
    pub fn meta_record(&self) -> (u64, u32, Vec<EventState>) {
        let s = self.snapshot_meta();
        (s.features, s.next_ctx, s.events)
    }

    fn snapshot_meta(&self) -> DeviceState {
        DeviceState {
            features: self.features,
            next_ctx: self.next_ctx,
            contexts: Vec::new(),
            events: self
                .events
                .iter()
                .map(|e| EventState {
                    ctx: e.hdr.ctx_id.get(),
                    fence: e.fence.get(),
                    reason: e.reason.get(),
                })
                .collect(),
            answers: Vec::new(),
        }
    }

    /// Checks what can be checked without guest memory or the NPU: limits,
    /// handles, fences, answers.
    pub fn check_state(&self, s: &DeviceState) -> Result<(), StateError> {
        let l = &self.limits;
        let limit = |what: &str, n: u64, max: u64| {
            if n > max {
                Err(StateError::Limits(format!(
                    "{n} {what}, this daemon allows {max}"
                )))
            } else {
                Ok(())
            }
        };
        limit("contexts", s.contexts.len() as u64, l.max_contexts.into())?;
        let bos = s.contexts.iter().flat_map(|c| &c.bos);
        limit("buffers", bos.clone().count() as u64, l.max_bos.into())?;
        limit(
            "buffer bytes",
            bos.clone().fold(0u64, |a, b| a.saturating_add(b.size)),
            l.max_total_bo_bytes,
        )?;
        limit(
            "backing entries",
            bos.clone()
                .map(|b| b.backing.as_ref().map_or(0, Vec::len) as u64)
                .sum(),
            l.max_backing_entries.into(),
        )?;
        let jobs = s.contexts.iter().flat_map(|c| &c.jobs);
        limit(
            "jobs in flight",
            jobs.clone().count() as u64,
            l.max_jobs_in_flight.into(),
        )?;
        let mut ids = BTreeSet::new();
        let mut tokens = HashSet::new();
        for c in &s.contexts {
            if c.id == 0 || !ids.insert(c.id) {
                return Err(inconsistent(format!("context id {} twice or zero", c.id)));
            }
            if c.completed > c.last_submitted || c.priority > VIRTIO_ACCEL_PRIORITY_HIGH {
                return Err(inconsistent(format!("context {}", c.id)));
            }
            let mut handles = BTreeMap::new();
            for b in &c.bos {
                if b.handle == 0 || handles.insert(b.handle, b).is_some() {
                    return Err(inconsistent(format!("buffer handle {} twice", b.handle)));
                }
                limit("bytes in a buffer", b.size, l.max_bo_size)?;
                if let Some(r) = &b.backing {
                    let len = r.iter().fold(0u64, |a, &(_, n)| a.saturating_add(n.into()));
                    if len != b.size || r.iter().any(|&(a, n)| a.checked_add(n.into()).is_none()) {
                        return Err(inconsistent(format!("backing of buffer {}", b.handle)));
                    }
                }
            }
            let mut fence = c.completed;
            for j in &c.jobs {
                if !tokens.insert(j.token) || j.out_fence <= fence || j.out_fence > c.last_submitted
                {
                    return Err(inconsistent(format!("job of fence {}", j.out_fence)));
                }
                fence = j.out_fence;
                limit("command bytes", j.cmd.len() as u64, l.max_cmd_size.into())?;
                if j.doomed.is_none() {
                    let mut seen = HashSet::new();
                    for &(h, _) in &j.bos {
                        let backed = handles.get(&h).is_some_and(|b| b.backing.is_some());
                        if !backed || !seen.insert(h) {
                            return Err(inconsistent(format!(
                                "job of fence {} lists buffer {h}",
                                j.out_fence
                            )));
                        }
                    }
                }
            }
        }
        for a in &s.answers {
            if !tokens.insert(a.token) {
                return Err(inconsistent(format!("chain {} answered twice", a.token)));
            }
            Response::decode(VIRTIO_ACCEL_CMD_SUBMIT, &a.response)
                .map_err(|e| inconsistent(format!("answer: {e}")))?;
        }
        Ok(())
    }

    /// Puts a saved device model into this empty device: contexts, buffers
    /// imported again over `mem`, jobs prepared again, events and answers.
    /// A job that was on the NPU runs again from its start. Nothing is
    /// created unless every check passes.
    pub fn restore(&mut self, s: &DeviceState, mem: &GuestMem) -> Result<(), StateError> {
        if !self.contexts.is_empty() || !self.zombies.is_empty() {
            return Err(inconsistent("the device is not empty".into()));
        }
        self.check_state(s)?;
        for b in s.contexts.iter().flat_map(|c| &c.bos) {
            if let Some(r) = &b.backing {
                Backing::new(r.clone())
                    .check(mem)
                    .map_err(|e| inconsistent(format!("buffer {}: {e}", b.handle)))?;
            }
        }
        let mut built = BTreeMap::new();
        let result = s.contexts.iter().try_for_each(|c| {
            self.build_context(c)
                .map(|ctx| drop(built.insert(c.id, ctx)))
        });
        if let Err(e) = result {
            for (_, c) in built {
                self.release_context(c);
            }
            return Err(e);
        }
        self.contexts = built;
        self.features = s.features;
        self.next_ctx = s.next_ctx.max(1);
        self.recount();
        for e in &s.events {
            self.push_lost_event(e.ctx, e.fence, e.reason);
        }
        for a in &s.answers {
            if let Ok(response) = Response::decode(VIRTIO_ACCEL_CMD_SUBMIT, &a.response) {
                self.completions.push(Completion {
                    token: a.token,
                    response,
                });
            }
        }
        self.dirty.all = true;
        self.publish_counts();
        Ok(())
    }

    /// One context of a saved state, with its backend context, imported
    /// buffers and prepared jobs; on failure everything it made is given
    /// back.
    fn build_context(&self, s: &ContextState) -> Result<Context<B>, StateError> {
        let hw = self
            .backend
            .create_context(s.priority)
            .map_err(|e| inconsistent(format!("context {}: {e}", s.id)))?;
        let mut c = Context::new(s.priority, hw);
        c.next_bo = s.next_bo.max(1);
        c.timeline.last_submitted = s.last_submitted;
        c.timeline.completed = s.completed;
        c.lost = s.lost;
        let built = self
            .build_bos(&mut c, s)
            .and_then(|()| self.build_jobs(&mut c, s));
        match built {
            Ok(()) => Ok(c),
            Err(e) => {
                self.release_context(c);
                Err(e)
            }
        }
    }

    fn build_bos(&self, c: &mut Context<B>, s: &ContextState) -> Result<(), StateError> {
        for b in &s.bos {
            let attached = match &b.backing {
                None => None,
                Some(r) => {
                    let backing = Backing::new(r.clone());
                    let imported = self
                        .backend
                        .import(&c.hw, &backing, &self.mem)
                        .map_err(|e| inconsistent(format!("buffer {}: {e}", b.handle)))?;
                    Some(Attached {
                        backing,
                        buffer: imported.buffer,
                    })
                }
            };
            c.bos.insert(
                b.handle,
                Bo {
                    size: b.size,
                    flags: b.flags,
                    attached,
                    busy: 0,
                },
            );
        }
        Ok(())
    }

    fn build_jobs(&self, c: &mut Context<B>, s: &ContextState) -> Result<(), StateError> {
        for j in &s.jobs {
            let prepared = match j.doomed {
                Some(_) => None,
                None if c.lost.is_some() => None,
                None => {
                    let mut shapes = Vec::with_capacity(j.bos.len());
                    for &(h, access) in &j.bos {
                        let bo = c.bos.get(&h).ok_or_else(|| inconsistent(format!("{h}")))?;
                        let a = bo
                            .attached
                            .as_ref()
                            .ok_or_else(|| inconsistent(format!("{h}")))?;
                        shapes.push((&a.buffer, access, bo.size));
                    }
                    let p = self
                        .backend
                        .prepare(&c.hw, &j.cmd, &shapes)
                        .map_err(|e| inconsistent(format!("job of fence {}: {e}", j.out_fence)))?;
                    if p.work_bytes > self.limits.max_job_memory {
                        return Err(StateError::Limits(format!(
                            "job of fence {} needs {} bytes of working memory",
                            j.out_fence, p.work_bytes
                        )));
                    }
                    Some(p.job)
                }
            };
            // A job of a lost context ends as the context's other jobs.
            let doomed = j
                .doomed
                .or(c.lost.map(|_| VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST));
            let listed: Vec<u32> = if doomed.is_some() {
                Vec::new()
            } else {
                j.bos.iter().map(|&(h, _)| h).collect()
            };
            for h in &listed {
                if let Some(bo) = c.bos.get_mut(h) {
                    bo.busy += 1;
                }
            }
            c.queue.push_back(Job {
                token: j.token,
                out_fence: j.out_fence,
                prepared,
                bos: listed,
                access: j.bos.iter().map(|&(_, a)| a).collect(),
                cmd: j.cmd.clone(),
                in_fences: j.waits.clone(),
                doomed,
                id: None,
                queued_at: Instant::now(),
            });
        }
        Ok(())
    }

    /// Restores a saved device model's contexts as lost with `reason`,
    /// without buffers or NPU state: every job is answered (lost, or
    /// cancelled if it never could run), each context's loss is told by
    /// event, and the driver may create new contexts. Used when the NPU's
    /// state for the VM is gone (a forwarding backend after a restart) or
    /// a saved state does not fit the guest's memory.
    pub fn restore_lost(&mut self, s: &DeviceState, reason: u32) {
        self.reset();
        self.features = s.features;
        self.next_ctx = s.next_ctx.max(1);
        for cs in s.contexts.iter().take(self.limits.max_contexts as usize) {
            let Ok(hw) = self.backend.create_context(cs.priority) else {
                continue;
            };
            let mut c = Context::new(cs.priority, hw);
            c.next_bo = cs.next_bo.max(1);
            c.timeline.last_submitted = cs.last_submitted;
            c.timeline.completed = cs.completed.min(cs.last_submitted);
            c.lost = Some(cs.lost.unwrap_or(reason));
            for j in cs.jobs.iter().take(self.limits.max_jobs_in_flight as usize) {
                let status = j.doomed.unwrap_or(VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST);
                self.completions.push(Completion {
                    token: j.token,
                    response: Response::Submit(RespSubmit {
                        hdr: Hdr::new(status, cs.id),
                        fence: j.out_fence.into(),
                        device_time_ns: 0.into(),
                    }),
                });
            }
            let completed = c.timeline.completed;
            self.contexts.insert(cs.id, c);
            self.push_lost_event(cs.id, completed, cs.lost.unwrap_or(reason));
        }
        for a in &s.answers {
            if let Ok(response) = Response::decode(VIRTIO_ACCEL_CMD_SUBMIT, &a.response) {
                self.completions.push(Completion {
                    token: a.token,
                    response,
                });
            }
        }
        self.publish_counts();
    }

    /// Recomputes the counts kept beside the objects.
    fn recount(&mut self) {
        let bos = self.contexts.values().flat_map(|c| c.bos.values());
        self.bo_count = bos.clone().count();
        self.bo_bytes = bos.clone().fold(0, |a, b| a.saturating_add(b.size));
        self.backing_entries = bos.map(Bo::entries).sum();
        self.jobs_in_flight = self.contexts.values().map(|c| c.jobs() as u32).sum::<u32>();
    }
}
