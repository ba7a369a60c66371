//! The software NPU command stream: round trip, validation, bounds.

use virtio_accel_protocol::snpu::*;
use virtio_accel_protocol::{VIRTIO_ACCEL_ACCESS_READ as R, VIRTIO_ACCEL_ACCESS_WRITE as W};

fn t(bo: u32, dtype: DType, dims: &[u32]) -> TensorDesc {
    TensorDesc::dense(bo, dtype, 0, dims)
}

fn mlp() -> Program {
    Program {
        ops: vec![
            OpDesc::MatMul {
                a: t(0, DType::F32, &[4, 8]),
                b: t(1, DType::F32, &[8, 16]),
                out: t(2, DType::F32, &[4, 16]),
                quant: None,
            },
            OpDesc::Add {
                a: t(2, DType::F32, &[4, 16]),
                b: t(3, DType::F32, &[16]),
                out: t(2, DType::F32, &[4, 16]),
            },
            OpDesc::Relu {
                input: t(2, DType::F32, &[4, 16]),
                out: t(2, DType::F32, &[4, 16]),
            },
            OpDesc::Softmax {
                input: t(2, DType::F32, &[4, 16]),
                out: t(4, DType::F32, &[4, 16]),
            },
            OpDesc::MatMul {
                a: t(5, DType::I8, &[2, 3]),
                b: t(5, DType::I8, &[3, 2]),
                out: t(6, DType::I8, &[2, 2]),
                quant: Some(Quant {
                    a_zero: -3,
                    b_zero: 2,
                    out_zero: 1,
                    scale: 0.25,
                }),
            },
            OpDesc::Conv2d {
                input: t(0, DType::F32, &[1, 5, 5, 2]),
                filter: t(1, DType::F32, &[3, 3, 2, 4]),
                bias: None,
                out: t(2, DType::F32, &[1, 3, 3, 4]),
                stride: [2, 2],
                pad: [1, 1, 1, 1],
            },
            OpDesc::Nop,
        ],
    }
}

#[test]
fn program_round_trips() {
    let p = mlp();
    assert_eq!(parse(&p.encode()), Ok(p));
}

#[test]
fn empty_program_is_valid() {
    let p = Program::default();
    assert_eq!(parse(&p.encode()), Ok(p));
}

#[test]
fn bad_header_is_rejected() {
    let mut b = mlp().encode();
    b[0] ^= 1;
    assert!(matches!(parse(&b), Err(CmdError::Magic(_))));
    let mut b = mlp().encode();
    b[4] = 9;
    assert_eq!(parse(&b), Err(CmdError::Version(9)));
    let mut b = mlp().encode();
    b.pop();
    assert!(matches!(parse(&b), Err(CmdError::Size(_))));
    assert!(matches!(parse(&b[..10]), Err(CmdError::Size(10))));
    let mut b = Program::default().encode();
    b[6..8].copy_from_slice(&(SNPU_MAX_OPS + 1).to_le_bytes());
    assert_eq!(parse(&b), Err(CmdError::TooManyOps(SNPU_MAX_OPS + 1)));
}

#[test]
fn unknown_opcode_is_rejected() {
    let mut b = Program {
        ops: vec![OpDesc::Nop],
    }
    .encode();
    b[16] = 99;
    assert_eq!(parse(&b), Err(CmdError::Opcode { op: 0, opcode: 99 }));
}

#[test]
fn nonzero_reserved_is_rejected() {
    let mut b = Program {
        ops: vec![OpDesc::Nop],
    }
    .encode();
    b[18] = 1; // op flags
    assert!(matches!(parse(&b), Err(CmdError::Reserved { op: 0, .. })));
    let mut b = mlp().encode();
    b[16 + 232 - 1] = 1; // last param of a f32 matmul
    assert!(matches!(parse(&b), Err(CmdError::Reserved { op: 0, .. })));
}

#[test]
fn bad_tensor_fields_are_rejected() {
    let base = mlp().encode();
    let tensor0 = 16 + 8; // first tensor of op 0
    let mut b = base.clone();
    b[tensor0 + 4] = 77; // dtype
    assert!(matches!(
        parse(&b),
        Err(CmdError::Tensor {
            why: "unknown dtype",
            ..
        })
    ));
    let mut b = base.clone();
    b[tensor0 + 5] = 5; // rank
    assert!(matches!(
        parse(&b),
        Err(CmdError::Tensor {
            why: "rank must be 1 to 4",
            ..
        })
    ));
    let mut b = base.clone();
    b[tensor0 + 16 + 12] = 1; // dims[3] above rank 2
    assert!(matches!(parse(&b), Err(CmdError::Tensor { .. })));
}

#[test]
fn shape_mismatches_are_rejected() {
    let p = Program {
        ops: vec![OpDesc::MatMul {
            a: t(0, DType::F32, &[4, 8]),
            b: t(1, DType::F32, &[7, 16]),
            out: t(2, DType::F32, &[4, 16]),
            quant: None,
        }],
    };
    assert!(matches!(
        parse(&p.encode()),
        Err(CmdError::Shape { op: 0, .. })
    ));
    let p = Program {
        ops: vec![OpDesc::Add {
            a: t(0, DType::F32, &[4, 8]),
            b: t(1, DType::F32, &[3]),
            out: t(2, DType::F32, &[4, 8]),
        }],
    };
    assert!(matches!(parse(&p.encode()), Err(CmdError::Shape { .. })));
    let mut conv = mlp().ops[5].clone();
    if let OpDesc::Conv2d { out, .. } = &mut conv {
        out.dims[1] = 4;
        *out = t(2, DType::F32, &[1, 4, 3, 4]);
    }
    assert!(matches!(
        parse(&Program { ops: vec![conv] }.encode()),
        Err(CmdError::Shape { .. })
    ));
}

#[test]
fn strided_output_is_rejected() {
    let mut out = t(1, DType::F32, &[4, 4]);
    out.strides = [8, 1, 0, 0];
    let p = Program {
        ops: vec![OpDesc::Copy {
            src: t(0, DType::F32, &[4, 4]),
            dst: out,
        }],
    };
    assert!(matches!(
        parse(&p.encode()),
        Err(CmdError::Tensor { tensor: 1, .. })
    ));
}

#[test]
fn extent_overflow_is_rejected() {
    let mut src = t(0, DType::F32, &[2, 2]);
    src.offset = u64::MAX - 4;
    let p = Program {
        ops: vec![OpDesc::Copy {
            src,
            dst: t(1, DType::F32, &[2, 2]),
        }],
    };
    assert_eq!(
        parse(&p.encode()),
        Err(CmdError::Overflow { op: 0, tensor: 0 })
    );
}

#[test]
fn bounds_are_checked_against_each_buffer() {
    let p = Program {
        ops: vec![OpDesc::Copy {
            src: TensorDesc::dense(0, DType::F32, 8, &[4]),
            dst: t(1, DType::F32, &[4]),
        }],
    };
    assert_eq!(p.check_bounds(&[(24, R), (16, W)]), Ok(()));
    assert_eq!(
        p.check_bounds(&[(23, R), (16, W)]),
        Err(CmdError::OutOfBounds {
            op: 0,
            tensor: 0,
            start: 8,
            end: 24,
            size: 23
        })
    );
    assert!(matches!(
        p.check_bounds(&[(24, R), (16, R)]),
        Err(CmdError::Access { need: "write", .. })
    ));
    assert!(matches!(
        p.check_bounds(&[(24, W), (16, W)]),
        Err(CmdError::Access { need: "read", .. })
    ));
    assert!(matches!(
        p.check_bounds(&[(24, R)]),
        Err(CmdError::BoIndex {
            index: 1,
            count: 1,
            ..
        })
    ));
}

#[test]
fn broadcast_strides_of_zero_read_one_element() {
    let mut b = t(1, DType::F32, &[4, 8]);
    b.strides = [0, 0, 0, 0];
    let p = Program {
        ops: vec![OpDesc::Add {
            a: t(0, DType::F32, &[4, 8]),
            b,
            out: t(2, DType::F32, &[4, 8]),
        }],
    };
    let p = parse(&p.encode()).unwrap();
    assert_eq!(p.check_bounds(&[(128, R), (4, R), (128, W)]), Ok(()));
}
