//! What the benchmark programs share: their options, paired interleaved
//! measurement ([`stats`]), the report they print and write as JSON with
//! the machine it ran on, the markdown table built from several runs'
//! JSON ([`table`]), raw chain pipelines ([`pipe`]), VMs kept busy for a
//! window ([`load`]), instruction counts under callgrind ([`cost`]), and
//! buffers for running a workload in-process as the native baseline.

pub mod cost;
pub mod load;
pub mod pipe;
pub mod place;
pub mod stats;
pub mod table;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};
use vhost_device_accel::backend::sim::{SimNpu, Tile};
use vhost_device_accel::memory::{Backing, GuestMem, MemStats};
use virtio_accel_guest::workloads::{self, Workload};

pub use stats::{interleaved, quantile, ratios, Figure, Summary, Target, Unit};

/// `[--quick] [--json PATH] [--only NAME] [--table FILE..]
/// [--write-baseline]`.
pub struct Opts {
    /// Each part for a fraction of a second: keeps the program working.
    pub quick: bool,
    /// Where the figures go as JSON.
    pub json: String,
    /// Run only the parts whose names contain one of these (commas).
    pub only: Option<String>,
    /// Print the markdown table of these runs' JSON instead of measuring.
    pub table: Vec<String>,
    /// Write the instruction counts measured as the new baseline.
    pub write_baseline: bool,
}

impl Opts {
    /// The options on the command line; the JSON goes to
    /// `target/bench-NAME.json` unless `--json` says otherwise.
    pub fn from_args(name: &str) -> Opts {
        let args: Vec<String> = std::env::args().collect();
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1).cloned())
        };
        let table = args
            .iter()
            .position(|a| a == "--table")
            .map(|i| {
                args[i + 1..]
                    .iter()
                    .take_while(|a| !a.starts_with("--"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Opts {
            quick: args.iter().any(|a| a == "--quick"),
            json: value("--json").unwrap_or_else(|| {
                format!("{}/../target/bench-{name}.json", env!("CARGO_MANIFEST_DIR"))
            }),
            only: value("--only"),
            table,
            write_baseline: args.iter().any(|a| a == "--write-baseline"),
        }
    }

    /// Whether `part` is to run: `--only` names parts by any part of
    /// their names, several separated by commas.
    pub fn runs(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.split(',').any(|n| part.contains(n)))
    }

    /// Rounds of a paired comparison: at least 15 in a full run.
    pub fn rounds(&self) -> usize {
        if self.quick {
            3
        } else {
            15
        }
    }
}

/// Figures as they are measured: the rows printed, the JSON written.
pub struct Report {
    /// By key, in the order measured.
    pub figures: Vec<(String, Figure)>,
    /// Measurements kept beside the figures (counters, per-VM data).
    pub data: BTreeMap<String, Value>,
    pub rows: Vec<String>,
    started: Instant,
    /// Set when a check the run makes failed (the program exits non-zero).
    pub failed: bool,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            figures: Vec::new(),
            data: BTreeMap::new(),
            rows: Vec::new(),
            started: Instant::now(),
            failed: false,
        }
    }
}

impl Report {
    /// Records a figure under `key` and prints it as it is measured.
    pub fn figure(&mut self, key: &str, f: Figure) {
        let row = f.row();
        println!("  {row}");
        self.rows.push(row);
        self.figures.push((key.to_owned(), f));
    }

    /// Records how long a part took (kept in the JSON, printed).
    pub fn time(&mut self, part: &str, secs: f64) {
        println!("  ({part}: {secs:.1} s)");
        let t = self.data.entry("part_seconds".into()).or_insert(json!({}));
        t[part] = json!(secs);
    }

    /// A printed line that is not a figure of its own (its numbers are in
    /// `data`).
    pub fn line(&mut self, s: String) {
        println!("  {s}");
        self.rows.push(s);
    }

    /// Prints the rows under `title`, writes the JSON, and exits non-zero
    /// if a check failed.
    pub fn finish(self, title: &str, opts: &Opts) {
        let secs = self.started.elapsed().as_secs_f64();
        println!(
            "{title} ({} mode, {:.1} s)",
            if opts.quick { "quick" } else { "full" },
            secs
        );
        for r in &self.rows {
            println!("  {r}");
        }
        let figures: serde_json::Map<String, Value> = self
            .figures
            .iter()
            .map(|(k, f)| (k.clone(), f.to_json()))
            .collect();
        let mut machine = machine();
        machine["quick"] = json!(opts.quick);
        machine["seconds"] = json!(secs);
        let order: Vec<&String> = self.figures.iter().map(|(k, _)| k).collect();
        let out =
            json!({ "machine": machine, "figures": figures, "order": order, "data": self.data });
        std::fs::write(&opts.json, serde_json::to_string_pretty(&out).unwrap()).unwrap();
        println!("figures written to {}", opts.json);
        if self.failed {
            eprintln!("{title}: a check failed (see above)");
            std::process::exit(1);
        }
    }
}

/// The first line a command prints, if it runs.
fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    o.status.success().then(|| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    })
}

/// glibc's allocator settings every benchmark runs under.
const TUNABLES: &str = "glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456";

/// Runs this benchmark again under fixed allocator thresholds, unless it
/// already is, and exits with its status.
///
/// glibc moves its mmap threshold as large blocks are freed, and which
/// thread freed what first differs from run to run: in one run the
/// software NPU's working arrays come from the heap, in the next each job
/// maps and faults them in afresh. The MLP's native baseline measured
/// 1.24 ms in one full run and 2.11 ms in the next two while the engine's
/// own time stayed at 1.25-1.30 ms. Fixed thresholds (64 MiB; trimming
/// above 256 MiB) give every thread the same allocator in every run.
pub fn fixed_allocator() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.mmap_threshold")) {
        return;
    }
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let status = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", TUNABLES)
        .status()
        .expect("run the benchmark under fixed allocator settings");
    std::process::exit(status.code().unwrap_or(1));
}

/// What the run ran on and from: CPU, cores, kernel, commit, toolchain.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_owned())
    };
    // Uncommitted changes to anything but the results and the README
    // (which the full runs rewrite as they go).
    let dirty = output(
        "git",
        &[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ":/",
            ":(exclude,top)integration/benches/results",
            ":(exclude,top)README.md",
        ],
    )
    .is_some_and(|s| !s.is_empty());
    json!({
        "cpu_model": field("model name"),
        "cpu_mhz": field("cpu MHz"),
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpus_listed": cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
        "commit": output("git", &["rev-parse", "HEAD"]),
        "dirty": dirty,
        "rustc": output("rustc", &["--version"]),
        "date": output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "glibc_tunables": std::env::var("GLIBC_TUNABLES").ok(),
    })
}

/// Guest memory holding `w`'s buffers, one contiguous range each, filled
/// with its inputs.
pub fn buffers(w: &Workload) -> (GuestMem, Vec<Backing>) {
    let total: u64 = w.bos.iter().map(|b| b.size.next_multiple_of(4096)).sum();
    let mem = GuestMem::from_ranges(&[(vm_memory::GuestAddress(0), total as usize)]).unwrap();
    let stats = MemStats::default();
    let mut at = 0u64;
    let backings: Vec<Backing> = w
        .bos
        .iter()
        .map(|b| {
            let r = Backing::new(vec![(at, b.size as u32)]);
            at += b.size.next_multiple_of(4096);
            r
        })
        .collect();
    for (b, spec) in backings.iter().zip(&w.bos) {
        if !spec.init.is_empty() {
            b.resolve(&mem, &stats)
                .unwrap()
                .write(0, &spec.init)
                .unwrap();
        }
    }
    (mem, backings)
}

/// Runs `w` on the software NPU in this process, on this thread, with
/// no preemption points: the native baseline. Returns a closure timing
/// one run (seconds); the first call checks the result.
pub fn native(w: &Workload) -> impl FnMut() -> f64 + '_ {
    let (mem, backings) = buffers(w);
    let mut checked = false;
    move || {
        let stats = MemStats::default();
        let bos: Vec<_> = backings
            .iter()
            .map(|b| b.resolve(&mem, &stats).unwrap())
            .collect();
        let t = Instant::now();
        SimNpu::run_program(&w.program, &bos, Tile::WHOLE).unwrap();
        let s = t.elapsed().as_secs_f64();
        if !checked {
            let mut out = vec![0u8; w.output_len()];
            bos[w.output.0].read(w.output.1, &mut out).unwrap();
            w.check(&out).unwrap();
            checked = true;
        }
        s
    }
}

/// Median native time of `w` in ms.
pub fn native_ms(w: &Workload) -> f64 {
    let mut run = native(w);
    let t: Vec<f64> = (0..9).map(|_| run() * 1e3).collect();
    quantile(&t, 0.5)
}

/// An MLP whose job takes about `ms` natively on this machine
/// (calibrated in steps: time is not quite linear in the batch).
pub fn mlp_of(ms: f64, seed: u64) -> Workload {
    let mut batch = 64u32;
    for _ in 0..4 {
        let t = native_ms(&workloads::mlp(seed, batch, 256, 256, 64));
        let f = (ms / t).clamp(0.25, 4.0);
        batch = ((f64::from(batch) * f).round() as u32).clamp(1, 65536);
    }
    workloads::mlp(seed, batch, 256, 256, 64)
}
