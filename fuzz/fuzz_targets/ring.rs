//! The vring handling of the real backend: arbitrary descriptor tables,
//! available rings (index included) and data, laid into guest memory and
//! handed to `AccelBackend::handle_event` exactly as the vhost-user daemon
//! does. It must never fail or panic, and must add at most one used entry
//! per chain it takes.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vhost_device_accel::backend::sim::{SimNpu, SimOptions, Tile};
use vhost_device_accel::memory::GuestMem;
use vhost_device_accel::metrics::{DaemonMetrics, VmMetrics};
use vhost_device_accel::sched::Scheduler;
use vhost_device_accel::vhost_user::{AccelBackend, Vring};
use vhost_device_accel::Config;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_accel_protocol::*;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;

const QSIZE: u16 = 16;
const MEM: usize = 0x10000;
/// Each queue: descriptor table, avail ring, used ring.
const fn layout(q: u64) -> (u64, u64, u64) {
    let base = q * 0x400;
    (base, base + 0x100, base + 0x200)
}

fn sched() -> &'static Arc<Scheduler<SimNpu>> {
    static S: OnceLock<Arc<Scheduler<SimNpu>>> = OnceLock::new();
    S.get_or_init(|| {
        let npu = SimNpu::new(SimOptions {
            faults: Default::default(),
            engines: 1,
            tile: Tile::SLICED,
        })
        .unwrap();
        Scheduler::new(
            Arc::new(npu),
            Duration::from_secs(5),
            Duration::from_millis(1),
            DaemonMetrics::new(1),
        )
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    // The fuzzer's bytes are the guest's memory: rings and buffers alike.
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let mut config = Config::default();
    config.queue_size = usize::from(QSIZE);
    // Small jobs only: this target is about rings, not NPU time.
    config.limits.max_job_memory = 3 << 20;
    // Requests of a few KiB at most: the largest is read whole per chain.
    config.limits.max_sg_entries = 64;
    config.limits.max_submit_bos = 16;
    config.limits.max_inline_cmd_size = 1024;
    let backend = AccelBackend::new(
        config,
        sched().clone(),
        atomic.clone(),
        1,
        VmMetrics::detached(),
        None,
    )
    .unwrap();
    let features = backend.features();
    backend.acked_features(features);
    let event_idx = data.first().is_some_and(|b| b & 1 != 0);
    backend.set_event_idx(event_idx);
    let vrings: Vec<Vring> = (0..VIRTIO_ACCEL_NUM_QUEUES as u64)
        .map(|q| {
            let v = Vring::new(atomic.clone(), QSIZE).unwrap();
            let (d, a, u) = layout(q);
            v.set_queue_size(QSIZE);
            v.set_queue_info(d, a, u).unwrap();
            v.set_queue_event_idx(event_idx);
            v.set_queue_ready(true);
            v.set_enabled(true);
            v
        })
        .collect();
    for ev in [
        VIRTIO_ACCEL_VQ_CONTROL,
        VIRTIO_ACCEL_VQ_SUBMIT,
        VIRTIO_ACCEL_VQ_EVENT,
        VIRTIO_ACCEL_VQ_CONTROL,
    ] {
        backend
            .handle_event(ev, EventSet::IN, &vrings, 0)
            .expect("handle_event never fails");
    }
    for (q, v) in vrings.iter().enumerate() {
        // At most one used entry per chain the device took, by the
        // device's own counts (the ring memory may have been rewritten by
        // responses: a guest may point writable buffers at its own rings).
        // virtio-queue refuses used entries naming a descriptor outside
        // the table; the backend skips those chains.
        let state = v.get_ref();
        let (taken, used) = (
            state.get_queue().next_avail(),
            state.get_queue().next_used(),
        );
        assert!(used <= taken, "queue {q}: {used} used for {taken} taken");
    }
});
