//! Why a command stream is refused.

use super::SNPU_MAX_OPS;

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
