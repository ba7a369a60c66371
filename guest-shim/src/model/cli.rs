//! `accel-run --model`: load a model, run it, print its top outputs and
//! the time per inference, optionally compare with a reference. Generic
//! over the device, so the tests run it on the harness.

use std::io::Write;
use std::time::Duration;

use super::device::Device;
use super::runner::Loaded;

/// `--model PATH [--input FILE.npy] [--expect FILE.npy] [--runs N] [DEVICE]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opts {
    pub model: String,
    pub input: Option<String>,
    pub expect: Option<String>,
    pub runs: usize,
    pub device: String,
}

impl Opts {
    pub fn parse(args: &[String]) -> Result<Opts, String> {
        let mut it = args.iter();
        let mut o = Opts {
            model: String::new(),
            input: None,
            expect: None,
            runs: 5,
            device: "/dev/accel/accel0".into(),
        };
        while let Some(a) = it.next() {
            let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
            match a.as_str() {
                "--model" => o.model = val()?,
                "--input" => o.input = Some(val()?),
                "--expect" => o.expect = Some(val()?),
                "--runs" => o.runs = val()?.parse().map_err(|e| format!("--runs: {e}"))?,
                s if !s.starts_with("--") => o.device = s.to_string(),
                s => return Err(format!("unknown option {s}")),
            }
        }
        if o.model.is_empty() {
            return Err("--model needs a path".into());
        }
        Ok(o)
    }
}

/// An f32 .npy file: dims and values.
pub fn read_npy(path: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let f = npyz::NpyFile::new(&bytes[..]).map_err(|e| format!("{path}: {e}"))?;
    let dims = f.shape().iter().map(|&d| d as usize).collect();
    let v = f
        .into_vec::<f32>()
        .map_err(|e| format!("{path}: not f32: {e}"))?;
    Ok((dims, v))
}

/// Largest absolute difference, and that over the reference's range (its
/// largest magnitude when the range is 0).
pub fn error(got: &[f32], want: &[f32]) -> (f32, f32) {
    if got.len() != want.len() {
        return (f32::INFINITY, f32::INFINITY);
    }
    let abs = got
        .iter()
        .zip(want)
        .map(|(a, b)| {
            if a.is_nan() || b.is_nan() {
                f32::INFINITY
            } else {
                (a - b).abs()
            }
        })
        .fold(0f32, f32::max);
    let hi = want.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lo = want.iter().copied().fold(f32::INFINITY, f32::min);
    let mag = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if hi > lo {
        hi - lo
    } else {
        mag.max(f32::MIN_POSITIVE)
    };
    (abs, abs / scale)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `opts` on `dev`, printing to `out`; false if `--expect` failed.
pub fn run<D: Device>(dev: &mut D, opts: &Opts, out: &mut dyn Write) -> Result<bool, String> {
    let w = |e: std::io::Error| e.to_string();
    let path = &opts.model;
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let x = opts.input.as_deref().map(read_npy).transpose()?;
    let dims = x.as_ref().map(|(d, _)| vec![d.clone()]);
    let m = Loaded::new(dev, &bytes, dims.as_deref()).map_err(|e| e.to_string())?;
    let c = &m.compiled;
    writeln!(
        out,
        "accel-run: {path}: {} SNPU ops in {} jobs, weights {} KiB, activations {} KiB",
        c.op_count(),
        c.segments.len(),
        c.weights.iter().map(Vec::len).sum::<usize>() / 1024,
        c.arena_bytes / 1024
    )
    .map_err(w)?;
    let input: Vec<f32> = match x {
        Some((_, v)) => v,
        None => {
            // A fixed pseudo-random input in [0, 1).
            let n: usize = c.inputs.first().map_or(0, |b| b.dims.iter().product());
            let mut s = 0x9e37_79b9_u32;
            (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    (s >> 8) as f32 / (1u32 << 24) as f32
                })
                .collect()
        }
    };
    let mut times = Vec::new();
    let mut outs = Vec::new();
    for _ in 0..opts.runs.max(1) {
        let (o, stats) = m.run(dev, &[&input]).map_err(|e| e.to_string())?;
        times.push(stats.wall);
        outs = o;
    }
    times.sort();
    let median = times[times.len() / 2];
    let first = outs.first().ok_or("the model has no output")?;
    let mut top: Vec<(usize, f32)> = first.values.iter().copied().enumerate().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    writeln!(
        out,
        "accel-run: output {} {:?}, top 5:",
        first.name, first.dims
    )
    .map_err(w)?;
    for (i, v) in top.iter().take(5) {
        writeln!(out, "  [{i}] {v:.6}").map_err(w)?;
    }
    writeln!(
        out,
        "accel-run: {:.2} ms per inference (median of {}, range {:.2}-{:.2} ms)",
        ms(median),
        times.len(),
        ms(times[0]),
        ms(times[times.len() - 1])
    )
    .map_err(w)?;
    let mut ok = true;
    if let Some(e) = &opts.expect {
        let (_, want) = read_npy(e)?;
        let (abs, rel) = error(&first.values, &want);
        ok = rel <= 1e-4;
        writeln!(
            out,
            "accel-run: against {e}: max abs error {abs:e}, {rel:e} of its range: {}",
            if ok { "PASS" } else { "FAIL" }
        )
        .map_err(w)?;
    }
    m.unload(dev).map_err(|e| e.to_string())?;
    Ok(ok)
}
