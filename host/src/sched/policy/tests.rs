//! The policy driven by a discrete simulation of engines and job costs:
//! no threads, no clocks. Each tick is one tile of work, the granularity
//! at which a preempted slice stops.

use super::*;

const TICK: u64 = 100_000; // ns: one tile
const QUANTUM: u64 = 1_000_000;

/// A context that always has its next job ready, of `cost(n)` ns.
struct Ctx {
    vm: VmKey,
    id: u32,
    priority: u32,
    cost: Box<dyn Fn(u64) -> u64>,
    jobs: u64,
    /// Device time left of its current job, if one started.
    left: Option<u64>,
    /// Tick the current job became ready.
    ready_at: u64,
    max_wait: u64,
    on_engine: bool,
    /// Ticks between a job's end and the next job's submission (the
    /// guest's round trip).
    think: u64,
}

struct Slice {
    ctx: usize,
    ran: u64,
    preempt_at: Option<u64>,
}

struct Sim {
    policy: Policy,
    ctxs: Vec<Ctx>,
    engines: Vec<Option<Slice>>,
    used: BTreeMap<VmKey, u64>,
    now: u64,
    preemptions: u64,
}

impl Sim {
    fn new(engines: usize) -> Sim {
        Sim {
            policy: Policy::new(QUANTUM),
            ctxs: Vec::new(),
            engines: (0..engines).map(|_| None).collect(),
            used: BTreeMap::new(),
            now: 0,
            preemptions: 0,
        }
    }

    fn vm(&mut self, vm: VmKey, weight: u32) {
        self.policy.add_vm(vm, weight);
    }

    fn ctx(&mut self, vm: VmKey, priority: u32, cost: impl Fn(u64) -> u64 + 'static) {
        let id = self.ctxs.len() as u32 + 1;
        self.ctxs.push(Ctx {
            vm,
            id,
            priority,
            cost: Box::new(cost),
            jobs: 0,
            left: None,
            ready_at: self.now,
            max_wait: 0,
            on_engine: false,
            think: 0,
        });
    }

    fn cand(&self, i: usize) -> Candidate {
        let c = &self.ctxs[i];
        Candidate {
            vm: c.vm,
            ctx: c.id,
            priority: c.priority,
        }
    }

    fn waiting(&self) -> Vec<usize> {
        (0..self.ctxs.len())
            .filter(|&i| !self.ctxs[i].on_engine && self.ctxs[i].ready_at <= self.now)
            .collect()
    }

    /// Runs `ticks` ticks.
    fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.fill();
            self.preempt();
            self.advance();
        }
    }

    fn fill(&mut self) {
        for e in 0..self.engines.len() {
            if self.engines[e].is_some() {
                continue;
            }
            let w = self.waiting();
            let cands: Vec<Candidate> = w.iter().map(|&i| self.cand(i)).collect();
            let Some(k) = self.policy.pick(&cands) else {
                return;
            };
            let i = w[k];
            let c = &mut self.ctxs[i];
            if c.left.is_none() {
                c.left = Some((c.cost)(c.jobs).max(1));
                c.max_wait = c.max_wait.max(self.now - c.ready_at);
            }
            c.on_engine = true;
            self.engines[e] = Some(Slice {
                ctx: i,
                ran: 0,
                preempt_at: None,
            });
        }
    }

    fn preempt(&mut self) {
        let w = self.waiting();
        if w.is_empty() {
            return;
        }
        let cands: Vec<Candidate> = w.iter().map(|&i| self.cand(i)).collect();
        let idx: Vec<usize> = (0..self.engines.len())
            .filter(|&e| {
                self.engines[e]
                    .as_ref()
                    .is_some_and(|s| s.preempt_at.is_none())
            })
            .collect();
        let running: Vec<Running> = idx
            .iter()
            .map(|&e| {
                let s = self.engines[e].as_ref().unwrap();
                Running {
                    job: self.cand(s.ctx),
                    elapsed_ns: s.ran,
                }
            })
            .collect();
        if let Preempt::Now(k) = self.policy.preempt(&running, &cands) {
            self.engines[idx[k]].as_mut().unwrap().preempt_at = Some(self.now);
            self.preemptions += 1;
        }
    }

    fn advance(&mut self) {
        self.now += 1;
        for e in 0..self.engines.len() {
            let Some(s) = self.engines[e].as_mut() else {
                continue;
            };
            // A preempted slice stops at the end of the tile it is in.
            let stop = s.preempt_at.is_some();
            let c = &mut self.ctxs[s.ctx];
            let left = c.left.unwrap();
            let step = left.min(TICK);
            s.ran += step;
            let done = left == step;
            c.left = if done { None } else { Some(left - step) };
            if done || stop {
                let (ctx, ran) = (s.ctx, s.ran);
                let cand = self.cand(ctx);
                self.policy.stopped(cand, ran);
                *self.used.entry(cand.vm).or_default() += ran;
                let c = &mut self.ctxs[ctx];
                c.on_engine = false;
                if done {
                    c.jobs += 1;
                    c.ready_at = self.now + c.think;
                }
                self.engines[e] = None;
            }
        }
    }

    fn share(&self, vm: VmKey) -> f64 {
        let total: u64 = self.used.values().sum();
        self.used.get(&vm).copied().unwrap_or(0) as f64 / total as f64
    }
}

fn jain(x: &[f64]) -> f64 {
    let s: f64 = x.iter().sum();
    let q: f64 = x.iter().map(|v| v * v).sum();
    s * s / (x.len() as f64 * q)
}

#[test]
fn long_and_short_jobs_share_equally() {
    let mut s = Sim::new(1);
    s.vm(1, 1);
    s.vm(2, 1);
    // VM 1: 10 ms jobs on two contexts; VM 2: 0.5 ms jobs, one at a time.
    s.ctx(1, 0, |_| 10_000_000);
    s.ctx(1, 0, |_| 10_000_000);
    s.ctx(2, 0, |_| 500_000);
    s.run(100_000); // 10 s
    let a = s.share(1);
    assert!((a - 0.5).abs() < 0.02, "VM 1 got {a}");
    // The short jobs never wait behind a long one for more than two
    // quanta: VM 1 is preempted once it is a quantum ahead.
    let wait = s.ctxs[2].max_wait * TICK;
    assert!(wait <= 2 * QUANTUM, "waited {wait} ns");
}

#[test]
fn a_vm_that_thinks_between_jobs_still_gets_its_share_promptly() {
    let mut s = Sim::new(1);
    s.vm(1, 1);
    s.vm(2, 1);
    s.ctx(1, 0, |_| 10_000_000);
    s.ctx(2, 0, |_| 500_000);
    // A guest round trip of one tick between VM 2's jobs.
    s.ctxs[1].think = 1;
    s.run(100_000);
    let a = s.share(1);
    assert!((a - 0.5).abs() < 0.02, "VM 1 got {a}");
    let wait = s.ctxs[1].max_wait * TICK;
    assert!(wait <= 2 * QUANTUM, "waited {wait} ns");
}

#[test]
fn weights_set_the_shares() {
    let mut s = Sim::new(1);
    s.vm(1, 3);
    s.vm(2, 1);
    s.ctx(1, 0, |_| 500_000);
    s.ctx(2, 0, |_| 10_000_000);
    s.run(100_000);
    let a = s.share(1);
    assert!((a - 0.75).abs() < 0.02, "weight 3 got {a}");
}

#[test]
fn eight_vms_of_mixed_sizes_are_fair_on_two_engines() {
    let mut s = Sim::new(2);
    let sizes = [
        100_000, 250_000, 500_000, 1_000_000, 2_000_000, 4_000_000, 7_000_000, 10_000_000,
    ];
    for (i, &sz) in sizes.iter().enumerate() {
        let vm = i as VmKey + 1;
        s.vm(vm, 1);
        // Two contexts each, so every VM could fill both engines.
        s.ctx(vm, 0, move |n| sz + (n % 3) * sz / 10);
        s.ctx(vm, 0, move |_| sz);
    }
    s.run(100_000);
    let shares: Vec<f64> = (1..=8).map(|v| s.share(v)).collect();
    let j = jain(&shares);
    assert!(j >= 0.99, "Jain {j}: {shares:?}");
}

#[test]
fn within_a_vm_priority_first_then_fair_between_contexts() {
    let mut s = Sim::new(1);
    s.vm(1, 1);
    s.vm(2, 1);
    s.ctx(1, 5, |_| 2_000_000); // ctx 1: high priority
    s.ctx(1, 0, |_| 300_000); // ctx 2: starved while ctx 1 has work
    s.ctx(2, 0, |_| 1_000_000);
    s.ctx(2, 0, |_| 3_000_000);
    s.run(50_000);
    assert!(
        (s.share(1) - 0.5).abs() < 0.02,
        "priority inside VM 1 cost VM 2"
    );
    assert_eq!(s.ctxs[1].jobs, 0, "a lower-priority context ran");
    // VM 2's two contexts split its half evenly by time, not by jobs.
    let (c, d) = (s.ctxs[2].jobs * 1_000_000, s.ctxs[3].jobs * 3_000_000);
    let ratio = c as f64 / d as f64;
    assert!(
        (ratio - 1.0).abs() < 0.05,
        "contexts of VM 2: {c} vs {d} ns"
    );
}

#[test]
fn an_idle_vm_banks_no_credit() {
    let mut s = Sim::new(1);
    s.vm(1, 1);
    s.vm(2, 1);
    s.ctx(1, 0, |_| 1_000_000);
    s.ctx(2, 0, |_| 1_000_000);
    s.run(50_000);
    // VM 3 joins after 5 s; it must not get the NPU alone for long.
    s.vm(3, 1);
    s.ctx(3, 0, |_| 1_000_000);
    let before = s.used.clone();
    s.run(1_000); // 100 ms
    let got = |vm| s.used.get(&vm).copied().unwrap_or(0) - before.get(&vm).copied().unwrap_or(0);
    let (a, c) = (got(1), got(3));
    assert!(
        a > 20_000_000,
        "VM 1 starved after VM 3 arrived: {a} ns of 100 ms"
    );
    assert!(c < 45_000_000, "VM 3 took {c} ns of 100 ms");
}

#[test]
fn a_vm_back_from_idle_banks_no_credit() {
    let mut s = Sim::new(1);
    s.vm(1, 1);
    s.vm(2, 1);
    s.vm(3, 1);
    s.ctx(1, 0, |_| 1_000_000);
    s.ctx(2, 0, |_| 1_000_000);
    s.ctx(3, 0, |_| 1_000_000);
    // VM 3 runs a job, then is idle for 5 s while the others run.
    s.ctxs[2].think = 50_000;
    s.run(100);
    assert_eq!(s.ctxs[2].jobs, 1);
    s.ctxs[2].think = 0;
    s.run(49_900);
    let before = s.used.clone();
    s.run(1_000); // 100 ms after it is back
    let got = |vm| s.used.get(&vm).copied().unwrap_or(0) - before.get(&vm).copied().unwrap_or(0);
    let (a, c) = (got(1), got(3));
    assert!(
        a > 20_000_000,
        "VM 1 starved after VM 3 came back: {a} ns of 100 ms"
    );
    assert!(c < 45_000_000, "VM 3 took {c} ns of 100 ms");
}

#[test]
fn the_time_to_preempt_is_when_the_lead_passes_a_quantum() {
    for weights in [(1, 1), (3, 1), (1, 7)] {
        let mut p = Policy::new(QUANTUM);
        p.add_vm(1, weights.0);
        p.add_vm(2, weights.1);
        let a = Candidate {
            vm: 1,
            ctx: 1,
            priority: 0,
        };
        let b = Candidate {
            vm: 2,
            ctx: 1,
            priority: 0,
        };
        // B ran 3 ms; A runs now and B waits.
        assert_eq!(p.pick(&[b]), Some(0));
        p.stopped(b, 3_000_000);
        assert_eq!(p.pick(&[a]), Some(0));
        let at = |e| {
            [Running {
                job: a,
                elapsed_ns: e,
            }]
        };
        let Preempt::After(ns) = p.preempt(&at(0), &[b]) else {
            panic!("{weights:?}: A preempted before it caught up");
        };
        assert!(
            matches!(p.preempt(&at(ns - 2), &[b]), Preempt::After(_)),
            "{weights:?}: due early"
        );
        assert_eq!(p.preempt(&at(ns), &[b]), Preempt::Now(0), "{weights:?}");
    }
}

#[test]
fn contexts_that_come_and_go_do_not_grow_the_policy() {
    let mut p = Policy::new(QUANTUM);
    p.add_vm(1, 1);
    // A guest creating a context, running one job on it and destroying it,
    // over and over: fresh context ids every time.
    let mut most = 0;
    for ctx in 1..=100_000u32 {
        let c = Candidate {
            vm: 1,
            ctx,
            priority: 0,
        };
        assert_eq!(p.pick(&[c]), Some(0));
        p.stopped(c, 50_000 + u64::from(ctx % 7) * 1000);
        most = most.max(p.contexts(1));
    }
    assert!(most <= 2 * MIN_PRUNE, "{most} contexts remembered");
}

#[test]
fn extreme_weights_keep_their_ratio() {
    let mut s = Sim::new(1);
    s.vm(1, MAX_WEIGHT);
    s.vm(2, 1);
    s.ctx(1, 0, |_| 300_000);
    s.ctx(2, 0, |_| 300_000);
    s.run(100_000);
    let b = s.share(2);
    let want = 1.0 / f64::from(MAX_WEIGHT + 1);
    // VM 2 still runs, at about its weight's share (a job of 0.3 ms at a
    // time, so the share is measured over few of its jobs).
    assert!(s.ctxs[1].jobs >= 1, "the weight-1 VM never ran");
    assert!(b < 20.0 * want, "weight 1 got {b}, want about {want}");
}
