//! Reference workloads: an MLP, an int8 matmul and a conv2d as SNPU
//! programs, with inputs and an expected output computed here on the CPU
//! by plain loops (independent of any NPU implementation).

use virtio_accel_protocol::snpu::{DType, OpDesc, Program, Quant, TensorDesc};
use virtio_accel_protocol::{VIRTIO_ACCEL_ACCESS_READ as R, VIRTIO_ACCEL_ACCESS_WRITE as W};

/// One buffer of a workload.
#[derive(Debug, Clone)]
pub struct BoSpec {
    pub size: u64,
    pub access: u32,
    /// Initial contents (zero-padded to `size`).
    pub init: Vec<u8>,
}

/// The expected contents of the output.
#[derive(Debug, Clone)]
pub enum Expected {
    /// f32 values, compared with a relative-plus-absolute tolerance.
    F32 { values: Vec<f32>, tol: f32 },
    /// int8 values, compared exactly.
    I8(Vec<i8>),
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    pub bos: Vec<BoSpec>,
    pub program: Program,
    /// Buffer index and byte offset of the output.
    pub output: (usize, u64),
    pub expected: Expected,
}

impl Workload {
    /// Bytes of output to read back.
    pub fn output_len(&self) -> usize {
        match &self.expected {
            Expected::F32 { values, .. } => values.len() * 4,
            Expected::I8(v) => v.len(),
        }
    }

    /// Compares output bytes with the reference.
    pub fn check(&self, out: &[u8]) -> Result<(), String> {
        if out.len() != self.output_len() {
            return Err(format!(
                "{}: {} output bytes, want {}",
                self.name,
                out.len(),
                self.output_len()
            ));
        }
        match &self.expected {
            Expected::F32 { values, tol } => {
                for (i, (c, want)) in out.chunks_exact(4).zip(values).enumerate() {
                    let got = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    let close = (got - want).abs() <= tol * (1.0 + want.abs());
                    if !close {
                        // NaN is never close
                        return Err(format!("{}: element {i} is {got}, want {want}", self.name));
                    }
                }
            }
            Expected::I8(values) => {
                for (i, (&b, want)) in out.iter().zip(values).enumerate() {
                    if b as i8 != *want {
                        return Err(format!(
                            "{}: element {i} is {}, want {want}",
                            self.name, b as i8
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Sizes and access of the buffers, as the device sees them.
    pub fn bo_shapes(&self) -> Vec<(u64, u32)> {
        self.bos.iter().map(|b| (b.size, b.access)).collect()
    }
}

/// Deterministic pseudo-random numbers (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn i8(&mut self) -> i8 {
        (self.next_u64() >> 56) as u8 as i8
    }
    pub fn vec_f32(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bo(size: u64, access: u32, init: Vec<u8>) -> BoSpec {
    BoSpec { size, access, init }
}

fn t(bo: u32, dtype: DType, off: u64, dims: &[u32]) -> TensorDesc {
    TensorDesc::dense(bo, dtype, off, dims)
}

/// `c[m][n] = Σ_k a[m][k] · b[k][n]`, accumulated in f64.
fn ref_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                s += f64::from(a[i * k + p]) * f64::from(b[p * n + j]);
            }
            c[i * n + j] = s as f32;
        }
    }
    c
}

/// A two-layer perceptron: `softmax(relu(x·W1 + b1)·W2)`, f32.
///
/// Buffers: 0 input x, 1 weights (W1, b1, W2 at offsets), 2 scratch (h, z),
/// 3 output.
pub fn mlp(seed: u64, batch: u32, inp: u32, hidden: u32, out: u32) -> Workload {
    let mut rng = Rng::new(seed);
    let (b, i, h, o) = (batch as usize, inp as usize, hidden as usize, out as usize);
    let x = rng.vec_f32(b * i);
    let w1 = rng.vec_f32(i * h);
    let b1 = rng.vec_f32(h);
    let w2 = rng.vec_f32(h * o);
    let mut weights = f32_bytes(&w1);
    let b1_off = weights.len() as u64;
    weights.extend(f32_bytes(&b1));
    let w2_off = weights.len() as u64;
    weights.extend(f32_bytes(&w2));
    let z_off = (b * h * 4) as u64;

    let mut hid = ref_matmul(&x, &w1, b, i, h);
    for r in 0..b {
        for c in 0..h {
            hid[r * h + c] = (hid[r * h + c] + b1[c]).max(0.0);
        }
    }
    let mut z = ref_matmul(&hid, &w2, b, h, o);
    for row in z.chunks_mut(o) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&v| f64::from((v - max).exp())).sum();
        for v in row.iter_mut() {
            *v = ((f64::from((*v - max).exp())) / sum) as f32;
        }
    }
    let program = Program {
        ops: vec![
            OpDesc::MatMul {
                a: t(0, DType::F32, 0, &[batch, inp]),
                b: t(1, DType::F32, 0, &[inp, hidden]),
                out: t(2, DType::F32, 0, &[batch, hidden]),
                quant: None,
            },
            OpDesc::Add {
                a: t(2, DType::F32, 0, &[batch, hidden]),
                b: t(1, DType::F32, b1_off, &[hidden]),
                out: t(2, DType::F32, 0, &[batch, hidden]),
            },
            OpDesc::Relu {
                input: t(2, DType::F32, 0, &[batch, hidden]),
                out: t(2, DType::F32, 0, &[batch, hidden]),
            },
            OpDesc::MatMul {
                a: t(2, DType::F32, 0, &[batch, hidden]),
                b: t(1, DType::F32, w2_off, &[hidden, out]),
                out: t(2, DType::F32, z_off, &[batch, out]),
                quant: None,
            },
            OpDesc::Softmax {
                input: t(2, DType::F32, z_off, &[batch, out]),
                out: t(3, DType::F32, 0, &[batch, out]),
            },
        ],
    };
    Workload {
        name: "mlp",
        bos: vec![
            bo((b * i * 4) as u64, R, f32_bytes(&x)),
            bo(weights.len() as u64, R, weights),
            bo(z_off + (b * o * 4) as u64, R | W, vec![]),
            bo((b * o * 4) as u64, W, vec![]),
        ],
        program,
        output: (3, 0),
        expected: Expected::F32 {
            values: z,
            tol: 1e-4,
        },
    }
}

/// `requant(Σ (a - az)(b - bz))` with int8 inputs and output.
pub fn int8_matmul(seed: u64, m: u32, k: u32, n: u32) -> Workload {
    let mut rng = Rng::new(seed);
    let (mu, ku, nu) = (m as usize, k as usize, n as usize);
    let a: Vec<i8> = (0..mu * ku).map(|_| rng.i8()).collect();
    let b: Vec<i8> = (0..ku * nu).map(|_| rng.i8()).collect();
    let q = Quant {
        a_zero: 3,
        b_zero: -5,
        out_zero: 7,
        scale: 1.0 / 512.0,
    };
    let mut c = vec![0i8; mu * nu];
    for i in 0..mu {
        for j in 0..nu {
            let mut acc: i64 = 0;
            for p in 0..ku {
                acc += i64::from(i32::from(a[i * ku + p]) - q.a_zero)
                    * i64::from(i32::from(b[p * nu + j]) - q.b_zero);
            }
            let v = (acc as f64 * f64::from(q.scale)).round_ties_even() + f64::from(q.out_zero);
            c[i * nu + j] = v.clamp(-128.0, 127.0) as i8;
        }
    }
    let mut ab: Vec<u8> = a.iter().map(|&v| v as u8).collect();
    let b_off = ab.len() as u64;
    ab.extend(b.iter().map(|&v| v as u8));
    Workload {
        name: "int8_matmul",
        bos: vec![bo(ab.len() as u64, R, ab), bo((mu * nu) as u64, W, vec![])],
        program: Program {
            ops: vec![OpDesc::MatMul {
                a: t(0, DType::I8, 0, &[m, k]),
                b: t(0, DType::I8, b_off, &[k, n]),
                out: t(1, DType::I8, 0, &[m, n]),
                quant: Some(q),
            }],
        },
        output: (1, 0),
        expected: Expected::I8(c),
    }
}

/// A 2-D convolution, NHWC, with bias, stride and padding.
pub fn conv2d(seed: u64, hw: u32, c: u32, oc: u32, k: u32, stride: u32, pad: u32) -> Workload {
    let mut rng = Rng::new(seed);
    let (h, w, cu, ocu, ku) = (
        hw as usize,
        hw as usize,
        c as usize,
        oc as usize,
        k as usize,
    );
    let (s, p) = (stride as usize, pad as usize);
    let x = rng.vec_f32(h * w * cu);
    let f = rng.vec_f32(ku * ku * cu * ocu);
    let bias = rng.vec_f32(ocu);
    let oh = (h + 2 * p - ku) / s + 1;
    let ow = (w + 2 * p - ku) / s + 1;
    let mut y = vec![0f32; oh * ow * ocu];
    for oy in 0..oh {
        for ox in 0..ow {
            for o in 0..ocu {
                let mut acc = f64::from(bias[o]);
                for ky in 0..ku {
                    for kx in 0..ku {
                        let (iy, ix) = (
                            (oy * s + ky) as isize - p as isize,
                            (ox * s + kx) as isize - p as isize,
                        );
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        for ch in 0..cu {
                            let xv = x[((iy as usize) * w + ix as usize) * cu + ch];
                            let fv = f[((ky * ku + kx) * cu + ch) * ocu + o];
                            acc += f64::from(xv) * f64::from(fv);
                        }
                    }
                }
                y[(oy * ow + ox) * ocu + o] = acc as f32;
            }
        }
    }
    let mut params = f32_bytes(&f);
    let bias_off = params.len() as u64;
    params.extend(f32_bytes(&bias));
    Workload {
        name: "conv2d",
        bos: vec![
            bo((h * w * cu * 4) as u64, R, f32_bytes(&x)),
            bo(params.len() as u64, R, params),
            bo((oh * ow * ocu * 4) as u64, W, vec![]),
        ],
        program: Program {
            ops: vec![OpDesc::Conv2d {
                input: t(0, DType::F32, 0, &[1, hw, hw, c]),
                filter: t(1, DType::F32, 0, &[k, k, c, oc]),
                bias: Some(t(1, DType::F32, bias_off, &[oc])),
                out: t(2, DType::F32, 0, &[1, oh as u32, ow as u32, oc]),
                stride: [stride, stride],
                pad: [pad, pad, pad, pad],
            }],
        },
        output: (2, 0),
        expected: Expected::F32 {
            values: y,
            tol: 1e-4,
        },
    }
}

/// The three standard workloads at the sizes the tests and tools use.
pub fn standard() -> Vec<Workload> {
    vec![
        mlp(1, 8, 64, 128, 10),
        int8_matmul(2, 16, 96, 24),
        conv2d(3, 16, 8, 16, 3, 1, 1),
    ]
}
