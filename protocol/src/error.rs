//! Why a byte buffer is not a valid message.

use crate::wire::*;

/// A precise reason for rejecting a message. Decoding never panics; every
/// malformed input maps to one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message too short: {what} needs {need} bytes, {have} available")]
    Short {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{extra} trailing bytes after {what}")]
    Trailing { what: &'static str, extra: usize },
    #[error("unknown message type {0:#x}")]
    UnknownType(u32),
    #[error("reserved field {field} is nonzero")]
    Reserved { field: &'static str },
    #[error("unknown flags {flags:#x} in {field}")]
    UnknownFlags { field: &'static str, flags: u32 },
    #[error("{field} is {count}, above the limit of {limit}")]
    TooMany {
        field: &'static str,
        count: u64,
        limit: u64,
    },
    #[error("length overflow computing {field}")]
    Overflow { field: &'static str },
    #[error("invalid value {value:#x} for {field}")]
    InvalidValue { field: &'static str, value: u64 },
}

impl DecodeError {
    /// The response status a device answers this error with.
    pub fn status(&self) -> u32 {
        match self {
            DecodeError::UnknownType(_) => VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED,
            DecodeError::TooMany { .. } | DecodeError::Overflow { .. } => {
                VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE
            }
            _ => VIRTIO_ACCEL_RESP_ERR_INVALID,
        }
    }
}
