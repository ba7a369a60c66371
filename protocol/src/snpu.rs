//! Command-stream format of the built-in software NPU (spec appendix A).
//!
//! A command stream is a [`CmdHdr`] followed by `nr_ops` fixed-size [`Op`]
//! records. Tensors name a buffer by its index in the job's buffer list (not
//! by handle), so a guest kernel can translate handles without rewriting the
//! stream. [`parse`] checks everything that can be checked without the
//! buffers; [`Program::check_bounds`] checks every access against the job's
//! buffers before anything runs.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::wire::{VIRTIO_ACCEL_ACCESS_READ, VIRTIO_ACCEL_ACCESS_WRITE};

pub const SNPU_MAGIC: u32 = u32::from_le_bytes(*b"SNPU");
pub const SNPU_VERSION: u16 = 1;
pub const SNPU_MAX_OPS: u16 = 1024;
pub const SNPU_MAX_RANK: usize = 4;
/// `bo_index` of an unused tensor slot.
pub const SNPU_NO_TENSOR: u32 = u32::MAX;
/// Largest element count of one tensor (and of conv2d's patch matrix).
pub const SNPU_MAX_ELEMS: u64 = 1 << 26;
/// Largest multiply-accumulate count of one op.
pub const SNPU_MAX_MACS: u64 = 1 << 36;
/// Largest K of an int8 MATMUL: 255 · 255 · 2^15 < 2^31, so its int32
/// accumulators are exact.
pub const SNPU_MAX_I8_K: u32 = 1 << 15;
/// Bytes one op may use besides its element arrays (staging buffers for
/// moving data to and from guest memory, GEMM packing buffers), counted in
/// [`OpDesc::work_bytes`].
pub const SNPU_SCRATCH_BYTES: u64 = 2 << 20;
/// The staging buffer through which the software NPU reads inputs and
/// writes outputs (part of [`SNPU_SCRATCH_BYTES`]).
pub const SNPU_STAGING_BYTES: u64 = 64 << 10;

pub const SNPU_OP_NOP: u16 = 0;
pub const SNPU_OP_COPY: u16 = 1;
pub const SNPU_OP_ADD: u16 = 2;
pub const SNPU_OP_MUL: u16 = 3;
pub const SNPU_OP_RELU: u16 = 4;
pub const SNPU_OP_SOFTMAX: u16 = 5;
pub const SNPU_OP_MATMUL: u16 = 6;
pub const SNPU_OP_CONV2D: u16 = 7;
/// Bitmask of supported opcodes, as reported in `RespCaps::ops`.
pub const SNPU_OPS_ALL: u64 = (1 << 8) - 1;

pub const SNPU_DTYPE_F32: u8 = 1;
pub const SNPU_DTYPE_I8: u8 = 2;
pub const SNPU_DTYPE_I32: u8 = 3;

/// Command-stream header.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct CmdHdr {
    pub magic: U32,
    pub version: U16,
    pub nr_ops: U16,
    pub flags: U32,
    pub padding: U32,
}

/// Tensor descriptor: `dims[i]` elements along axis `i`, `strides[i]`
/// elements between neighbours along it, starting `offset` bytes into the
/// job's buffer `bo_index`. Axes at or above `rank` must be zero.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct Tensor {
    pub bo_index: U32,
    pub dtype: u8,
    pub rank: u8,
    pub padding: U16,
    pub offset: U64,
    pub dims: [U32; 4],
    pub strides: [U32; 4],
}

/// One operation.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct Op {
    pub opcode: U16,
    pub flags: U16,
    pub padding: U32,
    pub tensors: [Tensor; 4],
    pub params: [U32; 8],
}

const _: () = assert!(core::mem::size_of::<CmdHdr>() == 16);
const _: () = assert!(core::mem::size_of::<Tensor>() == 48);
const _: () = assert!(core::mem::size_of::<Op>() == 232);

/// Why a command stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdError {
    #[error("command stream of {0} bytes is not a header plus whole ops")]
    Size(usize),
    #[error("bad magic {0:#x}")]
    Magic(u32),
    #[error("unsupported command-stream version {0}")]
    Version(u16),
    #[error("{0} ops, above the limit of {SNPU_MAX_OPS}")]
    TooManyOps(u16),
    #[error("op {op}: unknown opcode {opcode}")]
    Opcode { op: usize, opcode: u16 },
    #[error("op {op}: reserved field {field} is nonzero")]
    Reserved { op: usize, field: &'static str },
    #[error("op {op} tensor {tensor}: {why}")]
    Tensor {
        op: usize,
        tensor: usize,
        why: &'static str,
    },
    #[error("op {op}: {why}")]
    Shape { op: usize, why: &'static str },
    #[error("op {op} tensor {tensor}: buffer index {index} not in the job's {count} buffers")]
    BoIndex {
        op: usize,
        tensor: usize,
        index: u32,
        count: usize,
    },
    #[error("op {op} tensor {tensor}: buffer lacks {need} access")]
    Access {
        op: usize,
        tensor: usize,
        need: &'static str,
    },
    #[error("op {op} tensor {tensor}: byte range overflows")]
    Overflow { op: usize, tensor: usize },
    #[error("op {op} tensor {tensor}: bytes {start}..{end} outside buffer of {size} bytes")]
    OutOfBounds {
        op: usize,
        tensor: usize,
        start: u64,
        end: u64,
        size: u64,
    },
}

/// Element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    I8,
    I32,
}

impl DType {
    pub fn size(self) -> u64 {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::I8 => 1,
        }
    }
    fn code(self) -> u8 {
        match self {
            DType::F32 => SNPU_DTYPE_F32,
            DType::I8 => SNPU_DTYPE_I8,
            DType::I32 => SNPU_DTYPE_I32,
        }
    }
    fn from_code(c: u8) -> Option<DType> {
        match c {
            SNPU_DTYPE_F32 => Some(DType::F32),
            SNPU_DTYPE_I8 => Some(DType::I8),
            SNPU_DTYPE_I32 => Some(DType::I32),
            _ => None,
        }
    }
}

/// A validated tensor descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorDesc {
    pub bo_index: u32,
    pub dtype: DType,
    pub offset: u64,
    /// Only the first `rank` entries are meaningful.
    pub dims: [u32; SNPU_MAX_RANK],
    pub strides: [u32; SNPU_MAX_RANK],
    pub rank: usize,
}

impl TensorDesc {
    /// A dense row-major tensor.
    pub fn dense(bo_index: u32, dtype: DType, offset: u64, dims: &[u32]) -> TensorDesc {
        assert!(!dims.is_empty() && dims.len() <= SNPU_MAX_RANK);
        let mut t = TensorDesc {
            bo_index,
            dtype,
            offset,
            dims: [0; SNPU_MAX_RANK],
            strides: [0; SNPU_MAX_RANK],
            rank: dims.len(),
        };
        t.dims[..dims.len()].copy_from_slice(dims);
        let mut s = 1u32;
        for i in (0..dims.len()).rev() {
            t.strides[i] = s;
            s = s.saturating_mul(dims[i]);
        }
        t
    }

    pub fn dims(&self) -> &[u32] {
        &self.dims[..self.rank]
    }

    pub fn strides(&self) -> &[u32] {
        &self.strides[..self.rank]
    }

    /// Number of elements (product of dims), or `None` when the product
    /// does not fit in a u64.
    pub fn checked_elems(&self) -> Option<u64> {
        self.dims()
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)))
    }

    /// Number of elements, saturating at `u64::MAX`; for a validated tensor
    /// it is at most [`SNPU_MAX_ELEMS`].
    pub fn elems(&self) -> u64 {
        self.checked_elems().unwrap_or(u64::MAX)
    }

    /// Elements the tensor actually holds in memory: axes of extent 1 or
    /// stride 0 (broadcasts) count once. A broadcast input is gathered at
    /// this size, not at `elems()`.
    pub fn distinct_elems(&self) -> u64 {
        self.dims()
            .iter()
            .zip(self.strides())
            .map(|(&d, &s)| if s == 0 { 1 } else { u64::from(d) })
            .fold(1u64, |acc, d| acc.saturating_mul(d))
    }

    /// Whether the strides are the dense row-major ones for the dims.
    pub fn is_dense(&self) -> bool {
        let mut s = 1u64;
        for i in (0..self.rank).rev() {
            if self.dims[i] > 1 && u64::from(self.strides[i]) != s {
                return false;
            }
            s = s.saturating_mul(u64::from(self.dims[i]));
        }
        true
    }

    /// The byte range `[start, end)` this tensor touches in its buffer, or
    /// `None` when it cannot be computed: an axis of extent 0, or
    /// arithmetic overflow. Validated tensors never give `None`.
    pub fn byte_range(&self) -> Option<(u64, u64)> {
        let mut last: u64 = 0;
        for i in 0..self.rank {
            let step =
                u64::from(self.dims[i].checked_sub(1)?).checked_mul(u64::from(self.strides[i]))?;
            last = last.checked_add(step)?;
        }
        let len = last.checked_add(1)?.checked_mul(self.dtype.size())?;
        let end = self.offset.checked_add(len)?;
        Some((self.offset, end))
    }

    fn to_wire(self) -> Tensor {
        let mut t = Tensor {
            bo_index: self.bo_index.into(),
            dtype: self.dtype.code(),
            rank: self.rank as u8,
            offset: self.offset.into(),
            ..Default::default()
        };
        for i in 0..self.rank {
            t.dims[i] = self.dims[i].into();
            t.strides[i] = self.strides[i].into();
        }
        t
    }
}

/// Requantization of an int8 matmul: `out = clamp(round(acc * scale) +
/// out_zero, -128, 127)` where `acc = Σ (a - a_zero)(b - b_zero)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quant {
    pub a_zero: i32,
    pub b_zero: i32,
    pub out_zero: i32,
    pub scale: f32,
}

/// A validated operation.
#[derive(Debug, Clone, PartialEq)]
pub enum OpDesc {
    Nop,
    Copy {
        src: TensorDesc,
        dst: TensorDesc,
    },
    Add {
        a: TensorDesc,
        b: TensorDesc,
        out: TensorDesc,
    },
    Mul {
        a: TensorDesc,
        b: TensorDesc,
        out: TensorDesc,
    },
    Relu {
        input: TensorDesc,
        out: TensorDesc,
    },
    Softmax {
        input: TensorDesc,
        out: TensorDesc,
    },
    /// `out[M,N] = a[M,K] · b[K,N]`; int8 inputs carry their quantization.
    MatMul {
        a: TensorDesc,
        b: TensorDesc,
        out: TensorDesc,
        quant: Option<Quant>,
    },
    /// NHWC input, `[KH, KW, C, OC]` filter, optional `[OC]` bias.
    Conv2d {
        input: TensorDesc,
        filter: TensorDesc,
        bias: Option<TensorDesc>,
        out: TensorDesc,
        stride: [u32; 2],
        /// top, left, bottom, right
        pad: [u32; 4],
    },
}

impl OpDesc {
    /// Tensors the op reads, then the one it writes.
    pub fn tensors(&self) -> (Vec<&TensorDesc>, Option<&TensorDesc>) {
        match self {
            OpDesc::Nop => (vec![], None),
            OpDesc::Copy { src, dst } => (vec![src], Some(dst)),
            OpDesc::Add { a, b, out } | OpDesc::Mul { a, b, out } => (vec![a, b], Some(out)),
            OpDesc::Relu { input, out } | OpDesc::Softmax { input, out } => {
                (vec![input], Some(out))
            }
            OpDesc::MatMul { a, b, out, .. } => (vec![a, b], Some(out)),
            OpDesc::Conv2d {
                input,
                filter,
                bias,
                out,
                ..
            } => {
                let mut v = vec![input, filter];
                v.extend(bias.iter());
                (v, Some(out))
            }
        }
    }
}

impl OpDesc {
    /// Bytes of NPU working memory the op needs while it runs: the dense
    /// arrays the software NPU gathers its inputs into, its results, and
    /// [`SNPU_SCRATCH_BYTES`] for staging and GEMM packing. Inputs of ADD
    /// and MUL count at their distinct elements (a broadcast is not
    /// expanded); the operands of MATMUL and CONV2D are gathered whole.
    /// An upper bound of what the software NPU allocates; saturates.
    pub fn work_bytes(&self) -> u64 {
        let f = |n: u64| n.saturating_mul(4);
        let sum = |v: &[u64]| v.iter().fold(0u64, |a, &b| a.saturating_add(b));
        let arrays = match self {
            OpDesc::Nop | OpDesc::Copy { .. } => return 0,
            OpDesc::Add { a, b, out } | OpDesc::Mul { a, b, out } => {
                sum(&[f(a.distinct_elems()), f(b.distinct_elems()), f(out.elems())])
            }
            OpDesc::Relu { input, .. } => input.elems().saturating_mul(input.dtype.size()),
            OpDesc::Softmax { input, .. } => f(input.elems()),
            OpDesc::MatMul { a, b, out, quant } => {
                // int8: exact partial products in f32 blocks of K, summed
                // into an i32 accumulator beside the f32 block result.
                let outs = if quant.is_some() { 2 } else { 1 };
                sum(&[
                    f(a.elems()),
                    f(b.elems()),
                    f(out.elems()).saturating_mul(outs),
                ])
            }
            OpDesc::Conv2d {
                input,
                filter,
                bias,
                out,
                ..
            } => {
                let (kh, kw, c) = (filter.dims[0], filter.dims[1], filter.dims[2]);
                let cols = u64::from(kh)
                    .saturating_mul(u64::from(kw))
                    .saturating_mul(u64::from(c));
                let rows = u64::from(out.dims[0])
                    .saturating_mul(u64::from(out.dims[1]))
                    .saturating_mul(u64::from(out.dims[2]));
                sum(&[
                    f(input.elems()),
                    f(rows.saturating_mul(cols)),
                    f(filter.elems()),
                    f(out.elems()),
                    f(bias.map_or(0, |b| b.elems())),
                ])
            }
        };
        arrays.saturating_add(SNPU_SCRATCH_BYTES)
    }
}

impl OpDesc {
    /// The op's work: elements of its tensors plus its multiply-accumulates
    /// (MATMUL M·K·N, CONV2D N·OH·OW·OC·KH·KW·C). Saturates.
    pub fn cost(&self) -> u64 {
        let (ins, out) = self.tensors();
        let elems = ins
            .iter()
            .chain(out.iter())
            .fold(0u64, |a, t| a.saturating_add(t.elems()));
        let macs = match self {
            OpDesc::MatMul { a, b, .. } => u64::from(a.dims[0])
                .saturating_mul(u64::from(a.dims[1]))
                .saturating_mul(u64::from(b.dims[1])),
            OpDesc::Conv2d { filter, out, .. } => out
                .elems()
                .saturating_mul(u64::from(filter.dims[0]))
                .saturating_mul(u64::from(filter.dims[1]))
                .saturating_mul(u64::from(filter.dims[2])),
            _ => 0,
        };
        elems.saturating_add(macs)
    }
}

/// A parsed and validated command stream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Program {
    pub ops: Vec<OpDesc>,
}

fn tensor(op: usize, slot: usize, t: &Tensor) -> Result<Option<TensorDesc>, CmdError> {
    let err = |why| CmdError::Tensor {
        op,
        tensor: slot,
        why,
    };
    if t.bo_index.get() == SNPU_NO_TENSOR {
        if t.as_bytes()[4..].iter().any(|&b| b != 0) {
            return Err(err("unused slot has nonzero fields"));
        }
        return Ok(None);
    }
    if t.padding.get() != 0 {
        return Err(err("nonzero padding"));
    }
    let dtype = DType::from_code(t.dtype).ok_or(err("unknown dtype"))?;
    let rank = usize::from(t.rank);
    if rank == 0 || rank > SNPU_MAX_RANK {
        return Err(err("rank must be 1 to 4"));
    }
    let mut d = TensorDesc {
        bo_index: t.bo_index.get(),
        dtype,
        offset: t.offset.get(),
        dims: [0; SNPU_MAX_RANK],
        strides: [0; SNPU_MAX_RANK],
        rank,
    };
    for i in 0..SNPU_MAX_RANK {
        if i < rank {
            d.dims[i] = t.dims[i].get();
            d.strides[i] = t.strides[i].get();
        } else if t.dims[i].get() != 0 || t.strides[i].get() != 0 {
            return Err(err("dims or strides above rank are nonzero"));
        }
    }
    if d.dims().contains(&0) {
        return Err(err("every axis needs at least one element"));
    }
    if d.checked_elems().is_none_or(|n| n > SNPU_MAX_ELEMS) {
        return Err(err("too many elements"));
    }
    if d.byte_range().is_none() {
        return Err(CmdError::Overflow { op, tensor: slot });
    }
    Ok(Some(d))
}

fn shape(op: usize, ok: bool, why: &'static str) -> Result<(), CmdError> {
    if ok {
        Ok(())
    } else {
        Err(CmdError::Shape { op, why })
    }
}

fn out_dense(op: usize, slot: usize, t: &TensorDesc) -> Result<(), CmdError> {
    if t.is_dense() {
        Ok(())
    } else {
        Err(CmdError::Tensor {
            op,
            tensor: slot,
            why: "output tensor must be dense row-major",
        })
    }
}

/// Whether `a` broadcasts to `out` (dims aligned at the right; each equal or 1).
fn broadcasts(a: &TensorDesc, out: &TensorDesc) -> bool {
    a.rank <= out.rank
        && a.dims()
            .iter()
            .rev()
            .zip(out.dims().iter().rev())
            .all(|(&x, &y)| x == y || x == 1)
}

/// Parses and validates a command stream.
pub fn parse(bytes: &[u8]) -> Result<Program, CmdError> {
    let op_size = core::mem::size_of::<Op>();
    let (hdr, rest) = CmdHdr::read_from_prefix(bytes).map_err(|_| CmdError::Size(bytes.len()))?;
    if hdr.magic.get() != SNPU_MAGIC {
        return Err(CmdError::Magic(hdr.magic.get()));
    }
    if hdr.version.get() != SNPU_VERSION {
        return Err(CmdError::Version(hdr.version.get()));
    }
    if hdr.flags.get() != 0 || hdr.padding.get() != 0 {
        return Err(CmdError::Reserved {
            op: 0,
            field: "header flags/padding",
        });
    }
    let n = hdr.nr_ops.get();
    if n > SNPU_MAX_OPS {
        return Err(CmdError::TooManyOps(n));
    }
    if rest.len() != usize::from(n) * op_size {
        return Err(CmdError::Size(bytes.len()));
    }
    let mut ops = Vec::with_capacity(usize::from(n));
    for (i, chunk) in rest.chunks_exact(op_size).enumerate() {
        // chunks_exact yields exactly op_size bytes; read cannot fail.
        let raw = Op::read_from_bytes(chunk).map_err(|_| CmdError::Size(bytes.len()))?;
        ops.push(parse_op(i, &raw)?);
    }
    Ok(Program { ops })
}

fn parse_op(i: usize, raw: &Op) -> Result<OpDesc, CmdError> {
    if raw.flags.get() != 0 || raw.padding.get() != 0 {
        return Err(CmdError::Reserved {
            op: i,
            field: "op flags/padding",
        });
    }
    let t: Vec<Option<TensorDesc>> = raw
        .tensors
        .iter()
        .enumerate()
        .map(|(s, t)| tensor(i, s, t))
        .collect::<Result<_, _>>()?;
    let p: [u32; 8] = raw.params.map(|v| v.get());
    let opcode = raw.opcode.get();
    // Which slots an op uses, and how many params.
    let (need, opt, nparams): (usize, usize, usize) = match opcode {
        SNPU_OP_NOP => (0, 0, 0),
        SNPU_OP_COPY | SNPU_OP_RELU | SNPU_OP_SOFTMAX => (2, 0, 0),
        SNPU_OP_ADD | SNPU_OP_MUL => (3, 0, 0),
        SNPU_OP_MATMUL => (3, 0, 4),
        SNPU_OP_CONV2D => (4, 1, 6),
        _ => return Err(CmdError::Opcode { op: i, opcode }),
    };
    for (s, slot) in t.iter().enumerate() {
        let required = s < need && !(opt == 1 && s == 2);
        if required && slot.is_none() {
            return Err(CmdError::Tensor {
                op: i,
                tensor: s,
                why: "required tensor missing",
            });
        }
        if s >= need && slot.is_some() {
            return Err(CmdError::Tensor {
                op: i,
                tensor: s,
                why: "op does not use this slot",
            });
        }
    }
    if p[nparams..].iter().any(|&v| v != 0) {
        return Err(CmdError::Reserved {
            op: i,
            field: "unused params",
        });
    }
    // Presence was checked above; a missing slot is refused, never assumed.
    let g = |s: usize| {
        t.get(s).copied().flatten().ok_or(CmdError::Tensor {
            op: i,
            tensor: s,
            why: "required tensor missing",
        })
    };
    Ok(match opcode {
        SNPU_OP_NOP => OpDesc::Nop,
        SNPU_OP_COPY => {
            let (src, dst) = (g(0)?, g(1)?);
            shape(i, src.dims() == dst.dims(), "copy shapes differ")?;
            shape(i, src.dtype == dst.dtype, "copy dtypes differ")?;
            out_dense(i, 1, &dst)?;
            OpDesc::Copy { src, dst }
        }
        SNPU_OP_ADD | SNPU_OP_MUL => {
            let (a, b, out) = (g(0)?, g(1)?, g(2)?);
            shape(
                i,
                [a, b, out].iter().all(|t| t.dtype == DType::F32),
                "add/mul are f32",
            )?;
            shape(
                i,
                broadcasts(&a, &out) && broadcasts(&b, &out),
                "inputs do not broadcast to output",
            )?;
            out_dense(i, 2, &out)?;
            if opcode == SNPU_OP_ADD {
                OpDesc::Add { a, b, out }
            } else {
                OpDesc::Mul { a, b, out }
            }
        }
        SNPU_OP_RELU => {
            let (input, out) = (g(0)?, g(1)?);
            shape(i, input.dims() == out.dims(), "relu shapes differ")?;
            shape(
                i,
                input.dtype == out.dtype && input.dtype != DType::I32,
                "relu takes f32 or i8, same in and out",
            )?;
            out_dense(i, 1, &out)?;
            OpDesc::Relu { input, out }
        }
        SNPU_OP_SOFTMAX => {
            let (input, out) = (g(0)?, g(1)?);
            shape(i, input.dims() == out.dims(), "softmax shapes differ")?;
            shape(
                i,
                input.dtype == DType::F32 && out.dtype == DType::F32,
                "softmax is f32",
            )?;
            out_dense(i, 1, &out)?;
            OpDesc::Softmax { input, out }
        }
        SNPU_OP_MATMUL => {
            let (a, b, out) = (g(0)?, g(1)?, g(2)?);
            shape(
                i,
                a.rank == 2 && b.rank == 2 && out.rank == 2,
                "matmul tensors are rank 2",
            )?;
            let (m, k, n) = (a.dims[0], a.dims[1], b.dims[1]);
            shape(
                i,
                b.dims[0] == k && out.dims[0] == m && out.dims[1] == n,
                "matmul shapes do not chain",
            )?;
            let macs = u64::from(m)
                .checked_mul(u64::from(k))
                .and_then(|v| v.checked_mul(u64::from(n)));
            shape(
                i,
                macs.is_some_and(|v| v <= SNPU_MAX_MACS),
                "matmul too large",
            )?;
            out_dense(i, 2, &out)?;
            let quant = match (a.dtype, b.dtype, out.dtype) {
                (DType::F32, DType::F32, DType::F32) => {
                    shape(
                        i,
                        p[..4].iter().all(|&v| v == 0),
                        "f32 matmul takes no params",
                    )?;
                    None
                }
                (DType::I8, DType::I8, DType::I32) | (DType::I8, DType::I8, DType::I8) => {
                    let q = Quant {
                        a_zero: p[0] as i32,
                        b_zero: p[1] as i32,
                        out_zero: p[2] as i32,
                        scale: f32::from_bits(p[3]),
                    };
                    shape(i, k <= SNPU_MAX_I8_K, "int8 matmul K above 32768")?;
                    let zp = |z: i32| (-128..=127).contains(&z);
                    shape(
                        i,
                        zp(q.a_zero) && zp(q.b_zero),
                        "input zero points outside int8",
                    )?;
                    if out.dtype == DType::I8 {
                        shape(i, zp(q.out_zero), "output zero point outside int8")?;
                        shape(
                            i,
                            q.scale.is_finite() && q.scale > 0.0,
                            "scale must be positive and finite",
                        )?;
                    } else {
                        shape(
                            i,
                            p[2] == 0 && p[3] == 0,
                            "i32 output takes no requantization",
                        )?;
                    }
                    Some(q)
                }
                _ => {
                    return Err(CmdError::Shape {
                        op: i,
                        why: "matmul dtypes",
                    })
                }
            };
            OpDesc::MatMul { a, b, out, quant }
        }
        SNPU_OP_CONV2D => {
            let (input, filter, out) = (g(0)?, g(1)?, g(3)?);
            let bias = t.get(2).copied().flatten();
            shape(
                i,
                input.rank == 4 && filter.rank == 4 && out.rank == 4,
                "conv2d tensors are rank 4",
            )?;
            let all_f32 = [input, filter, out]
                .iter()
                .chain(bias.iter())
                .all(|t| t.dtype == DType::F32);
            shape(i, all_f32, "conv2d is f32")?;
            let [n, h, w, c] = input.dims;
            let [kh, kw, fc, oc] = filter.dims;
            let stride = [p[0], p[1]];
            let pad = [p[2], p[3], p[4], p[5]];
            shape(
                i,
                stride[0] >= 1 && stride[1] >= 1,
                "stride must be at least 1",
            )?;
            shape(i, fc == c, "filter channels differ from input")?;
            shape(i, kh >= 1 && kw >= 1, "empty filter")?;
            let span_h = u64::from(h) + u64::from(pad[0]) + u64::from(pad[2]);
            let span_w = u64::from(w) + u64::from(pad[1]) + u64::from(pad[3]);
            shape(
                i,
                span_h >= u64::from(kh) && span_w >= u64::from(kw),
                "filter larger than padded input",
            )?;
            // Every operand is at least 1 (zero dims and strides are refused
            // above), so these are exact; products are checked.
            let oh = (span_h - u64::from(kh)) / u64::from(stride[0]) + 1;
            let ow = (span_w - u64::from(kw)) / u64::from(stride[1]) + 1;
            shape(
                i,
                oh == u64::from(out.dims[1])
                    && ow == u64::from(out.dims[2])
                    && out.dims[0] == n
                    && out.dims[3] == oc,
                "output shape does not match input, filter, stride and padding",
            )?;
            if let Some(b) = &bias {
                shape(i, b.rank == 1 && b.dims[0] == oc, "bias must be [OC]")?;
            }
            let mul = |a: u64, b: u64| a.checked_mul(b);
            let patches = mul(u64::from(n), oh).and_then(|v| mul(v, ow));
            let patch = mul(u64::from(kh), u64::from(kw)).and_then(|v| mul(v, u64::from(c)));
            let cells = patches.zip(patch).and_then(|(a, b)| mul(a, b));
            shape(
                i,
                cells.is_some_and(|v| v <= SNPU_MAX_ELEMS),
                "conv2d patch matrix too large",
            )?;
            shape(
                i,
                cells
                    .and_then(|v| mul(v, u64::from(oc)))
                    .is_some_and(|v| v <= SNPU_MAX_MACS),
                "conv2d too large",
            )?;
            out_dense(i, 3, &out)?;
            OpDesc::Conv2d {
                input,
                filter,
                bias,
                out,
                stride,
                pad,
            }
        }
        _ => return Err(CmdError::Opcode { op: i, opcode }),
    })
}

impl Program {
    /// The work of the whole job: the sum of its ops' [`OpDesc::cost`].
    pub fn cost(&self) -> u64 {
        self.ops
            .iter()
            .fold(0u64, |a, op| a.saturating_add(op.cost()))
    }

    /// Working memory of the whole job: ops run one after another and free
    /// their arrays, so it is the largest op's [`OpDesc::work_bytes`].
    pub fn work_bytes(&self) -> u64 {
        self.ops.iter().map(OpDesc::work_bytes).max().unwrap_or(0)
    }

    /// Checks every tensor against the job's buffers: `bos[i]` is the size
    /// and `VIRTIO_ACCEL_ACCESS_*` of buffer index `i`.
    pub fn check_bounds(&self, bos: &[(u64, u32)]) -> Result<(), CmdError> {
        for (i, op) in self.ops.iter().enumerate() {
            let (ins, out) = op.tensors();
            let all = ins
                .into_iter()
                .map(|t| (t, VIRTIO_ACCEL_ACCESS_READ, "read"))
                .chain(out.map(|t| (t, VIRTIO_ACCEL_ACCESS_WRITE, "write")));
            for (slot, (t, need, name)) in all.enumerate() {
                let &(size, access) = bos.get(t.bo_index as usize).ok_or(CmdError::BoIndex {
                    op: i,
                    tensor: slot,
                    index: t.bo_index,
                    count: bos.len(),
                })?;
                if access & need == 0 {
                    return Err(CmdError::Access {
                        op: i,
                        tensor: slot,
                        need: name,
                    });
                }
                // A range that cannot be computed is refused, never skipped.
                let (start, end) = t.byte_range().ok_or(CmdError::Overflow {
                    op: i,
                    tensor: slot,
                })?;
                if end > size {
                    return Err(CmdError::OutOfBounds {
                        op: i,
                        tensor: slot,
                        start,
                        end,
                        size,
                    });
                }
            }
        }
        Ok(())
    }

    /// Encodes the program as a command stream.
    pub fn encode(&self) -> Vec<u8> {
        let hdr = CmdHdr {
            magic: SNPU_MAGIC.into(),
            version: SNPU_VERSION.into(),
            nr_ops: (self.ops.len() as u16).into(),
            ..Default::default()
        };
        let mut v = hdr.as_bytes().to_vec();
        for op in &self.ops {
            v.extend_from_slice(encode_op(op).as_bytes());
        }
        v
    }
}

fn encode_op(op: &OpDesc) -> Op {
    let mut raw = Op::default();
    let unused = Tensor {
        bo_index: SNPU_NO_TENSOR.into(),
        ..Default::default()
    };
    raw.tensors = [unused; 4];
    let set = |raw: &mut Op, ts: &[Option<&TensorDesc>]| {
        for (s, t) in ts.iter().enumerate() {
            if let Some(t) = t {
                raw.tensors[s] = t.to_wire();
            }
        }
    };
    let (code, params): (u16, [u32; 8]) = match op {
        OpDesc::Nop => (SNPU_OP_NOP, [0; 8]),
        OpDesc::Copy { src, dst } => {
            set(&mut raw, &[Some(src), Some(dst)]);
            (SNPU_OP_COPY, [0; 8])
        }
        OpDesc::Add { a, b, out } | OpDesc::Mul { a, b, out } => {
            set(&mut raw, &[Some(a), Some(b), Some(out)]);
            let c = if matches!(op, OpDesc::Add { .. }) {
                SNPU_OP_ADD
            } else {
                SNPU_OP_MUL
            };
            (c, [0; 8])
        }
        OpDesc::Relu { input, out } | OpDesc::Softmax { input, out } => {
            set(&mut raw, &[Some(input), Some(out)]);
            let c = if matches!(op, OpDesc::Relu { .. }) {
                SNPU_OP_RELU
            } else {
                SNPU_OP_SOFTMAX
            };
            (c, [0; 8])
        }
        OpDesc::MatMul { a, b, out, quant } => {
            set(&mut raw, &[Some(a), Some(b), Some(out)]);
            let mut p = [0u32; 8];
            if let Some(q) = quant {
                p[0] = q.a_zero as u32;
                p[1] = q.b_zero as u32;
                if out.dtype == DType::I8 {
                    p[2] = q.out_zero as u32;
                    p[3] = q.scale.to_bits();
                }
            }
            (SNPU_OP_MATMUL, p)
        }
        OpDesc::Conv2d {
            input,
            filter,
            bias,
            out,
            stride,
            pad,
        } => {
            set(
                &mut raw,
                &[Some(input), Some(filter), bias.as_ref(), Some(out)],
            );
            let p = [stride[0], stride[1], pad[0], pad[1], pad[2], pad[3], 0, 0];
            (SNPU_OP_CONV2D, p)
        }
    };
    raw.opcode = code.into();
    for (d, s) in raw.params.iter_mut().zip(params) {
        *d = s.into();
    }
    raw
}
