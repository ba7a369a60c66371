//! Moving tensors between guest buffers and the software NPU's working
//! arrays, a bounded range of elements at a time, so that a kernel can stop
//! between any two pieces and resume later.

use virtio_accel_protocol::snpu::{TensorDesc, SNPU_STAGING_BYTES};

use super::ExecError;
use crate::memory::{BoMem, MemError};

pub(super) fn mem_err(e: MemError) -> ExecError {
    ExecError::OutOfRange(e.to_string())
}

/// A zeroed working array of `n` elements, or `NoMemory`.
pub(super) fn alloc<T: Clone + Default>(n: u64) -> Result<Vec<T>, ExecError> {
    let n = usize::try_from(n).map_err(|_| ExecError::NoMemory)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| ExecError::NoMemory)?;
    v.resize(n, T::default());
    Ok(v)
}

/// Room for `n` elements, none of them there yet, or `NoMemory`. The pages
/// are touched as the array is filled, a step at a time, not here.
pub(super) fn reserve<T>(n: u64) -> Result<Vec<T>, ExecError> {
    let n = usize::try_from(n).map_err(|_| ExecError::NoMemory)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| ExecError::NoMemory)?;
    Ok(v)
}

/// The staging buffer every gather and store goes through.
pub(super) fn staging() -> Result<Vec<u8>, ExecError> {
    alloc(SNPU_STAGING_BYTES)
}

pub(super) fn bo<'a, 'm>(bos: &'a [BoMem<'m>], t: &TensorDesc) -> Result<&'a BoMem<'m>, ExecError> {
    bos.get(t.bo_index as usize)
        .ok_or_else(|| ExecError::OutOfRange(format!("buffer index {}", t.bo_index)))
}

/// `t` with its broadcast axes (stride 0) reduced to one element: the
/// distinct elements the tensor holds.
pub(super) fn collapsed(t: &TensorDesc) -> TensorDesc {
    let mut c = *t;
    for k in 0..t.rank {
        if t.strides[k] == 0 {
            c.dims[k] = 1;
        }
    }
    c
}

/// A run of elements: `n` elements adjacent in memory from `off`, or, if
/// `repeat`, the one element at `off` seen `n` times (a broadcast axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub off: u64,
    pub n: usize,
    pub repeat: bool,
}

/// Visits elements `[start, start + count)` of `t`, in row-major order, as
/// [`Run`]s. Offsets are computed with checked arithmetic: a validated
/// tensor never overflows, anything else fails the job.
pub(super) fn for_runs(
    t: &TensorDesc,
    start: u64,
    count: u64,
    mut f: impl FnMut(Run) -> Result<(), ExecError>,
) -> Result<(), ExecError> {
    let overflow = || ExecError::OutOfRange("tensor offset overflows".into());
    let r = t.rank;
    let end = start.checked_add(count).ok_or_else(overflow)?;
    if r == 0 || t.dims().contains(&0) || count == 0 || end > t.elems() {
        return if count == 0 { Ok(()) } else { Err(overflow()) };
    }
    let es = t.dtype.size();
    let elem_at = |e: u64| {
        e.checked_mul(es)
            .and_then(|b| t.offset.checked_add(b))
            .ok_or_else(overflow)
    };
    if t.is_dense() {
        // One contiguous byte range.
        let n = usize::try_from(count).map_err(|_| overflow())?;
        return f(Run {
            off: elem_at(start)?,
            n,
            repeat: false,
        });
    }
    let inner = u64::from(t.dims[r - 1]);
    let step = u64::from(t.strides[r - 1]);
    let contiguous = step == 1 || inner == 1;
    let repeat = step == 0 && inner > 1;
    let mut e = start;
    while e < end {
        let (row, col) = (e / inner, e % inner);
        // The element offset of the row's first element.
        let mut rem = row;
        let mut base = 0u64;
        for k in (0..r - 1).rev() {
            let d = u64::from(t.dims[k]);
            base = (rem % d)
                .checked_mul(u64::from(t.strides[k]))
                .and_then(|v| v.checked_add(base))
                .ok_or_else(overflow)?;
            rem /= d;
        }
        let n = (inner - col).min(end - e);
        if contiguous || repeat {
            let at = col.checked_mul(step).and_then(|v| v.checked_add(base));
            f(Run {
                off: elem_at(at.ok_or_else(overflow)?)?,
                n: n as usize,
                repeat,
            })?;
        } else {
            for j in col..col + n {
                let at = j.checked_mul(step).and_then(|v| v.checked_add(base));
                f(Run {
                    off: elem_at(at.ok_or_else(overflow)?)?,
                    n: 1,
                    repeat: false,
                })?;
            }
        }
        e += n;
    }
    Ok(())
}

/// How a gathered element becomes a working value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Conv {
    F32,
    I8,
    /// An int8 value minus a zero point (exact in f32: |v| ≤ 255).
    I8Centered(i32),
}

impl Conv {
    fn apply(self, c: &[u8]) -> f32 {
        match self {
            Conv::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            Conv::I8 => f32::from(c[0] as i8),
            Conv::I8Centered(z) => (i32::from(c[0] as i8) - z) as f32,
        }
    }
}

/// Gathers elements `[start, start + out.len())` of `t` into `out`.
pub(super) fn gather(
    bos: &[BoMem<'_>],
    t: &TensorDesc,
    conv: Conv,
    start: u64,
    out: &mut [f32],
    staging: &mut [u8],
) -> Result<(), ExecError> {
    let m = bo(bos, t)?;
    let es = t.dtype.size() as usize;
    let per = (staging.len() / es).max(1);
    let mut at = 0usize;
    for_runs(t, start, out.len() as u64, |Run { off, n, repeat }| {
        if repeat {
            let buf = staging
                .get_mut(..es)
                .ok_or_else(|| ExecError::Failed("staging buffer too small".into()))?;
            m.read(off, buf).map_err(mem_err)?;
            let v = conv.apply(buf);
            out.get_mut(at..at + n)
                .ok_or_else(|| ExecError::Failed("gather past its array".into()))?
                .fill(v);
            at += n;
            return Ok(());
        }
        let mut done = 0usize;
        while done < n {
            let k = per.min(n - done);
            let buf = staging
                .get_mut(..k * es)
                .ok_or_else(|| ExecError::Failed("staging buffer too small".into()))?;
            m.read(off + (done * es) as u64, buf).map_err(mem_err)?;
            let dst = out
                .get_mut(at..at + k)
                .ok_or_else(|| ExecError::Failed("gather past its array".into()))?;
            for (d, c) in dst.iter_mut().zip(buf.chunks_exact(es)) {
                *d = conv.apply(c);
            }
            at += k;
            done += k;
        }
        Ok(())
    })
}

/// Writes `v` as elements `[start, start + v.len())` of the dense output
/// `t`, converting each value with `to_bytes` into `size` bytes.
pub(super) fn store<T: Copy>(
    bos: &[BoMem<'_>],
    t: &TensorDesc,
    start: u64,
    v: &[T],
    size: usize,
    staging: &mut [u8],
    to_bytes: impl Fn(T, &mut [u8]),
) -> Result<(), ExecError> {
    let m = bo(bos, t)?;
    let chunk = (staging.len() / size).max(1);
    let overflow = || ExecError::OutOfRange("output offset overflows".into());
    let mut off = start
        .checked_mul(size as u64)
        .and_then(|b| t.offset.checked_add(b))
        .ok_or_else(overflow)?;
    for part in v.chunks(chunk) {
        let bytes = staging
            .get_mut(..part.len() * size)
            .ok_or_else(|| ExecError::Failed("staging buffer too small".into()))?;
        for (x, b) in part.iter().zip(bytes.chunks_exact_mut(size)) {
            to_bytes(*x, b);
        }
        m.write(off, bytes).map_err(mem_err)?;
        off += bytes.len() as u64;
    }
    Ok(())
}

/// COPY of elements `[start, start + count)`: buffer to buffer, run by run,
/// with no working array.
pub(super) fn copy(
    bos: &[BoMem<'_>],
    src: &TensorDesc,
    dst: &TensorDesc,
    start: u64,
    count: u64,
) -> Result<(), ExecError> {
    let (s, d) = (bo(bos, src)?, bo(bos, dst)?);
    let es = src.dtype.size();
    let overflow = || ExecError::OutOfRange("copy offset overflows".into());
    let mut at = start
        .checked_mul(es)
        .and_then(|b| dst.offset.checked_add(b))
        .ok_or_else(overflow)?;
    for_runs(src, start, count, |Run { off, n, repeat }| {
        if repeat {
            // One element, replicated through a buffer on the stack (COPY
            // has no working memory).
            let es = es as usize;
            let mut one = [0u8; 4];
            let one = one
                .get_mut(..es)
                .ok_or_else(|| ExecError::Failed("element wider than 4 bytes".into()))?;
            s.read(off, one).map_err(mem_err)?;
            let mut stack = [0u8; 4096];
            let staging = &mut stack[..];
            let per = (staging.len() / es).max(1);
            let mut left = n;
            while left > 0 {
                let k = per.min(left);
                let buf = staging
                    .get_mut(..k * es)
                    .ok_or_else(|| ExecError::Failed("staging buffer too small".into()))?;
                for c in buf.chunks_exact_mut(es) {
                    c.copy_from_slice(one);
                }
                d.write(at, buf).map_err(mem_err)?;
                at += buf.len() as u64;
                left -= k;
            }
            return Ok(());
        }
        let len = n as u64 * es;
        s.copy_to(off, d, at, len as usize).map_err(mem_err)?;
        at += len;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_accel_protocol::snpu::DType;

    fn runs(t: &TensorDesc, start: u64, count: u64) -> Vec<(u64, usize)> {
        let mut v = Vec::new();
        for_runs(t, start, count, |r| {
            v.push((r.off, r.n));
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn runs_resume_mid_row_in_the_same_order() {
        // 3×4 f32, rows 8 elements apart: three runs of four.
        let mut t = TensorDesc::dense(0, DType::F32, 16, &[3, 4]);
        t.strides = [8, 1, 0, 0];
        let whole: Vec<u64> = runs(&t, 0, 12)
            .into_iter()
            .flat_map(|(o, n)| (0..n as u64).map(move |i| o + 4 * i))
            .collect();
        let mut pieces = Vec::new();
        for (s, c) in [(0, 3), (3, 6), (9, 3)] {
            pieces.extend(
                runs(&t, s, c)
                    .into_iter()
                    .flat_map(|(o, n)| (0..n as u64).map(move |i| o + 4 * i)),
            );
        }
        assert_eq!(whole, pieces);
        assert_eq!(whole[4], 16 + 8 * 4, "row 1 starts 8 elements on");
        assert!(for_runs(&t, 10, 3, |_| Ok(())).is_err(), "past the end");
    }

    #[test]
    fn a_broadcast_axis_is_one_repeated_run() {
        let mut t = TensorDesc::dense(0, DType::F32, 8, &[2, 1000]);
        t.strides = [1, 0, 0, 0];
        let mut v = Vec::new();
        for_runs(&t, 500, 1000, |r| {
            v.push(r);
            Ok(())
        })
        .unwrap();
        let run = |off, n| Run {
            off,
            n,
            repeat: true,
        };
        assert_eq!(v, [run(8, 500), run(12, 500)]);
    }
}
