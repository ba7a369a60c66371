//! `vhost-device-accel`: the virtio-accel device as a vhost-user backend.
//!
//! Layers, each unaware of the ones above it:
//! - [`vhost_user`] and [`queue`]: virtqueues, notifications, memory table;
//! - [`device`]: the device model (contexts, buffers, fences, jobs);
//! - [`sched`]: the NPU shared between VMs by device time and weight;
//! - [`backend`]: the NPU backend interface and the software NPU
//!   ([`backend::sim`]);
//! - [`memory`]: guest memory as buffers see it;
//! - [`metrics`]: per-VM metrics for Prometheus.
//!
//! `ARCHITECTURE.md` says what each layer owns and what crosses each seam.

pub mod backend;
pub mod cli;
pub mod config;
pub mod device;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod processes;
pub mod queue;
pub mod sandbox;
pub mod sched;
pub mod server;
pub mod state;
pub mod state_dir;
pub mod vhost_user;
pub mod vring;

pub use config::Config;
pub use server::Server;
