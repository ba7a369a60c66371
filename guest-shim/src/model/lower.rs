//! The compiler: an ONNX graph lowered to SNPU programs over two buffers,
//! the weights (every constant an op reads, uploaded once) and the
//! activation arena (graph inputs, outputs and every intermediate tensor,
//! at offsets reused once a tensor is dead). Views (Reshape, Flatten,
//! Squeeze, Dropout…) cost nothing; Conv absorbs a following
//! BatchNormalization and Relu. The ops are cut into segments that each
//! fit one job; the runner chains them with fences.

use std::collections::{HashMap, HashSet};

use virtio_accel_protocol::snpu::{DType, OpDesc, Program, TensorDesc, SNPU_MAX_OPS};

use super::device::DeviceLimits;
use super::onnx::{Const, Graph};
use super::shape::{elems, fold, unsupported};
use super::ModelError;

/// Index of the activation arena in every job's buffer list; the weights
/// buffers follow it (buffer 1 + k holds weights chunk k).
pub const ARENA_BO: u32 = 0;
/// Work ([`Program::cost`]: elements touched plus multiply-accumulates)
/// after which a segment ends: a few hundred milliseconds of the software
/// NPU, well inside a job timeout.
pub const SEGMENT_COST: u64 = 1 << 31;
const ALIGN: u64 = 64;

/// A tensor of the graph in NPU memory: in weights chunk `wbo` (`buf`
/// None) or in an arena buffer, `off` bytes in, with element strides.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Val {
    pub buf: Option<usize>,
    pub wbo: u32,
    pub off: u64,
    pub dims: Vec<usize>,
    pub strides: Vec<usize>,
}

pub(super) fn dense_strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].saturating_mul(dims[i + 1]);
    }
    s
}

impl Val {
    pub fn is_dense(&self) -> bool {
        self.strides == dense_strides(&self.dims)
            || self
                .dims
                .iter()
                .zip(&self.strides)
                .zip(dense_strides(&self.dims))
                .all(|((&d, &s), ds)| d == 1 || s == ds)
    }

    /// The same elements under other dims (a dense tensor only).
    pub fn view(&self, dims: Vec<usize>) -> Val {
        Val {
            buf: self.buf,
            wbo: self.wbo,
            off: self.off,
            strides: dense_strides(&dims),
            dims,
        }
    }
}

/// A graph input or output in the arena.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub name: String,
    pub dims: Vec<usize>,
    /// Byte offset in the arena; None for an output that is a constant.
    pub offset: Option<u64>,
    /// A constant output's values.
    pub value: Option<Vec<f32>>,
}

/// A compiled model.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The weights buffers' contents (f32, little-endian), each at most
    /// `max_bo_size`.
    pub weights: Vec<Vec<u8>>,
    pub arena_bytes: u64,
    /// Jobs, in order; each names buffer 0 (the arena, read and write) and
    /// 1 + k (weights chunk k, read).
    pub segments: Vec<Program>,
    pub inputs: Vec<Binding>,
    pub outputs: Vec<Binding>,
    /// Opcodes the segments use (bit n = opcode n).
    pub ops_used: u64,
}

impl Compiled {
    pub fn op_count(&self) -> usize {
        self.segments.iter().map(|p| p.ops.len()).sum()
    }
    pub fn cost(&self) -> u64 {
        self.segments.iter().map(Program::cost).sum()
    }
}

#[derive(Debug, Clone, Copy)]
struct BufInfo {
    bytes: u64,
    /// First and last op touching it (inputs from 0, outputs to the end).
    def: usize,
    last: usize,
}

/// Where each tensor of an emitted op lives: `Ok(arena buffer)` or
/// `Err(weights chunk)`.
type Places = Vec<Result<usize, u32>>;

/// An op, where its tensors live, and the node that emitted it.
type Emitted = (OpDesc, Places, usize);

pub(super) enum V {
    Const(Const),
    Act(Val),
}

pub(super) struct Lower<'g> {
    pub g: &'g Graph,
    pub limits: DeviceLimits,
    pub vals: HashMap<String, V>,
    weights: Vec<Vec<u8>>,
    wcache: HashMap<String, Val>,
    bufs: Vec<BufInfo>,
    /// Ops with the arena buffer of each tensor, in `OpDesc::tensors`
    /// order (or its weights chunk); and the node that emitted each.
    ops: Vec<Emitted>,
    /// How many nodes read each value, plus one if it is a graph output.
    pub uses: HashMap<String, usize>,
    /// Nodes reading each value.
    pub readers: HashMap<String, Vec<usize>>,
    /// Nodes folded into another.
    pub skip: HashSet<usize>,
    pub node: usize,
}

/// Tensors of an op, mutable, in the order of `OpDesc::tensors` (inputs,
/// then the output).
fn tensors_mut(op: &mut OpDesc) -> Vec<&mut TensorDesc> {
    match op {
        OpDesc::Nop => vec![],
        OpDesc::Copy { src, dst } => vec![src, dst],
        OpDesc::Add { a, b, out } | OpDesc::Mul { a, b, out } => vec![a, b, out],
        OpDesc::MatMul { a, b, out, .. } => vec![a, b, out],
        OpDesc::Relu { input, out }
        | OpDesc::Softmax { input, out }
        | OpDesc::MaxPool { input, out, .. }
        | OpDesc::AvgPool { input, out, .. }
        | OpDesc::Clip { input, out, .. }
        | OpDesc::Sigmoid { input, out }
        | OpDesc::Lrn { input, out, .. } => vec![input, out],
        OpDesc::Conv2d {
            input,
            filter,
            bias,
            out,
            ..
        }
        | OpDesc::Conv {
            input,
            filter,
            bias,
            out,
            ..
        } => {
            let mut v = vec![input, filter];
            v.extend(bias.as_mut());
            v.push(out);
            v
        }
    }
}

fn opcode(op: &OpDesc) -> u16 {
    use virtio_accel_protocol::snpu::*;
    match op {
        OpDesc::Nop => SNPU_OP_NOP,
        OpDesc::Copy { .. } => SNPU_OP_COPY,
        OpDesc::Add { .. } => SNPU_OP_ADD,
        OpDesc::Mul { .. } => SNPU_OP_MUL,
        OpDesc::Relu { .. } => SNPU_OP_RELU,
        OpDesc::Softmax { .. } => SNPU_OP_SOFTMAX,
        OpDesc::MatMul { .. } => SNPU_OP_MATMUL,
        OpDesc::Conv2d { .. } => SNPU_OP_CONV2D,
        OpDesc::Conv { .. } => SNPU_OP_CONV,
        OpDesc::MaxPool { .. } => SNPU_OP_MAXPOOL,
        OpDesc::AvgPool { .. } => SNPU_OP_AVGPOOL,
        OpDesc::Clip { .. } => SNPU_OP_CLIP,
        OpDesc::Sigmoid { .. } => SNPU_OP_SIGMOID,
        OpDesc::Lrn { .. } => SNPU_OP_LRN,
    }
}

impl<'g> Lower<'g> {
    pub fn err(&self, why: impl Into<String>) -> ModelError {
        match self.g.nodes.get(self.node) {
            Some(n) => unsupported(n, why),
            None => ModelError::Format(why.into()),
        }
    }

    /// A new dense arena tensor.
    pub fn alloc(&mut self, dims: Vec<usize>) -> Val {
        self.bufs.push(BufInfo {
            bytes: (elems(&dims) as u64)
                .saturating_mul(4)
                .saturating_add(ALIGN - 1)
                / ALIGN
                * ALIGN,
            def: usize::MAX,
            last: 0,
        });
        Val {
            buf: Some(self.bufs.len() - 1),
            wbo: 0,
            off: 0,
            strides: dense_strides(&dims),
            dims,
        }
    }

    /// A constant as a tensor in the weights buffer, uploaded once per
    /// `key`.
    pub fn weight(&mut self, key: &str, c: &Const) -> Val {
        if let Some(v) = self.wcache.get(key) {
            return v.clone();
        }
        // A new chunk when this constant would take the last one past the
        // largest buffer the device allows.
        let bytes = (c.len() as u64).saturating_mul(4).saturating_add(ALIGN);
        let full = self
            .weights
            .last()
            .is_none_or(|w| (w.len() as u64).saturating_add(bytes) > self.limits.max_bo_size);
        if full {
            self.weights.push(Vec::new());
        }
        let wbo = self.weights.len() - 1;
        let w = self.weights.last_mut().expect("a chunk");
        let off = w.len() as u64;
        for x in c.floats() {
            w.extend_from_slice(&x.to_le_bytes());
        }
        while !(w.len() as u64).is_multiple_of(ALIGN) {
            w.push(0);
        }
        let v = Val {
            buf: None,
            wbo: wbo as u32,
            off,
            strides: dense_strides(&c.dims),
            dims: c.dims.clone(),
        };
        self.wcache.insert(key.to_string(), v.clone());
        v
    }

    /// Input `i` of the current node as a tensor (constants are uploaded).
    pub fn act(&mut self, i: usize) -> Result<Val, ModelError> {
        let node = &self.g.nodes[self.node];
        let name = node
            .input(i)
            .ok_or_else(|| self.err(format!("input {i} missing")))?
            .to_string();
        match self.vals.get(&name) {
            Some(V::Act(v)) => Ok(v.clone()),
            Some(V::Const(c)) => {
                let c = c.clone();
                Ok(self.weight(&name, &c))
            }
            None => Err(self.err(format!("input {name} is not computed before the node"))),
        }
    }

    /// Input `i` if it is a constant.
    pub fn konst(&self, i: usize) -> Option<&Const> {
        let name = self.g.nodes[self.node].input(i)?;
        match self.vals.get(name) {
            Some(V::Const(c)) => Some(c),
            _ => None,
        }
    }

    pub fn set(&mut self, name: &str, v: Val) {
        self.vals.insert(name.to_string(), V::Act(v));
    }

    /// An SNPU tensor for `v` (bo_index and offset patched at the end):
    /// axes of extent 1 dropped above rank 4.
    pub fn desc(&self, v: &Val) -> Result<TensorDesc, ModelError> {
        let mut dims = v.dims.clone();
        let mut strides = v.strides.clone();
        if dims.is_empty() {
            (dims, strides) = (vec![1], vec![1]);
        }
        if dims.len() > 4 {
            let keep: Vec<usize> = (0..dims.len()).filter(|&i| dims[i] != 1).collect();
            dims = keep.iter().map(|&i| v.dims[i]).collect();
            strides = keep.iter().map(|&i| v.strides[i]).collect();
            if dims.is_empty() {
                (dims, strides) = (vec![1], vec![1]);
            }
        }
        if dims.len() > 4 {
            return Err(self.err(format!("a tensor of rank {} above 4", v.dims.len())));
        }
        let u = |x: usize| u32::try_from(x).map_err(|_| self.err("a dim above 2^32"));
        let mut t = TensorDesc::dense(0, DType::F32, v.off, &[1]);
        t.rank = dims.len();
        for i in 0..dims.len() {
            t.dims[i] = u(dims[i])?;
            t.strides[i] = u(strides[i])?;
        }
        Ok(t)
    }

    /// Records an op; `vals` are the tensors behind its descs, in
    /// `OpDesc::tensors` order.
    pub fn emit(&mut self, op: OpDesc, vals: &[&Val]) {
        let at = self.ops.len();
        let bufs: Places = vals.iter().map(|v| v.buf.ok_or(v.wbo)).collect();
        let n = bufs.len();
        for (i, b) in bufs.iter().enumerate() {
            if let Ok(b) = b {
                let info = &mut self.bufs[*b];
                info.last = info.last.max(at);
                if i == n - 1 {
                    info.def = info.def.min(at);
                }
            }
        }
        self.ops.push((op, bufs, self.node));
    }

    /// `v` as a dense tensor: itself, or a copy.
    pub fn dense(&mut self, v: Val) -> Result<Val, ModelError> {
        if v.is_dense() {
            return Ok(v);
        }
        let out = self.alloc(v.dims.clone());
        let (src, dst) = (self.desc(&v)?, self.desc(&out)?);
        self.emit(OpDesc::Copy { src, dst }, &[&v, &out]);
        Ok(out)
    }
}

/// Compiles `g` for a device with `limits`; `input_dims` gives each real
/// input's dims (the model's own where it fixes them).
pub fn compile(
    g: &Graph,
    input_dims: &[Vec<usize>],
    limits: DeviceLimits,
) -> Result<Compiled, ModelError> {
    let mut l = Lower {
        g,
        limits,
        vals: g
            .consts
            .iter()
            .map(|(k, c)| (k.clone(), V::Const(c.clone())))
            .collect(),
        weights: Vec::new(),
        wcache: HashMap::new(),
        bufs: Vec::new(),
        ops: Vec::new(),
        uses: HashMap::new(),
        readers: HashMap::new(),
        skip: HashSet::new(),
        node: usize::MAX,
    };
    for (i, n) in g.nodes.iter().enumerate() {
        for name in n.inputs.iter().filter(|s| !s.is_empty()) {
            *l.uses.entry(name.clone()).or_default() += 1;
            l.readers.entry(name.clone()).or_default().push(i);
        }
    }
    for o in &g.outputs {
        *l.uses.entry(o.clone()).or_default() += 1;
    }
    if input_dims.len() != g.inputs.len() {
        return Err(ModelError::Input(format!(
            "the model takes {} inputs, {} given",
            g.inputs.len(),
            input_dims.len()
        )));
    }
    let mut inputs = Vec::new();
    for (inp, dims) in g.inputs.iter().zip(input_dims) {
        let fits = inp.dims.len() == dims.len()
            && inp
                .dims
                .iter()
                .zip(dims)
                .all(|(m, d)| m.is_none_or(|m| m == *d));
        if !fits {
            return Err(ModelError::Input(format!(
                "input {} has dims {:?}, the model wants {:?}",
                inp.name, dims, inp.dims
            )));
        }
        let v = l.alloc(dims.clone());
        if let Some(b) = v.buf {
            l.bufs[b].def = 0;
        }
        inputs.push((inp.name.clone(), v.clone()));
        l.set(&inp.name, v);
    }
    for i in 0..g.nodes.len() {
        if l.skip.contains(&i) {
            continue;
        }
        l.node = i;
        let node = &g.nodes[i];
        let ins: Vec<Option<&Const>> = (0..node.inputs.len()).map(|k| l.konst(k)).collect();
        let all_const = node
            .inputs
            .iter()
            .enumerate()
            .all(|(k, s)| s.is_empty() || ins[k].is_some());
        if all_const {
            if let Some(c) = fold(node, &ins, g.opset, l.limits.max_bo_size)? {
                let out = node.outputs.first().cloned().unwrap_or_default();
                l.vals.insert(out, V::Const(c));
                continue;
            }
        }
        super::ops::lower_node(&mut l)?;
    }
    finish(l, inputs)
}

fn finish(mut l: Lower<'_>, inputs: Vec<(String, Val)>) -> Result<Compiled, ModelError> {
    let end = l.ops.len();
    let mut outputs = Vec::new();
    let mut out_vals = Vec::new();
    for name in &l.g.outputs {
        match l.vals.get(name) {
            Some(V::Act(v)) => {
                let v = v.clone();
                l.node = usize::MAX;
                let v = if v.is_dense() && v.buf.is_some() {
                    v
                } else {
                    l.dense_copy(v)?
                };
                if let Some(b) = v.buf {
                    l.bufs[b].last = usize::MAX;
                }
                out_vals.push((name.clone(), Some(v)));
            }
            Some(V::Const(c)) => {
                outputs.push(Binding {
                    name: name.clone(),
                    dims: c.dims.clone(),
                    offset: None,
                    value: Some(c.floats()),
                });
            }
            None => {
                return Err(ModelError::Format(format!(
                    "output {name} is never computed"
                )))
            }
        }
    }
    let _ = end;
    // Arena offsets: largest buffers first, each at the lowest offset
    // that no buffer alive at the same time overlaps.
    let mut order: Vec<usize> = (0..l.bufs.len())
        .filter(|&b| l.bufs[b].def != usize::MAX)
        .collect();
    order.sort_by_key(|&b| std::cmp::Reverse(l.bufs[b].bytes));
    let mut placed: Vec<(usize, u64)> = Vec::new();
    let mut offset = vec![0u64; l.bufs.len()];
    let mut arena = 0u64;
    for b in order {
        let me = l.bufs[b];
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|(o, _)| {
                let other = l.bufs[*o];
                other.def <= me.last && me.def <= other.last
            })
            .map(|&(o, at)| (at, at.saturating_add(l.bufs[o].bytes)))
            .collect();
        busy.sort_unstable();
        let mut at = 0u64;
        for (s, e) in busy {
            if at.saturating_add(me.bytes) <= s {
                break;
            }
            at = at.max(e);
        }
        offset[b] = at;
        arena = arena.max(at.saturating_add(me.bytes));
        placed.push((b, at));
    }
    let mut ops_used = 0u64;
    let mut segments = vec![Program::default()];
    let mut cost = 0u64;
    let max_ops = usize::from(SNPU_MAX_OPS)
        .min((l.limits.max_cmd_size.saturating_sub(16) / 232) as usize)
        .max(1);
    for (mut op, bufs, node) in l.ops {
        for (t, b) in tensors_mut(&mut op).into_iter().zip(&bufs) {
            match b {
                Ok(b) => {
                    t.bo_index = ARENA_BO;
                    t.offset += offset[*b];
                }
                Err(k) => t.bo_index = 1 + k,
            }
        }
        let code = opcode(&op);
        if l.limits.ops & (1 << code) == 0 {
            let n = &l.g.nodes[node];
            return Err(unsupported(
                n,
                format!("the device lacks SNPU opcode {code} (not in its ops bits)"),
            ));
        }
        if op.work_bytes() > l.limits.max_job_memory {
            let n = &l.g.nodes[node];
            return Err(unsupported(
                n,
                format!(
                    "needs {} bytes of NPU working memory, the device allows {}",
                    op.work_bytes(),
                    l.limits.max_job_memory
                ),
            ));
        }
        ops_used |= 1 << code;
        let c = op.cost();
        let seg = segments.last_mut().expect("one segment");
        if !seg.ops.is_empty()
            && (seg.ops.len() >= max_ops || cost.saturating_add(c) > SEGMENT_COST)
        {
            segments.push(Program::default());
            cost = 0;
        }
        cost = cost.saturating_add(c);
        segments.last_mut().expect("one segment").ops.push(op);
    }
    let too_big = l
        .weights
        .iter()
        .any(|w| w.len() as u64 > l.limits.max_bo_size);
    if arena > l.limits.max_bo_size || too_big {
        return Err(ModelError::Capacity(format!(
            "a constant or {arena} bytes of activations above the {}-byte buffer limit",
            l.limits.max_bo_size
        )));
    }
    let bind = |(name, v): (String, Val)| Binding {
        name,
        offset: v.buf.map(|b| offset[b] + v.off),
        dims: v.dims,
        value: None,
    };
    let mut outs: Vec<Binding> = out_vals
        .into_iter()
        .map(|(n, v)| bind((n, v.expect("an arena output"))))
        .collect();
    outs.extend(outputs);
    // Graph output order.
    outs.sort_by_key(|b| l.g.outputs.iter().position(|o| *o == b.name));
    Ok(Compiled {
        weights: l.weights,
        arena_bytes: arena.max(ALIGN),
        segments: segments.into_iter().filter(|p| !p.ops.is_empty()).collect(),
        inputs: inputs.into_iter().map(bind).collect(),
        outputs: outs,
        ops_used,
    })
}

impl Lower<'_> {
    /// A dense arena copy of `v` (a graph output that is a view or lies in
    /// the weights).
    fn dense_copy(&mut self, v: Val) -> Result<Val, ModelError> {
        let out = self.alloc(v.dims.clone());
        let (src, dst) = (self.desc(&v)?, self.desc(&out)?);
        self.emit(OpDesc::Copy { src, dst }, &[&v, &out]);
        Ok(out)
    }
}
