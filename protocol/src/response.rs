//! Responses and events (device → driver): typed decode and encode.
//!
//! A device always answers with the whole response struct of the request's
//! type, whatever the status; fields after the header are zero on error
//! unless the specification says otherwise. Drivers therefore always know
//! how many bytes to expect.

use zerocopy::IntoBytes;

use crate::error::DecodeError;
use crate::request::{flags, zero, Reader};
use crate::wire::*;

/// A decoded response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Responses that carry only the header.
    NoData(Hdr),
    Caps(RespCaps),
    BoCreate(RespBoCreate),
    BoInfo(RespBoInfo),
    /// `BO_INFO` with `VIRTIO_ACCEL_F_DEVICE_ADDR`.
    BoInfoExt(RespBoInfoExt),
    MapShm(RespMapShm),
    Fence(RespFence),
    Ioctl {
        resp: RespIoctl,
        payload: Vec<u8>,
    },
    Submit(RespSubmit),
}

fn check_hdr(hdr: &Hdr) -> Result<(), DecodeError> {
    if !RESPONSE_STATUSES.iter().any(|(s, _)| *s == hdr.type_.get()) {
        return Err(DecodeError::UnknownType(hdr.type_.get()));
    }
    flags(hdr.flags.get(), 0, "hdr.flags")?;
    zero(hdr.padding.get(), "hdr.padding")
}

impl Response {
    /// Decodes the response to a request of type `req_type`.
    pub fn decode(req_type: u32, bytes: &[u8]) -> Result<Response, DecodeError> {
        let mut r = Reader::new(bytes);
        let resp = match req_type {
            VIRTIO_ACCEL_CMD_GET_CAPS => {
                let v: RespCaps = r.read("RESP_CAPS")?;
                zero(v.padding.get(), "padding")?;
                Response::Caps(v)
            }
            VIRTIO_ACCEL_CMD_BO_CREATE => {
                let v: RespBoCreate = r.read("RESP_BO_CREATE")?;
                zero(v.padding.get(), "padding")?;
                Response::BoCreate(v)
            }
            VIRTIO_ACCEL_CMD_BO_INFO if bytes.len() == core::mem::size_of::<RespBoInfoExt>() => {
                let v: RespBoInfoExt = r.read("RESP_BO_INFO_EXT")?;
                zero(v.padding.get(), "padding")?;
                Response::BoInfoExt(v)
            }
            VIRTIO_ACCEL_CMD_BO_INFO => Response::BoInfo(r.read("RESP_BO_INFO")?),
            VIRTIO_ACCEL_CMD_BO_MAP_SHM => Response::MapShm(r.read("RESP_MAP_SHM")?),
            VIRTIO_ACCEL_CMD_FENCE_POLL => Response::Fence(r.read("RESP_FENCE")?),
            VIRTIO_ACCEL_CMD_IOCTL => {
                let v: RespIoctl = r.read("RESP_IOCTL")?;
                zero(v.padding.get(), "padding")?;
                if v.out_size.get() > VIRTIO_ACCEL_MAX_IOCTL_PAYLOAD {
                    return Err(DecodeError::TooMany {
                        field: "out_size",
                        count: v.out_size.get().into(),
                        limit: VIRTIO_ACCEL_MAX_IOCTL_PAYLOAD.into(),
                    });
                }
                let payload = r.read_bytes(v.out_size.get(), "ioctl payload")?;
                Response::Ioctl { resp: v, payload }
            }
            VIRTIO_ACCEL_CMD_SUBMIT => Response::Submit(r.read("RESP_SUBMIT")?),
            t if REQUEST_TYPES.iter().any(|(k, _)| *k == t) => Response::NoData(r.read("header")?),
            t => return Err(DecodeError::UnknownType(t)),
        };
        check_hdr(resp.hdr())?;
        r.finish("response")?;
        Ok(resp)
    }

    pub fn hdr(&self) -> &Hdr {
        match self {
            Response::NoData(h) => h,
            Response::Caps(v) => &v.hdr,
            Response::BoCreate(v) => &v.hdr,
            Response::BoInfo(v) => &v.hdr,
            Response::BoInfoExt(v) => &v.base.hdr,
            Response::MapShm(v) => &v.hdr,
            Response::Fence(v) => &v.hdr,
            Response::Ioctl { resp, .. } => &resp.hdr,
            Response::Submit(v) => &v.hdr,
        }
    }

    /// The response status (`VIRTIO_ACCEL_RESP_*`).
    pub fn status(&self) -> u32 {
        self.hdr().type_.get()
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::NoData(h) => h.as_bytes().to_vec(),
            Response::Caps(v) => v.as_bytes().to_vec(),
            Response::BoCreate(v) => v.as_bytes().to_vec(),
            Response::BoInfo(v) => v.as_bytes().to_vec(),
            Response::BoInfoExt(v) => v.as_bytes().to_vec(),
            Response::MapShm(v) => v.as_bytes().to_vec(),
            Response::Fence(v) => v.as_bytes().to_vec(),
            Response::Ioctl { resp, payload } => {
                let mut v = resp.as_bytes().to_vec();
                v.extend_from_slice(payload);
                v
            }
            Response::Submit(v) => v.as_bytes().to_vec(),
        }
    }

    /// As [`Response::error`], for a driver that negotiated the device
    /// feature bits `features` (some responses are longer with some bits).
    pub fn error_for(req_type: u32, ctx_id: u32, status: u32, features: u64) -> Response {
        if req_type == VIRTIO_ACCEL_CMD_BO_INFO && features & (1 << VIRTIO_ACCEL_F_DEVICE_ADDR) != 0
        {
            return Response::BoInfoExt(RespBoInfoExt {
                base: RespBoInfo {
                    hdr: Hdr::new(status, ctx_id),
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        Response::error(req_type, ctx_id, status)
    }

    /// The response to a request of type `req_type` that failed with
    /// `status`: the request's response struct with only the header set.
    pub fn error(req_type: u32, ctx_id: u32, status: u32) -> Response {
        let hdr = Hdr::new(status, ctx_id);
        match req_type {
            VIRTIO_ACCEL_CMD_GET_CAPS => Response::Caps(RespCaps {
                hdr,
                ..Default::default()
            }),
            VIRTIO_ACCEL_CMD_BO_CREATE => Response::BoCreate(RespBoCreate {
                hdr,
                ..Default::default()
            }),
            VIRTIO_ACCEL_CMD_BO_INFO => Response::BoInfo(RespBoInfo {
                hdr,
                ..Default::default()
            }),
            VIRTIO_ACCEL_CMD_BO_MAP_SHM => Response::MapShm(RespMapShm {
                hdr,
                ..Default::default()
            }),
            VIRTIO_ACCEL_CMD_FENCE_POLL => Response::Fence(RespFence {
                hdr,
                ..Default::default()
            }),
            VIRTIO_ACCEL_CMD_IOCTL => Response::Ioctl {
                resp: RespIoctl {
                    hdr,
                    ..Default::default()
                },
                payload: Vec::new(),
            },
            VIRTIO_ACCEL_CMD_SUBMIT => Response::Submit(RespSubmit {
                hdr,
                ..Default::default()
            }),
            _ => Response::NoData(hdr),
        }
    }
}

impl Event {
    /// Decodes one event from the event queue.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        let mut r = Reader::new(bytes);
        let ev: Event = r.read("EVENT")?;
        r.finish("event")?;
        if ev.hdr.type_.get() != VIRTIO_ACCEL_EVENT_CONTEXT_LOST {
            return Err(DecodeError::UnknownType(ev.hdr.type_.get()));
        }
        flags(ev.hdr.flags.get(), 0, "hdr.flags")?;
        zero(ev.hdr.padding.get(), "hdr.padding")?;
        zero(ev.padding.get(), "padding")?;
        if !(VIRTIO_ACCEL_LOST_HANG..=VIRTIO_ACCEL_LOST_DEVICE_ERROR).contains(&ev.reason.get()) {
            return Err(DecodeError::InvalidValue {
                field: "reason",
                value: ev.reason.get().into(),
            });
        }
        Ok(ev)
    }
}
