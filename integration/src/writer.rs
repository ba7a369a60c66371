//! A job that writes one buffer over and over, for as long as asked: what
//! the lifecycle tests stop, reset, migrate and kill under.

use std::time::Duration;

use virtio_accel_protocol::*;

use crate::guest::{CmdSource, Guest, GuestBo, Layout};

/// A job that writes `dst` over and over: `ops` COPYs of `src` (filled
/// with 0xab) into it, `mib` MiB each, its command stream in a buffer.
pub struct Writer {
    pub src: GuestBo,
    pub dst: GuestBo,
    pub cmd: GuestBo,
    pub cmd_len: u32,
}

impl Writer {
    pub fn new(g: &mut Guest, ctx: u32, mib: u32, ops: usize) -> Writer {
        let bytes = u64::from(mib) << 20;
        let src = g.bo(ctx, bytes, Layout::Contiguous);
        let dst = g.bo(ctx, bytes, Layout::Contiguous);
        g.write_bo(&src, 0, &vec![0xab; bytes as usize]);
        let t = |i| snpu::TensorDesc::dense(i, snpu::DType::F32, 0, &[mib << 18]);
        let p = snpu::Program {
            ops: vec![
                snpu::OpDesc::Copy {
                    src: t(0),
                    dst: t(1)
                };
                ops
            ],
        };
        let stream = p.encode();
        let cmd = g.bo(
            ctx,
            stream.len().next_multiple_of(4096) as u64,
            Layout::Contiguous,
        );
        g.write_bo(&cmd, 0, &stream);
        Writer {
            src,
            dst,
            cmd,
            cmd_len: stream.len() as u32,
        }
    }

    pub fn request(&self, ctx: u32, fence: u64) -> Request {
        Guest::submit_request(
            ctx,
            fence,
            &[
                (self.src.handle, VIRTIO_ACCEL_ACCESS_READ),
                (self.dst.handle, VIRTIO_ACCEL_ACCESS_WRITE),
            ],
            &[],
            CmdSource::Bo {
                handle: self.cmd.handle,
                offset: 0,
                size: self.cmd_len,
            },
        )
    }

    /// Zeroes the output, waits, and says whether anything wrote it since.
    pub fn written_after_zeroing(&self, g: &Guest, wait: Duration) -> bool {
        let len = self.dst.size as usize;
        g.write_bo(&self.dst, 0, &vec![0; len]);
        std::thread::sleep(wait);
        g.read_bo(&self.dst, 0, len).iter().any(|&b| b != 0)
    }
}
