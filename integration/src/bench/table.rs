//! The markdown table of several runs' JSON, as the README quotes it:
//! each figure's median and IQR in every run, whether the runs agree,
//! its target and what it is measured against.

use serde_json::Value;

use super::stats::Figure;

/// The resolution below which two figures count as equal, as a fraction
/// of the median: figures that hardly spread at all (instruction counts,
/// a Jain index at 1.0000) would otherwise disagree by their last digit.
pub const RESOLUTION: f64 = 0.005;

/// Whether the runs' medians agree: each median lies inside every other
/// run's interquartile range, widened by [`RESOLUTION`].
pub fn agree(figs: &[Figure]) -> bool {
    figs.iter().all(|a| {
        figs.iter().all(|b| {
            let e = RESOLUTION * b.value.median.abs();
            a.value.median >= b.value.q1 - e && a.value.median <= b.value.q3 + e
        })
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
    let keys: Vec<String> = match runs[0]["order"].as_array() {
        Some(o) => o
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        None => runs[0]["figures"]
            .as_object()
            .ok_or_else(|| format!("{}: no figures", files[0]))?
            .keys()
            .cloned()
            .collect(),
    };
    for key in &keys {
        let figs: Vec<Figure> = runs
            .iter()
            .filter_map(|r| Figure::from_json(&r["figures"][key.as_str()]))
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
    out += &bytes(&runs);
    Ok(out)
}

/// The bytes copied to or from guest memory per operation, by path (the
/// `bytes.*` data), from the first run, noting any run that differs.
fn bytes(runs: &[Value]) -> String {
    let Some(data) = runs[0]["data"].as_object() else {
        return String::new();
    };
    let ops: Vec<(&str, &Value)> = data
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("bytes.")?, v)))
        .collect();
    let Some((_, first)) = ops.first() else {
        return String::new();
    };
    let paths: Vec<&String> = first
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    let mut out = String::from("\n| bytes per operation |");
    for p in &paths {
        out += &format!(" {} |", p.replace('_', " "));
    }
    out += " same in every run |\n|---|";
    out += &"---|".repeat(paths.len() + 1);
    out += "\n";
    for (op, v) in ops {
        out += &format!("| {op} |");
        for p in &paths {
            out += &format!(
                " {} |",
                v[p.as_str()]
                    .as_f64()
                    .map_or("?".into(), |n| format!("{n}"))
            );
        }
        let same = runs.iter().all(|r| &r["data"][format!("bytes.{op}")] == v);
        out += &format!(" {} |\n", if same { "yes" } else { "**no**" });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::Unit;

    fn fig(v: &[f64]) -> Figure {
        Figure::new("x", Unit::Times, v)
    }

    #[test]
    fn runs_agree_when_each_median_is_inside_the_others_iqr() {
        let a = fig(&[1.0, 1.1, 1.2, 1.3, 1.4]);
        let b = fig(&[1.1, 1.2, 1.25, 1.3, 1.5]);
        assert!(agree(&[a.clone(), b.clone()]));
        let far = fig(&[1.5, 1.6, 1.7, 1.8, 1.9]);
        assert!(!agree(&[a, b, far]));
        // Figures that do not spread agree within the resolution.
        assert!(agree(&[fig(&[1000.0, 1000.0]), fig(&[1004.0, 1004.0])]));
        assert!(!agree(&[fig(&[1000.0, 1000.0]), fig(&[1006.0, 1006.0])]));
    }
}
