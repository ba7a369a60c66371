//! Sharing one NPU between VMs, over real sockets: a long op or a hung job
//! costs the other VMs nothing, the job timeout bounds a single op, and
//! the per-VM metrics move as the jobs do (parsed with a Prometheus text
//! parser).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use vhost_device_accel::metrics;
use vhost_device_accel::Config;
use virtio_accel_integration::*;
use virtio_accel_protocol::*;

const OK: u32 = VIRTIO_ACCEL_RESP_OK;
const LOST: u32 = VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST;

#[track_caller]
fn assert_status(got: u32, want: u32) {
    assert_eq!(status_name(got), status_name(want), "status {got:#x}");
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "condition not reached");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn nop(ctx: u32, fence: u64) -> Request {
    Guest::nop_request(ctx, fence, &[], 1)
}

#[test]
fn a_single_long_op_is_lost_at_the_job_timeout_and_others_run_meanwhile() {
    // One engine: whatever B gets, it gets beside A's op.
    let cfg = Config {
        workers: 1,
        job_timeout_ms: 1000,
        ..Default::default()
    };
    let d = Daemon::start(cfg, 2);
    let mut a = Guest::connect(d.socket(0), GuestOptions::default());
    let mut b = Guest::connect(d.socket(1), GuestOptions::default());
    let ca = a.ctx_create();
    // 8.6 G multiply-accumulates: seconds of work in one op.
    let req = a.broadcast_matmul(ca, 2048);
    let long = a.submit_async(&req);
    wait_until(|| d.vm_stats(0).is_some_and(|s| s.counts.running == 1));
    // B's jobs complete while A's op is on the NPU.
    let cb = b.ctx_create();
    for f in 1..=5 {
        assert_status(b.submit(&nop(cb, f)).status(), OK);
        assert_eq!(
            d.vm_stats(0).unwrap().counts.jobs,
            1,
            "A's op ended before B's job {f}"
        );
    }
    // The op is stopped at the timeout: its context is lost as a hang.
    assert_status(a.wait_submit(long).status(), LOST);
    let ev = a.wait_event();
    assert_eq!(
        (ev.hdr.ctx_id.get(), ev.reason.get()),
        (ca, VIRTIO_ACCEL_LOST_HANG)
    );
    // A itself carries on with a new context.
    let c2 = a.ctx_create();
    assert_status(a.submit(&nop(c2, 1)).status(), OK);
}

#[test]
fn a_hung_job_holds_no_engine() {
    let mut cfg = Config {
        workers: 1,
        ..Default::default()
    };
    cfg.sim.faults.hang_jobs = vec![1];
    // Far beyond the test: the hang must not need the watchdog.
    cfg.job_timeout_ms = 600_000;
    let d = Daemon::start(cfg, 2);
    let mut a = Guest::connect(d.socket(0), GuestOptions::default());
    let mut b = Guest::connect(d.socket(1), GuestOptions::default());
    let ca = a.ctx_create();
    let hung = a.submit_async(&nop(ca, 1));
    wait_until(|| d.vm_stats(0).is_some_and(|s| s.counts.running == 1));
    // The only engine serves B, and A's other contexts, meanwhile.
    let cb = b.ctx_create();
    for f in 1..=20 {
        assert_status(b.submit(&nop(cb, f)).status(), OK);
    }
    let ca2 = a.ctx_create();
    assert_status(a.submit(&nop(ca2, 1)).status(), OK);
    assert_eq!(d.vm_stats(0).unwrap().counts.running, 1, "the hang ended");
    // Destroying its context aborts the hung job.
    assert_status(a.ctx_destroy(ca), OK);
    assert_status(a.wait_submit(hung).status(), VIRTIO_ACCEL_RESP_ERR_CANCELED);
}

/// Fetches `/metrics` and parses it with a Prometheus text-format parser.
fn scrape(addr: std::net::SocketAddr) -> prometheus_parse::Scrape {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let (head, text) = body.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("a valid exposition")
}

/// The value of `name` with exactly these labels; the series must exist.
#[track_caller]
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: HashMap<&str, &str> = labels.iter().copied().collect();
    let found: Vec<&prometheus_parse::Sample> = s
        .samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| {
            want.len() == x.labels.len() && want.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
        .collect();
    match found.as_slice() {
        [] => panic!("no series {name}{labels:?}"),
        [x] => match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: not a number: {other:?}"),
        },
        _ => panic!("{name}{labels:?}: {} samples", found.len()),
    }
}

#[test]
fn metrics_move_as_the_jobs_do() {
    let mut cfg = Config {
        workers: 1,
        ..Default::default()
    };
    cfg.sim.faults.fail_jobs = vec![4];
    cfg.sim.faults.latency_us = 20_000;
    let d = Daemon::start(cfg, 2);
    let addr = metrics::serve("127.0.0.1:0".parse().unwrap(), d.server.metrics().clone()).unwrap();
    let mut g = Guest::connect(d.socket(0), GuestOptions::default());
    let vm = [("vm", "vm0")];
    let s0 = scrape(addr);
    assert_eq!(value(&s0, "vaccel_contexts", &vm), 0.0);
    let c = g.ctx_create();
    let bo = g.bo(c, 1 << 20, Layout::Scattered);
    // Four jobs queued at once: the queue depth shows them while they run.
    let p: Vec<_> = (1..=4).map(|f| g.submit_async(&nop(c, f))).collect();
    wait_until(|| d.vm_stats(0).is_some_and(|s| s.counts.jobs >= 3));
    let s1 = scrape(addr);
    assert!(
        value(&s1, "vaccel_queue_depth", &vm) >= 1.0,
        "no queued job"
    );
    assert_eq!(value(&s1, "vaccel_contexts", &vm), 1.0);
    assert_eq!(value(&s1, "vaccel_bos", &vm), 1.0);
    assert_eq!(value(&s1, "vaccel_bo_bytes", &vm), f64::from(1 << 20));
    assert_eq!(value(&s1, "vaccel_bo_bytes_quota", &vm), f64::from(1 << 30));
    for p in p {
        let _ = g.wait_submit(p);
    }
    let s2 = scrape(addr);
    let jobs =
        |s: &prometheus_parse::Scrape, o| value(s, "vaccel_jobs_total", &[vm[0], ("outcome", o)]);
    // No job had ended at the first scrape: a series starts with the
    // first job of its outcome.
    assert!(!s0.samples.iter().any(|x| x.metric == "vaccel_jobs_total"));
    assert_eq!(jobs(&s2, "completed"), 3.0);
    assert_eq!(jobs(&s2, "failed"), 1.0, "the injected failure");
    assert_eq!(value(&s2, "vaccel_queue_depth", &vm), 0.0);
    // The three that ran took at least the injected 20 ms each.
    let dev = value(&s2, "vaccel_device_seconds_total", &vm);
    assert!(dev >= 0.06, "device time {dev}");
    assert_eq!(value(&s2, "vaccel_engines", &[]), 1.0);
    assert_eq!(value(&s2, "vaccel_engines_busy", &[]), 0.0, "idle now");
    let lat = value(&s2, "vaccel_job_latency_seconds_count", &vm);
    assert_eq!(lat, 4.0);
    let created = [
        vm[0],
        ("request", "VIRTIO_ACCEL_CMD_CTX_CREATE"),
        ("status", "VIRTIO_ACCEL_RESP_OK"),
    ];
    assert_eq!(value(&s2, "vaccel_requests_total", &created), 1.0);
    let failed = [
        vm[0],
        ("request", "VIRTIO_ACCEL_CMD_SUBMIT"),
        ("status", "VIRTIO_ACCEL_RESP_ERR_JOB_FAILED"),
    ];
    assert_eq!(value(&s2, "vaccel_requests_total", &failed), 1.0);
    // The other VM's series did not move.
    let other = [("vm", "vm1")];
    assert_eq!(value(&s2, "vaccel_device_seconds_total", &other), 0.0);
    assert_status(g.bo_destroy(&bo), OK);
    assert_status(g.ctx_destroy(c), OK);
    let s3 = scrape(addr);
    assert_eq!(value(&s3, "vaccel_contexts", &vm), 0.0);
    assert_eq!(value(&s3, "vaccel_bo_bytes", &vm), 0.0);
}
