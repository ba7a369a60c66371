//! The `accel` backend's parts: what it knows of the host accel drivers it
//! forwards to, and how it hands them guest memory.
//!
//! [`uapi`] holds, per host driver, the ioctls a guest may reach and the
//! codec that checks a guest's request against them and builds the call.
//! [`udmabuf`] turns a buffer's guest-physical ranges into a dma-buf over
//! the files behind guest memory, which a host driver imports (PRIME): the
//! NPU then reads and writes guest memory in place.

pub mod uapi;
pub mod udmabuf;
