//! The specification must describe everything the protocol crate defines.

use virtio_accel_protocol::*;

fn spec() -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/virtio-accel.md");
    std::fs::read_to_string(p).expect("spec/virtio-accel.md")
}

fn headings(spec: &str) -> Vec<&str> {
    spec.lines().filter(|l| l.starts_with('#')).collect()
}

#[test]
fn every_request_type_has_a_spec_section() {
    let s = spec();
    let h = headings(&s);
    let missing: Vec<_> = REQUEST_TYPES
        .iter()
        .filter(|(v, name)| {
            !h.iter()
                .any(|l| l.contains(name) && l.contains(&format!("{v:#06x}")))
        })
        .map(|(_, n)| *n)
        .collect();
    assert!(
        missing.is_empty(),
        "no spec heading naming {missing:?} with its value"
    );
}

#[test]
fn every_status_feature_and_event_is_specified() {
    let s = spec();
    let mut names: Vec<String> = RESPONSE_STATUSES
        .iter()
        .map(|(v, n)| format!("{n} | {v:#06x}"))
        .collect();
    names.extend(
        [
            ("VIRTIO_ACCEL_F_INLINE_CMD", VIRTIO_ACCEL_F_INLINE_CMD),
            ("VIRTIO_ACCEL_F_IOCTL", VIRTIO_ACCEL_F_IOCTL),
            (
                "VIRTIO_ACCEL_F_CROSS_CTX_FENCE",
                VIRTIO_ACCEL_F_CROSS_CTX_FENCE,
            ),
            ("VIRTIO_ACCEL_F_SHM_BLOB", VIRTIO_ACCEL_F_SHM_BLOB),
            ("VIRTIO_ACCEL_F_QUOTAS", VIRTIO_ACCEL_F_QUOTAS),
            ("VIRTIO_ACCEL_F_PAGE_ALIGNED", VIRTIO_ACCEL_F_PAGE_ALIGNED),
            ("VIRTIO_ACCEL_F_DEVICE_ADDR", VIRTIO_ACCEL_F_DEVICE_ADDR),
        ]
        .iter()
        .map(|(n, v)| format!("{v} | {n}")),
    );
    names.push(format!(
        "VIRTIO_ACCEL_EVENT_CONTEXT_LOST | {VIRTIO_ACCEL_EVENT_CONTEXT_LOST:#06x}"
    ));
    let missing: Vec<_> = names.iter().filter(|n| !s.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "spec tables lack {missing:?}");
}

#[test]
fn every_snpu_opcode_is_specified() {
    use virtio_accel_protocol::snpu::*;
    let s = spec();
    for (v, n) in [
        (SNPU_OP_NOP, "NOP"),
        (SNPU_OP_COPY, "COPY"),
        (SNPU_OP_ADD, "ADD"),
        (SNPU_OP_MUL, "MUL"),
        (SNPU_OP_RELU, "RELU"),
        (SNPU_OP_SOFTMAX, "SOFTMAX"),
        (SNPU_OP_MATMUL, "MATMUL"),
        (SNPU_OP_CONV2D, "CONV2D"),
        (SNPU_OP_CONV, "CONV"),
        (SNPU_OP_MAXPOOL, "MAXPOOL"),
        (SNPU_OP_AVGPOOL, "AVGPOOL"),
        (SNPU_OP_CLIP, "CLIP"),
        (SNPU_OP_SIGMOID, "SIGMOID"),
        (SNPU_OP_LRN, "LRN"),
    ] {
        let row = format!("| {v} | SNPU_OP_{n} |");
        assert!(s.contains(&row), "appendix lacks row `{row}`");
        assert!(SNPU_OPS_ALL & (1 << v) != 0, "no ops bit for {n}");
    }
    // Every ops bit names a specified opcode.
    for bit in 0..64 {
        if SNPU_OPS_ALL & (1 << bit) != 0 {
            assert!(
                s.contains(&format!("| {bit} | SNPU_OP_")),
                "ops bit {bit} has no appendix row"
            );
        }
    }
    for (v, n) in [
        (SNPU_CONV_F_RELU, "SNPU_CONV_F_RELU"),
        (SNPU_POOL_F_COUNT_PAD, "SNPU_POOL_F_COUNT_PAD"),
    ] {
        assert!(
            s.contains(&format!("flag {v} (`{n}`)")),
            "flag {n} unspecified"
        );
    }
    for (name, ops) in [
        ("CONV", "| CONV |"),
        ("MAXPOOL", "| MAXPOOL, AVGPOOL, LRN |"),
        ("CLIP", "| CLIP, SIGMOID |"),
    ] {
        assert!(s.contains(ops), "no working memory row for {name}");
    }
}

#[test]
fn every_configuration_field_is_in_the_layout() {
    // The config block of section 4 must list every field of `Config`.
    let s = spec();
    let start = s
        .find("struct virtio_accel_config {")
        .expect("config layout");
    let block = &s[start..start + s[start..].find("};").expect("end of layout")];
    for f in [
        "num_capsets",
        "max_contexts",
        "max_bo_size",
        "max_cmd_size",
        "max_inline_cmd_size",
        "max_submit_bos",
        "max_in_fences",
        "max_sg_entries",
        "max_jobs_in_flight",
        "shm_id",
        "max_total_bo_bytes",
        "max_job_memory",
        "max_bos",
        "max_backing_entries",
    ] {
        assert!(block.contains(f), "config layout lacks {f}");
    }
    let size = std::mem::size_of::<Config>();
    assert!(
        s.contains(&format!("/* {size} bytes")),
        "config layout does not give its size {size}"
    );
}

#[test]
fn the_rules_the_device_enforces_are_stated() {
    let s = spec();
    let h = headings(&s);
    for heading in [
        "Fence waits and the order of answers",
        "Descriptor chains",
        "Sharing the NPU and the job timeout",
    ] {
        assert!(
            h.iter().any(|l| l.contains(heading)),
            "no section `{heading}`"
        );
    }
    for rule in [
        // validate, then act
        "A rejected request MUST change nothing",
        "holds the request's whole response",
        // fence waits
        "can never be satisfied",
        "a job never waits for work not yet",
        // job memory
        "must not exceed `max_job_memory` (`ERR_QUOTA`)",
        "A job above `max_job_memory` is rejected with `ERR_QUOTA`",
        // sharing and the timeout
        "in proportion to a weight the host sets",
        "bounds the device time of one job, a single op",
        "writes nothing after",
    ] {
        assert!(s.contains(rule), "spec does not state: {rule}");
    }
}

#[test]
fn the_lifecycle_section_states_each_event() {
    let s = spec();
    for needle in [
        "## 9 Lifecycle",
        "### 9.1 Stop and start",
        "### 9.2 Reset and disconnect",
        "### 9.3 Reconnect after a device restart",
        "### 9.4 Saving and loading the device state",
        "MUST NOT read or write the\n  virtqueues or the driver's memory",
        "MUST NOT take a chain it had taken before",
        "VIRTIO_ACCEL_LOST_RESET",
        "MUST mark every page it writes",
    ] {
        assert!(s.contains(needle), "spec lacks {needle:?}");
    }
}
