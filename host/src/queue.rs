//! Descriptor chains: walk a chain strictly (spec §8, "Descriptor chains"),
//! split it into the request bytes (device-readable part, copied out once
//! and bounded) and the response area (device-writable part, kept as guest
//! addresses so a parked chain holds no mapping), and write responses with
//! the spec's rules for short buffers.
//!
//! The walk reads the descriptor table itself rather than through
//! virtio-queue's chain iterator, which ends a chain silently on a loop, a
//! bad index or a bad indirect table; here each of those is an error, so
//! the chain is answered as malformed instead of as a shorter request.

use std::sync::atomic::{AtomicU64, Ordering};

use virtio_accel_protocol::{Hdr, VIRTIO_ACCEL_RESP_ERR_INVALID};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use zerocopy::IntoBytes;

use crate::memory::GuestMem;

const DESC_SIZE: u64 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    // The chain's shape cannot be trusted: answered with used length 0.
    #[error("descriptor index {index} outside a table of {size}")]
    BadIndex { index: u16, size: u16 },
    #[error("descriptor table at {0:#x} is not in guest memory")]
    BadTable(u64),
    #[error("chain loops or is longer than the queue")]
    TooLong,
    #[error("indirect descriptor with NEXT set")]
    IndirectWithNext,
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    #[error("indirect table of {0} bytes is empty or not whole descriptors")]
    BadIndirect(u32),
    // A well-formed chain whose contents are wrong: answered ERR_INVALID.
    #[error("zero-length descriptor")]
    ZeroLength,
    #[error("device-readable descriptor after a device-writable one")]
    ReadAfterWrite,
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress { addr: u64, len: u32 },
    #[error("chain lengths add up to more than 4 GiB")]
    Overflow,
}

impl ChainError {
    /// Whether the chain's descriptors themselves are unusable, so that not
    /// even its writable part may be written.
    pub fn is_structural(&self) -> bool {
        matches!(
            self,
            ChainError::BadIndex { .. }
                | ChainError::BadTable(_)
                | ChainError::TooLong
                | ChainError::IndirectWithNext
                | ChainError::NestedIndirect
                | ChainError::BadIndirect(_)
        )
    }
}

/// Bytes the ring code copied to or from one VM's guest memory, counted
/// where each copy happens. The avail and used rings themselves are
/// read and written by `virtio-queue` (2 bytes per chain popped, 8 per
/// chain returned, plus their indices) and are not counted here.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Descriptor-table entries read while walking chains (16 bytes each).
    pub desc_read: AtomicU64,
    /// Request bytes copied out of device-readable descriptors.
    pub request_read: AtomicU64,
    /// Response bytes written into device-writable descriptors.
    pub response_written: AtomicU64,
    /// Event bytes written into eventq buffers.
    pub event_written: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// One descriptor as the device uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Desc {
    addr: u64,
    len: u32,
    write: bool,
}

/// The device-writable part of a chain.
#[derive(Debug, Clone, Default)]
pub struct WriteArea {
    descs: Vec<(GuestAddress, u32)>,
    len: usize,
}

/// A chain taken apart.
pub struct Split {
    /// The request, truncated to `max` + 1 bytes so that an oversized
    /// request is still recognised as such by the decoder.
    pub request: Vec<u8>,
    pub write: WriteArea,
    /// Why the chain is unusable, if it is.
    pub error: Option<ChainError>,
}

/// The descriptors of the chain at `head` of a queue of `size` entries
/// whose table is at `table`. A chain holds at most `size` descriptors (the
/// virtio limit, indirect tables included) and no table is walked for more
/// steps than it has entries, so a hostile chain costs at most about
/// 2 × `size` descriptor reads.
fn walk(
    mem: &GuestMem,
    table: u64,
    size: u16,
    head: u16,
    stats: &RingStats,
) -> Result<Vec<Desc>, ChainError> {
    let mut descs = Vec::new();
    let (mut tab, mut tab_size, mut idx) = (table, size, head);
    let mut indirect = false;
    // Steps taken in the current table: more than it has entries is a loop.
    let mut steps = 0usize;
    loop {
        if idx >= tab_size {
            return Err(ChainError::BadIndex {
                index: idx,
                size: tab_size,
            });
        }
        steps += 1;
        if steps > usize::from(tab_size) {
            return Err(ChainError::TooLong);
        }
        let at = tab
            .checked_add(u64::from(idx) * DESC_SIZE)
            .ok_or(ChainError::BadTable(tab))?;
        let raw: [u8; 16] = mem
            .read_obj(GuestAddress(at))
            .map_err(|_| ChainError::BadTable(tab))?;
        add(&stats.desc_read, raw.len());
        let addr = u64::from_le_bytes([
            raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
        ]);
        let len = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & F_INDIRECT != 0 {
            if indirect {
                return Err(ChainError::NestedIndirect);
            }
            if flags & F_NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            let n = len / DESC_SIZE as u32;
            if len == 0 || !len.is_multiple_of(DESC_SIZE as u32) || n > u32::from(u16::MAX) {
                return Err(ChainError::BadIndirect(len));
            }
            (tab, tab_size, idx, indirect, steps) = (addr, n as u16, 0, true, 0);
            continue;
        }
        if descs.len() >= usize::from(size) {
            return Err(ChainError::TooLong);
        }
        descs.push(Desc {
            addr,
            len,
            write: flags & F_WRITE != 0,
        });
        if flags & F_NEXT == 0 {
            return Ok(descs);
        }
        idx = next;
    }
}

/// Takes the chain at `head` apart; never fails, so every chain with a
/// valid head can be answered.
pub fn split(
    mem: &GuestMem,
    table: u64,
    size: u16,
    head: u16,
    max: usize,
    stats: &RingStats,
) -> Split {
    let mut split = Split {
        request: Vec::new(),
        write: WriteArea::default(),
        error: None,
    };
    let descs = match walk(mem, table, size, head, stats) {
        Ok(d) => d,
        Err(e) => {
            split.error = Some(e);
            return split;
        }
    };
    let mut reads: Vec<(GuestAddress, u32)> = Vec::new();
    let mut read_len: usize = 0;
    let mut total: u32 = 0;
    let mut error = None;
    let mut write_ok = true;
    for d in descs {
        match total.checked_add(d.len) {
            Some(t) => total = t,
            None => {
                error.get_or_insert(ChainError::Overflow);
            }
        }
        if d.len == 0 {
            error.get_or_insert(ChainError::ZeroLength);
            continue;
        }
        if d.write {
            if !mem.check_range(GuestAddress(d.addr), d.len as usize) {
                error.get_or_insert(ChainError::BadAddress {
                    addr: d.addr,
                    len: d.len,
                });
                write_ok = false;
            }
            split.write.len = split.write.len.saturating_add(d.len as usize);
            split.write.descs.push((GuestAddress(d.addr), d.len));
        } else if !split.write.descs.is_empty() {
            error.get_or_insert(ChainError::ReadAfterWrite);
        } else {
            read_len = read_len.saturating_add(d.len as usize);
            reads.push((GuestAddress(d.addr), d.len));
        }
    }
    if !write_ok {
        // Nothing may be written to a chain naming memory outside the guest.
        split.write = WriteArea::default();
    }
    let want = read_len.min(max.saturating_add(1));
    let mut request = vec![0u8; want];
    let mut at = 0;
    for (addr, len) in reads {
        if at == want {
            break;
        }
        let n = (len as usize).min(want - at);
        let Some(dst) = request.get_mut(at..at + n) else {
            break;
        };
        if mem.read_slice(dst, addr).is_err() {
            error.get_or_insert(ChainError::BadAddress { addr: addr.0, len });
            break;
        }
        add(&stats.request_read, n);
        at += n;
    }
    split.request = request;
    split.error = error;
    split
}

impl WriteArea {
    /// An area from `(guest address, length)` descriptors, as a saved
    /// state keeps them.
    pub fn from_ranges(ranges: &[(u64, u32)]) -> WriteArea {
        WriteArea {
            descs: ranges.iter().map(|&(a, l)| (GuestAddress(a), l)).collect(),
            len: ranges
                .iter()
                .fold(0usize, |a, &(_, l)| a.saturating_add(l as usize)),
        }
    }

    /// Its descriptors as `(guest address, length)`.
    pub fn ranges(&self) -> Vec<(u64, u32)> {
        self.descs.iter().map(|&(a, l)| (a.0, l)).collect()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the descriptors needed for the first `n` bytes: what a
    /// parked chain holds until its job is answered.
    pub fn truncate(&mut self, n: usize) {
        let mut covered = 0usize;
        let mut keep = 0;
        for &(_, len) in &self.descs {
            if covered >= n {
                break;
            }
            covered = covered.saturating_add(len as usize);
            keep += 1;
        }
        self.descs.truncate(keep);
        self.len = self.len.min(covered);
    }

    fn write_all(&self, mem: &GuestMem, bytes: &[u8], written: &AtomicU64) -> bool {
        let mut at = 0;
        for &(addr, len) in &self.descs {
            if at == bytes.len() {
                break;
            }
            let n = (len as usize).min(bytes.len() - at);
            let Some(src) = bytes.get(at..at + n) else {
                return false;
            };
            if mem.write_slice(src, addr).is_err() {
                return false;
            }
            add(written, n);
            at += n;
        }
        at == bytes.len()
    }

    /// The bytes [`WriteArea::respond`] writes for `response`: the
    /// response if it fits, else an `ERR_INVALID` header if that fits,
    /// else nothing.
    pub fn fit(&self, response: &[u8], ctx_id: u32) -> Vec<u8> {
        if response.len() <= self.len {
            return response.to_vec();
        }
        let hdr = Hdr::new(VIRTIO_ACCEL_RESP_ERR_INVALID, ctx_id);
        if self.len >= hdr.as_bytes().len() {
            return hdr.as_bytes().to_vec();
        }
        Vec::new()
    }

    /// Writes bytes [`WriteArea::fit`] chose; returns the used length, zero
    /// when the area is not in guest memory. The bytes written are added to
    /// `written`.
    pub fn write(&self, mem: &GuestMem, bytes: &[u8], written: &AtomicU64) -> u32 {
        if bytes.len() <= self.len && self.write_all(mem, bytes, written) {
            bytes.len() as u32
        } else {
            0
        }
    }

    /// Writes a response; returns the used length. A response that does
    /// not fit is replaced by an `ERR_INVALID` header; when not even a
    /// header fits, or the area is not in guest memory, nothing is written.
    /// The bytes written are added to `written`.
    pub fn respond(
        &self,
        mem: &GuestMem,
        response: &[u8],
        ctx_id: u32,
        written: &AtomicU64,
    ) -> u32 {
        self.write(mem, &self.fit(response, ctx_id), written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMem {
        GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn desc(m: &GuestMem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        m.write_slice(&raw, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }

    #[test]
    fn each_malformation_is_classified() {
        let m = mem();
        // 0: read 24 -> 1: zero length -> 2: write 112
        desc(&m, 0, 0, 0x1000, 24, F_NEXT, 1);
        desc(&m, 0, 1, 0x1000, 0, F_NEXT, 2);
        desc(&m, 0, 2, 0x2000, 112, F_WRITE, 0);
        let s = split(&m, 0, 16, 0, 4096, &RingStats::default());
        assert_eq!(s.error, Some(ChainError::ZeroLength));
        assert_eq!(s.write.len(), 112);
        // A loop.
        desc(&m, 0, 3, 0x1000, 24, F_NEXT, 3);
        let s = split(&m, 0, 16, 3, 4096, &RingStats::default());
        assert_eq!(s.error, Some(ChainError::TooLong));
        assert!(s.write.is_empty());
        // Next outside the table.
        desc(&m, 0, 4, 0x1000, 24, F_NEXT, 16);
        assert!(matches!(
            split(&m, 0, 16, 4, 4096, &RingStats::default()).error,
            Some(ChainError::BadIndex { index: 16, .. })
        ));
        // Indirect with next, nested indirect, a table of 0 or odd size.
        desc(&m, 0, 5, 0x3000, 32, F_INDIRECT | F_NEXT, 2);
        assert_eq!(
            split(&m, 0, 16, 5, 4096, &RingStats::default()).error,
            Some(ChainError::IndirectWithNext)
        );
        desc(&m, 0x3000, 0, 0x3000, 32, F_INDIRECT, 0);
        desc(&m, 0, 6, 0x3000, 32, F_INDIRECT, 0);
        assert_eq!(
            split(&m, 0, 16, 6, 4096, &RingStats::default()).error,
            Some(ChainError::NestedIndirect)
        );
        desc(&m, 0, 7, 0x3000, 24, F_INDIRECT, 0);
        assert_eq!(
            split(&m, 0, 16, 7, 4096, &RingStats::default()).error,
            Some(ChainError::BadIndirect(24))
        );
        // A writable descriptor outside guest memory: nothing is written.
        desc(&m, 0, 8, 0x1000, 24, F_NEXT, 9);
        desc(&m, 0, 9, 0xfff0, 112, F_WRITE, 0);
        let s = split(&m, 0, 16, 8, 4096, &RingStats::default());
        assert!(matches!(s.error, Some(ChainError::BadAddress { .. })));
        assert!(s.write.is_empty());
        // Read after write.
        desc(&m, 0, 10, 0x2000, 112, F_WRITE | F_NEXT, 11);
        desc(&m, 0, 11, 0x1000, 24, 0, 0);
        assert_eq!(
            split(&m, 0, 16, 10, 4096, &RingStats::default()).error,
            Some(ChainError::ReadAfterWrite)
        );
        // A good indirect chain.
        desc(&m, 0x4000, 0, 0x1000, 24, F_NEXT, 1);
        desc(&m, 0x4000, 1, 0x2000, 112, F_WRITE, 0);
        desc(&m, 0, 12, 0x4000, 32, F_INDIRECT, 0);
        let s = split(&m, 0, 16, 12, 4096, &RingStats::default());
        assert_eq!(s.error, None);
        assert_eq!((s.request.len(), s.write.len()), (24, 112));
    }

    #[test]
    fn an_indirect_table_of_exactly_the_queue_size_is_accepted() {
        let m = mem();
        for i in 0..16u16 {
            let last = i == 15;
            let (addr, len, flags) = if last {
                (0x2000, 112, F_WRITE)
            } else {
                (0x1000 + u64::from(i), 1, F_NEXT)
            };
            desc(&m, 0x5000, i, addr, len, flags, i + 1);
        }
        desc(&m, 0, 0, 0x5000, 16 * 16, F_INDIRECT, 0);
        let s = split(&m, 0, 16, 0, 4096, &RingStats::default());
        assert_eq!(s.error, None);
        assert_eq!((s.request.len(), s.write.len()), (15, 112));
        // One more entry is a chain longer than the queue.
        desc(&m, 0x5000, 15, 0x1000, 1, F_NEXT, 16);
        desc(&m, 0x5000, 16, 0x2000, 112, F_WRITE, 0);
        desc(&m, 0, 0, 0x5000, 17 * 16, F_INDIRECT, 0);
        assert_eq!(
            split(&m, 0, 16, 0, 4096, &RingStats::default()).error,
            Some(ChainError::TooLong)
        );
    }

    #[test]
    fn every_byte_copied_is_counted_where_it_is_copied() {
        let m = mem();
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // Indirect: a table entry pointing at a table of three, the
        // request in two pieces (24 + 8 bytes), a 112-byte response area.
        desc(&m, 0x4000, 0, 0x1000, 24, F_NEXT, 1);
        desc(&m, 0x4000, 1, 0x1100, 8, F_NEXT, 2);
        desc(&m, 0x4000, 2, 0x2000, 112, F_WRITE, 0);
        desc(&m, 0, 0, 0x4000, 48, F_INDIRECT, 0);
        let st = RingStats::default();
        let s = split(&m, 0, 16, 0, 4096, &st);
        assert_eq!(s.error, None);
        assert_eq!(n(&st.desc_read), 4 * 16);
        assert_eq!(n(&st.request_read), 32);
        // A request cut at max + 1 bytes counts only what was copied.
        let st = RingStats::default();
        split(&m, 0, 16, 0, 19, &st);
        assert_eq!(n(&st.request_read), 20);
        // A broken chain copies no request.
        desc(&m, 0, 1, 0x1000, 24, F_NEXT, 1);
        let st = RingStats::default();
        assert_eq!(
            split(&m, 0, 16, 1, 4096, &st).error,
            Some(ChainError::TooLong)
        );
        assert_eq!(n(&st.request_read), 0);
        // Responses: what was written, the short-buffer header, or nothing.
        let written = AtomicU64::new(0);
        assert_eq!(s.write.respond(&m, &[7u8; 40], 0, &written), 40);
        assert_eq!(n(&written), 40);
        assert_eq!(s.write.respond(&m, &[7u8; 200], 0, &written), 16);
        assert_eq!(n(&written), 56);
        let w = WriteArea {
            descs: vec![(GuestAddress(0x20000), 64)],
            len: 64,
        };
        assert_eq!(w.respond(&m, &[1u8; 32], 0, &written), 0);
        assert_eq!(
            n(&written),
            56,
            "a write outside guest memory counts nothing"
        );
    }

    #[test]
    fn a_parked_area_keeps_only_its_response_descriptors() {
        let mut w = WriteArea {
            descs: vec![
                (GuestAddress(0), 16),
                (GuestAddress(64), 16),
                (GuestAddress(128), 4096),
            ],
            len: 4128,
        };
        w.truncate(32);
        assert_eq!((w.descs.len(), w.len()), (2, 32));
    }
}
