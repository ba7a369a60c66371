//! How each ONNX operator becomes SNPU ops (see `lower.rs`).

use virtio_accel_protocol::snpu::{ConvGeom, OpDesc, PoolGeom, SNPU_SCRATCH_BYTES};

use super::lower::{Lower, Val, V};
use super::onnx::{Const, Node};
use super::shape::{axes_of, axis, broadcast, elems, reshape, squeeze, unsqueeze};
use super::ModelError;

/// The ONNX operators the compiler lowers (others are refused, naming the
/// operator and the node).
pub const SUPPORTED: &[&str] = &[
    "Conv",
    "BatchNormalization",
    "Relu",
    "Clip",
    "Sigmoid",
    "Add",
    "Mul",
    "Sum",
    "MatMul",
    "Gemm",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LRN",
    "Softmax",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Concat",
    "Dropout",
    "Identity",
    "Shape",
    "Cast",
    "Constant",
    "ConstantOfShape",
];

pub(super) fn lower_node(l: &mut Lower<'_>) -> Result<(), ModelError> {
    let node = l.g.nodes[l.node].clone();
    let out = node.outputs.first().cloned().unwrap_or_default();
    match node.op.as_str() {
        "Conv" => conv(l, &node),
        "BatchNormalization" => {
            let x = l.act(0)?;
            let (s, t) = bn_affine(l, &node)?;
            let c = s.len();
            let mut bdims = vec![1; x.dims.len().saturating_sub(1)];
            if let Some(d) = bdims.first_mut() {
                *d = c;
            }
            let sv = l.weight(
                &format!("{}#scale", node.name),
                &Const::f32(bdims.clone(), s),
            );
            let tv = l.weight(&format!("{}#shift", node.name), &Const::f32(bdims, t));
            let y = l.alloc(x.dims.clone());
            binary(l, true, &x, &sv, &y)?;
            binary(l, false, &y, &tv, &y)?;
            l.set(&out, y);
            Ok(())
        }
        "Relu" | "Sigmoid" | "Clip" => {
            let x = l.act(0)?;
            let y = l.alloc(x.dims.clone());
            let (input, o) = (l.desc(&x)?, l.desc(&y)?);
            let op = match node.op.as_str() {
                "Relu" => OpDesc::Relu { input, out: o },
                "Sigmoid" => OpDesc::Sigmoid { input, out: o },
                _ => {
                    let bound =
                        |l: &Lower<'_>, i: usize, attr: &str, d: f32| -> Result<f32, ModelError> {
                            if node.input(i).is_some() {
                                l.konst(i)
                                    .and_then(|c| c.floats().first().copied())
                                    .ok_or_else(|| l.err("clip bounds must be constants"))
                            } else {
                                Ok(node.float(attr, d))
                            }
                        };
                    let min = bound(l, 1, "min", f32::NEG_INFINITY)?;
                    let max = bound(l, 2, "max", f32::INFINITY)?;
                    // The NPU refuses these (appendix A): refused here,
                    // naming the node, not at SUBMIT.
                    if min.is_nan() || max.is_nan() || min > max {
                        return Err(l.err("clip bounds are NaN or min > max"));
                    }
                    OpDesc::Clip {
                        input,
                        out: o,
                        min,
                        max,
                    }
                }
            };
            l.emit(op, &[&x, &y]);
            l.set(&out, y);
            Ok(())
        }
        "Add" | "Mul" | "Sum" => {
            let mul = node.op == "Mul";
            let n = node.inputs.iter().filter(|s| !s.is_empty()).count();
            let mut acc = l.act(0)?;
            if n == 1 {
                l.set(&out, acc);
                return Ok(());
            }
            let mut dst: Option<Val> = None;
            for i in 1..n {
                let b = l.act(i)?;
                let dims = broadcast(&node, &acc.dims, &b.dims)?;
                let y = match &dst {
                    Some(d) if d.dims == dims => d.clone(),
                    _ => l.alloc(dims),
                };
                binary(l, mul, &acc, &b, &y)?;
                acc = y.clone();
                dst = Some(y);
            }
            l.set(&out, acc);
            Ok(())
        }
        "MatMul" => {
            let (a, b) = (l.act(0)?, l.act(1)?);
            if b.dims.len() != 2 || a.dims.is_empty() {
                return Err(l.err(format!("matmul of {:?} by {:?}", a.dims, b.dims)));
            }
            let a = l.dense(a)?;
            let k = *a.dims.last().unwrap_or(&1);
            let lead = &a.dims[..a.dims.len() - 1];
            let m = elems(lead);
            let a2 = a.view(vec![m, k]);
            let mut odims = lead.to_vec();
            odims.push(b.dims[1]);
            if b.dims[0] != k {
                return Err(l.err(format!("matmul of {:?} by {:?}", a.dims, b.dims)));
            }
            let y = l.alloc(odims);
            let y2 = y.view(vec![m, b.dims[1]]);
            matmul(l, &a2, &b, &y2)?;
            l.set(&out, y);
            Ok(())
        }
        "Gemm" => gemm(l, &node),
        "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" => pool(l, &node),
        "LRN" => {
            let x = l.act(0)?;
            let x = l.dense(x)?;
            if x.dims.len() != 4 {
                return Err(l.err("LRN input is not NCHW"));
            }
            let y = l.alloc(x.dims.clone());
            let op = OpDesc::Lrn {
                input: l.desc(&x)?,
                out: l.desc(&y)?,
                size: node.int("size", 1).max(1) as u32,
                alpha: node.float("alpha", 1e-4),
                beta: node.float("beta", 0.75),
                bias: node.float("bias", 1.0),
            };
            l.emit(op, &[&x, &y]);
            l.set(&out, y);
            Ok(())
        }
        "Softmax" => {
            let x = l.act(0)?;
            let x = l.dense(x)?;
            let r = x.dims.len().max(1);
            let default = if l.g.opset < 13 { 1 } else { -1 };
            let ax = axis(&node, node.int("axis", default), r)?;
            let inner = if l.g.opset < 13 {
                elems(&x.dims[ax.min(x.dims.len())..])
            } else {
                if ax + 1 != x.dims.len() {
                    return Err(l.err("softmax over an axis other than the last"));
                }
                *x.dims.last().unwrap_or(&1)
            };
            let outer = elems(&x.dims) / inner.max(1);
            let y = l.alloc(x.dims.clone());
            let (xi, yi) = (x.view(vec![outer, inner]), y.view(vec![outer, inner]));
            let op = OpDesc::Softmax {
                input: l.desc(&xi)?,
                out: l.desc(&yi)?,
            };
            l.emit(op, &[&xi, &yi]);
            l.set(&out, y);
            Ok(())
        }
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => {
            let x = l.act(0)?;
            let x = l.dense(x)?;
            let second = l.konst(1).cloned();
            let dims = match node.op.as_str() {
                "Flatten" => {
                    let r = x.dims.len();
                    let a = node.int("axis", 1);
                    let a = if a < 0 { a + r as i64 } else { a }.clamp(0, r as i64) as usize;
                    vec![elems(&x.dims[..a]), elems(&x.dims[a..])]
                }
                "Reshape" => {
                    let shape = match (&second, node.ints("shape")) {
                        (Some(s), _) => s.ints(),
                        (None, Some(s)) => s,
                        _ => return Err(l.err("reshape to a shape that is not constant")),
                    };
                    reshape(&node, &x.dims, &shape, node.int("allowzero", 0) != 0)?
                }
                "Squeeze" => squeeze(&node, &x.dims, axes_of(&node, second.as_ref()))?,
                _ => {
                    let ax = axes_of(&node, second.as_ref()).ok_or_else(|| l.err("no axes"))?;
                    unsqueeze(&node, &x.dims, &ax)?
                }
            };
            l.set(&out, x.view(dims));
            Ok(())
        }
        "Dropout" | "Identity" => {
            if node
                .outputs
                .get(1)
                .is_some_and(|m| l.uses.get(m).copied().unwrap_or(0) > 0)
            {
                return Err(l.err("dropout mask output is used"));
            }
            let x = l.act(0)?;
            l.set(&out, x);
            Ok(())
        }
        "Cast" => {
            if node.int("to", 1) != 1 {
                return Err(l.err("cast of a computed tensor to a type other than float"));
            }
            let x = l.act(0)?;
            l.set(&out, x);
            Ok(())
        }
        "Shape" => {
            let x = l.act(0)?;
            let dims: Vec<i64> = x.dims.iter().map(|&d| d as i64).collect();
            l.vals
                .insert(out, V::Const(Const::i64(vec![dims.len()], dims)));
            Ok(())
        }
        "Transpose" => {
            let x = l.act(0)?;
            let r = x.dims.len();
            let perm: Vec<usize> = match node.ints("perm") {
                Some(p) => p
                    .iter()
                    .map(|&a| axis(&node, a, r))
                    .collect::<Result<_, _>>()?,
                None => (0..r).rev().collect(),
            };
            let view = Val {
                buf: x.buf,
                wbo: x.wbo,
                off: x.off,
                dims: perm.iter().map(|&p| x.dims[p]).collect(),
                strides: perm.iter().map(|&p| x.strides[p]).collect(),
            };
            let y = l.dense(view)?;
            l.set(&out, y);
            Ok(())
        }
        "Concat" => concat(l, &node),
        _ => Err(l.err("no SNPU lowering for this operator")),
    }
}

/// ADD or MUL of `a` and `b` (numpy broadcasting) into `y`.
fn binary(l: &mut Lower<'_>, mul: bool, a: &Val, b: &Val, y: &Val) -> Result<(), ModelError> {
    // Right-align both inputs to the output's rank.
    let pad = |v: &Val| -> Val {
        let k = y.dims.len().saturating_sub(v.dims.len());
        let mut p = v.clone();
        p.dims.splice(0..0, std::iter::repeat_n(1, k));
        p.strides.splice(0..0, std::iter::repeat_n(0, k));
        p
    };
    let (mut a, mut b, mut y2) = (pad(a), pad(b), y.clone());
    if y.dims.len() > 4 {
        let keep: Vec<usize> = (0..y.dims.len()).filter(|&i| y.dims[i] != 1).collect();
        for v in [&mut a, &mut b, &mut y2] {
            v.dims = keep.iter().map(|&i| v.dims[i]).collect();
            v.strides = keep.iter().map(|&i| v.strides[i]).collect();
        }
    }
    let (da, db, dy) = (l.desc(&a)?, l.desc(&b)?, l.desc(&y2)?);
    let op = if mul {
        OpDesc::Mul {
            a: da,
            b: db,
            out: dy,
        }
    } else {
        OpDesc::Add {
            a: da,
            b: db,
            out: dy,
        }
    };
    l.emit(op, &[&a, &b, &y2]);
    Ok(())
}

/// `y[M,N] = a[M,K] · b[K,N]` (any strides in, `y` dense), in K panels
/// summed into `y` when one MATMUL would need more working memory than
/// the device gives a job.
fn matmul(l: &mut Lower<'_>, a: &Val, b: &Val, y: &Val) -> Result<(), ModelError> {
    let (m, k, n) = (a.dims[0], a.dims[1], b.dims[1]);
    let budget = l.limits.max_job_memory.saturating_sub(SNPU_SCRATCH_BYTES) / 4;
    let (m64, n64) = (m as u64, n as u64);
    // Elements of one MATMUL with K panels of kb, and of the ADD after it.
    let fits = |kb: u64| {
        m64.saturating_mul(kb)
            .saturating_add(kb.saturating_mul(n64))
            .saturating_add(m64.saturating_mul(n64))
            <= budget
    };
    if m64.saturating_mul(n64).saturating_mul(3) > budget || !fits(1) {
        return Err(l.err(format!(
            "a {m}×{k} by {k}×{n} matmul exceeds the job memory"
        )));
    }
    let mut kb = k as u64;
    while !fits(kb) || kb * n64 > 1 << 26 || m64 * kb > 1 << 26 {
        // m, n ≤ budget here, so kb · n and m · kb cannot overflow.
        kb = kb.div_ceil(2);
    }
    let kb = kb as usize;
    let tmp = if kb < k {
        Some(l.alloc(vec![m, n]))
    } else {
        None
    };
    let mut k0 = 0;
    while k0 < k {
        let k1 = (k0 + kb).min(k);
        let pa = Val {
            buf: a.buf,
            wbo: a.wbo,
            off: a.off + (k0 * a.strides[1] * 4) as u64,
            dims: vec![m, k1 - k0],
            strides: a.strides.clone(),
        };
        let pb = Val {
            buf: b.buf,
            wbo: b.wbo,
            off: b.off + (k0 * b.strides[0] * 4) as u64,
            dims: vec![k1 - k0, n],
            strides: b.strides.clone(),
        };
        let dst = match (&tmp, k0) {
            (Some(t), k0) if k0 > 0 => t.clone(),
            _ => y.clone(),
        };
        let op = OpDesc::MatMul {
            a: l.desc(&pa)?,
            b: l.desc(&pb)?,
            out: l.desc(&dst)?,
            quant: None,
        };
        l.emit(op, &[&pa, &pb, &dst]);
        if k0 > 0 {
            binary(l, false, y, &dst, y)?;
        }
        k0 = k1;
    }
    Ok(())
}

fn gemm(l: &mut Lower<'_>, node: &Node) -> Result<(), ModelError> {
    let out = node.outputs.first().cloned().unwrap_or_default();
    let t = |v: Val, trans: bool| -> Val {
        if trans && v.dims.len() == 2 {
            Val {
                buf: v.buf,
                wbo: v.wbo,
                off: v.off,
                dims: vec![v.dims[1], v.dims[0]],
                strides: vec![v.strides[1], v.strides[0]],
            }
        } else {
            v
        }
    };
    let (alpha, beta) = (node.float("alpha", 1.0), node.float("beta", 1.0));
    let a = t(l.act(0)?, node.int("transA", 0) != 0);
    let b = if alpha != 1.0 {
        let c = l
            .konst(1)
            .cloned()
            .ok_or_else(|| l.err("alpha ≠ 1 with B not constant"))?;
        let scaled = Const::f32(
            c.dims.clone(),
            c.floats().iter().map(|x| x * alpha).collect(),
        );
        l.weight(&format!("{}#alphaB", node.name), &scaled)
    } else {
        l.act(1)?
    };
    let b = t(b, node.int("transB", 0) != 0);
    if a.dims.len() != 2 || b.dims.len() != 2 || a.dims[1] != b.dims[0] {
        return Err(l.err(format!("gemm of {:?} by {:?}", a.dims, b.dims)));
    }
    let y = l.alloc(vec![a.dims[0], b.dims[1]]);
    matmul(l, &a, &b, &y)?;
    if node.input(2).is_some() {
        let c = if beta != 1.0 {
            let c = l
                .konst(2)
                .cloned()
                .ok_or_else(|| l.err("beta ≠ 1 with C not constant"))?;
            let scaled = Const::f32(
                c.dims.clone(),
                c.floats().iter().map(|x| x * beta).collect(),
            );
            l.weight(&format!("{}#betaC", node.name), &scaled)
        } else {
            l.act(2)?
        };
        broadcast(node, &y.dims, &c.dims)?;
        binary(l, false, &y, &c, &y)?;
    }
    l.set(&out, y);
    Ok(())
}

/// BatchNormalization as a per-channel scale and shift.
fn bn_affine(l: &Lower<'_>, node: &Node) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
    let get = |i: usize| -> Result<Vec<f32>, ModelError> {
        l.konst(i)
            .map(Const::floats)
            .ok_or_else(|| l.err("batch normalization with parameters that are not constant"))
    };
    let (scale, bias, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
    let eps = node.float("epsilon", 1e-5);
    let c = scale.len();
    if [bias.len(), mean.len(), var.len()].iter().any(|&n| n != c) {
        return Err(l.err("batch normalization parameters of different lengths"));
    }
    let s: Vec<f32> = (0..c).map(|i| scale[i] / (var[i] + eps).sqrt()).collect();
    let t: Vec<f32> = (0..c).map(|i| bias[i] - mean[i] * s[i]).collect();
    Ok((s, t))
}

/// The one node reading `name`, if exactly one does and it is not a graph
/// output.
fn sole_reader(l: &Lower<'_>, name: &str) -> Option<usize> {
    if l.uses.get(name).copied() != Some(1) {
        return None;
    }
    l.readers.get(name).and_then(|r| r.first().copied())
}

fn pads_for(
    node: &Node,
    ext: [usize; 2],
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
) -> Result<[u32; 4], ModelError> {
    let auto = node.string("auto_pad").unwrap_or("NOTSET");
    Ok(match auto {
        "NOTSET" | "" => {
            let p = node.ints("pads").unwrap_or_else(|| vec![0; 4]);
            if p.len() != 4 || p.iter().any(|&v| v < 0) {
                return Err(super::shape::unsupported(node, format!("pads {p:?}")));
            }
            [p[0] as u32, p[1] as u32, p[2] as u32, p[3] as u32]
        }
        "VALID" => [0; 4],
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = [0u32; 4];
            for i in 0..2 {
                let o = ext[i].div_ceil(s[i]);
                let need = o
                    .saturating_sub(1)
                    .saturating_mul(s[i])
                    .saturating_add(k[i].saturating_sub(1).saturating_mul(d[i]))
                    .saturating_add(1)
                    .saturating_sub(ext[i])
                    .min(u32::MAX as usize) as u32;
                let (lo, hi) = if auto == "SAME_UPPER" {
                    (need / 2, need - need / 2)
                } else {
                    (need - need / 2, need / 2)
                };
                p[i] = lo;
                p[i + 2] = hi;
            }
            p
        }
        a => return Err(super::shape::unsupported(node, format!("auto_pad {a}"))),
    })
}

fn pair(node: &Node, name: &str, default: usize) -> Result<[usize; 2], ModelError> {
    match node.ints(name) {
        None => Ok([default; 2]),
        Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 1) => Ok([v[0] as usize, v[1] as usize]),
        Some(v) => Err(super::shape::unsupported(
            node,
            format!("{name} {v:?} (2-D only)"),
        )),
    }
}

fn conv(l: &mut Lower<'_>, node: &Node) -> Result<(), ModelError> {
    let x = l.act(0)?;
    let x = l.dense(x)?;
    let w = l
        .konst(1)
        .cloned()
        .ok_or_else(|| l.err("convolution weights that are not constant"))?;
    if x.dims.len() != 4 || w.dims.len() != 4 {
        return Err(l.err("2-D convolutions only (NCHW)"));
    }
    let [n, c, h, wd] = [x.dims[0], x.dims[1], x.dims[2], x.dims[3]];
    let [oc, cg, kh, kw] = [w.dims[0], w.dims[1], w.dims[2], w.dims[3]];
    if [n, c, h, wd, oc, cg, kh, kw].contains(&0) {
        return Err(l.err("an empty convolution"));
    }
    let group = node.int("group", 1).max(1) as usize;
    if cg.checked_mul(group) != Some(c) || oc % group != 0 {
        return Err(l.err(format!(
            "group {group} with {c} input and {oc} output channels"
        )));
    }
    let s = pair(node, "strides", 1)?;
    let d = pair(node, "dilations", 1)?;
    let pad = pads_for(node, [h, wd], [kh, kw], s, d)?;
    let reach = |k: usize, d: usize| d.saturating_mul(k - 1).saturating_add(1);
    let span = |e: usize, a: u32, b: u32| e.saturating_add(a as usize).saturating_add(b as usize);
    let oh = span(h, pad[0], pad[2]).checked_sub(reach(kh, d[0]));
    let ow = span(wd, pad[1], pad[3]).checked_sub(reach(kw, d[1]));
    let (Some(oh), Some(ow)) = (oh, ow) else {
        return Err(l.err("filter larger than the padded input"));
    };
    let (oh, ow) = (oh / s[0] + 1, ow / s[1] + 1);
    let mut weights = w.floats();
    let mut bias = l.konst(2).map(Const::floats);
    // A BatchNormalization, then a Relu, that alone read the result fold in.
    let mut name = node.outputs.first().cloned().unwrap_or_default();
    let mut relu = false;
    if let Some(r) = sole_reader(l, &name) {
        let bn = l.g.nodes[r].clone();
        let saved = l.node;
        l.node = r;
        let folded = if bn.op == "BatchNormalization" {
            bn_affine(l, &bn).ok()
        } else {
            None
        };
        l.node = saved;
        if let Some((sc, sh)) = folded.filter(|(sc, _)| sc.len() == oc) {
            let per = cg * kh * kw;
            for (o, chunk) in weights.chunks_mut(per).enumerate() {
                chunk.iter_mut().for_each(|v| *v *= sc[o]);
            }
            let b = bias.take().unwrap_or_else(|| vec![0.0; oc]);
            bias = Some((0..oc).map(|o| b[o] * sc[o] + sh[o]).collect());
            l.skip.insert(r);
            name = bn.outputs.first().cloned().unwrap_or_default();
        }
    }
    if let Some(r) = sole_reader(l, &name) {
        if l.g.nodes[r].op == "Relu" {
            relu = true;
            l.skip.insert(r);
            name = l.g.nodes[r].outputs.first().cloned().unwrap_or_default();
        }
    }
    let wkey = format!("{}#w", node.name);
    let wv = l.weight(&wkey, &Const::f32(w.dims.clone(), weights));
    let bv = bias.map(|b| l.weight(&format!("{}#b", node.name), &Const::f32(vec![oc], b)));
    let y = l.alloc(vec![n, oc, oh, ow]);
    let op = OpDesc::Conv {
        input: l.desc(&x)?,
        filter: l.desc(&wv)?,
        bias: match &bv {
            Some(b) => Some(l.desc(b)?),
            None => None,
        },
        out: l.desc(&y)?,
        geom: ConvGeom {
            stride: [s[0] as u32, s[1] as u32],
            pad,
            dilation: [d[0] as u32, d[1] as u32],
        },
        relu,
    };
    let mut vals = vec![&x, &wv];
    vals.extend(bv.as_ref());
    vals.push(&y);
    l.emit(op, &vals);
    l.set(&name, y);
    Ok(())
}

fn pool(l: &mut Lower<'_>, node: &Node) -> Result<(), ModelError> {
    let out = node.outputs.first().cloned().unwrap_or_default();
    if node.outputs.get(1).is_some_and(|o| !o.is_empty()) {
        return Err(l.err("pooling indices output"));
    }
    let x = l.act(0)?;
    let x = l.dense(x)?;
    if x.dims.len() != 4 {
        return Err(l.err("2-D pooling only (NCHW)"));
    }
    let [n, c, h, w] = [x.dims[0], x.dims[1], x.dims[2], x.dims[3]];
    let global = node.op.starts_with("Global");
    let (k, s, pad, ceil) = if global {
        ([h, w], [1, 1], [0u32; 4], false)
    } else {
        let k = pair(node, "kernel_shape", 0)?;
        if k.contains(&0) {
            return Err(l.err("pooling without kernel_shape"));
        }
        if pair(node, "dilations", 1)? != [1, 1] {
            return Err(l.err("dilated pooling"));
        }
        let s = pair(node, "strides", 1)?;
        (
            k,
            s,
            pads_for(node, [h, w], k, s, [1, 1])?,
            node.int("ceil_mode", 0) != 0,
        )
    };
    let extent = |i: usize, ext: usize| -> Result<usize, ModelError> {
        let span = ext
            .saturating_add(pad[i] as usize)
            .saturating_add(pad[i + 2] as usize);
        let room = span
            .checked_sub(k[i])
            .ok_or_else(|| l.err("kernel larger than the input"))?;
        let mut o = if ceil {
            room.div_ceil(s[i]) + 1
        } else {
            room / s[i] + 1
        };
        // The last window must start inside the input or its top padding.
        if ceil && (o - 1).saturating_mul(s[i]) >= ext.saturating_add(pad[i] as usize) {
            o -= 1;
        }
        Ok(o)
    };
    let (oh, ow) = (extent(0, h)?, extent(1, w)?);
    let y = l.alloc(vec![n, c, oh, ow]);
    let geom = PoolGeom {
        kernel: [k[0] as u32, k[1] as u32],
        stride: [s[0] as u32, s[1] as u32],
        pad,
    };
    let (input, o) = (l.desc(&x)?, l.desc(&y)?);
    let op = if node.op.ends_with("MaxPool") {
        OpDesc::MaxPool {
            input,
            out: o,
            geom,
        }
    } else {
        OpDesc::AvgPool {
            input,
            out: o,
            geom,
            count_pad: node.int("count_include_pad", 0) != 0,
        }
    };
    l.emit(op, &[&x, &y]);
    l.set(&out, y);
    Ok(())
}

fn concat(l: &mut Lower<'_>, node: &Node) -> Result<(), ModelError> {
    let out = node.outputs.first().cloned().unwrap_or_default();
    let parts: Vec<Val> = (0..node.inputs.len())
        .filter(|&i| node.input(i).is_some())
        .map(|i| l.act(i))
        .collect::<Result<_, _>>()?;
    let first = parts.first().ok_or_else(|| l.err("concat of nothing"))?;
    let r = first.dims.len();
    let ax = axis(node, node.int("axis", 1), r)?;
    let mut dims = first.dims.clone();
    dims[ax] = 0;
    for p in &parts {
        let same = p.dims.len() == r && (0..r).all(|i| i == ax || p.dims[i] == first.dims[i]);
        if !same {
            return Err(l.err(format!("concat of {:?} and {:?}", first.dims, p.dims)));
        }
        dims[ax] = dims[ax].saturating_add(p.dims[ax]);
    }
    let y = l.alloc(dims.clone());
    let outer = elems(&dims[..ax]);
    let inner = elems(&dims[ax + 1..]);
    if outer.saturating_mul(parts.len()) > 512 {
        return Err(l.err("concat of too many blocks"));
    }
    let mut at = 0usize;
    for p in &parts {
        let block = p.dims[ax] * inner;
        for o in 0..outer {
            // One contiguous block of the output per outer index.
            // The outer index o of this part: one contiguous block of the
            // output.
            let mut src = p.clone();
            src.dims[..ax].fill(1);
            let (mut rem, mut off) = (o, 0usize);
            for i in (0..ax).rev() {
                off += (rem % p.dims[i]) * p.strides[i];
                rem /= p.dims[i];
            }
            src.off = p.off + (off * 4) as u64;
            let dst = Val {
                buf: y.buf,
                wbo: y.wbo,
                off: y.off + ((o * dims[ax] * inner + at) * 4) as u64,
                dims: src.dims.clone(),
                strides: super::lower::dense_strides(&src.dims),
            };
            let op = OpDesc::Copy {
                src: l.desc(&src)?,
                dst: l.desc(&dst)?,
            };
            l.emit(op, &[&src, &dst]);
        }
        at += block;
    }
    l.set(&out, y);
    Ok(())
}
