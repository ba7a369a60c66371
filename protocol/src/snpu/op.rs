//! Validated operations: what each reads and writes, its working memory
//! and its cost.

use super::tensor::TensorDesc;
use super::SNPU_SCRATCH_BYTES;

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
