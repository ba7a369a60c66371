//! Unit tests of the neural-network ops against plain loops, whole and
//! sliced into small steps.

use super::tests::{f, run_all, t, unf};
use super::*;
use virtio_accel_protocol::snpu::{ConvGeom, PoolGeom, SNPU_CONV_PATCH_ELEMS};

/// Small integers as f32: sums are exact in any order, so the NPU must
/// match the loops bit for bit.
fn ints(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7 + seed) % 9) as f32 - 4.0)
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    wt: &[f32],
    [oc, cg, kh, kw]: [usize; 4],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    relu: bool,
) -> (Vec<f32>, [usize; 4]) {
    let [s0, s1] = g.stride.map(|v| v as usize);
    let [d0, d1] = g.dilation.map(|v| v as usize);
    let [pt, pl, pb, pr] = g.pad.map(|v| v as usize);
    let oh = (h + pt + pb - d0 * (kh - 1) - 1) / s0 + 1;
    let ow = (w + pl + pr - d1 * (kw - 1) - 1) / s1 + 1;
    let groups = c / cg;
    let ocg = oc / groups;
    let mut y = vec![0f32; n * oc * oh * ow];
    for b in 0..n {
        for o in 0..oc {
            let gi = o / ocg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |bv| bv[o]);
                    for ci in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s0 + ky * d0) as isize - pt as isize;
                                let ix = (ox * s1 + kx * d1) as isize - pl as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let ch = gi * cg + ci;
                                acc += x[((b * c + ch) * h + iy as usize) * w + ix as usize]
                                    * wt[((o * cg + ci) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    y[((b * oc + o) * oh + oy) * ow + ox] = if relu { acc.max(0.0) } else { acc };
                }
            }
        }
    }
    (y, [n, oc, oh, ow])
}

/// Runs one CONV whole and in small steps; both must equal the loops.
fn check_conv(xd: [usize; 4], wd: [usize; 4], geom: ConvGeom, bias: bool, relu: bool) {
    let x = ints(xd.iter().product(), 1);
    let wt = ints(wd.iter().product(), 2);
    let bv = ints(wd[0], 3);
    let (want, od) = conv_ref(&x, xd, &wt, wd, bias.then_some(&bv[..]), &geom, relu);
    let u = |d: [usize; 4]| d.map(|v| v as u32);
    let op = OpDesc::Conv {
        input: t(0, DType::F32, &u(xd)),
        filter: t(1, DType::F32, &u(wd)),
        bias: bias.then(|| t(2, DType::F32, &[wd[0] as u32])),
        out: t(3, DType::F32, &u(od)),
        geom,
        relu,
    };
    let init = vec![f(&x), f(&wt), f(&bv), vec![0; want.len() * 4]];
    let (whole, _) = run_all(std::slice::from_ref(&op), &init, Tile::WHOLE, false);
    assert_eq!(unf(&whole[3]), want, "whole {xd:?} {wd:?} {geom:?}");
    let small = Tile {
        macs: 1 << 12,
        elems: 37,
    };
    let (sliced, calls) = run_all(&[op], &init, small, true);
    assert!(calls > 3, "not sliced");
    assert_eq!(sliced[3], whole[3], "sliced {xd:?} {wd:?}");
}

fn geom(stride: u32, pad: [u32; 4], dilation: u32) -> ConvGeom {
    ConvGeom {
        stride: [stride, stride],
        pad,
        dilation: [dilation, dilation],
    }
}

#[test]
fn conv_grouped_dilated_strided_with_uneven_padding_matches_loops() {
    check_conv(
        [2, 4, 9, 8],
        [6, 2, 3, 3],
        geom(2, [1, 2, 0, 1], 2),
        true,
        true,
    );
    check_conv(
        [1, 3, 7, 7],
        [5, 3, 2, 3],
        geom(1, [0, 0, 0, 0], 1),
        true,
        false,
    );
}

#[test]
fn conv_depthwise_and_pointwise_match_loops() {
    // Depthwise: one group per channel.
    check_conv([1, 6, 8, 8], [6, 1, 3, 3], geom(1, [1; 4], 1), true, true);
    // Pointwise: the input is the GEMM operand, no patch matrix.
    check_conv([2, 8, 5, 6], [4, 8, 1, 1], geom(1, [0; 4], 1), false, false);
    check_conv([1, 8, 5, 6], [4, 2, 1, 1], geom(1, [0; 4], 1), true, true);
}

#[test]
fn conv_patch_matrix_in_several_blocks_matches_loops() {
    // 16·3·3 rows × 96·96 pixels is above one block.
    let (xd, wd) = ([1, 16, 96, 96], [4, 16, 3, 3]);
    assert!(144 * 96 * 96 > SNPU_CONV_PATCH_ELEMS as usize);
    check_conv(xd, wd, geom(1, [1; 4], 1), true, false);
}

fn pool_ref(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    g: &PoolGeom,
    [oh, ow]: [usize; 2],
    avg: Option<bool>,
) -> Vec<f32> {
    let [kh, kw] = g.kernel.map(|v| v as usize);
    let [sh, sw] = g.stride.map(|v| v as usize);
    let [pt, pl, pb, pr] = g.pad.map(|v| v as isize);
    let mut y = Vec::new();
    for p in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut m, mut s, mut cnt, mut padded) = (f32::NEG_INFINITY, 0f32, 0, 0);
                for ky in 0..kh {
                    for kx in 0..kw {
                        let iy = (oy * sh + ky) as isize - pt;
                        let ix = (ox * sw + kx) as isize - pl;
                        if iy < h as isize + pb && ix < w as isize + pr {
                            padded += 1;
                        }
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let v = x[(p * h + iy as usize) * w + ix as usize];
                        m = m.max(v);
                        s += v;
                        cnt += 1;
                    }
                }
                y.push(match avg {
                    None => m,
                    Some(false) => s / cnt as f32,
                    Some(true) => s / padded as f32,
                });
            }
        }
    }
    y
}

#[test]
fn pooling_floor_and_ceil_with_padding_matches_loops() {
    let xd = [2, 3, 7, 8];
    let x = ints(xd.iter().product(), 5);
    let cases = [
        // kernel, stride, pads, out h/w (floor), out h/w (ceil mode)
        ([3, 3], [2, 2], [0, 0, 0, 0], [3, 3]),
        ([3, 3], [2, 2], [0, 0, 0, 0], [3, 4]),
        ([3, 2], [2, 1], [1, 1, 1, 0], [4, 8]),
        ([2, 2], [2, 2], [1, 1, 1, 1], [4, 5]),
        ([7, 8], [1, 1], [0, 0, 0, 0], [1, 1]),
    ];
    for (kernel, stride, pad, [oh, ow]) in cases {
        let g = PoolGeom {
            kernel,
            stride,
            pad,
        };
        for avg in [None, Some(false), Some(true)] {
            let want = pool_ref(&x, xd, &g, [oh, ow], avg);
            let (input, out) = (
                t(0, DType::F32, &xd.map(|v| v as u32)),
                t(1, DType::F32, &[2, 3, oh as u32, ow as u32]),
            );
            let op = match avg {
                None => OpDesc::MaxPool {
                    input,
                    out,
                    geom: g,
                },
                Some(count_pad) => OpDesc::AvgPool {
                    input,
                    out,
                    geom: g,
                    count_pad,
                },
            };
            // The op is valid as the guest would send it.
            let parsed = virtio_accel_protocol::snpu::parse(
                &Program {
                    ops: vec![op.clone()],
                }
                .encode(),
            );
            assert!(parsed.is_ok(), "{op:?}: {parsed:?}");
            let init = vec![f(&x), vec![0; want.len() * 4]];
            let small = Tile {
                macs: 1 << 12,
                elems: 10,
            };
            let (whole, _) = run_all(std::slice::from_ref(&op), &init, Tile::WHOLE, false);
            let (sliced, _) = run_all(&[op], &init, small, true);
            assert_eq!(unf(&whole[1]), want, "{g:?} {avg:?}");
            assert_eq!(sliced, whole);
        }
    }
}

#[test]
fn lrn_clip_and_sigmoid_match_their_formulas() {
    let xd = [1u32, 7, 3, 2];
    let x: Vec<f32> = ints(42, 4).iter().map(|v| v * 0.37).collect();
    let (size, alpha, beta, bias) = (4u32, 0.3f32, 0.75f32, 1.5f32);
    let ops = [
        OpDesc::Lrn {
            input: t(0, DType::F32, &xd),
            out: t(1, DType::F32, &xd),
            size,
            alpha,
            beta,
            bias,
        },
        OpDesc::Clip {
            input: t(0, DType::F32, &xd),
            out: t(2, DType::F32, &xd),
            min: -0.5,
            max: 0.75,
        },
        OpDesc::Sigmoid {
            input: t(0, DType::F32, &xd),
            out: t(3, DType::F32, &xd),
        },
    ];
    let init = vec![f(&x), vec![0; 168], vec![0; 168], vec![0; 168]];
    let (whole, _) = run_all(&ops, &init, Tile::WHOLE, false);
    let small = Tile {
        macs: 1 << 12,
        elems: 5,
    };
    let (sliced, _) = run_all(&ops, &init, small, true);
    assert_eq!(sliced, whole);
    let (lrn, clip, sig) = (unf(&whole[1]), unf(&whole[2]), unf(&whole[3]));
    for c in 0..7usize {
        for px in 0..6usize {
            let e = c * 6 + px;
            // Channels c - 1 ..= c + 2 for size 4.
            let sq: f32 = (c.saturating_sub(1)..=(c + 2).min(6))
                .map(|k| x[k * 6 + px] * x[k * 6 + px])
                .sum();
            let want = x[e] / (bias + alpha / size as f32 * sq).powf(beta);
            assert!(
                (lrn[e] - want).abs() <= 1e-6 * want.abs().max(1.0),
                "lrn {e}"
            );
            assert_eq!(clip[e], x[e].clamp(-0.5, 0.75));
            let s = 1.0 / (1.0 + (-x[e]).exp());
            assert!((sig[e] - s).abs() <= 1e-7, "sigmoid {e}");
        }
    }
}
