//! Element types and validated tensor descriptors.

use super::layout::Tensor;
use super::{SNPU_DTYPE_F32, SNPU_DTYPE_I32, SNPU_DTYPE_I8, SNPU_MAX_RANK};

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
    pub(super) fn code(self) -> u8 {
        match self {
            DType::F32 => SNPU_DTYPE_F32,
            DType::I8 => SNPU_DTYPE_I8,
            DType::I32 => SNPU_DTYPE_I32,
        }
    }
    pub(super) fn from_code(c: u8) -> Option<DType> {
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

    pub(super) fn to_wire(self) -> Tensor {
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
