//! The guest library's ONNX compiler over arbitrary model bytes: parse,
//! infer shapes, fold, lower. It must never panic, and whatever it emits
//! the device must admit: every segment parses, its tensors lie inside
//! the weights and arena buffers the runner creates, and no op needs more
//! working memory than the device allows a job.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_accel_guest::model::onnx::Graph;
use virtio_accel_guest::model::{compile, DeviceLimits};
use virtio_accel_protocol::snpu::{parse, SNPU_OPS_ALL};
use virtio_accel_protocol::{VIRTIO_ACCEL_ACCESS_READ as R, VIRTIO_ACCEL_ACCESS_WRITE as W};

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Graph::parse(data) else {
        return;
    };
    // Symbolic dims as 1; the model's own dims otherwise, however large.
    let dims: Vec<Vec<usize>> = g
        .inputs
        .iter()
        .map(|i| i.dims.iter().map(|d| d.unwrap_or(1)).collect())
        .collect();
    let limits = DeviceLimits {
        ops: SNPU_OPS_ALL,
        // Buffers (and so the constants the compiler makes for them) of
        // at most 16 MiB: a model's size, not its claims, bounds what it
        // allocates under -malloc_limit_mb.
        max_bo_size: 16 << 20,
        max_cmd_size: 1 << 20,
        max_job_memory: 4 << 20,
    };
    let Ok(c) = compile(&g, &dims, limits) else {
        return;
    };
    let mut bos = vec![(c.arena_bytes, R | W)];
    bos.extend(c.weights.iter().map(|w| ((w.len() as u64).max(64), R)));
    for seg in &c.segments {
        let bytes = seg.encode();
        assert!(bytes.len() as u64 <= limits.max_cmd_size);
        let p = parse(&bytes).expect("the device refuses a compiled segment");
        p.check_bounds(&bos)
            .expect("a compiled tensor outside its buffer");
        assert!(p.work_bytes() <= limits.max_job_memory);
    }
    for b in c.inputs.iter().chain(&c.outputs) {
        if let Some(off) = b.offset {
            let n: usize = b.dims.iter().product();
            assert!(
                off + n as u64 * 4 <= c.arena_bytes,
                "{} outside the arena",
                b.name
            );
        }
    }
});
