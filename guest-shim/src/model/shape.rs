//! Shape arithmetic shared by constant folding and lowering: ONNX axes,
//! reshapes, broadcasting, and folding of the ops that only move
//! constants around (the light models build every weight with
//! ConstantOfShape).

use super::onnx::{Attr, Const, Data, Node};
use super::ModelError;

pub fn unsupported(node: &Node, why: impl Into<String>) -> ModelError {
    ModelError::Unsupported {
        op: node.op.clone(),
        node: node.name.clone(),
        why: why.into(),
    }
}

/// Elements of a tensor of `dims`, saturating (a model's dims are not
/// trusted; sizes that large are refused later).
pub fn elems(dims: &[usize]) -> usize {
    dims.iter().fold(1usize, |a, &d| a.saturating_mul(d))
}

/// The most elements a constant made at load time may have.
pub const MAX_CONST_ELEMS: usize = 1 << 28;

/// An ONNX axis (negative counts from the end) within `rank` (`rank + 1`
/// positions when `insert`).
pub fn axis(node: &Node, a: i64, rank: usize) -> Result<usize, ModelError> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if (0..r).contains(&v) {
        Ok(v as usize)
    } else {
        Err(unsupported(node, format!("axis {a} outside rank {rank}")))
    }
}

/// The dims of a Reshape of `dims` to `shape` (0 copies the input's dim
/// unless `allowzero`, -1 takes what is left).
pub fn reshape(
    node: &Node,
    dims: &[usize],
    shape: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, ModelError> {
    let total = elems(dims);
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(
                *dims
                    .get(i)
                    .ok_or_else(|| unsupported(node, "reshape copies a dim the input lacks"))?,
            ),
            s if s >= 0 => out.push(s as usize),
            _ => return Err(unsupported(node, format!("reshape to {shape:?}"))),
        }
    }
    let known = elems(&out);
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(unsupported(
                node,
                format!("reshape of {dims:?} to {shape:?}"),
            ));
        }
        out[i] = total / known;
    }
    if elems(&out) != total {
        return Err(unsupported(
            node,
            format!("reshape of {dims:?} to {shape:?}"),
        ));
    }
    Ok(out)
}

/// Numpy broadcasting of two shapes.
pub fn broadcast(node: &Node, a: &[usize], b: &[usize]) -> Result<Vec<usize>, ModelError> {
    let r = a.len().max(b.len());
    let at = |v: &[usize], i: usize| {
        let pad = r - v.len();
        if i < pad {
            1
        } else {
            v[i - pad]
        }
    };
    (0..r)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            _ => Err(unsupported(
                node,
                format!("{a:?} and {b:?} do not broadcast"),
            )),
        })
        .collect()
}

/// Axes of Squeeze/Unsqueeze: the attribute (before opset 13) or the
/// constant second input.
pub fn axes_of(node: &Node, second: Option<&Const>) -> Option<Vec<i64>> {
    node.ints("axes").or_else(|| second.map(Const::ints))
}

pub fn squeeze(
    node: &Node,
    dims: &[usize],
    axes: Option<Vec<i64>>,
) -> Result<Vec<usize>, ModelError> {
    match axes {
        None => Ok(dims.iter().copied().filter(|&d| d != 1).collect()),
        Some(ax) => {
            let ax: Vec<usize> = ax
                .iter()
                .map(|&a| axis(node, a, dims.len()))
                .collect::<Result<_, _>>()?;
            Ok(dims
                .iter()
                .enumerate()
                .filter(|(i, _)| !ax.contains(i))
                .map(|(_, &d)| d)
                .collect())
        }
    }
}

pub fn unsqueeze(node: &Node, dims: &[usize], axes: &[i64]) -> Result<Vec<usize>, ModelError> {
    let r = dims.len() + axes.len();
    let mut ax: Vec<usize> = axes
        .iter()
        .map(|&a| axis(node, a, r))
        .collect::<Result<_, _>>()?;
    ax.sort_unstable();
    let mut out = Vec::with_capacity(r);
    let mut src = dims.iter();
    for i in 0..r {
        if ax.contains(&i) {
            out.push(1);
        } else {
            out.push(*src.next().ok_or_else(|| unsupported(node, "bad axes"))?);
        }
    }
    Ok(out)
}

/// Folds `node` when it only moves constants: returns its first output's
/// value, or None if the node computes something. A constant it makes
/// holds at most `max_bytes` (it must fit one of the device's buffers).
pub fn fold(
    node: &Node,
    ins: &[Option<&Const>],
    opset: i64,
    max_bytes: u64,
) -> Result<Option<Const>, ModelError> {
    let c0 = ins.first().copied().flatten();
    let second = ins.get(1).copied().flatten();
    Ok(Some(match node.op.as_str() {
        "Constant" => match node.attrs.get("value") {
            Some(Attr::Tensor(t)) => t.clone(),
            _ => match (node.attrs.get("value_float"), node.attrs.get("value_ints")) {
                (Some(Attr::Float(f)), _) => Const::f32(vec![], vec![*f]),
                (_, Some(Attr::Ints(v))) => Const::i64(vec![v.len()], v.clone()),
                _ => return Err(unsupported(node, "Constant without a tensor value")),
            },
        },
        "ConstantOfShape" => {
            let Some(shape) = c0 else { return Ok(None) };
            let dims: Vec<usize> = shape.ints().iter().map(|&d| d.max(0) as usize).collect();
            let n = elems(&dims);
            let size = match node.attrs.get("value") {
                Some(Attr::Tensor(t)) if matches!(t.data, Data::I64(_)) => 8,
                _ => 4,
            };
            if n > MAX_CONST_ELEMS || (n as u64).saturating_mul(size) > max_bytes {
                return Err(unsupported(node, format!("a constant of {dims:?}")));
            }
            match node.attrs.get("value") {
                Some(Attr::Tensor(t)) => match &t.data {
                    Data::F32(v) => Const::f32(dims, vec![v.first().copied().unwrap_or(0.0); n]),
                    Data::I64(v) => Const::i64(dims, vec![v.first().copied().unwrap_or(0); n]),
                },
                _ => Const::f32(dims, vec![0.0; n]),
            }
        }
        "Identity" | "Dropout" => match c0 {
            Some(c) => c.clone(),
            None => return Ok(None),
        },
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
            let Some(c) = c0 else { return Ok(None) };
            let dims = match node.op.as_str() {
                "Reshape" => {
                    let shape = match (second, node.ints("shape")) {
                        (Some(s), _) => s.ints(),
                        (None, Some(s)) if opset < 5 => s,
                        _ => return Ok(None),
                    };
                    reshape(node, &c.dims, &shape, node.int("allowzero", 0) != 0)?
                }
                "Flatten" => {
                    let a = node.int("axis", 1);
                    let a = if a < 0 { a + c.dims.len() as i64 } else { a }
                        .clamp(0, c.dims.len() as i64) as usize;
                    vec![elems(&c.dims[..a]), elems(&c.dims[a..])]
                }
                "Squeeze" => squeeze(node, &c.dims, axes_of(node, second))?,
                _ => {
                    let ax = axes_of(node, second).ok_or_else(|| unsupported(node, "no axes"))?;
                    unsqueeze(node, &c.dims, &ax)?
                }
            };
            Const {
                dims,
                data: c.data.clone(),
            }
        }
        "Cast" => {
            let Some(c) = c0 else { return Ok(None) };
            // 1 = FLOAT; the integer types stay i64.
            if node.int("to", 1) == 1 {
                Const::f32(c.dims.clone(), c.floats())
            } else {
                Const::i64(c.dims.clone(), c.ints())
            }
        }
        _ => return Ok(None),
    }))
}
