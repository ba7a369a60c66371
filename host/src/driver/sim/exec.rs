//! Execution of validated SNPU programs.
//!
//! Inputs are gathered from guest buffers into dense working arrays (the
//! NPU's local memory), computed with `ndarray` (GEMM through
//! matrixmultiply), and outputs written back to the guest buffers through a
//! small staging buffer. COPY moves bytes buffer to buffer without a working
//! array. Every access was bounds-checked, and the working memory bounded
//! ([`OpDesc::work_bytes`]), before the job started. Working arrays are
//! reserved fallibly: an allocation the host cannot make fails the job with
//! [`DriverError::NoMemory`] instead of aborting the daemon.

use std::time::Instant;

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2};
use virtio_accel_protocol::snpu::{DType, OpDesc, Program, Quant, TensorDesc, SNPU_STAGING_BYTES};

use crate::driver::DriverError;
use crate::memory::{BoMem, MemError};

fn mem_err(e: MemError) -> DriverError {
    DriverError::OutOfRange(e.to_string())
}

/// A zeroed working array of `n` elements, or `NoMemory`.
fn alloc<T: Clone + Default>(n: u64) -> Result<Vec<T>, DriverError> {
    let n = usize::try_from(n).map_err(|_| DriverError::NoMemory)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| DriverError::NoMemory)?;
    v.resize(n, T::default());
    Ok(v)
}

/// Runs `program`; returns the number of ops executed.
pub(super) fn run(
    program: &Program,
    bos: &[BoMem<'_>],
    deadline: Instant,
) -> Result<u64, DriverError> {
    for op in &program.ops {
        if Instant::now() > deadline {
            return Err(DriverError::Hang);
        }
        run_op(op, bos)?;
    }
    Ok(program.ops.len() as u64)
}

fn bo<'a, 'm>(bos: &'a [BoMem<'m>], t: &TensorDesc) -> Result<&'a BoMem<'m>, DriverError> {
    bos.get(t.bo_index as usize)
        .ok_or_else(|| DriverError::OutOfRange(format!("buffer index {}", t.bo_index)))
}

/// Visits the element offsets of `t` in row-major order, in runs: calls
/// `f(byte_offset, elements)` for each run of elements adjacent in memory.
/// Offsets are computed with checked arithmetic: a validated tensor never
/// overflows, anything else fails the job.
fn for_runs(
    t: &TensorDesc,
    mut f: impl FnMut(u64, usize) -> Result<(), DriverError>,
) -> Result<(), DriverError> {
    let overflow = || DriverError::OutOfRange("tensor offset overflows".into());
    let r = t.rank;
    if r == 0 || t.dims().contains(&0) {
        return Ok(());
    }
    if t.is_dense() {
        // One contiguous byte range: a single run.
        let n = usize::try_from(t.elems()).map_err(|_| overflow())?;
        return f(t.offset, n);
    }
    let inner = t.dims[r - 1] as usize;
    let contiguous = t.strides[r - 1] == 1 || inner == 1;
    let es = t.dtype.size();
    let elem_at = |e: u64| {
        e.checked_mul(es)
            .and_then(|b| t.offset.checked_add(b))
            .ok_or_else(overflow)
    };
    let mut idx = [0u32; 4];
    loop {
        let mut base = 0u64;
        for (&i, &stride) in idx.iter().zip(&t.strides).take(r - 1) {
            base = u64::from(i)
                .checked_mul(u64::from(stride))
                .and_then(|v| v.checked_add(base))
                .ok_or_else(overflow)?;
        }
        if contiguous {
            f(elem_at(base)?, inner)?;
        } else {
            let step = u64::from(t.strides[r - 1]);
            for i in 0..inner as u64 {
                let e = i
                    .checked_mul(step)
                    .and_then(|v| v.checked_add(base))
                    .ok_or_else(overflow)?;
                f(elem_at(e)?, 1)?;
            }
        }
        // Advance the outer axes (odometer).
        let mut k = r - 1;
        loop {
            if k == 0 {
                return Ok(());
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < t.dims[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

/// Gathers a tensor into a dense row-major array of `T`, converting each
/// element from its bytes; data passes through a staging buffer of
/// [`SNPU_STAGING_BYTES`], so the array is the only allocation its size.
fn gather<T: Copy + Default>(
    bos: &[BoMem<'_>],
    t: &TensorDesc,
    convert: impl Fn(&[u8]) -> T,
) -> Result<Vec<T>, DriverError> {
    let m = bo(bos, t)?;
    let es = t.dtype.size() as usize;
    let mut out = alloc::<T>(t.elems())?;
    let per = (SNPU_STAGING_BYTES as usize / es).max(1);
    let mut staging = alloc::<u8>((per * es) as u64)?;
    let mut at = 0usize;
    for_runs(t, |off, n| {
        let mut done = 0usize;
        while done < n {
            let k = per.min(n - done);
            let buf = &mut staging[..k * es];
            m.read(off + (done * es) as u64, buf).map_err(mem_err)?;
            let dst = out
                .get_mut(at..at + k)
                .ok_or_else(|| DriverError::Failed("gather past its array".into()))?;
            for (d, c) in dst.iter_mut().zip(buf.chunks_exact(es)) {
                *d = convert(c);
            }
            at += k;
            done += k;
        }
        Ok(())
    })?;
    Ok(out)
}

fn gather_f32(bos: &[BoMem<'_>], t: &TensorDesc) -> Result<Vec<f32>, DriverError> {
    gather(bos, t, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// Gathers an int8 tensor as f32 values minus `zero` (exact: |v| ≤ 255).
fn gather_i8_centered(
    bos: &[BoMem<'_>],
    t: &TensorDesc,
    zero: i32,
) -> Result<Vec<f32>, DriverError> {
    gather(bos, t, |c| (i32::from(c[0] as i8) - zero) as f32)
}

/// `t` with its broadcast axes (stride 0) reduced to one element: the
/// distinct elements the tensor holds.
fn collapsed(t: &TensorDesc) -> TensorDesc {
    let mut c = *t;
    for k in 0..t.rank {
        if t.strides[k] == 0 {
            c.dims[k] = 1;
        }
    }
    c
}

/// Writes dense values to an output tensor (validated dense), converting
/// them to bytes through a bounded staging buffer.
fn store<T: Copy>(
    bos: &[BoMem<'_>],
    t: &TensorDesc,
    v: &[T],
    size: usize,
    to_bytes: impl Fn(T, &mut [u8]),
) -> Result<(), DriverError> {
    let m = bo(bos, t)?;
    let chunk = (SNPU_STAGING_BYTES as usize / size).max(1);
    let mut staging = alloc::<u8>((chunk * size) as u64)?;
    let mut off = t.offset;
    for part in v.chunks(chunk) {
        let bytes = &mut staging[..part.len() * size];
        for (x, b) in part.iter().zip(bytes.chunks_exact_mut(size)) {
            to_bytes(*x, b);
        }
        m.write(off, bytes).map_err(mem_err)?;
        off += bytes.len() as u64;
    }
    Ok(())
}

fn store_f32(bos: &[BoMem<'_>], t: &TensorDesc, v: &[f32]) -> Result<(), DriverError> {
    store(bos, t, v, 4, |x, b| b.copy_from_slice(&x.to_le_bytes()))
}

fn run_op(op: &OpDesc, bos: &[BoMem<'_>]) -> Result<(), DriverError> {
    match op {
        OpDesc::Nop => Ok(()),
        OpDesc::Copy { src, dst } => copy(bos, src, dst),
        OpDesc::Add { a, b, out } => binary(bos, a, b, out, |x, y| x + y),
        OpDesc::Mul { a, b, out } => binary(bos, a, b, out, |x, y| x * y),
        OpDesc::Relu { input, out } => match input.dtype {
            DType::F32 => {
                let mut v = gather_f32(bos, input)?;
                v.iter_mut().for_each(|x| *x = x.max(0.0));
                store_f32(bos, out, &v)
            }
            _ => {
                let v = gather(bos, input, |c| (c[0] as i8).max(0) as u8)?;
                store(bos, out, &v, 1, |x, b| b[0] = x)
            }
        },
        OpDesc::Softmax { input, out } => {
            let mut v = gather_f32(bos, input)?;
            let row = input.dims().last().map_or(1, |&d| d as usize);
            for r in v.chunks_mut(row.max(1)) {
                let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for x in r.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                for x in r.iter_mut() {
                    *x /= sum;
                }
            }
            store_f32(bos, out, &v)
        }
        OpDesc::MatMul { a, b, out, quant } => matmul(bos, a, b, out, quant.as_ref()),
        OpDesc::Conv2d {
            input,
            filter,
            bias,
            out,
            stride,
            pad,
        } => conv2d(bos, input, filter, bias.as_ref(), out, *stride, *pad),
    }
}

/// COPY: buffer to buffer, run by run, with no working array.
fn copy(bos: &[BoMem<'_>], src: &TensorDesc, dst: &TensorDesc) -> Result<(), DriverError> {
    let (s, d) = (bo(bos, src)?, bo(bos, dst)?);
    let es = src.dtype.size();
    let mut at = dst.offset;
    for_runs(src, |off, n| {
        let len = n as u64 * es;
        s.copy_to(off, d, at, len as usize).map_err(mem_err)?;
        at += len;
        Ok(())
    })
}

/// Strides into the collapsed array of `t` (see [`collapsed`]), aligned to
/// the right of `out`'s axes, with 0 on broadcast axes.
fn broadcast_strides(t: &TensorDesc, out: &TensorDesc) -> [usize; 4] {
    let mut s = [0usize; 4];
    let mut dense = 1usize;
    // Validation has t.rank <= out.rank; anything else broadcasts nothing.
    let shift = out.rank.saturating_sub(t.rank);
    for k in (0..t.rank.min(4)).rev() {
        let extent = if t.strides[k] == 0 { 1 } else { t.dims[k] };
        if let Some(slot) = s.get_mut(shift + k) {
            *slot = if extent == 1 { 0 } else { dense };
        }
        dense = dense.saturating_mul(extent as usize);
    }
    s
}

fn binary(
    bos: &[BoMem<'_>],
    a: &TensorDesc,
    b: &TensorDesc,
    out: &TensorDesc,
    f: impl Fn(f32, f32) -> f32,
) -> Result<(), DriverError> {
    let (ca, cb) = (collapsed(a), collapsed(b));
    let (va, vb) = (gather_f32(bos, &ca)?, gather_f32(bos, &cb)?);
    let (sa, sb) = (broadcast_strides(a, out), broadcast_strides(b, out));
    let n = out.elems();
    let mut res = alloc::<f32>(n)?;
    if va.len() == res.len() && vb.len() == res.len() {
        for ((r, &x), &y) in res.iter_mut().zip(&va).zip(&vb) {
            *r = f(x, y);
        }
    } else {
        let r = out.rank;
        let mut idx = [0usize; 4];
        let missing = || DriverError::Failed("broadcast index outside its input".into());
        for slot in res.iter_mut() {
            let (ia, ib) = (0..r).fold((0, 0), |(ia, ib), k| {
                (ia + idx[k] * sa[k], ib + idx[k] * sb[k])
            });
            *slot = f(
                *va.get(ia).ok_or_else(missing)?,
                *vb.get(ib).ok_or_else(missing)?,
            );
            for k in (0..r).rev() {
                idx[k] += 1;
                if idx[k] < out.dims[k] as usize {
                    break;
                }
                idx[k] = 0;
            }
        }
    }
    store_f32(bos, out, &res)
}

fn shape_err<E: std::fmt::Display>(e: E) -> DriverError {
    DriverError::Failed(e.to_string())
}

fn matmul(
    bos: &[BoMem<'_>],
    a: &TensorDesc,
    b: &TensorDesc,
    out: &TensorDesc,
    quant: Option<&Quant>,
) -> Result<(), DriverError> {
    let (m, k, n) = (a.dims[0] as usize, a.dims[1] as usize, b.dims[1] as usize);
    let mn = (m as u64).saturating_mul(n as u64);
    match quant {
        None => {
            let va = Array2::from_shape_vec((m, k), gather_f32(bos, a)?).map_err(shape_err)?;
            let vb = Array2::from_shape_vec((k, n), gather_f32(bos, b)?).map_err(shape_err)?;
            let mut c = Array2::from_shape_vec((m, n), alloc::<f32>(mn)?).map_err(shape_err)?;
            general_mat_mul(1.0, &va, &vb, 0.0, &mut c);
            store_f32(bos, out, c.as_slice().unwrap_or(&[]))
        }
        Some(q) => {
            // (a - a_zero)(b - b_zero) is at most 255² in magnitude, so a
            // block of I8_K_BLOCK products sums below 2^24: the f32 GEMM
            // computes each block exactly, and the blocks add up in i32
            // (exact too: validation caps K at SNPU_MAX_I8_K).
            const I8_K_BLOCK: usize = 256;
            let va = Array2::from_shape_vec((m, k), gather_i8_centered(bos, a, q.a_zero)?)
                .map_err(shape_err)?;
            let vb = Array2::from_shape_vec((k, n), gather_i8_centered(bos, b, q.b_zero)?)
                .map_err(shape_err)?;
            let mut part = Array2::from_shape_vec((m, n), alloc::<f32>(mn)?).map_err(shape_err)?;
            let mut acc = alloc::<i32>(mn)?;
            for k0 in (0..k).step_by(I8_K_BLOCK) {
                let k1 = (k0 + I8_K_BLOCK).min(k);
                general_mat_mul(
                    1.0,
                    &va.slice(s![.., k0..k1]),
                    &vb.slice(s![k0..k1, ..]),
                    0.0,
                    &mut part,
                );
                for (x, p) in acc.iter_mut().zip(part.iter()) {
                    *x = x.wrapping_add(*p as i32);
                }
            }
            match out.dtype {
                DType::I32 => store(bos, out, &acc, 4, |x, b| {
                    b.copy_from_slice(&x.to_le_bytes())
                }),
                _ => store(bos, out, &acc, 1, |x, b| b[0] = requantize(x, q) as u8),
            }
        }
    }
}

/// `clamp(round_half_even(acc × scale) + out_zero, -128, 127)`.
pub fn requantize(acc: i32, q: &Quant) -> i8 {
    let v = (f64::from(acc) * f64::from(q.scale)).round_ties_even() + f64::from(q.out_zero);
    v.clamp(-128.0, 127.0) as i8
}

fn conv2d(
    bos: &[BoMem<'_>],
    input: &TensorDesc,
    filter: &TensorDesc,
    bias: Option<&TensorDesc>,
    out: &TensorDesc,
    stride: [u32; 2],
    pad: [u32; 4],
) -> Result<(), DriverError> {
    let [n, h, w, c] = input.dims.map(|d| d as usize);
    let [kh, kw, _, oc] = filter.dims.map(|d| d as usize);
    let [_, oh, ow, _] = out.dims.map(|d| d as usize);
    let (sh, sw) = (stride[0] as usize, stride[1] as usize);
    let (pt, pl) = (pad[0] as usize, pad[1] as usize);
    let x = gather_f32(bos, input)?;
    // im2col: one row per output pixel, KH·KW·C columns, zero padding.
    // Validation bounds rows × cols by SNPU_MAX_ELEMS, so the loops below
    // run at most that many times in all.
    let cols = kh * kw * c;
    let rows = n * oh * ow;
    let mut patches = alloc::<f32>((rows as u64).saturating_mul(cols as u64))?;
    let outside = || DriverError::Failed("conv2d index outside its array".into());
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let base = ((b * oh + oy) * ow + ox) * cols;
                for ky in 0..kh {
                    let iy = (oy * sh + ky).wrapping_sub(pt);
                    if iy >= h {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = (ox * sw + kx).wrapping_sub(pl);
                        if ix >= w {
                            continue;
                        }
                        let s = ((b * h + iy) * w + ix) * c;
                        let d = base + (ky * kw + kx) * c;
                        let src = x.get(s..s + c).ok_or_else(outside)?;
                        patches
                            .get_mut(d..d + c)
                            .ok_or_else(outside)?
                            .copy_from_slice(src);
                    }
                }
            }
        }
    }
    drop(x);
    let p = ArrayView2::from_shape((rows, cols), &patches).map_err(shape_err)?;
    let f = Array2::from_shape_vec((cols, oc), gather_f32(bos, filter)?).map_err(shape_err)?;
    let cells = (rows as u64).saturating_mul(oc as u64);
    let mut y = Array2::from_shape_vec((rows, oc), alloc::<f32>(cells)?).map_err(shape_err)?;
    general_mat_mul(1.0, &p, &f, 0.0, &mut y);
    if let Some(bt) = bias {
        let bv = gather_f32(bos, bt)?;
        for mut r in y.rows_mut() {
            for (v, b) in r.iter_mut().zip(&bv) {
                *v += b;
            }
        }
    }
    store_f32(bos, out, y.as_slice().unwrap_or(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Backing, GuestMem, MemStats};
    use vm_memory::GuestAddress;

    /// Runs one op over buffers of the given initial contents.
    fn run_on(op: OpDesc, init: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let stats = MemStats::default();
        let backings: Vec<Backing> = init
            .iter()
            .enumerate()
            .map(|(i, b)| Backing::new(vec![((i as u64) << 16, b.len() as u32)]))
            .collect();
        let bos: Vec<BoMem<'_>> = backings
            .iter()
            .map(|b| b.resolve(&mem, &stats).unwrap())
            .collect();
        for (bo, data) in bos.iter().zip(init) {
            bo.write(0, data).unwrap();
        }
        let p = Program { ops: vec![op] };
        run(&p, &bos, Instant::now() + std::time::Duration::from_secs(5)).unwrap();
        bos.iter()
            .zip(init)
            .map(|(bo, d)| {
                let mut v = vec![0u8; d.len()];
                bo.read(0, &mut v).unwrap();
                v
            })
            .collect()
    }

    fn f(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn unf(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn t(bo: u32, dt: DType, dims: &[u32]) -> TensorDesc {
        TensorDesc::dense(bo, dt, 0, dims)
    }

    #[test]
    fn add_broadcasts_a_row() {
        let out = run_on(
            OpDesc::Add {
                a: t(0, DType::F32, &[2, 3]),
                b: t(1, DType::F32, &[3]),
                out: t(2, DType::F32, &[2, 3]),
            },
            &[
                f(&[1., 2., 3., 4., 5., 6.]),
                f(&[10., 20., 30.]),
                vec![0; 24],
            ],
        );
        assert_eq!(unf(&out[2]), [11., 22., 33., 14., 25., 36.]);
    }

    #[test]
    fn mul_broadcasts_a_column_through_stride_zero() {
        let mut col = t(1, DType::F32, &[2, 3]);
        col.strides = [1, 0, 0, 0]; // one value per row
        let out = run_on(
            OpDesc::Mul {
                a: t(0, DType::F32, &[2, 3]),
                b: col,
                out: t(2, DType::F32, &[2, 3]),
            },
            &[f(&[1., 2., 3., 4., 5., 6.]), f(&[2., -1.]), vec![0; 24]],
        );
        assert_eq!(unf(&out[2]), [2., 4., 6., -4., -5., -6.]);
    }

    #[test]
    fn relu_int8_and_f32() {
        let out = run_on(
            OpDesc::Relu {
                input: t(0, DType::I8, &[4]),
                out: t(1, DType::I8, &[4]),
            },
            &[vec![0x80, 0xff, 0, 5], vec![9; 4]],
        );
        assert_eq!(out[1], [0, 0, 0, 5]);
        let out = run_on(
            OpDesc::Relu {
                input: t(0, DType::F32, &[3]),
                out: t(0, DType::F32, &[3]),
            },
            &[f(&[-1., 0.5, -0.0])],
        );
        assert_eq!(unf(&out[0]), [0., 0.5, 0.]);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_survive_large_inputs() {
        let out = run_on(
            OpDesc::Softmax {
                input: t(0, DType::F32, &[2, 2]),
                out: t(1, DType::F32, &[2, 2]),
            },
            &[f(&[0., 0., 1000., 0.]), vec![0; 16]],
        );
        let v = unf(&out[1]);
        assert_eq!(&v[..2], &[0.5, 0.5]);
        assert!((v[2] - 1.0).abs() < 1e-6 && v[3] < 1e-6);
    }

    #[test]
    fn matmul_f32_and_strided_transposed_input() {
        // a = [[1,2],[3,4]]; b given transposed in memory via strides.
        let mut bt = t(1, DType::F32, &[2, 2]);
        bt.strides = [1, 2, 0, 0];
        let out = run_on(
            OpDesc::MatMul {
                a: t(0, DType::F32, &[2, 2]),
                b: bt,
                out: t(2, DType::F32, &[2, 2]),
                quant: None,
            },
            // memory of b: [5,7,6,8] read as b[k][n] = mem[k + 2n] -> [[5,6],[7,8]]
            &[f(&[1., 2., 3., 4.]), f(&[5., 7., 6., 8.]), vec![0; 16]],
        );
        assert_eq!(unf(&out[2]), [19., 22., 43., 50.]);
    }

    #[test]
    fn matmul_int8_exact_accumulators_and_requantization() {
        let q = Quant {
            a_zero: -128,
            b_zero: 127,
            out_zero: 0,
            scale: 0.0,
        };
        // K = 3: acc = 3 * (127 - -128) * (-128 - 127) = -195075
        let out = run_on(
            OpDesc::MatMul {
                a: t(0, DType::I8, &[1, 3]),
                b: t(1, DType::I8, &[3, 1]),
                out: t(2, DType::I32, &[1, 1]),
                quant: Some(q),
            },
            &[vec![127; 3], vec![0x80; 3], vec![0; 4]],
        );
        assert_eq!(i32::from_le_bytes(out[2][..4].try_into().unwrap()), -195075);
        let q = Quant {
            a_zero: 0,
            b_zero: 0,
            out_zero: -3,
            scale: 0.5,
        };
        assert_eq!(requantize(5, &q), -1, "2.5 rounds to even 2, plus -3");
        assert_eq!(requantize(7, &q), 1, "3.5 rounds to even 4, plus -3");
        assert_eq!(requantize(1000, &q), 127);
        assert_eq!(requantize(-1000, &q), -128);
    }

    #[test]
    fn matmul_int8_is_exact_across_k_blocks() {
        // K = 1000 spans four f32 blocks; every product is 255 · -255.
        let q = Quant {
            a_zero: -128,
            b_zero: 127,
            out_zero: 0,
            scale: 0.0,
        };
        let out = run_on(
            OpDesc::MatMul {
                a: t(0, DType::I8, &[2, 1000]),
                b: t(1, DType::I8, &[1000, 1]),
                out: t(2, DType::I32, &[2, 1]),
                quant: Some(q),
            },
            &[vec![127; 2000], vec![0x80; 1000], vec![0; 8]],
        );
        for r in 0..2 {
            let v = i32::from_le_bytes(out[2][4 * r..4 * r + 4].try_into().unwrap());
            assert_eq!(v, -65_025_000);
        }
    }

    #[test]
    fn conv2d_with_padding_stride_and_bias() {
        // 1x3x3x1 input 1..9, 2x2 filter of ones, stride 2, pad 1 each side
        // -> 2x2 output of sums of the covered cells, plus bias 0.5.
        let out = run_on(
            OpDesc::Conv2d {
                input: t(0, DType::F32, &[1, 3, 3, 1]),
                filter: t(1, DType::F32, &[2, 2, 1, 1]),
                bias: Some(t(2, DType::F32, &[1])),
                out: t(3, DType::F32, &[1, 2, 2, 1]),
                stride: [2, 2],
                pad: [1, 1, 1, 1],
            },
            &[
                f(&[1., 2., 3., 4., 5., 6., 7., 8., 9.]),
                f(&[1.; 4]),
                f(&[0.5]),
                vec![0; 16],
            ],
        );
        assert_eq!(unf(&out[3]), [1.5, 5.5, 11.5, 28.5]);
    }

    #[test]
    fn copy_gathers_a_strided_source() {
        let mut src = t(0, DType::F32, &[3]);
        src.strides = [2, 0, 0, 0];
        let out = run_on(
            OpDesc::Copy {
                src,
                dst: t(1, DType::F32, &[3]),
            },
            &[f(&[1., 9., 2., 9., 3.]), vec![0; 12]],
        );
        assert_eq!(unf(&out[1]), [1., 2., 3.]);
    }

    #[test]
    fn passed_deadline_stops_before_the_next_op() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let p = Program {
            ops: vec![OpDesc::Nop, OpDesc::Nop],
        };
        assert_eq!(
            run(&p, &[], Instant::now() - std::time::Duration::from_secs(1)),
            Err(DriverError::Hang)
        );
        drop(mem);
    }
}
