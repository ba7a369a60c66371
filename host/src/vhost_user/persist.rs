//! Keeping the VM's device on disk (`--state-dir`) and taking it back
//! after the daemon was restarted.
//!
//! The rule that makes a restart exact: **before the device writes a used
//! entry, everything that led to it is committed** — the state changes of
//! the requests taken so far, how far each queue was taken, the chains the
//! device holds, and the answer itself with the used index it goes to. A
//! daemon that dies between the commit and the write leaves the answer
//! recorded; one that dies before the commit leaves chains that were taken
//! but whose effects no guest saw.
//!
//! On reconnect a frontend restarts each ring at the used index in guest
//! memory (QEMU re-offers chains taken but not answered). The restored
//! device writes the recorded answers that did not reach the ring, then
//! takes chains from where it had recorded taking them: re-offered chains
//! it holds, or answered, are not taken twice, and chains it held whose
//! answers came out of order are answered from the records. Jobs that
//! were on the NPU run again from their start.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use vhost_user_backend::VringT;
use virtio_accel_protocol::*;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use super::serve::Answer;
use super::{lock, AccelBackend, GlueError, Parked, Vring};
use crate::backend::Backend;
use crate::lifecycle::RingConfig;
use crate::queue::WriteArea;
use crate::state::{AnswerState, DeviceState, ParkedChain, RingState};
use crate::state_dir::{Batch, Chain, Intent, Loaded, QueuePos, Store};

/// The VM's records and what changed since the last commit.
pub(super) struct Persist {
    store: Store,
    /// Answers written since the last commit, whose records can go.
    written: Vec<(u16, u16)>,
    /// Chains parked and answered since the last commit.
    added: BTreeSet<u64>,
    gone: BTreeSet<u64>,
    /// Where the rings are, from their first start.
    rings: Vec<RingState>,
    /// Set once a commit failed: the records are cleared and nothing more
    /// is kept, so that a restart starts afresh rather than from a state
    /// that is not the device's.
    failed: bool,
    /// Commits that carried answers, and the one after which the daemon
    /// dies on purpose (fault injection: `--crash-after-commits`).
    commits: u64,
    crash_after: Option<u64>,
}

impl Persist {
    pub(super) fn new(store: Store, crash_after: Option<u64>) -> Persist {
        Persist {
            store,
            written: Vec::new(),
            added: BTreeSet::new(),
            gone: BTreeSet::new(),
            rings: Vec::new(),
            failed: false,
            commits: 0,
            crash_after,
        }
    }

    pub(super) fn load(&self) -> Option<Loaded> {
        match self.store.load() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("device state on disk: {e}; starting afresh");
                None
            }
        }
    }
}

pub(super) fn ring_state(c: RingConfig) -> RingState {
    RingState {
        size: c.size,
        desc: c.desc,
        avail: c.avail,
        used: c.used,
        next_avail: c.next_avail,
        next_used: c.next_used,
    }
}

/// The same ring, wherever its indexes are.
fn same_place(a: &RingState, b: &RingState) -> bool {
    (a.size, a.desc, a.avail, a.used) == (b.size, b.desc, b.avail, b.used)
}

impl<B: Backend> AccelBackend<B> {
    pub(super) fn chain_parked(&self, token: u64) {
        if let Some(p) = &self.inner.persist {
            if let Ok(mut p) = p.lock() {
                p.added.insert(token);
            }
        }
    }

    pub(super) fn chain_done(&self, token: u64) {
        if let Some(p) = &self.inner.persist {
            if let Ok(mut p) = p.lock() {
                if !p.added.remove(&token) {
                    p.gone.insert(token);
                }
            }
        }
    }

    /// The rings run for the first time on this connection: their place is
    /// what a restart compares with.
    pub(super) fn rings_started(&self, now: &[Option<RingConfig>]) {
        if let Some(p) = &self.inner.persist {
            if let Ok(mut p) = p.lock() {
                p.rings = now.iter().flatten().copied().map(ring_state).collect();
            }
        }
    }

    /// `n` answers were written into queue `q`: their records can go.
    pub(super) fn answered(&self, q: u16, vring: &Vring, n: usize) {
        let Some(p) = &self.inner.persist else {
            return;
        };
        let Ok(mut p) = p.lock() else {
            return;
        };
        let end = vring.get_ref().get_queue().next_used();
        for i in 0..n {
            p.written
                .push((q, end.wrapping_sub(n as u16).wrapping_add(i as u16)));
        }
    }

    /// Commits what changed and `answers` about to be written into queue
    /// `q` (see the module's rule). A commit that fails stops the keeping:
    /// the records are cleared.
    pub(super) fn persist(
        &self,
        q: u16,
        vring: &Vring,
        answers: &[Answer],
    ) -> Result<(), GlueError> {
        let Some(p) = &self.inner.persist else {
            return Ok(());
        };
        let mut p = lock(p)?;
        if p.failed {
            return Ok(());
        }
        let mut b = Batch::default();
        let first = vring.get_ref().get_queue().next_used();
        b.intents = answers
            .iter()
            .enumerate()
            .map(|(i, a)| Intent {
                queue: q,
                pos: first.wrapping_add(i as u16),
                head: a.head,
                write: a.write.ranges(),
                bytes: a.bytes.clone(),
            })
            .collect();
        b.written = std::mem::take(&mut p.written);
        let vrings = self.inner.vrings.get();
        b.meta.queues = vrings
            .map(|v| {
                v.iter()
                    .map(|v| {
                        let s = v.get_ref();
                        QueuePos {
                            next_avail: s.get_queue().next_avail(),
                            next_used: s.get_queue().next_used(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        b.meta.rings = p.rings.clone();
        b.meta.next_token = self.inner.next_token.load(Ordering::Relaxed);
        {
            let mut d = self.device()?;
            let dirty = d.take_dirty();
            let (features, next_ctx, events) = d.meta_record();
            b.meta.features = features;
            b.meta.next_ctx = next_ctx;
            b.meta.events = events;
            if dirty.all {
                b.clear = true;
                for (id, bos) in d.object_ids() {
                    b.contexts.push((id, d.context_record(id)));
                    b.bos
                        .extend(bos.into_iter().map(|h| ((id, h), d.bo_record(id, h))));
                }
            } else {
                b.contexts = dirty
                    .contexts
                    .into_iter()
                    .map(|id| (id, d.context_record(id)))
                    .collect();
                b.bos = dirty
                    .bos
                    .into_iter()
                    .map(|(c, h)| ((c, h), d.bo_record(c, h)))
                    .collect();
            }
            let parked = lock(&self.inner.parked)?;
            let added: Vec<u64> = if b.clear {
                // Every chain still held, after a clear.
                parked.keys().copied().collect()
            } else {
                std::mem::take(&mut p.added).into_iter().collect()
            };
            p.added.clear();
            for token in added {
                let (Some(c), Some(cmd)) = (parked.get(&token), d.job_cmd(token)) else {
                    continue;
                };
                let fence = d.job_fence(token).unwrap_or(0);
                b.chains.push((
                    token,
                    Some(Chain {
                        parked: ParkedChain {
                            token,
                            head: c.head,
                            ctx: c.ctx_id,
                            write: c.write.ranges(),
                        },
                        fence,
                        cmd,
                        answer: None,
                    }),
                ));
            }
            // Jobs over whose answers wait for their ring: the answer is
            // what a restart owes their chains.
            for (token, answer) in d.pending_answers() {
                let Some(c) = parked.get(&token) else {
                    continue;
                };
                b.chains.push((
                    token,
                    Some(Chain {
                        parked: ParkedChain {
                            token,
                            head: c.head,
                            ctx: c.ctx_id,
                            write: c.write.ranges(),
                        },
                        fence: 0,
                        cmd: Vec::new(),
                        answer: Some(answer),
                    }),
                ));
            }
        }
        b.chains
            .extend(std::mem::take(&mut p.gone).into_iter().map(|t| (t, None)));
        if let Err(e) = p.store.commit(&b) {
            tracing::error!("keeping the device state: {e}; it is no longer kept");
            p.failed = true;
            let _ = p.store.clear();
        }
        if !answers.is_empty() {
            p.commits += 1;
            if p.crash_after == Some(p.commits) {
                // Between the commit and the answers: what a restart must
                // make good.
                tracing::warn!("crashing on purpose after commit {}", p.commits);
                std::process::abort();
            }
        }
        Ok(())
    }

    /// Forgets the records: the VM's device is gone (a disconnect).
    pub(super) fn forget(&self) {
        if let Some(p) = &self.inner.persist {
            if let Ok(mut p) = p.lock() {
                if let Err(e) = p.store.clear() {
                    tracing::warn!("clearing the device state: {e}");
                }
                p.added.clear();
                p.gone.clear();
                p.written.clear();
            }
        }
    }

    /// Takes back what a previous daemon recorded, now that every ring
    /// runs at `now`. Rings elsewhere, or used indexes that do not follow
    /// from the records, mean the driver set the device up anew: the
    /// records are dropped.
    pub(super) fn restore_restarted(
        &self,
        l: Loaded,
        now: [Option<RingConfig>; VIRTIO_ACCEL_NUM_QUEUES],
    ) -> Result<(), GlueError> {
        let here: Vec<RingState> = now.iter().flatten().copied().map(ring_state).collect();
        let placed = here.len() == l.meta.rings.len()
            && here
                .iter()
                .zip(&l.meta.rings)
                .all(|(a, b)| same_place(a, b));
        let Some(vrings) = self.inner.vrings.get() else {
            return Ok(());
        };
        let mem = self.inner.vm.mem.mem.memory();
        // How many recorded answers each ring already shows.
        let mut replay = Vec::new();
        let mut consistent = placed && l.meta.queues.len() == VIRTIO_ACCEL_NUM_QUEUES;
        for (q, pos) in l.meta.queues.iter().enumerate() {
            let Some(ring) = here.get(q) else {
                consistent = false;
                break;
            };
            let mine: Vec<&Intent> = l
                .intents
                .iter()
                .filter(|i| usize::from(i.queue) == q)
                .collect();
            let shown = ring.next_used.wrapping_sub(pos.next_used);
            // The driver cannot have offered fewer chains than the device
            // took, nor more than a ring's worth beyond them.
            let offered = vrings
                .get(q)
                .and_then(|v| {
                    v.get_ref()
                        .get_queue()
                        .avail_idx(&*mem, Ordering::Acquire)
                        .ok()
                })
                .map_or(u16::MAX, |a| a.0.wrapping_sub(pos.next_avail));
            if usize::from(shown) > mine.len() || offered > ring.size {
                consistent = false;
                break;
            }
            replay.extend(mine.into_iter().skip(usize::from(shown)).cloned());
        }
        if !consistent {
            tracing::warn!("the rings are not those of the recorded device state; it is dropped");
            self.forget();
            return Ok(());
        }
        // Answers recorded but not in their ring yet.
        for i in &replay {
            let Some(v) = vrings.get(usize::from(i.queue)) else {
                continue;
            };
            let used =
                WriteArea::from_ranges(&i.write).write(&mem, &i.bytes, self.written(i.queue));
            self.add_used(i.queue, v, i.head, used);
            if let Some(p) = &self.inner.persist {
                lock(p)?.written.push((i.queue, i.pos));
            }
        }
        // Chains are taken from where they were recorded taken.
        for (v, pos) in vrings.iter().zip(&l.meta.queues) {
            v.set_queue_next_avail(pos.next_avail);
        }
        let job_tokens: BTreeSet<u64> = l
            .contexts
            .iter()
            .flat_map(|c| c.jobs.iter().map(|j| j.token))
            .collect();
        let answers: Vec<AnswerState> = l
            .chains
            .iter()
            .filter_map(|c| {
                c.answer.clone().map(|response| AnswerState {
                    token: c.parked.token,
                    response,
                })
            })
            .collect();
        let device = DeviceState {
            features: l.meta.features,
            next_ctx: l.meta.next_ctx,
            contexts: l.contexts,
            events: l.meta.events,
            answers,
        };
        {
            let mut d = self.device()?;
            if let Err(e) = d.restore(&device, &mem) {
                tracing::error!("restoring the device state: {e}; its contexts are reported lost");
                d.restore_lost(&device, VIRTIO_ACCEL_LOST_RESET);
            }
            // Jobs of contexts destroyed while they ran: their answer.
            let orphan = |c: &&Chain| c.answer.is_none() && !job_tokens.contains(&c.parked.token);
            for c in l.chains.iter().filter(orphan) {
                tracing::info!(
                    "chain of context {} fence {}: its context is gone; cancelled",
                    c.parked.ctx,
                    c.fence
                );
                d.answer_orphan(c.parked.token, c.parked.ctx, c.fence);
            }
        }
        let mut parked = lock(&self.inner.parked)?;
        for c in l.chains {
            parked.insert(
                c.parked.token,
                Parked {
                    head: c.parked.head,
                    write: WriteArea::from_ranges(&c.parked.write),
                    ctx_id: c.parked.ctx,
                },
            );
        }
        drop(parked);
        self.inner
            .next_token
            .fetch_max(l.meta.next_token, Ordering::Relaxed);
        tracing::info!(
            "device state restored: {} contexts, {} answers written again",
            device.contexts.len(),
            replay.len()
        );
        self.inner.sched.kick();
        Ok(())
    }
}
