//! The ops' compute steps that need more than a few lines: conv2d's patch
//! matrix, softmax, and broadcast ADD/MUL.

use virtio_accel_protocol::snpu::{OpDesc, TensorDesc};

use super::{chunk, failed, range, OpRun, Phase, Tile};
use crate::backend::sim::kernels::{broadcast_strides, conv_rows_cols, Gemm};
use crate::backend::sim::ExecError;

impl OpRun {
    /// Conv2d's im2col, some rows at a time: one row per output pixel,
    /// KH·KW·C columns, zero padding.
    pub(super) fn im2col(&mut self, tile: &Tile) -> Result<(), ExecError> {
        let OpDesc::Conv2d {
            input,
            filter,
            out,
            stride,
            pad,
            ..
        } = self.op
        else {
            return Err(ExecError::Failed("im2col of another op".into()));
        };
        let [_, h, w, c] = input.dims.map(|d| d as usize);
        let [_, kw, _, oc] = filter.dims.map(|d| d as usize);
        let [_, oh, ow, _] = out.dims.map(|d| d as usize);
        let (sh, sw) = (stride[0] as usize, stride[1] as usize);
        let (pt, pl) = (pad[0] as usize, pad[1] as usize);
        let (rows, cols) = conv_rows_cols(&filter, &out);
        let x = self.arrays.first().ok_or_else(|| failed("conv2d input"))?;
        let patches = &mut self.patches;
        // Patch elements [from, to) of row r; padding stays zero.
        let mut fill = |r: usize, from: usize, to: usize| -> Result<(), ExecError> {
            let (b, oy, ox) = (r / (oh * ow), (r / ow) % oh, r % ow);
            let mut e = from;
            while e < to {
                let (k, ch) = (e / c, e % c);
                let run = (c - ch).min(to - e);
                let (ky, kx) = (k / kw, k % kw);
                let iy = (oy * sh + ky).wrapping_sub(pt);
                let ix = (ox * sw + kx).wrapping_sub(pl);
                if iy < h && ix < w {
                    let s = ((b * h + iy) * w + ix) * c + ch;
                    let d = r * cols + e;
                    let src = x.get(s..s + run).ok_or_else(|| failed("conv2d input"))?;
                    patches
                        .get_mut(d..d + run)
                        .ok_or_else(|| failed("conv2d patch"))?
                        .copy_from_slice(src);
                }
                e += run;
            }
            Ok(())
        };
        if self.sub == 0 && cols as u64 <= tile.elems {
            // Whole rows.
            let n = chunk(self.pos, rows as u64, tile.elems / cols.max(1) as u64);
            for r in range(self.pos, n) {
                fill(r, 0, cols)?;
            }
            self.pos += n;
        } else {
            // Part of a row longer than a tile.
            let from = self.sub as usize;
            let to =
                cols.min(from.saturating_add(usize::try_from(tile.elems).unwrap_or(usize::MAX)));
            fill(self.pos as usize, from, to)?;
            self.sub = to as u64;
            if to == cols {
                self.sub = 0;
                self.pos += 1;
            }
        }
        if self.pos == rows as u64 {
            // The input is in the patches now.
            if let Some(x) = self.arrays.first_mut() {
                *x = Vec::new();
            }
            self.gemm = Some(Gemm::plan(rows, cols, oc, tile, None));
            self.next_phase(Phase::Compute);
        }
        Ok(())
    }

    /// Softmax over the last axis: whole rows a tile at a time, or a row
    /// longer than a tile in three passes (max, exponentials and their sum,
    /// division) of a tile each. Either way each row is summed in the same
    /// order, so the results are the same.
    pub(super) fn softmax(&mut self, input: &TensorDesc, tile: &Tile) -> Result<(), ExecError> {
        let row = input.dims().last().map_or(1, |&d| u64::from(d));
        let rows = input.elems() / row;
        let v = self.arrays.first_mut().ok_or_else(|| failed("softmax"))?;
        if self.sub == 0 && self.pass == 0 && row <= tile.elems {
            let n = chunk(self.pos, rows, tile.elems / row);
            let part = v
                .get_mut(range(self.pos * row, n * row))
                .ok_or_else(|| failed("softmax"))?;
            for r in part.chunks_mut(row as usize) {
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
            self.pos += n;
            return Ok(());
        }
        let n = chunk(self.sub, row, tile.elems);
        let part = v
            .get_mut(range(self.pos * row + self.sub, n))
            .ok_or_else(|| failed("softmax"))?;
        match self.pass {
            0 => self.max = part.iter().copied().fold(self.max, f32::max),
            1 => {
                for x in part.iter_mut() {
                    *x = (*x - self.max).exp();
                    self.sum += *x;
                }
            }
            _ => part.iter_mut().for_each(|x| *x /= self.sum),
        }
        self.sub += n;
        if self.sub == row {
            self.sub = 0;
            self.pass += 1;
            if self.pass == 3 {
                (self.pass, self.max, self.sum) = (0, f32::NEG_INFINITY, 0.0);
                self.pos += 1;
            }
        }
        Ok(())
    }

    pub(super) fn binary(
        &mut self,
        a: &TensorDesc,
        b: &TensorDesc,
        out: &TensorDesc,
        tile: &Tile,
        f: impl Fn(f32, f32) -> f32,
    ) -> Result<(), ExecError> {
        let total = out.elems();
        let n = chunk(self.pos, total, tile.elems);
        let (va, vb) = match self.arrays.as_slice() {
            [va, vb] => (va, vb),
            _ => return Err(failed("add/mul input")),
        };
        let res = self
            .out
            .get_mut(range(self.pos, n))
            .ok_or_else(|| failed("add/mul result"))?;
        if va.len() as u64 == total && vb.len() as u64 == total {
            let at = range(self.pos, n);
            let (xa, xb) = (
                va.get(at.clone()).ok_or_else(|| failed("add/mul input"))?,
                vb.get(at).ok_or_else(|| failed("add/mul input"))?,
            );
            for ((r, &x), &y) in res.iter_mut().zip(xa).zip(xb) {
                *r = f(x, y);
            }
        } else {
            let (sa, sb) = (broadcast_strides(a, out), broadcast_strides(b, out));
            let r = out.rank;
            // The output index of the chunk's first element.
            let mut idx = [0usize; 4];
            let mut rem = self.pos as usize;
            for k in (0..r).rev() {
                let d = out.dims[k] as usize;
                idx[k] = rem % d;
                rem /= d;
            }
            for slot in res.iter_mut() {
                let (ia, ib) = (0..r).fold((0, 0), |(ia, ib), k| {
                    (ia + idx[k] * sa[k], ib + idx[k] * sb[k])
                });
                *slot = f(
                    *va.get(ia).ok_or_else(|| failed("broadcast index"))?,
                    *vb.get(ib).ok_or_else(|| failed("broadcast index"))?,
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
        self.pos += n;
        if self.pos == total {
            self.arrays.clear();
            self.next_phase(Phase::Store);
        }
        Ok(())
    }
}
