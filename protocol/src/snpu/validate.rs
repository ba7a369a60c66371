//! Parsing and validation of a command stream, everything that can be
//! checked without the job's buffers.

use zerocopy::{FromBytes, IntoBytes};

use super::*;

fn tensor(op: usize, slot: usize, t: &Tensor) -> Result<Option<TensorDesc>, CmdError> {
    let err = |why| CmdError::Tensor {
        op,
        tensor: slot,
        why,
    };
    if t.bo_index.get() == SNPU_NO_TENSOR {
        if t.as_bytes()[4..].iter().any(|&b| b != 0) {
            return Err(err("unused slot has nonzero fields"));
        }
        return Ok(None);
    }
    if t.padding.get() != 0 {
        return Err(err("nonzero padding"));
    }
    let dtype = DType::from_code(t.dtype).ok_or(err("unknown dtype"))?;
    let rank = usize::from(t.rank);
    if rank == 0 || rank > SNPU_MAX_RANK {
        return Err(err("rank must be 1 to 4"));
    }
    let mut d = TensorDesc {
        bo_index: t.bo_index.get(),
        dtype,
        offset: t.offset.get(),
        dims: [0; SNPU_MAX_RANK],
        strides: [0; SNPU_MAX_RANK],
        rank,
    };
    for i in 0..SNPU_MAX_RANK {
        if i < rank {
            d.dims[i] = t.dims[i].get();
            d.strides[i] = t.strides[i].get();
        } else if t.dims[i].get() != 0 || t.strides[i].get() != 0 {
            return Err(err("dims or strides above rank are nonzero"));
        }
    }
    if d.dims().contains(&0) {
        return Err(err("every axis needs at least one element"));
    }
    if d.checked_elems().is_none_or(|n| n > SNPU_MAX_ELEMS) {
        return Err(err("too many elements"));
    }
    if d.byte_range().is_none() {
        return Err(CmdError::Overflow { op, tensor: slot });
    }
    Ok(Some(d))
}

pub(super) fn shape(op: usize, ok: bool, why: &'static str) -> Result<(), CmdError> {
    if ok {
        Ok(())
    } else {
        Err(CmdError::Shape { op, why })
    }
}

pub(super) fn out_dense(op: usize, slot: usize, t: &TensorDesc) -> Result<(), CmdError> {
    if t.is_dense() {
        Ok(())
    } else {
        Err(CmdError::Tensor {
            op,
            tensor: slot,
            why: "output tensor must be dense row-major",
        })
    }
}

/// Whether `a` broadcasts to `out` (dims aligned at the right; each equal or 1).
fn broadcasts(a: &TensorDesc, out: &TensorDesc) -> bool {
    a.rank <= out.rank
        && a.dims()
            .iter()
            .rev()
            .zip(out.dims().iter().rev())
            .all(|(&x, &y)| x == y || x == 1)
}

/// Parses and validates a command stream.
pub fn parse(bytes: &[u8]) -> Result<Program, CmdError> {
    let op_size = core::mem::size_of::<Op>();
    let (hdr, rest) = CmdHdr::read_from_prefix(bytes).map_err(|_| CmdError::Size(bytes.len()))?;
    if hdr.magic.get() != SNPU_MAGIC {
        return Err(CmdError::Magic(hdr.magic.get()));
    }
    if hdr.version.get() != SNPU_VERSION {
        return Err(CmdError::Version(hdr.version.get()));
    }
    if hdr.flags.get() != 0 || hdr.padding.get() != 0 {
        return Err(CmdError::Reserved {
            op: 0,
            field: "header flags/padding",
        });
    }
    let n = hdr.nr_ops.get();
    if n > SNPU_MAX_OPS {
        return Err(CmdError::TooManyOps(n));
    }
    if rest.len() != usize::from(n) * op_size {
        return Err(CmdError::Size(bytes.len()));
    }
    let mut ops = Vec::with_capacity(usize::from(n));
    for (i, chunk) in rest.chunks_exact(op_size).enumerate() {
        // chunks_exact yields exactly op_size bytes; read cannot fail.
        let raw = Op::read_from_bytes(chunk).map_err(|_| CmdError::Size(bytes.len()))?;
        ops.push(parse_op(i, &raw)?);
    }
    Ok(Program { ops })
}

fn parse_op(i: usize, raw: &Op) -> Result<OpDesc, CmdError> {
    let opcode = raw.opcode.get();
    // The flags an opcode defines; every other bit is reserved.
    let flags_ok = match opcode {
        SNPU_OP_CONV => SNPU_CONV_F_RELU,
        SNPU_OP_AVGPOOL => SNPU_POOL_F_COUNT_PAD,
        _ => 0,
    };
    let flags = raw.flags.get();
    if flags & !flags_ok != 0 || raw.padding.get() != 0 {
        return Err(CmdError::Reserved {
            op: i,
            field: "op flags/padding",
        });
    }
    let t: Vec<Option<TensorDesc>> = raw
        .tensors
        .iter()
        .enumerate()
        .map(|(s, t)| tensor(i, s, t))
        .collect::<Result<_, _>>()?;
    let p: [u32; 8] = raw.params.map(|v| v.get());
    // Which slots an op uses, and how many params.
    let (need, opt, nparams): (usize, usize, usize) = match opcode {
        SNPU_OP_NOP => (0, 0, 0),
        SNPU_OP_COPY | SNPU_OP_RELU | SNPU_OP_SOFTMAX => (2, 0, 0),
        SNPU_OP_ADD | SNPU_OP_MUL => (3, 0, 0),
        SNPU_OP_MATMUL => (3, 0, 4),
        SNPU_OP_CONV2D => (4, 1, 6),
        SNPU_OP_CONV => (4, 1, 8),
        SNPU_OP_MAXPOOL | SNPU_OP_AVGPOOL => (2, 0, 8),
        SNPU_OP_CLIP => (2, 0, 2),
        SNPU_OP_SIGMOID => (2, 0, 0),
        SNPU_OP_LRN => (2, 0, 4),
        _ => return Err(CmdError::Opcode { op: i, opcode }),
    };
    for (s, slot) in t.iter().enumerate() {
        let required = s < need && !(opt == 1 && s == 2);
        if required && slot.is_none() {
            return Err(CmdError::Tensor {
                op: i,
                tensor: s,
                why: "required tensor missing",
            });
        }
        if s >= need && slot.is_some() {
            return Err(CmdError::Tensor {
                op: i,
                tensor: s,
                why: "op does not use this slot",
            });
        }
    }
    if p[nparams..].iter().any(|&v| v != 0) {
        return Err(CmdError::Reserved {
            op: i,
            field: "unused params",
        });
    }
    // Presence was checked above; a missing slot is refused, never assumed.
    let g = |s: usize| {
        t.get(s).copied().flatten().ok_or(CmdError::Tensor {
            op: i,
            tensor: s,
            why: "required tensor missing",
        })
    };
    Ok(match opcode {
        SNPU_OP_NOP => OpDesc::Nop,
        SNPU_OP_COPY => {
            let (src, dst) = (g(0)?, g(1)?);
            shape(i, src.dims() == dst.dims(), "copy shapes differ")?;
            shape(i, src.dtype == dst.dtype, "copy dtypes differ")?;
            out_dense(i, 1, &dst)?;
            OpDesc::Copy { src, dst }
        }
        SNPU_OP_ADD | SNPU_OP_MUL => {
            let (a, b, out) = (g(0)?, g(1)?, g(2)?);
            shape(
                i,
                [a, b, out].iter().all(|t| t.dtype == DType::F32),
                "add/mul are f32",
            )?;
            shape(
                i,
                broadcasts(&a, &out) && broadcasts(&b, &out),
                "inputs do not broadcast to output",
            )?;
            out_dense(i, 2, &out)?;
            if opcode == SNPU_OP_ADD {
                OpDesc::Add { a, b, out }
            } else {
                OpDesc::Mul { a, b, out }
            }
        }
        SNPU_OP_RELU => {
            let (input, out) = (g(0)?, g(1)?);
            shape(i, input.dims() == out.dims(), "relu shapes differ")?;
            shape(
                i,
                input.dtype == out.dtype && input.dtype != DType::I32,
                "relu takes f32 or i8, same in and out",
            )?;
            out_dense(i, 1, &out)?;
            OpDesc::Relu { input, out }
        }
        SNPU_OP_SOFTMAX => {
            let (input, out) = (g(0)?, g(1)?);
            shape(i, input.dims() == out.dims(), "softmax shapes differ")?;
            shape(
                i,
                input.dtype == DType::F32 && out.dtype == DType::F32,
                "softmax is f32",
            )?;
            out_dense(i, 1, &out)?;
            OpDesc::Softmax { input, out }
        }
        SNPU_OP_MATMUL => {
            let (a, b, out) = (g(0)?, g(1)?, g(2)?);
            shape(
                i,
                a.rank == 2 && b.rank == 2 && out.rank == 2,
                "matmul tensors are rank 2",
            )?;
            let (m, k, n) = (a.dims[0], a.dims[1], b.dims[1]);
            shape(
                i,
                b.dims[0] == k && out.dims[0] == m && out.dims[1] == n,
                "matmul shapes do not chain",
            )?;
            let macs = u64::from(m)
                .checked_mul(u64::from(k))
                .and_then(|v| v.checked_mul(u64::from(n)));
            shape(
                i,
                macs.is_some_and(|v| v <= SNPU_MAX_MACS),
                "matmul too large",
            )?;
            out_dense(i, 2, &out)?;
            let quant = match (a.dtype, b.dtype, out.dtype) {
                (DType::F32, DType::F32, DType::F32) => {
                    shape(
                        i,
                        p[..4].iter().all(|&v| v == 0),
                        "f32 matmul takes no params",
                    )?;
                    None
                }
                (DType::I8, DType::I8, DType::I32) | (DType::I8, DType::I8, DType::I8) => {
                    let q = Quant {
                        a_zero: p[0] as i32,
                        b_zero: p[1] as i32,
                        out_zero: p[2] as i32,
                        scale: f32::from_bits(p[3]),
                    };
                    shape(i, k <= SNPU_MAX_I8_K, "int8 matmul K above 32768")?;
                    let zp = |z: i32| (-128..=127).contains(&z);
                    shape(
                        i,
                        zp(q.a_zero) && zp(q.b_zero),
                        "input zero points outside int8",
                    )?;
                    if out.dtype == DType::I8 {
                        shape(i, zp(q.out_zero), "output zero point outside int8")?;
                        shape(
                            i,
                            q.scale.is_finite() && q.scale > 0.0,
                            "scale must be positive and finite",
                        )?;
                    } else {
                        shape(
                            i,
                            p[2] == 0 && p[3] == 0,
                            "i32 output takes no requantization",
                        )?;
                    }
                    Some(q)
                }
                _ => {
                    return Err(CmdError::Shape {
                        op: i,
                        why: "matmul dtypes",
                    })
                }
            };
            OpDesc::MatMul { a, b, out, quant }
        }
        SNPU_OP_CONV2D => {
            let (input, filter, out) = (g(0)?, g(1)?, g(3)?);
            let bias = t.get(2).copied().flatten();
            shape(
                i,
                input.rank == 4 && filter.rank == 4 && out.rank == 4,
                "conv2d tensors are rank 4",
            )?;
            let all_f32 = [input, filter, out]
                .iter()
                .chain(bias.iter())
                .all(|t| t.dtype == DType::F32);
            shape(i, all_f32, "conv2d is f32")?;
            let [n, h, w, c] = input.dims;
            let [kh, kw, fc, oc] = filter.dims;
            let stride = [p[0], p[1]];
            let pad = [p[2], p[3], p[4], p[5]];
            shape(
                i,
                stride[0] >= 1 && stride[1] >= 1,
                "stride must be at least 1",
            )?;
            shape(i, fc == c, "filter channels differ from input")?;
            shape(i, kh >= 1 && kw >= 1, "empty filter")?;
            let span_h = u64::from(h) + u64::from(pad[0]) + u64::from(pad[2]);
            let span_w = u64::from(w) + u64::from(pad[1]) + u64::from(pad[3]);
            shape(
                i,
                span_h >= u64::from(kh) && span_w >= u64::from(kw),
                "filter larger than padded input",
            )?;
            // Every operand is at least 1 (zero dims and strides are refused
            // above), so these are exact; products are checked.
            let oh = (span_h - u64::from(kh)) / u64::from(stride[0]) + 1;
            let ow = (span_w - u64::from(kw)) / u64::from(stride[1]) + 1;
            shape(
                i,
                oh == u64::from(out.dims[1])
                    && ow == u64::from(out.dims[2])
                    && out.dims[0] == n
                    && out.dims[3] == oc,
                "output shape does not match input, filter, stride and padding",
            )?;
            if let Some(b) = &bias {
                shape(i, b.rank == 1 && b.dims[0] == oc, "bias must be [OC]")?;
            }
            let mul = |a: u64, b: u64| a.checked_mul(b);
            let patches = mul(u64::from(n), oh).and_then(|v| mul(v, ow));
            let patch = mul(u64::from(kh), u64::from(kw)).and_then(|v| mul(v, u64::from(c)));
            let cells = patches.zip(patch).and_then(|(a, b)| mul(a, b));
            shape(
                i,
                cells.is_some_and(|v| v <= SNPU_MAX_ELEMS),
                "conv2d patch matrix too large",
            )?;
            shape(
                i,
                cells
                    .and_then(|v| mul(v, u64::from(oc)))
                    .is_some_and(|v| v <= SNPU_MAX_MACS),
                "conv2d too large",
            )?;
            out_dense(i, 3, &out)?;
            OpDesc::Conv2d {
                input,
                filter,
                bias,
                out,
                stride,
                pad,
            }
        }
        SNPU_OP_CONV => {
            let bias = t.get(2).copied().flatten();
            validate_nn::conv(i, [g(0)?, g(1)?, g(3)?], bias, p, flags)?
        }
        SNPU_OP_MAXPOOL | SNPU_OP_AVGPOOL => validate_nn::pool(i, opcode, g(0)?, g(1)?, p, flags)?,
        SNPU_OP_CLIP | SNPU_OP_SIGMOID | SNPU_OP_LRN => {
            validate_nn::unary(i, opcode, g(0)?, g(1)?, p)?
        }
        _ => return Err(CmdError::Opcode { op: i, opcode }),
    })
}
