//! Execution of validated SNPU programs, one bounded piece of work at a
//! time.
//!
//! Each op runs in phases: its inputs are gathered from guest buffers into
//! dense working arrays (the NPU's local memory), conv2d builds its patch
//! matrix, the op computes (GEMM through matrixmultiply, tiled), and the
//! output is written back through a small staging buffer. Every step of a
//! phase does at most one [`Tile`] of work and the caller decides between
//! steps whether to go on, so a job stops within one tile when it is
//! preempted or aborted and resumes where it stopped. Every access was
//! bounds-checked, and the working memory bounded
//! ([`OpDesc::work_bytes`]), before the job started; working arrays are
//! reserved fallibly.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, ArrayView2, ArrayViewMut2};
use virtio_accel_protocol::snpu::{DType, OpDesc, Program, Quant, TensorDesc};

use super::io::{self, collapsed, reserve, Conv};
use super::ExecError;
use crate::memory::BoMem;

/// The most work one step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    /// Multiply-accumulates of one GEMM tile.
    pub macs: u64,
    /// Elements one gather, store or elementwise step moves.
    pub elems: u64,
}

impl Tile {
    /// About a quarter of a millisecond of one core of this project's
    /// reference machine (see the README's benchmark).
    pub const SLICED: Tile = Tile {
        macs: 1 << 23,
        elems: 1 << 16,
    };
    /// Every phase in one step: the op runs whole (for comparison).
    pub const WHOLE: Tile = Tile {
        macs: u64::MAX,
        elems: u64::MAX,
    };
}

/// Where a job stands after [`Exec::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Done { ops: u64 },
    Paused,
}

/// A job's program and how far it got.
pub struct Exec {
    ops: Vec<OpDesc>,
    next: usize,
    cur: Option<OpRun>,
    tile: Tile,
    staging: Vec<u8>,
}

impl Exec {
    pub fn new(program: Program, tile: Tile) -> Exec {
        Exec {
            ops: program.ops,
            next: 0,
            cur: None,
            tile,
            staging: Vec::new(),
        }
    }

    /// Runs steps until the program ends or `go` (asked after every step)
    /// says stop. At least one step runs, so every call makes progress.
    pub fn run(
        &mut self,
        bos: &[BoMem<'_>],
        go: &mut dyn FnMut() -> bool,
    ) -> Result<Progress, ExecError> {
        if self.staging.is_empty() {
            self.staging = io::staging()?;
        }
        loop {
            let run = match &mut self.cur {
                Some(r) => r,
                None => {
                    let Some(op) = self.ops.get(self.next) else {
                        return Ok(Progress::Done {
                            ops: self.ops.len() as u64,
                        });
                    };
                    self.cur.insert(OpRun::new(op.clone()))
                }
            };
            if run.step(bos, &self.tile, &mut self.staging)? {
                self.cur = None;
                self.next += 1;
                if self.next == self.ops.len() {
                    return Ok(Progress::Done {
                        ops: self.ops.len() as u64,
                    });
                }
            }
            if !go() {
                return Ok(Progress::Paused);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Gathering input `i`.
    Gather(usize),
    /// Zeroing the result arrays, then going on to the phase given.
    Zero(Next),
    /// Conv2d's patch matrix.
    Prepare,
    Compute,
    Store,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Prepare,
    Compute,
}

/// One op in progress.
struct OpRun {
    op: OpDesc,
    inputs: Vec<(TensorDesc, Conv)>,
    arrays: Vec<Vec<f32>>,
    phase: Phase,
    /// Elements, rows or tiles of the current phase done.
    pos: u64,
    gemm: Option<Gemm>,
    /// The f32 result (ADD/MUL, MATMUL, CONV2D; int8 MATMUL's block).
    out: Vec<f32>,
    /// int8 MATMUL's exact accumulators.
    acc: Vec<i32>,
    /// CONV2D's patch matrix: one row per output pixel.
    patches: Vec<f32>,
    /// Lengths `out`, `acc` and `patches` are zeroed to.
    lens: [usize; 3],
}

fn conv_of(t: &TensorDesc) -> Conv {
    match t.dtype {
        DType::F32 => Conv::F32,
        _ => Conv::I8,
    }
}

fn failed(what: &str) -> ExecError {
    ExecError::Failed(format!("{what} outside its array"))
}

fn shape_err<E: std::fmt::Display>(e: E) -> ExecError {
    ExecError::Failed(e.to_string())
}

/// Elements left of `total` from `pos`, at most `max`.
fn chunk(pos: u64, total: u64, max: u64) -> u64 {
    total.saturating_sub(pos).min(max.max(1))
}

fn range(pos: u64, n: u64) -> std::ops::Range<usize> {
    pos as usize..(pos + n) as usize
}

impl OpRun {
    fn new(op: OpDesc) -> OpRun {
        let inputs = match &op {
            OpDesc::Nop | OpDesc::Copy { .. } => vec![],
            OpDesc::Relu { input, .. } => vec![(*input, conv_of(input))],
            OpDesc::Softmax { input, .. } => vec![(*input, Conv::F32)],
            // Broadcast inputs are gathered collapsed.
            OpDesc::Add { a, b, .. } | OpDesc::Mul { a, b, .. } => {
                vec![(collapsed(a), Conv::F32), (collapsed(b), Conv::F32)]
            }
            OpDesc::MatMul { a, b, quant, .. } => match quant {
                None => vec![(*a, Conv::F32), (*b, Conv::F32)],
                Some(q) => vec![
                    (*a, Conv::I8Centered(q.a_zero)),
                    (*b, Conv::I8Centered(q.b_zero)),
                ],
            },
            OpDesc::Conv2d {
                input,
                filter,
                bias,
                ..
            } => {
                let mut v = vec![(*input, Conv::F32), (*filter, Conv::F32)];
                v.extend(bias.map(|b| (b, Conv::F32)));
                v
            }
        };
        let phase = match op {
            OpDesc::Copy { .. } | OpDesc::Nop => Phase::Compute,
            _ => Phase::Gather(0),
        };
        OpRun {
            op,
            inputs,
            arrays: Vec::new(),
            phase,
            pos: 0,
            gemm: None,
            out: Vec::new(),
            acc: Vec::new(),
            patches: Vec::new(),
            lens: [0; 3],
        }
    }

    fn next_phase(&mut self, p: Phase) {
        self.phase = p;
        self.pos = 0;
    }

    /// One step of at most one tile; true once the op is complete.
    fn step(
        &mut self,
        bos: &[BoMem<'_>],
        tile: &Tile,
        staging: &mut [u8],
    ) -> Result<bool, ExecError> {
        match self.phase {
            Phase::Gather(i) => {
                let Some(&(t, conv)) = self.inputs.get(i) else {
                    self.start_compute(tile)?;
                    return Ok(false);
                };
                let total = t.elems();
                if self.pos == 0 {
                    self.arrays.push(reserve(total)?);
                }
                let n = chunk(self.pos, total, tile.elems);
                let a = self.arrays.get_mut(i).ok_or_else(|| failed("gather"))?;
                // Within the reserved room: no reallocation.
                a.resize((self.pos + n) as usize, 0.0);
                let dst = a
                    .get_mut(range(self.pos, n))
                    .ok_or_else(|| failed("gather"))?;
                io::gather(bos, &t, conv, self.pos, dst, staging)?;
                self.pos += n;
                if self.pos == total {
                    self.next_phase(Phase::Gather(i + 1));
                }
                Ok(false)
            }
            Phase::Zero(next) => {
                let max = usize::try_from(tile.elems).unwrap_or(usize::MAX);
                let [lo, la, lp] = self.lens;
                let (v, len): (&mut dyn Grow, usize) = if self.patches.len() < lp {
                    (&mut self.patches, lp)
                } else if self.out.len() < lo {
                    (&mut self.out, lo)
                } else if self.acc.len() < la {
                    (&mut self.acc, la)
                } else {
                    self.next_phase(match next {
                        Next::Prepare => Phase::Prepare,
                        Next::Compute => Phase::Compute,
                    });
                    return Ok(false);
                };
                v.grow_to(len.min(v.filled().saturating_add(max)));
                Ok(false)
            }
            Phase::Prepare => {
                self.im2col(tile)?;
                Ok(false)
            }
            Phase::Compute => self.compute(bos, tile, staging),
            Phase::Store => self.store(bos, tile, staging),
        }
    }

    /// Inputs are in: reserve the result arrays (zeroed in the next
    /// phase, a tile at a time) and plan the tiles.
    fn start_compute(&mut self, tile: &Tile) -> Result<(), ExecError> {
        let mut next = Next::Compute;
        let (mut lo, mut la, mut lp) = (0u64, 0u64, 0u64);
        match self.op {
            OpDesc::Add { out, .. } | OpDesc::Mul { out, .. } => lo = out.elems(),
            OpDesc::MatMul { a, b, quant, .. } => {
                let (m, k, n) = (a.dims[0] as usize, a.dims[1] as usize, b.dims[1] as usize);
                lo = (m as u64).saturating_mul(n as u64);
                if quant.is_some() {
                    la = lo;
                }
                self.gemm = Some(Gemm::plan(m, k, n, tile, quant));
            }
            OpDesc::Conv2d { filter, out, .. } => {
                let (rows, cols) = conv_rows_cols(&filter, &out);
                lp = (rows as u64).saturating_mul(cols as u64);
                lo = out.elems();
                next = Next::Prepare;
            }
            _ => {}
        }
        self.patches = reserve(lp)?;
        self.out = reserve(lo)?;
        self.acc = reserve(la)?;
        let us = |v: u64| usize::try_from(v).map_err(|_| ExecError::NoMemory);
        self.lens = [us(lo)?, us(la)?, us(lp)?];
        self.next_phase(Phase::Zero(next));
        Ok(())
    }

    /// Conv2d's im2col, some rows at a time: one row per output pixel,
    /// KH·KW·C columns, zero padding.
    fn im2col(&mut self, tile: &Tile) -> Result<(), ExecError> {
        let OpDesc::Conv2d {
            input,
            filter,
            out,
            stride,
            pad,
            ..
        } = self.op
        else {
            return Err(ExecError::Failed("im2col of another op".into()));
        };
        let [_, h, w, c] = input.dims.map(|d| d as usize);
        let [kh, kw, _, oc] = filter.dims.map(|d| d as usize);
        let [_, oh, ow, _] = out.dims.map(|d| d as usize);
        let (sh, sw) = (stride[0] as usize, stride[1] as usize);
        let (pt, pl) = (pad[0] as usize, pad[1] as usize);
        let (rows, cols) = conv_rows_cols(&filter, &out);
        let x = self.arrays.first().ok_or_else(|| failed("conv2d input"))?;
        let n = chunk(self.pos, rows as u64, tile.elems / cols.max(1) as u64);
        for r in range(self.pos, n) {
            let (b, oy, ox) = (r / (oh * ow), (r / ow) % oh, r % ow);
            let base = r * cols;
            for ky in 0..kh {
                let iy = (oy * sh + ky).wrapping_sub(pt);
                if iy >= h {
                    continue;
                }
                for kx in 0..kw {
                    let ix = (ox * sw + kx).wrapping_sub(pl);
                    if ix >= w {
                        continue;
                    }
                    let s = ((b * h + iy) * w + ix) * c;
                    let d = base + (ky * kw + kx) * c;
                    let src = x.get(s..s + c).ok_or_else(|| failed("conv2d input"))?;
                    self.patches
                        .get_mut(d..d + c)
                        .ok_or_else(|| failed("conv2d patch"))?
                        .copy_from_slice(src);
                }
            }
        }
        self.pos += n;
        if self.pos == rows as u64 {
            // The input is in the patches now.
            if let Some(x) = self.arrays.first_mut() {
                *x = Vec::new();
            }
            self.gemm = Some(Gemm::plan(rows, cols, oc, tile, None));
            self.next_phase(Phase::Compute);
        }
        Ok(())
    }

    fn compute(
        &mut self,
        bos: &[BoMem<'_>],
        tile: &Tile,
        staging: &mut [u8],
    ) -> Result<bool, ExecError> {
        match self.op {
            OpDesc::Nop => return Ok(true),
            OpDesc::Copy { src, dst } => {
                let total = src.elems();
                let n = chunk(self.pos, total, tile.elems);
                io::copy(bos, &src, &dst, self.pos, n, staging)?;
                self.pos += n;
                return Ok(self.pos == total);
            }
            OpDesc::Relu { input, .. } => {
                let n = chunk(self.pos, input.elems(), tile.elems);
                let v = self.arrays.first_mut().ok_or_else(|| failed("relu"))?;
                let part = v
                    .get_mut(range(self.pos, n))
                    .ok_or_else(|| failed("relu"))?;
                part.iter_mut().for_each(|x| *x = x.max(0.0));
                self.pos += n;
                if self.pos == input.elems() {
                    self.next_phase(Phase::Store);
                }
            }
            OpDesc::Softmax { input, .. } => {
                let row = input.dims().last().map_or(1, |&d| u64::from(d));
                let rows = input.elems() / row;
                let n = chunk(self.pos, rows, tile.elems / row);
                let v = self.arrays.first_mut().ok_or_else(|| failed("softmax"))?;
                let part = v
                    .get_mut(range(self.pos * row, n * row))
                    .ok_or_else(|| failed("softmax"))?;
                for r in part.chunks_mut(row as usize) {
                    let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for x in r.iter_mut() {
                        *x = (*x - max).exp();
                        sum += *x;
                    }
                    for x in r.iter_mut() {
                        *x /= sum;
                    }
                }
                self.pos += n;
                if self.pos == rows {
                    self.next_phase(Phase::Store);
                }
            }
            OpDesc::Add { a, b, out } => self.binary(&a, &b, &out, tile, |x, y| x + y)?,
            OpDesc::Mul { a, b, out } => self.binary(&a, &b, &out, tile, |x, y| x * y)?,
            OpDesc::MatMul { .. } | OpDesc::Conv2d { .. } => {
                let gemm = self.gemm.as_mut().ok_or_else(|| failed("gemm"))?;
                let a = match self.op {
                    OpDesc::Conv2d { .. } => &self.patches,
                    _ => self.arrays.first().ok_or_else(|| failed("gemm"))?,
                };
                let b = self.arrays.get(1).ok_or_else(|| failed("gemm"))?;
                if gemm.step(a, b, &mut self.out, &mut self.acc)? {
                    self.next_phase(Phase::Store);
                }
            }
        }
        Ok(false)
    }

    fn binary(
        &mut self,
        a: &TensorDesc,
        b: &TensorDesc,
        out: &TensorDesc,
        tile: &Tile,
        f: impl Fn(f32, f32) -> f32,
    ) -> Result<(), ExecError> {
        let total = out.elems();
        let n = chunk(self.pos, total, tile.elems);
        let (va, vb) = match self.arrays.as_slice() {
            [va, vb] => (va, vb),
            _ => return Err(failed("add/mul input")),
        };
        let res = self
            .out
            .get_mut(range(self.pos, n))
            .ok_or_else(|| failed("add/mul result"))?;
        if va.len() as u64 == total && vb.len() as u64 == total {
            let at = range(self.pos, n);
            let (xa, xb) = (
                va.get(at.clone()).ok_or_else(|| failed("add/mul input"))?,
                vb.get(at).ok_or_else(|| failed("add/mul input"))?,
            );
            for ((r, &x), &y) in res.iter_mut().zip(xa).zip(xb) {
                *r = f(x, y);
            }
        } else {
            let (sa, sb) = (broadcast_strides(a, out), broadcast_strides(b, out));
            let r = out.rank;
            // The output index of the chunk's first element.
            let mut idx = [0usize; 4];
            let mut rem = self.pos as usize;
            for k in (0..r).rev() {
                let d = out.dims[k] as usize;
                idx[k] = rem % d;
                rem /= d;
            }
            for slot in res.iter_mut() {
                let (ia, ib) = (0..r).fold((0, 0), |(ia, ib), k| {
                    (ia + idx[k] * sa[k], ib + idx[k] * sb[k])
                });
                *slot = f(
                    *va.get(ia).ok_or_else(|| failed("broadcast index"))?,
                    *vb.get(ib).ok_or_else(|| failed("broadcast index"))?,
                );
                for k in (0..r).rev() {
                    idx[k] += 1;
                    if idx[k] < out.dims[k] as usize {
                        break;
                    }
                    idx[k] = 0;
                }
            }
        }
        self.pos += n;
        if self.pos == total {
            self.arrays.clear();
            self.next_phase(Phase::Store);
        }
        Ok(())
    }

    fn store(
        &mut self,
        bos: &[BoMem<'_>],
        tile: &Tile,
        staging: &mut [u8],
    ) -> Result<bool, ExecError> {
        let Some(out) = self.op.tensors().1.copied() else {
            return Ok(true);
        };
        let total = out.elems();
        let n = chunk(self.pos, total, tile.elems);
        let at = range(self.pos, n);
        let f32_bytes = |x: f32, b: &mut [u8]| b.copy_from_slice(&x.to_le_bytes());
        match self.op {
            OpDesc::Relu { .. } | OpDesc::Softmax { .. } => {
                let v = self.arrays.first().and_then(|v| v.get(at));
                let v = v.ok_or_else(|| failed("store"))?;
                match out.dtype {
                    DType::F32 => io::store(bos, &out, self.pos, v, 4, staging, f32_bytes)?,
                    _ => io::store(bos, &out, self.pos, v, 1, staging, |x, b| {
                        b[0] = x as i8 as u8
                    })?,
                }
            }
            OpDesc::MatMul { quant: Some(q), .. } => {
                let v = self.acc.get(at).ok_or_else(|| failed("store"))?;
                match out.dtype {
                    DType::I32 => io::store(bos, &out, self.pos, v, 4, staging, |x, b| {
                        b.copy_from_slice(&x.to_le_bytes())
                    })?,
                    _ => io::store(bos, &out, self.pos, v, 1, staging, |x, b| {
                        b[0] = requantize(x, &q) as u8
                    })?,
                }
            }
            OpDesc::Conv2d { bias, .. } => {
                let oc = out.dims[3].max(1) as usize;
                let pos = self.pos as usize;
                let v = self.out.get_mut(at).ok_or_else(|| failed("store"))?;
                if bias.is_some() {
                    let bv = self.arrays.get(2).ok_or_else(|| failed("bias"))?;
                    for (i, x) in v.iter_mut().enumerate() {
                        *x += bv.get((pos + i) % oc).ok_or_else(|| failed("bias"))?;
                    }
                }
                io::store(bos, &out, self.pos, v, 4, staging, f32_bytes)?;
            }
            _ => {
                let v = self.out.get(at).ok_or_else(|| failed("store"))?;
                io::store(bos, &out, self.pos, v, 4, staging, f32_bytes)?;
            }
        }
        self.pos += n;
        Ok(self.pos == total)
    }
}

/// A result array being zeroed up to its length.
trait Grow {
    fn filled(&self) -> usize;
    fn grow_to(&mut self, len: usize);
}

impl<T: Clone + Default> Grow for Vec<T> {
    fn filled(&self) -> usize {
        self.len()
    }
    /// Within the reserved room: no reallocation.
    fn grow_to(&mut self, len: usize) {
        self.resize(len, T::default());
    }
}

/// Conv2d's patch matrix shape: output pixels × KH·KW·C.
fn conv_rows_cols(filter: &TensorDesc, out: &TensorDesc) -> (usize, usize) {
    let [kh, kw, c, _] = filter.dims.map(|d| d as usize);
    let [n, oh, ow, _] = out.dims.map(|d| d as usize);
    (n * oh * ow, kh * kw * c)
}

/// Strides into the collapsed array of `t` (see [`collapsed`]), aligned to
/// the right of `out`'s axes, with 0 on broadcast axes.
fn broadcast_strides(t: &TensorDesc, out: &TensorDesc) -> [usize; 4] {
    let mut s = [0usize; 4];
    let mut dense = 1usize;
    // Validation has t.rank <= out.rank; anything else broadcasts nothing.
    let shift = out.rank.saturating_sub(t.rank);
    for k in (0..t.rank.min(4)).rev() {
        let extent = if t.strides[k] == 0 { 1 } else { t.dims[k] };
        if let Some(slot) = s.get_mut(shift + k) {
            *slot = if extent == 1 { 0 } else { dense };
        }
        dense = dense.saturating_mul(extent as usize);
    }
    s
}

/// `clamp(round_half_even(acc × scale) + out_zero, -128, 127)`.
pub fn requantize(acc: i32, q: &Quant) -> i8 {
    let v = (f64::from(acc) * f64::from(q.scale)).round_ties_even() + f64::from(q.out_zero);
    v.clamp(-128.0, 127.0) as i8
}

/// A GEMM `C(M×N) = A(M×K) · B(K×N)` in tiles, K innermost so a tile of C
/// is finished before the next starts.
///
/// int8: `(a - a_zero)(b - b_zero)` is at most 255² in magnitude, so a block
/// of [`I8_K_BLOCK`] products sums below 2^24: the f32 GEMM computes each
/// block exactly into C, and the blocks add up in i32 (exact too:
/// validation caps K at `SNPU_MAX_I8_K`).
struct Gemm {
    dims: (usize, usize, usize),
    tile: (usize, usize, usize),
    counts: (usize, usize, usize),
    next: usize,
    int8: bool,
}

const I8_K_BLOCK: usize = 256;

impl Gemm {
    fn plan(m: usize, k: usize, n: usize, tile: &Tile, quant: Option<Quant>) -> Gemm {
        let int8 = quant.is_some();
        let (mb, kb, nb) = if tile.macs == u64::MAX {
            (m, if int8 { k.min(I8_K_BLOCK) } else { k }, n)
        } else {
            // Deep K panels and wide N keep matrixmultiply's packing a
            // small part of each tile's work; M takes what is left.
            let kb = k.min(256);
            let mut nb = n.min(512);
            let budget = usize::try_from(tile.macs).unwrap_or(usize::MAX);
            let mb = (budget / (kb * nb).max(1)).clamp(1, m.max(1));
            if mb == 1 && kb * nb > budget {
                nb = (budget / kb.max(1)).clamp(1, n.max(1));
            }
            (mb, kb, nb)
        };
        let count = |d: usize, b: usize| d.div_ceil(b.max(1));
        Gemm {
            dims: (m, k, n),
            tile: (mb, kb, nb),
            counts: (count(m, mb), count(k, kb), count(n, nb)),
            next: 0,
            int8,
        }
    }

    /// Computes the next tile; true once C is complete.
    fn step(
        &mut self,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        acc: &mut [i32],
    ) -> Result<bool, ExecError> {
        let (m, k, n) = self.dims;
        let (mb, kb, nb) = self.tile;
        let (_, kt, nt) = self.counts;
        let (mi, ni, ki) = (self.next / (nt * kt), (self.next / kt) % nt, self.next % kt);
        let (m0, k0, n0) = (mi * mb, ki * kb, ni * nb);
        let (m1, k1, n1) = ((m0 + mb).min(m), (k0 + kb).min(k), (n0 + nb).min(n));
        let va = ArrayView2::from_shape((m, k), a).map_err(shape_err)?;
        let vb = ArrayView2::from_shape((k, n), b).map_err(shape_err)?;
        let mut vc = ArrayViewMut2::from_shape((m, n), &mut *c).map_err(shape_err)?;
        let beta = if k0 == 0 || self.int8 { 0.0 } else { 1.0 };
        general_mat_mul(
            1.0,
            &va.slice(s![m0..m1, k0..k1]),
            &vb.slice(s![k0..k1, n0..n1]),
            beta,
            &mut vc.slice_mut(s![m0..m1, n0..n1]),
        );
        if self.int8 {
            for i in m0..m1 {
                let row = i * n;
                let (dst, src) = (
                    acc.get_mut(row + n0..row + n1)
                        .ok_or_else(|| failed("accumulator"))?,
                    c.get(row + n0..row + n1)
                        .ok_or_else(|| failed("accumulator"))?,
                );
                for (x, p) in dst.iter_mut().zip(src) {
                    *x = x.wrapping_add(*p as i32);
                }
            }
        }
        self.next += 1;
        let (mt, kt, nt) = self.counts;
        Ok(self.next >= mt * kt * nt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Backing, GuestMem, MemStats};
    use virtio_accel_protocol::snpu::Quant;
    use vm_memory::GuestAddress;

    /// Runs one op over buffers of the given initial contents.
    fn run_on(op: OpDesc, init: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let stats = MemStats::default();
        let backings: Vec<Backing> = init
            .iter()
            .enumerate()
            .map(|(i, b)| Backing::new(vec![((i as u64) << 16, b.len() as u32)]))
            .collect();
        let bos: Vec<BoMem<'_>> = backings
            .iter()
            .map(|b| b.resolve(&mem, &stats).unwrap())
            .collect();
        for (bo, data) in bos.iter().zip(init) {
            bo.write(0, data).unwrap();
        }
        let p = Program { ops: vec![op] };
        let done = Exec::new(p, Tile::WHOLE).run(&bos, &mut || true).unwrap();
        assert_eq!(done, Progress::Done { ops: 1 });
        bos.iter()
            .zip(init)
            .map(|(bo, d)| {
                let mut v = vec![0u8; d.len()];
                bo.read(0, &mut v).unwrap();
                v
            })
            .collect()
    }

    fn f(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn unf(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn t(bo: u32, dt: DType, dims: &[u32]) -> TensorDesc {
        TensorDesc::dense(bo, dt, 0, dims)
    }

    #[test]
    fn add_broadcasts_a_row() {
        let out = run_on(
            OpDesc::Add {
                a: t(0, DType::F32, &[2, 3]),
                b: t(1, DType::F32, &[3]),
                out: t(2, DType::F32, &[2, 3]),
            },
            &[
                f(&[1., 2., 3., 4., 5., 6.]),
                f(&[10., 20., 30.]),
                vec![0; 24],
            ],
        );
        assert_eq!(unf(&out[2]), [11., 22., 33., 14., 25., 36.]);
    }

    #[test]
    fn mul_broadcasts_a_column_through_stride_zero() {
        let mut col = t(1, DType::F32, &[2, 3]);
        col.strides = [1, 0, 0, 0]; // one value per row
        let out = run_on(
            OpDesc::Mul {
                a: t(0, DType::F32, &[2, 3]),
                b: col,
                out: t(2, DType::F32, &[2, 3]),
            },
            &[f(&[1., 2., 3., 4., 5., 6.]), f(&[2., -1.]), vec![0; 24]],
        );
        assert_eq!(unf(&out[2]), [2., 4., 6., -4., -5., -6.]);
    }

    #[test]
    fn relu_int8_and_f32() {
        let out = run_on(
            OpDesc::Relu {
                input: t(0, DType::I8, &[4]),
                out: t(1, DType::I8, &[4]),
            },
            &[vec![0x80, 0xff, 0, 5], vec![9; 4]],
        );
        assert_eq!(out[1], [0, 0, 0, 5]);
        let out = run_on(
            OpDesc::Relu {
                input: t(0, DType::F32, &[3]),
                out: t(0, DType::F32, &[3]),
            },
            &[f(&[-1., 0.5, -0.0])],
        );
        assert_eq!(unf(&out[0]), [0., 0.5, 0.]);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_survive_large_inputs() {
        let out = run_on(
            OpDesc::Softmax {
                input: t(0, DType::F32, &[2, 2]),
                out: t(1, DType::F32, &[2, 2]),
            },
            &[f(&[0., 0., 1000., 0.]), vec![0; 16]],
        );
        let v = unf(&out[1]);
        assert_eq!(&v[..2], &[0.5, 0.5]);
        assert!((v[2] - 1.0).abs() < 1e-6 && v[3] < 1e-6);
    }

    #[test]
    fn matmul_f32_and_strided_transposed_input() {
        // a = [[1,2],[3,4]]; b given transposed in memory via strides.
        let mut bt = t(1, DType::F32, &[2, 2]);
        bt.strides = [1, 2, 0, 0];
        let out = run_on(
            OpDesc::MatMul {
                a: t(0, DType::F32, &[2, 2]),
                b: bt,
                out: t(2, DType::F32, &[2, 2]),
                quant: None,
            },
            // memory of b: [5,7,6,8] read as b[k][n] = mem[k + 2n] -> [[5,6],[7,8]]
            &[f(&[1., 2., 3., 4.]), f(&[5., 7., 6., 8.]), vec![0; 16]],
        );
        assert_eq!(unf(&out[2]), [19., 22., 43., 50.]);
    }

    #[test]
    fn matmul_int8_exact_accumulators_and_requantization() {
        let q = Quant {
            a_zero: -128,
            b_zero: 127,
            out_zero: 0,
            scale: 0.0,
        };
        // K = 3: acc = 3 * (127 - -128) * (-128 - 127) = -195075
        let out = run_on(
            OpDesc::MatMul {
                a: t(0, DType::I8, &[1, 3]),
                b: t(1, DType::I8, &[3, 1]),
                out: t(2, DType::I32, &[1, 1]),
                quant: Some(q),
            },
            &[vec![127; 3], vec![0x80; 3], vec![0; 4]],
        );
        assert_eq!(i32::from_le_bytes(out[2][..4].try_into().unwrap()), -195075);
        let q = Quant {
            a_zero: 0,
            b_zero: 0,
            out_zero: -3,
            scale: 0.5,
        };
        assert_eq!(requantize(5, &q), -1, "2.5 rounds to even 2, plus -3");
        assert_eq!(requantize(7, &q), 1, "3.5 rounds to even 4, plus -3");
        assert_eq!(requantize(1000, &q), 127);
        assert_eq!(requantize(-1000, &q), -128);
    }

    #[test]
    fn matmul_int8_is_exact_across_k_blocks() {
        // K = 1000 spans four f32 blocks; every product is 255 · -255.
        let q = Quant {
            a_zero: -128,
            b_zero: 127,
            out_zero: 0,
            scale: 0.0,
        };
        let out = run_on(
            OpDesc::MatMul {
                a: t(0, DType::I8, &[2, 1000]),
                b: t(1, DType::I8, &[1000, 1]),
                out: t(2, DType::I32, &[2, 1]),
                quant: Some(q),
            },
            &[vec![127; 2000], vec![0x80; 1000], vec![0; 8]],
        );
        for r in 0..2 {
            let v = i32::from_le_bytes(out[2][4 * r..4 * r + 4].try_into().unwrap());
            assert_eq!(v, -65_025_000);
        }
    }

    #[test]
    fn conv2d_with_padding_stride_and_bias() {
        // 1x3x3x1 input 1..9, 2x2 filter of ones, stride 2, pad 1 each side
        // -> 2x2 output of sums of the covered cells, plus bias 0.5.
        let out = run_on(
            OpDesc::Conv2d {
                input: t(0, DType::F32, &[1, 3, 3, 1]),
                filter: t(1, DType::F32, &[2, 2, 1, 1]),
                bias: Some(t(2, DType::F32, &[1])),
                out: t(3, DType::F32, &[1, 2, 2, 1]),
                stride: [2, 2],
                pad: [1, 1, 1, 1],
            },
            &[
                f(&[1., 2., 3., 4., 5., 6., 7., 8., 9.]),
                f(&[1.; 4]),
                f(&[0.5]),
                vec![0; 16],
            ],
        );
        assert_eq!(unf(&out[3]), [1.5, 5.5, 11.5, 28.5]);
    }

    #[test]
    fn copy_gathers_a_strided_source() {
        let mut src = t(0, DType::F32, &[3]);
        src.strides = [2, 0, 0, 0];
        let out = run_on(
            OpDesc::Copy {
                src,
                dst: t(1, DType::F32, &[3]),
            },
            &[f(&[1., 9., 2., 9., 3.]), vec![0; 12]],
        );
        assert_eq!(unf(&out[1]), [1., 2., 3.]);
    }

    /// Runs `ops` with `tile`, one step per call when `stepwise`.
    fn run_all(
        ops: &[OpDesc],
        init: &[Vec<u8>],
        tile: Tile,
        stepwise: bool,
    ) -> (Vec<Vec<u8>>, u64) {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let stats = MemStats::default();
        let backings: Vec<Backing> = init
            .iter()
            .enumerate()
            .map(|(i, b)| Backing::new(vec![((i as u64) << 22, b.len() as u32)]))
            .collect();
        let bos: Vec<BoMem<'_>> = backings
            .iter()
            .map(|b| b.resolve(&mem, &stats).unwrap())
            .collect();
        for (bo, data) in bos.iter().zip(init) {
            bo.write(0, data).unwrap();
        }
        let mut exec = Exec::new(Program { ops: ops.to_vec() }, tile);
        let mut calls = 0;
        loop {
            calls += 1;
            if let Progress::Done { ops: n } = exec.run(&bos, &mut || !stepwise).unwrap() {
                assert_eq!(n, ops.len() as u64);
                break;
            }
        }
        let out = bos
            .iter()
            .zip(init)
            .map(|(bo, d)| {
                let mut v = vec![0u8; d.len()];
                bo.read(0, &mut v).unwrap();
                v
            })
            .collect();
        (out, calls)
    }

    #[test]
    fn sliced_and_resumed_jobs_compute_what_whole_ops_compute() {
        // Integer-valued f32 data: every sum is exact whatever the order,
        // so tiling must give the very same bytes.
        let (m, k, n) = (300u32, 700u32, 600u32);
        let ints = |len: u32, seed: u32| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7 + seed) % 9) as f32 - 4.0)
                .collect()
        };
        let mut bt = t(1, DType::F32, &[k, n]);
        bt.strides = [1, k, 0, 0]; // B stored transposed
        let ops = [
            OpDesc::MatMul {
                a: t(0, DType::F32, &[m, k]),
                b: bt,
                out: t(2, DType::F32, &[m, n]),
                quant: None,
            },
            OpDesc::Conv2d {
                input: t(3, DType::F32, &[1, 40, 40, 16]),
                filter: t(4, DType::F32, &[3, 3, 16, 32]),
                bias: Some(t(5, DType::F32, &[32])),
                out: t(6, DType::F32, &[1, 40, 40, 32]),
                stride: [1, 1],
                pad: [1, 1, 1, 1],
            },
            OpDesc::Relu {
                input: t(6, DType::F32, &[1, 40, 40, 32]),
                out: t(7, DType::F32, &[1, 40, 40, 32]),
            },
            OpDesc::Add {
                a: t(2, DType::F32, &[m, n]),
                b: t(5, DType::F32, &[1]),
                out: t(8, DType::F32, &[m, n]),
            },
            OpDesc::Softmax {
                input: t(8, DType::F32, &[m, n]),
                out: t(8, DType::F32, &[m, n]),
            },
            // A broadcast source: each of 1600 input values 32 times.
            OpDesc::Copy {
                src: {
                    let mut c = t(3, DType::F32, &[1600, 32]);
                    c.strides = [1, 0, 0, 0];
                    c
                },
                dst: t(7, DType::F32, &[1600, 32]),
            },
        ];
        let init = vec![
            f(&ints(m * k, 1)),
            f(&ints(k * n, 2)),
            vec![0; (m * n * 4) as usize],
            f(&ints(40 * 40 * 16, 3)),
            f(&ints(3 * 3 * 16 * 32, 4)),
            f(&ints(32, 5)),
            vec![0; 40 * 40 * 32 * 4],
            vec![0; 40 * 40 * 32 * 4],
            vec![0; (m * n * 4) as usize],
        ];
        let (whole, calls) = run_all(&ops, &init, Tile::WHOLE, false);
        assert_eq!(calls, 1);
        let small = Tile {
            macs: 1 << 20,
            elems: 1000,
        };
        let (sliced, calls) = run_all(&ops, &init, small, true);
        assert!(calls > 100, "{calls} steps: the ops were not sliced");
        assert!(whole[2].iter().any(|&b| b != 0), "matmul wrote nothing");
        assert_eq!(unf(&whole[7])[32..64], [unf(&init[3])[1]; 32]);
        assert_eq!(whole, sliced);
    }

    #[test]
    fn int8_matmul_sliced_is_exact() {
        let q = Quant {
            a_zero: 3,
            b_zero: -2,
            out_zero: 0,
            scale: 0.0,
        };
        let (m, k, n) = (33u32, 1000u32, 70u32);
        let a: Vec<u8> = (0..m * k).map(|i| (i * 31 % 256) as u8).collect();
        let b: Vec<u8> = (0..k * n).map(|i| (i * 17 % 256) as u8).collect();
        let ops = [OpDesc::MatMul {
            a: t(0, DType::I8, &[m, k]),
            b: t(1, DType::I8, &[k, n]),
            out: t(2, DType::I32, &[m, n]),
            quant: Some(q),
        }];
        let init = vec![a.clone(), b.clone(), vec![0; (m * n * 4) as usize]];
        let small = Tile {
            macs: 1 << 14,
            elems: 100,
        };
        let (out, _) = run_all(&ops, &init, small, true);
        for (i, j) in [(0, 0), (5, 69), (32, 17)] {
            let want: i32 = (0..k as usize)
                .map(|kk| {
                    (i32::from(a[i * k as usize + kk] as i8) - 3)
                        * (i32::from(b[kk * n as usize + j] as i8) + 2)
                })
                .sum();
            let at = 4 * (i * n as usize + j);
            assert_eq!(
                i32::from_le_bytes(out[2][at..at + 4].try_into().unwrap()),
                want
            );
        }
    }
}
