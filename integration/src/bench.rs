//! What the benchmark programs share: their options, percentiles, the
//! report they print and write, and buffers for running a workload
//! in-process as the native baseline.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};
use vhost_device_accel::memory::{Backing, GuestMem, MemStats};
use virtio_accel_guest::workloads::Workload;

/// `[--quick] [--json PATH] [--only NAME]`.
pub struct Opts {
    /// Each part for a fraction of a second: keeps the program working.
    pub quick: bool,
    /// Where the figures go as JSON.
    pub json: String,
    /// Run only the parts whose name contains this.
    pub only: Option<String>,
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
        Opts {
            quick: args.iter().any(|a| a == "--quick"),
            json: value("--json").unwrap_or_else(|| {
                format!("{}/../target/bench-{name}.json", env!("CARGO_MANIFEST_DIR"))
            }),
            only: value("--only"),
        }
    }

    pub fn runs(&self, part: &str) -> bool {
        self.only.as_ref().is_none_or(|o| part.contains(o.as_str()))
    }
}

/// Figures as they are measured: the rows printed, the JSON written.
pub struct Report {
    pub out: BTreeMap<String, Value>,
    pub rows: Vec<String>,
    started: Instant,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            out: BTreeMap::new(),
            rows: Vec::new(),
            started: Instant::now(),
        }
    }
}

impl Report {
    /// Prints the rows under `title` and writes the JSON.
    pub fn finish(mut self, title: &str, opts: &Opts) {
        println!(
            "{title} ({} mode, {:.1} s)",
            if opts.quick { "quick" } else { "full" },
            self.started.elapsed().as_secs_f64()
        );
        for r in &self.rows {
            println!("  {r}");
        }
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        self.out.insert(
            "machine".into(),
            json!({ "cpus": cpus, "quick": opts.quick }),
        );
        std::fs::write(&opts.json, serde_json::to_string_pretty(&self.out).unwrap()).unwrap();
        println!("figures written to {}", opts.json);
    }
}

/// The `p` quantile (0 to 1) of `v`, nearest rank.
pub fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

/// Median, smallest and largest of per-round figures.
pub fn spread(v: &[f64]) -> (f64, f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (pct(v, 0.5), lo, hi)
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
