//! The software NPU's injected faults as a VM sees them over a real socket.

use std::time::{Duration, Instant};

use vhost_device_accel::Config;
use virtio_accel_integration::*;
use virtio_accel_protocol::*;

const OK: u32 = VIRTIO_ACCEL_RESP_OK;
const LOST: u32 = VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST;

#[track_caller]
fn assert_status(got: u32, want: u32) {
    assert_eq!(status_name(got), status_name(want), "status {got:#x}");
}

fn nop(ctx: u32, fence: u64) -> Request {
    Guest::nop_request(ctx, fence, &[], 1)
}

/// `device_error_jobs`: the NPU fails as a whole at job 2. The submitting
/// VM loses every context with `DEVICE_ERROR`, then gets a context-lost
/// event for context 0 (the device needs a reset); the other VM sees
/// nothing. Once the driver has reset the device, it works again.
#[test]
fn an_npu_that_needs_a_reset_loses_every_context_of_its_vm_until_the_driver_resets() {
    let mut config = Config::default();
    config.sim.faults.device_error_jobs = vec![2];
    let d = Daemon::start(config, 2);
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let mut other = Guest::connect(d.socket(1), GuestOptions::default());
    let (a, b) = (g.ctx_create(), g.ctx_create());
    assert_status(g.submit(&nop(a, 1)).status(), OK);
    assert_status(g.submit(&nop(a, 2)).status(), LOST);
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while events.len() < 3 {
        assert!(Instant::now() < deadline, "events so far: {events:?}");
        events.extend(g.events());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(events
        .iter()
        .all(|e| e.hdr.type_.get() == VIRTIO_ACCEL_EVENT_CONTEXT_LOST));
    let mut lost: Vec<(u32, u32)> = events
        .iter()
        .map(|e| (e.hdr.ctx_id.get(), e.reason.get()))
        .collect();
    // Context 0 comes last: every context is lost before the device asks
    // for its reset.
    assert_eq!(lost.last(), Some(&(0, VIRTIO_ACCEL_LOST_DEVICE_ERROR)));
    lost.sort_unstable();
    assert_eq!(
        lost,
        [
            (0, VIRTIO_ACCEL_LOST_DEVICE_ERROR),
            (a, VIRTIO_ACCEL_LOST_DEVICE_ERROR),
            (b, VIRTIO_ACCEL_LOST_DEVICE_ERROR)
        ]
    );
    // A context that had no part in it is lost too.
    assert_status(g.submit(&nop(b, 1)).status(), LOST);
    // The other VM goes on (job 3) and hears of nothing.
    let o = other.ctx_create();
    assert_status(other.submit(&nop(o, 1)).status(), OK);
    assert!(other.events().is_empty());
    // The driver resets the device and sets it up again: fresh contexts
    // run, and nothing of before is reported again.
    g.driver_reset(false);
    let c = g.ctx_create();
    assert_status(g.submit(&nop(c, 1)).status(), OK);
    assert!(g.events().is_empty());
    let s = d.vm_stats(0).unwrap();
    assert_eq!(s.counts.contexts, 1);
}
