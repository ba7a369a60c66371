//! Guest memory as the device sees it: a buffer's backing is a list of
//! guest-physical ranges, resolved against the current memory table only
//! while a job runs. Nothing here outlives the memory snapshot it was
//! resolved from: a [`BoMem`] borrows the snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

/// Guest memory of one VM (no dirty-page bitmap).
pub type GuestMem = GuestMemoryMmap<()>;

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
        let len = ranges.iter().map(|&(_, l)| u64::from(l)).sum();
        Backing { ranges, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn entries(&self) -> usize {
        self.ranges.len()
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

/// Bytes the NPU moved through buffer memory; read by tests and benchmarks
/// to prove the data path copies nothing beyond the NPU's own work.
#[derive(Debug, Default)]
pub struct MemStats {
    /// Bytes the NPU read from buffers into its working memory.
    pub npu_read: AtomicU64,
    /// Bytes the NPU wrote into buffers (op outputs).
    pub npu_written: AtomicU64,
}

/// A buffer's bytes in guest memory, as a list of host-mapped segments.
pub struct BoMem<'m> {
    /// `(offset in buffer, slice)`, sorted by offset, covering the buffer.
    segs: Vec<(u64, VolatileSlice<'m>)>,
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
        mut f: impl FnMut(usize, VolatileSlice<'m>),
    ) -> Result<(), MemError> {
        self.check(off, len)?;
        let mut i = self.segs.partition_point(|(start, _)| *start <= off) - 1;
        let mut done = 0usize;
        while done < len {
            let (start, seg) = &self.segs[i];
            let in_seg = (off + done as u64 - start) as usize;
            let n = (seg.len() - in_seg).min(len - done);
            let sub = seg
                .subslice(in_seg, n)
                .expect("range inside segment by construction");
            f(done, sub);
            done += n;
            i += 1;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `off` into NPU working memory.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.for_range(off, buf.len(), |at, s| {
            let n = s.len();
            s.read_slice(&mut buf[at..at + n], 0)
                .expect("slice length matches");
        })?;
        self.stats
            .npu_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `buf` at `off` (an op's output).
    pub fn write(&self, off: u64, buf: &[u8]) -> Result<(), MemError> {
        self.for_range(off, buf.len(), |at, s| {
            let n = s.len();
            s.write_slice(&buf[at..at + n], 0)
                .expect("slice length matches");
        })?;
        self.stats
            .npu_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
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
            let mut done = 0;
            dst.for_range(dst_off + at as u64, src.len(), |d_at, d| {
                let piece = src
                    .subslice(d_at, d.len())
                    .expect("piece inside source slice");
                piece.copy_to_volatile_slice(d);
                done += piece.len();
            })
            .expect("destination range checked above");
            debug_assert_eq!(done, src.len());
        })?;
        dst.stats
            .npu_written
            .fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }
}
