//! Requests (driver → device): typed decode and encode.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::DecodeError;
use crate::wire::*;

/// Count limits the decoder enforces before allocating. A device passes the
/// limits it advertises in its configuration; [`Limits::default`] is the
/// protocol's hard ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_sg_entries: u32,
    pub max_submit_bos: u32,
    pub max_in_fences: u32,
    pub max_inline_cmd: u32,
    pub max_ioctl_payload: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sg_entries: VIRTIO_ACCEL_MAX_SG_ENTRIES,
            max_submit_bos: VIRTIO_ACCEL_MAX_SUBMIT_BOS,
            max_in_fences: VIRTIO_ACCEL_MAX_IN_FENCES,
            max_inline_cmd: VIRTIO_ACCEL_MAX_INLINE_CMD,
            max_ioctl_payload: VIRTIO_ACCEL_MAX_IOCTL_PAYLOAD,
        }
    }
}

/// A decoded, structurally valid request. Whether its handles exist and its
/// ranges fit is for the device to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    GetCaps(GetCaps),
    CtxCreate(CtxCreate),
    CtxDestroy(Hdr),
    BoCreate(BoCreate),
    BoDestroy(BoReq),
    BoInfo(BoReq),
    BoAttachBacking {
        req: BoAttachBacking,
        entries: Vec<MemEntry>,
    },
    BoDetachBacking(BoReq),
    BoMapShm(BoReq),
    BoUnmapShm(BoReq),
    FencePoll(FencePoll),
    Ioctl {
        req: Ioctl,
        payload: Vec<u8>,
    },
    Submit {
        req: Submit,
        bos: Vec<SubmitBo>,
        in_fences: Vec<FenceRef>,
        inline_cmd: Vec<u8>,
    },
}

/// A bounded cursor over a message.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn read<T: FromBytes + KnownLayout + Immutable>(
        &mut self,
        what: &'static str,
    ) -> Result<T, DecodeError> {
        let need = core::mem::size_of::<T>();
        let have = self.remaining();
        let (v, _) = T::read_from_prefix(&self.buf[self.pos..])
            .map_err(|_| DecodeError::Short { what, need, have })?;
        self.pos += need;
        Ok(v)
    }

    /// Reads `n` items; `n` has been checked against a limit by the caller,
    /// and the remaining length is checked before anything is allocated.
    pub(crate) fn read_array<T: FromBytes + KnownLayout + Immutable>(
        &mut self,
        n: u32,
        what: &'static str,
    ) -> Result<Vec<T>, DecodeError> {
        let need = (n as usize)
            .checked_mul(core::mem::size_of::<T>())
            .ok_or(DecodeError::Overflow { field: what })?;
        let have = self.remaining();
        if need > have {
            return Err(DecodeError::Short { what, need, have });
        }
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            out.push(self.read(what)?);
        }
        Ok(out)
    }

    pub(crate) fn read_bytes(
        &mut self,
        n: u32,
        what: &'static str,
    ) -> Result<Vec<u8>, DecodeError> {
        let need = n as usize;
        let have = self.remaining();
        if need > have {
            return Err(DecodeError::Short { what, need, have });
        }
        let v = self.buf[self.pos..self.pos + need].to_vec();
        self.pos += need;
        Ok(v)
    }

    pub(crate) fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::Trailing { what, extra }),
        }
    }
}

pub(crate) fn zero(v: u32, field: &'static str) -> Result<(), DecodeError> {
    if v == 0 {
        Ok(())
    } else {
        Err(DecodeError::Reserved { field })
    }
}

pub(crate) fn flags(v: u32, known: u32, field: &'static str) -> Result<(), DecodeError> {
    if v & !known == 0 {
        Ok(())
    } else {
        Err(DecodeError::UnknownFlags {
            field,
            flags: v & !known,
        })
    }
}

fn limit(count: u32, max: u32, field: &'static str) -> Result<(), DecodeError> {
    if count <= max {
        Ok(())
    } else {
        Err(DecodeError::TooMany {
            field,
            count: count.into(),
            limit: max.into(),
        })
    }
}

fn invalid(field: &'static str, value: impl Into<u64>) -> DecodeError {
    DecodeError::InvalidValue {
        field,
        value: value.into(),
    }
}

/// Reads only the common header, to learn the type of a message.
pub fn peek_hdr(bytes: &[u8]) -> Result<Hdr, DecodeError> {
    Reader::new(bytes).read("header")
}

impl Request {
    /// Decodes one request; the whole buffer must be the request.
    pub fn decode(bytes: &[u8], lim: &Limits) -> Result<Request, DecodeError> {
        let hdr = peek_hdr(bytes)?;
        flags(hdr.flags.get(), 0, "hdr.flags")?;
        zero(hdr.padding.get(), "hdr.padding")?;
        let mut r = Reader::new(bytes);
        let req = match hdr.type_.get() {
            VIRTIO_ACCEL_CMD_GET_CAPS => {
                let q: GetCaps = r.read("GET_CAPS")?;
                zero(q.padding.get(), "padding")?;
                if hdr.ctx_id.get() != 0 {
                    return Err(invalid("hdr.ctx_id", hdr.ctx_id.get()));
                }
                Request::GetCaps(q)
            }
            VIRTIO_ACCEL_CMD_CTX_CREATE => {
                let q: CtxCreate = r.read("CTX_CREATE")?;
                zero(q.padding.get(), "padding")?;
                if hdr.ctx_id.get() != 0 {
                    return Err(invalid("hdr.ctx_id", hdr.ctx_id.get()));
                }
                if q.priority.get() > VIRTIO_ACCEL_PRIORITY_HIGH {
                    return Err(invalid("priority", q.priority.get()));
                }
                Request::CtxCreate(q)
            }
            VIRTIO_ACCEL_CMD_CTX_DESTROY => Request::CtxDestroy(r.read("CTX_DESTROY")?),
            VIRTIO_ACCEL_CMD_BO_CREATE => {
                let q: BoCreate = r.read("BO_CREATE")?;
                zero(q.padding.get(), "padding")?;
                flags(q.flags.get(), VIRTIO_ACCEL_BO_F_ALL, "flags")?;
                if q.size.get() == 0 {
                    return Err(invalid("size", 0u64));
                }
                Request::BoCreate(q)
            }
            t @ (VIRTIO_ACCEL_CMD_BO_DESTROY
            | VIRTIO_ACCEL_CMD_BO_INFO
            | VIRTIO_ACCEL_CMD_BO_DETACH_BACKING
            | VIRTIO_ACCEL_CMD_BO_MAP_SHM
            | VIRTIO_ACCEL_CMD_BO_UNMAP_SHM) => {
                let q: BoReq = r.read(request_name(t))?;
                zero(q.padding.get(), "padding")?;
                match t {
                    VIRTIO_ACCEL_CMD_BO_DESTROY => Request::BoDestroy(q),
                    VIRTIO_ACCEL_CMD_BO_INFO => Request::BoInfo(q),
                    VIRTIO_ACCEL_CMD_BO_DETACH_BACKING => Request::BoDetachBacking(q),
                    VIRTIO_ACCEL_CMD_BO_MAP_SHM => Request::BoMapShm(q),
                    _ => Request::BoUnmapShm(q),
                }
            }
            VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING => {
                let q: BoAttachBacking = r.read("BO_ATTACH_BACKING")?;
                let n = q.nr_entries.get();
                if n == 0 {
                    return Err(invalid("nr_entries", 0u64));
                }
                limit(n, lim.max_sg_entries, "nr_entries")?;
                let entries: Vec<MemEntry> = r.read_array(n, "mem entries")?;
                let mut total: u64 = 0;
                for e in &entries {
                    zero(e.padding.get(), "mem_entry.padding")?;
                    if e.length.get() == 0 {
                        return Err(invalid("mem_entry.length", 0u64));
                    }
                    e.addr.get().checked_add(e.length.get().into()).ok_or(
                        DecodeError::Overflow {
                            field: "mem_entry.addr + length",
                        },
                    )?;
                    total =
                        total
                            .checked_add(e.length.get().into())
                            .ok_or(DecodeError::Overflow {
                                field: "backing length",
                            })?;
                }
                Request::BoAttachBacking { req: q, entries }
            }
            VIRTIO_ACCEL_CMD_FENCE_POLL => Request::FencePoll(r.read("FENCE_POLL")?),
            VIRTIO_ACCEL_CMD_IOCTL => {
                let q: Ioctl = r.read("IOCTL")?;
                zero(q.padding.get(), "padding")?;
                limit(q.in_size.get(), lim.max_ioctl_payload, "in_size")?;
                limit(q.out_size.get(), lim.max_ioctl_payload, "out_size")?;
                let payload = r.read_bytes(q.in_size.get(), "ioctl payload")?;
                Request::Ioctl { req: q, payload }
            }
            VIRTIO_ACCEL_CMD_SUBMIT => {
                let q: Submit = r.read("SUBMIT")?;
                zero(q.padding.get(), "padding")?;
                flags(q.flags.get(), VIRTIO_ACCEL_SUBMIT_F_ALL, "flags")?;
                limit(q.nr_bos.get(), lim.max_submit_bos, "nr_bos")?;
                limit(q.nr_in_fences.get(), lim.max_in_fences, "nr_in_fences")?;
                if q.cmd_size.get() == 0 {
                    return Err(invalid("cmd_size", 0u64));
                }
                q.cmd_offset
                    .get()
                    .checked_add(q.cmd_size.get().into())
                    .ok_or(DecodeError::Overflow {
                        field: "cmd_offset + cmd_size",
                    })?;
                let bos: Vec<SubmitBo> = r.read_array(q.nr_bos.get(), "submit bos")?;
                for b in &bos {
                    flags(b.access.get(), VIRTIO_ACCEL_ACCESS_ALL, "submit_bo.access")?;
                    if b.access.get() == 0 {
                        return Err(invalid("submit_bo.access", 0u64));
                    }
                }
                let in_fences: Vec<FenceRef> = r.read_array(q.nr_in_fences.get(), "in fences")?;
                for f in &in_fences {
                    zero(f.padding.get(), "fence_ref.padding")?;
                }
                let inline_cmd = if q.flags.get() & VIRTIO_ACCEL_SUBMIT_F_INLINE != 0 {
                    if q.cmd_bo_handle.get() != 0 {
                        return Err(invalid("cmd_bo_handle", q.cmd_bo_handle.get()));
                    }
                    if q.cmd_offset.get() != 0 {
                        return Err(invalid("cmd_offset", q.cmd_offset.get()));
                    }
                    limit(q.cmd_size.get(), lim.max_inline_cmd, "cmd_size")?;
                    r.read_bytes(q.cmd_size.get(), "inline command stream")?
                } else {
                    Vec::new()
                };
                Request::Submit {
                    req: q,
                    bos,
                    in_fences,
                    inline_cmd,
                }
            }
            t => return Err(DecodeError::UnknownType(t)),
        };
        r.finish(request_name(hdr.type_.get()))?;
        Ok(req)
    }

    /// The common header of this request.
    pub fn hdr(&self) -> &Hdr {
        match self {
            Request::GetCaps(q) => &q.hdr,
            Request::CtxCreate(q) => &q.hdr,
            Request::CtxDestroy(h) => h,
            Request::BoCreate(q) => &q.hdr,
            Request::BoDestroy(q)
            | Request::BoInfo(q)
            | Request::BoDetachBacking(q)
            | Request::BoMapShm(q)
            | Request::BoUnmapShm(q) => &q.hdr,
            Request::BoAttachBacking { req, .. } => &req.hdr,
            Request::FencePoll(q) => &q.hdr,
            Request::Ioctl { req, .. } => &req.hdr,
            Request::Submit { req, .. } => &req.hdr,
        }
    }

    /// Encodes the request as the driver places it in the readable part of
    /// a descriptor chain.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::GetCaps(q) => q.as_bytes().to_vec(),
            Request::CtxCreate(q) => q.as_bytes().to_vec(),
            Request::CtxDestroy(h) => h.as_bytes().to_vec(),
            Request::BoCreate(q) => q.as_bytes().to_vec(),
            Request::BoDestroy(q)
            | Request::BoInfo(q)
            | Request::BoDetachBacking(q)
            | Request::BoMapShm(q)
            | Request::BoUnmapShm(q) => q.as_bytes().to_vec(),
            Request::BoAttachBacking { req, entries } => {
                let mut v = req.as_bytes().to_vec();
                v.extend_from_slice(entries.as_bytes());
                v
            }
            Request::FencePoll(q) => q.as_bytes().to_vec(),
            Request::Ioctl { req, payload } => {
                let mut v = req.as_bytes().to_vec();
                v.extend_from_slice(payload);
                v
            }
            Request::Submit {
                req,
                bos,
                in_fences,
                inline_cmd,
            } => {
                let mut v = req.as_bytes().to_vec();
                v.extend_from_slice(bos.as_bytes());
                v.extend_from_slice(in_fences.as_bytes());
                v.extend_from_slice(inline_cmd);
                v
            }
        }
    }

    /// The size of the response the driver must make writable for this
    /// request: its whole response structure (for `IOCTL`, 24 bytes plus
    /// `out_size`). A device acts on a request only when its writable part
    /// holds this many bytes; error responses use the same structure with
    /// zeroed fields (24 bytes for `IOCTL`).
    /// The size of the whole response for a driver that negotiated the
    /// device feature bits `features`.
    pub fn response_size_for(&self, features: u64) -> usize {
        match self {
            Request::BoInfo(_) if features & (1 << VIRTIO_ACCEL_F_DEVICE_ADDR) != 0 => {
                core::mem::size_of::<RespBoInfoExt>()
            }
            _ => self.response_size(),
        }
    }

    /// The size of the whole response without feature bits that lengthen
    /// responses.
    pub fn response_size(&self) -> usize {
        use core::mem::size_of;
        match self {
            Request::GetCaps(_) => size_of::<RespCaps>(),
            Request::BoCreate(_) => size_of::<RespBoCreate>(),
            Request::BoInfo(_) => size_of::<RespBoInfo>(),
            Request::BoMapShm(_) => size_of::<RespMapShm>(),
            Request::FencePoll(_) => size_of::<RespFence>(),
            Request::Ioctl { req, .. } => size_of::<RespIoctl>() + req.out_size.get() as usize,
            Request::Submit { .. } => size_of::<RespSubmit>(),
            _ => size_of::<Hdr>(),
        }
    }
}
