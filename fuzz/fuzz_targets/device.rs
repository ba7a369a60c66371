//! The whole device model: a sequence of requests against one `Device`
//! with real guest memory, jobs run as the scheduler runs them on the real
//! software NPU, and the model's promises checked after every step:
//! every request answered exactly once, answers within a context in fence
//! order, live-object counts consistent, quotas never exceeded, and
//! nothing left once every context is destroyed.
#![no_main]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vhost_device_accel::backend::sim::{ExecError, SimJob, SimNpu, SimOptions, Tile};
use vhost_device_accel::backend::{JobId, LostReason};
use vhost_device_accel::config::Limits;
use vhost_device_accel::device::{Device, JobEnd, Outcome};
use vhost_device_accel::memory::{GuestMem, VmMemory};
use vhost_device_accel::metrics::VmMetrics;
use virtio_accel_protocol::snpu::{DType, OpDesc, Program, TensorDesc};
use virtio_accel_protocol::*;
use vm_memory::GuestAddress;
use vm_memory::GuestMemoryAtomic;

const MEM: u64 = 1 << 20;

#[derive(Arbitrary, Debug)]
enum Cmd {
    Nop,
    Copy { n: u16 },
    Add { n: u16, broadcast: bool },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw request bytes, decoded as the glue decodes them.
    Raw {
        submitq: bool,
        bytes: Vec<u8>,
    },
    CtxCreate {
        prio: u8,
    },
    CtxDestroy {
        ctx: u8,
    },
    BoCreate {
        ctx: u8,
        size: u16,
    },
    BoAttach {
        ctx: u8,
        bo: u8,
        page: u8,
        pieces: u8,
        extra: u8,
    },
    BoDetach {
        ctx: u8,
        bo: u8,
    },
    BoDestroy {
        ctx: u8,
        bo: u8,
    },
    Submit {
        ctx: u8,
        fence_step: u8,
        bos: Vec<(u8, u8)>,
        waits: Vec<(u8, u8)>,
        cmd: Cmd,
    },
    /// Runs up to `n` jobs; `fault` picks how some of them end.
    Run {
        n: u8,
        fault: u8,
    },
    /// Takes up to `n` jobs onto the NPU and leaves them running, so
    /// requests arrive while they run.
    Start {
        n: u8,
    },
    /// Ends running job `i` (how: `fault`).
    Finish {
        i: u8,
        fault: u8,
    },
    /// Loses a context, as a hang or a device error does.
    Lose {
        ctx: u8,
        reason: u8,
    },
    Poll {
        ctx: u8,
        back: u8,
    },
}

/// A job on the NPU, as the scheduler holds it.
struct Ticket {
    ctx_id: u32,
    id: JobId,
    job: SimJob,
}

struct Model {
    dev: Device<SimNpu>,
    mem: GuestMem,
    limits: Limits,
    /// Context ids the device gave out, and each one's BO handles.
    ctxs: BTreeMap<u32, Vec<u32>>,
    /// Last out-fence submitted per context (as the driver tracks it).
    fences: BTreeMap<u32, u64>,
    /// Tokens of queued jobs not answered yet, with their context/fence.
    outstanding: BTreeMap<u64, (u32, u64)>,
    answered: HashSet<u64>,
    /// Last answered fence per context, for the order check.
    last_answer: BTreeMap<u32, u64>,
    next_token: u64,
    next_job: JobId,
    /// Jobs taken onto the NPU and not finished yet.
    running: Vec<Ticket>,
}

fn pick<T: Copy>(v: &[T], i: u8) -> Option<T> {
    if v.is_empty() {
        None
    } else {
        Some(v[usize::from(i) % v.len()])
    }
}

impl Model {
    fn ctx(&self, i: u8) -> u32 {
        let ids: Vec<u32> = self.ctxs.keys().copied().collect();
        // Sometimes a context that does not exist.
        pick(&ids, i).filter(|_| i < 250).unwrap_or(u32::from(i))
    }

    fn bo(&self, ctx: u32, i: u8) -> u32 {
        self.ctxs
            .get(&ctx)
            .and_then(|b| pick(b, i))
            .filter(|_| i < 250)
            .unwrap_or(u32::from(i))
    }

    fn handle(&mut self, queue: u16, req: Request) -> Option<Response> {
        let token = self.next_token;
        self.next_token += 1;
        let submit = match &req {
            Request::Submit { req, .. } => Some((req.hdr.ctx_id.get(), req.out_fence.get())),
            _ => None,
        };
        let before = self.dev.counts();
        match self.dev.handle(queue, req, &self.mem, token) {
            Outcome::Respond(r) => {
                if let (Some((ctx, _)), VIRTIO_ACCEL_RESP_OK) = (submit, r.status()) {
                    panic!("SUBMIT of context {ctx} answered OK without running");
                }
                if r.status() != VIRTIO_ACCEL_RESP_OK {
                    // Validate, then act: a refusal leaves no trace.
                    assert_eq!(self.dev.counts(), before, "refused with {:#x}", r.status());
                }
                Some(r)
            }
            Outcome::Queued => {
                let (ctx, fence) = submit.expect("only SUBMIT is queued");
                self.outstanding.insert(token, (ctx, fence));
                self.fences.insert(ctx, fence);
                None
            }
        }
    }

    fn control(&mut self, req: Request) -> Option<Response> {
        let t = req.hdr().type_.get();
        let ctx = req.hdr().ctx_id.get();
        let r = self.handle(VIRTIO_ACCEL_VQ_CONTROL, req)?;
        if r.status() == VIRTIO_ACCEL_RESP_OK {
            match t {
                VIRTIO_ACCEL_CMD_CTX_CREATE => {
                    self.ctxs.insert(r.hdr().ctx_id.get(), Vec::new());
                }
                VIRTIO_ACCEL_CMD_CTX_DESTROY => {
                    self.ctxs.remove(&ctx);
                    self.fences.remove(&ctx);
                }
                VIRTIO_ACCEL_CMD_BO_CREATE => {
                    if let Response::BoCreate(b) = &r {
                        self.ctxs.entry(ctx).or_default().push(b.bo_handle.get());
                    }
                }
                _ => {}
            }
        }
        Some(r)
    }

    fn collect(&mut self) {
        for c in self.dev.take_completions() {
            let (ctx, fence) = self
                .outstanding
                .remove(&c.token)
                .expect("a completion for a chain that was not waiting");
            assert!(self.answered.insert(c.token), "answered twice");
            let Response::Submit(s) = &c.response else {
                panic!("a job answered with a non-SUBMIT response")
            };
            assert_eq!(s.fence.get(), fence);
            if s.hdr.type_.get() != VIRTIO_ACCEL_RESP_OK {
                assert_eq!(s.device_time_ns.get(), 0);
            }
            let last = self.last_answer.insert(ctx, fence).unwrap_or(0);
            // Context ids are reused only after the context is gone.
            if self.ctxs.contains_key(&ctx) {
                assert!(fence > last, "context {ctx}: fence {fence} after {last}");
            }
        }
    }

    fn run(&mut self, n: u8, fault: u8) {
        for i in 0..n {
            let Some(t) = self.next() else {
                return;
            };
            self.end(t, fault.wrapping_add(i));
        }
    }

    /// The next job as the scheduler would take it for a lone VM: highest
    /// priority, then lowest context id.
    fn next(&mut self) -> Option<Ticket> {
        let (ctx, _) = self
            .dev
            .runnable()
            .into_iter()
            .max_by_key(|&(c, p)| (p, std::cmp::Reverse(c)))?;
        let id = self.next_job;
        self.next_job += 1;
        let job = self.dev.start(ctx, id)?;
        Some(Ticket {
            ctx_id: ctx,
            id,
            job,
        })
    }

    fn start(&mut self, n: u8) {
        for _ in 0..n {
            match self.next() {
                Some(t) => self.running.push(t),
                None => return,
            }
        }
    }

    /// Executes a job taken earlier (its context may be gone by now) and
    /// reports its end, as the scheduler does.
    fn end(&mut self, mut t: Ticket, fault: u8) {
        let end = match fault % 16 {
            0 => JobEnd::TimedOut,
            1 => JobEnd::Lost(LostReason::DeviceError, "fuzz".into()),
            2 => JobEnd::NoMemory,
            3 => JobEnd::Aborted,
            4 => JobEnd::Lost(LostReason::NeedsReset, "fuzz".into()),
            _ => match t.job.run_inline() {
                Ok(ops) => JobEnd::Done { ops },
                Err(ExecError::NoMemory) => JobEnd::NoMemory,
                Err(e) => JobEnd::Failed(e.to_string()),
            },
        };
        self.dev
            .finish(t.ctx_id, t.id, end, Duration::from_micros(5));
        self.collect();
    }

    fn check(&self) {
        let c = self.dev.counts();
        let bos: usize = self.ctxs.values().map(Vec::len).sum();
        assert_eq!(c.bos, bos, "BOs the device holds vs the driver's");
        assert_eq!(c.running, self.running.len(), "jobs on the NPU");
        assert!(c.backing_entries <= u64::from(self.limits.max_backing_entries));
        let l = &self.limits;
        assert!(c.contexts <= l.max_contexts as usize);
        assert!(c.bos <= l.max_bos as usize);
        assert!(c.bo_bytes <= l.max_total_bo_bytes);
        assert!(c.jobs <= l.max_jobs_in_flight as usize);
        assert_eq!(
            c.jobs,
            self.outstanding.len(),
            "jobs in flight vs unanswered"
        );
        assert_eq!(c.contexts, self.ctxs.len());
        // At most one pending event per context, and the device's own.
        assert!(c.events <= l.max_contexts as usize + 1);
    }
}

fn program(cmd: &Cmd, nbos: usize) -> Vec<u8> {
    let p = |ops| Program { ops }.encode();
    match cmd {
        Cmd::Nop => p(vec![OpDesc::Nop]),
        Cmd::Copy { n } => p(vec![OpDesc::Copy {
            src: TensorDesc::dense(0, DType::F32, 0, &[u32::from(*n % 1024) + 1]),
            dst: TensorDesc::dense(
                nbos.saturating_sub(1) as u32,
                DType::F32,
                0,
                &[u32::from(*n % 1024) + 1],
            ),
        }]),
        Cmd::Add { n, broadcast } => {
            let len = u32::from(*n % 512) + 1;
            let mut b = TensorDesc::dense(1, DType::F32, 0, &[len]);
            if *broadcast {
                b.strides[0] = 0;
            }
            p(vec![OpDesc::Add {
                a: TensorDesc::dense(0, DType::F32, 0, &[len]),
                b,
                out: TensorDesc::dense(nbos.saturating_sub(1) as u32, DType::F32, 0, &[len]),
            }])
        }
        Cmd::Raw(b) => b.clone(),
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let limits = Limits {
        max_contexts: 4,
        max_bo_size: 64 << 10,
        max_total_bo_bytes: 256 << 10,
        max_bos: 12,
        max_cmd_size: 4096,
        max_inline_cmd_size: 4096,
        max_submit_bos: 4,
        max_in_fences: 4,
        max_sg_entries: 16,
        max_jobs_in_flight: 8,
        max_job_memory: 4 << 20,
        max_backing_entries: 24,
    };
    // One software NPU for every run: the model runs jobs inline and never
    // submits to its engine.
    static NPU: std::sync::OnceLock<Arc<SimNpu>> = std::sync::OnceLock::new();
    let npu = NPU.get_or_init(|| {
        let opts = SimOptions {
            faults: Default::default(),
            engines: 1,
            tile: Tile::SLICED,
        };
        Arc::new(SimNpu::new(opts).unwrap())
    });
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let vm_mem = VmMemory {
        mem: GuestMemoryAtomic::new(mem.clone()),
        npu_stats: Arc::default(),
    };
    let mut dev = Device::new(limits.clone(), npu.clone(), vm_mem, VmMetrics::detached());
    dev.set_features(
        (1 << VIRTIO_ACCEL_F_INLINE_CMD)
            | (1 << VIRTIO_ACCEL_F_IOCTL)
            | (1 << VIRTIO_ACCEL_F_CROSS_CTX_FENCE),
    );
    let mut m = Model {
        dev,
        mem,
        limits: limits.clone(),
        ctxs: BTreeMap::new(),
        fences: BTreeMap::new(),
        outstanding: BTreeMap::new(),
        answered: HashSet::new(),
        last_answer: BTreeMap::new(),
        next_token: 1,
        next_job: 1,
        running: Vec::new(),
    };
    let dec = Limits::default();
    let dec = virtio_accel_protocol::Limits {
        max_sg_entries: dec.max_sg_entries,
        max_submit_bos: dec.max_submit_bos,
        max_in_fences: dec.max_in_fences,
        max_inline_cmd: dec.max_inline_cmd_size,
        max_ioctl_payload: VIRTIO_ACCEL_MAX_IOCTL_PAYLOAD,
    };
    for op in ops.iter().take(64) {
        match op {
            Op::Raw { submitq, bytes } => {
                if let Ok(req) = Request::decode(bytes, &dec) {
                    let q = if *submitq {
                        VIRTIO_ACCEL_VQ_SUBMIT
                    } else {
                        VIRTIO_ACCEL_VQ_CONTROL
                    };
                    if q == VIRTIO_ACCEL_VQ_CONTROL {
                        m.control(req);
                    } else {
                        m.handle(q, req);
                    }
                }
            }
            Op::CtxCreate { prio } => {
                m.control(Request::CtxCreate(CtxCreate {
                    hdr: Hdr::new(VIRTIO_ACCEL_CMD_CTX_CREATE, 0),
                    priority: u32::from(prio % 3).into(),
                    padding: 0.into(),
                }));
            }
            Op::CtxDestroy { ctx } => {
                let c = m.ctx(*ctx);
                m.control(Request::CtxDestroy(Hdr::new(
                    VIRTIO_ACCEL_CMD_CTX_DESTROY,
                    c,
                )));
            }
            Op::BoCreate { ctx, size } => {
                let c = m.ctx(*ctx);
                m.control(Request::BoCreate(BoCreate {
                    hdr: Hdr::new(VIRTIO_ACCEL_CMD_BO_CREATE, c),
                    size: (u64::from(*size) + 1).into(),
                    flags: 0.into(),
                    padding: 0.into(),
                }));
            }
            Op::BoAttach {
                ctx,
                bo,
                page,
                pieces,
                extra,
            } => {
                let c = m.ctx(*ctx);
                let h = m.bo(c, *bo);
                // Ask the device for the size, then back it with `pieces`
                // ranges starting at page `page` (sometimes off by `extra`).
                let info = m.control(Request::BoInfo(BoReq {
                    hdr: Hdr::new(VIRTIO_ACCEL_CMD_BO_INFO, c),
                    bo_handle: h.into(),
                    padding: 0.into(),
                }));
                let size = match info {
                    Some(Response::BoInfo(i)) => i.size.get(),
                    _ => 4096,
                };
                let n = u64::from(pieces % 4) + 1;
                let chunk = size.div_ceil(n).max(1);
                let mut entries = Vec::new();
                let mut left = size + u64::from(*extra % 2);
                let mut addr = u64::from(*page) * 4096;
                while left > 0 {
                    let len = chunk.min(left);
                    entries.push(MemEntry {
                        addr: addr.into(),
                        length: (len as u32).into(),
                        padding: 0.into(),
                    });
                    addr += len + 4096;
                    left -= len;
                }
                m.control(Request::BoAttachBacking {
                    req: BoAttachBacking {
                        hdr: Hdr::new(VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING, c),
                        bo_handle: h.into(),
                        nr_entries: (entries.len() as u32).into(),
                    },
                    entries,
                });
            }
            Op::BoDetach { ctx, bo } | Op::BoDestroy { ctx, bo } => {
                let c = m.ctx(*ctx);
                let h = m.bo(c, *bo);
                let q = BoReq {
                    hdr: Hdr::new(
                        if matches!(op, Op::BoDetach { .. }) {
                            VIRTIO_ACCEL_CMD_BO_DETACH_BACKING
                        } else {
                            VIRTIO_ACCEL_CMD_BO_DESTROY
                        },
                        c,
                    ),
                    bo_handle: h.into(),
                    padding: 0.into(),
                };
                let destroy = matches!(op, Op::BoDestroy { .. });
                let r = m.control(if destroy {
                    Request::BoDestroy(q)
                } else {
                    Request::BoDetachBacking(q)
                });
                if destroy && r.is_some_and(|r| r.status() == VIRTIO_ACCEL_RESP_OK) {
                    if let Some(b) = m.ctxs.get_mut(&c) {
                        b.retain(|&x| x != h);
                    }
                }
            }
            Op::Submit {
                ctx,
                fence_step,
                bos,
                waits,
                cmd,
            } => {
                let c = m.ctx(*ctx);
                let last = m.fences.get(&c).copied().unwrap_or(0);
                let fence = last + u64::from(*fence_step % 4);
                let list: Vec<(u32, u32)> = bos
                    .iter()
                    .take(5)
                    .map(|&(b, a)| (m.bo(c, b), u32::from(a % 3) + 1))
                    .collect();
                let w: Vec<(u32, u64)> = waits
                    .iter()
                    .take(5)
                    .map(|&(wc, back)| {
                        let wc = m.ctx(wc);
                        let f = m.fences.get(&wc).copied().unwrap_or(0);
                        (wc, f.saturating_sub(u64::from(back % 4)))
                    })
                    .collect();
                let stream = program(cmd, list.len());
                let req = Request::Submit {
                    req: Submit {
                        hdr: Hdr::new(VIRTIO_ACCEL_CMD_SUBMIT, c),
                        out_fence: fence.into(),
                        cmd_bo_handle: 0.into(),
                        flags: VIRTIO_ACCEL_SUBMIT_F_INLINE.into(),
                        cmd_offset: 0.into(),
                        cmd_size: (stream.len() as u32).into(),
                        nr_bos: (list.len() as u32).into(),
                        nr_in_fences: (w.len() as u32).into(),
                        padding: 0.into(),
                    },
                    bos: list
                        .iter()
                        .map(|&(h, a)| SubmitBo {
                            bo_handle: h.into(),
                            access: a.into(),
                        })
                        .collect(),
                    in_fences: w
                        .iter()
                        .map(|&(c, s)| FenceRef {
                            ctx_id: c.into(),
                            padding: 0.into(),
                            seqno: s.into(),
                        })
                        .collect(),
                    inline_cmd: stream,
                };
                // Only well-formed requests reach the device model.
                let bytes = req.encode();
                if let Ok(req) = Request::decode(&bytes, &dec) {
                    m.handle(VIRTIO_ACCEL_VQ_SUBMIT, req);
                }
            }
            Op::Run { n, fault } => m.run(*n % 8, *fault),
            Op::Start { n } => m.start(*n % 4),
            Op::Finish { i, fault } => {
                if !m.running.is_empty() {
                    let t = m.running.remove(usize::from(*i) % m.running.len());
                    m.end(t, *fault);
                }
            }
            Op::Lose { ctx, reason } => {
                let c = m.ctx(*ctx);
                m.dev.lose(c, u32::from(*reason % 3) + 1);
            }
            Op::Poll { ctx, back } => {
                let c = m.ctx(*ctx);
                let f = m.fences.get(&c).copied().unwrap_or(0);
                m.control(Request::FencePoll(FencePoll {
                    hdr: Hdr::new(VIRTIO_ACCEL_CMD_FENCE_POLL, c),
                    seqno: f.saturating_sub(u64::from(*back)).into(),
                }));
            }
        }
        m.collect();
        m.check();
    }
    // Tear down: destroy every context, run what is left (running jobs of
    // destroyed contexts finish), and nothing may remain.
    let ids: Vec<u32> = m.ctxs.keys().copied().collect();
    for c in ids {
        m.control(Request::CtxDestroy(Hdr::new(
            VIRTIO_ACCEL_CMD_CTX_DESTROY,
            c,
        )));
        m.collect();
    }
    for t in std::mem::take(&mut m.running) {
        m.end(t, 3);
    }
    m.run(255, 3);
    m.collect();
    let c = m.dev.counts();
    assert_eq!(
        (c.contexts, c.bos, c.bo_bytes, c.jobs),
        (0, 0, 0, 0),
        "{c:?}"
    );
    assert!(
        m.outstanding.is_empty(),
        "unanswered jobs {:?}",
        m.outstanding
    );
});
