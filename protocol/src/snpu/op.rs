//! Validated operations: what each reads and writes, its working memory
//! and its cost.

use super::tensor::TensorDesc;
use super::{SNPU_CONV_PATCH_ELEMS, SNPU_SCRATCH_BYTES};

/// Requantization of an int8 matmul: `out = clamp(round(acc * scale) +
/// out_zero, -128, 127)` where `acc = Σ (a - a_zero)(b - b_zero)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quant {
    pub a_zero: i32,
    pub b_zero: i32,
    pub out_zero: i32,
    pub scale: f32,
}

/// Geometry of a CONV: per axis (height, width) stride and dilation, and
/// padding top, left, bottom, right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub stride: [u32; 2],
    pub pad: [u32; 4],
    pub dilation: [u32; 2],
}

/// Geometry of a pooling window: kernel and stride per axis (height,
/// width), padding top, left, bottom, right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeom {
    pub kernel: [u32; 2],
    pub stride: [u32; 2],
    pub pad: [u32; 4],
}

/// Columns (output pixels) of one block of CONV's patch matrix, whose rows
/// are the `kg` = C/G·KH·KW elements of one patch: at most
/// [`SNPU_CONV_PATCH_ELEMS`] elements a block, at least one column.
pub fn conv_block_cols(kg: u64, pixels: u64) -> u64 {
    pixels.min((SNPU_CONV_PATCH_ELEMS / kg.max(1)).max(1))
}

/// Rows of CONV's patch matrix: the `C/G · KH · KW` elements of a filter
/// `[OC, C/G, KH, KW]`. Saturates.
pub fn conv_patch_rows(filter: &TensorDesc) -> u64 {
    filter.dims[1..]
        .iter()
        .fold(1u64, |a, &d| a.saturating_mul(u64::from(d)))
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
    /// NCHW input, `[OC, C/G, KH, KW]` filter (G groups, implied by the
    /// shapes), optional `[OC]` bias, `[N, OC, OH, OW]` output; the output
    /// through max(·, 0) if `relu`.
    Conv {
        input: TensorDesc,
        filter: TensorDesc,
        bias: Option<TensorDesc>,
        out: TensorDesc,
        geom: ConvGeom,
        relu: bool,
    },
    /// NCHW max over each window's elements inside the input.
    MaxPool {
        input: TensorDesc,
        out: TensorDesc,
        geom: PoolGeom,
    },
    /// NCHW mean over each window's elements inside the input, or, with
    /// `count_pad`, their sum divided by the window's positions inside the
    /// padded input.
    AvgPool {
        input: TensorDesc,
        out: TensorDesc,
        geom: PoolGeom,
        count_pad: bool,
    },
    /// `min(max(x, min), max)`.
    Clip {
        input: TensorDesc,
        out: TensorDesc,
        min: f32,
        max: f32,
    },
    /// `1 / (1 + exp(-x))`.
    Sigmoid {
        input: TensorDesc,
        out: TensorDesc,
    },
    /// NCHW local response normalization across channels:
    /// `x / (bias + alpha / size · Σ x²)^beta`, the sum over channels
    /// `c - (size-1)/2 ..= c + size/2` that exist.
    Lrn {
        input: TensorDesc,
        out: TensorDesc,
        size: u32,
        alpha: f32,
        beta: f32,
        bias: f32,
    },
}

impl OpDesc {
    /// Tensors the op reads, then the one it writes.
    pub fn tensors(&self) -> (Vec<&TensorDesc>, Option<&TensorDesc>) {
        match self {
            OpDesc::Nop => (vec![], None),
            OpDesc::Copy { src, dst } => (vec![src], Some(dst)),
            OpDesc::Add { a, b, out } | OpDesc::Mul { a, b, out } => (vec![a, b], Some(out)),
            OpDesc::Relu { input, out }
            | OpDesc::Softmax { input, out }
            | OpDesc::MaxPool { input, out, .. }
            | OpDesc::AvgPool { input, out, .. }
            | OpDesc::Clip { input, out, .. }
            | OpDesc::Sigmoid { input, out }
            | OpDesc::Lrn { input, out, .. } => (vec![input], Some(out)),
            OpDesc::MatMul { a, b, out, .. } => (vec![a, b], Some(out)),
            OpDesc::Conv2d {
                input,
                filter,
                bias,
                out,
                ..
            }
            | OpDesc::Conv {
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
            OpDesc::Conv {
                input,
                filter,
                bias,
                out,
                ..
            } => {
                let kg = conv_patch_rows(filter);
                let pixels = u64::from(out.dims[2]).saturating_mul(u64::from(out.dims[3]));
                sum(&[
                    f(input.elems()),
                    f(filter.elems()),
                    f(bias.map_or(0, |b| b.elems())),
                    f(out.elems()),
                    f(kg.saturating_mul(conv_block_cols(kg, pixels))),
                ])
            }
            OpDesc::MaxPool { input, out, .. }
            | OpDesc::AvgPool { input, out, .. }
            | OpDesc::Lrn { input, out, .. } => sum(&[f(input.elems()), f(out.elems())]),
            OpDesc::Clip { input, .. } | OpDesc::Sigmoid { input, .. } => f(input.elems()),
        };
        arrays.saturating_add(SNPU_SCRATCH_BYTES)
    }
}

impl OpDesc {
    /// The op's work: elements of its tensors plus its multiply-accumulates
    /// (MATMUL M·K·N, CONV2D N·OH·OW·OC·KH·KW·C, CONV E(out)·C/G·KH·KW),
    /// and the window visits of pooling (E(out)·KH·KW) and LRN
    /// (E(out)·size). Saturates.
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
            OpDesc::Conv { filter, out, .. } => out.elems().saturating_mul(conv_patch_rows(filter)),
            OpDesc::MaxPool { out, geom, .. } | OpDesc::AvgPool { out, geom, .. } => out
                .elems()
                .saturating_mul(u64::from(geom.kernel[0]))
                .saturating_mul(u64::from(geom.kernel[1])),
            OpDesc::Lrn { out, size, .. } => out.elems().saturating_mul(u64::from(*size)),
            _ => 0,
        };
        elems.saturating_add(macs)
    }
}
