//! `vhost-device-accel`: the virtio-accel device as a vhost-user backend.
//!
//! Layers, each unaware of the ones above it:
//! - [`vhost_user`] and [`queue`]: virtqueues, notifications, memory table;
//! - [`device`]: the device model (contexts, buffers, fences, jobs);
//! - [`sched`]: the NPU shared fairly between VMs;
//! - [`driver`]: the `NpuDriver` trait and the software NPU ([`driver::sim`]);
//! - [`memory`]: guest memory as buffers see it.

pub mod config;
pub mod device;
pub mod driver;
pub mod memory;
pub mod queue;
pub mod sched;
pub mod server;
pub mod vhost_user;

pub use config::Config;
pub use server::Server;
