//! Command-stream format of the built-in software NPU (spec appendix A).
//!
//! A command stream is a [`CmdHdr`] followed by `nr_ops` fixed-size [`Op`]
//! records. Tensors name a buffer by its index in the job's buffer list (not
//! by handle), so a guest kernel can translate handles without rewriting the
//! stream. [`parse`] checks everything that can be checked without the
//! buffers; [`Program::check_bounds`] checks every access against the job's
//! buffers before anything runs.

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
pub const SNPU_OP_CONV: u16 = 8;
pub const SNPU_OP_MAXPOOL: u16 = 9;
pub const SNPU_OP_AVGPOOL: u16 = 10;
pub const SNPU_OP_CLIP: u16 = 11;
pub const SNPU_OP_SIGMOID: u16 = 12;
pub const SNPU_OP_LRN: u16 = 13;
/// Bitmask of supported opcodes, as reported in `RespCaps::ops`: bit n is
/// opcode n.
pub const SNPU_OPS_ALL: u64 = (1 << 14) - 1;

/// CONV flag: the output goes through max(·, 0).
pub const SNPU_CONV_F_RELU: u16 = 1;
/// AVGPOOL flag: padding positions count in the divisor.
pub const SNPU_POOL_F_COUNT_PAD: u16 = 1;
/// Largest element count of one block of CONV's patch matrix (unless one
/// patch alone is larger): the patch matrix is built a block of output
/// pixels at a time.
pub const SNPU_CONV_PATCH_ELEMS: u64 = 1 << 20;
/// Largest pooling window (KH·KW) and LRN size: the elements one output
/// element reads, which one step of the software NPU computes whole.
pub const SNPU_MAX_WINDOW: u64 = 1 << 18;

pub const SNPU_DTYPE_F32: u8 = 1;
pub const SNPU_DTYPE_I8: u8 = 2;
pub const SNPU_DTYPE_I32: u8 = 3;

mod encode;
mod error;
mod layout;
mod op;
mod tensor;
mod validate;
mod validate_nn;

pub use error::CmdError;
pub use layout::{CmdHdr, Op, Tensor};
pub use op::{conv_block_cols, conv_patch_rows, ConvGeom, OpDesc, PoolGeom, Quant};
pub use tensor::{DType, TensorDesc};
pub use validate::parse;

use crate::wire::{VIRTIO_ACCEL_ACCESS_READ, VIRTIO_ACCEL_ACCESS_WRITE};

/// A parsed and validated command stream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Program {
    pub ops: Vec<OpDesc>,
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
}
