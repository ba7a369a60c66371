//! Several VMs on one engine: what sharing it costs in aggregate
//! throughput, and whether unequal VMs get equal device time (beside a
//! configuration that is unfair on purpose, which the figure must flag).
//! Threads are left where the kernel puts them.

use serde_json::json;
use vhost_device_accel::Config;
use virtio_accel_guest::workloads;
use virtio_accel_integration::bench::load::{contend, jain, Load};
use virtio_accel_integration::bench::{
    interleaved, mlp_of, native_ms, quantile, ratios, Figure, Opts, Report, Target, Unit,
};

pub fn scaling(o: &Opts, r: &mut Report) {
    let (warm, secs) = if o.quick { (0.05, 0.1) } else { (0.1, 0.3) };
    // One engine: the NPU's capacity is fixed, so the ratio is what
    // sharing it between VMs costs. Jobs of a few hundred microseconds.
    let cfg = Config {
        workers: 1,
        ..Config::default()
    };
    let load = Load {
        workload: workloads::mlp(21, 16, 128, 256, 32),
        depth: 4,
    };
    let counts = [1usize, 2, 8];
    let got = interleaved(o.rounds(), counts.len(), |i| {
        let vms = counts[i];
        contend(&cfg, &vec![1; vms], &vec![load.clone(); vms], warm, secs).jobs_per_s()
    });
    let per_s = Unit::Of("jobs/s");
    for (i, &vms) in counts.iter().enumerate().skip(1) {
        r.figure(
            &format!("scaling.vms{vms}"),
            Figure::new(
                format!(
                    "{vms} VMs vs 1 VM on one engine, MLP jobs ×{} each: aggregate jobs/s",
                    load.depth
                ),
                Unit::Percent,
                &ratios(&got[i], &got[0]),
            )
            .target(Target::AtLeast(0.9))
            .floor("one VM keeping the one engine busy: the NPU's capacity for this job")
            .side(format!("{vms} VMs"), per_s, &got[i])
            .side("1 VM", per_s, &got[0]),
        );
    }
}

/// Jain's index of shares divided by weights: 1 when every VM got what
/// its weight entitles it to.
fn weighted_jain(shares: &[f64], weights: &[u32]) -> f64 {
    let x: Vec<f64> = shares
        .iter()
        .zip(weights)
        .map(|(s, w)| s / f64::from(*w))
        .collect();
    jain(&x)
}

pub fn fairness(o: &Opts, r: &mut Report) {
    let (warm, secs) = if o.quick { (0.05, 0.15) } else { (0.2, 0.5) };
    let cfg = Config {
        workers: 1,
        ..Config::default()
    };
    // Unequal jobs and depths: a scheduler that shares by jobs, or lets
    // deep queues or long jobs take more, shows here.
    let shape = [(0.3, 1usize), (0.6, 2), (1.5, 4), (4.0, 8)];
    let loads: Vec<Load> = shape
        .iter()
        .enumerate()
        .map(|(i, &(ms, depth))| Load {
            workload: mlp_of(ms, 30 + i as u64),
            depth,
        })
        .collect();
    // The labels name the job times measured natively, not the targets
    // the workloads were sized for.
    let measured: Vec<f64> = loads.iter().map(|l| native_ms(&l.workload)).collect();
    let equal = vec![1u32; loads.len()];
    // A deliberately unfair configuration the figure must flag: the VM
    // with the most demand weighted 4 (it can use the share it is given).
    let heavy = loads.len() - 1;
    let mut skewed = equal.clone();
    skewed[heavy] = 4;
    let skew = format!(
        "the {:.2} ms VM weighted {}",
        measured[heavy], skewed[heavy]
    );
    let got = interleaved(o.rounds(), 2, |i| {
        let weights = if i == 0 { &equal } else { &skewed };
        contend(&cfg, weights, &loads, warm, secs).shares()
    });
    let index = Unit::Plain;
    let jains = |v: &[Vec<f64>]| -> Vec<f64> { v.iter().map(|s| jain(s)).collect() };
    let what = measured
        .iter()
        .zip(&loads)
        .map(|(ms, l)| format!("{ms:.2} ms ×{}", l.depth))
        .collect::<Vec<_>>()
        .join(", ");
    r.figure(
        "fairness.equal_weights",
        Figure::new(
            format!(
                "{} VMs, jobs {what}, equal weights: Jain over device time",
                loads.len()
            ),
            index,
            &jains(&got[0]),
        )
        .target(Target::AtLeast(0.99))
        .floor("equal shares of one engine's time"),
    );
    r.figure(
        "fairness.control_skewed",
        Figure::new(
            format!("same, {skew} (unfair on purpose): Jain over device time"),
            index,
            &jains(&got[1]),
        )
        .target(Target::AtMost(0.99))
        .floor("must fall below the fairness target: the figure can see unfairness"),
    );
    let wj: Vec<f64> = got[1].iter().map(|s| weighted_jain(s, &skewed)).collect();
    r.figure(
        "fairness.control_weighted",
        Figure::new(
            format!("same, {skew}: Jain over device time / weight"),
            index,
            &wj,
        )
        .target(Target::AtLeast(0.99))
        .floor("shares in proportion to the weights"),
    );
    let per_vm = |v: &[Vec<f64>]| -> Vec<f64> {
        (0..loads.len())
            .map(|i| quantile(&v.iter().map(|s| s[i]).collect::<Vec<_>>(), 0.5))
            .collect()
    };
    let show = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{:.1}%", s * 100.0))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (pf, pu) = (per_vm(&got[0]), per_vm(&got[1]));
    r.line(format!(
        "device-time shares by VM (median): equal weights {}; weights {skewed:?} {}",
        show(&pf),
        show(&pu)
    ));
    r.data.insert(
        "fairness.shares".into(),
        json!({ "shape_ms_depth": shape, "measured_ms": measured, "equal": got[0], "skewed": got[1], "skewed_weights": skewed }),
    );
}
