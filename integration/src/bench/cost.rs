//! What the daemon's CPU does per operation, in instructions: the daemon
//! (and the echo device beside it) run in a separate process under
//! callgrind, driven over their sockets by a guest in this process, which
//! runs natively and is not counted. Counts do not drift with machine
//! noise the way times do.
//!
//! The driver marks the boundaries between phases over the server's
//! stdin; the server calls [`callgrind_mark`], before which callgrind
//! dumps and zeroes its counters (`--dump-before`). So each dump holds
//! exactly one phase: N operations of one kind, plus the mark itself,
//! which an empty phase measures and which is subtracted.
//!
//! Left out: the instructions inside calls to [`LEFT_OUT`] (their
//! inclusive cost, read from the dump's call graph): the scheduler's wait
//! and the engines' next-job loop, which poll for a while after each
//! event (instructions in proportion to time, not work), and the software
//! NPU's executor (`Exec::run`), the kernel itself, so that what remains
//! of an MLP job is what the daemon spends around the kernel (ring,
//! decode, validation, scheduling, mapping buffers, completion).
//! (`--toggle-collect` cannot do this: callgrind 3.19 switches collection
//! for the whole process, not per thread, so a thread asleep inside a
//! toggled function stops the count of all the others.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use vhost_device_accel::Config;
use virtio_accel_guest::workloads::{self, Workload};
use virtio_accel_protocol::*;

use crate::{daemon, echo, Daemon, Guest, GuestOptions, Layout, WaitMode};

/// The argument that makes a benchmark program the server process.
pub const SERVE: &str = "--serve-callgrind";

/// Functions whose calls are not counted (patterns, `*` any text).
pub const LEFT_OUT: &[&str] = &[
    "*::sched::thread::Loop<*>::wait",
    "*::backend::sim::engine::Engine::next",
    KERNEL,
];

/// The software NPU's executor: the kernel of a job.
pub const KERNEL: &str = "*::backend::sim::exec::Exec::run";

/// The operations counted, how many of each a phase runs, and what each
/// is.
pub const OPS: &[(&str, u64, &str)] = &[
    (
        "request",
        400,
        "GET_CAPS round trip: the daemon's instructions per request",
    ),
    (
        "echo_request",
        400,
        "the same chain on the echo device (the transport alone)",
    ),
    ("nop_job", 400, "no-op job (one NOP, inline), one at a time"),
    (
        "mlp_job",
        10,
        "MLP job one at a time (the inference MLP), its kernel left out",
    ),
];

/// Time between two operations: far longer than the server, slowed
/// down by callgrind, takes to finish one.
const PAUSE: Duration = Duration::from_millis(2);

/// Counts may grow this much over the baseline before the check fails.
pub const TOLERANCE: f64 = 0.20;

/// The daemon config the counts are taken with: one engine, so that no
/// job can land on either of two engines.
fn config() -> Config {
    Config {
        workers: 1,
        ..Config::default()
    }
}

/// The MLP the inference benchmark runs.
pub fn mlp() -> Workload {
    workloads::mlp(11, 128, 256, 512, 64)
}

/// Where dumps are cut: callgrind dumps on entering this function.
#[inline(never)]
pub fn callgrind_mark() {
    std::hint::black_box(());
}

/// In the server process (started with [`SERVE`]): serves a daemon and an
/// echo device, prints their sockets, marks phases as stdin asks, and
/// exits when stdin closes. Elsewhere returns at once.
pub fn serve_if_asked() {
    if !std::env::args().any(|a| a == SERVE) {
        return;
    }
    let d = Daemon::start(config(), 1);
    let echo = echo::start(&daemon::unique_dir());
    let mut out = std::io::stdout();
    writeln!(out, "{}\n{}", d.socket(0).display(), echo.display()).unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line == "mark" {
            callgrind_mark();
            writeln!(out, "ok").unwrap();
            out.flush().unwrap();
        }
    }
    std::process::exit(0);
}

/// The server process under callgrind, and the pipes to it.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// The fixed-length path the server was started from.
    link: PathBuf,
}

impl Server {
    fn start(out: &Path) -> Result<Server, String> {
        // The server's initial stack holds its arguments and environment,
        // and where its buffers start moves with their size, which moves
        // the instruction counts of copies (memcpy takes other paths at
        // other alignments). So it starts from a path of fixed length and
        // an empty environment, wherever the checkout is and whatever the
        // caller's environment holds.
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let link = PathBuf::from(format!("/tmp/vaccel-cg-{:010}", std::process::id()));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).map_err(|e| format!("{}: {e}", link.display()))?;
        let valgrind = ["/usr/bin/valgrind", "/usr/local/bin/valgrind"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("valgrind");
        let mut cmd = Command::new(valgrind);
        cmd.env_clear();
        cmd.arg("--tool=callgrind")
            .arg("-q")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg("--dump-before=*callgrind_mark");
        cmd.arg("--compress-strings=no").arg("--compress-pos=no");
        let log = std::fs::File::create(out.with_extension("log")).map_err(|e| e.to_string())?;
        let mut child = cmd
            .arg(&link)
            .arg(SERVE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("valgrind: {e} (apt-get install valgrind)"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Ok(Server {
            child,
            stdin,
            stdout,
            link,
        })
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        s.trim().to_owned()
    }

    /// Ends the current phase.
    fn mark(&mut self) {
        let w = self.stdin.as_mut().unwrap();
        writeln!(w, "mark").unwrap();
        w.flush().unwrap();
        assert_eq!(self.line(), "ok", "the server process answered a mark");
    }

    fn finish(mut self) -> Result<(), String> {
        drop(self.stdin.take());
        let st = self.child.wait().map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&self.link);
        st.success()
            .then_some(())
            .ok_or_else(|| format!("the server process ended with {st}"))
    }
}

/// Whether `name` matches `pat`, where `*` stands for any text.
fn glob(pat: &str, name: &str) -> bool {
    match pat.split_once('*') {
        None => pat == name,
        Some((head, rest)) => {
            let Some(name) = name.strip_prefix(head) else {
                return false;
            };
            (0..=name.len())
                .filter(|&i| name.is_char_boundary(i))
                .any(|i| glob(rest, &name[i..]))
        }
    }
}

/// What one dump counted: all instructions, and those inside calls to
/// each [`LEFT_OUT`] pattern (by pattern).
#[derive(Debug, Default)]
struct Dump {
    total: u64,
    inside: BTreeMap<&'static str, u64>,
}

impl Dump {
    fn counted(&self) -> u64 {
        self.total - self.inside.values().sum::<u64>()
    }
}

/// Reads a dump written with `--compress-strings=no --compress-pos=no`:
/// its `totals:` line, and the inclusive cost of every call (the cost
/// line after each `calls=` line) to a function [`LEFT_OUT`] names.
fn read_dump(path: &Path) -> Result<Dump, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut d = Dump::default();
    let mut callee: Option<&'static str> = None;
    let mut call_cost_next = false;
    let mut total = None;
    for line in s.lines() {
        if let Some(name) = line.strip_prefix("cfn=") {
            callee = LEFT_OUT.iter().copied().find(|p| glob(p, name));
        } else if line.starts_with("calls=") {
            call_cost_next = true;
        } else if call_cost_next {
            call_cost_next = false;
            let ir: u64 = line
                .split_whitespace()
                .last()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{}: bad call cost line {line:?}", path.display()))?;
            if let Some(p) = callee {
                *d.inside.entry(p).or_default() += ir;
            }
        } else if let Some(v) = line.strip_prefix("totals:") {
            total = v.split_whitespace().next().and_then(|v| v.parse().ok());
        }
    }
    d.total = total.ok_or_else(|| format!("{}: no totals line", path.display()))?;
    Ok(d)
}

/// Dump `n` of the run writing to `out` (callgrind numbers them from 1).
fn dump(out: &Path, n: usize) -> PathBuf {
    PathBuf::from(format!("{}.{n}", out.display()))
}

/// One run under callgrind: instructions per operation, by [`OPS`] name.
pub fn measure() -> Result<BTreeMap<String, f64>, String> {
    let dir = daemon::unique_dir();
    let out = dir.join("callgrind.out");
    let mut server = Server::start(&out)?;
    let (accel, echo) = (PathBuf::from(server.line()), PathBuf::from(server.line()));
    if accel.as_os_str().is_empty() {
        return Err(format!(
            "the server process did not start (see {})",
            out.with_extension("log").display()
        ));
    }
    // Under callgrind the daemon runs tens of times slower.
    let opts = GuestOptions {
        wait: WaitMode::Block,
        timeout: Duration::from_secs(120),
        ..GuestOptions::default()
    };
    let mut g = Guest::connect(&accel, opts.clone());
    let mut e = Guest::connect(&echo, opts);
    let c = g.ctx_create();
    let w = mlp();
    let loaded = g.load(c, &w, Layout::Scattered);
    let caps = Request::GetCaps(GetCaps {
        hdr: Hdr::new(VIRTIO_ACCEL_CMD_GET_CAPS, 0),
        ..Default::default()
    });
    let (caps, caps_resp) = (caps.encode(), caps.response_size());
    let mut fence = 0u64;
    let mut run = |op: &str, n: u64, g: &mut Guest, e: &mut Guest| {
        for _ in 0..n {
            // Each operation finds the server idle, every thread back in
            // its wait: an operation that arrived while the last one was
            // still being finished would take another path (one more
            // pass of a drain loop, no wake-up), and counts would depend
            // on timing.
            std::thread::sleep(PAUSE);
            match op {
                "request" => {
                    let (len, _) = g.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &caps, caps_resp);
                    assert_eq!(len as usize, caps_resp);
                }
                "echo_request" => {
                    e.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &caps, caps_resp);
                }
                "nop_job" => {
                    fence += 1;
                    let r = g.submit(&Guest::nop_request(c, fence, &[], 1));
                    assert_eq!(r.status(), VIRTIO_ACCEL_RESP_OK);
                }
                "mlp_job" => {
                    fence += 1;
                    let r = g.submit(&Guest::run_request(c, fence, &w, &loaded));
                    assert_eq!(r.status(), VIRTIO_ACCEL_RESP_OK);
                }
                _ => unreachable!("unknown operation {op}"),
            }
        }
    };
    // Warm-up: first-use costs (allocations, page tables, lazy state)
    // land in the first dump, which is not used.
    for &(op, n, _) in OPS {
        run(op, n / 8 + 2, &mut g, &mut e);
    }
    w.check(&g.output(&w, &loaded))
        .map_err(|m| format!("MLP result: {m}"))?;
    server.mark();
    // An empty phase: what a mark costs by itself.
    server.mark();
    for &(op, n, _) in OPS {
        run(op, n, &mut g, &mut e);
        server.mark();
    }
    drop((g, e));
    server.finish()?;
    let empty = read_dump(&dump(&out, 2))?.counted() as f64;
    let mut per_op = BTreeMap::new();
    for (i, &(op, n, _)) in OPS.iter().enumerate() {
        let phase = read_dump(&dump(&out, 3 + i))?;
        // Jobs pass through every function left out: one that was never
        // called has been renamed or inlined, and its cost is counted.
        if op.ends_with("_job") {
            if let Some(p) = LEFT_OUT.iter().find(|p| !phase.inside.contains_key(*p)) {
                return Err(format!(
                    "no call to {p} in the {op} phase: update LEFT_OUT in {}",
                    file!()
                ));
            }
        }
        per_op.insert(op.to_owned(), (phase.counted() as f64 - empty) / n as f64);
        if op == "mlp_job" {
            let kernel = phase.inside.get(KERNEL).copied().unwrap_or(0);
            per_op.insert("mlp_kernel".into(), kernel as f64 / n as f64);
        }
    }
    per_op.insert("mark".into(), empty);
    if std::env::var_os("VACCEL_KEEP_CALLGRIND").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("callgrind dumps kept in {}", dir.display());
    }
    Ok(per_op)
}

/// How much `count` grew over `base` (a fraction), and whether that is
/// within [`TOLERANCE`].
pub fn against(count: f64, base: f64) -> (f64, bool) {
    let growth = count / base - 1.0;
    (growth, growth <= TOLERANCE)
}

/// The committed baseline.
pub fn baseline_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/instructions-baseline.json")
}

/// Baseline counts by operation, if the file is there.
pub fn baseline() -> Option<BTreeMap<String, f64>> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(baseline_path()).ok()?).ok()?;
    v.get("instructions")?
        .as_object()?
        .iter()
        .map(|(k, v)| Some((k.clone(), v.as_f64()?)))
        .collect()
}

/// Writes `counts` as the new baseline, with the machine they came from.
pub fn write_baseline(counts: &BTreeMap<String, f64>) -> std::io::Result<()> {
    let v = json!({
        "what": "daemon instructions per operation under callgrind (see integration/src/bench/cost.rs); refresh with: cargo bench -p virtio-accel-integration --bench accel -- --only instructions --write-baseline",
        "tolerance": TOLERANCE,
        "machine": super::machine(),
        "instructions": counts,
    });
    let path = baseline_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_counts_all_but_the_calls_left_out() {
        let path = crate::daemon::unique_dir().join("dump");
        std::fs::write(
            &path,
            "events: Ir\n\
             fn=vhost_device_accel::sched::thread::Loop<B>::run\n\
             10 500\n\
             cfn=vhost_device_accel::sched::thread::Loop<B>::wait\n\
             calls=3 20\n\
             11 7000\n\
             cfn=vhost_device_accel::sched::thread::Loop<B>::watchdog\n\
             calls=3 30\n\
             12 300\n\
             fn=vhost_device_accel::backend::sim::engine::Engine::worker\n\
             cfn=vhost_device_accel::backend::sim::exec::Exec::run\n\
             calls=1 40\n\
             13 90000\n\
             totals: 98000\n",
        )
        .unwrap();
        let d = read_dump(&path).unwrap();
        assert_eq!(d.total, 98000);
        assert_eq!(d.inside.get(LEFT_OUT[0]), Some(&7000));
        assert_eq!(d.inside.get(KERNEL), Some(&90000));
        assert_eq!(d.counted(), 1000);
    }

    #[test]
    fn a_count_may_grow_by_the_tolerance_and_no_more() {
        assert!(against(1200.0, 1000.0).1);
        assert!(!against(1201.0, 1000.0).1);
        assert!(against(500.0, 1000.0).1);
    }

    #[test]
    fn patterns_match_whole_names() {
        let wait = "vhost_device_accel::sched::thread::Loop<B>::wait";
        assert!(glob(super::LEFT_OUT[0], wait));
        assert!(!glob(
            super::LEFT_OUT[0],
            "vhost_device_accel::sched::thread::Loop<B>::watchdog"
        ));
        assert!(glob(
            super::KERNEL,
            "vhost_device_accel::backend::sim::exec::Exec::run"
        ));
        assert!(!glob(
            super::KERNEL,
            "vhost_device_accel::backend::sim::exec::Exec::run::{{closure}}"
        ));
    }
}
