//! The steps of the neural-network ops on NCHW tensors: CONV (grouped,
//! dilated, through blocks of its patch matrix and tiled GEMMs), pooling,
//! LRN, and the elementwise CLIP and SIGMOID.

use ndarray::{s, ArrayView2, ArrayViewMut2};
use virtio_accel_protocol::snpu::{conv_block_cols, ConvGeom, OpDesc, PoolGeom, TensorDesc};

use super::{chunk, failed, range, OpRun, Phase, Tile};
use crate::backend::sim::kernels::Gemm;
use crate::backend::sim::ExecError;

fn shape_err<E: std::fmt::Display>(e: E) -> ExecError {
    ExecError::Failed(e.to_string())
}

/// A CONV's shapes, from its validated tensors.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvShape {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oc: usize,
    cg: usize,
    kh: usize,
    kw: usize,
    ow: usize,
    groups: usize,
    /// Output channels per group.
    ocg: usize,
    /// Rows of the patch matrix: C/G · KH · KW.
    kg: usize,
    /// Output pixels per image: OH · OW.
    pixels: usize,
    /// Columns (pixels) of one block of the patch matrix.
    block: usize,
    /// A 1×1 filter at stride 1 without padding reads the input as it is.
    pointwise: bool,
    geom: ConvGeom,
}

impl ConvShape {
    pub(super) fn of(op: &OpDesc) -> Option<ConvShape> {
        let OpDesc::Conv {
            input,
            filter,
            out,
            geom,
            ..
        } = op
        else {
            return None;
        };
        let [n, c, h, w] = input.dims.map(|d| d as usize);
        let [oc, cg, kh, kw] = filter.dims.map(|d| d as usize);
        let [_, _, oh, ow] = out.dims.map(|d| d as usize);
        let groups = c / cg.max(1);
        let kg = cg * kh * kw;
        let pixels = oh * ow;
        let pointwise = kh == 1 && kw == 1 && geom.stride == [1, 1] && geom.pad == [0; 4];
        let block = if pointwise {
            pixels
        } else {
            conv_block_cols(kg as u64, pixels as u64) as usize
        };
        Some(ConvShape {
            n,
            c,
            h,
            w,
            oc,
            cg,
            kh,
            kw,
            ow,
            groups,
            ocg: oc / groups.max(1),
            kg,
            pixels,
            block,
            pointwise,
            geom: *geom,
        })
    }

    /// Elements of the patch-matrix array: none for a pointwise CONV.
    pub(super) fn patch_elems(&self) -> usize {
        if self.pointwise {
            0
        } else {
            self.kg * self.block
        }
    }

    fn blocks_per_image(&self) -> usize {
        self.pixels.div_ceil(self.block.max(1))
    }

    fn blocks(&self) -> u64 {
        (self.n * self.groups * self.blocks_per_image()) as u64
    }

    /// Image, group, first pixel and pixel count of block `b`.
    fn block_at(&self, b: u64) -> (usize, usize, usize, usize) {
        let per = self.blocks_per_image().max(1);
        let b = b as usize;
        let (img, g, k) = (b / (self.groups * per), (b / per) % self.groups, b % per);
        let p0 = k * self.block;
        (img, g, p0, self.block.min(self.pixels - p0))
    }
}

impl OpRun {
    /// Builds the patch matrix of the current block, at most a tile of
    /// elements a step; then plans the block's GEMM.
    pub(super) fn conv_prepare(&mut self, tile: &Tile) -> Result<(), ExecError> {
        let cs = ConvShape::of(&self.op).ok_or_else(|| failed("conv shape"))?;
        let (img, g, p0, cols) = cs.block_at(self.block);
        if !cs.pointwise {
            let total = (cs.kg * cols) as u64;
            let n = chunk(self.pos, total, tile.elems);
            let x = self.arrays.first().ok_or_else(|| failed("conv input"))?;
            let (pt, pl) = (cs.geom.pad[0] as usize, cs.geom.pad[1] as usize);
            let (sh, sw) = (cs.geom.stride[0] as usize, cs.geom.stride[1] as usize);
            let (dh, dw) = (cs.geom.dilation[0] as usize, cs.geom.dilation[1] as usize);
            let mut e = self.pos as usize;
            let end = e + n as usize;
            while e < end {
                let (r, j0) = (e / cols, e % cols);
                let j1 = cols.min(j0 + (end - e));
                let (ci, ky, kx) = (r / (cs.kh * cs.kw), (r / cs.kw) % cs.kh, r % cs.kw);
                let base = (img * cs.c + g * cs.cg + ci) * cs.h * cs.w;
                let plane = x
                    .get(base..base + cs.h * cs.w)
                    .ok_or_else(|| failed("conv input"))?;
                let dst = self
                    .patches
                    .get_mut(r * cols + j0..r * cols + j1)
                    .ok_or_else(|| failed("conv patch"))?;
                let (mut oy, mut ox) = ((p0 + j0) / cs.ow, (p0 + j0) % cs.ow);
                for d in dst {
                    let iy = (oy * sh + ky * dh).wrapping_sub(pt);
                    let ix = (ox * sw + kx * dw).wrapping_sub(pl);
                    *d = if iy < cs.h && ix < cs.w {
                        plane.get(iy * cs.w + ix).copied().unwrap_or(0.0)
                    } else {
                        0.0
                    };
                    ox += 1;
                    if ox == cs.ow {
                        (ox, oy) = (0, oy + 1);
                    }
                }
                e = r * cols + j1;
            }
            self.pos += n;
            if self.pos < total {
                return Ok(());
            }
        }
        self.gemm = Some(Gemm::plan(cs.ocg, cs.kg, cols, tile, None));
        self.next_phase(Phase::Compute);
        Ok(())
    }

    /// One GEMM tile of the current block: `out[img, group's channels,
    /// block's pixels] = filter[group's channels] · patches`.
    pub(super) fn conv_compute(&mut self) -> Result<(), ExecError> {
        let cs = ConvShape::of(&self.op).ok_or_else(|| failed("conv shape"))?;
        let (img, g, p0, cols) = cs.block_at(self.block);
        let gemm = self.gemm.as_mut().ok_or_else(|| failed("gemm"))?;
        let (x, f) = match self.arrays.as_slice() {
            [x, f, ..] => (x, f),
            _ => return Err(failed("conv input")),
        };
        let fv = ArrayView2::from_shape((cs.oc, cs.kg), f.as_slice()).map_err(shape_err)?;
        let a = fv.slice(s![g * cs.ocg..(g + 1) * cs.ocg, ..]);
        let xv;
        let b = if cs.pointwise {
            xv = ArrayView2::from_shape((cs.n * cs.c, cs.pixels), x.as_slice())
                .map_err(shape_err)?;
            let row = img * cs.c + g * cs.cg;
            xv.slice_move(s![row..row + cs.cg, ..])
        } else {
            let p = self
                .patches
                .get(..cs.kg * cols)
                .ok_or_else(|| failed("conv patch"))?;
            ArrayView2::from_shape((cs.kg, cols), p).map_err(shape_err)?
        };
        let mut ov = ArrayViewMut2::from_shape((cs.n * cs.oc, cs.pixels), self.out.as_mut_slice())
            .map_err(shape_err)?;
        let row = img * cs.oc + g * cs.ocg;
        let mut c = ov.slice_mut(s![row..row + cs.ocg, p0..p0 + cols]);
        if gemm.step_views(&a, &b, &mut c)? {
            self.block += 1;
            self.next_phase(if self.block < cs.blocks() {
                Phase::Prepare
            } else {
                Phase::Store
            });
        }
        Ok(())
    }

    /// Before a range of CONV's output is stored: the bias of each
    /// element's channel, then max(·, 0) if asked.
    pub(super) fn conv_finish(
        &mut self,
        at: std::ops::Range<usize>,
        bias: Option<TensorDesc>,
        relu: bool,
    ) -> Result<(), ExecError> {
        let cs = ConvShape::of(&self.op).ok_or_else(|| failed("conv shape"))?;
        let start = at.start;
        let bv = match bias {
            Some(_) => Some(self.arrays.get(2).ok_or_else(|| failed("bias"))?),
            None => None,
        };
        let v = self.out.get_mut(at).ok_or_else(|| failed("store"))?;
        for (i, x) in v.iter_mut().enumerate() {
            if let Some(bv) = bv {
                let ch = ((start + i) / cs.pixels.max(1)) % cs.oc.max(1);
                *x += bv.get(ch).ok_or_else(|| failed("bias"))?;
            }
            if relu {
                *x = x.max(0.0);
            }
        }
        Ok(())
    }

    /// Output elements of MAXPOOL, AVGPOOL or LRN, as many a step as read
    /// at most a tile of input elements (at least one).
    pub(super) fn window_step(&mut self, tile: &Tile) -> Result<(), ExecError> {
        let (input, out, per) = match &self.op {
            OpDesc::MaxPool { input, out, geom }
            | OpDesc::AvgPool {
                input, out, geom, ..
            } => (
                *input,
                *out,
                u64::from(geom.kernel[0]) * u64::from(geom.kernel[1]),
            ),
            OpDesc::Lrn {
                input, out, size, ..
            } => (*input, *out, u64::from(*size)),
            _ => return Err(failed("window op")),
        };
        let total = out.elems();
        let n = chunk(self.pos, total, tile.elems / per.max(1));
        let x = self.arrays.first().ok_or_else(|| failed("pool input"))?;
        let res = self
            .out
            .get_mut(range(self.pos, n))
            .ok_or_else(|| failed("pool result"))?;
        let [_, c, h, w] = input.dims.map(|d| d as usize);
        let [_, _, oh, ow] = out.dims.map(|d| d as usize);
        for (i, r) in res.iter_mut().enumerate() {
            let e = self.pos as usize + i;
            *r = match &self.op {
                OpDesc::MaxPool { geom, .. } => pool(x, e, [h, w], [oh, ow], geom, None)?,
                OpDesc::AvgPool {
                    geom, count_pad, ..
                } => pool(x, e, [h, w], [oh, ow], geom, Some(*count_pad))?,
                OpDesc::Lrn {
                    size,
                    alpha,
                    beta,
                    bias,
                    ..
                } => {
                    let (img, ch, px) = (e / (c * h * w), (e / (h * w)) % c, e % (h * w));
                    let lo = ch.saturating_sub((*size as usize).saturating_sub(1) / 2);
                    let hi = (ch + *size as usize / 2).min(c.saturating_sub(1));
                    let mut sq = 0f32;
                    for k in lo..=hi {
                        let v = x
                            .get((img * c + k) * h * w + px)
                            .ok_or_else(|| failed("lrn input"))?;
                        sq += v * v;
                    }
                    let v = *x.get(e).ok_or_else(|| failed("lrn input"))?;
                    v / (bias + alpha / *size as f32 * sq).powf(*beta)
                }
                _ => return Err(failed("window op")),
            };
        }
        self.pos += n;
        if self.pos == total {
            self.next_phase(Phase::Store);
        }
        Ok(())
    }
}

/// Output element `e` of a pooling over `x` (`[N, C, H, W]` dense): the
/// max (`avg` None) or the mean of the window's elements inside the input;
/// with `avg` Some(true) the sum over the window's positions inside the
/// padded input.
fn pool(
    x: &[f32],
    e: usize,
    [h, w]: [usize; 2],
    [oh, ow]: [usize; 2],
    geom: &PoolGeom,
    avg: Option<bool>,
) -> Result<f32, ExecError> {
    let (plane, oy, ox) = (e / (oh * ow), (e / ow) % oh, e % ow);
    let base = plane * h * w;
    let (kh, kw) = (geom.kernel[0] as usize, geom.kernel[1] as usize);
    let (sh, sw) = (geom.stride[0] as usize, geom.stride[1] as usize);
    let [pt, pl, pb, pr] = geom.pad.map(|p| p as usize);
    // Window rows [y0, y0 + kh) in padded coordinates (shifted by pt).
    let (y0, x0) = (oy * sh, ox * sw);
    // Validation keeps every window over at least one input element.
    let (ya, yb) = (y0.max(pt) - pt, (y0 + kh).min(h + pt).saturating_sub(pt));
    let (xa, xb) = (x0.max(pl) - pl, (x0 + kw).min(w + pl).saturating_sub(pl));
    let mut acc = match avg {
        None => f32::NEG_INFINITY,
        Some(_) => 0.0,
    };
    for iy in ya..yb {
        let row = x
            .get(base + iy * w + xa..base + iy * w + xb)
            .ok_or_else(|| failed("pool input"))?;
        for &v in row {
            acc = match avg {
                None => acc.max(v),
                Some(_) => acc + v,
            };
        }
    }
    Ok(match avg {
        None => acc,
        Some(false) => acc / (yb.saturating_sub(ya) * xb.saturating_sub(xa)).max(1) as f32,
        Some(true) => {
            let rows = (y0 + kh).min(h + pt + pb) - y0;
            let cols = (x0 + kw).min(w + pl + pr) - x0;
            acc / (rows * cols).max(1) as f32
        }
    })
}
