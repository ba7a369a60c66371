//! Validation of the neural-network ops (CONV, pooling, CLIP, SIGMOID,
//! LRN): what is admitted round-trips; each rule refuses what breaks it.

use virtio_accel_protocol::snpu::*;
use zerocopy::{FromBytes, IntoBytes};

fn t(bo: u32, dims: &[u32]) -> TensorDesc {
    TensorDesc::dense(bo, DType::F32, 0, dims)
}

fn conv(x: [u32; 4], w: [u32; 4], o: [u32; 4], geom: ConvGeom) -> OpDesc {
    OpDesc::Conv {
        input: t(0, &x),
        filter: t(1, &w),
        bias: Some(t(2, &[w[0]])),
        out: t(3, &o),
        geom,
        relu: true,
    }
}

fn g(stride: u32, pad: u32, dilation: u32) -> ConvGeom {
    ConvGeom {
        stride: [stride; 2],
        pad: [pad; 4],
        dilation: [dilation; 2],
    }
}

fn pool(max: bool, x: [u32; 4], o: [u32; 4], k: u32, s: u32, pad: [u32; 4]) -> OpDesc {
    let geom = PoolGeom {
        kernel: [k; 2],
        stride: [s; 2],
        pad,
    };
    let (input, out) = (t(0, &x), t(1, &o));
    if max {
        OpDesc::MaxPool { input, out, geom }
    } else {
        OpDesc::AvgPool {
            input,
            out,
            geom,
            count_pad: true,
        }
    }
}

fn check(op: OpDesc) -> Result<Program, CmdError> {
    parse(&Program { ops: vec![op] }.encode())
}

fn shape_err(op: OpDesc) -> bool {
    matches!(check(op), Err(CmdError::Shape { op: 0, .. }))
}

#[test]
fn valid_nn_ops_round_trip() {
    let ops = vec![
        // grouped (2), dilated, strided
        conv([1, 4, 9, 9], [6, 2, 3, 3], [1, 6, 4, 4], g(2, 1, 2)),
        // depthwise
        conv([2, 8, 5, 5], [8, 1, 3, 3], [2, 8, 5, 5], g(1, 1, 1)),
        pool(true, [1, 2, 7, 7], [1, 2, 3, 3], 3, 2, [0; 4]),
        // ceil mode
        pool(false, [1, 2, 8, 8], [1, 2, 4, 4], 3, 2, [0; 4]),
        OpDesc::Clip {
            input: t(0, &[10]),
            out: t(0, &[10]),
            min: 0.0,
            max: 6.0,
        },
        OpDesc::Clip {
            input: t(0, &[10]),
            out: t(1, &[10]),
            min: f32::NEG_INFINITY,
            max: f32::INFINITY,
        },
        OpDesc::Sigmoid {
            input: t(0, &[3, 4]),
            out: t(1, &[3, 4]),
        },
        OpDesc::Lrn {
            input: t(0, &[1, 16, 4, 4]),
            out: t(1, &[1, 16, 4, 4]),
            size: 5,
            alpha: 1e-4,
            beta: 0.75,
            bias: 1.0,
        },
    ];
    let p = Program { ops };
    assert_eq!(parse(&p.encode()), Ok(p.clone()));
    assert!(p.work_bytes() > SNPU_SCRATCH_BYTES);
}

#[test]
fn conv_shapes_must_agree() {
    let ok = conv([1, 4, 9, 9], [6, 2, 3, 3], [1, 6, 4, 4], g(2, 1, 2));
    assert!(check(ok).is_ok());
    // filter channels that do not divide the input's
    assert!(shape_err(conv(
        [1, 4, 9, 9],
        [6, 3, 3, 3],
        [1, 6, 4, 4],
        g(2, 1, 2)
    )));
    // groups (4 / 1) that do not divide the output channels
    assert!(shape_err(conv(
        [1, 4, 9, 9],
        [6, 1, 3, 3],
        [1, 6, 4, 4],
        g(2, 1, 2)
    )));
    // wrong output extent, channels, batch
    assert!(shape_err(conv(
        [1, 4, 9, 9],
        [6, 2, 3, 3],
        [1, 6, 5, 4],
        g(2, 1, 2)
    )));
    assert!(shape_err(conv(
        [1, 4, 9, 9],
        [6, 2, 3, 3],
        [1, 5, 4, 4],
        g(2, 1, 2)
    )));
    assert!(shape_err(conv(
        [1, 4, 9, 9],
        [6, 2, 3, 3],
        [2, 6, 4, 4],
        g(2, 1, 2)
    )));
    // zero stride or dilation
    assert!(shape_err(conv(
        [1, 4, 9, 9],
        [6, 2, 3, 3],
        [1, 6, 4, 4],
        g(0, 1, 2)
    )));
    assert!(shape_err(conv(
        [1, 4, 9, 9],
        [6, 2, 3, 3],
        [1, 6, 4, 4],
        g(2, 1, 0)
    )));
    // a dilated filter larger than the padded input
    assert!(shape_err(conv(
        [1, 4, 4, 4],
        [6, 2, 3, 3],
        [1, 6, 1, 1],
        g(1, 0, 2)
    )));
    // dilation at the top of u32 does not overflow
    assert!(shape_err(conv(
        [1, 4, 4, 4],
        [6, 2, 3, 3],
        [1, 6, 1, 1],
        g(1, u32::MAX, u32::MAX)
    )));
    // a bias that is not [OC]
    let OpDesc::Conv {
        input,
        filter,
        out,
        geom,
        ..
    } = conv([1, 4, 9, 9], [6, 2, 3, 3], [1, 6, 4, 4], g(2, 1, 2))
    else {
        unreachable!()
    };
    assert!(shape_err(OpDesc::Conv {
        input,
        filter,
        bias: Some(t(2, &[5])),
        out,
        geom,
        relu: false,
    }));
}

#[test]
fn pool_windows_must_fit() {
    // floor and ceil are admitted, nothing else
    assert!(check(pool(true, [1, 1, 8, 8], [1, 1, 3, 3], 3, 2, [0; 4])).is_ok());
    assert!(check(pool(true, [1, 1, 8, 8], [1, 1, 4, 4], 3, 2, [0; 4])).is_ok());
    assert!(shape_err(pool(
        true,
        [1, 1, 8, 8],
        [1, 1, 5, 5],
        3,
        2,
        [0; 4]
    )));
    assert!(shape_err(pool(
        true,
        [1, 1, 8, 8],
        [1, 1, 2, 2],
        3,
        2,
        [0; 4]
    )));
    // padding as large as the kernel: a window could be all padding
    assert!(shape_err(pool(
        true,
        [1, 1, 8, 8],
        [1, 1, 6, 6],
        2,
        2,
        [2; 4]
    )));
    // ceil mode whose last window starts in the bottom padding
    assert!(shape_err(pool(
        false,
        [1, 1, 7, 7],
        [1, 1, 5, 5],
        2,
        2,
        [1; 4]
    )));
    // kernel larger than the padded input; window above the limit
    assert!(shape_err(pool(
        true,
        [1, 1, 2, 2],
        [1, 1, 1, 1],
        3,
        1,
        [0; 4]
    )));
    assert!(shape_err(pool(
        true,
        [1, 1, 1, 1],
        [1, 1, 1, 1],
        1 << 10,
        1,
        [0; 4]
    )));
    // C changes
    assert!(shape_err(pool(
        true,
        [1, 2, 8, 8],
        [1, 1, 3, 3],
        3,
        2,
        [0; 4]
    )));
    // zero stride
    assert!(shape_err(pool(
        true,
        [1, 1, 8, 8],
        [1, 1, 3, 3],
        3,
        0,
        [0; 4]
    )));
}

#[test]
fn float_params_must_be_usable() {
    let clip = |min: f32, max: f32| OpDesc::Clip {
        input: t(0, &[4]),
        out: t(1, &[4]),
        min,
        max,
    };
    assert!(shape_err(clip(f32::NAN, 1.0)));
    assert!(shape_err(clip(0.0, f32::NAN)));
    assert!(shape_err(clip(2.0, 1.0)));
    let lrn = |size: u32, beta: f32| OpDesc::Lrn {
        input: t(0, &[1, 4, 2, 2]),
        out: t(1, &[1, 4, 2, 2]),
        size,
        alpha: 1.0,
        beta,
        bias: 1.0,
    };
    assert!(check(lrn(3, 0.75)).is_ok());
    assert!(shape_err(lrn(0, 0.75)));
    assert!(shape_err(lrn(3, f32::INFINITY)));
    assert!(shape_err(lrn((1 << 18) + 1, 0.75)));
}

#[test]
fn flags_are_reserved_except_where_an_op_defines_them() {
    let mut b = Program {
        ops: vec![conv([1, 4, 9, 9], [6, 2, 3, 3], [1, 6, 4, 4], g(2, 1, 2))],
    }
    .encode();
    let at = core::mem::size_of::<CmdHdr>();
    let op = |b: &mut Vec<u8>| Op::mut_from_bytes(&mut b[at..]).unwrap().flags.set(2);
    op(&mut b);
    assert!(matches!(parse(&b), Err(CmdError::Reserved { op: 0, .. })));
    // RELU defines no flags: bit 0 is reserved there.
    let mut b = Program {
        ops: vec![OpDesc::Relu {
            input: t(0, &[4]),
            out: t(1, &[4]),
        }],
    }
    .encode();
    Op::mut_from_bytes(&mut b[at..]).unwrap().flags.set(1);
    assert!(matches!(parse(&b), Err(CmdError::Reserved { op: 0, .. })));
    let _ = b.as_bytes();
}

#[test]
fn every_new_opcode_is_in_the_ops_mask() {
    for op in [
        SNPU_OP_CONV,
        SNPU_OP_MAXPOOL,
        SNPU_OP_AVGPOOL,
        SNPU_OP_CLIP,
        SNPU_OP_SIGMOID,
        SNPU_OP_LRN,
    ] {
        assert!(SNPU_OPS_ALL & (1 << op) != 0);
    }
    assert_eq!(SNPU_OPS_ALL >> 14, 0, "no bit without an opcode");
}
