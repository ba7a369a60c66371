//! What the virtual path costs: the real daemon driven through real
//! vhost-user sockets by the in-process harness. Every ratio comes from
//! paired, interleaved rounds (both sides back to back in each round,
//! the order alternating) and is quoted as the median of the per-round
//! ratios with its interquartile range; instruction counts come from
//! callgrind and are checked against a committed baseline.
//!
//! cargo bench -p virtio-accel-integration --bench accel [-- --quick] [--json PATH] [--only PART]
//! cargo bench -p virtio-accel-integration --bench accel -- --only instructions --write-baseline
//! cargo bench -p virtio-accel-integration --bench accel -- --table RUN.json..
//!
//! Prints each figure as it is measured and writes them all as JSON with
//! the machine they ran on (default target/bench-accel.json). `--quick`
//! runs three short rounds of each part (CI keeps the program working and
//! checks the instruction counts; its times mean little).

mod data;
mod transport;
mod vms;

use std::time::Instant;

use serde_json::{json, Value};
use vhost_device_accel::server::VmStats;
use virtio_accel_integration::bench::stats::NOISY_IQR;
use virtio_accel_integration::bench::{cost, ratios, table, Figure, Opts, Report, Target, Unit};

const US: Unit = Unit::Of("µs");

/// The bytes the daemon copied to or from guest memory between two
/// snapshots, per operation, by path.
fn copied(before: &VmStats, after: &VmStats, ops: u64) -> Value {
    let d = |a: u64, b: u64| (a - b) as f64 / ops as f64;
    json!({
        "desc_read": d(after.desc_bytes_read, before.desc_bytes_read),
        "request_read": d(after.request_bytes_read, before.request_bytes_read),
        "response_written": d(after.response_bytes_written, before.response_bytes_written),
        "event_written": d(after.event_bytes_written, before.event_bytes_written),
        "cmd_read": d(after.cmd_bytes_copied, before.cmd_bytes_copied),
        "npu_staged_read": d(after.npu_bytes_read, before.npu_bytes_read),
        "npu_written": d(after.npu_bytes_written, before.npu_bytes_written),
        "npu_buffer_to_buffer": d(after.npu_bytes_copied, before.npu_bytes_copied),
    })
}

/// Records the per-operation byte counts under `bytes.NAME` and prints
/// them.
fn bytes(r: &mut Report, name: &str, v: Value) {
    let parts: Vec<String> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| format!("{k} {}", n.as_f64().unwrap_or(f64::NAN)))
        .collect();
    r.line(format!(
        "bytes copied to/from guest memory per {name}: {}",
        parts.join(", ")
    ));
    r.data.insert(format!("bytes.{name}"), v);
}

fn instructions(o: &Opts, r: &mut Report) {
    let runs = if o.quick { 1 } else { 2 };
    let mut counts = Vec::new();
    for _ in 0..runs {
        match cost::measure() {
            Ok(c) => counts.push(c),
            Err(e) => {
                r.line(format!("instruction counts: {e}"));
                r.failed = true;
                return;
            }
        }
    }
    let base = cost::baseline();
    let count = Unit::Of("instructions");
    for &(op, n, what) in cost::OPS {
        let v: Vec<f64> = counts.iter().map(|c| c[op]).collect();
        let mut f = Figure::new(format!("{what} (mean of {n})"), count, &v)
            .floor("callgrind count of the daemon process alone (the guest runs natively)");
        if let Some(b) = base.as_ref().and_then(|b| b.get(op)) {
            f = f.target(Target::AtMost(b * (1.0 + cost::TOLERANCE)));
            let (growth, ok) = cost::against(v[0], *b);
            r.line(format!(
                "{op}: {} instructions vs baseline {} ({:+.1}%, limit {:+.0}%) {}",
                v[0].round(),
                b.round(),
                growth * 100.0,
                cost::TOLERANCE * 100.0,
                if ok { "ok" } else { "GREW TOO MUCH" }
            ));
            r.failed |= !ok && !o.write_baseline;
        } else {
            r.line(format!(
                "{op}: no baseline in {}",
                cost::baseline_path().display()
            ));
            r.failed |= !o.write_baseline;
        }
        r.figure(&format!("instructions.{op}"), f);
    }
    let per_run = |k: &str| counts.iter().map(|c| c[k]).collect::<Vec<f64>>();
    r.figure(
        "instructions.mlp_kernel",
        Figure::new(
            "the MLP job's kernel (Exec::run), left out above",
            count,
            &per_run("mlp_kernel"),
        )
        .floor("the software NPU's own work"),
    );
    r.figure(
        "instructions.request_vs_echo",
        Figure::new(
            "GET_CAPS round trip: daemon / echo instructions",
            Unit::Times,
            &ratios(&per_run("request"), &per_run("echo_request")),
        )
        .floor("the echo device's instructions for the same chain"),
    );
    if runs > 1 {
        let worst = cost::OPS
            .iter()
            .map(|&(op, _, _)| {
                let v = per_run(op);
                (v[1] - v[0]).abs() / v[0]
            })
            .fold(0.0, f64::max);
        r.line(format!(
            "instruction counts, run 1 vs run 2: largest difference {:.3}%",
            worst * 100.0
        ));
    }
    r.data.insert("instructions.runs".into(), json!(counts));
    if o.write_baseline {
        cost::write_baseline(&counts[0]).expect("write the baseline");
        r.line(format!(
            "baseline written to {}",
            cost::baseline_path().display()
        ));
    }
}

fn main() {
    cost::serve_if_asked();
    virtio_accel_integration::bench::fixed_allocator();
    let opts = Opts::from_args("accel");
    if !opts.table.is_empty() {
        match table::render(&opts.table) {
            Ok(t) => print!("{t}"),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        return;
    }
    println!(
        "paired rounds: {}; a figure is noisy when its IQR is wider than {:.0}% of its median",
        opts.rounds(),
        NOISY_IQR * 100.0
    );
    let mut report = Report::default();
    type Part = fn(&Opts, &mut Report);
    let parts: [(&str, Part); 7] = [
        ("round_trip", transport::round_trip),
        ("jobs", transport::jobs),
        ("copy", data::copy),
        ("inference", data::inference),
        ("scaling", vms::scaling),
        ("fairness", vms::fairness),
        ("instructions", instructions),
    ];
    for (name, part) in parts {
        if opts.runs(name) {
            let t = Instant::now();
            part(&opts, &mut report);
            report.time(name, t.elapsed().as_secs_f64());
        }
    }
    report.finish("virtio-accel benchmark", &opts);
}
