//! The `accel` backend proven nested. Run inside a VM whose
//! `/dev/accel/accel0` is virtio-accel's driver on the software NPU of the
//! daemon outside (L0), it starts `vhost-device-accel --driver accel
//! --device /dev/accel/accel0` (L1) and plays VMs nested in this one (L2)
//! with the harness, over real sockets, their memory sealed memfds:
//!
//! 1. two L2 VMs at once run the reference workloads (MLP, int8 matmul,
//!    conv2d), one with page-scattered buffers, each output checked
//!    against the CPU reference;
//! 2. the L0 daemon hangs the next job (`--hang-jobs N`, N given here):
//!    the L2 VM sees its context lost with reason HANG, a new context of
//!    it works, the other VM carries on;
//! 3. the L1 daemon's counters of bytes it copied to or from buffers,
//!    read from its metrics, are 0;
//! 4. an L2 VM killed with jobs in flight leaves the L1 daemon as it was
//!    (open files, udmabufs) and its socket serves the next VM;
//! 5. a job through the L1 daemon against the same job issued directly on
//!    the node, in paired interleaved rounds: the overhead.
//!
//! `accel-passthrough --daemon BIN [--device DEV] --l0-hang-job N
//! [--rounds K]`; prints a line per step, exits non-zero on the first
//! failure. Needs root (udmabuf, debugfs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use virtio_accel_guest::accel::{Accel, Bo, JobBo};
use virtio_accel_guest::workloads::{self, Workload};
use virtio_accel_integration::bench::stats::{interleaved, ratios, Summary};
use virtio_accel_integration::daemon::wait_for_socket;
use virtio_accel_integration::guest::Loaded;
use virtio_accel_integration::{Guest, GuestOptions, Layout};
use virtio_accel_protocol::*;

const PAGE: u64 = 4096;
const METRICS_PORT: u16 = 9464;

type Check<T> = Result<T, String>;

/// The workloads with their buffers rounded up to whole pages: the accel
/// backend takes page-aligned backing only.
fn paged(w: &Workload) -> Workload {
    let mut w = w.clone();
    for b in &mut w.bos {
        b.size = b.size.next_multiple_of(PAGE);
    }
    w
}

fn standard() -> Vec<Workload> {
    workloads::standard().iter().map(paged).collect()
}

fn l2(socket: &Path) -> Guest {
    Guest::connect(
        socket,
        GuestOptions {
            regions: vec![16 << 20, 16 << 20],
            timeout: Duration::from_secs(60),
            ..Default::default()
        },
    )
}

fn status(s: u32) -> &'static str {
    status_name(s)
}

/// Runs a loaded workload as job `fence` and checks its output.
fn run(g: &mut Guest, ctx: u32, fence: u64, w: &Workload, l: &Loaded) -> Check<()> {
    let r = g.submit(&Guest::run_request(ctx, fence, w, l));
    if r.status() != VIRTIO_ACCEL_RESP_OK {
        return Err(format!(
            "{}: SUBMIT answered {}",
            w.name,
            status(r.status())
        ));
    }
    w.check(&g.output(w, l))
        .map_err(|e| format!("{}: {e}", w.name))
}

/// Step 1 for one VM: every reference workload, checked.
fn reference(socket: PathBuf, layout: Layout) -> Check<(Guest, u32)> {
    let mut g = l2(&socket);
    if !g.has_feature(VIRTIO_ACCEL_F_PAGE_ALIGNED) {
        return Err("the device does not offer VIRTIO_ACCEL_F_PAGE_ALIGNED".into());
    }
    let ctx = g.ctx_create();
    for (k, w) in standard().iter().enumerate() {
        let l = g.load(ctx, w, layout);
        run(&mut g, ctx, k as u64 + 1, w, &l)?;
    }
    Ok((g, ctx))
}

/// The L1 daemon's processes: the supervisor and the VMs' processes.
fn daemon_pids(supervisor: u32) -> Vec<u32> {
    let mut pids = vec![supervisor];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(supervisor) {
            pids.push(pid);
        }
    }
    pids
}

/// What the L1 daemon's processes have open, sorted (a file's name, or
/// its kind for sockets, pipes and anonymous files).
fn files(supervisor: u32) -> Check<Vec<String>> {
    let mut all = Vec::new();
    for pid in daemon_pids(supervisor) {
        let dir = format!("/proc/{pid}/fd");
        for e in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
            let Ok(e) = e else { continue };
            if let Ok(t) = std::fs::read_link(e.path()) {
                let t = t.display().to_string();
                // socket:[inode] -> socket: the kind, not the instance
                // (anon_inode:[eventfd] keeps its kind).
                let kind = match t.split_once(":[") {
                    Some((k, _)) if k != "anon_inode" => k.to_owned(),
                    _ => t,
                };
                all.push(kind);
            }
        }
    }
    all.sort();
    Ok(all)
}

/// udmabufs alive in this kernel (debugfs' dma-buf list, by exporter).
fn udmabufs() -> Check<usize> {
    let p = "/sys/kernel/debug/dma_buf/bufinfo";
    let s = std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
    Ok(s.lines().filter(|l| l.contains("udmabuf")).count())
}

/// What must come back once the VMs are gone.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Census {
    files: Vec<String>,
    node_files: usize,
    udmabufs: usize,
}

impl Census {
    /// What `self` has beyond `other`, and what it lacks.
    fn diff(&self, other: &Census) -> String {
        fn count(c: &Census) -> std::collections::BTreeMap<&str, i64> {
            let mut m = std::collections::BTreeMap::new();
            for f in &c.files {
                *m.entry(f.as_str()).or_default() += 1;
            }
            m
        }
        let (mine, theirs) = (count(self), count(other));
        let kinds: std::collections::BTreeSet<&str> =
            mine.keys().chain(theirs.keys()).copied().collect();
        let changed: Vec<String> = kinds
            .into_iter()
            .filter_map(|k| {
                let d = mine.get(k).copied().unwrap_or(0) - theirs.get(k).copied().unwrap_or(0);
                (d != 0).then(|| format!("{k} {d:+}"))
            })
            .collect();
        format!(
            "{} files ({} on the node, {} udmabufs) against {} ({}, {}): {changed:?}",
            self.files.len(),
            self.node_files,
            self.udmabufs,
            other.files.len(),
            other.node_files,
            other.udmabufs
        )
    }
}

fn census(pid: u32, node: &Path) -> Check<Census> {
    let node = std::fs::canonicalize(node).map_err(|e| format!("{}: {e}", node.display()))?;
    let node = node.display().to_string();
    let files = files(pid)?;
    Ok(Census {
        node_files: files.iter().filter(|f| **f == node).count(),
        files,
        udmabufs: udmabufs()?,
    })
}

/// Waits up to 30 s for the census to be `want` again.
fn settle(pid: u32, node: &Path, want: &Census) -> Check<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = census(pid, node)?;
        if now == *want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the L1 daemon holds {}", now.diff(want)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The L1 daemon's `vaccel_guest_bytes_copied_total` series, from every
/// VM's process (the Nth serves its metrics on the port plus N).
fn copied(vms: u16) -> Check<Vec<(String, u64)>> {
    let mut all = Vec::new();
    for i in 0..vms {
        all.extend(series(
            METRICS_PORT + i,
            "vaccel_guest_bytes_copied_total{",
        )?);
    }
    Ok(all)
}

/// The series whose line starts with `prefix` on the metrics port.
fn series(port: u16, prefix: &str) -> Check<Vec<(String, u64)>> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("metrics: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: l1\r\n\r\n")
        .map_err(|e| format!("metrics: {e}"))?;
    let mut body = String::new();
    c.read_to_string(&mut body)
        .map_err(|e| format!("metrics: {e}"))?;
    let series: Vec<(String, u64)> = body
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect();
    if series.is_empty() {
        return Err(format!("metrics on port {port}: no {prefix}..}} series"));
    }
    Ok(series)
}

/// One VM on `socket` runs one job and goes.
fn warm_up(socket: &Path) -> Check<()> {
    let mut g = l2(socket);
    let ctx = g.ctx_create();
    let w = &standard()[1];
    let l = g.load(ctx, w, Layout::Contiguous);
    run(&mut g, ctx, 1, w, &l).map_err(|e| format!("warming up {}: {e}", socket.display()))
}

/// Step 2: the next L0 job hangs; the L2 VM learns its context was lost.
fn hang(g: &mut Guest, ctx: u32) -> Check<String> {
    let w = &standard()[0];
    let l = g.load(ctx, w, Layout::Contiguous);
    let r = g.submit(&Guest::run_request(ctx, 100, w, &l));
    if r.status() == VIRTIO_ACCEL_RESP_OK {
        return Err("the hung job was answered OK".into());
    }
    let ev = g.wait_event();
    if ev.hdr.type_.get() != VIRTIO_ACCEL_EVENT_CONTEXT_LOST
        || ev.hdr.ctx_id.get() != ctx
        || ev.reason.get() != VIRTIO_ACCEL_LOST_HANG
    {
        return Err(format!("after the L0 hang, event {ev:?}"));
    }
    let s = g.ctx_destroy(ctx);
    if s != VIRTIO_ACCEL_RESP_OK {
        return Err(format!("CTX_DESTROY of the lost context: {}", status(s)));
    }
    Ok(format!(
        "job answered {}, CONTEXT_LOST event with reason HANG",
        status(r.status())
    ))
}

/// The child's part of step 4: a VM with jobs in flight, killed by the
/// parent once it says so.
fn killed_vm(socket: &Path) -> ExitCode {
    let mut g = l2(socket);
    let ctx = g.ctx_create();
    // Jobs of some tens of milliseconds on the NPU outside, so that the
    // kill lands while they run.
    let w = &paged(&workloads::mlp(9, 32, 1024, 1024, 16));
    let l = g.load(ctx, w, Layout::Contiguous);
    for f in 1..=8 {
        g.submit_async(&Guest::run_request(ctx, f, w, &l));
    }
    println!("in-flight");
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(600));
    ExitCode::SUCCESS
}

/// Kills a VM whose jobs are in flight (the L1 daemon's queue depth for
/// it, read just before, is not 0); returns that depth.
fn kill_mid_job(me: &Path, socket: &Path, metrics_port: u16) -> Check<u64> {
    let mut child = Command::new(me)
        .arg("--killed-vm")
        .arg(socket)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the VM to kill: {e}"))?;
    let mut line = String::new();
    let out = child.stdout.take().ok_or("no stdout")?;
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let depth =
        series(metrics_port, "vaccel_queue_depth{").map(|s| s.iter().map(|(_, v)| v).sum::<u64>());
    let _ = child.kill();
    let _ = child.wait();
    if line.trim() != "in-flight" {
        return Err(format!("the VM to kill said {line:?}"));
    }
    match depth? {
        0 => Err("the VM to kill had no job in flight".into()),
        d => Ok(d),
    }
}

/// Step 5: the same job through the L1 daemon and directly on the node.
fn overhead(g: &mut Guest, node: &Path, rounds: usize) -> Check<String> {
    let w = &standard()[0];
    let ctx = g.ctx_create();
    let l = g.load(ctx, w, Layout::Contiguous);
    let dev = Accel::open(node).map_err(|e| format!("{}: {e}", node.display()))?;
    let mut bos = Vec::new();
    for b in &w.bos {
        let bo = dev
            .bo_create(b.size)
            .map_err(|e| format!("BO_CREATE: {e}"))?;
        dev.map(bo)
            .map_err(|e| format!("mmap: {e}"))?
            .write(0, &b.init);
        bos.push(JobBo {
            bo,
            access: b.access,
        });
    }
    let stream = w.program.encode();
    let cmd: Bo = dev
        .bo_create(stream.len() as u64)
        .map_err(|e| format!("BO_CREATE: {e}"))?;
    dev.map(cmd)
        .map_err(|e| format!("mmap: {e}"))?
        .write(0, &stream);
    let sync = dev.syncobj_create().map_err(|e| e.to_string())?;
    let mut fence = 0;
    let mut failed = None;
    let times = interleaved(rounds, 2, |side| {
        let t = Instant::now();
        let r = if side == 0 {
            fence += 1;
            let r = g.submit(&Guest::run_request(ctx, fence, w, &l));
            (r.status() == VIRTIO_ACCEL_RESP_OK)
                .then_some(())
                .ok_or_else(|| format!("through L1: {}", status(r.status())))
        } else {
            dev.submit(&bos, cmd, 0, stream.len() as u32, &[], sync)
                .and_then(|()| dev.wait_job(sync, 30_000))
                .map_err(|e| format!("direct: {e}"))
        };
        if let Err(e) = r {
            failed.get_or_insert(e);
        }
        t.elapsed().as_secs_f64()
    });
    if let Some(e) = failed {
        return Err(e);
    }
    w.check(&g.output(w, &l))?;
    let r = Summary::of(&ratios(&times[0], &times[1]));
    let ms = |v: &[f64]| Summary::of(v).median * 1e3;
    let pct = |x: f64| (x - 1.0) * 100.0;
    Ok(format!(
        "{} job through the L1 daemon vs directly on {}: {:+.1}% (median of {rounds} paired rounds, IQR {:+.1}% to {:+.1}%{}); medians {:.2} ms vs {:.2} ms",
        w.name,
        node.display(),
        pct(r.median),
        pct(r.q1),
        pct(r.q3),
        if r.noisy() { ", noisy" } else { "" },
        ms(&times[0]),
        ms(&times[1]),
    ))
}

struct Args {
    daemon: PathBuf,
    device: PathBuf,
    hang_job: u64,
    rounds: usize,
}

fn args() -> Check<Args> {
    let mut a = Args {
        daemon: PathBuf::from("/bin/vhost-device-accel"),
        device: PathBuf::from("/dev/accel/accel0"),
        hang_job: 0,
        rounds: 15,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--daemon" => a.daemon = v()?.into(),
            "--device" => a.device = v()?.into(),
            "--l0-hang-job" => a.hang_job = v()?.parse().map_err(|e| format!("{k}: {e}"))?,
            "--rounds" => a.rounds = v()?.parse().map_err(|e| format!("{k}: {e}"))?,
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    Ok(a)
}

fn say(s: impl std::fmt::Display) {
    println!("passthrough: {s}");
}

fn check(a: &Args, daemon: &Child, socks: &[PathBuf]) -> Check<()> {
    let pid = daemon.id();
    for s in socks {
        wait_for_socket(s);
    }
    // Each VM's process serves one VM first: what a process makes once,
    // at its first VM, is in the census the later ones are compared with.
    for s in socks {
        warm_up(s)?;
    }
    let before = census(pid, &a.device)?;

    // 1. Two VMs at once.
    let (s0, s1) = (socks[0].clone(), socks[1].clone());
    let t0 = std::thread::spawn(move || reference(s0, Layout::Scattered));
    let t1 = std::thread::spawn(move || reference(s1, Layout::Contiguous));
    let join = |t: std::thread::JoinHandle<Check<(Guest, u32)>>, n: usize| {
        t.join()
            .map_err(|_| format!("L2 VM {n}: the harness panicked"))?
            .map_err(|e| format!("L2 VM {n}: {e}"))
    };
    let (mut g0, ctx0) = join(t0, 0)?;
    let (mut g1, ctx1) = join(t1, 1)?;
    let n = standard().len();
    let during = census(pid, &a.device)?;
    say(format!(
        "2 L2 VMs at once, {n} workloads each (page-scattered and contiguous buffers), outputs match the CPU reference; the daemon holds {} more files on the node",
        during.node_files - before.node_files
    ));

    // 2. The L0 daemon hangs the next job.
    let next = (socks.len() + 2 * n + 1) as u64;
    if a.hang_job != next {
        return Err(format!(
            "--l0-hang-job {} is not the next L0 job ({next})",
            a.hang_job
        ));
    }
    let lost = hang(&mut g0, ctx0)?;
    let w = &standard()[1];
    let ctx = g0.ctx_create();
    let l = g0.load(ctx, w, Layout::Contiguous);
    run(&mut g0, ctx, 1, w, &l).map_err(|e| format!("a new context after the loss: {e}"))?;
    let l = g1.load(ctx1, w, Layout::Contiguous);
    run(&mut g1, ctx1, 10, w, &l).map_err(|e| format!("the other VM after the loss: {e}"))?;
    say(format!(
        "L0 hang of job {}: {lost}; a new context of that VM and the other VM run on",
        a.hang_job
    ));

    // 3. What the daemon copied.
    let series = copied(socks.len() as u16)?;
    let data: u64 = series
        .iter()
        .filter(|(k, _)| k.contains("path=\"npu_"))
        .map(|(_, v)| v)
        .sum();
    let cmd: u64 = series
        .iter()
        .filter(|(k, _)| k.contains("path=\"cmd_read\""))
        .map(|(_, v)| v)
        .sum();
    if data != 0 {
        return Err(format!("the L1 daemon copied buffer bytes: {series:?}"));
    }
    say(format!(
        "L1 daemon copied {data} bytes of buffers (command streams: {cmd} bytes)"
    ));

    // 4. A VM killed with jobs in flight.
    let mid = census(pid, &a.device)?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let depth = kill_mid_job(&me, &socks[2], METRICS_PORT + 2)?;
    settle(pid, &a.device, &mid)?;
    let (g2, _) = reference(socks[2].clone(), Layout::Contiguous)
        .map_err(|e| format!("the next VM on the killed VM's socket: {e}"))?;
    drop(g2);
    say(format!("an L2 VM killed with {depth} jobs in flight left no file or udmabuf behind; its socket serves the next VM"));

    // 5. The overhead.
    say(overhead(&mut g1, &a.device, a.rounds)?);

    drop(g0);
    drop(g1);
    settle(pid, &a.device, &before)?;
    say(format!(
        "all L2 VMs gone: the daemon holds {} files, {} on the node, {} udmabufs, as before",
        before.files.len(),
        before.node_files,
        before.udmabufs
    ));
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--killed-vm") {
        return match argv.get(2) {
            Some(s) => killed_vm(Path::new(s)),
            None => ExitCode::FAILURE,
        };
    }
    let result = (|| -> Check<()> {
        let a = args()?;
        let dir = PathBuf::from("/tmp/passthrough");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let socks: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("l2-{i}.sock"))).collect();
        // The L0 daemon's job timeout decides a hang: this one waits longer.
        let config = dir.join("l1.toml");
        std::fs::write(&config, "job_timeout_ms = 20000\n").map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("daemon.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&a.daemon);
        cmd.args(["--driver", "accel", "--device"])
            .arg(&a.device)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{METRICS_PORT}"))
            .arg("--config")
            .arg(&config);
        for s in &socks {
            let _ = std::fs::remove_file(s);
            cmd.arg("--socket-path").arg(s);
        }
        let mut daemon = cmd
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", a.daemon.display()))?;
        let r = check(&a, &daemon, &socks);
        let _ = daemon.kill();
        let _ = daemon.wait();
        if r.is_err() {
            if let Ok(l) = std::fs::read_to_string(dir.join("daemon.log")) {
                for line in l.lines().rev().take(20).collect::<Vec<_>>().iter().rev() {
                    eprintln!("l1-daemon: {line}");
                }
            }
        }
        r
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("passthrough: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
