//! Every byte the daemon copies to or from guest memory is counted, on
//! each path, over the real socket: descriptors walked, requests copied
//! out, command streams copied out of buffers, the NPU's staged reads and
//! stores, buffer-to-buffer copies, responses and events written. Each
//! test checks the exact count of every path, so a copy that is missed or
//! counted twice fails it.

use vhost_device_accel::server::VmStats;
use vhost_device_accel::Config;
use virtio_accel_integration::*;
use virtio_accel_protocol::snpu::{DType, OpDesc, Program, TensorDesc};
use virtio_accel_protocol::*;
use zerocopy::IntoBytes;

const OK: u32 = VIRTIO_ACCEL_RESP_OK;

/// The counters `after` minus `before`, as (path, bytes), every path.
fn moved(before: &VmStats, after: &VmStats) -> Vec<(&'static str, u64)> {
    let f = |s: &VmStats| {
        [
            ("desc", s.desc_bytes_read),
            ("request", s.request_bytes_read),
            ("response", s.response_bytes_written),
            ("event", s.event_bytes_written),
            ("cmd", s.cmd_bytes_copied),
            ("npu_read", s.npu_bytes_read),
            ("npu_written", s.npu_bytes_written),
            ("npu_copied", s.npu_bytes_copied),
        ]
    };
    f(after)
        .iter()
        .zip(f(before))
        .map(|(&(k, a), (_, b))| (k, a - b))
        .collect()
}

/// `want` with every path it does not name at zero.
fn only(want: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
    moved(&VmStats::default(), &VmStats::default())
        .into_iter()
        .map(|(k, _)| (k, want.iter().find(|w| w.0 == k).map_or(0, |w| w.1)))
        .collect()
}

fn start() -> (Daemon, Guest) {
    let d = Daemon::start(Config::default(), 1);
    let g = Guest::connect(d.socket(0), GuestOptions::default());
    (d, g)
}

#[test]
fn a_control_request_copies_its_request_in_and_its_response_out() {
    let (d, mut g) = start();
    let req = Request::GetCaps(GetCaps {
        hdr: Hdr::new(VIRTIO_ACCEL_CMD_GET_CAPS, 0),
        ..Default::default()
    });
    let before = d.vm_stats(0).unwrap();
    let (len, _) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &req.encode(), req.response_size());
    assert_eq!(len as usize, req.response_size());
    let after = d.vm_stats(0).unwrap();
    assert_eq!(
        moved(&before, &after),
        only(&[
            ("desc", 2 * 16),
            ("request", req.encode().len() as u64),
            ("response", req.response_size() as u64),
        ])
    );
}

#[test]
fn an_inline_job_copies_only_its_request_and_response() {
    let (d, mut g) = start();
    let c = g.ctx_create();
    let req = Guest::nop_request(c, 1, &[], 3);
    let before = d.vm_stats(0).unwrap();
    assert_eq!(g.submit(&req).status(), OK);
    let after = d.vm_stats(0).unwrap();
    assert_eq!(
        moved(&before, &after),
        only(&[
            ("desc", 2 * 16),
            ("request", req.encode().len() as u64),
            ("response", req.response_size() as u64),
        ])
    );
}

#[test]
fn a_copy_job_moves_its_bytes_once_buffer_to_buffer() {
    let (d, mut g) = start();
    let c = g.ctx_create();
    let n: u32 = 300_000; // f32: 1.2 MB, many pages
    let a = g.bo(c, u64::from(n) * 4, Layout::Scattered);
    let b = g.bo(c, u64::from(n) * 4, Layout::Scattered);
    let stream = Program {
        ops: vec![OpDesc::Copy {
            src: TensorDesc::dense(0, DType::F32, 0, &[n]),
            dst: TensorDesc::dense(1, DType::F32, 0, &[n]),
        }],
    }
    .encode();
    let cmd = g.bo(c, 4096, Layout::Contiguous);
    g.write_bo(&cmd, 0, &stream);
    let req = Guest::submit_request(
        c,
        1,
        &[
            (a.handle, VIRTIO_ACCEL_ACCESS_READ),
            (b.handle, VIRTIO_ACCEL_ACCESS_WRITE),
            (cmd.handle, VIRTIO_ACCEL_ACCESS_READ),
        ],
        &[],
        CmdSource::Bo {
            handle: cmd.handle,
            offset: 0,
            size: stream.len() as u32,
        },
    );
    let before = d.vm_stats(0).unwrap();
    assert_eq!(g.submit(&req).status(), OK);
    let after = d.vm_stats(0).unwrap();
    assert_eq!(
        moved(&before, &after),
        only(&[
            ("desc", 2 * 16),
            ("request", req.encode().len() as u64),
            ("response", req.response_size() as u64),
            ("cmd", stream.len() as u64),
            ("npu_copied", u64::from(n) * 4),
        ])
    );
}

#[test]
fn an_elementwise_job_stages_each_input_once_and_stores_its_output_once() {
    let (d, mut g) = start();
    let c = g.ctx_create();
    let n: u32 = 50_000;
    let bytes = u64::from(n) * 4;
    let bos: Vec<GuestBo> = (0..3).map(|_| g.bo(c, bytes, Layout::Scattered)).collect();
    g.write_bo(&bos[0], 0, &vec![1u8; bytes as usize]);
    g.write_bo(&bos[1], 0, &vec![2u8; bytes as usize]);
    let stream = Program {
        ops: vec![OpDesc::Add {
            a: TensorDesc::dense(0, DType::F32, 0, &[n]),
            b: TensorDesc::dense(1, DType::F32, 0, &[n]),
            out: TensorDesc::dense(2, DType::F32, 0, &[n]),
        }],
    }
    .encode();
    let req = Guest::submit_request(
        c,
        1,
        &[
            (bos[0].handle, VIRTIO_ACCEL_ACCESS_READ),
            (bos[1].handle, VIRTIO_ACCEL_ACCESS_READ),
            (bos[2].handle, VIRTIO_ACCEL_ACCESS_WRITE),
        ],
        &[],
        CmdSource::Inline(stream),
    );
    let before = d.vm_stats(0).unwrap();
    assert_eq!(g.submit(&req).status(), OK);
    let after = d.vm_stats(0).unwrap();
    assert_eq!(
        moved(&before, &after),
        only(&[
            ("desc", 2 * 16),
            ("request", req.encode().len() as u64),
            ("response", req.response_size() as u64),
            ("npu_read", 2 * bytes),
            ("npu_written", bytes),
        ])
    );
}

#[test]
fn a_lost_context_writes_one_event() {
    let mut cfg = Config::default();
    cfg.sim.faults.hang_jobs = vec![1];
    cfg.job_timeout_ms = 100;
    let d = Daemon::start(cfg, 1);
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let c = g.ctx_create();
    let req = Guest::nop_request(c, 1, &[], 1);
    let before = d.vm_stats(0).unwrap();
    assert_eq!(g.submit(&req).status(), VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST);
    let ev = g.wait_event();
    assert_eq!(ev.hdr.ctx_id.get(), c);
    let after = d.vm_stats(0).unwrap();
    assert_eq!(
        moved(&before, &after),
        only(&[
            // The submit chain, then the event buffer's one descriptor.
            ("desc", 2 * 16 + 16),
            ("request", req.encode().len() as u64),
            ("response", req.response_size() as u64),
            ("event", ev.as_bytes().len() as u64),
        ])
    );
}
