//! The command stream's wire layout: header, tensor and op records.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

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
