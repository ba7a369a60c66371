//! Paired, interleaved measurement and what is reported of it: every side
//! of a comparison runs once per round, back to back, the order reversed
//! every other round (A B, B A, A B, …), and a ratio is the median of the
//! per-round ratios with its interquartile range. Machine speed that
//! drifts between rounds moves both sides of a round together, so it
//! widens the spread of the per-round ratios instead of biasing them.

use serde_json::{json, Value};

/// A figure is "noisy" when its interquartile range is wider than this
/// fraction of its median.
pub const NOISY_IQR: f64 = 0.10;

/// The `p` quantile (0 to 1) of `v`, interpolated between the two nearest
/// ranks.
pub fn quantile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let at = (s.len() - 1) as f64 * p.clamp(0.0, 1.0);
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (at - lo as f64)
}

/// Median and quartiles of per-round values.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub rounds: Vec<f64>,
}

impl Summary {
    pub fn of(v: &[f64]) -> Summary {
        Summary {
            median: quantile(v, 0.5),
            q1: quantile(v, 0.25),
            q3: quantile(v, 0.75),
            rounds: v.to_vec(),
        }
    }

    /// The interquartile range as a fraction of the median.
    pub fn rel_iqr(&self) -> f64 {
        (self.q3 - self.q1) / self.median.abs()
    }

    pub fn noisy(&self) -> bool {
        // A NaN spread (no rounds) counts as noisy.
        self.rel_iqr().is_nan() || self.rel_iqr() > NOISY_IQR
    }

    pub fn to_json(&self) -> Value {
        json!({ "median": self.median, "q1": self.q1, "q3": self.q3, "rounds": self.rounds })
    }

    pub fn from_json(v: &Value) -> Option<Summary> {
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        Some(Summary {
            median: f("median")?,
            q1: f("q1")?,
            q3: f("q3")?,
            rounds: v
                .get("rounds")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default(),
        })
    }
}

/// Runs every side (`run(0)`, `run(1)`, …) once per round for `rounds`
/// rounds, back to back, in order in even rounds and in reverse order in
/// odd ones; returns each side's results, round by round.
pub fn interleaved<T>(rounds: usize, sides: usize, mut run: impl FnMut(usize) -> T) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..sides).map(|_| Vec::with_capacity(rounds)).collect();
    for r in 0..rounds {
        let mut got: Vec<Option<T>> = (0..sides).map(|_| None).collect();
        for k in 0..sides {
            let i = if r % 2 == 0 { k } else { sides - 1 - k };
            got[i] = Some(run(i));
        }
        for (o, g) in out.iter_mut().zip(got) {
            o.extend(g);
        }
    }
    out
}

/// Per-round ratios `a[i] / b[i]`.
pub fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// The units quantities are reported in (read back from JSON by name).
pub const UNITS: &[&str] = &["µs", "ms", "jobs/s", "GB/s", "instructions", "B"];

/// How a figure is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A ratio, shown as `1.08×`.
    Times,
    /// A ratio, shown as a percentage.
    Percent,
    /// A number with no unit (an index).
    Plain,
    /// A quantity, shown with this unit.
    Of(&'static str),
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Times => "x",
            Unit::Percent => "%",
            Unit::Plain => "",
            Unit::Of(u) => u,
        }
    }

    fn from_name(s: &str) -> Unit {
        match s {
            "x" => Unit::Times,
            "%" => Unit::Percent,
            "" => Unit::Plain,
            other => Unit::Of(UNITS.iter().find(|u| **u == other).copied().unwrap_or("?")),
        }
    }

    /// `v` formatted in this unit, with about four significant digits.
    pub fn fmt(self, v: f64) -> String {
        match self {
            Unit::Times => format!("{}×", sig(v)),
            Unit::Percent => format!("{}%", sig(v * 100.0)),
            Unit::Plain => sig(v),
            Unit::Of(u) => format!("{} {u}", sig(v)),
        }
    }

    /// `v` formatted without its unit.
    pub fn bare(self, v: f64) -> String {
        match self {
            Unit::Percent => sig(v * 100.0),
            _ => sig(v),
        }
    }
}

/// About four significant digits, no exponent.
pub fn sig(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    let decimals = if a >= 1000.0 {
        0
    } else if a >= 100.0 {
        1
    } else if a >= 10.0 {
        2
    } else if a >= 1.0 {
        3
    } else {
        4
    };
    format!("{v:.decimals$}")
}

/// `v` with at most four significant digits and no trailing zeros: for
/// targets, which are set, not measured.
pub fn short(v: f64) -> String {
    let s = sig(v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

impl Unit {
    /// A target value in this unit.
    fn target(self, v: f64) -> String {
        match self {
            Unit::Times => format!("{}×", short(v)),
            Unit::Percent => format!("{}%", short(v * 100.0)),
            Unit::Plain => short(v),
            Unit::Of(u) => format!("{} {u}", short(v)),
        }
    }
}

/// What a figure should be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
    Within(f64, f64),
}

impl Target {
    pub fn met(self, v: f64) -> bool {
        match self {
            Target::AtLeast(t) => v >= t,
            Target::AtMost(t) => v <= t,
            Target::Within(lo, hi) => v >= lo && v <= hi,
        }
    }

    pub fn show(self, unit: Unit) -> String {
        match self {
            Target::AtLeast(t) => format!("≥ {}", unit.target(t)),
            Target::AtMost(t) => format!("≤ {}", unit.target(t)),
            Target::Within(lo, hi) => format!("{} to {}", unit.target(lo), unit.target(hi)),
        }
    }

    fn to_json(self) -> Value {
        match self {
            Target::AtLeast(t) => json!({ "min": t }),
            Target::AtMost(t) => json!({ "max": t }),
            Target::Within(lo, hi) => json!({ "min": lo, "max": hi }),
        }
    }

    fn from_json(v: &Value) -> Option<Target> {
        let (min, max) = (
            v.get("min").and_then(Value::as_f64),
            v.get("max").and_then(Value::as_f64),
        );
        match (min, max) {
            (Some(lo), Some(hi)) => Some(Target::Within(lo, hi)),
            (Some(lo), None) => Some(Target::AtLeast(lo)),
            (None, Some(hi)) => Some(Target::AtMost(hi)),
            (None, None) => None,
        }
    }
}

/// One reported figure: its per-round values summarised, what it is
/// compared with, and the sides it was computed from.
#[derive(Debug, Clone)]
pub struct Figure {
    pub what: String,
    pub unit: Unit,
    pub value: Summary,
    pub target: Option<Target>,
    /// What limits it: the physical floor it is measured against.
    pub floor: String,
    /// The measurements the figure was computed from, by name.
    pub sides: Vec<(String, Unit, Summary)>,
}

impl Figure {
    pub fn new(what: impl Into<String>, unit: Unit, per_round: &[f64]) -> Figure {
        Figure {
            what: what.into(),
            unit,
            value: Summary::of(per_round),
            target: None,
            floor: String::new(),
            sides: Vec::new(),
        }
    }

    pub fn target(mut self, t: Target) -> Figure {
        self.target = Some(t);
        self
    }

    pub fn floor(mut self, f: impl Into<String>) -> Figure {
        self.floor = f.into();
        self
    }

    pub fn side(mut self, name: impl Into<String>, unit: Unit, per_round: &[f64]) -> Figure {
        self.sides.push((name.into(), unit, Summary::of(per_round)));
        self
    }

    /// Median and IQR, e.g. `1.083× (IQR 1.062–1.101)`, marked noisy
    /// when it is.
    pub fn shown(&self) -> String {
        let v = &self.value;
        let noisy = if v.noisy() { ", noisy" } else { "" };
        if v.rounds.len() < 2 {
            return self.unit.fmt(v.median);
        }
        format!(
            "{} (IQR {}–{}{noisy})",
            self.unit.fmt(v.median),
            self.unit.bare(v.q1),
            self.unit.bare(v.q3)
        )
    }

    pub fn verdict(&self) -> String {
        match self.target {
            Some(t) => format!(
                "target {} {}",
                t.show(self.unit),
                if t.met(self.value.median) {
                    "✓"
                } else {
                    "✗"
                }
            ),
            None => String::new(),
        }
    }

    /// The printed row.
    pub fn row(&self) -> String {
        let sides: Vec<String> = self
            .sides
            .iter()
            .map(|(n, u, s)| format!("{n} {}", u.fmt(s.median)))
            .collect();
        format!(
            "{:<58} {} {} | {}",
            self.what,
            self.shown(),
            self.verdict(),
            sides.join(", ")
        )
    }

    pub fn to_json(&self) -> Value {
        let sides: serde_json::Map<String, Value> = self
            .sides
            .iter()
            .map(|(n, u, s)| {
                let mut j = s.to_json();
                j["unit"] = json!(u.name());
                (n.clone(), j)
            })
            .collect();
        json!({
            "what": self.what,
            "unit": self.unit.name(),
            "value": self.value.to_json(),
            "noisy": self.value.noisy(),
            "noisy_bound_rel_iqr": NOISY_IQR,
            "target": self.target.map(Target::to_json),
            "meets_target": self.target.map(|t| t.met(self.value.median)),
            "floor": self.floor,
            "sides": sides,
        })
    }

    pub fn from_json(v: &Value) -> Option<Figure> {
        Some(Figure {
            what: v.get("what")?.as_str()?.to_owned(),
            unit: Unit::from_name(v.get("unit")?.as_str()?),
            value: Summary::from_json(v.get("value")?)?,
            target: v.get("target").and_then(Target::from_json),
            floor: v
                .get("floor")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            sides: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate() {
        let v: Vec<f64> = (1..=15).map(f64::from).collect();
        let s = Summary::of(&v);
        assert_eq!((s.q1, s.median, s.q3), (4.5, 8.0, 11.5));
        assert_eq!(quantile(&[2.0, 1.0], 0.5), 1.5);
    }

    #[test]
    fn rounds_alternate_their_order() {
        let mut log = String::new();
        let got = interleaved(4, 2, |i| {
            log.push(if i == 0 { 'a' } else { 'b' });
            i
        });
        assert_eq!(got, [[0; 4], [1; 4]]);
        assert_eq!(log, "abbaabba");
    }

    #[test]
    fn a_wide_spread_is_noisy() {
        assert!(!Summary::of(&[1.0, 1.01, 1.02, 1.03]).noisy());
        assert!(Summary::of(&[1.0, 1.3, 1.6, 1.9]).noisy());
    }
}
