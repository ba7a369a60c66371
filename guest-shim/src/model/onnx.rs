//! An ONNX model as the compiler sees it: nodes in order, constant tensors
//! (initializers and `Constant` nodes), the graph's real inputs with their
//! shapes, and its outputs. Parsed by prost from the official schema.

use std::collections::HashMap;

use prost::Message;

use super::pb;
use super::ModelError;

/// A constant tensor's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A constant tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Const {
    pub dims: Vec<usize>,
    pub data: Data,
}

impl Const {
    pub fn f32(dims: Vec<usize>, v: Vec<f32>) -> Const {
        Const {
            dims,
            data: Data::F32(v),
        }
    }

    pub fn i64(dims: Vec<usize>, v: Vec<i64>) -> Const {
        Const {
            dims,
            data: Data::I64(v),
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as i64 (shapes, axes); f32 values truncate.
    pub fn ints(&self) -> Vec<i64> {
        match &self.data {
            Data::I64(v) => v.clone(),
            Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }

    /// The elements as f32.
    pub fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

/// A node attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Str(String),
    Tensor(Const),
    Other,
}

/// A graph node.
#[derive(Debug, Clone)]
pub struct Node {
    pub op: String,
    /// The node's name, or its first output's if it has none.
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: HashMap<String, Attr>,
}

impl Node {
    pub fn int(&self, name: &str, default: i64) -> i64 {
        match self.attrs.get(name) {
            Some(Attr::Int(v)) => *v,
            _ => default,
        }
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        match self.attrs.get(name) {
            Some(Attr::Float(v)) => *v,
            Some(Attr::Int(v)) => *v as f32,
            _ => default,
        }
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        match self.attrs.get(name) {
            Some(Attr::Ints(v)) => Some(v.clone()),
            Some(Attr::Int(v)) => Some(vec![*v]),
            _ => None,
        }
    }

    pub fn string(&self, name: &str) -> Option<&str> {
        match self.attrs.get(name) {
            Some(Attr::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// Input `i`, if present and not the empty name of an omitted one.
    pub fn input(&self, i: usize) -> Option<&str> {
        self.inputs
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// A graph input: its name and dims (`None` for a symbolic dim).
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub name: String,
    pub dims: Vec<Option<usize>>,
}

/// A parsed model.
#[derive(Debug, Clone)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub consts: HashMap<String, Const>,
    /// Inputs that are not initializers, in order.
    pub inputs: Vec<Input>,
    pub outputs: Vec<String>,
    /// Version of the default ("ai.onnx") operator set.
    pub opset: i64,
}

fn bad(why: impl Into<String>) -> ModelError {
    ModelError::Format(why.into())
}

/// A TensorProto as a constant: f32 or an integer type (kept as i64).
pub fn tensor(t: &pb::TensorProto) -> Result<Const, ModelError> {
    use pb::tensor_proto::DataType;
    let name = t.name.clone().unwrap_or_default();
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("tensor {name}: dim {d}"))))
        .collect::<Result<_, _>>()?;
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("tensor {name}: too many elements")))?;
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
        return Err(bad(format!(
            "tensor {name}: external data is not supported"
        )));
    }
    let raw = t.raw_data.as_deref();
    let dt = t.data_type.unwrap_or(0);
    let c = if dt == DataType::Float as i32 {
        let v: Vec<f32> = match raw {
            Some(r) => r
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            None => t.float_data.clone(),
        };
        Const::f32(dims, v)
    } else if dt == DataType::Int64 as i32 {
        let v: Vec<i64> = match raw {
            Some(r) => r
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            None => t.int64_data.clone(),
        };
        Const::i64(dims, v)
    } else if dt == DataType::Int32 as i32 {
        let v: Vec<i64> = match raw {
            Some(r) => r
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            None => t.int32_data.iter().map(|&x| i64::from(x)).collect(),
        };
        Const::i64(dims, v)
    } else {
        return Err(bad(format!(
            "tensor {name}: data type {dt} is not supported"
        )));
    };
    if c.len() != n {
        return Err(bad(format!(
            "tensor {name}: {} elements for dims {:?}",
            c.len(),
            c.dims
        )));
    }
    Ok(c)
}

fn attr(a: &pb::AttributeProto) -> Result<Attr, ModelError> {
    use pb::attribute_proto::AttributeType as T;
    let t = a.r#type.unwrap_or(0);
    Ok(if t == T::Int as i32 {
        Attr::Int(a.i.unwrap_or(0))
    } else if t == T::Float as i32 {
        Attr::Float(a.f.unwrap_or(0.0))
    } else if t == T::Ints as i32 {
        Attr::Ints(a.ints.clone())
    } else if t == T::Floats as i32 {
        Attr::Floats(a.floats.clone())
    } else if t == T::String as i32 {
        Attr::Str(String::from_utf8_lossy(a.s.as_deref().unwrap_or_default()).into_owned())
    } else if t == T::Tensor as i32 {
        match &a.t {
            Some(t) => Attr::Tensor(tensor(t)?),
            None => Attr::Other,
        }
    } else {
        Attr::Other
    })
}

impl Graph {
    /// Parses an ONNX model file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Graph, ModelError> {
        let m =
            pb::ModelProto::decode(bytes).map_err(|e| bad(format!("not an ONNX model: {e}")))?;
        let opset = m
            .opset_import
            .iter()
            .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
            .and_then(|o| o.version)
            .unwrap_or(1);
        let g = m.graph.ok_or_else(|| bad("model has no graph"))?;
        let mut consts = HashMap::new();
        for t in &g.initializer {
            consts.insert(t.name.clone().unwrap_or_default(), tensor(t)?);
        }
        let mut inputs = Vec::new();
        for i in &g.input {
            let name = i.name.clone().unwrap_or_default();
            if consts.contains_key(&name) {
                continue;
            }
            let shape = match i.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(pb::type_proto::Value::TensorType(t)) => t.shape.clone(),
                _ => return Err(bad(format!("input {name} is not a tensor"))),
            };
            let dims = shape
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v))
                                if v > 0 =>
                            {
                                Some(v as usize)
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            inputs.push(Input { name, dims });
        }
        let mut nodes = Vec::new();
        for n in &g.node {
            let domain = n.domain.as_deref().unwrap_or("");
            let op = n.op_type.clone().unwrap_or_default();
            let outputs = n.output.clone();
            let name = n
                .name
                .clone()
                .filter(|s| !s.is_empty())
                .or_else(|| outputs.first().cloned())
                .unwrap_or_default();
            if !(domain.is_empty() || domain == "ai.onnx") {
                return Err(ModelError::Unsupported {
                    op: format!("{domain}.{op}"),
                    node: name,
                    why: "operator domain other than ai.onnx".into(),
                });
            }
            let mut attrs = HashMap::new();
            for a in &n.attribute {
                attrs.insert(a.name.clone().unwrap_or_default(), attr(a)?);
            }
            nodes.push(Node {
                op,
                name,
                inputs: n.input.clone(),
                outputs,
                attrs,
            });
        }
        Ok(Graph {
            nodes,
            consts,
            inputs,
            outputs: g.output.iter().filter_map(|o| o.name.clone()).collect(),
            opset,
        })
    }
}
