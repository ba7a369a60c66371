//! Guest userspace for the virtio-accel accel node: the UAPI definitions,
//! and the reference workloads the tools and tests run.

pub mod accel;
pub mod job;
pub mod model;
pub mod uapi;
pub mod workloads;
