//! A compiled model on a device: weights and command streams uploaded
//! once, the activation arena allocated once; each run writes the inputs,
//! submits the segments chained by fences and reads the outputs.

use std::time::{Duration, Instant};

use virtio_accel_protocol::{VIRTIO_ACCEL_ACCESS_READ as R, VIRTIO_ACCEL_ACCESS_WRITE as W};

use super::device::Device;
use super::lower::{compile, Compiled};
use super::onnx::Graph;
use super::ModelError;

/// A model loaded on a device.
pub struct Loaded<D: Device> {
    pub compiled: Compiled,
    weights: Vec<D::Bo>,
    arena: D::Bo,
    cmds: Vec<(D::Bo, u32)>,
}

/// One output of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub name: String,
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
}

/// What a run took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    /// From the first input written to the last output read.
    pub wall: Duration,
    /// Device time the jobs reported, if the device reports it.
    pub device: Option<Duration>,
    pub jobs: usize,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl<D: Device> Loaded<D> {
    /// Parses and compiles `model` for `dev` and uploads it. `input_dims`
    /// gives each input's dims; None takes the model's own (symbolic dims
    /// as 1).
    pub fn new(
        dev: &mut D,
        model: &[u8],
        input_dims: Option<&[Vec<usize>]>,
    ) -> Result<Loaded<D>, ModelError> {
        let g = Graph::parse(model)?;
        let dims: Vec<Vec<usize>> = match input_dims {
            Some(d) => d.to_vec(),
            None => g
                .inputs
                .iter()
                .map(|i| i.dims.iter().map(|d| d.unwrap_or(1)).collect())
                .collect(),
        };
        let limits = dev.limits()?;
        let compiled = compile(&g, &dims, limits)?;
        Self::upload(dev, compiled)
    }

    /// Uploads a compiled model.
    pub fn upload(dev: &mut D, compiled: Compiled) -> Result<Loaded<D>, ModelError> {
        let mut weights = Vec::new();
        for w in &compiled.weights {
            let bo = dev.bo_create((w.len() as u64).max(64))?;
            dev.bo_write(bo, 0, w)?;
            weights.push(bo);
        }
        let arena = dev.bo_create(compiled.arena_bytes)?;
        let mut cmds = Vec::new();
        for p in &compiled.segments {
            let bytes = p.encode();
            let bo = dev.bo_create(bytes.len() as u64)?;
            dev.bo_write(bo, 0, &bytes)?;
            cmds.push((bo, bytes.len() as u32));
        }
        Ok(Loaded {
            compiled,
            weights,
            arena,
            cmds,
        })
    }

    /// Runs the model on `inputs` (one slice per input, row-major f32).
    pub fn run(
        &self,
        dev: &mut D,
        inputs: &[&[f32]],
    ) -> Result<(Vec<Output>, RunStats), ModelError> {
        let t0 = Instant::now();
        if inputs.len() != self.compiled.inputs.len() {
            return Err(ModelError::Input(format!(
                "{} inputs given, the model takes {}",
                inputs.len(),
                self.compiled.inputs.len()
            )));
        }
        for (b, x) in self.compiled.inputs.iter().zip(inputs) {
            let want: usize = b.dims.iter().product();
            if x.len() != want {
                return Err(ModelError::Input(format!(
                    "input {} has {} values, its dims {:?} hold {want}",
                    b.name,
                    x.len(),
                    b.dims
                )));
            }
            if let Some(off) = b.offset {
                dev.bo_write(self.arena, off, &f32_bytes(x))?;
            }
        }
        let mut bos = vec![(self.arena, R | W)];
        bos.extend(self.weights.iter().map(|&w| (w, R)));
        let mut fences = Vec::new();
        for &(cmd, len) in &self.cmds {
            let f = dev.submit(cmd, len, &bos, fences.last())?;
            fences.push(f);
        }
        let jobs = fences.len();
        let mut device = Some(Duration::ZERO);
        for f in fences {
            let t = dev.wait(f)?;
            device = match (device, t) {
                (Some(d), Some(ns)) => Some(d + Duration::from_nanos(ns)),
                _ => None,
            };
        }
        let mut outs = Vec::new();
        for b in &self.compiled.outputs {
            let n: usize = b.dims.iter().product();
            let values = match (&b.value, b.offset) {
                (Some(v), _) => v.clone(),
                (None, Some(off)) => dev
                    .bo_read(self.arena, off, n * 4)?
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                (None, None) => Vec::new(),
            };
            outs.push(Output {
                name: b.name.clone(),
                dims: b.dims.clone(),
                values,
            });
        }
        Ok((
            outs,
            RunStats {
                wall: t0.elapsed(),
                device,
                jobs,
            },
        ))
    }

    /// Frees the model's buffers.
    pub fn unload(self, dev: &mut D) -> Result<(), ModelError> {
        for (bo, _) in self.cmds {
            dev.bo_destroy(bo)?;
        }
        dev.bo_destroy(self.arena)?;
        for w in self.weights {
            dev.bo_destroy(w)?;
        }
        Ok(())
    }
}
