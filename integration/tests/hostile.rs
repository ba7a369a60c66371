//! A hostile guest against the real daemon, over the real socket. Each test
//! is a way one VM's bytes once hurt the daemon or another VM; each checks
//! the exact answer, that nothing changed, and that the daemon (and the
//! other VM, where there is one) keeps serving.

use std::time::{Duration, Instant};

use std::sync::Arc;

use vhost_device_accel::backend::sim::{Faults, SimNpu, SimOptions, Tile};
use vhost_device_accel::backend::{Backend, BackendError, JobId};
use vhost_device_accel::Config;
use virtio_accel_integration::ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_accel_integration::*;
use virtio_accel_protocol::snpu::*;
use virtio_accel_protocol::*;
use vm_memory::{Bytes, GuestAddress};

const OK: u32 = VIRTIO_ACCEL_RESP_OK;
const INVALID: u32 = VIRTIO_ACCEL_RESP_ERR_INVALID;
const RANGE: u32 = VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE;
const QUOTA: u32 = VIRTIO_ACCEL_RESP_ERR_QUOTA;
const CANCELED: u32 = VIRTIO_ACCEL_RESP_ERR_CANCELED;
const R: u32 = VIRTIO_ACCEL_ACCESS_READ;
const W: u32 = VIRTIO_ACCEL_ACCESS_WRITE;

#[track_caller]
fn assert_status(got: u32, want: u32) {
    assert_eq!(status_name(got), status_name(want), "status {got:#x}");
}

fn raw_status(out: &[u8]) -> u32 {
    u32::from_le_bytes(out[..4].try_into().unwrap())
}

fn connect<B: Backend>(d: &Daemon<B>, i: usize) -> Guest {
    Guest::connect(d.socket(i), GuestOptions::default())
}

/// Runs a COPY of `n` f32 between two fresh buffers of a new context and
/// checks the copy: the device still runs jobs for this VM.
#[track_caller]
fn assert_runs_jobs(g: &mut Guest) {
    let n = 1024u32;
    let c = g.ctx_create();
    let src = g.bo(c, u64::from(n) * 4, Layout::Contiguous);
    let dst = g.bo(c, u64::from(n) * 4, Layout::Scattered);
    let data: Vec<u8> = (0..n * 4).map(|i| (i * 7) as u8).collect();
    g.write_bo(&src, 0, &data);
    let r = g.submit(&copy_request(c, 1, &src, &dst, n));
    assert_status(r.status(), OK);
    assert_eq!(g.read_bo(&dst, 0, data.len()), data);
    assert_status(g.ctx_destroy(c), OK);
}

fn copy_request(ctx: u32, fence: u64, src: &GuestBo, dst: &GuestBo, n: u32) -> Request {
    let p = Program {
        ops: vec![OpDesc::Copy {
            src: TensorDesc::dense(0, DType::F32, 0, &[n]),
            dst: TensorDesc::dense(1, DType::F32, 0, &[n]),
        }],
    };
    Guest::submit_request(
        ctx,
        fence,
        &[(src.handle, R), (dst.handle, W)],
        &[],
        CmdSource::Inline(p.encode()),
    )
}

fn tensor(bo: u32, dims: &[u32], strides: &[u32]) -> TensorDesc {
    let mut t = TensorDesc::dense(bo, DType::F32, 0, &[1; 4][..dims.len()]);
    t.dims[..dims.len()].copy_from_slice(dims);
    t.strides[..strides.len()].copy_from_slice(strides);
    t
}

/// Submits a one-op program over four 64 KiB buffers (three read, the last
/// written).
fn submit_op(g: &mut Guest, ctx: u32, fence: u64, op: OpDesc) -> Response {
    let bos: Vec<GuestBo> = (0..4)
        .map(|_| g.bo(ctx, 65536, Layout::Contiguous))
        .collect();
    let list: Vec<(u32, u32)> = bos
        .iter()
        .enumerate()
        .map(|(i, b)| (b.handle, if i == 3 { W } else { R }))
        .collect();
    let r = g.submit(&Guest::submit_request(
        ctx,
        fence,
        &list,
        &[],
        CmdSource::Inline(Program { ops: vec![op] }.encode()),
    ));
    for b in &bos {
        g.bo_destroy(b);
    }
    r
}

#[test]
fn a_conv2d_whose_sizes_wrap_is_refused_and_every_vm_keeps_running() {
    let d = Daemon::start(Config::default(), 2);
    let (mut a, mut b) = (connect(&d, 0), connect(&d, 1));
    let c = a.ctx_create();
    let big = 1u32 << 31;
    let op = OpDesc::Conv2d {
        input: tensor(0, &[1, big, big, 4], &[0, 0, 0, 1]),
        filter: tensor(1, &[1, 1, 4, 1], &[0, 0, 0, 0]),
        bias: None,
        out: TensorDesc::dense(3, DType::F32, 0, &[1, 1, 1, 1]),
        stride: [big, big],
        pad: [0; 4],
    };
    assert_status(submit_op(&mut a, c, 1, op).status(), INVALID);
    assert_status(a.ctx_destroy(c), OK);
    assert_runs_jobs(&mut b);
    assert_runs_jobs(&mut a);
}

#[test]
fn a_conv2d_with_zero_channels_is_refused() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = connect(&d, 0);
    let c = g.ctx_create();
    // With C = 0 every size cap multiplied by C passes, while im2col
    // would loop N·OH·OW·KH·KW = 2^62 times.
    let k = 1u32 << 31;
    let op = OpDesc::Conv2d {
        input: tensor(0, &[1, k, k, 0], &[0, 0, 0, 0]),
        filter: tensor(1, &[k, k, 0, 1], &[0, 0, 0, 0]),
        bias: None,
        out: TensorDesc::dense(3, DType::F32, 0, &[1, 1, 1, 1]),
        stride: [1, 1],
        pad: [0; 4],
    };
    assert_status(submit_op(&mut g, c, 1, op).status(), INVALID);
    assert_status(g.ctx_destroy(c), OK);
    assert_runs_jobs(&mut g);
}

#[test]
fn a_broadcast_whose_element_count_wraps_is_refused() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = connect(&d, 0);
    let c = g.ctx_create();
    let huge = tensor(0, &[1 << 16; 4], &[0; 4]); // 2^64 elements
    let op = OpDesc::Add {
        a: huge,
        b: TensorDesc::dense(1, DType::F32, 0, &[1]),
        out: TensorDesc::dense(3, DType::F32, 0, &[1]),
    };
    assert_status(submit_op(&mut g, c, 1, op).status(), INVALID);
    assert_status(g.ctx_destroy(c), OK);
    assert_runs_jobs(&mut g);
}

#[test]
fn an_offset_that_overflows_is_out_of_range() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = connect(&d, 0);
    let c = g.ctx_create();
    let mut src = TensorDesc::dense(0, DType::F32, 0, &[4]);
    src.offset = u64::MAX - 4;
    let op = OpDesc::Copy {
        src,
        dst: TensorDesc::dense(3, DType::F32, 0, &[4]),
    };
    assert_status(submit_op(&mut g, c, 1, op).status(), RANGE);
    assert_status(g.ctx_destroy(c), OK);
}

#[test]
fn job_memory_above_the_quota_is_refused() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = connect(&d, 0);
    let c = g.ctx_create();
    // Two 4-byte buffers read with stride 0 as 8192 × 8192 matrices: the
    // NPU would gather 2 × 256 MiB.
    let op = OpDesc::MatMul {
        a: tensor(0, &[8192, 8192], &[0, 0]),
        b: tensor(1, &[8192, 1], &[0, 0]),
        out: TensorDesc::dense(3, DType::F32, 0, &[8192, 1]),
        quant: None,
    };
    let r = submit_op(&mut g, c, 1, op);
    assert_status(r.status(), QUOTA);
    // The same as int8: once widened to f64 (1.5 GiB); now counted at
    // 4 bytes an element, still above 64 MiB.
    let i8t = |bo, dims: &[u32]| {
        let mut t = tensor(bo, dims, &[0, 0]);
        t.dtype = DType::I8;
        t
    };
    let op = OpDesc::MatMul {
        a: i8t(0, &[8192, 8192]),
        b: i8t(1, &[8192, 1]),
        out: TensorDesc::dense(3, DType::I32, 0, &[8192, 1]),
        quant: Some(Quant {
            a_zero: 0,
            b_zero: 0,
            out_zero: 0,
            scale: 0.0,
        }),
    };
    assert_status(submit_op(&mut g, c, 1, op).status(), QUOTA);
    // CONV2D: a small input (159 × 159), but a 32 × 32 filter at stride 1
    // makes a patch matrix of 2^24 cells, 64 MiB on its own.
    let op = OpDesc::Conv2d {
        input: tensor(0, &[1, 159, 159, 1], &[0, 0, 0, 0]),
        filter: TensorDesc::dense(1, DType::F32, 0, &[32, 32, 1, 1]),
        bias: None,
        out: TensorDesc::dense(3, DType::F32, 0, &[1, 128, 128, 1]),
        stride: [1, 1],
        pad: [0; 4],
    };
    assert_status(submit_op(&mut g, c, 1, op).status(), QUOTA);
    // Nothing was consumed: fence 1 is still free.
    let op = OpDesc::MatMul {
        a: tensor(0, &[64, 64], &[0, 0]),
        b: tensor(1, &[64, 1], &[0, 0]),
        out: TensorDesc::dense(3, DType::F32, 0, &[64, 1]),
        quant: None,
    };
    assert_status(submit_op(&mut g, c, 1, op).status(), OK);
    assert_status(g.ctx_destroy(c), OK);
}

#[test]
fn a_submit_without_room_for_its_answer_does_not_run() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = connect(&d, 0);
    let c = g.ctx_create();
    let src = g.bo(c, 4096, Layout::Contiguous);
    let dst = g.bo(c, 4096, Layout::Contiguous);
    g.write_bo(&src, 0, &[0x5a; 4096]);
    let req = copy_request(c, 1, &src, &dst, 1024).encode();
    for room in [16, 8, 0] {
        let (len, out) = g.call_raw(VIRTIO_ACCEL_VQ_SUBMIT, &req, room);
        if room >= 16 {
            assert_eq!(len, 16);
            assert_status(raw_status(&out), INVALID);
        } else {
            assert_eq!(len, 0);
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(g.read_bo(&dst, 0, 4096), vec![0; 4096], "the job ran");
    assert_eq!(d.vm_stats(0).unwrap().counts.jobs, 0);
    // Fence 1 was not consumed.
    assert_status(g.submit(&copy_request(c, 1, &src, &dst, 1024)).status(), OK);
    assert_eq!(g.read_bo(&dst, 0, 4096), vec![0x5a; 4096]);
    assert_status(g.ctx_destroy(c), OK);
    assert_eq!(d.vm_stats(0).unwrap().counts, Default::default());
}

#[test]
fn a_create_without_room_for_its_answer_creates_nothing() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = connect(&d, 0);
    let create = Request::CtxCreate(CtxCreate {
        hdr: Hdr::new(VIRTIO_ACCEL_CMD_CTX_CREATE, 0),
        priority: 1.into(),
        padding: 0.into(),
    })
    .encode();
    let (len, _) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &create, 8);
    assert_eq!(len, 0);
    assert_eq!(d.vm_stats(0).unwrap().counts.contexts, 0);
    let c = g.ctx_create();
    let bo = Request::BoCreate(BoCreate {
        hdr: Hdr::new(VIRTIO_ACCEL_CMD_BO_CREATE, c),
        size: 4096.into(),
        flags: 0.into(),
        padding: 0.into(),
    })
    .encode();
    let (len, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bo, 16);
    assert_eq!(len, 16);
    assert_status(raw_status(&out), INVALID);
    let s = d.vm_stats(0).unwrap().counts;
    assert_eq!((s.bos, s.bo_bytes), (0, 0));
    // An IOCTL needs 24 + out_size bytes, even though its error is 24.
    let ioctl = Request::Ioctl {
        req: Ioctl {
            hdr: Hdr::new(VIRTIO_ACCEL_CMD_IOCTL, c),
            cmd: 1.into(),
            in_size: 0.into(),
            out_size: 32.into(),
            padding: 0.into(),
        },
        payload: vec![],
    }
    .encode();
    // The 24-byte IOCTL error structure fits and is written.
    let (len, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &ioctl, 24);
    assert_eq!(len, 24);
    assert_status(raw_status(&out), INVALID);
    assert_status(g.ctx_destroy(c), OK);
}

/// A chain built by hand on queue `q`: its avail entry names `head`.
fn publish_and_kick(g: &mut Guest, q: u16, head: u16, ids: Vec<u16>) {
    let mem = g.mem.clone();
    let ring = &mut g.rings[q as usize];
    ring.publish(&mem, head, ids);
    ring.kick(&mem);
}

#[test]
fn a_bad_avail_entry_does_not_stop_the_queue() {
    let d = Daemon::start(Config::default(), 2);
    let (mut g, mut other) = (connect(&d, 0), connect(&d, 1));
    // Head 259 on a 256-entry controlq: no used entry can name it.
    publish_and_kick(&mut g, VIRTIO_ACCEL_VQ_CONTROL, 259, vec![]);
    for _ in 0..3 {
        assert_status(g.caps().hdr.type_.get(), OK);
    }
    assert_runs_jobs(&mut g);
    assert_runs_jobs(&mut other);
}

/// Sends a hand-built chain whose descriptors are `descs` (addr, len,
/// flags, next-as-position) and returns the used length and the first 16
/// bytes of `resp`.
fn call_built(g: &mut Guest, descs: &[(u64, u32, u16, u16)], resp: u64) -> (u32, Vec<u8>) {
    let q = VIRTIO_ACCEL_VQ_CONTROL;
    let mem = g.mem.clone();
    mem.write_slice(&[0xee; 16], GuestAddress(resp)).unwrap();
    let ids = g.rings[q as usize].take_ids(descs.len());
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        let next_id = ids.get(next as usize).copied().unwrap_or(next);
        g.rings[q as usize].write_desc(&mem, ids[i], addr, len, flags, next_id);
    }
    let head = ids[0];
    let before = g.rings[q as usize].used_idx(&mem);
    publish_and_kick(g, q, head, ids);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (h, len) = loop {
        if let Some(u) = g.rings[q as usize].pop_used(&mem) {
            break u;
        }
        assert!(Instant::now() < deadline, "chain not answered");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(h, head);
    assert_eq!(g.rings[q as usize].used_idx(&mem), before.wrapping_add(1));
    let mut out = vec![0u8; 16];
    mem.read_slice(&mut out, GuestAddress(resp)).unwrap();
    (len, out)
}

#[test]
fn malformed_descriptor_chains_get_the_specified_answer() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = connect(&d, 0);
    let req = Request::GetCaps(GetCaps {
        hdr: Hdr::new(VIRTIO_ACCEL_CMD_GET_CAPS, 0),
        capset: 0.into(),
        padding: 0.into(),
    })
    .encode();
    let rq = g.alloc(req.len() as u64, 8);
    let rs = g.alloc(112, 8);
    g.mem.write_slice(&req, GuestAddress(rq)).unwrap();
    let n = req.len() as u32;

    // A loop: the readable descriptor points back at itself.
    let (len, out) = call_built(&mut g, &[(rq, n, VRING_DESC_F_NEXT, 0)], rs);
    assert_eq!((len, &out[..]), (0, &[0xee; 16][..]), "loop");

    // INDIRECT together with NEXT.
    let table = g.alloc(32, 16);
    let (len, _) = call_built(
        &mut g,
        &[
            (table, 32, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1),
            (rs, 112, VRING_DESC_F_WRITE, 0),
        ],
        rs,
    );
    assert_eq!(len, 0, "indirect with next");

    // An indirect table longer than the queue (256 entries): 300 entries
    // chained one to the next.
    let long = g.alloc(300 * 16, 16);
    for i in 0..300u16 {
        let last = i == 299;
        ring::write_raw_desc(
            &g.mem,
            long,
            i,
            if last { rs } else { rq },
            if last { 112 } else { 1 },
            if last {
                VRING_DESC_F_WRITE
            } else {
                VRING_DESC_F_NEXT
            },
            i + 1,
        );
    }
    let (len, _) = call_built(&mut g, &[(long, 300 * 16, VRING_DESC_F_INDIRECT, 0)], rs);
    assert_eq!(len, 0, "indirect chain longer than the queue");

    // A zero-length descriptor in a well-formed chain: ERR_INVALID.
    let (len, out) = call_built(
        &mut g,
        &[
            (rq, n, VRING_DESC_F_NEXT, 1),
            (rq, 0, VRING_DESC_F_NEXT, 2),
            (rs, 112, VRING_DESC_F_WRITE, 0),
        ],
        rs,
    );
    assert_eq!(len, 112, "zero-length descriptor");
    assert_status(raw_status(&out), INVALID);

    // A well-formed indirect chain is served.
    let t = g.alloc(32, 16);
    ring::write_raw_desc(&g.mem, t, 0, rq, n, VRING_DESC_F_NEXT, 1);
    ring::write_raw_desc(&g.mem, t, 1, rs, 112, VRING_DESC_F_WRITE, 0);
    let (len, out) = call_built(&mut g, &[(t, 32, VRING_DESC_F_INDIRECT, 0)], rs);
    assert_eq!(len, 112);
    assert_status(raw_status(&out), OK);
    assert_runs_jobs(&mut g);
}

#[test]
fn a_broken_avail_index_loses_the_vms_contexts_and_spares_the_other_vm() {
    let d = Daemon::start(Config::default(), 2);
    let (mut g, mut other) = (connect(&d, 0), connect(&d, 1));
    let c = g.ctx_create();
    let mem = g.mem.clone();
    let ring = &mut g.rings[VIRTIO_ACCEL_VQ_CONTROL as usize];
    let idx = ring.used_idx(&mem).wrapping_add(1000);
    ring.set_avail_idx(&mem, idx);
    ring.kick.write(1).unwrap();
    // The context, then the device as a whole (context 0: needs reset).
    let mut got = Vec::new();
    wait_until(|| {
        got.extend(g.events());
        got.len() >= 2
    });
    let seen: Vec<(u32, u32, u32)> = got
        .iter()
        .map(|e| (e.hdr.type_.get(), e.hdr.ctx_id.get(), e.reason.get()))
        .collect();
    let lost = VIRTIO_ACCEL_EVENT_CONTEXT_LOST;
    let why = VIRTIO_ACCEL_LOST_DEVICE_ERROR;
    assert_eq!(seen, [(lost, c, why), (lost, 0, why)]);
    assert_runs_jobs(&mut other);
}

#[test]
fn destroying_a_context_aborts_its_running_job_and_nothing_writes_after() {
    // Each job sleeps 10 ms before it runs; the destroy is sent once the
    // daemon reports the first job on the NPU, the second queued behind it.
    let mut cfg = Config::default();
    cfg.sim.faults.latency_us = 10_000;
    let d = Daemon::start(cfg, 1);
    let mut g = connect(&d, 0);
    let n = 4 * 1024 * 1024u32; // 16 MiB of f32: many tiles
    let (mut aborted, mut finished) = (0, 0);
    for round in 0..20u32 {
        let c = g.ctx_create();
        let src = g.bo(c, u64::from(n) * 4, Layout::Scattered);
        let dst = g.bo(c, u64::from(n) * 4, Layout::Scattered);
        let data: Vec<u8> = (0..n * 4).map(|i| (i ^ round) as u8 | 1).collect();
        g.write_bo(&src, 0, &data);
        let first = g.submit_async(&copy_request(c, 1, &src, &dst, n));
        let second = g.submit_async(&copy_request(c, 2, &src, &dst, n));
        wait_until(|| {
            let s = d.vm_stats(0).unwrap().counts;
            s.running == 1 && s.jobs == 2
        });
        assert_status(g.ctx_destroy(c), OK);
        // Answers come in fence order: the running job, aborted (or done,
        // had it ended first), then the cancelled one.
        let (p1, r1) = g.wait_any_submit();
        let (p2, r2) = g.wait_any_submit();
        assert_eq!((p1, p2), (first, second), "round {round}: answer order");
        let Response::Submit(r2) = r2 else {
            panic!("not a submit response")
        };
        assert_status(r2.hdr.type_.get(), CANCELED);
        assert_eq!(r2.fence.get(), 2);
        let out = g.read_bo(&dst, 0, data.len());
        match r1.status() {
            s if s == CANCELED => aborted += 1,
            s => {
                assert_status(s, OK);
                assert!(out == data, "round {round}: a finished copy is incomplete");
                finished += 1;
            }
        }
        // Once answered, the job writes nothing more.
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            g.read_bo(&dst, 0, data.len()) == out,
            "round {round}: the output changed after the job was answered"
        );
        g.free_backing(&src.ranges);
        g.free_backing(&dst.ranges);
    }
    assert!(
        aborted > 0,
        "no running job was aborted ({finished} finished)"
    );
    assert_eq!(d.vm_stats(0).unwrap().counts, Default::default());
}

/// Polls `f` for up to 10 s.
#[track_caller]
fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "condition not reached");
        std::thread::sleep(Duration::from_micros(100));
    }
}

#[test]
fn a_waiter_on_a_lost_context_is_cancelled_at_once() {
    let mut cfg = Config::default();
    cfg.sim.faults.hang_jobs = vec![1];
    cfg.job_timeout_ms = 200;
    let d = Daemon::start(cfg, 1);
    let mut g = connect(&d, 0);
    let (v, w) = (g.ctx_create(), g.ctx_create());
    let hung = g.submit_async(&nop(v, 1, &[]));
    let waiter = g.submit_async(&nop(w, 1, &[(v, 1)]));
    assert_status(
        g.wait_submit(hung).status(),
        VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST,
    );
    // V is not destroyed: W's job must be answered all the same.
    assert_status(g.wait_submit(waiter).status(), CANCELED);
    assert_status(g.submit(&nop(w, 2, &[])).status(), OK);
    assert_status(g.ctx_destroy(v), OK);
    assert_status(g.ctx_destroy(w), OK);
}

#[test]
fn a_wait_on_a_fence_signalled_before_its_context_went_away_is_satisfied() {
    // One worker, 100 ms per job: V's job runs, then W's first job; V is
    // destroyed while W's first job runs, after V's fence 1 signalled.
    let mut cfg = Config::default();
    cfg.sim.faults.latency_us = 100_000;
    cfg.workers = 1;
    let d = Daemon::start(cfg, 1);
    let mut g = connect(&d, 0);
    let (v, w) = (g.ctx_create(), g.ctx_create());
    let v1 = g.submit_async(&nop(v, 1, &[]));
    let w1 = g.submit_async(&nop(w, 1, &[]));
    let w2 = g.submit_async(&nop(w, 2, &[(v, 1)]));
    assert_status(g.wait_submit(v1).status(), OK);
    assert_status(g.ctx_destroy(v), OK);
    assert_status(g.wait_submit(w1).status(), OK);
    assert_status(g.wait_submit(w2).status(), OK);

    // V destroyed while the job carrying the fence W waits on still runs:
    // the fence signals after V is gone, and W's job runs.
    let v = g.ctx_create();
    let v1 = g.submit_async(&nop(v, 1, &[]));
    let w3 = g.submit_async(&nop(w, 3, &[(v, 1)]));
    wait_until(|| d.vm_stats(0).unwrap().counts.running == 1);
    // On the engine, in its 100 ms: a destroy now cannot abort it before
    // it starts (a NOP, once started, ends in one step).
    std::thread::sleep(Duration::from_millis(20));
    assert_status(g.ctx_destroy(v), OK);
    assert_status(g.wait_submit(v1).status(), OK);
    assert_status(g.wait_submit(w3).status(), OK);
    // Beyond what the destroyed context ran, a wait is refused at SUBMIT
    // (the context is gone) and one already queued is cancelled.
    let v = g.ctx_create();
    let v1 = g.submit_async(&nop(v, 1, &[]));
    let v2 = g.submit_async(&nop(v, 2, &[]));
    let w4 = g.submit_async(&nop(w, 4, &[(v, 2)]));
    wait_until(|| d.vm_stats(0).unwrap().counts.running == 1);
    // On the engine, in its 100 ms: a destroy now cannot abort it before
    // it starts (a NOP, once started, ends in one step).
    std::thread::sleep(Duration::from_millis(20));
    assert_status(g.ctx_destroy(v), OK);
    assert_status(g.wait_submit(v1).status(), OK);
    assert_status(g.wait_submit(v2).status(), CANCELED);
    assert_status(g.wait_submit(w4).status(), CANCELED);
    assert_status(g.ctx_destroy(w), OK);
    assert_eq!(d.vm_stats(0).unwrap().counts, Default::default());
}

#[test]
fn waits_that_can_never_be_satisfied_are_refused() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = connect(&d, 0);
    let (a, b) = (g.ctx_create(), g.ctx_create());
    assert_status(g.submit(&nop(a, 1, &[])).status(), OK);
    // Own context: fence 2 is above everything submitted before fence 3.
    assert_status(g.submit(&nop(a, 3, &[(a, 2)])).status(), INVALID);
    // Another context: B has submitted nothing.
    assert_status(g.submit(&nop(a, 3, &[(b, 1)])).status(), INVALID);
    // Neither consumed fence 3; waits on submitted fences are fine.
    assert_status(g.submit(&nop(b, 1, &[])).status(), OK);
    assert_status(g.submit(&nop(a, 3, &[(a, 1), (b, 1)])).status(), OK);
    assert_status(g.ctx_destroy(a), OK);
    assert_status(g.ctx_destroy(b), OK);
}

#[test]
fn error_answers_carry_no_device_time() {
    let mut cfg = Config::default();
    cfg.sim.faults.fail_jobs = vec![1];
    cfg.sim.faults.latency_us = 1_000;
    let d = Daemon::start(cfg, 1);
    let mut g = connect(&d, 0);
    let c = g.ctx_create();
    let Response::Submit(r) = g.submit(&nop(c, 1, &[])) else {
        panic!("not a submit response")
    };
    assert_status(r.hdr.type_.get(), VIRTIO_ACCEL_RESP_ERR_JOB_FAILED);
    assert_eq!((r.fence.get(), r.device_time_ns.get()), (1, 0));
    let Response::Submit(r) = g.submit(&nop(c, 2, &[])) else {
        panic!("not a submit response")
    };
    assert_status(r.hdr.type_.get(), OK);
    assert!(r.device_time_ns.get() > 0);
    assert_status(g.ctx_destroy(c), OK);
}

fn nop(ctx: u32, fence: u64, waits: &[(u32, u64)]) -> Request {
    Guest::nop_request(ctx, fence, waits, 1)
}

#[test]
fn the_statuses_the_spec_now_names_are_the_ones_answered() {
    let mut cfg = Config::default();
    cfg.limits.max_bos = 3;
    cfg.limits.max_total_bo_bytes = 1 << 20;
    cfg.limits.max_job_memory = 5 << 20;
    let d = Daemon::start(cfg, 1);
    let mut g = connect(&d, 0);
    // The quotas are advertised behind VIRTIO_ACCEL_F_QUOTAS.
    assert!(g.has_feature(VIRTIO_ACCEL_F_QUOTAS));
    assert_eq!(g.config.max_bos.get(), 3);
    assert_eq!(g.config.max_total_bo_bytes.get(), 1 << 20);
    assert_eq!(g.config.max_job_memory.get(), 5 << 20);
    // ctx_id 0 names no context.
    assert_status(g.ctx_destroy(0), VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE);
    assert_status(
        g.bo_create_status(0, 4096, 0).0,
        VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE,
    );
    assert_status(
        g.submit(&nop(0, 1, &[])).status(),
        VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE,
    );
    let c = g.ctx_create();
    // cmd_size 0 is malformed.
    let mut empty = nop(c, 1, &[]);
    if let Request::Submit {
        req, inline_cmd, ..
    } = &mut empty
    {
        req.cmd_size = 0.into();
        inline_cmd.clear();
    }
    assert_status(g.submit(&empty).status(), INVALID);
    // A command-stream BO without backing is ERR_INVALID.
    let (st, unbacked) = g.bo_create_status(c, 4096, 0);
    assert_status(st, OK);
    let from_bo = Guest::submit_request(
        c,
        1,
        &[],
        &[],
        CmdSource::Bo {
            handle: unbacked,
            offset: 0,
            size: 16,
        },
    );
    assert_status(g.submit(&from_bo).status(), INVALID);
    // max_bos is a quota: the fourth BO is refused and nothing is held.
    g.bo(c, 4096, Layout::Contiguous);
    g.bo(c, 4096, Layout::Contiguous);
    assert_status(g.bo_create_status(c, 4096, 0).0, QUOTA);
    assert_eq!(d.vm_stats(0).unwrap().counts.bos, 3);
    // A count above a per-request limit is ERR_OUT_OF_RANGE.
    let fences: Vec<(u32, u64)> = (0..33).map(|_| (c, 0)).collect();
    assert_status(g.submit(&nop(c, 1, &fences)).status(), RANGE);
    assert_status(g.ctx_destroy(c), OK);
    assert_eq!(d.vm_stats(0).unwrap().counts, Default::default());
}

#[test]
fn a_wait_on_a_lost_context_is_refused_at_submit() {
    let mut cfg = Config::default();
    cfg.sim.faults.hang_jobs = vec![1];
    cfg.job_timeout_ms = 100;
    let d = Daemon::start(cfg, 1);
    let mut g = connect(&d, 0);
    let (v, w) = (g.ctx_create(), g.ctx_create());
    let hung = g.submit_async(&nop(v, 1, &[]));
    let waiter = g.submit_async(&nop(v, 2, &[]));
    assert_status(
        g.wait_submit(hung).status(),
        VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST,
    );
    assert_status(
        g.wait_submit(waiter).status(),
        VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST,
    );
    // V is lost at fence 0: a wait on its fence 1 can never be satisfied.
    assert_status(g.submit(&nop(w, 1, &[(v, 1)])).status(), CANCELED);
    // The refusal used nothing: fence 1 of W is still free.
    assert_status(g.submit(&nop(w, 1, &[(v, 0)])).status(), OK);
    assert_status(g.ctx_destroy(v), OK);
    assert_status(g.ctx_destroy(w), OK);
}

#[test]
fn backing_entries_are_a_quota() {
    let mut cfg = Config::default();
    cfg.limits.max_backing_entries = 8;
    let d = Daemon::start(cfg, 1);
    let mut g = connect(&d, 0);
    assert_eq!(g.config.max_backing_entries.get(), 8);
    let c = g.ctx_create();
    // Two scattered 16 KiB BOs: 4 entries each, the whole quota.
    let a = g.bo(c, 16384, Layout::Scattered);
    let b = g.bo(c, 16384, Layout::Scattered);
    assert_eq!(d.vm_stats(0).unwrap().counts.backing_entries, 8);
    let (st, h) = g.bo_create_status(c, 4096, 0);
    assert_status(st, OK);
    let page = g.alloc(4096, 4096);
    let attach = Guest::attach_request(c, h, &[(page, 4096)]);
    assert_status(g.status(&attach), QUOTA);
    assert_eq!(d.vm_stats(0).unwrap().counts.backing_entries, 8);
    // Detaching gives the entries back.
    assert_status(g.bo_destroy(&a), OK);
    assert_status(g.status(&attach), OK);
    assert_eq!(d.vm_stats(0).unwrap().counts.backing_entries, 5);
    let _ = b;
    assert_status(g.ctx_destroy(c), OK);
    assert_eq!(d.vm_stats(0).unwrap().counts, Default::default());
}

/// The software NPU, except that it panics in `prepare` for a stream of
/// two NOPs (a backend bug while a request is handled, on demand); its
/// first job panics on the engine (injected).
struct Flaky(SimNpu);

impl Backend for Flaky {
    type Context = <SimNpu as Backend>::Context;
    type Buffer = <SimNpu as Backend>::Buffer;
    type Job = <SimNpu as Backend>::Job;
    fn caps(&self) -> vhost_device_accel::backend::Caps {
        self.0.caps()
    }
    fn create_context(&self, p: u32) -> Result<Self::Context, BackendError> {
        self.0.create_context(p)
    }
    fn destroy_context(&self, ctx: Self::Context) {
        self.0.destroy_context(ctx)
    }
    fn import(
        &self,
        ctx: &Self::Context,
        backing: &vhost_device_accel::memory::Backing,
        mem: &vhost_device_accel::memory::VmMemory,
    ) -> Result<vhost_device_accel::backend::Imported<Self::Buffer>, BackendError> {
        self.0.import(ctx, backing, mem)
    }
    fn release(&self, ctx: &Self::Context, b: Self::Buffer) {
        self.0.release(ctx, b)
    }
    fn prepare(
        &self,
        ctx: &Self::Context,
        cmd: &[u8],
        bos: &[(&Self::Buffer, u32, u64)],
    ) -> Result<vhost_device_accel::backend::Prepared<Self::Job>, BackendError> {
        let ops = snpu::parse(cmd).map(|p| p.ops.len()).unwrap_or(0);
        assert_ne!(ops, 2, "backend bug in prepare");
        self.0.prepare(ctx, cmd, bos)
    }
    fn submit(&self, id: JobId, job: Self::Job) {
        self.0.submit(id, job)
    }
    fn resume(&self, id: JobId) {
        self.0.resume(id)
    }
    fn preempt(&self, id: JobId) {
        self.0.preempt(id)
    }
    fn abort(&self, id: JobId) {
        self.0.abort(id)
    }
    fn completion_fd(&self) -> std::os::fd::RawFd {
        self.0.completion_fd()
    }
    fn take_completions(&self, out: &mut Vec<vhost_device_accel::backend::Completion>) {
        self.0.take_completions(out)
    }
    fn ioctl(
        &self,
        ctx: &Self::Context,
        cmd: u32,
        input: &[u8],
        out_max: usize,
    ) -> Result<Vec<u8>, vhost_device_accel::backend::IoctlError> {
        self.0.ioctl(ctx, cmd, input, out_max)
    }
}

fn nops(ctx: u32, fence: u64, n: usize) -> Request {
    Guest::nop_request(ctx, fence, &[], n)
}

#[test]
fn a_panicking_npu_loses_one_context_and_the_worker_lives_on() {
    let npu = SimNpu::new(SimOptions {
        faults: Faults {
            panic_jobs: vec![1],
            ..Default::default()
        },
        engines: 1,
        tile: Tile::SLICED,
    })
    .unwrap();
    let server = vhost_device_accel::Server::new(Config::default(), Arc::new(Flaky(npu))).unwrap();
    let d = Daemon::start_with(server, &[1, 1]);
    let (mut g, mut other) = (connect(&d, 0), connect(&d, 1));
    let c = g.ctx_create();
    // A panic while the job runs: its context is lost with a device error.
    assert_status(
        g.submit(&nops(c, 1, 3)).status(),
        VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST,
    );
    let ev = g.wait_event();
    assert_eq!(
        (ev.hdr.ctx_id.get(), ev.reason.get()),
        (c, VIRTIO_ACCEL_LOST_DEVICE_ERROR)
    );
    // The only worker still runs jobs, for this VM and the other.
    let c2 = g.ctx_create();
    assert_status(g.submit(&nops(c2, 1, 1)).status(), OK);
    assert_runs_jobs(&mut other);
    // A panic while a request is handled, under the VM's device lock: the
    // lock is poisoned, that VM stops being served (its stats are no longer
    // read), and the other VM is not affected.
    assert!(d.vm_stats(0).is_some());
    let _never_answered = g.submit_async(&nops(c2, 2, 2));
    wait_until(|| d.vm_stats(0).is_none());
    assert_runs_jobs(&mut other);
    assert_runs_jobs(&mut other);
}
