//! The markdown table of several runs' JSON, as the README quotes it:
//! each figure's median and IQR in every run, whether the runs agree,
//! its target and what it is measured against.

use serde_json::Value;

use super::stats::{Figure, Unit};

/// Instruction counts agree when they are this close (they are not
/// spread over rounds of time measurements but repeated whole).
const COUNT_AGREEMENT: f64 = 0.01;

/// Whether the runs' medians agree: each median lies inside every other
/// run's interquartile range (counts: within [`COUNT_AGREEMENT`]).
pub fn agree(figs: &[Figure]) -> bool {
    if figs.iter().any(|f| f.unit == Unit::Of("instructions")) {
        let m: Vec<f64> = figs.iter().map(|f| f.value.median).collect();
        let lo = m.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        return hi / lo - 1.0 <= COUNT_AGREEMENT;
    }
    figs.iter().all(|a| {
        figs.iter()
            .all(|b| a.value.median >= b.value.q1 && a.value.median <= b.value.q3)
    })
}

fn cell(f: &Figure) -> String {
    let v = &f.value;
    if v.rounds.len() < 2 {
        return f.unit.fmt(v.median);
    }
    let noisy = if v.noisy() { " noisy" } else { "" };
    format!(
        "{} ({}–{}){noisy}",
        f.unit.fmt(v.median),
        f.unit.bare(v.q1),
        f.unit.bare(v.q3)
    )
}

/// The table of `files` (each a benchmark's `--json` output), figures in
/// the order of the first file.
pub fn render(files: &[String]) -> Result<String, String> {
    let runs: Vec<Value> = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .map_err(|e| format!("{f}: {e}"))
                .and_then(|s| serde_json::from_str(&s).map_err(|e| format!("{f}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let mut out = String::new();
    for (f, r) in files.iter().zip(&runs) {
        let m = &r["machine"];
        let s = |k: &str| m[k].as_str().unwrap_or("?").to_owned();
        let commit: String = s("commit").chars().take(10).collect();
        out += &format!(
            "- `{}`: {}, commit {commit}{}, {} × {} cores, kernel {}, {:.0} s\n",
            std::path::Path::new(f)
                .file_name()
                .map_or(f.clone(), |n| n.to_string_lossy().into_owned()),
            s("date"),
            if m["dirty"].as_bool() == Some(true) {
                " (with uncommitted changes)"
            } else {
                ""
            },
            s("cpu_model"),
            m["cores"],
            s("kernel"),
            m["seconds"].as_f64().unwrap_or(0.0),
        );
    }
    out += "\n| figure |";
    for i in 1..=runs.len() {
        out += &format!(" run {i} |");
    }
    out += " runs agree | target | measured against |\n|---|";
    out += &"---|".repeat(runs.len() + 3);
    out += "\n";
    let Some(keys) = runs[0]["figures"].as_object() else {
        return Err(format!("{}: no figures", files[0]));
    };
    for key in keys.keys() {
        let figs: Vec<Figure> = runs
            .iter()
            .filter_map(|r| Figure::from_json(&r["figures"][key]))
            .collect();
        if figs.len() != runs.len() {
            continue;
        }
        let f0 = &figs[0];
        out += &format!("| {} |", f0.what);
        for f in &figs {
            out += &format!(" {} |", cell(f));
        }
        let target = f0.target.map_or(String::new(), |t| {
            let met = figs.iter().filter(|f| t.met(f.value.median)).count();
            format!("{} ({met}/{} ✓)", t.show(f0.unit), figs.len())
        });
        out += &format!(
            " {} | {target} | {} |\n",
            if agree(&figs) { "yes" } else { "**no**" },
            f0.floor
        );
    }
    Ok(out)
}
