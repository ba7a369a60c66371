//! Descriptor chains: split a chain into the request bytes (device-readable
//! part, copied out once and bounded) and the response area (device-writable
//! part, kept as guest addresses so a parked chain holds no mapping), and
//! write responses with the spec's rules for short buffers.

use std::ops::Deref;

use virtio_accel_protocol::{Hdr, VIRTIO_ACCEL_RESP_ERR_INVALID};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};
use zerocopy::IntoBytes;

use crate::memory::GuestMem;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("device-readable descriptor after a device-writable one")]
    ReadAfterWrite,
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress { addr: u64, len: u32 },
    #[error("chain lengths overflow")]
    Overflow,
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
    /// Why the request part is unusable, if it is.
    pub error: Option<ChainError>,
}

/// Takes a chain apart; never fails, so every chain can be answered.
pub fn split<M>(chain: DescriptorChain<M>, mem: &GuestMem, max: usize) -> Split
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut reads: Vec<(GuestAddress, u32)> = Vec::new();
    let mut write = WriteArea::default();
    let mut read_len: usize = 0;
    let mut error = None;
    for d in chain {
        if d.is_write_only() {
            match write.len.checked_add(d.len() as usize) {
                Some(l) => write.len = l,
                None => error = Some(ChainError::Overflow),
            }
            write.descs.push((d.addr(), d.len()));
        } else if !write.descs.is_empty() {
            error.get_or_insert(ChainError::ReadAfterWrite);
        } else {
            read_len = read_len.saturating_add(d.len() as usize);
            reads.push((d.addr(), d.len()));
        }
    }
    let want = read_len.min(max.saturating_add(1));
    let mut request = vec![0u8; want];
    let mut at = 0;
    for (addr, len) in reads {
        if at == want {
            break;
        }
        let n = (len as usize).min(want - at);
        if mem.read_slice(&mut request[at..at + n], addr).is_err() {
            error.get_or_insert(ChainError::BadAddress { addr: addr.0, len });
            break;
        }
        at += n;
    }
    Split {
        request,
        write,
        error,
    }
}

impl WriteArea {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn write_all(&self, mem: &GuestMem, bytes: &[u8]) -> bool {
        let mut at = 0;
        for &(addr, len) in &self.descs {
            if at == bytes.len() {
                break;
            }
            let n = (len as usize).min(bytes.len() - at);
            if mem.write_slice(&bytes[at..at + n], addr).is_err() {
                return false;
            }
            at += n;
        }
        at == bytes.len()
    }

    /// Writes a response; returns the used length. A response that does
    /// not fit is replaced by an `ERR_INVALID` header; when not even a
    /// header fits, or the area is not in guest memory, nothing is written.
    pub fn respond(&self, mem: &GuestMem, response: &[u8], ctx_id: u32) -> u32 {
        if response.len() <= self.len {
            if self.write_all(mem, response) {
                return response.len() as u32;
            }
            return 0;
        }
        let hdr = Hdr::new(VIRTIO_ACCEL_RESP_ERR_INVALID, ctx_id);
        if self.len >= hdr.as_bytes().len() && self.write_all(mem, hdr.as_bytes()) {
            return hdr.as_bytes().len() as u32;
        }
        0
    }
}
