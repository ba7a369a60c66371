//! Writes the seed corpus: valid requests, responses and events (decode),
//! valid SNPU programs over fitting buffers (snpu), and guest memory
//! images holding well-formed rings with real chains (ring).
//! `cargo run --example seeds -- fuzz/corpus` from the repository root.

use std::path::Path;

use virtio_accel_protocol::snpu::*;
use virtio_accel_protocol::*;
use zerocopy::IntoBytes;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

fn programs() -> Vec<(&'static str, Program, Vec<(u16, u8)>)> {
    let f = DType::F32;
    let t = |bo, dims: &[u32]| TensorDesc::dense(bo, f, 0, dims);
    // The target reads access as `a % 3 + 1`: 2 is read and write.
    let rw = |n: u16| (n - 1, 2u8);
    let g = |stride: u32, pad: u32, dilation: u32| ConvGeom {
        stride: [stride; 2],
        pad: [pad; 4],
        dilation: [dilation; 2],
    };
    let pg = |k: u32, s: u32, pad: [u32; 4]| PoolGeom {
        kernel: [k; 2],
        stride: [s; 2],
        pad,
    };
    vec![
        (
            "nop",
            Program {
                ops: vec![OpDesc::Nop],
            },
            vec![],
        ),
        (
            "copy",
            Program {
                ops: vec![OpDesc::Copy {
                    src: t(0, &[4, 4]),
                    dst: t(1, &[4, 4]),
                }],
            },
            vec![rw(64), rw(64)],
        ),
        (
            "add_broadcast",
            Program {
                ops: vec![OpDesc::Add {
                    a: t(0, &[3, 4]),
                    b: t(1, &[4]),
                    out: t(2, &[3, 4]),
                }],
            },
            vec![rw(48), rw(16), rw(48)],
        ),
        (
            "mlp",
            Program {
                ops: vec![
                    OpDesc::MatMul {
                        a: t(0, &[2, 8]),
                        b: t(1, &[8, 4]),
                        out: t(2, &[2, 4]),
                        quant: None,
                    },
                    OpDesc::Relu {
                        input: t(2, &[2, 4]),
                        out: t(2, &[2, 4]),
                    },
                    OpDesc::Softmax {
                        input: t(2, &[2, 4]),
                        out: t(3, &[2, 4]),
                    },
                ],
            },
            vec![rw(64), rw(128), rw(32), rw(32)],
        ),
        (
            "int8",
            Program {
                ops: vec![OpDesc::MatMul {
                    a: TensorDesc::dense(0, DType::I8, 0, &[4, 8]),
                    b: TensorDesc::dense(1, DType::I8, 0, &[8, 4]),
                    out: TensorDesc::dense(2, DType::I8, 0, &[4, 4]),
                    quant: Some(Quant {
                        a_zero: 3,
                        b_zero: -2,
                        out_zero: 1,
                        scale: 0.125,
                    }),
                }],
            },
            vec![rw(32), rw(32), rw(16)],
        ),
        (
            "conv2d",
            Program {
                ops: vec![OpDesc::Conv2d {
                    input: t(0, &[1, 5, 5, 2]),
                    filter: t(1, &[3, 3, 2, 3]),
                    bias: Some(t(2, &[3])),
                    out: t(3, &[1, 3, 3, 3]),
                    stride: [2, 2],
                    pad: [1, 1, 1, 1],
                }],
            },
            vec![rw(200), rw(216), rw(12), rw(108)],
        ),
        (
            "conv_grouped_dilated",
            Program {
                ops: vec![OpDesc::Conv {
                    input: t(0, &[1, 4, 9, 9]),
                    filter: t(1, &[6, 2, 3, 3]),
                    bias: Some(t(2, &[6])),
                    out: t(3, &[1, 6, 4, 4]),
                    geom: g(2, 1, 2),
                    relu: true,
                }],
            },
            vec![rw(1296), rw(432), rw(24), rw(384)],
        ),
        (
            "conv_depthwise_pointwise",
            Program {
                ops: vec![
                    OpDesc::Conv {
                        input: t(0, &[1, 4, 6, 6]),
                        filter: t(1, &[4, 1, 3, 3]),
                        bias: None,
                        out: t(2, &[1, 4, 6, 6]),
                        geom: g(1, 1, 1),
                        relu: false,
                    },
                    OpDesc::Conv {
                        input: t(2, &[1, 4, 6, 6]),
                        filter: t(1, &[2, 4, 1, 1]),
                        bias: None,
                        out: t(3, &[1, 2, 6, 6]),
                        geom: g(1, 0, 1),
                        relu: true,
                    },
                ],
            },
            vec![rw(576), rw(144), rw(576), rw(288)],
        ),
        (
            "pools",
            Program {
                ops: vec![
                    OpDesc::MaxPool {
                        input: t(0, &[1, 2, 8, 8]),
                        out: t(1, &[1, 2, 4, 4]),
                        geom: pg(3, 2, [0; 4]),
                    },
                    OpDesc::AvgPool {
                        input: t(0, &[1, 2, 8, 8]),
                        out: t(2, &[1, 2, 5, 5]),
                        geom: pg(2, 2, [1; 4]),
                        count_pad: true,
                    },
                    OpDesc::AvgPool {
                        input: t(1, &[1, 2, 4, 4]),
                        out: t(3, &[1, 2, 1, 1]),
                        geom: pg(4, 1, [0; 4]),
                        count_pad: false,
                    },
                ],
            },
            vec![rw(512), rw(128), rw(200), rw(8)],
        ),
        (
            "clip_sigmoid_lrn",
            Program {
                ops: vec![
                    OpDesc::Clip {
                        input: t(0, &[1, 5, 3, 3]),
                        out: t(1, &[1, 5, 3, 3]),
                        min: 0.0,
                        max: 6.0,
                    },
                    OpDesc::Sigmoid {
                        input: t(1, &[1, 5, 3, 3]),
                        out: t(1, &[1, 5, 3, 3]),
                    },
                    OpDesc::Lrn {
                        input: t(1, &[1, 5, 3, 3]),
                        out: t(2, &[1, 5, 3, 3]),
                        size: 3,
                        alpha: 1e-2,
                        beta: 0.75,
                        bias: 1.0,
                    },
                ],
            },
            vec![rw(180), rw(180), rw(180)],
        ),
    ]
}

fn requests() -> Vec<(&'static str, Request)> {
    let nop = Program {
        ops: vec![OpDesc::Nop],
    }
    .encode();
    vec![
        (
            "get_caps",
            Request::GetCaps(GetCaps {
                hdr: Hdr::new(VIRTIO_ACCEL_CMD_GET_CAPS, 0),
                capset: 0.into(),
                padding: 0.into(),
            }),
        ),
        (
            "ctx_create",
            Request::CtxCreate(CtxCreate {
                hdr: Hdr::new(VIRTIO_ACCEL_CMD_CTX_CREATE, 0),
                priority: 1.into(),
                padding: 0.into(),
            }),
        ),
        (
            "ctx_destroy",
            Request::CtxDestroy(Hdr::new(VIRTIO_ACCEL_CMD_CTX_DESTROY, 1)),
        ),
        (
            "bo_create",
            Request::BoCreate(BoCreate {
                hdr: Hdr::new(VIRTIO_ACCEL_CMD_BO_CREATE, 1),
                size: 4096.into(),
                flags: 0.into(),
                padding: 0.into(),
            }),
        ),
        (
            "bo_info",
            Request::BoInfo(BoReq {
                hdr: Hdr::new(VIRTIO_ACCEL_CMD_BO_INFO, 1),
                bo_handle: 1.into(),
                padding: 0.into(),
            }),
        ),
        (
            "bo_attach",
            Request::BoAttachBacking {
                req: BoAttachBacking {
                    hdr: Hdr::new(VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING, 1),
                    bo_handle: 1.into(),
                    nr_entries: 2.into(),
                },
                entries: vec![
                    MemEntry {
                        addr: 0x4000.into(),
                        length: 2048.into(),
                        padding: 0.into(),
                    },
                    MemEntry {
                        addr: 0x8000.into(),
                        length: 2048.into(),
                        padding: 0.into(),
                    },
                ],
            },
        ),
        (
            "fence_poll",
            Request::FencePoll(FencePoll {
                hdr: Hdr::new(VIRTIO_ACCEL_CMD_FENCE_POLL, 1),
                seqno: 1.into(),
            }),
        ),
        (
            "ioctl",
            Request::Ioctl {
                req: Ioctl {
                    hdr: Hdr::new(VIRTIO_ACCEL_CMD_IOCTL, 1),
                    cmd: 1.into(),
                    in_size: 0.into(),
                    out_size: 32.into(),
                    padding: 0.into(),
                },
                payload: vec![],
            },
        ),
        (
            "submit",
            Request::Submit {
                req: Submit {
                    hdr: Hdr::new(VIRTIO_ACCEL_CMD_SUBMIT, 1),
                    out_fence: 1.into(),
                    flags: VIRTIO_ACCEL_SUBMIT_F_INLINE.into(),
                    cmd_size: (nop.len() as u32).into(),
                    nr_bos: 1.into(),
                    nr_in_fences: 1.into(),
                    ..Default::default()
                },
                bos: vec![SubmitBo {
                    bo_handle: 1.into(),
                    access: 3.into(),
                }],
                in_fences: vec![FenceRef {
                    ctx_id: 1.into(),
                    padding: 0.into(),
                    seqno: 0.into(),
                }],
                inline_cmd: nop,
            },
        ),
    ]
}

/// A guest memory image for the ring target: per queue q a descriptor
/// table at q·0x400, avail ring at +0x100, used ring at +0x200 (16
/// entries), request and response buffers from 0x1000.
fn ring_image(chains: &[(u16, Vec<u8>, u32)]) -> Vec<u8> {
    let mut mem = vec![0u8; 0x4000];
    let mut data = 0x1000usize;
    let mut next_desc = [0u16; 3];
    let mut avail = [0u16; 3];
    for (q, req, resp) in chains {
        let q = usize::from(*q);
        let base = q * 0x400;
        let (d0, d1) = (next_desc[q], next_desc[q] + 1);
        next_desc[q] += 2;
        let (rq, rs) = (data, data + req.len().next_multiple_of(16));
        data = rs + (*resp as usize).next_multiple_of(16);
        mem[rq..rq + req.len()].copy_from_slice(req);
        let mut desc = |i: u16, addr: usize, len: u32, flags: u16, next: u16| {
            let at = base + 16 * usize::from(i);
            mem[at..at + 8].copy_from_slice(&(addr as u64).to_le_bytes());
            mem[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
            mem[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
            mem[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
        };
        if req.is_empty() {
            desc(d0, rs, *resp, 2, 0);
        } else {
            desc(d0, rq, req.len() as u32, 1, d1);
            desc(d1, rs, *resp, 2, 0);
        }
        let slot = base + 0x100 + 4 + 2 * usize::from(avail[q]);
        mem[slot..slot + 2].copy_from_slice(&d0.to_le_bytes());
        avail[q] += 1;
    }
    for q in 0..3 {
        let at = q * 0x400 + 0x100 + 2;
        mem[at..at + 2].copy_from_slice(&avail[q].to_le_bytes());
    }
    mem
}

/// Device states as a destination reads them, without the header the
/// `state` target puts before the fuzzer's bytes.
fn states() -> Vec<(&'static str, Vec<u8>)> {
    use vhost_device_accel::state::*;
    let copy = Program {
        ops: vec![OpDesc::Copy {
            src: TensorDesc::dense(0, DType::F32, 0, &[256]),
            dst: TensorDesc::dense(1, DType::F32, 0, &[256]),
        }],
    };
    let bo = |handle, at| BoState {
        handle,
        size: 4096,
        flags: 0,
        backing: Some(vec![(at, 4096)]),
    };
    let job = |token, out_fence, doomed| JobState {
        token,
        out_fence,
        bos: vec![
            (1, VIRTIO_ACCEL_ACCESS_READ),
            (2, VIRTIO_ACCEL_ACCESS_WRITE),
        ],
        waits: vec![],
        cmd: copy.encode(),
        doomed,
        ran: false,
    };
    let ctx = |id, lost| ContextState {
        id,
        priority: VIRTIO_ACCEL_PRIORITY_NORMAL,
        next_bo: 3,
        last_submitted: 3,
        completed: 1,
        lost,
        bos: vec![bo(1, 0x10000), bo(2, 0x20000)],
        jobs: vec![
            job(7, 2, None),
            job(8, 3, Some(VIRTIO_ACCEL_RESP_ERR_CANCELED)),
        ],
    };
    let answer = Response::Submit(RespSubmit {
        hdr: Hdr::new(VIRTIO_ACCEL_RESP_OK, 1),
        fence: 1.into(),
        device_time_ns: 5.into(),
    });
    let state = |contexts| VmState {
        npu_kind: VIRTIO_ACCEL_NPU_SIM,
        cmd_format: VIRTIO_ACCEL_CMD_FORMAT_SNPU,
        device: DeviceState {
            features: 0b111,
            next_ctx: 3,
            contexts,
            events: vec![EventState {
                ctx: 2,
                fence: 1,
                reason: VIRTIO_ACCEL_LOST_HANG,
            }],
            answers: vec![AnswerState {
                token: 6,
                response: answer.encode(),
            }],
        },
        rings: vec![],
        parked: vec![],
        next_token: 9,
    };
    let body = |s: VmState| s.encode().unwrap()[12..].to_vec();
    vec![
        ("empty", body(state(vec![]))),
        ("one_context", body(state(vec![ctx(1, None)]))),
        (
            "lost_context",
            body(state(vec![
                ctx(1, None),
                ctx(2, Some(VIRTIO_ACCEL_LOST_HANG)),
            ])),
        ),
    ]
}

/// Small ONNX models built here with the generated protobuf types: a CNN
/// (Conv, BatchNormalization, Relu, MaxPool, Flatten, Gemm, Softmax) and a
/// graph of the other operators the compiler lowers.
fn onnx_models() -> Vec<(&'static str, Vec<u8>)> {
    use prost::Message;
    use virtio_accel_guest::model::pb;
    let f32s = |name: &str, dims: &[i64], v: Vec<f32>| pb::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        float_data: v,
        ..Default::default()
    };
    let i64s = |name: &str, v: Vec<i64>| pb::TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(7),
        int64_data: v,
        ..Default::default()
    };
    let ints = |name: &str, v: &[i64]| pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(7),
        ints: v.to_vec(),
        ..Default::default()
    };
    let int = |name: &str, v: i64| pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(2),
        i: Some(v),
        ..Default::default()
    };
    let node =
        |op: &str, ins: &[&str], outs: &[&str], attrs: Vec<pb::AttributeProto>| pb::NodeProto {
            op_type: Some(op.into()),
            name: Some(format!("{op}_{}", outs[0])),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        };
    let value = |name: &str, dims: &[i64]| pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let model = |nodes, inits, dims: &[i64], out: &str| {
        pb::ModelProto {
            ir_version: Some(7),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(11),
            }],
            graph: Some(pb::GraphProto {
                name: Some("seed".into()),
                node: nodes,
                initializer: inits,
                input: vec![value("x", dims)],
                output: vec![value(out, &[])],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let seq = |n: usize| {
        (0..n)
            .map(|i| (i % 7) as f32 * 0.1 - 0.3)
            .collect::<Vec<_>>()
    };
    let cnn = model(
        vec![
            node(
                "Conv",
                &["x", "w", "b"],
                &["c"],
                vec![ints("pads", &[1, 1, 1, 1])],
            ),
            node(
                "BatchNormalization",
                &["c", "s", "t", "m", "v"],
                &["n"],
                vec![],
            ),
            node("Relu", &["n"], &["r"], vec![]),
            node(
                "MaxPool",
                &["r"],
                &["p"],
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
            ),
            node("Flatten", &["p"], &["f"], vec![]),
            node("Gemm", &["f", "g", "gb"], &["y"], vec![int("transB", 1)]),
            node("Softmax", &["y"], &["z"], vec![]),
        ],
        vec![
            f32s("w", &[4, 3, 3, 3], seq(108)),
            f32s("b", &[4], seq(4)),
            f32s("s", &[4], vec![1.0; 4]),
            f32s("t", &[4], seq(4)),
            f32s("m", &[4], seq(4)),
            f32s("v", &[4], vec![0.5; 4]),
            f32s("g", &[10, 64], seq(640)),
            f32s("gb", &[10], seq(10)),
        ],
        &[1, 3, 8, 8],
        "z",
    );
    let other = model(
        vec![
            node("ConstantOfShape", &["shape"], &["k"], vec![]),
            node(
                "Conv",
                &["x", "k"],
                &["c"],
                vec![int("group", 2), ints("dilations", &[2, 2])],
            ),
            node("Sigmoid", &["c"], &["s"], vec![]),
            node("Concat", &["c", "s"], &["cat"], vec![int("axis", 1)]),
            node(
                "Transpose",
                &["cat"],
                &["tr"],
                vec![ints("perm", &[0, 2, 3, 1])],
            ),
            node("Reshape", &["tr", "rs"], &["r"], vec![]),
            node("Clip", &["r"], &["cl"], vec![]),
            node("Add", &["cl", "r"], &["a"], vec![]),
            node("GlobalAveragePool", &["c"], &["gap"], vec![]),
            node("Sum", &["a", "a", "a"], &["y"], vec![]),
        ],
        vec![i64s("shape", vec![2, 1, 3, 3]), i64s("rs", vec![1, -1])],
        &[1, 2, 7, 7],
        "y",
    );
    vec![("cnn", cnn), ("ops", other)]
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let dir = Path::new(&dir);
    for (name, r) in requests() {
        let mut b = vec![0u8];
        b.extend(r.encode());
        write(dir, "decode", &format!("req_{name}"), &b);
        let t = r.hdr().type_.get();
        let idx = REQUEST_TYPES.iter().position(|(k, _)| *k == t).unwrap() as u16;
        let mut b = vec![1u8];
        b.extend(idx.to_le_bytes());
        b.extend(Response::error(t, 1, VIRTIO_ACCEL_RESP_OK).encode());
        write(dir, "decode", &format!("resp_{name}"), &b);
    }
    let ev = Event {
        hdr: Hdr::new(VIRTIO_ACCEL_EVENT_CONTEXT_LOST, 1),
        fence: 3.into(),
        reason: VIRTIO_ACCEL_LOST_HANG.into(),
        padding: 0.into(),
    };
    let mut b = vec![2u8];
    b.extend(ev.as_bytes());
    write(dir, "decode", "event", &b);

    for (name, p, bos) in programs() {
        let mut b = vec![bos.len() as u8];
        for i in 0..4 {
            let (s, a) = bos.get(i).copied().unwrap_or((0, 0));
            b.extend(s.to_le_bytes());
            b.push(a);
        }
        b.push(0x11);
        b.extend(p.encode());
        write(dir, "snpu", name, &b);
    }

    let reqs = requests();
    let enc = |n: &str| reqs.iter().find(|(k, _)| *k == n).unwrap().1.encode();
    let image = ring_image(&[
        (0, enc("get_caps"), 112),
        (0, enc("ctx_create"), 16),
        (0, enc("bo_create"), 32),
        (0, enc("bo_attach"), 16),
        (1, enc("submit"), 32),
        (2, vec![], 32),
    ]);
    write(dir, "ring", "control_submit_event", &image);
    let image = ring_image(&[(0, enc("ctx_create"), 16), (1, enc("submit"), 32)]);
    write(dir, "ring", "ctx_and_submit", &image);
    for (name, b) in states() {
        write(dir, "state", name, &b);
    }
    for (name, bytes) in onnx_models() {
        write(dir, "onnx", name, &bytes);
    }
    for (name, bytes) in uapi_requests() {
        write(dir, "uapi", &name, &bytes);
    }
}

/// One admitted request per driver ioctl: allowed values, one element
/// per counted pointer, room for the answer.
fn uapi_requests() -> Vec<(String, Vec<u8>)> {
    use vhost_device_accel::backend::accel::uapi::{Count, Route, Rule, TABLES};
    let mut v = Vec::new();
    let mut pick = 0u8;
    for t in TABLES {
        for i in t.ioctls {
            let mut s = vec![0u8; i.size];
            let mut data = Vec::new();
            for f in i.fields {
                match f.rule {
                    Rule::OneOf(vals, _) => {
                        s[f.off..f.off + f.width].copy_from_slice(&vals[0].to_le_bytes()[..f.width])
                    }
                    Rule::Pointer(p) => {
                        let n = match p.count {
                            Count::Fixed(n) => n as usize,
                            Count::Field { off, width, .. } => {
                                s[off..off + width].copy_from_slice(&1u64.to_le_bytes()[..width]);
                                1
                            }
                        };
                        if p.dir.sent() {
                            let mut e = vec![0u8; p.elem];
                            for ef in p.elem_fields {
                                if let Rule::OneOf(vals, _) = ef.rule {
                                    e[ef.off..ef.off + ef.width]
                                        .copy_from_slice(&vals[0].to_le_bytes()[..ef.width]);
                                }
                            }
                            for _ in 0..n {
                                data.extend_from_slice(&e);
                            }
                        }
                    }
                    _ => {}
                }
            }
            let route = u8::from(i.route == Route::Submit);
            let mut b = vec![pick, route];
            b.extend(4096u16.to_le_bytes());
            b.extend(s);
            b.extend(data);
            v.push((i.name.to_lowercase(), b));
            pick += 1;
        }
    }
    v
}
