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

use virtio_accel_protocol::snpu::{DType, OpDesc, Program, TensorDesc};

use super::io::{self, collapsed, reserve, Conv};
pub use super::kernels::requantize;
use super::kernels::{conv_rows_cols, Gemm, Grow};
use super::ExecError;
use crate::memory::BoMem;
use nn::ConvShape;

/// The most work one step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    /// Multiply-accumulates of one GEMM tile.
    pub macs: u64,
    /// Elements one gather, store or elementwise step moves.
    pub elems: u64,
}

impl Tile {
    /// At most about a millisecond of one core of this project's reference
    /// machine (the sharing benchmark reports the longest step).
    pub const SLICED: Tile = Tile {
        macs: 1 << 24,
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
        // NOP and COPY need no working memory (appendix A), not even the
        // staging buffer.
        let needs = |op: &OpDesc| !matches!(op, OpDesc::Nop | OpDesc::Copy { .. });
        if self.staging.is_empty() && self.ops.iter().any(needs) {
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
    /// CONV: the block of its patch matrix being built or multiplied.
    block: u64,
    /// Within a row longer than a tile (im2col, softmax): elements done.
    sub: u64,
    /// Softmax within a long row: the pass (max, exponentials, division)
    /// and what the earlier passes found.
    pass: u8,
    max: f32,
    sum: f32,
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
            OpDesc::Softmax { input, .. }
            | OpDesc::MaxPool { input, .. }
            | OpDesc::AvgPool { input, .. }
            | OpDesc::Clip { input, .. }
            | OpDesc::Sigmoid { input, .. }
            | OpDesc::Lrn { input, .. } => vec![(*input, Conv::F32)],
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
            }
            | OpDesc::Conv {
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
            block: 0,
            sub: 0,
            pass: 0,
            max: f32::NEG_INFINITY,
            sum: 0.0,
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
                match self.op {
                    OpDesc::Conv { .. } => self.conv_prepare(tile)?,
                    _ => self.im2col(tile)?,
                }
                Ok(false)
            }
            Phase::Compute => self.compute(bos, tile),
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
            OpDesc::Conv { out, .. } => {
                let cs = ConvShape::of(&self.op).ok_or_else(|| failed("conv shape"))?;
                lp = cs.patch_elems() as u64;
                lo = out.elems();
                self.block = 0;
                next = Next::Prepare;
            }
            OpDesc::MaxPool { out, .. } | OpDesc::AvgPool { out, .. } | OpDesc::Lrn { out, .. } => {
                lo = out.elems()
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

    fn compute(&mut self, bos: &[BoMem<'_>], tile: &Tile) -> Result<bool, ExecError> {
        match self.op {
            OpDesc::Nop => return Ok(true),
            OpDesc::Copy { src, dst } => {
                let total = src.elems();
                let n = chunk(self.pos, total, tile.elems);
                io::copy(bos, &src, &dst, self.pos, n)?;
                self.pos += n;
                return Ok(self.pos == total);
            }
            OpDesc::Relu { input, .. }
            | OpDesc::Clip { input, .. }
            | OpDesc::Sigmoid { input, .. } => {
                let n = chunk(self.pos, input.elems(), tile.elems);
                let v = self.arrays.first_mut().ok_or_else(|| failed("relu"))?;
                let part = v
                    .get_mut(range(self.pos, n))
                    .ok_or_else(|| failed("relu"))?;
                match self.op {
                    OpDesc::Clip { min, max, .. } => {
                        part.iter_mut().for_each(|x| *x = x.max(min).min(max))
                    }
                    OpDesc::Sigmoid { .. } => {
                        part.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp()))
                    }
                    _ => part.iter_mut().for_each(|x| *x = x.max(0.0)),
                }
                self.pos += n;
                if self.pos == input.elems() {
                    self.next_phase(Phase::Store);
                }
            }
            OpDesc::Softmax { input, .. } => {
                self.softmax(&input, tile)?;
                let row = input.dims().last().map_or(1, |&d| u64::from(d));
                if self.pos == input.elems() / row {
                    self.next_phase(Phase::Store);
                }
            }
            OpDesc::Add { a, b, out } => self.binary(&a, &b, &out, tile, |x, y| x + y)?,
            OpDesc::Mul { a, b, out } => self.binary(&a, &b, &out, tile, |x, y| x * y)?,
            OpDesc::Conv { .. } => self.conv_compute()?,
            OpDesc::MaxPool { .. } | OpDesc::AvgPool { .. } | OpDesc::Lrn { .. } => {
                self.window_step(tile)?
            }
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
            OpDesc::Relu { .. }
            | OpDesc::Softmax { .. }
            | OpDesc::Clip { .. }
            | OpDesc::Sigmoid { .. } => {
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
            OpDesc::Conv { bias, relu, .. } => {
                self.conv_finish(at.clone(), bias, relu)?;
                let v = self.out.get(at).ok_or_else(|| failed("store"))?;
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

mod nn;
mod ops;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_nn;
