//! Guest memory as the device sees it: a buffer's backing is a list of
//! guest-physical ranges, resolved against the current memory table only
//! while a job runs. Nothing here outlives the memory snapshot it was
//! resolved from: a [`BoMem`] borrows the snapshot.

use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;

use vhost_user_backend::bitmap::BitmapMmapRegion;
use vm_memory::bitmap::BS;
use vm_memory::{
    GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice,
};

/// Guest memory of one VM. Its regions carry the vhost-user dirty log: once
/// the frontend has set a log (`SET_LOG_BASE`, for a migration), every page
/// the device writes through them — job outputs, responses, used rings —
/// is marked in it.
pub type GuestMem = GuestMemoryMmap<BitmapMmapRegion>;

/// A host mapping of guest memory that marks what is written through it.
type Slice<'m> = VolatileSlice<'m, BS<'m, BitmapMmapRegion>>;

/// What a backend needs to reach a VM's memory: the memory table as the
/// VMM updates it, and the counters of what the NPU moved.
#[derive(Clone)]
pub struct VmMemory {
    pub mem: GuestMemoryAtomic<GuestMem>,
    pub npu_stats: Arc<MemStats>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemError {
    #[error("guest range {addr:#x}+{len:#x} is not in guest memory")]
    NotMapped { addr: u64, len: u64 },
    #[error("access {off:#x}+{len:#x} outside buffer of {size:#x} bytes")]
    OutOfBounds { off: u64, len: u64, size: u64 },
}

/// Guest-physical ranges backing a buffer, in buffer order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    ranges: Vec<(u64, u32)>,
    len: u64,
}

impl Backing {
    /// A backing from `(address, length)` ranges; the caller has checked
    /// that addresses and lengths do not overflow.
    pub fn new(ranges: Vec<(u64, u32)>) -> Backing {
        let len = ranges
            .iter()
            .fold(0u64, |a, &(_, l)| a.saturating_add(u64::from(l)));
        Backing { ranges, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether every range starts and ends on a 4 KiB page boundary.
    pub fn page_aligned(&self) -> bool {
        let page = virtio_accel_protocol::VIRTIO_ACCEL_PAGE_SIZE;
        self.ranges
            .iter()
            .all(|&(a, l)| a % page == 0 && u64::from(l) % page == 0)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn entries(&self) -> usize {
        self.ranges.len()
    }

    /// The `(address, length)` ranges, in buffer order.
    pub fn ranges(&self) -> &[(u64, u32)] {
        &self.ranges
    }

    /// Checks that every range lies in `mem` (ranges may cross regions).
    pub fn check(&self, mem: &GuestMem) -> Result<(), MemError> {
        for &(addr, len) in &self.ranges {
            if !mem.check_range(GuestAddress(addr), len as usize) {
                return Err(MemError::NotMapped {
                    addr,
                    len: len.into(),
                });
            }
        }
        Ok(())
    }

    /// Maps the backing through `mem` for the duration of a borrow.
    pub fn resolve<'m>(
        &self,
        mem: &'m GuestMem,
        stats: &'m MemStats,
    ) -> Result<BoMem<'m>, MemError> {
        let mut segs = Vec::with_capacity(self.ranges.len());
        let mut off = 0u64;
        for &(addr, len) in &self.ranges {
            let not_mapped = || MemError::NotMapped {
                addr,
                len: len.into(),
            };
            for s in mem.get_slices(GuestAddress(addr), len as usize) {
                let s = s.map_err(|_| not_mapped())?;
                let l = s.len() as u64;
                segs.push((off, s));
                off += l;
            }
        }
        if off != self.len {
            return Err(MemError::NotMapped {
                addr: self.ranges.first().map_or(0, |r| r.0),
                len: self.len,
            });
        }
        Ok(BoMem {
            segs,
            len: self.len,
            stats,
        })
    }
}

/// Bytes moved through buffer memory, counted where each copy happens;
/// read by tests and benchmarks to account for every byte the data path
/// copies.
///
/// The counters are the daemon's Prometheus series when the VM's metrics
/// made them ([`crate::metrics::VmMetrics::copy_stats`]).
#[derive(Debug, Default)]
pub struct MemStats {
    /// Bytes read from buffers into host memory (the NPU's staging buffer,
    /// or a command stream copied out of its buffer).
    pub npu_read: Counter,
    /// Bytes written into buffers from host memory (op outputs).
    pub npu_written: Counter,
    /// Bytes copied buffer to buffer with no host copy between (each read
    /// once from guest memory and written once).
    pub npu_copied: Counter,
}

/// A buffer's bytes in guest memory, as a list of host-mapped segments.
pub struct BoMem<'m> {
    /// `(offset in buffer, slice)`, sorted by offset, covering the buffer.
    segs: Vec<(u64, Slice<'m>)>,
    len: u64,
    stats: &'m MemStats,
}

impl<'m> BoMem<'m> {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: u64, len: usize) -> Result<(), MemError> {
        match off.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(MemError::OutOfBounds {
                off,
                len: len as u64,
                size: self.len,
            }),
        }
    }

    /// Visits the slices covering `[off, off + len)`.
    fn for_range(
        &self,
        off: u64,
        len: usize,
        mut f: impl FnMut(usize, Slice<'m>) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        self.check(off, len)?;
        let oob = || MemError::OutOfBounds {
            off,
            len: len as u64,
            size: self.len,
        };
        let mut i = self
            .segs
            .partition_point(|(start, _)| *start <= off)
            .checked_sub(1)
            .ok_or_else(oob)?;
        let mut done = 0usize;
        while done < len {
            let (start, seg) = self.segs.get(i).ok_or_else(oob)?;
            let in_seg = usize::try_from(off + done as u64 - start).map_err(|_| oob())?;
            let n = seg.len().saturating_sub(in_seg).min(len - done);
            if n == 0 {
                return Err(oob());
            }
            let sub = seg.subslice(in_seg, n).map_err(|_| oob())?;
            f(done, sub)?;
            done += n;
            i += 1;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `off` into NPU working memory.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let total = buf.len();
        self.for_range(off, total, |at, s| {
            let dst = buf.get_mut(at..at + s.len()).ok_or(MemError::OutOfBounds {
                off,
                len: total as u64,
                size: self.len,
            })?;
            s.copy_to(dst);
            Ok(())
        })?;
        self.stats.npu_read.inc_by(total as u64);
        Ok(())
    }

    /// Writes `buf` at `off` (an op's output).
    pub fn write(&self, off: u64, buf: &[u8]) -> Result<(), MemError> {
        self.for_range(off, buf.len(), |at, s| {
            let src = buf.get(at..at + s.len()).ok_or(MemError::OutOfBounds {
                off,
                len: buf.len() as u64,
                size: self.len,
            })?;
            s.copy_from(src);
            Ok(())
        })?;
        self.stats.npu_written.inc_by(buf.len() as u64);
        Ok(())
    }

    /// Copies `len` bytes from `self` at `off` to `dst` at `dst_off`,
    /// memory to memory, with no staging buffer.
    pub fn copy_to(
        &self,
        off: u64,
        dst: &BoMem<'_>,
        dst_off: u64,
        len: usize,
    ) -> Result<(), MemError> {
        dst.check(dst_off, len)?;
        self.for_range(off, len, |at, src| {
            dst.for_range(dst_off + at as u64, src.len(), |d_at, d| {
                let piece = src
                    .subslice(d_at, d.len())
                    .map_err(|_| MemError::OutOfBounds {
                        off,
                        len: len as u64,
                        size: self.len,
                    })?;
                piece.copy_to_volatile_slice(d);
                Ok(())
            })
        })?;
        dst.stats.npu_copied.inc_by(len as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem() -> GuestMem {
        // Two regions with a hole between them.
        GuestMem::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x20000), 0x10000)])
            .unwrap()
    }

    #[test]
    fn backing_outside_memory_is_refused() {
        let m = mem();
        assert!(Backing::new(vec![(0x1000, 0x1000)]).check(&m).is_ok());
        assert!(
            Backing::new(vec![(0xf000, 0x2000)]).check(&m).is_err(),
            "runs into the hole"
        );
        assert!(
            Backing::new(vec![(0x2f000, 0x2000)]).check(&m).is_err(),
            "runs off the end"
        );
    }

    #[test]
    fn reads_and_writes_cross_segments_in_buffer_order() {
        let m = mem();
        let stats = MemStats::default();
        // Pages out of order, in both regions.
        let b = Backing::new(vec![(0x21000, 0x1000), (0x3000, 0x800), (0x9000, 0x1000)]);
        let bo = b.resolve(&m, &stats).unwrap();
        assert_eq!(bo.len(), 0x2800);
        let data: Vec<u8> = (0..0x1400u32).map(|i| i as u8).collect();
        bo.write(0xc00, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        bo.read(0xc00, &mut back).unwrap();
        assert_eq!(back, data);
        // Byte 0x1000 of the buffer is the first byte of its second range.
        let mut one = [0u8; 1];
        m.read_slice(&mut one, GuestAddress(0x3000)).unwrap();
        assert_eq!(one[0], data[0x400]);
        assert_eq!(
            bo.read(0x2000, &mut [0u8; 0x801]),
            Err(MemError::OutOfBounds {
                off: 0x2000,
                len: 0x801,
                size: 0x2800
            })
        );
        assert_eq!(stats.npu_written.get(), 0x1400);
    }

    #[test]
    fn copy_between_buffers_with_different_segments() {
        let m = mem();
        let stats = MemStats::default();
        let a = Backing::new(vec![(0x1000, 0x300), (0x5000, 0x1000)]);
        let b = Backing::new(vec![(0x22000, 0x700), (0x24000, 0x600), (0x8000, 0x100)]);
        let (sa, sb) = (
            a.resolve(&m, &stats).unwrap(),
            b.resolve(&m, &stats).unwrap(),
        );
        let data: Vec<u8> = (0..0x1300u32).map(|i| (i * 7) as u8).collect();
        sa.write(0, &data).unwrap();
        sb.write(0, &[0u8; 0xe00]).unwrap();
        sa.copy_to(0x100, &sb, 0x50, 0xd00).unwrap();
        let mut out = vec![0u8; 0xd00];
        sb.read(0x50, &mut out).unwrap();
        assert_eq!(out, data[0x100..0xe00]);
        assert!(
            sa.copy_to(0x100, &sb, 0x200, 0xd00).is_err(),
            "destination too small"
        );
        // Each path counts what it moved, a refused copy nothing.
        let n = |c: &Counter| c.get();
        assert_eq!(n(&stats.npu_copied), 0xd00);
        assert_eq!(n(&stats.npu_written), 0x1300 + 0xe00);
        assert_eq!(n(&stats.npu_read), 0xd00);
    }
}
