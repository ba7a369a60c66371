//! Unit tests of the device model, driven without threads or rings.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::backend::sim::{SimNpu, SimOptions, Tile};
use crate::backend::JobId;
use vm_memory::{GuestAddress, GuestMemoryAtomic};

type Device = super::Device<SimNpu>;

fn dev() -> (Device, GuestMem) {
    let npu = SimNpu::new(SimOptions {
        faults: Default::default(),
        engines: 1,
        tile: Tile::SLICED,
    })
    .unwrap();
    let m = GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mem = VmMemory {
        mem: GuestMemoryAtomic::new(m.clone()),
        npu_stats: Arc::default(),
    };
    let d = Device::new(Limits::default(), Arc::new(npu), mem, VmMetrics::detached());
    (d, m)
}

/// A running job, as the scheduler knows it.
struct T {
    ctx_id: u32,
    id: JobId,
}

/// Starts the next job the way the scheduler would with one VM: highest
/// priority, then lowest context id (the policy's tie-break).
fn next_job(d: &mut Device) -> Option<T> {
    static ID: AtomicU64 = AtomicU64::new(1);
    let (ctx, _) = d
        .runnable()
        .into_iter()
        .max_by_key(|&(c, p)| (p, std::cmp::Reverse(c)))?;
    let id = ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    d.start(ctx, id).map(|_| T { ctx_id: ctx, id })
}

fn done() -> JobEnd {
    JobEnd::Done { ops: 0 }
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

fn submit(d: &mut Device, m: &GuestMem, ctx: u32, fence: u64, waits: &[(u32, u64)], token: u64) {
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

const DEVICE_BITS: u64 = (1 << VIRTIO_ACCEL_F_INLINE_CMD) | (1 << VIRTIO_ACCEL_F_CROSS_CTX_FENCE);

fn run_next(d: &mut Device) -> u32 {
    let t = next_job(d).expect("a runnable job");
    d.finish(t.ctx_id, t.id, done(), Duration::from_micros(1));
    t.ctx_id
}

#[test]
fn every_ready_context_is_offered_once_with_its_priority() {
    let (mut d, m) = dev();
    let low = create(&mut d, &m, VIRTIO_ACCEL_PRIORITY_LOW);
    let a = create(&mut d, &m, VIRTIO_ACCEL_PRIORITY_NORMAL);
    let b = create(&mut d, &m, VIRTIO_ACCEL_PRIORITY_NORMAL);
    for f in 1..=2 {
        submit(&mut d, &m, low, f, &[], 0);
        submit(&mut d, &m, a, f, &[], 0);
        submit(&mut d, &m, b, f, &[], 0);
    }
    let mut r = d.runnable();
    r.sort();
    let want = [
        (low, VIRTIO_ACCEL_PRIORITY_LOW),
        (a, VIRTIO_ACCEL_PRIORITY_NORMAL),
        (b, VIRTIO_ACCEL_PRIORITY_NORMAL),
    ];
    assert_eq!(r, want);
    // A context with a job on the NPU is not offered until it ends.
    let t = next_job(&mut d).unwrap();
    assert!(!d.runnable().iter().any(|&(c, _)| c == t.ctx_id));
    assert!(
        d.start(t.ctx_id, 999).is_none(),
        "second job of a busy context"
    );
    // Once it ends, its second job is offered; the others are unchanged.
    d.finish(t.ctx_id, t.id, done(), Duration::ZERO);
    let mut r = d.runnable();
    r.sort();
    assert_eq!(r, want);
    for _ in 0..5 {
        run_next(&mut d);
    }
    assert!(next_job(&mut d).is_none());
    assert_eq!(d.take_completions().len(), 6);
}

#[test]
fn a_context_runs_one_job_at_a_time_in_order() {
    let (mut d, m) = dev();
    let c = create(&mut d, &m, 1);
    submit(&mut d, &m, c, 1, &[], 10);
    submit(&mut d, &m, c, 2, &[], 11);
    let t = next_job(&mut d).unwrap();
    assert!(
        next_job(&mut d).is_none(),
        "second job must wait for the first"
    );
    d.finish(t.ctx_id, t.id, done(), Duration::ZERO);
    assert!(next_job(&mut d).is_some());
}

#[test]
fn in_fence_on_another_context_blocks_until_signalled() {
    let (mut d, m) = dev();
    let a = create(&mut d, &m, 1);
    let b = create(&mut d, &m, 1);
    submit(&mut d, &m, a, 1, &[], 21);
    submit(&mut d, &m, b, 1, &[(a, 1)], 20);
    let t = next_job(&mut d).unwrap();
    assert_eq!(t.ctx_id, a);
    assert!(next_job(&mut d).is_none(), "A's fence 1 has not signalled");
    d.finish(a, t.id, done(), Duration::ZERO);
    assert_eq!(run_next(&mut d), b);
}

#[test]
fn dependency_on_a_lost_context_cancels_the_job() {
    let (mut d, m) = dev();
    let a = create(&mut d, &m, 1);
    let b = create(&mut d, &m, 1);
    submit(&mut d, &m, a, 1, &[], 1);
    submit(&mut d, &m, b, 1, &[(a, 1)], 2);
    let t = next_job(&mut d).unwrap();
    d.finish(t.ctx_id, t.id, JobEnd::TimedOut, Duration::ZERO);
    assert!(next_job(&mut d).is_none());
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
    let t = next_job(&mut d).unwrap();
    ok(d.handle(
        VIRTIO_ACCEL_VQ_CONTROL,
        Request::CtxDestroy(Hdr::new(VIRTIO_ACCEL_CMD_CTX_DESTROY, c)),
        &m,
        0,
    ));
    assert_eq!(d.counts().contexts, 0);
    assert_eq!(d.counts().jobs, 1);
    d.finish(t.ctx_id, t.id, done(), Duration::ZERO);
    let c = d.take_completions();
    assert_eq!((c.len(), c[0].token), (1, 7));
    assert_eq!(d.counts(), Counts::default());
}

fn statuses(d: &mut Device) -> Vec<(u64, u32)> {
    d.take_completions()
        .into_iter()
        .map(|c| (c.token, c.response.status()))
        .collect()
}

#[test]
fn a_lost_dependency_cancels_waiters_in_fence_order_and_chains_own_waits() {
    let (mut d, m) = dev();
    let v = create(&mut d, &m, 1);
    let w = create(&mut d, &m, 1);
    submit(&mut d, &m, v, 1, &[], 1);
    let tv = next_job(&mut d).unwrap();
    assert_eq!(tv.ctx_id, v);
    // W: job 1 free, job 2 waits on V:1, job 3 waits on W's own fence 2.
    submit(&mut d, &m, w, 1, &[], 2);
    submit(&mut d, &m, w, 2, &[(v, 1)], 3);
    submit(&mut d, &m, w, 3, &[(w, 2)], 4);
    let tw = next_job(&mut d).unwrap();
    assert_eq!(tw.ctx_id, w); // W:1 runs
    d.finish(v, tv.id, JobEnd::TimedOut, Duration::ZERO);
    // V's job is answered; W:2 and W:3 can never run but W:1 still runs,
    // so they wait behind it.
    assert_eq!(statuses(&mut d), [(1, VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST)]);
    d.finish(w, tw.id, done(), Duration::from_micros(3));
    assert_eq!(
        statuses(&mut d),
        [
            (2, VIRTIO_ACCEL_RESP_OK),
            (3, VIRTIO_ACCEL_RESP_ERR_CANCELED),
            (4, VIRTIO_ACCEL_RESP_ERR_CANCELED)
        ]
    );
    assert!(next_job(&mut d).is_none());
    assert_eq!(d.counts().jobs, 0);
}

#[test]
fn a_destroyed_context_answers_its_running_job_first() {
    let (mut d, m) = dev();
    let c = create(&mut d, &m, 1);
    submit(&mut d, &m, c, 1, &[], 1);
    submit(&mut d, &m, c, 2, &[], 2);
    let t = next_job(&mut d).unwrap();
    ok(d.handle(
        VIRTIO_ACCEL_VQ_CONTROL,
        Request::CtxDestroy(Hdr::new(VIRTIO_ACCEL_CMD_CTX_DESTROY, c)),
        &m,
        0,
    ));
    assert!(statuses(&mut d).is_empty(), "nothing answered before job 1");
    d.finish(t.ctx_id, t.id, done(), Duration::from_micros(1));
    assert_eq!(
        statuses(&mut d),
        [
            (1, VIRTIO_ACCEL_RESP_OK),
            (2, VIRTIO_ACCEL_RESP_ERR_CANCELED)
        ]
    );
    assert_eq!(d.counts(), Counts::default());
}

#[test]
fn handles_a_guest_names_are_kept_only_for_a_device_whose_state_is_kept() {
    let destroy = |ctx: u32, bo: u32| {
        Request::BoDestroy(BoReq {
            hdr: Hdr::new(VIRTIO_ACCEL_CMD_BO_DESTROY, ctx),
            bo_handle: bo.into(),
            padding: 0.into(),
        })
    };
    let (mut d, m) = dev();
    create(&mut d, &m, VIRTIO_ACCEL_PRIORITY_NORMAL);
    for i in 1..1000u32 {
        d.handle(
            VIRTIO_ACCEL_VQ_CONTROL,
            destroy(i.wrapping_mul(7919), i),
            &m,
            0,
        );
    }
    let dirty = d.take_dirty();
    assert!(
        dirty.contexts.is_empty() && dirty.bos.is_empty(),
        "{dirty:?}"
    );

    let (mut d, m) = dev();
    d.track_changes();
    let real = create(&mut d, &m, VIRTIO_ACCEL_PRIORITY_NORMAL);
    d.handle(VIRTIO_ACCEL_VQ_CONTROL, destroy(real, 5), &m, 0);
    let dirty = d.take_dirty();
    assert!(dirty.contexts.contains(&real) && dirty.bos.contains(&(real, 5)));
    // Taking the changes keeps the device tracking.
    d.handle(VIRTIO_ACCEL_VQ_CONTROL, destroy(real, 6), &m, 0);
    assert!(d.take_dirty().bos.contains(&(real, 6)));
}
