//! Unit tests of SNPU execution: each op, and sliced runs against whole ones.

use super::*;
use crate::memory::{Backing, GuestMem, MemStats};
use virtio_accel_protocol::snpu::Quant;
use vm_memory::GuestAddress;

/// Runs one op over buffers of the given initial contents.
/// Runs one op whole over buffers of the given initial contents.
fn run_on(op: OpDesc, init: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let (out, calls) = run_all(&[op], init, Tile::WHOLE, false);
    assert_eq!(calls, 1, "a whole op in one call");
    out
}

pub(super) fn f(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn unf(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub(super) fn t(bo: u32, dt: DType, dims: &[u32]) -> TensorDesc {
    TensorDesc::dense(bo, dt, 0, dims)
}

#[test]
fn add_broadcasts_a_row() {
    let out = run_on(
        OpDesc::Add {
            a: t(0, DType::F32, &[2, 3]),
            b: t(1, DType::F32, &[3]),
            out: t(2, DType::F32, &[2, 3]),
        },
        &[
            f(&[1., 2., 3., 4., 5., 6.]),
            f(&[10., 20., 30.]),
            vec![0; 24],
        ],
    );
    assert_eq!(unf(&out[2]), [11., 22., 33., 14., 25., 36.]);
}

#[test]
fn mul_broadcasts_a_column_through_stride_zero() {
    let mut col = t(1, DType::F32, &[2, 3]);
    col.strides = [1, 0, 0, 0]; // one value per row
    let out = run_on(
        OpDesc::Mul {
            a: t(0, DType::F32, &[2, 3]),
            b: col,
            out: t(2, DType::F32, &[2, 3]),
        },
        &[f(&[1., 2., 3., 4., 5., 6.]), f(&[2., -1.]), vec![0; 24]],
    );
    assert_eq!(unf(&out[2]), [2., 4., 6., -4., -5., -6.]);
}

#[test]
fn relu_int8_and_f32() {
    let out = run_on(
        OpDesc::Relu {
            input: t(0, DType::I8, &[4]),
            out: t(1, DType::I8, &[4]),
        },
        &[vec![0x80, 0xff, 0, 5], vec![9; 4]],
    );
    assert_eq!(out[1], [0, 0, 0, 5]);
    let out = run_on(
        OpDesc::Relu {
            input: t(0, DType::F32, &[3]),
            out: t(0, DType::F32, &[3]),
        },
        &[f(&[-1., 0.5, -0.0])],
    );
    assert_eq!(unf(&out[0]), [0., 0.5, 0.]);
}

#[test]
fn softmax_rows_sum_to_one_and_survive_large_inputs() {
    let out = run_on(
        OpDesc::Softmax {
            input: t(0, DType::F32, &[2, 2]),
            out: t(1, DType::F32, &[2, 2]),
        },
        &[f(&[0., 0., 1000., 0.]), vec![0; 16]],
    );
    let v = unf(&out[1]);
    assert_eq!(&v[..2], &[0.5, 0.5]);
    assert!((v[2] - 1.0).abs() < 1e-6 && v[3] < 1e-6);
}

#[test]
fn matmul_f32_and_strided_transposed_input() {
    // a = [[1,2],[3,4]]; b given transposed in memory via strides.
    let mut bt = t(1, DType::F32, &[2, 2]);
    bt.strides = [1, 2, 0, 0];
    let out = run_on(
        OpDesc::MatMul {
            a: t(0, DType::F32, &[2, 2]),
            b: bt,
            out: t(2, DType::F32, &[2, 2]),
            quant: None,
        },
        // memory of b: [5,7,6,8] read as b[k][n] = mem[k + 2n] -> [[5,6],[7,8]]
        &[f(&[1., 2., 3., 4.]), f(&[5., 7., 6., 8.]), vec![0; 16]],
    );
    assert_eq!(unf(&out[2]), [19., 22., 43., 50.]);
}

#[test]
fn matmul_int8_exact_accumulators_and_requantization() {
    let q = Quant {
        a_zero: -128,
        b_zero: 127,
        out_zero: 0,
        scale: 0.0,
    };
    // K = 3: acc = 3 * (127 - -128) * (-128 - 127) = -195075
    let out = run_on(
        OpDesc::MatMul {
            a: t(0, DType::I8, &[1, 3]),
            b: t(1, DType::I8, &[3, 1]),
            out: t(2, DType::I32, &[1, 1]),
            quant: Some(q),
        },
        &[vec![127; 3], vec![0x80; 3], vec![0; 4]],
    );
    assert_eq!(i32::from_le_bytes(out[2][..4].try_into().unwrap()), -195075);
    let q = Quant {
        a_zero: 0,
        b_zero: 0,
        out_zero: -3,
        scale: 0.5,
    };
    assert_eq!(requantize(5, &q), -1, "2.5 rounds to even 2, plus -3");
    assert_eq!(requantize(7, &q), 1, "3.5 rounds to even 4, plus -3");
    assert_eq!(requantize(1000, &q), 127);
    assert_eq!(requantize(-1000, &q), -128);
}

#[test]
fn matmul_int8_is_exact_across_k_blocks() {
    // K = 1000 spans four f32 blocks; every product is 255 · -255.
    let q = Quant {
        a_zero: -128,
        b_zero: 127,
        out_zero: 0,
        scale: 0.0,
    };
    let out = run_on(
        OpDesc::MatMul {
            a: t(0, DType::I8, &[2, 1000]),
            b: t(1, DType::I8, &[1000, 1]),
            out: t(2, DType::I32, &[2, 1]),
            quant: Some(q),
        },
        &[vec![127; 2000], vec![0x80; 1000], vec![0; 8]],
    );
    for r in 0..2 {
        let v = i32::from_le_bytes(out[2][4 * r..4 * r + 4].try_into().unwrap());
        assert_eq!(v, -65_025_000);
    }
}

#[test]
fn conv2d_with_padding_stride_and_bias() {
    // 1x3x3x1 input 1..9, 2x2 filter of ones, stride 2, pad 1 each side
    // -> 2x2 output of sums of the covered cells, plus bias 0.5.
    let out = run_on(
        OpDesc::Conv2d {
            input: t(0, DType::F32, &[1, 3, 3, 1]),
            filter: t(1, DType::F32, &[2, 2, 1, 1]),
            bias: Some(t(2, DType::F32, &[1])),
            out: t(3, DType::F32, &[1, 2, 2, 1]),
            stride: [2, 2],
            pad: [1, 1, 1, 1],
        },
        &[
            f(&[1., 2., 3., 4., 5., 6., 7., 8., 9.]),
            f(&[1.; 4]),
            f(&[0.5]),
            vec![0; 16],
        ],
    );
    assert_eq!(unf(&out[3]), [1.5, 5.5, 11.5, 28.5]);
}

#[test]
fn copy_gathers_a_strided_source() {
    let mut src = t(0, DType::F32, &[3]);
    src.strides = [2, 0, 0, 0];
    let out = run_on(
        OpDesc::Copy {
            src,
            dst: t(1, DType::F32, &[3]),
        },
        &[f(&[1., 9., 2., 9., 3.]), vec![0; 12]],
    );
    assert_eq!(unf(&out[1]), [1., 2., 3.]);
}

/// Runs `ops` with `tile`, one step per call when `stepwise`.
pub(super) fn run_all(
    ops: &[OpDesc],
    init: &[Vec<u8>],
    tile: Tile,
    stepwise: bool,
) -> (Vec<Vec<u8>>, u64) {
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let stats = MemStats::default();
    let backings: Vec<Backing> = init
        .iter()
        .enumerate()
        .map(|(i, b)| Backing::new(vec![((i as u64) << 22, b.len() as u32)]))
        .collect();
    let bos: Vec<BoMem<'_>> = backings
        .iter()
        .map(|b| b.resolve(&mem, &stats).unwrap())
        .collect();
    for (bo, data) in bos.iter().zip(init) {
        bo.write(0, data).unwrap();
    }
    let mut exec = Exec::new(Program { ops: ops.to_vec() }, tile);
    let mut calls = 0;
    loop {
        calls += 1;
        if let Progress::Done { ops: n } = exec.run(&bos, &mut || !stepwise).unwrap() {
            assert_eq!(n, ops.len() as u64);
            break;
        }
    }
    let out = bos
        .iter()
        .zip(init)
        .map(|(bo, d)| {
            let mut v = vec![0u8; d.len()];
            bo.read(0, &mut v).unwrap();
            v
        })
        .collect();
    (out, calls)
}

#[test]
fn sliced_and_resumed_jobs_compute_what_whole_ops_compute() {
    // Integer-valued f32 data: every sum is exact whatever the order,
    // so tiling must give the very same bytes.
    let (m, k, n) = (300u32, 700u32, 600u32);
    let ints = |len: u32, seed: u32| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7 + seed) % 9) as f32 - 4.0)
            .collect()
    };
    let mut bt = t(1, DType::F32, &[k, n]);
    bt.strides = [1, k, 0, 0]; // B stored transposed
    let ops = [
        OpDesc::MatMul {
            a: t(0, DType::F32, &[m, k]),
            b: bt,
            out: t(2, DType::F32, &[m, n]),
            quant: None,
        },
        OpDesc::Conv2d {
            input: t(3, DType::F32, &[1, 40, 40, 16]),
            filter: t(4, DType::F32, &[3, 3, 16, 32]),
            bias: Some(t(5, DType::F32, &[32])),
            out: t(6, DType::F32, &[1, 40, 40, 32]),
            stride: [1, 1],
            pad: [1, 1, 1, 1],
        },
        OpDesc::Relu {
            input: t(6, DType::F32, &[1, 40, 40, 32]),
            out: t(7, DType::F32, &[1, 40, 40, 32]),
        },
        OpDesc::Add {
            a: t(2, DType::F32, &[m, n]),
            b: t(5, DType::F32, &[1]),
            out: t(8, DType::F32, &[m, n]),
        },
        OpDesc::Softmax {
            input: t(8, DType::F32, &[m, n]),
            out: t(8, DType::F32, &[m, n]),
        },
        // A broadcast source: each of 1600 input values 32 times.
        OpDesc::Copy {
            src: {
                let mut c = t(3, DType::F32, &[1600, 32]);
                c.strides = [1, 0, 0, 0];
                c
            },
            dst: t(7, DType::F32, &[1600, 32]),
        },
    ];
    let init = vec![
        f(&ints(m * k, 1)),
        f(&ints(k * n, 2)),
        vec![0; (m * n * 4) as usize],
        f(&ints(40 * 40 * 16, 3)),
        f(&ints(3 * 3 * 16 * 32, 4)),
        f(&ints(32, 5)),
        vec![0; 40 * 40 * 32 * 4],
        vec![0; 40 * 40 * 32 * 4],
        vec![0; (m * n * 4) as usize],
    ];
    let (whole, calls) = run_all(&ops, &init, Tile::WHOLE, false);
    assert_eq!(calls, 1);
    // Tiles shorter than a softmax row (600) and a patch row (144): both
    // are split inside the row.
    let small = Tile {
        macs: 1 << 20,
        elems: 100,
    };
    let (sliced, calls) = run_all(&ops, &init, small, true);
    assert!(calls > 100, "{calls} steps: the ops were not sliced");
    assert!(whole[2].iter().any(|&b| b != 0), "matmul wrote nothing");
    assert_eq!(unf(&whole[7])[32..64], [unf(&init[3])[1]; 32]);
    assert_eq!(whole, sliced);
}

#[test]
fn int8_matmul_sliced_is_exact() {
    let q = Quant {
        a_zero: 3,
        b_zero: -2,
        out_zero: 0,
        scale: 0.0,
    };
    let (m, k, n) = (33u32, 1000u32, 70u32);
    let a: Vec<u8> = (0..m * k).map(|i| (i * 31 % 256) as u8).collect();
    let b: Vec<u8> = (0..k * n).map(|i| (i * 17 % 256) as u8).collect();
    let ops = [OpDesc::MatMul {
        a: t(0, DType::I8, &[m, k]),
        b: t(1, DType::I8, &[k, n]),
        out: t(2, DType::I32, &[m, n]),
        quant: Some(q),
    }];
    let init = vec![a.clone(), b.clone(), vec![0; (m * n * 4) as usize]];
    let small = Tile {
        macs: 1 << 14,
        elems: 100,
    };
    let (out, _) = run_all(&ops, &init, small, true);
    for (i, j) in [(0, 0), (5, 69), (32, 17)] {
        let want: i32 = (0..k as usize)
            .map(|kk| {
                (i32::from(a[i * k as usize + kk] as i8) - 3)
                    * (i32::from(b[kk * n as usize + j] as i8) + 2)
            })
            .sum();
        let at = 4 * (i * n as usize + j);
        assert_eq!(
            i32::from_le_bytes(out[2][at..at + 4].try_into().unwrap()),
            want
        );
    }
}
