//! How the NPU is shared: the whole policy, free of threads, clocks and
//! backends, so it can be driven with synthetic job costs.
//!
//! - **Across VMs**, by device time and weight: each VM has a virtual time,
//!   the device time it used divided by its weight. The VM with the least
//!   virtual time runs next, and a running job is preempted once its VM is
//!   more than one quantum ahead of a VM that waits. A VM that was idle
//!   comes back at most one quantum behind the VMs that kept the NPU busy:
//!   idleness earns no credit.
//! - **Within a VM**: the highest context priority first, then the same
//!   virtual-time rule between contexts of equal priority (unweighted).
//!
//! Device time is charged when a slice ends ([`Policy::stopped`]); a slice
//! on the NPU now counts as one quantum until then, so several engines
//! picking at once do not all pick the same VM.

use std::collections::BTreeMap;

/// A VM as the policy knows it.
pub type VmKey = u64;

/// Weights are 1 to this.
pub const MAX_WEIGHT: u32 = 10_000;

/// Scale of virtual time: device ns × `SCALE` / weight.
const SCALE: u128 = MAX_WEIGHT as u128;

/// Work that could run now: the next job of a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub vm: VmKey,
    pub ctx: u32,
    pub priority: u32,
}

/// A slice on the NPU now and how long it has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    pub job: Candidate,
    pub elapsed_ns: u64,
}

#[derive(Debug, Default)]
struct Share {
    /// Virtual time (weighted for VMs, plain ns for contexts).
    vtime: u128,
    /// Slices on the NPU now.
    in_flight: u32,
}

#[derive(Debug)]
struct Vm {
    weight: u32,
    share: Share,
    ctxs: BTreeMap<u32, Share>,
    /// The virtual time of the context picked last.
    ctx_clock: u128,
    device_ns: u64,
    /// Size of `ctxs` at which idle contexts are forgotten.
    prune_at: usize,
}

/// The smallest context table that is pruned.
const MIN_PRUNE: usize = 64;

#[derive(Debug)]
pub struct Policy {
    quantum_ns: u64,
    vms: BTreeMap<VmKey, Vm>,
    /// The virtual time of the VM picked last: where the busy VMs are.
    clock: u128,
}

fn scaled(ns: u64, weight: u32) -> u128 {
    u128::from(ns) * SCALE / u128::from(weight.max(1))
}

impl Policy {
    /// A policy that preempts at `quantum_ns` of lead.
    pub fn new(quantum_ns: u64) -> Policy {
        Policy {
            quantum_ns: quantum_ns.max(1),
            vms: BTreeMap::new(),
            clock: 0,
        }
    }

    /// Adds a VM with a weight (1 to [`MAX_WEIGHT`]); it starts where the
    /// busy VMs are.
    pub fn add_vm(&mut self, vm: VmKey, weight: u32) {
        let weight = weight.clamp(1, MAX_WEIGHT);
        self.vms.insert(
            vm,
            Vm {
                weight,
                share: Share {
                    vtime: self.clock,
                    in_flight: 0,
                },
                ctxs: BTreeMap::new(),
                ctx_clock: 0,
                device_ns: 0,
                prune_at: MIN_PRUNE,
            },
        );
    }

    pub fn remove_vm(&mut self, vm: VmKey) {
        self.vms.remove(&vm);
    }

    pub fn has_vm(&self, vm: VmKey) -> bool {
        self.vms.contains_key(&vm)
    }

    /// Contexts the policy remembers for a VM.
    pub fn contexts(&self, vm: VmKey) -> usize {
        self.vms.get(&vm).map_or(0, |v| v.ctxs.len())
    }

    /// Device time charged to a VM so far.
    pub fn device_ns(&self, vm: VmKey) -> u64 {
        self.vms.get(&vm).map_or(0, |v| v.device_ns)
    }

    /// A VM's virtual time with its slices in flight counted a quantum
    /// each, and `extra_ns` more.
    fn vm_time(&self, v: &Vm, extra_ns: u64) -> u128 {
        let pending = u64::from(v.share.in_flight).saturating_mul(self.quantum_ns);
        v.share.vtime + scaled(pending.saturating_add(extra_ns), v.weight)
    }

    /// The floor an idle VM or context comes back at.
    fn floor(clock: u128, lag: u128) -> u128 {
        clock.saturating_sub(lag)
    }

    /// Picks which candidate runs next and counts its slice in flight.
    pub fn pick(&mut self, cands: &[Candidate]) -> Option<usize> {
        let i = self.best(cands)?;
        let c = *cands.get(i)?;
        let q = self.quantum_ns;
        if let Some(v) = self.vms.get_mut(&c.vm) {
            self.clock = self.clock.max(v.share.vtime);
            v.share.in_flight += 1;
            v.ctx_clock = v.ctx_clock.max(v.ctxs.get(&c.ctx).map_or(0, |s| s.vtime));
            let floor = Self::floor(v.ctx_clock, u128::from(q));
            let s = v.ctxs.entry(c.ctx).or_default();
            s.vtime = s.vtime.max(floor);
            s.in_flight += 1;
        }
        Some(i)
    }

    /// Raises idle VMs and contexts to their floor before comparing.
    fn catch_up(&mut self, cands: &[Candidate]) {
        let q = self.quantum_ns;
        for c in cands {
            if let Some(v) = self.vms.get_mut(&c.vm) {
                if v.share.in_flight == 0 {
                    let floor = Self::floor(self.clock, scaled(q, v.weight));
                    v.share.vtime = v.share.vtime.max(floor);
                }
                let floor = Self::floor(v.ctx_clock, u128::from(q));
                let s = v.ctxs.entry(c.ctx).or_default();
                if s.in_flight == 0 {
                    s.vtime = s.vtime.max(floor);
                }
            }
        }
    }

    /// The candidate to run first: the VM least ahead, then within it the
    /// highest priority and the context least ahead. Ties go to the lower
    /// VM key and context id.
    fn best(&mut self, cands: &[Candidate]) -> Option<usize> {
        self.catch_up(cands);
        let key = |c: &Candidate| {
            let v = self.vms.get(&c.vm)?;
            let cv = v.ctxs.get(&c.ctx).map_or(0, |s| s.vtime);
            let pending = u128::from(v.ctxs.get(&c.ctx).map_or(0, |s| s.in_flight))
                * u128::from(self.quantum_ns);
            Some((
                self.vm_time(v, 0),
                c.vm,
                std::cmp::Reverse(c.priority),
                cv + pending,
                c.ctx,
            ))
        };
        cands
            .iter()
            .enumerate()
            .filter_map(|(i, c)| key(c).map(|k| (k, i)))
            .min()
            .map(|(_, i)| i)
    }

    /// Ends a slice of `job` that used `ns` of device time.
    pub fn stopped(&mut self, job: Candidate, ns: u64) {
        let Some(v) = self.vms.get_mut(&job.vm) else {
            return;
        };
        v.share.in_flight = v.share.in_flight.saturating_sub(1);
        v.share.vtime += scaled(ns, v.weight);
        v.device_ns = v.device_ns.saturating_add(ns);
        if let Some(s) = v.ctxs.get_mut(&job.ctx) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.vtime += u128::from(ns);
        }
        // Contexts come and go (a guest may create and destroy them in a
        // loop): once the table has doubled, it keeps only the contexts on
        // the NPU. A forgotten context comes back at the floor, at most a
        // quantum of credit; the cost is amortised over the insertions.
        if v.ctxs.len() > v.prune_at {
            v.ctxs.retain(|_, s| s.in_flight > 0);
            v.prune_at = (2 * v.ctxs.len()).max(MIN_PRUNE);
        }
    }

    /// Whether to preempt one of the running slices so that a waiting
    /// candidate can run: the slice furthest ahead of the best candidate by
    /// more than a quantum (of its VM's, or of its context's within a VM),
    /// or a slice of lower priority than a waiting context of its VM. If
    /// none is yet, how much longer the slices may run before one is.
    pub fn preempt(&mut self, running: &[Running], waiting: &[Candidate]) -> Preempt {
        let Some(w) = self.best(waiting).and_then(|i| waiting.get(i).copied()) else {
            return Preempt::Never;
        };
        let Some(wv) = self.vms.get(&w.vm) else {
            return Preempt::Never;
        };
        let w_time = self.vm_time(wv, 0);
        let w_ctx = wv.ctxs.get(&w.ctx).map_or(0, |s| s.vtime);
        let q = self.quantum_ns;
        let mut best: Option<(u128, usize)> = None;
        let mut soonest: Option<u64> = None;
        for (i, r) in running.iter().enumerate() {
            let Some(rv) = self.vms.get(&r.job.vm) else {
                continue;
            };
            // (how far the slice is ahead, the weight its run time counts
            // with; 0 for a context's plain ns)
            let (ahead, behind, weight) = if r.job.vm != w.vm {
                // This slice counts as what it ran, not as a quantum.
                let r_time = self
                    .vm_time(rv, r.elapsed_ns)
                    .saturating_sub(scaled(q, rv.weight));
                (r_time, w_time + scaled(q, rv.weight), rv.weight)
            } else if w.priority > r.job.priority {
                return Preempt::Now(i);
            } else if w.priority < r.job.priority {
                continue;
            } else {
                let r_ctx =
                    rv.ctxs.get(&r.job.ctx).map_or(0, |s| s.vtime) + u128::from(r.elapsed_ns);
                (r_ctx, w_ctx + u128::from(q), 0)
            };
            match ahead.checked_sub(behind) {
                Some(l) if l > 0 => {
                    if best.is_none_or(|(b, _)| l > b) {
                        best = Some((l, i));
                    }
                }
                _ => {
                    // The run time after which `ahead` passes `behind`.
                    let gap = behind.saturating_sub(ahead);
                    let ns = if weight == 0 {
                        gap
                    } else {
                        (gap * u128::from(weight)).div_ceil(SCALE)
                    } + 1;
                    let ns = u64::try_from(ns).unwrap_or(u64::MAX);
                    soonest = Some(soonest.map_or(ns, |s| s.min(ns)));
                }
            }
        }
        match (best, soonest) {
            (Some((_, i)), _) => Preempt::Now(i),
            (None, Some(ns)) => Preempt::After(ns),
            (None, None) => Preempt::Never,
        }
    }
}

/// What [`Policy::preempt`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preempt {
    /// Preempt running slice `i` now.
    Now(usize),
    /// Ask again once the slices have run this many more ns (unless
    /// something changes first).
    After(u64),
    /// No running slice is to make way for the waiting ones.
    Never,
}

#[cfg(test)]
mod tests;
