//! Validation of the neural-network ops: CONV, MAXPOOL, AVGPOOL, CLIP,
//! SIGMOID, LRN. Every figure derived from guest values is computed in u64
//! from u32 operands, so sums and products of two cannot overflow; longer
//! products are checked.

use super::validate::{out_dense, shape};
use super::*;

fn all_f32(ts: &[&TensorDesc]) -> bool {
    ts.iter().all(|t| t.dtype == DType::F32)
}

/// Output extent along one axis of a window of `k` elements `d` apart,
/// `s` apart from the next window, over `n` elements padded by `lo` and
/// `hi`; `None` when the window is larger than the padded input.
fn windows(n: u32, lo: u32, hi: u32, k: u32, d: u32, s: u32) -> Option<(u64, u64)> {
    let span = u64::from(n) + u64::from(lo) + u64::from(hi);
    // k ≥ 1 and d ≥ 1: (k - 1) · d + 1 < 2^64.
    let reach = u64::from(k - 1) * u64::from(d) + 1;
    let room = span.checked_sub(reach)?;
    let s = u64::from(s);
    Some((room / s + 1, room.div_ceil(s) + 1))
}

pub(super) fn conv(
    i: usize,
    [input, filter, out]: [TensorDesc; 3],
    bias: Option<TensorDesc>,
    p: [u32; 8],
    flags: u16,
) -> Result<OpDesc, CmdError> {
    shape(
        i,
        input.rank == 4 && filter.rank == 4 && out.rank == 4,
        "conv tensors are rank 4",
    )?;
    let mut ts = vec![&input, &filter, &out];
    ts.extend(bias.iter());
    shape(i, all_f32(&ts), "conv is f32")?;
    let [n, c, h, w] = input.dims;
    let [oc, cg, kh, kw] = filter.dims;
    let geom = ConvGeom {
        stride: [p[0], p[1]],
        pad: [p[2], p[3], p[4], p[5]],
        dilation: [p[6], p[7]],
    };
    shape(
        i,
        geom.stride.iter().chain(&geom.dilation).all(|&v| v >= 1),
        "strides and dilations must be at least 1",
    )?;
    // Dims are at least 1 (tensor validation), so these divide safely.
    shape(
        i,
        c % cg == 0,
        "filter channels do not divide input channels",
    )?;
    let groups = c / cg;
    shape(i, oc % groups == 0, "groups do not divide output channels")?;
    let oh = windows(
        h,
        geom.pad[0],
        geom.pad[2],
        kh,
        geom.dilation[0],
        geom.stride[0],
    );
    let ow = windows(
        w,
        geom.pad[1],
        geom.pad[3],
        kw,
        geom.dilation[1],
        geom.stride[1],
    );
    let (Some((oh, _)), Some((ow, _))) = (oh, ow) else {
        return Err(CmdError::Shape {
            op: i,
            why: "dilated filter larger than padded input",
        });
    };
    shape(
        i,
        out.dims[0] == n
            && out.dims[1] == oc
            && u64::from(out.dims[2]) == oh
            && u64::from(out.dims[3]) == ow,
        "output shape does not match input, filter, stride, padding and dilation",
    )?;
    if let Some(b) = &bias {
        shape(i, b.rank == 1 && b.dims[0] == oc, "bias must be [OC]")?;
    }
    let macs = out.checked_elems().and_then(|e| {
        e.checked_mul(u64::from(cg))?
            .checked_mul(u64::from(kh))?
            .checked_mul(u64::from(kw))
    });
    shape(
        i,
        macs.is_some_and(|v| v <= SNPU_MAX_MACS),
        "conv too large",
    )?;
    out_dense(i, 3, &out)?;
    Ok(OpDesc::Conv {
        input,
        filter,
        bias,
        out,
        geom,
        relu: flags & SNPU_CONV_F_RELU != 0,
    })
}

pub(super) fn pool(
    i: usize,
    opcode: u16,
    input: TensorDesc,
    out: TensorDesc,
    p: [u32; 8],
    flags: u16,
) -> Result<OpDesc, CmdError> {
    shape(
        i,
        input.rank == 4 && out.rank == 4,
        "pooling tensors are rank 4",
    )?;
    shape(i, all_f32(&[&input, &out]), "pooling is f32")?;
    let [n, c, h, w] = input.dims;
    let geom = PoolGeom {
        kernel: [p[0], p[1]],
        stride: [p[2], p[3]],
        pad: [p[4], p[5], p[6], p[7]],
    };
    let [kh, kw] = geom.kernel;
    shape(
        i,
        geom.kernel.iter().chain(&geom.stride).all(|&v| v >= 1),
        "kernel and strides must be at least 1",
    )?;
    shape(
        i,
        u64::from(kh) * u64::from(kw) <= SNPU_MAX_WINDOW,
        "pooling window too large",
    )?;
    // Every window then holds at least one input element: it starts less
    // than a kernel before the input and, below, before the input's end.
    shape(
        i,
        geom.pad[0] < kh && geom.pad[2] < kh && geom.pad[1] < kw && geom.pad[3] < kw,
        "padding must be smaller than the kernel",
    )?;
    shape(
        i,
        out.dims[0] == n && out.dims[1] == c,
        "pooling keeps N and C",
    )?;
    for (axis, extent, k) in [(0, h, kh), (1, w, kw)] {
        let (lo, hi) = (geom.pad[axis], geom.pad[axis + 2]);
        let Some((floor, ceil)) = windows(extent, lo, hi, k, 1, geom.stride[axis]) else {
            return Err(CmdError::Shape {
                op: i,
                why: "kernel larger than padded input",
            });
        };
        let o = u64::from(out.dims[axis + 2]);
        shape(
            i,
            (floor..=ceil).contains(&o),
            "output extent is neither the floor nor the ceiling of the windows",
        )?;
        // (o - 1) · s < 2^64: both are below 2^32.
        shape(
            i,
            (o - 1) * u64::from(geom.stride[axis]) < u64::from(extent) + u64::from(lo),
            "a window lies wholly in the padding",
        )?;
    }
    out_dense(i, 1, &out)?;
    Ok(if opcode == SNPU_OP_MAXPOOL {
        OpDesc::MaxPool { input, out, geom }
    } else {
        OpDesc::AvgPool {
            input,
            out,
            geom,
            count_pad: flags & SNPU_POOL_F_COUNT_PAD != 0,
        }
    })
}

/// CLIP, SIGMOID and LRN: one input, an output of the same dims.
pub(super) fn unary(
    i: usize,
    opcode: u16,
    input: TensorDesc,
    out: TensorDesc,
    p: [u32; 8],
) -> Result<OpDesc, CmdError> {
    shape(
        i,
        input.dims() == out.dims(),
        "input and output dims differ",
    )?;
    shape(i, all_f32(&[&input, &out]), "op is f32")?;
    out_dense(i, 1, &out)?;
    let f = |k: usize| f32::from_bits(p[k]);
    Ok(match opcode {
        SNPU_OP_CLIP => {
            let (min, max) = (f(0), f(1));
            shape(i, min <= max, "clip bounds are NaN or min > max")?;
            OpDesc::Clip {
                input,
                out,
                min,
                max,
            }
        }
        SNPU_OP_SIGMOID => OpDesc::Sigmoid { input, out },
        _ => {
            shape(i, input.rank == 4, "lrn is NCHW")?;
            let size = p[0];
            shape(
                i,
                size >= 1 && u64::from(size) <= SNPU_MAX_WINDOW,
                "lrn size must be 1 to 2^18",
            )?;
            let (alpha, beta, bias) = (f(1), f(2), f(3));
            shape(
                i,
                alpha.is_finite() && beta.is_finite() && bias.is_finite(),
                "lrn alpha, beta and bias must be finite",
            )?;
            OpDesc::Lrn {
                input,
                out,
                size,
                alpha,
                beta,
                bias,
            }
        }
    })
}
