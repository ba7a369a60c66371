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
use crate::queue;

impl<B: Backend> AccelBackend<B> {
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
            let used = split
                .write
                .respond(&mem, &response.encode(), ctx, &stats.response_written);
            self.add_used(q, vring, head, used);
        }
        if queued {
            self.inner.sched.kick();
        }
        self.notify(q, vring);
        Ok(())
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
        for c in done {
            let Some(p) = lock(&self.inner.parked)?.remove(&c.token) else {
                continue;
            };
            let used = p.write.respond(
                &mem,
                &c.response.encode(),
                p.ctx_id,
                &self.inner.ring_stats.response_written,
            );
            self.add_used(VIRTIO_ACCEL_VQ_SUBMIT, vring, p.head, used);
        }
        self.notify(VIRTIO_ACCEL_VQ_SUBMIT, vring);
        Ok(())
    }

    /// Moves pending events into eventq buffers.
    pub(super) fn deliver_events(&self, vring: &Vring) -> Result<(), GlueError> {
        const Q: u16 = VIRTIO_ACCEL_VQ_EVENT;
        if self.is_broken(Q) || !vring.running() {
            return Ok(());
        }
        let mem = self.inner.vm.mem.mem.memory();
        let mut delivered = false;
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
            let used = if split.error.is_none() && split.write.len() >= ev.as_bytes().len() {
                split.write.respond(
                    &mem,
                    ev.as_bytes(),
                    ev.hdr.ctx_id.get(),
                    &stats.event_written,
                )
            } else {
                0
            };
            self.add_used(Q, vring, head, used);
            delivered = true;
            if used == 0 {
                // Unusable buffer: the event waits for the next one.
                self.device()?.unpop_event(ev);
            }
        }
        // With EVENT_IDX, publish how far the device has read so the
        // driver notifies it when it adds buffers; without this its
        // refills after the first events are never kicked.
        vring
            .enable_notification()
            .map_err(|e| GlueError::Ring(Q, e))?;
        if delivered {
            self.notify(Q, vring);
        }
        Ok(())
    }

    pub(super) fn is_broken(&self, q: u16) -> bool {
        self.inner.broken.load(Ordering::Relaxed) & (1 << q) != 0
    }
}
