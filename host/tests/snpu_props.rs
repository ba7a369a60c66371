//! Properties of SNPU validation and execution on the software NPU, over
//! random op descriptors whose dims, strides and offsets reach the edges
//! of their types (tests build with overflow checks on, so any unchecked
//! arithmetic on these values panics here):
//! - validation never panics, and what it admits re-encodes identically;
//! - a job validation admits runs without panicking, writes nothing
//!   outside its buffers, and its working-memory figure does not overflow;
//! - ADD/MUL with broadcast inputs compute what a plain loop computes;
//! - the strategies' CONV, pooling, LRN, CLIP and SIGMOID ops are valid
//!   before mutation (so the mutations start from admitted programs).

use proptest::prelude::*;
use vhost_device_accel::backend::sim::{SimNpu, Tile};
use vhost_device_accel::memory::{Backing, GuestMem, MemStats};
use virtio_accel_protocol::snpu::*;
use vm_memory::{Bytes, GuestAddress};

const SLOT: u64 = 0x1_0000;
const GUARD: u8 = 0x5c;

fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..8,
        Just(1 << 16),
        Just(1 << 26),
        Just(1 << 31),
        Just(u64::from(u32::MAX)),
        Just(u64::MAX - 3),
        any::<u64>(),
    ]
}

fn dense(bo: u32, dtype: DType, dims: &[u32]) -> TensorDesc {
    TensorDesc::dense(bo, dtype, 0, dims)
}

/// A well-formed op over small shapes; mutations then push its fields to
/// the edges.
fn valid_op() -> impl Strategy<Value = OpDesc> {
    let d = || 1u32..5;
    prop_oneof![
        Just(OpDesc::Nop),
        (d(), d()).prop_map(|(r, c)| OpDesc::Copy {
            src: dense(0, DType::F32, &[r, c]),
            dst: dense(3, DType::F32, &[r, c]),
        }),
        (d(), d(), any::<bool>(), any::<bool>()).prop_map(|(r, c, row, mul)| {
            let (a, out) = (dense(0, DType::F32, &[r, c]), dense(3, DType::F32, &[r, c]));
            let b = if row {
                dense(1, DType::F32, &[c])
            } else {
                dense(1, DType::F32, &[r, 1])
            };
            if mul {
                OpDesc::Mul { a, b, out }
            } else {
                OpDesc::Add { a, b, out }
            }
        }),
        (d(), d(), any::<bool>()).prop_map(|(r, c, i8)| {
            let t = if i8 { DType::I8 } else { DType::F32 };
            OpDesc::Relu {
                input: dense(0, t, &[r, c]),
                out: dense(3, t, &[r, c]),
            }
        }),
        (d(), d()).prop_map(|(r, c)| OpDesc::Softmax {
            input: dense(0, DType::F32, &[r, c]),
            out: dense(3, DType::F32, &[r, c]),
        }),
        (d(), d(), d(), any::<Option<(i8, i8, i8, bool)>>()).prop_map(|(m, k, n, q)| {
            match q {
                None => OpDesc::MatMul {
                    a: dense(0, DType::F32, &[m, k]),
                    b: dense(1, DType::F32, &[k, n]),
                    out: dense(3, DType::F32, &[m, n]),
                    quant: None,
                },
                Some((az, bz, oz, i8_out)) => OpDesc::MatMul {
                    a: dense(0, DType::I8, &[m, k]),
                    b: dense(1, DType::I8, &[k, n]),
                    out: dense(3, if i8_out { DType::I8 } else { DType::I32 }, &[m, n]),
                    quant: Some(Quant {
                        a_zero: az.into(),
                        b_zero: bz.into(),
                        out_zero: if i8_out { oz.into() } else { 0 },
                        scale: if i8_out { 0.25 } else { 0.0 },
                    }),
                },
            }
        }),
        (
            d(),
            d(),
            d(),
            1u32..3,
            1u32..3,
            1u32..3,
            0u32..2,
            any::<bool>()
        )
            .prop_map(|(h, w, c, k, oc, s, p, bias)| {
                let (hp, wp) = ((h + 2 * p).max(k), (w + 2 * p).max(k));
                let (h, w) = (hp - 2 * p, wp - 2 * p);
                let oh = (hp - k) / s + 1;
                let ow = (wp - k) / s + 1;
                OpDesc::Conv2d {
                    input: dense(0, DType::F32, &[1, h.max(1), w.max(1), c]),
                    filter: dense(1, DType::F32, &[k, k, c, oc]),
                    bias: bias.then(|| dense(2, DType::F32, &[oc])),
                    out: dense(3, DType::F32, &[1, oh, ow, oc]),
                    stride: [s, s],
                    pad: [p; 4],
                }
            }),
        nn_op(),
    ]
}

/// A well-formed CONV, pooling, CLIP, SIGMOID or LRN over small shapes.
fn nn_op() -> impl Strategy<Value = OpDesc> {
    let d = || 1u32..5;
    prop_oneof![
        (
            (d(), 1u32..3, d(), d()),
            (1u32..4, 1u32..3, 1u32..3),
            (1u32..3, 0u32..3, 1u32..3),
            any::<(bool, bool)>(),
        )
            .prop_map(|((n, g, h, w), (cg, ocg, k), (s, p, dl), (bias, relu))| {
                let (c, oc) = (g * cg, g * ocg);
                let reach = dl * (k - 1) + 1;
                let (h, w) = ((h + reach).saturating_sub(2 * p).max(1), w + reach);
                let o = |x: u32| (x + 2 * p).saturating_sub(reach) / s + 1;
                OpDesc::Conv {
                    input: dense(0, DType::F32, &[n, c, h, w]),
                    filter: dense(1, DType::F32, &[oc, cg, k, k]),
                    bias: bias.then(|| dense(2, DType::F32, &[oc])),
                    out: dense(3, DType::F32, &[n, oc, o(h), o(w)]),
                    geom: ConvGeom {
                        stride: [s, s],
                        pad: [p; 4],
                        dilation: [dl, dl],
                    },
                    relu,
                }
            }),
        (
            (d(), d(), 2u32..9, 2u32..9),
            (1u32..4, 1u32..3, 0u32..2),
            any::<(u8, bool)>()
        )
            .prop_map(|((n, c, h, w), (k, s, p), (kind, ceil))| {
                let p = p.min(k - 1);
                let (h, w) = (h.max(k), w.max(k));
                let o = |x: u32| {
                    let room = x + 2 * p - k;
                    let f = room / s + 1;
                    let c = room.div_ceil(s) + 1;
                    if ceil && (c - 1) * s < x + p {
                        c
                    } else {
                        f
                    }
                };
                let geom = PoolGeom {
                    kernel: [k, k],
                    stride: [s, s],
                    pad: [p; 4],
                };
                let (input, out) = (
                    dense(0, DType::F32, &[n, c, h, w]),
                    dense(3, DType::F32, &[n, c, o(h), o(w)]),
                );
                match kind % 5 {
                    0 => OpDesc::MaxPool { input, out, geom },
                    1 | 2 => OpDesc::AvgPool {
                        input,
                        out,
                        geom,
                        count_pad: kind % 5 == 2,
                    },
                    3 => OpDesc::Lrn {
                        out: dense(3, DType::F32, &[n, c, h, w]),
                        input,
                        size: k,
                        alpha: 1e-2,
                        beta: 0.75,
                        bias: 1.0,
                    },
                    _ => OpDesc::Clip {
                        out: dense(3, DType::F32, &[n, c, h, w]),
                        input,
                        min: -0.5,
                        max: 0.5,
                    },
                }
            }),
        (d(), d()).prop_map(|(r, c)| OpDesc::Sigmoid {
            input: dense(0, DType::F32, &[r, c]),
            out: dense(3, DType::F32, &[r, c]),
        }),
    ]
}

/// One change to a tensor field: (tensor, field, value). Fields 0-3 are
/// dims, 4-7 strides, 8 the offset, 9 the buffer index.
type Mutation = (u8, u8, u64);

fn tensors_mut(op: &mut OpDesc) -> Vec<&mut TensorDesc> {
    match op {
        OpDesc::Nop => vec![],
        OpDesc::Copy { src, dst } => vec![src, dst],
        OpDesc::Add { a, b, out } | OpDesc::Mul { a, b, out } => vec![a, b, out],
        OpDesc::Relu { input, out } | OpDesc::Softmax { input, out } => vec![input, out],
        OpDesc::MatMul { a, b, out, .. } => vec![a, b, out],
        OpDesc::Conv2d {
            input,
            filter,
            bias,
            out,
            ..
        } => {
            let mut v = vec![input, filter, out];
            v.extend(bias.as_mut());
            v
        }
        OpDesc::Conv {
            input,
            filter,
            bias,
            out,
            ..
        } => {
            let mut v = vec![input, filter, out];
            v.extend(bias.as_mut());
            v
        }
        OpDesc::MaxPool { input, out, .. }
        | OpDesc::AvgPool { input, out, .. }
        | OpDesc::Clip { input, out, .. }
        | OpDesc::Sigmoid { input, out }
        | OpDesc::Lrn { input, out, .. } => vec![input, out],
    }
}

fn mutate(op: &mut OpDesc, muts: &[Mutation]) {
    for &(t, field, v) in muts {
        let mut ts = tensors_mut(op);
        if ts.is_empty() {
            return;
        }
        let n = ts.len();
        let t = &mut ts[usize::from(t) % n];
        let f = usize::from(field % 10);
        let v32 = v as u32;
        match f {
            0..=3 if f < t.rank => t.dims[f] = v32,
            4..=7 if f - 4 < t.rank => t.strides[f - 4] = v32,
            8 => t.offset = v,
            9 => t.bo_index = v32 % 5,
            _ => {}
        }
    }
}

fn op() -> impl Strategy<Value = OpDesc> {
    (
        valid_op(),
        prop::collection::vec((any::<u8>(), any::<u8>(), edge_u64()), 0..3),
    )
        .prop_map(|(mut op, muts)| {
            mutate(&mut op, &muts);
            op
        })
}

/// Runs `program` over buffers of `sizes` bytes laid out in guard-filled
/// slots; returns the buffers' contents after the run, or None if the
/// device refused the job.
fn run(program: &Program, sizes: &[u64], access: &[u32], init: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    let shapes: Vec<(u64, u32)> = sizes.iter().copied().zip(access.iter().copied()).collect();
    // What the software NPU's prepare does: parse the bytes, check bounds.
    let parsed = parse(&program.encode()).ok()?;
    parsed.check_bounds(&shapes).ok()?;
    if parsed.work_bytes() > 4 << 20 || program.cost() > 1 << 20 {
        return None;
    }
    let mem =
        GuestMem::from_ranges(&[(GuestAddress(0), SLOT as usize * sizes.len().max(1))]).unwrap();
    mem.write_slice(
        &vec![GUARD; SLOT as usize * sizes.len().max(1)],
        GuestAddress(0),
    )
    .unwrap();
    let backings: Vec<Backing> = sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let at = i as u64 * SLOT;
            mem.write_slice(&init[i], GuestAddress(at)).unwrap();
            Backing::new(vec![(at, s as u32)])
        })
        .collect();
    let stats = MemStats::default();
    let bos: Vec<_> = backings
        .iter()
        .map(|b| b.resolve(&mem, &stats).unwrap())
        .collect();
    // Small tiles: every op runs in many resumable steps.
    let tile = Tile {
        macs: 1 << 12,
        elems: 61,
    };
    let _ = SimNpu::run_program(&parsed, &bos, tile);
    let mut out = Vec::new();
    for (i, &s) in sizes.iter().enumerate() {
        let mut rest = vec![0u8; (SLOT - s) as usize];
        mem.read_slice(&mut rest, GuestAddress(i as u64 * SLOT + s))
            .unwrap();
        assert!(rest.iter().all(|&b| b == GUARD), "write outside buffer {i}");
        let mut b = vec![0u8; s as usize];
        mem.read_slice(&mut b, GuestAddress(i as u64 * SLOT))
            .unwrap();
        out.push(b);
    }
    Some(out)
}

/// The strategies' value trees are deep; debug builds need a larger stack
/// than a test thread's default.
fn with_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

#[test]
fn validation_and_execution_never_panic() {
    with_stack(|| {
        proptest!(ProptestConfig::with_cases(3000), |(
            ops in prop::collection::vec(op(), 1..4),
                sizes in prop::array::uniform4(prop_oneof![256u64..4096, 1u64..256]),
            access in prop::array::uniform4(prop_oneof![Just(3u32), 1u32..4]),
            fill in any::<u8>(),
        )| {
            check_program(ops, sizes, access, fill)?;
        });
    });
}

fn check_program(
    ops: Vec<OpDesc>,
    sizes: [u64; 4],
    access: [u32; 4],
    fill: u8,
) -> Result<(), TestCaseError> {
    {
        let p = Program { ops };
        let bytes = p.encode();
        if let Ok(parsed) = parse(&bytes) {
            prop_assert_eq!(parsed.encode(), bytes);
            let _ = parsed.work_bytes();
            let init: Vec<Vec<u8>> = sizes
                .iter()
                .map(|&s| (0..s).map(|j| (j as u8) ^ fill).collect())
                .collect();
            run(&parsed, &sizes, &access, &init);
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn unmutated_nn_ops_are_admitted(op in nn_op()) {
        let p = Program { ops: vec![op] };
        prop_assert_eq!(parse(&p.encode()), Ok(p));
    }

    #[test]
    fn elementwise_broadcasts_match_a_plain_loop(
        rows in 1u32..6,
        cols in 1u32..6,
        bcast_row in any::<bool>(),
        by_stride in any::<bool>(),
        mul in any::<bool>(),
        a in prop::collection::vec(-100i16..100, 36),
        b in prop::collection::vec(-100i16..100, 6),
    ) {
        // out[r][c] = a[r][c] op b[c] (b a row broadcast to every row),
        // b given either as dims [cols] or as [rows, cols] with stride 0.
        let ta = TensorDesc::dense(0, DType::F32, 0, &[rows, cols]);
        let tb = if by_stride {
            let mut t = TensorDesc::dense(1, DType::F32, 0, &[rows, cols]);
            t.strides = if bcast_row { [0, 1, 0, 0] } else { [1, 0, 0, 0] };
            t
        } else if bcast_row {
            TensorDesc::dense(1, DType::F32, 0, &[cols])
        } else {
            TensorDesc::dense(1, DType::F32, 0, &[rows, 1])
        };
        let to = TensorDesc::dense(2, DType::F32, 0, &[rows, cols]);
        let op = if mul {
            OpDesc::Mul { a: ta, b: tb, out: to }
        } else {
            OpDesc::Add { a: ta, b: tb, out: to }
        };
        let p = Program { ops: vec![op] };
        let f = |v: &[i16]| -> Vec<u8> { v.iter().flat_map(|&x| f32::from(x).to_le_bytes()).collect() };
        let n = (rows * cols) as usize;
        let init = vec![f(&a[..n]), f(&b), vec![0; n * 4]];
        let out = run(&p, &[n as u64 * 4, 24, n as u64 * 4], &[1, 1, 2], &init).expect("valid job");
        for r in 0..rows as usize {
            for c in 0..cols as usize {
                let x = f32::from(a[r * cols as usize + c]);
                let y = f32::from(if bcast_row { b[c] } else { b[r] });
                let want = if mul { x * y } else { x + y };
                let at = (r * cols as usize + c) * 4;
                let got = f32::from_le_bytes(out[2][at..at + 4].try_into().unwrap());
                prop_assert_eq!(got, want, "r {} c {}", r, c);
            }
        }
    }
}
