//! Per-VM and daemon-wide metrics in the Prometheus text format, served on
//! `--metrics-addr`. Every series of a VM carries its `vm` label (the
//! configured name, or the socket path). Label values come from fixed
//! tables (request and status names), never from guest bytes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use virtio_accel_protocol::*;

use crate::config::Limits;
use crate::memory::MemStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabel {
    vm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    vm: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    vm: String,
    request: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CopyLabel {
    vm: String,
    path: &'static str,
}

type Seconds = Counter<f64, AtomicU64>;

/// Every metric the daemon keeps.
pub struct DaemonMetrics {
    registry: Registry,
    jobs: Family<JobLabel, Counter>,
    device_seconds: Family<VmLabel, Seconds>,
    queue_depth: Family<VmLabel, Gauge>,
    latency: Family<VmLabel, Histogram>,
    contexts: Family<VmLabel, Gauge>,
    bos: Family<VmLabel, Gauge>,
    bo_bytes: Family<VmLabel, Gauge>,
    bo_bytes_quota: Family<VmLabel, Gauge>,
    bos_quota: Family<VmLabel, Gauge>,
    weight: Family<VmLabel, Gauge>,
    requests: Family<RequestLabel, Counter>,
    copied: Family<CopyLabel, Counter>,
    busy_seconds: Seconds,
    engines: Gauge,
    on_engine: Gauge,
}

fn latency_histogram() -> Histogram {
    // 10 µs to about 20 s.
    Histogram::new(exponential_buckets(1e-5, 2.0, 22))
}

impl DaemonMetrics {
    pub fn new(engines: usize) -> Arc<DaemonMetrics> {
        let mut m = DaemonMetrics {
            jobs: Family::default(),
            device_seconds: Family::default(),
            queue_depth: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            contexts: Family::default(),
            bos: Family::default(),
            bo_bytes: Family::default(),
            bo_bytes_quota: Family::default(),
            bos_quota: Family::default(),
            weight: Family::default(),
            requests: Family::default(),
            copied: Family::default(),
            busy_seconds: Seconds::default(),
            engines: Gauge::default(),
            on_engine: Gauge::default(),
            registry: Registry::with_prefix("vaccel"),
        };
        let r = &mut m.registry;
        r.register("jobs", "Jobs answered, by outcome", m.jobs.clone());
        r.register(
            "device_seconds",
            "NPU time used by the VM's jobs",
            m.device_seconds.clone(),
        );
        r.register(
            "queue_depth",
            "Jobs submitted and not yet answered",
            m.queue_depth.clone(),
        );
        r.register(
            "job_latency_seconds",
            "Time from SUBMIT to its answer",
            m.latency.clone(),
        );
        r.register("contexts", "Contexts in use", m.contexts.clone());
        r.register("bos", "Buffer objects in use", m.bos.clone());
        r.register(
            "bo_bytes",
            "Bytes of buffer objects in use",
            m.bo_bytes.clone(),
        );
        r.register(
            "bo_bytes_quota",
            "The VM's max_total_bo_bytes",
            m.bo_bytes_quota.clone(),
        );
        r.register("bos_quota", "The VM's max_bos", m.bos_quota.clone());
        r.register(
            "weight",
            "The VM's share of NPU time, against the others'",
            m.weight.clone(),
        );
        r.register(
            "requests",
            "Requests answered, by type and status",
            m.requests.clone(),
        );
        r.register(
            "guest_bytes_copied",
            "Bytes of the VM's buffers the daemon itself copied, by path: \
             npu_read (into the NPU's staging memory), npu_written (results \
             written back), npu_copied (buffer to buffer), cmd_read (command \
             streams copied out of buffers); zero on the data path of a \
             backend whose NPU uses guest memory in place",
            m.copied.clone(),
        );
        r.register(
            "engine_busy_seconds",
            "Engine time spent running jobs, all engines together",
            m.busy_seconds.clone(),
        );
        r.register("engines", "NPU engines", m.engines.clone());
        r.register(
            "engines_busy",
            "Engines running a job now",
            m.on_engine.clone(),
        );
        m.engines.set(engines as i64);
        Arc::new(m)
    }

    /// The metrics of one VM. Its gauges exist from now on, at zero, so a
    /// VM that has done nothing yet is seen as such.
    pub fn vm(self: &Arc<Self>, name: &str, weight: u32, limits: &Limits) -> Arc<VmMetrics> {
        let v = VmLabel {
            vm: name.to_owned(),
        };
        let g = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        self.weight.get_or_create(&v).set(weight.into());
        self.bo_bytes_quota
            .get_or_create(&v)
            .set(g(limits.max_total_bo_bytes));
        self.bos_quota.get_or_create(&v).set(limits.max_bos.into());
        // The series updated on every request, looked up once.
        Arc::new(VmMetrics {
            contexts: self.contexts.get_or_create(&v).clone(),
            bos: self.bos.get_or_create(&v).clone(),
            bo_bytes: self.bo_bytes.get_or_create(&v).clone(),
            queue_depth: self.queue_depth.get_or_create(&v).clone(),
            device_seconds: self.device_seconds.get_or_create(&v).clone(),
            name: name.to_owned(),
            daemon: self.clone(),
        })
    }

    fn copy_counter(&self, vm: &str, path: &'static str) -> Counter {
        self.copied
            .get_or_create(&CopyLabel {
                vm: vm.to_owned(),
                path,
            })
            .clone()
    }

    /// The exposition, in the Prometheus / OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }

    pub(crate) fn add_busy(&self, ns: u64) {
        let _ = self.busy_seconds.inc_by(ns as f64 * 1e-9);
    }

    pub(crate) fn set_on_engine(&self, n: usize) {
        self.on_engine.set(n as i64);
    }
}

impl VmMetrics {
    /// Counters of the bytes the NPU's data path copies to and from this
    /// VM's buffers, exposed as `guest_bytes_copied{path="npu_*"}`.
    pub fn npu_copy_stats(&self) -> MemStats {
        let d = &self.daemon;
        MemStats {
            npu_read: d.copy_counter(&self.name, "npu_read"),
            npu_written: d.copy_counter(&self.name, "npu_written"),
            npu_copied: d.copy_counter(&self.name, "npu_copied"),
        }
    }

    /// Counters of the command-stream bytes copied out of this VM's
    /// buffers (`path="cmd_read"`).
    pub fn cmd_copy_stats(&self) -> MemStats {
        MemStats {
            npu_read: self.daemon.copy_counter(&self.name, "cmd_read"),
            ..MemStats::default()
        }
    }
}

/// One VM's series.
pub struct VmMetrics {
    name: String,
    daemon: Arc<DaemonMetrics>,
    contexts: Gauge,
    bos: Gauge,
    bo_bytes: Gauge,
    queue_depth: Gauge,
    device_seconds: Seconds,
}

fn outcome(status: u32) -> &'static str {
    match status {
        VIRTIO_ACCEL_RESP_OK => "completed",
        VIRTIO_ACCEL_RESP_ERR_JOB_FAILED | VIRTIO_ACCEL_RESP_ERR_NO_MEMORY => "failed",
        VIRTIO_ACCEL_RESP_ERR_CANCELED => "cancelled",
        VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST => "lost",
        _ => "refused",
    }
}

impl VmMetrics {
    /// Metrics that go nowhere (tests, fuzzing).
    pub fn detached() -> Arc<VmMetrics> {
        DaemonMetrics::new(0).vm("detached", 1, &Limits::default())
    }

    fn label(&self) -> VmLabel {
        VmLabel {
            vm: self.name.clone(),
        }
    }

    pub(crate) fn request(&self, req: u32, status: u32) {
        self.daemon
            .requests
            .get_or_create(&RequestLabel {
                vm: self.name.clone(),
                request: request_name(req),
                status: status_name(status),
            })
            .inc();
    }

    /// A SUBMIT answered with `status`, `latency` after it arrived.
    pub(crate) fn job_answered(&self, status: u32, latency: Duration) {
        self.request(VIRTIO_ACCEL_CMD_SUBMIT, status);
        self.daemon
            .jobs
            .get_or_create(&JobLabel {
                vm: self.name.clone(),
                outcome: outcome(status),
            })
            .inc();
        self.daemon
            .latency
            .get_or_create(&self.label())
            .observe(latency.as_secs_f64());
    }

    /// NPU time the VM's jobs used so far.
    pub fn device_seconds(&self) -> f64 {
        self.device_seconds.get()
    }

    pub(crate) fn add_device_time(&self, ns: u64) {
        let _ = self.device_seconds.inc_by(ns as f64 * 1e-9);
    }

    /// The VM's objects and jobs in flight now.
    pub(crate) fn set_objects(&self, contexts: u64, bos: u64, bo_bytes: u64, jobs: u64) {
        let g = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        self.contexts.set(g(contexts));
        self.bos.set(g(bos));
        self.bo_bytes.set(g(bo_bytes));
        self.queue_depth.set(g(jobs));
    }
}

/// Serves `GET /metrics` on `addr` from a thread of its own. Anything else
/// is answered 404; a client gets one second to send its request.
pub fn serve(addr: SocketAddr, metrics: Arc<DaemonMetrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Err(e) = answer(conn, &metrics) {
                    tracing::debug!("metrics client: {e}");
                }
            }
        })?;
    Ok(bound)
}

fn answer(mut conn: TcpStream, metrics: &DaemonMetrics) -> std::io::Result<()> {
    // One second for the whole request, however it trickles in.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))
    };
    conn.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        conn.set_read_timeout(Some(left()?))?;
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(buf.get(..n).unwrap_or(&[]));
    }
    let (status, body) = if req.starts_with(b"GET /metrics ") || req.starts_with(b"GET /metrics?") {
        ("200 OK", metrics.encode())
    } else {
        ("404 Not Found", "not found\n".to_owned())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())
}
