//! VMs kept busy on one daemon for a measured window: each VM's guest
//! keeps a number of jobs of its workload in flight, and the window's
//! figures are taken from what completed inside it and from the daemon's
//! own device-time counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use vhost_device_accel::Config;
use virtio_accel_guest::workloads::Workload;
use virtio_accel_protocol::VIRTIO_ACCEL_RESP_OK;

use crate::{Daemon, Guest, GuestOptions, Layout};

/// What one VM runs: jobs of `workload`, `depth` of them in flight.
#[derive(Clone)]
pub struct Load {
    pub workload: Workload,
    pub depth: usize,
}

/// One window's figures.
#[derive(Debug, Clone)]
pub struct Window {
    pub secs: f64,
    /// Each VM's NPU time in the window, seconds.
    pub device_s: Vec<f64>,
    /// Each VM's jobs completed in the window.
    pub jobs: Vec<u64>,
    /// Each VM's job latencies (submit to answer, ms) of the jobs
    /// completed in the window.
    pub latency_ms: Vec<Vec<f64>>,
}

impl Window {
    /// Each VM's share of the NPU time used in the window.
    pub fn shares(&self) -> Vec<f64> {
        let total: f64 = self.device_s.iter().sum();
        self.device_s.iter().map(|d| d / total).collect()
    }

    /// Jobs per second of all VMs together.
    pub fn jobs_per_s(&self) -> f64 {
        self.jobs.iter().sum::<u64>() as f64 / self.secs
    }
}

/// Jain's fairness index of `x`: 1 when all are equal, 1/n when one
/// has everything.
pub fn jain(x: &[f64]) -> f64 {
    let s: f64 = x.iter().sum();
    s * s / (x.len() as f64 * x.iter().map(|v| v * v).sum::<f64>())
}

/// Keeps `l.depth` jobs in flight on VM `i` until `stop`; returns when
/// each job completed and its latency in ms.
fn drive(d: &Daemon, i: usize, l: &Load, go: &Barrier, stop: &AtomicBool) -> Vec<(Instant, f64)> {
    let mut g = Guest::connect(d.socket(i), GuestOptions::default());
    let c = g.ctx_create();
    let loaded = g.load(c, &l.workload, Layout::Contiguous);
    go.wait();
    let mut sent = HashMap::new();
    let (mut fence, mut done) = (0u64, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        while sent.len() < l.depth {
            fence += 1;
            let p = g.submit_async(&Guest::run_request(c, fence, &l.workload, &loaded));
            sent.insert(p, Instant::now());
        }
        let (p, r) = g.wait_any_submit();
        assert_eq!(r.status(), VIRTIO_ACCEL_RESP_OK);
        let now = Instant::now();
        let t = sent.remove(&p).unwrap();
        done.push((now, (now - t).as_secs_f64() * 1e3));
    }
    while !sent.is_empty() {
        let (p, _) = g.wait_any_submit();
        sent.remove(&p);
    }
    done
}

/// Starts a daemon with `config` and one VM per weight, runs one load per
/// VM, and measures a window of `secs` after `warm` of warm-up.
pub fn contend(config: &Config, weights: &[u32], loads: &[Load], warm: f64, secs: f64) -> Window {
    assert_eq!(weights.len(), loads.len());
    let d = Arc::new(Daemon::start_weighted(config.clone(), weights));
    let go = Arc::new(Barrier::new(loads.len() + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = loads
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, l)| {
            let (d, go, stop) = (d.clone(), go.clone(), stop.clone());
            std::thread::spawn(move || drive(&d, i, &l, &go, &stop))
        })
        .collect();
    go.wait();
    std::thread::sleep(Duration::from_secs_f64(warm));
    let dev = |i| {
        d.vm_stats(i)
            .expect("every VM of the run is served")
            .device_seconds
    };
    let before: Vec<f64> = (0..loads.len()).map(dev).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let after: Vec<f64> = (0..loads.len()).map(dev).collect();
    let t1 = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let done: Vec<Vec<(Instant, f64)>> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let inside = |v: &Vec<(Instant, f64)>| -> Vec<f64> {
        v.iter()
            .filter(|(t, _)| *t >= t0 && *t < t1)
            .map(|(_, l)| *l)
            .collect()
    };
    let latency_ms: Vec<Vec<f64>> = done.iter().map(inside).collect();
    Window {
        secs: (t1 - t0).as_secs_f64(),
        device_s: after.iter().zip(&before).map(|(a, b)| a - b).collect(),
        jobs: latency_ms.iter().map(|l| l.len() as u64).collect(),
        latency_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::jain;

    #[test]
    fn jain_spans_one_to_one_over_n() {
        assert!((jain(&[1.0; 4]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
    }
}
