//! What the device has to tell the guest without being asked: the
//! responses of jobs that ended, for the glue to write into their parked
//! chains, and events for the eventq.

use virtio_accel_protocol::*;

use super::{Completion, Device};
use crate::backend::Backend;

impl<B: Backend> Device<B> {
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// The next event for the eventq, if any.
    pub fn pop_event(&mut self) -> Option<Event> {
        self.dirty.events = true;
        self.events.pop_front()
    }

    /// Puts back an event that found no eventq buffer.
    pub fn unpop_event(&mut self, ev: Event) {
        self.dirty.events = true;
        self.events.push_front(ev);
    }

    /// Tells the driver a context was lost, replacing any event still
    /// pending for it. Context 0 means the whole device.
    pub(super) fn push_lost_event(&mut self, ctx_id: u32, fence: u64, reason: u32) {
        self.dirty.events = true;
        self.events.retain(|e| e.hdr.ctx_id.get() != ctx_id);
        self.events.push_back(Event {
            hdr: Hdr::new(VIRTIO_ACCEL_EVENT_CONTEXT_LOST, ctx_id),
            fence: fence.into(),
            reason: reason.into(),
            padding: 0.into(),
        });
    }
}
