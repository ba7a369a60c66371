//! The engine's job states, driven through the backend interface with real
//! jobs on real guest memory: what each of preempt, resume and abort does
//! in each state, and the order of the reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_accel_protocol::snpu::{DType, OpDesc, Program, TensorDesc};
use virtio_accel_protocol::{VIRTIO_ACCEL_ACCESS_READ, VIRTIO_ACCEL_ACCESS_WRITE};
use vm_memory::{GuestAddress, GuestMemoryAtomic};

use crate::backend::sim::{Faults, SimNpu, SimOptions, Tile};
use crate::backend::{Backend, Completion, JobId, LostReason, Outcome};
use crate::memory::{Backing, GuestMem, VmMemory};

fn npu(faults: Faults) -> SimNpu {
    SimNpu::new(SimOptions {
        faults,
        engines: 1,
        tile: Tile {
            macs: 1 << 16,
            elems: 1 << 10,
        },
    })
    .unwrap()
}

/// A job of many tiles: an n×n×n MATMUL over one buffer of 4·n² bytes read
/// and one written.
fn long_job(npu: &SimNpu, n: u32) -> <SimNpu as Backend>::Job {
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
    let vm = VmMemory {
        mem: GuestMemoryAtomic::new(mem),
        npu_stats: Arc::default(),
    };
    let ctx = npu.create_context(1).unwrap();
    let size = 4 * n * n;
    let a = npu
        .import(&ctx, &Backing::new(vec![(0, size)]), &vm)
        .unwrap()
        .buffer;
    let c = npu
        .import(&ctx, &Backing::new(vec![(1 << 20, size)]), &vm)
        .unwrap()
        .buffer;
    let mut b = TensorDesc::dense(0, DType::F32, 0, &[n, n]);
    b.bo_index = 0;
    let p = Program {
        ops: vec![OpDesc::MatMul {
            a: TensorDesc::dense(0, DType::F32, 0, &[n, n]),
            b,
            out: TensorDesc::dense(1, DType::F32, 0, &[n, n]),
            quant: None,
        }],
    };
    let bos = [
        (&a, VIRTIO_ACCEL_ACCESS_READ, u64::from(size)),
        (&c, VIRTIO_ACCEL_ACCESS_WRITE, u64::from(size)),
    ];
    npu.prepare(&ctx, &p.encode(), &bos).unwrap().job
}

/// The next `n` reports, waiting for them.
fn reports(npu: &SimNpu, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} reports: {out:?}",
            out.len()
        );
        npu.take_completions(&mut out);
        std::thread::sleep(Duration::from_micros(200));
    }
    out
}

fn outcomes(c: &[Completion]) -> Vec<(JobId, Outcome)> {
    c.iter().map(|c| (c.job, c.outcome.clone())).collect()
}

#[test]
fn a_running_job_yields_at_preempt_resumes_and_ends() {
    let npu = npu(Faults::default());
    npu.submit(1, long_job(&npu, 256));
    std::thread::sleep(Duration::from_millis(2));
    npu.preempt(1);
    let r = reports(&npu, 1);
    assert_eq!(outcomes(&r), [(1, Outcome::Yielded)]);
    assert!(r[0].device_time > Duration::ZERO);
    npu.resume(1);
    let r = reports(&npu, 1);
    assert_eq!(outcomes(&r), [(1, Outcome::Done { ops: 1 })]);
}

#[test]
fn preempt_of_a_queued_job_yields_at_once_and_aborts_of_paused_or_unknown_jobs() {
    let npu = npu(Faults::default());
    // Job 1 holds the only engine; job 2 waits behind it.
    npu.submit(1, long_job(&npu, 256));
    npu.submit(2, long_job(&npu, 64));
    npu.preempt(2);
    let r = reports(&npu, 1);
    assert_eq!(outcomes(&r), [(2, Outcome::Yielded)]);
    assert_eq!(r[0].device_time, Duration::ZERO, "it never ran");
    // A paused job aborts at once; an unknown one is ignored.
    npu.abort(2);
    npu.abort(99);
    assert_eq!(outcomes(&reports(&npu, 1)), [(2, Outcome::Aborted)]);
    npu.abort(1);
    assert_eq!(outcomes(&reports(&npu, 1)), [(1, Outcome::Aborted)]);
    let mut more = Vec::new();
    std::thread::sleep(Duration::from_millis(20));
    npu.take_completions(&mut more);
    assert!(more.is_empty(), "reports after the aborts: {more:?}");
}

#[test]
fn a_hung_job_holds_no_engine_and_reports_the_time_it_hung() {
    let npu = npu(Faults {
        hang_jobs: vec![1],
        ..Default::default()
    });
    npu.submit(1, long_job(&npu, 16));
    // The one engine runs the next job although job 1 never ends.
    npu.submit(2, long_job(&npu, 16));
    assert_eq!(outcomes(&reports(&npu, 1)), [(2, Outcome::Done { ops: 1 })]);
    std::thread::sleep(Duration::from_millis(5));
    npu.preempt(1);
    let r = reports(&npu, 1);
    assert_eq!(outcomes(&r), [(1, Outcome::Yielded)]);
    assert!(
        r[0].device_time >= Duration::from_millis(5),
        "{:?}",
        r[0].device_time
    );
    npu.resume(1);
    npu.abort(1);
    assert_eq!(outcomes(&reports(&npu, 1)), [(1, Outcome::Aborted)]);
}

#[test]
fn an_abort_racing_a_preempt_is_reported_after_the_yield() {
    // Preempt and abort a running job back to back, many times: the
    // slice's Yielded (with its time) always comes before the Aborted.
    let npu = npu(Faults::default());
    for id in 1..=50 {
        npu.submit(id, long_job(&npu, 128));
        std::thread::sleep(Duration::from_micros(300));
        npu.preempt(id);
        // From at once to after the yield: every moment of it.
        std::thread::sleep(Duration::from_micros(id % 10 * 60));
        npu.abort(id);
        // Reports until the job's end; a take may return both at once.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut r = Vec::new();
        while !r.iter().any(|c: &Completion| c.outcome != Outcome::Yielded) {
            assert!(Instant::now() < deadline, "job {id}: {r:?}");
            npu.take_completions(&mut r);
            std::thread::sleep(Duration::from_micros(100));
        }
        match outcomes(&r).as_slice() {
            [(_, Outcome::Yielded), (_, Outcome::Aborted)] => {}
            [(_, Outcome::Aborted)] | [(_, Outcome::Done { .. })] => {}
            other => panic!("job {id}: {other:?}"),
        }
    }
}

#[test]
fn a_device_error_job_reports_an_npu_that_needs_a_reset_and_the_next_runs() {
    let npu = npu(Faults {
        device_error_jobs: vec![2],
        ..Default::default()
    });
    npu.submit(1, long_job(&npu, 16));
    assert_eq!(outcomes(&reports(&npu, 1)), [(1, Outcome::Done { ops: 1 })]);
    npu.submit(2, long_job(&npu, 16));
    let r = reports(&npu, 1);
    assert!(
        matches!(
            &r[0].outcome,
            Outcome::Lost {
                reason: LostReason::NeedsReset,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(r[0].device_time, Duration::ZERO, "it never ran");
    npu.submit(3, long_job(&npu, 16));
    assert_eq!(outcomes(&reports(&npu, 1)), [(3, Outcome::Done { ops: 1 })]);
}
