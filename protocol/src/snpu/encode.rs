//! Encoding a validated program as a command stream.

use zerocopy::IntoBytes;

use super::*;

impl Program {
    /// Encodes the program as a command stream.
    pub fn encode(&self) -> Vec<u8> {
        let hdr = CmdHdr {
            magic: SNPU_MAGIC.into(),
            version: SNPU_VERSION.into(),
            nr_ops: (self.ops.len() as u16).into(),
            ..Default::default()
        };
        let mut v = hdr.as_bytes().to_vec();
        for op in &self.ops {
            v.extend_from_slice(encode_op(op).as_bytes());
        }
        v
    }
}

fn encode_op(op: &OpDesc) -> Op {
    let mut raw = Op::default();
    let unused = Tensor {
        bo_index: SNPU_NO_TENSOR.into(),
        ..Default::default()
    };
    raw.tensors = [unused; 4];
    let mut flags = 0u16;
    let set = |raw: &mut Op, ts: &[Option<&TensorDesc>]| {
        for (s, t) in ts.iter().enumerate() {
            if let Some(t) = t {
                raw.tensors[s] = t.to_wire();
            }
        }
    };
    let (code, params): (u16, [u32; 8]) = match op {
        OpDesc::Nop => (SNPU_OP_NOP, [0; 8]),
        OpDesc::Copy { src, dst } => {
            set(&mut raw, &[Some(src), Some(dst)]);
            (SNPU_OP_COPY, [0; 8])
        }
        OpDesc::Add { a, b, out } | OpDesc::Mul { a, b, out } => {
            set(&mut raw, &[Some(a), Some(b), Some(out)]);
            let c = if matches!(op, OpDesc::Add { .. }) {
                SNPU_OP_ADD
            } else {
                SNPU_OP_MUL
            };
            (c, [0; 8])
        }
        OpDesc::Relu { input, out } | OpDesc::Softmax { input, out } => {
            set(&mut raw, &[Some(input), Some(out)]);
            let c = if matches!(op, OpDesc::Relu { .. }) {
                SNPU_OP_RELU
            } else {
                SNPU_OP_SOFTMAX
            };
            (c, [0; 8])
        }
        OpDesc::MatMul { a, b, out, quant } => {
            set(&mut raw, &[Some(a), Some(b), Some(out)]);
            let mut p = [0u32; 8];
            if let Some(q) = quant {
                p[0] = q.a_zero as u32;
                p[1] = q.b_zero as u32;
                if out.dtype == DType::I8 {
                    p[2] = q.out_zero as u32;
                    p[3] = q.scale.to_bits();
                }
            }
            (SNPU_OP_MATMUL, p)
        }
        OpDesc::Conv2d {
            input,
            filter,
            bias,
            out,
            stride,
            pad,
        } => {
            set(
                &mut raw,
                &[Some(input), Some(filter), bias.as_ref(), Some(out)],
            );
            let p = [stride[0], stride[1], pad[0], pad[1], pad[2], pad[3], 0, 0];
            (SNPU_OP_CONV2D, p)
        }
        OpDesc::Conv {
            input,
            filter,
            bias,
            out,
            geom,
            relu,
        } => {
            set(
                &mut raw,
                &[Some(input), Some(filter), bias.as_ref(), Some(out)],
            );
            if *relu {
                flags = SNPU_CONV_F_RELU;
            }
            let (s, p, d) = (geom.stride, geom.pad, geom.dilation);
            (
                SNPU_OP_CONV,
                [s[0], s[1], p[0], p[1], p[2], p[3], d[0], d[1]],
            )
        }
        OpDesc::MaxPool { input, out, geom }
        | OpDesc::AvgPool {
            input, out, geom, ..
        } => {
            set(&mut raw, &[Some(input), Some(out)]);
            let code = match op {
                OpDesc::AvgPool { count_pad, .. } => {
                    if *count_pad {
                        flags = SNPU_POOL_F_COUNT_PAD;
                    }
                    SNPU_OP_AVGPOOL
                }
                _ => SNPU_OP_MAXPOOL,
            };
            let (k, s, p) = (geom.kernel, geom.stride, geom.pad);
            (code, [k[0], k[1], s[0], s[1], p[0], p[1], p[2], p[3]])
        }
        OpDesc::Clip {
            input,
            out,
            min,
            max,
        } => {
            set(&mut raw, &[Some(input), Some(out)]);
            (
                SNPU_OP_CLIP,
                [min.to_bits(), max.to_bits(), 0, 0, 0, 0, 0, 0],
            )
        }
        OpDesc::Sigmoid { input, out } => {
            set(&mut raw, &[Some(input), Some(out)]);
            (SNPU_OP_SIGMOID, [0; 8])
        }
        OpDesc::Lrn {
            input,
            out,
            size,
            alpha,
            beta,
            bias,
        } => {
            set(&mut raw, &[Some(input), Some(out)]);
            let p = [*size, alpha.to_bits(), beta.to_bits(), bias.to_bits()];
            (SNPU_OP_LRN, [p[0], p[1], p[2], p[3], 0, 0, 0, 0])
        }
    };
    raw.opcode = code.into();
    raw.flags = flags.into();
    for (d, s) in raw.params.iter_mut().zip(params) {
        *d = s.into();
    }
    raw
}
