//! Runs ONNX models on the NPU: [`onnx`] parses the model (prost over the
//! official schema), [`lower`] infers shapes, folds constants and compiles
//! the graph to SNPU programs, [`runner`] uploads the weights once and
//! runs the programs through any [`Device`].

pub mod cli;
pub mod device;
pub mod lower;
pub mod onnx;
mod ops;
pub mod runner;
mod shape;

pub use device::{Device, DeviceLimits};
pub use lower::{compile, Binding, Compiled};
pub use ops::SUPPORTED;
pub use runner::{Loaded, Output, RunStats};

/// The ONNX protobuf types, generated from the official schema.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// Why a model cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("malformed model: {0}")]
    Format(String),
    #[error("{op} (node {node}) is not supported: {why}")]
    Unsupported {
        op: String,
        node: String,
        why: String,
    },
    #[error("input: {0}")]
    Input(String),
    #[error("the model does not fit the device: {0}")]
    Capacity(String),
    #[error("device: {0}")]
    Device(#[from] std::io::Error),
}
