//! Every request type through the real daemon: one success case and one
//! case per class of bad input it handles. Each checks the exact status,
//! that the daemon keeps serving, and that nothing leaked.

use vhost_device_accel::config::Limits;
use vhost_device_accel::Config;
use virtio_accel_integration::*;
use virtio_accel_protocol::snpu::{DType, OpDesc, Program, TensorDesc};
use virtio_accel_protocol::*;
use zerocopy::IntoBytes;

const OK: u32 = VIRTIO_ACCEL_RESP_OK;
const INVALID: u32 = VIRTIO_ACCEL_RESP_ERR_INVALID;
const UNKNOWN: u32 = VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE;
const RANGE: u32 = VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE;
const QUOTA: u32 = VIRTIO_ACCEL_RESP_ERR_QUOTA;
const BUSY: u32 = VIRTIO_ACCEL_RESP_ERR_BUSY;
const LOST: u32 = VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST;
const UNSUPPORTED: u32 = VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED;

fn setup_with(config: Config) -> (Daemon, Guest) {
    let d = Daemon::start(config, 1);
    let g = Guest::connect(d.socket(0), GuestOptions::default());
    (d, g)
}

fn setup() -> (Daemon, Guest) {
    setup_with(Config::default())
}

#[track_caller]
fn assert_status(got: u32, want: u32) {
    assert_eq!(status_name(got), status_name(want), "status {got:#x}");
}

/// The daemon still answers, and once the guest has destroyed `ctxs`, the
/// VM holds nothing.
#[track_caller]
fn assert_serving_and_clean(d: &Daemon, g: &mut Guest, ctxs: &[u32]) {
    assert_status(g.caps().hdr.type_.get(), OK);
    for &c in ctxs {
        assert_status(g.ctx_destroy(c), OK);
    }
    let s = d.vm_stats(0).expect("VM attached");
    assert_eq!(s.counts, Default::default(), "live objects left: {s:?}");
    assert_eq!(s.parked_chains, 0);
}

/// The status of a raw response.
fn raw_status(out: &[u8]) -> u32 {
    u32::from_le_bytes(out[..4].try_into().unwrap())
}

fn fence_poll(ctx: u32, seqno: u64) -> Request {
    Request::FencePoll(FencePoll {
        hdr: Hdr::new(VIRTIO_ACCEL_CMD_FENCE_POLL, ctx),
        seqno: seqno.into(),
    })
}

fn get_caps(ctx: u32, capset: u32) -> Request {
    Request::GetCaps(GetCaps {
        hdr: Hdr::new(VIRTIO_ACCEL_CMD_GET_CAPS, ctx),
        capset: capset.into(),
        padding: 0.into(),
    })
}

/// A program that copies `n` f32 from buffer 0 to buffer 1.
fn copy_program(n: u32) -> Vec<u8> {
    Program {
        ops: vec![OpDesc::Copy {
            src: TensorDesc::dense(0, DType::F32, 0, &[n]),
            dst: TensorDesc::dense(1, DType::F32, 0, &[n]),
        }],
    }
    .encode()
}

fn nop() -> Vec<u8> {
    Program {
        ops: vec![OpDesc::Nop],
    }
    .encode()
}

fn submit_nop(ctx: u32, fence: u64) -> Request {
    Guest::submit_request(ctx, fence, &[], &[], CmdSource::Inline(nop()))
}

// ---- chains and headers ----

#[test]
fn unknown_request_type_is_unsupported() {
    let (d, mut g) = setup();
    let (len, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, Hdr::new(0x0777, 0).as_bytes(), 16);
    assert_eq!(len, 16);
    assert_status(raw_status(&out), UNSUPPORTED);
    assert_serving_and_clean(&d, &mut g, &[]);
}

#[test]
fn short_request_is_invalid() {
    let (d, mut g) = setup();
    let bytes = get_caps(0, 0).encode();
    let (len, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes[..20], 112);
    assert_eq!(len, 112);
    assert_status(raw_status(&out), INVALID);
    // Not even a header.
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes[..3], 112);
    assert_status(raw_status(&out), INVALID);
    assert_serving_and_clean(&d, &mut g, &[]);
}

#[test]
fn oversized_request_is_invalid() {
    let (d, mut g) = setup();
    let mut bytes = get_caps(0, 0).encode();
    bytes.extend([0u8; 8]);
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes, 112);
    assert_status(raw_status(&out), INVALID);
    // Far above any request the daemon reads: refused without reading it.
    let huge = vec![0u8; 8 << 20];
    let mut big = get_caps(0, 0).encode();
    big.extend(&huge);
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &big, 112);
    assert_status(raw_status(&out), INVALID);
    assert_serving_and_clean(&d, &mut g, &[]);
}

#[test]
fn nonzero_reserved_and_unknown_header_flags_are_invalid() {
    let (d, mut g) = setup();
    let mut bytes = get_caps(0, 0).encode();
    bytes[12] = 1; // hdr.padding
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes, 112);
    assert_status(raw_status(&out), INVALID);
    let mut bytes = get_caps(0, 0).encode();
    bytes[4] = 1; // hdr.flags
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes, 112);
    assert_status(raw_status(&out), INVALID);
    assert_serving_and_clean(&d, &mut g, &[]);
}

#[test]
fn response_area_too_small_gets_header_or_nothing() {
    let (d, mut g) = setup();
    // Room for a header only: ERR_INVALID header.
    let (len, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &get_caps(0, 0).encode(), 16);
    assert_eq!(len, 16);
    assert_status(raw_status(&out), INVALID);
    // Less than a header: used length 0, nothing written.
    let (len, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &get_caps(0, 0).encode(), 8);
    assert_eq!(len, 0);
    assert_eq!(out, vec![0xee; 8]);
    // No writable part at all.
    let (len, _) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &get_caps(0, 0).encode(), 0);
    assert_eq!(len, 0);
    assert_serving_and_clean(&d, &mut g, &[]);
}

#[test]
fn malformed_chains_are_completed_and_the_batch_goes_on() {
    let (d, mut g) = setup();
    let req = get_caps(0, 0).encode();
    let rq = g.alloc(req.len() as u64, 8);
    let rs = g.alloc(112, 8);
    g.mem
        .write_slice(&req, vm_memory::GuestAddress(rq))
        .unwrap();
    use vm_memory::Bytes;
    // Writable descriptor before a readable one.
    let (len, out) = g.call_chain(
        VIRTIO_ACCEL_VQ_CONTROL,
        &[
            Desc {
                addr: rs,
                len: 112,
                write: true,
            },
            Desc {
                addr: rq,
                len: req.len() as u32,
                write: false,
            },
        ],
    );
    assert_eq!(len, 16);
    assert_status(raw_status(&out), INVALID);
    // Readable descriptor outside guest memory: the type is unknown, so
    // the answer is a bare header.
    let (len, out) = g.call_chain(
        VIRTIO_ACCEL_VQ_CONTROL,
        &[
            Desc {
                addr: 1 << 40,
                len: 24,
                write: false,
            },
            Desc {
                addr: rs,
                len: 112,
                write: true,
            },
        ],
    );
    assert_eq!(len, 16);
    assert_status(raw_status(&out), INVALID);
    // Writable descriptor outside guest memory: nothing can be written.
    let q = VIRTIO_ACCEL_VQ_CONTROL as usize;
    let head = g.rings[q].add(
        &g.mem,
        &[
            Desc {
                addr: rq,
                len: req.len() as u32,
                write: false,
            },
            Desc {
                addr: 1 << 40,
                len: 112,
                write: true,
            },
        ],
    );
    // Batch: a good request right behind it is still answered.
    let good = g.rings[q].add(
        &g.mem,
        &[
            Desc {
                addr: rq,
                len: req.len() as u32,
                write: false,
            },
            Desc {
                addr: rs,
                len: 112,
                write: true,
            },
        ],
    );
    g.rings[q].kick(&g.mem);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(
            g.rings[q]
                .wait_used(&g.mem, WaitMode::Block, std::time::Duration::from_secs(10))
                .expect("answered"),
        );
    }
    assert!(seen.contains(&(head, 0)));
    assert!(seen.contains(&(good, 112)));
    assert_serving_and_clean(&d, &mut g, &[]);
}

// ---- GET_CAPS ----

#[test]
fn get_caps_bad_capset_is_out_of_range() {
    let (d, mut g) = setup();
    assert_status(g.status(&get_caps(0, 1)), RANGE);
    assert_status(g.status(&get_caps(0, u32::MAX)), RANGE);
    assert_serving_and_clean(&d, &mut g, &[]);
}

#[test]
fn get_caps_with_context_is_invalid() {
    let (d, mut g) = setup();
    let bytes = get_caps(3, 0).encode();
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes, 112);
    assert_status(raw_status(&out), INVALID);
    assert_serving_and_clean(&d, &mut g, &[]);
}

// ---- CTX_CREATE / CTX_DESTROY ----

#[test]
fn ctx_create_and_destroy() {
    let (d, mut g) = setup();
    let a = g.ctx_create();
    let b = g.ctx_create();
    assert_ne!(a, b);
    assert_eq!(d.vm_stats(0).unwrap().counts.contexts, 2);
    assert_serving_and_clean(&d, &mut g, &[a, b]);
}

#[test]
fn ctx_create_bad_priority_is_invalid() {
    let (d, mut g) = setup();
    let mut bytes = Request::CtxCreate(CtxCreate {
        hdr: Hdr::new(VIRTIO_ACCEL_CMD_CTX_CREATE, 0),
        priority: 0.into(),
        padding: 0.into(),
    })
    .encode();
    bytes[16] = 3;
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes, 16);
    assert_status(raw_status(&out), INVALID);
    assert_serving_and_clean(&d, &mut g, &[]);
}

#[test]
fn ctx_create_beyond_quota_is_refused() {
    let mut c = Config::default();
    c.limits.max_contexts = 2;
    let (d, mut g) = setup_with(c);
    let a = g.ctx_create();
    let b = g.ctx_create();
    let (s, id) = g.ctx_create_status(VIRTIO_ACCEL_PRIORITY_LOW);
    assert_status(s, QUOTA);
    assert_eq!(id, 0);
    // Freeing one makes room again.
    assert_status(g.ctx_destroy(a), OK);
    let c2 = g.ctx_create();
    assert_serving_and_clean(&d, &mut g, &[b, c2]);
}

#[test]
fn ctx_destroy_unknown_or_twice_is_unknown_handle() {
    let (d, mut g) = setup();
    assert_status(g.ctx_destroy(42), UNKNOWN);
    let a = g.ctx_create();
    assert_status(g.ctx_destroy(a), OK);
    assert_status(g.ctx_destroy(a), UNKNOWN);
    assert_serving_and_clean(&d, &mut g, &[]);
}

#[test]
fn ctx_destroy_releases_its_buffers() {
    let (d, mut g) = setup();
    let a = g.ctx_create();
    for _ in 0..5 {
        g.bo(a, 8192, Layout::Scattered);
    }
    assert_eq!(d.vm_stats(0).unwrap().counts.bos, 5);
    assert_serving_and_clean(&d, &mut g, &[a]);
}

#[test]
fn another_vms_context_and_buffers_are_unknown() {
    let d = Daemon::start(Config::default(), 2);
    let mut a = Guest::connect(d.socket(0), GuestOptions::default());
    let mut b = Guest::connect(d.socket(1), GuestOptions::default());
    let ca = a.ctx_create();
    let bo = a.bo(ca, 4096, Layout::Contiguous);
    // VM b has no context: A's context id means nothing there.
    assert_status(b.ctx_destroy(ca), UNKNOWN);
    let cb = b.ctx_create();
    let info = Request::BoInfo(Guest::bo_req(VIRTIO_ACCEL_CMD_BO_INFO, cb, bo.handle));
    assert_status(b.status(&info), UNKNOWN);
    // A's objects are untouched.
    let info = Request::BoInfo(Guest::bo_req(VIRTIO_ACCEL_CMD_BO_INFO, ca, bo.handle));
    assert_status(a.status(&info), OK);
    assert_status(b.ctx_destroy(cb), OK);
    assert_status(a.ctx_destroy(ca), OK);
}

// ---- BO_CREATE / BO_DESTROY / BO_INFO ----

#[test]
fn bo_create_info_destroy() {
    let (d, mut g) = setup();
    let c = g.ctx_create();
    let bo = g.bo(c, 3 * 4096 + 100, Layout::Scattered);
    let Response::BoInfo(i) = g.call(&Request::BoInfo(Guest::bo_req(
        VIRTIO_ACCEL_CMD_BO_INFO,
        c,
        bo.handle,
    ))) else {
        panic!()
    };
    assert_status(i.hdr.type_.get(), OK);
    assert_eq!(i.size.get(), 3 * 4096 + 100);
    assert_eq!(i.nr_entries.get(), 4);
    assert_eq!(i.state.get(), VIRTIO_ACCEL_BO_STATE_BACKED);
    assert_status(g.bo_destroy(&bo), OK);
    assert_serving_and_clean(&d, &mut g, &[c]);
}

#[test]
fn bo_create_bad_sizes_and_flags() {
    let cfg = Config {
        limits: Limits {
            max_bo_size: 1 << 20,
            max_total_bo_bytes: 3 << 20,
            max_bos: 4,
            ..Limits::default()
        },
        ..Config::default()
    };
    let (d, mut g) = setup_with(cfg);
    let c = g.ctx_create();
    assert_status(g.bo_create_status(c, (1 << 20) + 1, 0).0, RANGE);
    assert_status(
        g.bo_create_status(c, 4096, VIRTIO_ACCEL_BO_F_HOST).0,
        UNSUPPORTED,
    );
    assert_status(g.bo_create_status(99, 4096, 0).0, UNKNOWN);
    // Zero size and unknown flags are malformed.
    let mut bytes = Request::BoCreate(BoCreate {
        hdr: Hdr::new(VIRTIO_ACCEL_CMD_BO_CREATE, c),
        size: 1.into(),
        ..Default::default()
    })
    .encode();
    bytes[16..24].copy_from_slice(&0u64.to_le_bytes());
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes, 32);
    assert_status(raw_status(&out), INVALID);
    bytes[16..24].copy_from_slice(&4096u64.to_le_bytes());
    bytes[24] = 0x80;
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes, 32);
    assert_status(raw_status(&out), INVALID);
    // Byte quota: three 1 MiB buffers fit, a fourth does not.
    for _ in 0..3 {
        assert_status(g.bo_create_status(c, 1 << 20, 0).0, OK);
    }
    assert_status(g.bo_create_status(c, 4096, 0).0, QUOTA);
    assert_serving_and_clean(&d, &mut g, &[c]);
    // Count quota.
    let c = g.ctx_create();
    for _ in 0..4 {
        assert_status(g.bo_create_status(c, 4096, 0).0, OK);
    }
    assert_status(g.bo_create_status(c, 4096, 0).0, QUOTA);
    assert_serving_and_clean(&d, &mut g, &[c]);
}

#[test]
fn bo_handles_of_another_context_are_unknown() {
    let (d, mut g) = setup();
    let a = g.ctx_create();
    let b = g.ctx_create();
    let _first = g.bo(a, 4096, Layout::Contiguous);
    let second = g.bo(a, 4096, Layout::Contiguous);
    for t in [
        VIRTIO_ACCEL_CMD_BO_INFO,
        VIRTIO_ACCEL_CMD_BO_DESTROY,
        VIRTIO_ACCEL_CMD_BO_DETACH_BACKING,
    ] {
        let req = Guest::bo_req(t, b, second.handle);
        let r = match t {
            VIRTIO_ACCEL_CMD_BO_INFO => Request::BoInfo(req),
            VIRTIO_ACCEL_CMD_BO_DESTROY => Request::BoDestroy(req),
            _ => Request::BoDetachBacking(req),
        };
        assert_status(g.status(&r), UNKNOWN);
    }
    assert_serving_and_clean(&d, &mut g, &[a, b]);
}

#[test]
fn bo_in_use_by_a_job_is_busy() {
    let mut cfg = Config::default();
    cfg.sim.faults.latency_us = 300_000;
    let (d, mut g) = setup_with(cfg);
    let c = g.ctx_create();
    let src = g.bo(c, 4096, Layout::Contiguous);
    let dst = g.bo(c, 4096, Layout::Contiguous);
    let p = g.submit_async(&Guest::submit_request(
        c,
        1,
        &[
            (src.handle, VIRTIO_ACCEL_ACCESS_READ),
            (dst.handle, VIRTIO_ACCEL_ACCESS_WRITE),
        ],
        &[],
        CmdSource::Inline(copy_program(1024)),
    ));
    // The submit queue is served independently of the control queue:
    // wait until the job holds its buffers.
    let info = Request::BoInfo(Guest::bo_req(VIRTIO_ACCEL_CMD_BO_INFO, c, dst.handle));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let Response::BoInfo(i) = g.call(&info) else {
            panic!()
        };
        if i.state.get() & VIRTIO_ACCEL_BO_STATE_BUSY != 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job never held its buffer"
        );
    }
    assert_status(g.bo_destroy(&dst), BUSY);
    let detach = Request::BoDetachBacking(Guest::bo_req(
        VIRTIO_ACCEL_CMD_BO_DETACH_BACKING,
        c,
        src.handle,
    ));
    assert_status(g.status(&detach), BUSY);
    // FENCE_POLL answers at once while the job runs.
    let poll = fence_poll(c, 1);
    let Response::Fence(f) = g.call(&poll) else {
        panic!()
    };
    assert_status(f.hdr.type_.get(), BUSY);
    assert_eq!(f.completed.get(), 0);
    assert_status(g.wait_submit(p).status(), OK);
    let Response::Fence(f) = g.call(&poll) else {
        panic!()
    };
    assert_status(f.hdr.type_.get(), OK);
    assert_eq!(f.completed.get(), 1);
    assert_status(g.status(&detach), OK);
    assert_status(g.bo_destroy(&dst), OK);
    assert_serving_and_clean(&d, &mut g, &[c]);
}

// ---- BO_ATTACH_BACKING / BO_DETACH_BACKING ----

#[test]
fn attach_backing_bad_inputs() {
    let mut cfg = Config::default();
    cfg.limits.max_sg_entries = 8;
    let (d, mut g) = setup_with(cfg);
    let c = g.ctx_create();
    let (_, h) = g.bo_create_status(c, 8192, 0);
    let mem = g.alloc(8192, 4096);
    // Outside guest memory.
    assert_status(
        g.status(&Guest::attach_request(c, h, &[(1 << 40, 8192)])),
        RANGE,
    );
    // Straddling the end of guest memory.
    let end: u64 = g.opts.regions.iter().sum();
    assert_status(
        g.status(&Guest::attach_request(c, h, &[(end - 4096, 8192)])),
        RANGE,
    );
    // Address + length overflows.
    assert_status(
        g.status(&Guest::attach_request(
            c,
            h,
            &[(u64::MAX - 100, 4096), (mem, 4096)],
        )),
        RANGE,
    );
    // Lengths do not add up to the buffer size.
    assert_status(
        g.status(&Guest::attach_request(c, h, &[(mem, 4096)])),
        INVALID,
    );
    assert_status(
        g.status(&Guest::attach_request(c, h, &[(mem, 8192), (mem, 1)])),
        INVALID,
    );
    // More entries than the device allows.
    let many: Vec<(u64, u32)> = (0..9).map(|i| (mem + i * 16, 16)).collect();
    assert_status(g.status(&Guest::attach_request(c, h, &many)), RANGE);
    // Unknown handle, unknown context.
    assert_status(
        g.status(&Guest::attach_request(c, h + 1, &[(mem, 8192)])),
        UNKNOWN,
    );
    assert_status(
        g.status(&Guest::attach_request(c + 1, h, &[(mem, 8192)])),
        UNKNOWN,
    );
    // Zero entries, zero-length entry, nonzero entry padding: malformed.
    let mut bytes = Guest::attach_request(c, h, &[(mem, 8192)]).encode();
    bytes[20..24].copy_from_slice(&0u32.to_le_bytes());
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes[..24], 16);
    assert_status(raw_status(&out), INVALID);
    let mut bytes = Guest::attach_request(c, h, &[(mem, 4096), (mem + 4096, 4096)]).encode();
    bytes[24 + 8..24 + 12].copy_from_slice(&0u32.to_le_bytes());
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes, 16);
    assert_status(raw_status(&out), INVALID);
    let mut bytes = Guest::attach_request(c, h, &[(mem, 8192)]).encode();
    bytes[24 + 12] = 1;
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes, 16);
    assert_status(raw_status(&out), INVALID);
    // Nothing was attached by any of that.
    let info = Request::BoInfo(Guest::bo_req(VIRTIO_ACCEL_CMD_BO_INFO, c, h));
    let Response::BoInfo(i) = g.call(&info) else {
        panic!()
    };
    assert_eq!(i.state.get(), 0);
    // Success, then attaching again is invalid.
    assert_status(g.status(&Guest::attach_request(c, h, &[(mem, 8192)])), OK);
    assert_status(
        g.status(&Guest::attach_request(c, h, &[(mem, 8192)])),
        INVALID,
    );
    assert_serving_and_clean(&d, &mut g, &[c]);
}

#[test]
fn detach_backing_then_reattach() {
    let (d, mut g) = setup();
    let c = g.ctx_create();
    let bo = g.bo(c, 4096, Layout::Contiguous);
    let detach = Request::BoDetachBacking(Guest::bo_req(
        VIRTIO_ACCEL_CMD_BO_DETACH_BACKING,
        c,
        bo.handle,
    ));
    assert_status(g.status(&detach), OK);
    assert_status(g.status(&detach), INVALID);
    assert_status(
        g.status(&Guest::attach_request(c, bo.handle, &bo.ranges)),
        OK,
    );
    assert_serving_and_clean(&d, &mut g, &[c]);
}

#[test]
fn shared_memory_requests_are_unsupported() {
    let (d, mut g) = setup();
    let c = g.ctx_create();
    let (_, h) = g.bo_create_status(c, 4096, 0);
    let map = Request::BoMapShm(Guest::bo_req(VIRTIO_ACCEL_CMD_BO_MAP_SHM, c, h));
    assert_status(g.status(&map), UNSUPPORTED);
    let unmap = Request::BoUnmapShm(Guest::bo_req(VIRTIO_ACCEL_CMD_BO_UNMAP_SHM, c, h));
    assert_status(g.status(&unmap), UNSUPPORTED);
    assert_serving_and_clean(&d, &mut g, &[c]);
}

// ---- FENCE_POLL ----

#[test]
fn fence_poll_unknown_context() {
    let (d, mut g) = setup();
    let poll = fence_poll(5, 1);
    assert_status(g.status(&poll), UNKNOWN);
    assert_serving_and_clean(&d, &mut g, &[]);
}

// ---- IOCTL ----

fn ioctl(ctx: u32, cmd: u32, input: &[u8], out: u32) -> Request {
    Request::Ioctl {
        req: Ioctl {
            hdr: Hdr::new(VIRTIO_ACCEL_CMD_IOCTL, ctx),
            cmd: cmd.into(),
            in_size: (input.len() as u32).into(),
            out_size: out.into(),
            padding: 0.into(),
        },
        payload: input.to_vec(),
    }
}

#[test]
fn ioctl_get_stats_reports_the_contexts_jobs() {
    let (d, mut g) = setup();
    let c = g.ctx_create();
    for f in 1..=3 {
        assert_status(g.submit(&submit_nop(c, f)).status(), OK);
    }
    let Response::Ioctl { resp, payload } = g.call(&ioctl(c, 1, &[], 32)) else {
        panic!()
    };
    assert_status(resp.hdr.type_.get(), OK);
    assert_eq!(resp.out_size.get(), 32);
    let v: Vec<u64> = payload
        .chunks(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(v[0], 3, "jobs completed");
    assert_eq!(v[1], 0, "jobs failed");
    assert_eq!(v[3], 3, "ops executed");
    assert_serving_and_clean(&d, &mut g, &[c]);
}

#[test]
fn ioctl_bad_inputs() {
    let (d, mut g) = setup();
    let c = g.ctx_create();
    assert_status(g.status(&ioctl(c, 0x99, &[], 32)), UNSUPPORTED);
    assert_status(g.status(&ioctl(c, 1, &[1, 2], 32)), INVALID);
    assert_status(g.status(&ioctl(c, 1, &[], 16)), INVALID);
    assert_status(g.status(&ioctl(c + 7, 1, &[], 32)), UNKNOWN);
    // Payload sizes above the protocol ceiling.
    let bytes = ioctl(c, 1, &[], 8192).encode();
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &bytes, 24);
    assert_status(raw_status(&out), RANGE);
    assert_serving_and_clean(&d, &mut g, &[c]);
}

#[test]
fn ioctl_without_the_feature_is_unsupported() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = Guest::connect(
        d.socket(0),
        GuestOptions {
            device_features: 0,
            ..GuestOptions::default()
        },
    );
    let c = g.ctx_create();
    assert_status(g.status(&ioctl(c, 1, &[], 32)), UNSUPPORTED);
    // Inline command streams and cross-context fences need their features too.
    assert_status(g.submit(&submit_nop(c, 1)).status(), UNSUPPORTED);
    let c2 = g.ctx_create();
    let cmd = g.bo(c, 4096, Layout::Contiguous);
    g.write_bo(&cmd, 0, &nop());
    let r = Guest::submit_request(
        c,
        1,
        &[],
        &[(c2, 1)],
        CmdSource::Bo {
            handle: cmd.handle,
            offset: 0,
            size: nop().len() as u32,
        },
    );
    assert_status(g.submit(&r).status(), UNSUPPORTED);
    let r = Guest::submit_request(
        c,
        1,
        &[],
        &[],
        CmdSource::Bo {
            handle: cmd.handle,
            offset: 0,
            size: nop().len() as u32,
        },
    );
    assert_status(g.submit(&r).status(), OK);
    assert_status(g.ctx_destroy(c2), OK);
    assert_status(g.ctx_destroy(c), OK);
    assert_eq!(d.vm_stats(0).unwrap().counts, Default::default());
}

// ---- SUBMIT ----

#[test]
fn submit_on_the_wrong_queue_is_invalid() {
    let (d, mut g) = setup();
    let c = g.ctx_create();
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &submit_nop(c, 1).encode(), 32);
    assert_status(raw_status(&out), INVALID);
    let (_, out) = g.call_raw(VIRTIO_ACCEL_VQ_SUBMIT, &get_caps(0, 0).encode(), 112);
    assert_status(raw_status(&out), INVALID);
    assert_serving_and_clean(&d, &mut g, &[c]);
}

#[test]
fn submit_bad_handles_and_lists() {
    let (d, mut g) = setup();
    let c = g.ctx_create();
    let other = g.ctx_create();
    let a = g.bo(c, 4096, Layout::Contiguous);
    let b = g.bo(c, 4096, Layout::Contiguous);
    let (_, unbacked) = g.bo_create_status(c, 4096, 0);
    let r = VIRTIO_ACCEL_ACCESS_READ;
    let w = VIRTIO_ACCEL_ACCESS_WRITE;
    let run = |g: &mut Guest, ctx, fence, bos: &[(u32, u32)], fences: &[(u32, u64)]| {
        g.submit(&Guest::submit_request(
            ctx,
            fence,
            bos,
            fences,
            CmdSource::Inline(copy_program(16)),
        ))
        .status()
    };
    assert_status(
        run(&mut g, 77, 1, &[(a.handle, r), (b.handle, w)], &[]),
        UNKNOWN,
    );
    assert_status(run(&mut g, c, 1, &[(a.handle, r), (999, w)], &[]), UNKNOWN);
    assert_status(
        run(&mut g, other, 1, &[(a.handle, r), (b.handle, w)], &[]),
        UNKNOWN,
    );
    assert_status(
        run(&mut g, c, 1, &[(a.handle, r), (a.handle, w)], &[]),
        INVALID,
    );
    assert_status(
        run(&mut g, c, 1, &[(a.handle, r), (unbacked, w)], &[]),
        INVALID,
    );
    assert_status(
        run(&mut g, c, 1, &[(a.handle, r), (b.handle, w)], &[(99, 1)]),
        UNKNOWN,
    );
    assert_status(
        run(&mut g, c, 2, &[(a.handle, r), (b.handle, w)], &[(c, 2)]),
        INVALID,
    );
    // Program writes buffer 1 listed read-only.
    assert_status(
        run(&mut g, c, 1, &[(a.handle, r), (b.handle, r)], &[]),
        INVALID,
    );
    // Success, then the same fence again is not increasing.
    assert_status(run(&mut g, c, 5, &[(a.handle, r), (b.handle, w)], &[]), OK);
    assert_status(
        run(&mut g, c, 5, &[(a.handle, r), (b.handle, w)], &[]),
        INVALID,
    );
    assert_status(
        run(&mut g, c, 4, &[(a.handle, r), (b.handle, w)], &[]),
        INVALID,
    );
    assert_status(run(&mut g, c, 6, &[(a.handle, r), (b.handle, w)], &[]), OK);
    // Nothing stays busy after rejected submits.
    assert_status(g.bo_destroy(&a), OK);
    assert_serving_and_clean(&d, &mut g, &[c, other]);
}

#[test]
fn submit_bad_command_streams() {
    let mut cfg = Config::default();
    cfg.limits.max_cmd_size = 8192;
    let (d, mut g) = setup_with(cfg);
    let c = g.ctx_create();
    let a = g.bo(c, 4096, Layout::Contiguous);
    let b = g.bo(c, 4096, Layout::Contiguous);
    let cmd = g.bo(c, 16384, Layout::Scattered);
    let list = [
        (a.handle, VIRTIO_ACCEL_ACCESS_READ),
        (b.handle, VIRTIO_ACCEL_ACCESS_WRITE),
    ];
    let from_bo = |off: u64, size: u32| CmdSource::Bo {
        handle: cmd.handle,
        offset: off,
        size,
    };
    let good = copy_program(16);
    g.write_bo(&cmd, 100, &good);
    let mut fence = 0;
    let mut run = |g: &mut Guest, src: CmdSource| {
        fence += 1;
        g.submit(&Guest::submit_request(c, fence, &list, &[], src))
            .status()
    };
    assert_status(run(&mut g, from_bo(100, good.len() as u32)), OK);
    // Larger than the device's command-stream limit.
    assert_status(run(&mut g, from_bo(0, 8193)), RANGE);
    // Outside the command buffer.
    assert_status(run(&mut g, from_bo(16384 - 100, good.len() as u32)), RANGE);
    // Unknown command buffer.
    assert_status(
        run(
            &mut g,
            CmdSource::Bo {
                handle: 4242,
                offset: 0,
                size: 16,
            },
        ),
        UNKNOWN,
    );
    // Garbage.
    assert_status(run(&mut g, CmdSource::Inline(vec![0xab; 64])), INVALID);
    // Tensor past the end of its buffer (4096 bytes = 1024 f32).
    assert_status(run(&mut g, CmdSource::Inline(copy_program(1025))), RANGE);
    // Inline stream above the inline limit.
    let big = vec![0u8; 4097];
    assert_status(run(&mut g, CmdSource::Inline(big)), RANGE);
    assert_serving_and_clean(&d, &mut g, &[c]);
}

#[test]
fn submit_counts_above_limits_are_out_of_range() {
    let mut cfg = Config::default();
    cfg.limits.max_submit_bos = 2;
    cfg.limits.max_in_fences = 1;
    let (d, mut g) = setup_with(cfg);
    let c = g.ctx_create();
    let r = Guest::submit_request(
        c,
        3,
        &[(1, 1), (2, 1), (3, 1)],
        &[],
        CmdSource::Inline(nop()),
    );
    assert_status(g.submit(&r).status(), RANGE);
    let r = Guest::submit_request(c, 3, &[], &[(c, 1), (c, 2)], CmdSource::Inline(nop()));
    assert_status(g.submit(&r).status(), RANGE);
    assert_serving_and_clean(&d, &mut g, &[c]);
}

#[test]
fn jobs_in_flight_beyond_quota_are_refused() {
    let mut cfg = Config::default();
    cfg.limits.max_jobs_in_flight = 4;
    cfg.sim.faults.latency_us = 50_000;
    let (d, mut g) = setup_with(cfg);
    let c = g.ctx_create();
    let pending: Vec<_> = (1..=4).map(|f| g.submit_async(&submit_nop(c, f))).collect();
    assert_status(g.submit(&submit_nop(c, 5)).status(), QUOTA);
    for p in pending {
        assert_status(g.wait_submit(p).status(), OK);
    }
    assert_status(g.submit(&submit_nop(c, 6)).status(), OK);
    assert_serving_and_clean(&d, &mut g, &[c]);
}

// ---- fences, ordering, dependencies ----

#[test]
fn many_jobs_in_flight_complete_in_fence_order_per_context() {
    let (d, mut g) = setup();
    let ctxs: Vec<u32> = (0..4).map(|_| g.ctx_create()).collect();
    let mut pending = std::collections::HashMap::new();
    // 120 two-descriptor chains in a 256-entry ring.
    for f in 1..=30u64 {
        for &c in &ctxs {
            let p = g.submit_async(&submit_nop(c, f));
            pending.insert(p, (c, f));
        }
    }
    let mut last = std::collections::HashMap::new();
    for _ in 0..pending.len() {
        let (p, r) = g.wait_any_submit();
        let (c, f) = pending[&p];
        assert_status(r.status(), OK);
        let Response::Submit(s) = r else { panic!() };
        assert_eq!(s.fence.get(), f);
        let prev = last.insert(c, f).unwrap_or(0);
        assert!(f > prev, "context {c}: fence {f} after {prev}");
    }
    for &c in &ctxs {
        let poll = fence_poll(c, 30);
        let Response::Fence(f) = g.call(&poll) else {
            panic!()
        };
        assert_eq!(f.completed.get(), 30);
    }
    assert_serving_and_clean(&d, &mut g, &ctxs);
}

#[test]
fn cross_context_fence_orders_jobs() {
    let cfg = Config {
        workers: 2,
        ..Config::default()
    };
    let (d, mut g) = setup_with(cfg);
    let a = g.ctx_create();
    let b = g.ctx_create();
    let src = g.bo(a, 1 << 20, Layout::Contiguous);
    let mid = g.bo(a, 1 << 20, Layout::Contiguous);
    g.write_bo(&src, 0, &vec![7u8; 1 << 20]);
    // B's copy reads A's output; B must wait for A's fence.
    let bmid = g.bo(b, 1 << 20, Layout::Contiguous);
    // B's buffer aliases A's output pages, as a shared dma-buf would.
    let (_, alias) = g.bo_create_status(b, 1 << 20, 0);
    assert_status(g.status(&Guest::attach_request(b, alias, &mid.ranges)), OK);
    let n = (1 << 20) / 4;
    let pa = g.submit_async(&Guest::submit_request(
        a,
        1,
        &[(src.handle, 1), (mid.handle, 2)],
        &[],
        CmdSource::Inline(copy_program(n)),
    ));
    let pb = g.submit_async(&Guest::submit_request(
        b,
        1,
        &[(alias, 1), (bmid.handle, 2)],
        &[(a, 1)],
        CmdSource::Inline(copy_program(n)),
    ));
    let first = g.wait_any_submit();
    assert_eq!(first.0, pa, "dependent job finished first");
    assert_status(first.1.status(), OK);
    assert_status(g.wait_submit(pb).status(), OK);
    assert_eq!(g.read_bo(&bmid, 0, 1 << 20), vec![7u8; 1 << 20]);
    assert_serving_and_clean(&d, &mut g, &[b, a]);
}

#[test]
fn destroying_a_context_cancels_its_queued_jobs() {
    let mut cfg = Config::default();
    cfg.sim.faults.latency_us = 100_000;
    let (d, mut g) = setup_with(cfg);
    let c = g.ctx_create();
    let ps: Vec<_> = (1..=5).map(|f| g.submit_async(&submit_nop(c, f))).collect();
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert_status(g.ctx_destroy(c), OK);
    let statuses: Vec<u32> = ps.into_iter().map(|p| g.wait_submit(p).status()).collect();
    assert_status(statuses[0], OK); // was running
    for s in &statuses[1..] {
        assert_status(*s, VIRTIO_ACCEL_RESP_ERR_CANCELED);
    }
    assert_serving_and_clean(&d, &mut g, &[]);
}

// ---- faults: failed jobs, hangs, lost contexts ----

#[test]
fn injected_job_failure_fails_only_that_job() {
    let mut cfg = Config::default();
    cfg.sim.faults.fail_jobs = vec![2];
    let (d, mut g) = setup_with(cfg);
    let c = g.ctx_create();
    assert_status(g.submit(&submit_nop(c, 1)).status(), OK);
    let r = g.submit(&submit_nop(c, 2));
    assert_status(r.status(), VIRTIO_ACCEL_RESP_ERR_JOB_FAILED);
    let Response::Submit(s) = r else { panic!() };
    assert_eq!(s.fence.get(), 2);
    // The fence signalled and the context goes on.
    assert_status(g.submit(&submit_nop(c, 3)).status(), OK);
    assert_serving_and_clean(&d, &mut g, &[c]);
}

#[test]
fn hung_job_loses_its_context_and_raises_an_event() {
    let mut cfg = Config::default();
    cfg.sim.faults.hang_jobs = vec![2];
    cfg.job_timeout_ms = 200;
    cfg.sim.faults.latency_us = 0;
    let (d, mut g) = setup_with(cfg);
    let c = g.ctx_create();
    let other = g.ctx_create();
    assert_status(g.submit(&submit_nop(c, 1)).status(), OK);
    let hung = g.submit_async(&submit_nop(c, 2));
    let queued = g.submit_async(&submit_nop(c, 3));
    assert_status(g.wait_submit(hung).status(), LOST);
    assert_status(g.wait_submit(queued).status(), LOST);
    let ev = g.wait_event();
    assert_eq!(ev.hdr.type_.get(), VIRTIO_ACCEL_EVENT_CONTEXT_LOST);
    assert_eq!(ev.hdr.ctx_id.get(), c);
    assert_eq!(ev.fence.get(), 1);
    assert_eq!(ev.reason.get(), VIRTIO_ACCEL_LOST_HANG);
    // The lost context refuses work but can be polled and destroyed.
    assert_status(g.submit(&submit_nop(c, 4)).status(), LOST);
    assert_status(g.bo_create_status(c, 4096, 0).0, LOST);
    assert_status(g.status(&fence_poll(c, 1)), OK);
    assert_status(g.status(&fence_poll(c, 2)), LOST);
    // Other contexts are unaffected.
    assert_status(g.submit(&submit_nop(other, 1)).status(), OK);
    assert_serving_and_clean(&d, &mut g, &[c, other]);
}

#[test]
fn event_buffers_too_small_are_returned_empty_and_the_event_waits() {
    let mut cfg = Config::default();
    cfg.sim.faults.hang_jobs = vec![1];
    cfg.job_timeout_ms = 100;
    let d = Daemon::start(cfg, 1);
    let mut g = Guest::connect(
        d.socket(0),
        GuestOptions {
            event_buf_len: 16,
            ..GuestOptions::default()
        },
    );
    let c = g.ctx_create();
    assert_status(g.submit(&submit_nop(c, 1)).status(), LOST);
    // Every 16-byte buffer comes back empty; nothing bogus is delivered.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(g.events().is_empty());
    assert_eq!(d.vm_stats(0).unwrap().counts.events, 1, "event kept");
    // A buffer of the right size receives the event.
    g.opts.event_buf_len = 32;
    g.fill_eventq(1);
    let ev = g.wait_event();
    assert_eq!(ev.hdr.type_.get(), VIRTIO_ACCEL_EVENT_CONTEXT_LOST);
    assert_eq!(ev.hdr.ctx_id.get(), c);
    assert_serving_and_clean(&d, &mut g, &[c]);
}

// ---- lifecycle ----

#[test]
fn disconnect_releases_everything_and_the_socket_serves_again() {
    let mut cfg = Config::default();
    cfg.sim.faults.latency_us = 20_000;
    let d = Daemon::start(cfg, 1);
    {
        let mut g = Guest::connect(d.socket(0), GuestOptions::default());
        let c = g.ctx_create();
        for _ in 0..10 {
            g.bo(c, 65536, Layout::Scattered);
        }
        for f in 1..=8 {
            g.submit_async(&submit_nop(c, f));
        }
        assert!(d.vm_stats(0).unwrap().counts.bos == 10);
    }
    d.wait_disconnected(0);
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let c = g.ctx_create();
    assert_status(g.submit(&submit_nop(c, 1)).status(), OK);
    assert_serving_and_clean(&d, &mut g, &[c]);
}

#[test]
fn device_reset_drops_every_object() {
    let (d, mut g) = setup();
    let c = g.ctx_create();
    g.bo(c, 4096, Layout::Contiguous);
    use vhost::vhost_user::VhostUserFrontend;
    g.frontend.reset_device().unwrap();
    let s = d.vm_stats(0).unwrap();
    assert_eq!(s.counts, Default::default());
}

#[test]
fn round_trips_through_a_large_ring_with_and_without_event_idx() {
    for event_idx in [false, true] {
        let d = Daemon::start(Config::default(), 1);
        let mut g = Guest::connect(
            d.socket(0),
            GuestOptions {
                queue_size: 512,
                event_idx,
                ..GuestOptions::default()
            },
        );
        assert_eq!(g.features & guest::VIRTIO_RING_F_EVENT_IDX != 0, event_idx);
        for _ in 0..1200 {
            assert_status(g.caps().hdr.type_.get(), OK);
        }
        let c = g.ctx_create();
        for f in 1..=700 {
            assert_status(g.submit(&submit_nop(c, f)).status(), OK);
        }
        assert_serving_and_clean(&d, &mut g, &[c]);
    }
}

#[test]
fn a_vm_reconnecting_at_once_finds_the_socket_served() {
    let d = Daemon::start(Config::default(), 1);
    for _ in 0..30 {
        // Connect straight after the previous VM went away: the daemon
        // must not leave a window without a listening socket.
        let mut g = Guest::connect(d.socket(0), GuestOptions::default());
        assert_status(g.caps().hdr.type_.get(), OK);
    }
}
