//! Guest userspace for the virtio-accel accel node: the UAPI definitions
//! and a safe library over `/dev/accel/accelN`.

pub mod uapi;
