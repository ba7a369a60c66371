//! Real workloads through the real daemon: outputs checked against CPU
//! references computed in the test.

use vhost_device_accel::Config;
use virtio_accel_guest::workloads::{self, Workload};
use virtio_accel_integration::*;
use virtio_accel_protocol::*;

fn run(g: &mut Guest, ctx: u32, fence: u64, w: &Workload, layout: Layout) {
    let l = g.load(ctx, w, layout);
    let r = g.submit(&Guest::run_request(ctx, fence, w, &l));
    assert_eq!(
        status_name(r.status()),
        "VIRTIO_ACCEL_RESP_OK",
        "{}",
        w.name
    );
    let Response::Submit(s) = r else {
        unreachable!()
    };
    assert_eq!(s.fence.get(), fence);
    assert!(s.device_time_ns.get() > 0);
    w.check(&g.output(w, &l)).unwrap();
}

#[test]
fn mlp_int8_and_conv2d_match_cpu_reference() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let ctx = g.ctx_create();
    for (i, w) in workloads::standard().iter().enumerate() {
        run(&mut g, ctx, i as u64 + 1, w, Layout::Contiguous);
    }
}

#[test]
fn workloads_on_scattered_pages_across_regions_match_reference() {
    let d = Daemon::start(Config::default(), 1);
    // Small first region so buffers straddle the region boundary.
    let mut g = Guest::connect(
        d.socket(0),
        GuestOptions {
            regions: vec![1 << 20, 64 << 20],
            ..GuestOptions::default()
        },
    );
    let ctx = g.ctx_create();
    let ws = [
        workloads::mlp(7, 16, 96, 200, 12),
        workloads::conv2d(8, 20, 6, 10, 5, 2, 2),
        workloads::int8_matmul(9, 33, 257, 19),
    ];
    for (i, w) in ws.iter().enumerate() {
        run(&mut g, ctx, i as u64 + 1, w, Layout::Scattered);
    }
}

#[test]
fn capabilities_describe_the_software_npu() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let c = g.caps();
    assert_eq!(c.hdr.type_.get(), VIRTIO_ACCEL_RESP_OK);
    assert_eq!(c.npu_kind.get(), VIRTIO_ACCEL_NPU_SIM);
    assert_eq!(c.cmd_format.get(), VIRTIO_ACCEL_CMD_FORMAT_SNPU);
    assert_eq!(c.ops.get(), snpu::SNPU_OPS_ALL);
    assert!(c.name.starts_with(b"virtio-accel software NPU"));
    assert_eq!(c.max_contexts.get(), g.config.max_contexts.get());
    assert_eq!(g.config.num_capsets.get(), 1);
    assert!(g.has_feature(VIRTIO_ACCEL_F_INLINE_CMD));
    assert!(g.has_feature(VIRTIO_ACCEL_F_IOCTL));
    assert!(g.has_feature(VIRTIO_ACCEL_F_CROSS_CTX_FENCE));
    assert!(!g.has_feature(VIRTIO_ACCEL_F_SHM_BLOB));
}

#[test]
fn repeated_memory_table_updates_keep_buffers_working() {
    let d = Daemon::start(Config::default(), 1);
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let ctx = g.ctx_create();
    let w = workloads::mlp(5, 4, 32, 64, 8);
    let l = g.load(ctx, &w, Layout::Scattered);
    for fence in 1..=3 {
        // The VMM sends the same layout again, as QEMU does after mapping
        // shared memory; buffers resolve against the new table.
        g.resend_mem_table();
        let r = g.submit(&Guest::run_request(ctx, fence, &w, &l));
        assert_eq!(status_name(r.status()), "VIRTIO_ACCEL_RESP_OK");
        w.check(&g.output(&w, &l)).unwrap();
    }
}
