//! What the model runner needs of an NPU, as a trait: buffers it can
//! write and read, and jobs chained by fences. `/dev/accel/accelN`
//! ([`Accel`]) implements it here; the in-process test harness implements
//! it over its own virtqueues, so the same runner is tested without a VM.

use std::io;

use virtio_accel_protocol::snpu::SNPU_OPS_ALL;

use crate::accel::{Accel, Bo, JobBo};

/// What the device offers that a compiled model depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// `GET_CAPS` `ops`: bit n set if SNPU opcode n runs.
    pub ops: u64,
    pub max_bo_size: u64,
    pub max_cmd_size: u64,
    /// Working memory one job may use (`max_job_memory`).
    pub max_job_memory: u64,
}

/// Where the device's default `max_job_memory` applies: the accel node
/// does not report it.
pub const DEFAULT_JOB_MEMORY: u64 = 64 << 20;

/// An NPU the runner can drive.
pub trait Device {
    type Bo: Copy;
    type Fence;

    fn limits(&mut self) -> io::Result<DeviceLimits>;
    fn bo_create(&mut self, size: u64) -> io::Result<Self::Bo>;
    fn bo_write(&mut self, bo: Self::Bo, off: u64, data: &[u8]) -> io::Result<()>;
    fn bo_read(&mut self, bo: Self::Bo, off: u64, len: usize) -> io::Result<Vec<u8>>;
    fn bo_destroy(&mut self, bo: Self::Bo) -> io::Result<()>;
    /// Submits the `len`-byte command stream at the start of `cmd` over
    /// `bos` (buffer, `VIRTIO_ACCEL_ACCESS_*`), to start once `after` has
    /// signalled.
    fn submit(
        &mut self,
        cmd: Self::Bo,
        len: u32,
        bos: &[(Self::Bo, u32)],
        after: Option<&Self::Fence>,
    ) -> io::Result<Self::Fence>;
    /// Waits for a job; its device time in nanoseconds where the device
    /// reports one.
    fn wait(&mut self, fence: Self::Fence) -> io::Result<Option<u64>>;
}

/// A job submitted on the accel node: its syncobj.
pub struct AccelFence(u32);

impl Device for Accel {
    type Bo = Bo;
    type Fence = AccelFence;

    fn limits(&mut self) -> io::Result<DeviceLimits> {
        let c = self.caps()?;
        Ok(DeviceLimits {
            ops: c.ops & SNPU_OPS_ALL,
            max_bo_size: c.max_bo_size,
            max_cmd_size: u64::from(c.max_cmd_size),
            max_job_memory: DEFAULT_JOB_MEMORY,
        })
    }

    fn bo_create(&mut self, size: u64) -> io::Result<Bo> {
        Accel::bo_create(self, size)
    }

    fn bo_write(&mut self, bo: Bo, off: u64, data: &[u8]) -> io::Result<()> {
        let mut m = self.map(bo)?;
        check_range(off, data.len(), m.len())?;
        m.write(off as usize, data);
        Ok(())
    }

    fn bo_read(&mut self, bo: Bo, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let m = self.map(bo)?;
        check_range(off, len, m.len())?;
        Ok(m.read(off as usize, len))
    }

    fn bo_destroy(&mut self, bo: Bo) -> io::Result<()> {
        self.bo_close(bo)
    }

    fn submit(
        &mut self,
        cmd: Bo,
        len: u32,
        bos: &[(Bo, u32)],
        after: Option<&AccelFence>,
    ) -> io::Result<AccelFence> {
        let list: Vec<JobBo> = bos
            .iter()
            .map(|&(bo, access)| JobBo { bo, access })
            .collect();
        let out = self.syncobj_create()?;
        let ins: Vec<u32> = after.iter().map(|f| f.0).collect();
        if let Err(e) = Accel::submit(self, &list, cmd, 0, len, &ins, out) {
            let _ = self.syncobj_destroy(out);
            return Err(e);
        }
        Ok(AccelFence(out))
    }

    fn wait(&mut self, fence: AccelFence) -> io::Result<Option<u64>> {
        let r = self.syncobj_wait(&[fence.0], 120_000);
        self.syncobj_destroy(fence.0)?;
        r.map(|()| None)
    }
}

fn check_range(off: u64, len: usize, size: usize) -> io::Result<()> {
    let end = off.checked_add(len as u64);
    if end.is_some_and(|e| e <= size as u64) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bytes {off}+{len} outside a buffer of {size}"),
        ))
    }
}
