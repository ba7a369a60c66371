//! The model compiler's refusals and its checks against the device:
//! unsupported operators name the operator and node, opcodes the device
//! lacks are refused before anything runs, and what it emits validates.

use prost::Message;
use virtio_accel_guest::model::onnx::Graph;
use virtio_accel_guest::model::{compile, pb, DeviceLimits, ModelError};
use virtio_accel_protocol::snpu::{parse, SNPU_OPS_ALL, SNPU_OP_CONV};

fn node(op: &str, name: &str, ins: &[&str], out: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        ..Default::default()
    }
}

fn value(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// x [1,2,4,4] → Conv (w [3,2,1,1]) → `op` → y.
fn model(op: &str) -> Graph {
    let m = pb::ModelProto {
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(pb::GraphProto {
            node: vec![
                node("Conv", "conv_1", &["x", "w"], "c"),
                node(op, "the_node", &["c"], "y"),
            ],
            initializer: vec![pb::TensorProto {
                name: Some("w".into()),
                dims: vec![3, 2, 1, 1],
                data_type: Some(1),
                float_data: vec![0.5; 6],
                ..Default::default()
            }],
            input: vec![value("x", &[1, 2, 4, 4])],
            output: vec![value("y", &[])],
            ..Default::default()
        }),
        ..Default::default()
    };
    Graph::parse(&m.encode_to_vec()).unwrap()
}

fn limits(ops: u64) -> DeviceLimits {
    DeviceLimits {
        ops,
        max_bo_size: 1 << 28,
        max_cmd_size: 1 << 20,
        max_job_memory: 64 << 20,
    }
}

#[test]
fn an_unsupported_operator_is_refused_naming_it_and_its_node() {
    let e = compile(&model("Erf"), &[vec![1, 2, 4, 4]], limits(SNPU_OPS_ALL)).unwrap_err();
    assert!(
        matches!(&e, ModelError::Unsupported { op, node, .. } if op == "Erf" && node == "the_node")
    );
    assert!(e.to_string().contains("Erf (node the_node)"), "{e}");
}

#[test]
fn an_opcode_the_device_lacks_is_refused_before_anything_runs() {
    let without_conv = SNPU_OPS_ALL & !(1 << SNPU_OP_CONV);
    let e = compile(&model("Relu"), &[vec![1, 2, 4, 4]], limits(without_conv)).unwrap_err();
    assert!(e.to_string().contains("Conv (node conv_1)"), "{e}");
    assert!(e.to_string().contains("opcode 8"), "{e}");
}

#[test]
fn the_compiled_model_fuses_relu_and_validates() {
    let c = compile(&model("Relu"), &[vec![1, 2, 4, 4]], limits(SNPU_OPS_ALL)).unwrap();
    assert_eq!(c.op_count(), 1, "Relu folded into the Conv");
    let mut bos = vec![(c.arena_bytes, 3)];
    bos.extend(c.weights.iter().map(|w| ((w.len() as u64).max(64), 1)));
    for seg in &c.segments {
        let p = parse(&seg.encode()).unwrap();
        p.check_bounds(&bos).unwrap();
    }
    assert_eq!(c.outputs[0].dims, [1, 3, 4, 4]);
}

#[test]
fn input_dims_the_model_fixes_are_enforced() {
    let e = compile(&model("Relu"), &[vec![1, 2, 5, 4]], limits(SNPU_OPS_ALL)).unwrap_err();
    assert!(matches!(e, ModelError::Input(_)), "{e}");
}

#[test]
fn weights_above_the_buffer_limit_go_to_several_buffers() {
    // x [1,2,1,1] → Conv (w1) → Conv (w2): two constants of 16 bytes,
    // buffers of at most 128 bytes: each constant takes 64 (aligned), so
    // the second opens a second weights buffer.
    let w = |name: &str| pb::TensorProto {
        name: Some(name.into()),
        dims: vec![2, 2, 1, 1],
        data_type: Some(1),
        float_data: vec![0.25; 4],
        ..Default::default()
    };
    let m = pb::ModelProto {
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(pb::GraphProto {
            node: vec![
                node("Conv", "c1", &["x", "w1"], "c"),
                node("Conv", "c2", &["c", "w2"], "y"),
            ],
            initializer: vec![w("w1"), w("w2")],
            input: vec![value("x", &[1, 2, 1, 1])],
            output: vec![value("y", &[])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let g = Graph::parse(&m.encode_to_vec()).unwrap();
    let mut l = limits(SNPU_OPS_ALL);
    l.max_bo_size = 128;
    let c = compile(&g, &[vec![1, 2, 1, 1]], l).unwrap();
    assert_eq!(c.weights.len(), 2, "two weights buffers");
    assert!(c.weights.iter().all(|w| w.len() <= 128));
    let mut bos = vec![(c.arena_bytes, 3)];
    bos.extend(c.weights.iter().map(|w| ((w.len() as u64).max(64), 1)));
    let p = parse(&c.segments[0].encode()).unwrap();
    p.check_bounds(&bos).unwrap();
    let (ins, _) = p.ops[1].tensors();
    assert_eq!(
        ins[1].bo_index, 2,
        "the second filter in the second weights buffer"
    );
    l.max_bo_size = 64;
    assert!(matches!(
        compile(&g, &[vec![1, 2, 1, 1]], l),
        Err(ModelError::Capacity(_))
    ));
}
