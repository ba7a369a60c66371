//! Buffer objects: creation against the VM's quota, backing by guest pages,
//! and the busy rule (a buffer listed by a queued or running job can be
//! neither destroyed nor detached).

use virtio_accel_protocol::*;

use super::context::{Attached, Bo};
use super::{Device, Status};
use crate::backend::{Backend, BackendError};
use crate::memory::{Backing, GuestMem};

fn backend_status(e: &BackendError) -> Status {
    match e {
        BackendError::Invalid(_) => VIRTIO_ACCEL_RESP_ERR_INVALID,
        BackendError::OutOfRange(_) => VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE,
        BackendError::NoMemory(_) | BackendError::Device(_) => VIRTIO_ACCEL_RESP_ERR_NO_MEMORY,
        BackendError::Unsupported(_) => VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED,
    }
}

impl<B: Backend> Device<B> {
    pub(super) fn bo_create(&mut self, q: &BoCreate) -> Result<Response, Status> {
        let ctx_id = q.hdr.ctx_id.get();
        self.ctx_mut(ctx_id)?;
        let size = q.size.get();
        if q.flags.get() & VIRTIO_ACCEL_BO_F_HOST != 0 {
            return Err(VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED);
        }
        if size > self.limits.max_bo_size {
            return Err(VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE);
        }
        if self.bo_count >= self.limits.max_bos as usize
            || self
                .bo_bytes
                .checked_add(size)
                .is_none_or(|total| total > self.limits.max_total_bo_bytes)
        {
            return Err(VIRTIO_ACCEL_RESP_ERR_QUOTA);
        }
        let c = self.ctx_mut(ctx_id)?;
        let h = c.alloc_handle().ok_or(VIRTIO_ACCEL_RESP_ERR_QUOTA)?;
        c.bos.insert(
            h,
            Bo {
                size,
                flags: q.flags.get(),
                attached: None,
                busy: 0,
            },
        );
        self.bo_count += 1;
        self.bo_bytes += size;
        Ok(Response::BoCreate(RespBoCreate {
            hdr: Hdr::new(VIRTIO_ACCEL_RESP_OK, ctx_id),
            bo_handle: h.into(),
            padding: 0.into(),
            size: size.into(),
        }))
    }

    fn bo_mut(&mut self, ctx: u32, h: u32) -> Result<&mut Bo<B>, Status> {
        self.ctx_mut(ctx)?
            .bos
            .get_mut(&h)
            .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)
    }

    pub(super) fn bo_destroy(&mut self, q: &BoReq) -> Result<Response, Status> {
        let (ctx, h) = (q.hdr.ctx_id.get(), q.bo_handle.get());
        if self.bo_mut(ctx, h)?.busy > 0 {
            return Err(VIRTIO_ACCEL_RESP_ERR_BUSY);
        }
        let c = super::live(&mut self.contexts, ctx)?;
        let bo = c
            .bos
            .remove(&h)
            .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
        let entries = bo.entries();
        if let Some(a) = bo.attached {
            self.backend.release(&c.hw, a.buffer);
        }
        self.backing_entries = self.backing_entries.saturating_sub(entries);
        self.bo_count = self.bo_count.saturating_sub(1);
        self.bo_bytes = self.bo_bytes.saturating_sub(bo.size);
        Ok(Response::NoData(Hdr::new(VIRTIO_ACCEL_RESP_OK, ctx)))
    }

    pub(super) fn bo_info(&mut self, q: &BoReq) -> Result<Response, Status> {
        let ctx = q.hdr.ctx_id.get();
        let bo = self.bo_mut(ctx, q.bo_handle.get())?;
        let mut state = 0;
        if bo.attached.is_some() {
            state |= VIRTIO_ACCEL_BO_STATE_BACKED;
        }
        if bo.busy > 0 {
            state |= VIRTIO_ACCEL_BO_STATE_BUSY;
        }
        let entries = bo.entries();
        Ok(Response::BoInfo(RespBoInfo {
            hdr: Hdr::new(VIRTIO_ACCEL_RESP_OK, ctx),
            bo_handle: q.bo_handle,
            flags: bo.flags.into(),
            size: bo.size.into(),
            shm_offset: 0.into(),
            nr_entries: u32::try_from(entries).unwrap_or(u32::MAX).into(),
            state: state.into(),
        }))
    }

    pub(super) fn bo_attach(
        &mut self,
        q: &BoAttachBacking,
        entries: &[MemEntry],
        mem: &GuestMem,
    ) -> Result<Response, Status> {
        let ctx = q.hdr.ctx_id.get();
        let held = self.backing_entries;
        let max = u64::from(self.limits.max_backing_entries);
        // Spec: with a page-aligned device, an unaligned entry breaks the
        // rule of a driver that accepted the feature, and asks a driver
        // that did not for what the device cannot serve.
        let unaligned = self.page_aligned.then(|| {
            if self.has(VIRTIO_ACCEL_F_PAGE_ALIGNED) {
                VIRTIO_ACCEL_RESP_ERR_INVALID
            } else {
                VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED
            }
        });
        let bo = self.bo_mut(ctx, q.bo_handle.get())?;
        if bo.attached.is_some() || bo.flags & VIRTIO_ACCEL_BO_F_HOST != 0 {
            return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
        }
        let n = entries.len() as u64;
        // The decoder checked each entry's end and the total for overflow.
        let backing = Backing::new(
            entries
                .iter()
                .map(|e| (e.addr.get(), e.length.get()))
                .collect(),
        );
        if backing.len() != bo.size {
            return Err(VIRTIO_ACCEL_RESP_ERR_INVALID);
        }
        if let Some(status) = unaligned {
            if !backing.page_aligned() {
                return Err(status);
            }
        }
        backing
            .check(mem)
            .map_err(|_| VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE)?;
        if held.saturating_add(n) > max {
            return Err(VIRTIO_ACCEL_RESP_ERR_QUOTA);
        }
        // Every check passed; the backend's import is the last one.
        let c = super::live(&mut self.contexts, ctx)?;
        let imported = self
            .backend
            .import(&c.hw, &backing, &self.mem)
            .map_err(|e| backend_status(&e))?;
        let bo = c
            .bos
            .get_mut(&q.bo_handle.get())
            .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
        bo.attached = Some(Attached {
            backing,
            buffer: imported.buffer,
        });
        self.backing_entries += n;
        Ok(Response::NoData(Hdr::new(VIRTIO_ACCEL_RESP_OK, ctx)))
    }

    pub(super) fn bo_detach(&mut self, q: &BoReq) -> Result<Response, Status> {
        let ctx = q.hdr.ctx_id.get();
        let c = super::live(&mut self.contexts, ctx)?;
        let bo = c
            .bos
            .get_mut(&q.bo_handle.get())
            .ok_or(VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE)?;
        if bo.busy > 0 {
            return Err(VIRTIO_ACCEL_RESP_ERR_BUSY);
        }
        let a = bo.attached.take().ok_or(VIRTIO_ACCEL_RESP_ERR_INVALID)?;
        self.backing_entries = self
            .backing_entries
            .saturating_sub(a.backing.entries() as u64);
        self.backend.release(&c.hw, a.buffer);
        Ok(Response::NoData(Hdr::new(VIRTIO_ACCEL_RESP_OK, ctx)))
    }
}
