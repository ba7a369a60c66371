//! The virtio-accel wire format.
//!
//! Every structure that crosses the virtio boundary is defined here once, as a
//! `#[repr(C)]` struct of little-endian fields with explicit padding, and its
//! size is asserted at compile time. [`request`] and [`response`] turn bytes
//! into typed values (and back) and reject every malformed input with a
//! precise [`DecodeError`]; they never panic. [`snpu`] is the command-stream
//! format of the built-in software NPU (appendix A of the specification).
//!
//! The crate knows nothing about virtqueues or guest memory: it works on
//! byte slices, so the host device, the guest library and the tests share it.
#![forbid(unsafe_code)]

pub mod error;
pub mod request;
pub mod response;
pub mod snpu;
pub mod wire;

pub use error::DecodeError;
pub use request::{Limits, Request};
pub use response::Response;
pub use wire::*;
