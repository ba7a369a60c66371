//! Serving the rings: chains taken apart and handed to the device model,
//! responses written back, jobs' answers written into their parked chains,
//! events into eventq buffers. Every chain taken is completed exactly once;
//! a ring that is not running is not touched.

use std::sync::atomic::Ordering;

use vhost_user_backend::VringT;
use virtio_accel_protocol::*;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestAddressSpace;
use zerocopy::IntoBytes;

use super::{lock, AccelBackend, GlueError, Parked, Vring};
use crate::backend::Backend;
use crate::device::Outcome;
use crate::memory::GuestMem;
use crate::queue::{self, WriteArea};

/// A used entry to write: `bytes` into the chain's writable area (none
/// for a used length of zero).
pub(super) struct Answer {
    pub head: u16,
    pub write: WriteArea,
    pub bytes: Vec<u8>,
}

impl<B: Backend> AccelBackend<B> {
    /// Writes a pass's answers into queue `q` in order, once what led to
    /// them is kept on disk (`--state-dir`), and notifies the driver.
    pub(super) fn publish(
        &self,
        q: u16,
        vring: &Vring,
        mem: &GuestMem,
        answers: Vec<Answer>,
    ) -> Result<(), GlueError> {
        if answers.is_empty() {
            return Ok(());
        }
        self.persist(q, vring, &answers)?;
        let written = self.written(q);
        for a in &answers {
            let used = a.write.write(mem, &a.bytes, written);
            self.add_used(q, vring, a.head, used);
        }
        self.answered(q, vring, answers.len());
        self.notify(q, vring);
        Ok(())
    }
    /// The counter of bytes written into queue `q`'s buffers.
    pub(super) fn written(&self, q: u16) -> &std::sync::atomic::AtomicU64 {
        let stats = &self.inner.ring_stats;
        if q == VIRTIO_ACCEL_VQ_EVENT {
            &stats.event_written
        } else {
            &stats.response_written
        }
    }

    /// Tells the driver about used buffers, honouring EVENT_IDX.
    pub(super) fn notify(&self, q: u16, vring: &Vring) {
        let needed = if self.inner.event_idx.load(Ordering::Relaxed) {
            vring.needs_notification().unwrap_or(true)
        } else {
            true
        };
        if needed {
            if let Err(e) = vring.signal_used_queue() {
                tracing::warn!("queue {q}: notifying the driver: {e}");
            }
        }
    }

    /// Returns a used chain. A head the queue refuses is logged, never
    /// fatal: the chains after it are still answered.
    pub(super) fn add_used(&self, q: u16, vring: &Vring, head: u16, used: u32) {
        if let Err(e) = vring.add_used(head, used) {
            tracing::warn!("queue {q}: returning chain {head}: {e}");
        }
    }

    /// Drains a request queue: disable notifications, process, re-enable,
    /// and go again if the driver added chains meanwhile.
    /// A bounded number of passes per wake-up: chains added while they
    /// run (by the driver, or by responses a driver pointed at its own
    /// avail ring) are taken on a later wake-up (see `MORE_WORK`), so one
    /// event never keeps this thread for an unbounded time.
    pub(super) fn drain_queue(&self, q: u16, vring: &Vring) -> Result<(), GlueError> {
        const PASSES: usize = 4;
        if self.inner.event_idx.load(Ordering::Relaxed) {
            for _ in 0..PASSES {
                vring
                    .disable_notification()
                    .map_err(|e| GlueError::Ring(q, e))?;
                self.process_queue(q, vring)?;
                if !vring
                    .enable_notification()
                    .map_err(|e| GlueError::Ring(q, e))?
                {
                    return Ok(());
                }
            }
            // More is available: come back through the completion eventfd.
            self.inner.more.fetch_or(1 << q, Ordering::Relaxed);
            let _ = self.inner.vm.completion.write(1);
        } else {
            self.process_queue(q, vring)?;
        }
        Ok(())
    }

    /// The heads of the chains the driver made available, with the queue's
    /// descriptor table and size. An avail index the queue refuses (more
    /// chains than entries) breaks the ring.
    pub(super) fn pop_heads(
        &self,
        q: u16,
        vring: &Vring,
        mem: &GuestMem,
    ) -> Result<(u64, u16, Vec<u16>), GlueError> {
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        let (table, size) = (queue.desc_table(), queue.size());
        let heads = queue
            .iter(mem)
            .map_err(|e| GlueError::Ring(q, e))?
            .map(|c| c.head_index())
            .collect();
        Ok((table, size, heads))
    }

    pub(super) fn process_queue(&self, q: u16, vring: &Vring) -> Result<(), GlueError> {
        let mem = self.inner.vm.mem.mem.memory();
        let (table, size, heads) = self.pop_heads(q, vring, &mem)?;
        if heads.is_empty() {
            return Ok(());
        }
        let max = self.inner.config.max_request_bytes();
        let limits = self.inner.config.decode_limits();
        let mut queued = false;
        let mut answers = Vec::new();
        for head in heads {
            if head >= size {
                // No used entry can name it; the chains after it go on.
                tracing::warn!("queue {q}: avail entry names descriptor {head} of {size}");
                continue;
            }
            let stats = &self.inner.ring_stats;
            let mut split = queue::split(&mem, table, size, head, max, stats);
            let decoded = match &split.error {
                Some(e) => {
                    tracing::debug!("queue {q}: malformed chain {head}: {e}");
                    Err(None)
                }
                None => Request::decode(&split.request, &limits).map_err(Some),
            };
            let response = match decoded {
                Err(e) => {
                    let hdr = request::peek_hdr(&split.request).unwrap_or_default();
                    let status = e.map_or(VIRTIO_ACCEL_RESP_ERR_INVALID, |e| {
                        tracing::debug!("queue {q}: bad request: {e}");
                        e.status()
                    });
                    Response::error(hdr.type_.get(), hdr.ctx_id.get(), status)
                }
                Ok(req) if split.write.len() < req.response_size() => {
                    // Validate, then act: a request whose answer cannot be
                    // written is refused before it changes anything.
                    let hdr = req.hdr();
                    Response::error(
                        hdr.type_.get(),
                        hdr.ctx_id.get(),
                        VIRTIO_ACCEL_RESP_ERR_INVALID,
                    )
                }
                Ok(req) => {
                    let ctx_id = req.hdr().ctx_id.get();
                    let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
                    // A parked chain keeps only what its response needs.
                    split.write.truncate(req.response_size());
                    // Park first: the job may complete before this returns.
                    lock(&self.inner.parked)?.insert(
                        token,
                        Parked {
                            head,
                            write: split.write.clone(),
                            ctx_id,
                        },
                    );
                    let outcome = self.device()?.handle(q, req, &mem, token);
                    match outcome {
                        Outcome::Queued => {
                            queued = true;
                            self.chain_parked(token);
                            continue;
                        }
                        Outcome::Respond(r) => {
                            lock(&self.inner.parked)?.remove(&token);
                            r
                        }
                    }
                }
            };
            let ctx = response.hdr().ctx_id.get();
            answers.push(Answer {
                head,
                bytes: split.write.fit(&response.encode(), ctx),
                write: split.write,
            });
        }
        if queued {
            self.inner.sched.kick();
        }
        if answers.is_empty() {
            // Queued jobs still need their chains kept on disk.
            self.persist(q, vring, &[])?;
        }
        self.publish(q, vring, &mem, answers)
    }

    /// Completes the submit chains whose jobs finished.
    pub(super) fn complete_jobs(&self, vring: &Vring) -> Result<(), GlueError> {
        if !vring.running() {
            // Answered once the ring runs again.
            return Ok(());
        }
        let done = self.device()?.take_completions();
        if done.is_empty() {
            return Ok(());
        }
        let mem = self.inner.vm.mem.mem.memory();
        let mut answers = Vec::with_capacity(done.len());
        for c in done {
            let Some(p) = lock(&self.inner.parked)?.remove(&c.token) else {
                continue;
            };
            self.chain_done(c.token);
            answers.push(Answer {
                head: p.head,
                bytes: p.write.fit(&c.response.encode(), p.ctx_id),
                write: p.write,
            });
        }
        self.publish(VIRTIO_ACCEL_VQ_SUBMIT, vring, &mem, answers)
    }

    /// Moves pending events into eventq buffers.
    pub(super) fn deliver_events(&self, vring: &Vring) -> Result<(), GlueError> {
        const Q: u16 = VIRTIO_ACCEL_VQ_EVENT;
        if self.is_broken(Q) || !vring.running() {
            return Ok(());
        }
        let mem = self.inner.vm.mem.mem.memory();
        let mut answers = Vec::new();
        // At most a queue's worth of buffers per call: a driver that keeps
        // offering unusable buffers cannot hold this thread here.
        let mut budget = usize::from(vring.get_ref().get_queue().size());
        loop {
            if budget == 0 {
                break;
            }
            budget -= 1;
            let Some(ev) = self.device()?.pop_event() else {
                break;
            };
            let next = {
                let mut state = vring.get_mut();
                let queue = state.get_queue_mut();
                let (table, size) = (queue.desc_table(), queue.size());
                queue
                    .iter(&*mem)
                    .map_err(|e| GlueError::Ring(Q, e))
                    .map(|mut it| it.next().map(|c| (table, size, c.head_index())))
            };
            let (table, size, head) = match next {
                Ok(Some(n)) => n,
                Ok(None) => {
                    self.device()?.unpop_event(ev);
                    break;
                }
                Err(e) => {
                    self.device()?.unpop_event(ev);
                    return Err(e);
                }
            };
            if head >= size {
                tracing::warn!("eventq: avail entry names descriptor {head} of {size}");
                self.device()?.unpop_event(ev);
                continue;
            }
            let stats = &self.inner.ring_stats;
            let split = queue::split(&mem, table, size, head, 0, stats);
            // Only a whole event is written; `respond`'s short-buffer
            // fallback is a response header, not an event.
            let fits = split.error.is_none() && split.write.len() >= ev.as_bytes().len();
            let bytes = if fits {
                ev.as_bytes().to_vec()
            } else {
                Vec::new()
            };
            answers.push(Answer {
                head,
                write: split.write,
                bytes,
            });
            if !fits {
                // Unusable buffer: the event waits for the next one.
                self.device()?.unpop_event(ev);
            }
        }
        self.publish(Q, vring, &mem, answers)?;
        // With EVENT_IDX, publish how far the device has read so the
        // driver notifies it when it adds buffers; without this its
        // refills after the first events are never kicked.
        vring
            .enable_notification()
            .map_err(|e| GlueError::Ring(Q, e))?;
        Ok(())
    }

    pub(super) fn is_broken(&self, q: u16) -> bool {
        self.inner.broken.load(Ordering::Relaxed) & (1 << q) != 0
    }
}
