//! Test harness that plays VMM and guest driver against the real
//! `vhost-device-accel` over a real vhost-user socket: memfd-backed guest
//! memory, split rings laid out per the virtio spec, kick and call
//! eventfds, and the driver side of every request. The end-to-end tests
//! and the benchmarks are built on it.

pub mod bench;
pub mod daemon;
pub mod echo;
pub mod guest;
pub mod lifecycle;
pub mod model;
pub mod process;
pub mod ring;
pub mod writer;

pub use daemon::Daemon;
pub use guest::{CmdSource, Guest, GuestBo, GuestOptions, Layout};
pub use ring::{Desc, WaitMode};
pub use writer::Writer;
