//! The software NPU's compute kernels and the helpers of their steps: the
//! tiled GEMM, int8 requantization, broadcast strides, conv2d shapes.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, ArrayView2, ArrayViewMut2};
use virtio_accel_protocol::snpu::{Quant, TensorDesc};

use super::exec::Tile;
use super::ExecError;

fn failed(what: &str) -> ExecError {
    ExecError::Failed(format!("{what} outside its array"))
}

fn shape_err<E: std::fmt::Display>(e: E) -> ExecError {
    ExecError::Failed(e.to_string())
}

/// A result array being zeroed up to its length.
pub(super) trait Grow {
    fn filled(&self) -> usize;
    fn grow_to(&mut self, len: usize);
}

impl<T: Clone + Default> Grow for Vec<T> {
    fn filled(&self) -> usize {
        self.len()
    }
    /// Within the reserved room: no reallocation.
    fn grow_to(&mut self, len: usize) {
        self.resize(len, T::default());
    }
}

/// Conv2d's patch matrix shape: output pixels × KH·KW·C.
pub(super) fn conv_rows_cols(filter: &TensorDesc, out: &TensorDesc) -> (usize, usize) {
    let [kh, kw, c, _] = filter.dims.map(|d| d as usize);
    let [n, oh, ow, _] = out.dims.map(|d| d as usize);
    (n * oh * ow, kh * kw * c)
}

/// Strides into the collapsed array of `t` (see `io::collapsed`), aligned to
/// the right of `out`'s axes, with 0 on broadcast axes.
pub(super) fn broadcast_strides(t: &TensorDesc, out: &TensorDesc) -> [usize; 4] {
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

/// `clamp(round_half_even(acc × scale) + out_zero, -128, 127)`.
pub fn requantize(acc: i32, q: &Quant) -> i8 {
    let v = (f64::from(acc) * f64::from(q.scale)).round_ties_even() + f64::from(q.out_zero);
    v.clamp(-128.0, 127.0) as i8
}

/// A GEMM `C(M×N) = A(M×K) · B(K×N)` in tiles, K innermost so a tile of C
/// is finished before the next starts.
///
/// int8: `(a - a_zero)(b - b_zero)` is at most 255² in magnitude, so a block
/// of [`I8_K_BLOCK`] products sums below 2^24: the f32 GEMM computes each
/// block exactly into C, and the blocks add up in i32 (exact too:
/// validation caps K at `SNPU_MAX_I8_K`).
pub(super) struct Gemm {
    dims: (usize, usize, usize),
    tile: (usize, usize, usize),
    counts: (usize, usize, usize),
    next: usize,
    int8: bool,
}

const I8_K_BLOCK: usize = 256;

impl Gemm {
    pub(super) fn plan(m: usize, k: usize, n: usize, tile: &Tile, quant: Option<Quant>) -> Gemm {
        let int8 = quant.is_some();
        let (mb, kb, nb) = if tile.macs == u64::MAX {
            (m, if int8 { k.min(I8_K_BLOCK) } else { k }, n)
        } else {
            // Deep K panels and wide N keep matrixmultiply's packing a
            // small part of each tile's work; M takes what is left.
            let kb = k.min(256);
            let mut nb = n.min(512);
            let budget = usize::try_from(tile.macs).unwrap_or(usize::MAX);
            let mb = (budget / (kb * nb).max(1)).clamp(1, m.max(1));
            if mb == 1 && kb * nb > budget {
                nb = (budget / kb.max(1)).clamp(1, n.max(1));
            }
            (mb, kb, nb)
        };
        let count = |d: usize, b: usize| d.div_ceil(b.max(1));
        Gemm {
            dims: (m, k, n),
            tile: (mb, kb, nb),
            counts: (count(m, mb), count(k, kb), count(n, nb)),
            next: 0,
            int8,
        }
    }

    /// Computes the next tile; true once C is complete.
    pub(super) fn step(
        &mut self,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        acc: &mut [i32],
    ) -> Result<bool, ExecError> {
        let (m, k, n) = self.dims;
        let va = ArrayView2::from_shape((m, k), a).map_err(shape_err)?;
        let vb = ArrayView2::from_shape((k, n), b).map_err(shape_err)?;
        let mut vc = ArrayViewMut2::from_shape((m, n), &mut *c).map_err(shape_err)?;
        let (m0, m1, n0, n1) = self.tile_f32(&va, &vb, &mut vc)?;
        if self.int8 {
            for i in m0..m1 {
                let row = i * n;
                let (dst, src) = (
                    acc.get_mut(row + n0..row + n1)
                        .ok_or_else(|| failed("accumulator"))?,
                    c.get(row + n0..row + n1)
                        .ok_or_else(|| failed("accumulator"))?,
                );
                for (x, p) in dst.iter_mut().zip(src) {
                    *x = x.wrapping_add(*p as i32);
                }
            }
        }
        self.next += 1;
        Ok(self.done())
    }

    /// Computes the next tile of an f32 GEMM over views of the planned
    /// shapes; true once C is complete.
    pub(super) fn step_views(
        &mut self,
        a: &ArrayView2<'_, f32>,
        b: &ArrayView2<'_, f32>,
        c: &mut ArrayViewMut2<'_, f32>,
    ) -> Result<bool, ExecError> {
        self.tile_f32(a, b, c)?;
        self.next += 1;
        Ok(self.done())
    }

    fn done(&self) -> bool {
        let (mt, kt, nt) = self.counts;
        self.next >= mt * kt * nt
    }

    /// The tile `next` of C (rows m0..m1, columns n0..n1), one K panel.
    fn tile_f32(
        &self,
        a: &ArrayView2<'_, f32>,
        b: &ArrayView2<'_, f32>,
        c: &mut ArrayViewMut2<'_, f32>,
    ) -> Result<(usize, usize, usize, usize), ExecError> {
        let (m, k, n) = self.dims;
        if a.dim() != (m, k) || b.dim() != (k, n) || c.dim() != (m, n) {
            return Err(ExecError::Failed("gemm operands of another shape".into()));
        }
        let (mb, kb, nb) = self.tile;
        let (_, kt, nt) = self.counts;
        let (mi, ni, ki) = (self.next / (nt * kt), (self.next / kt) % nt, self.next % kt);
        let (m0, k0, n0) = (mi * mb, ki * kb, ni * nb);
        let (m1, k1, n1) = ((m0 + mb).min(m), (k0 + kb).min(k), (n0 + nb).min(n));
        let beta = if k0 == 0 || self.int8 { 0.0 } else { 1.0 };
        general_mat_mul(
            1.0,
            &a.slice(s![m0..m1, k0..k1]),
            &b.slice(s![k0..k1, n0..n1]),
            beta,
            &mut c.slice_mut(s![m0..m1, n0..n1]),
        );
        Ok((m0, m1, n0, n1))
    }
}
