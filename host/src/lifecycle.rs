//! What stop, start and reset do to one VM's device, as vhost-user shows
//! them. The decisions only; the glue ([`crate::vhost_user`]) acts on them.
//!
//! - A ring **stops** at `GET_VRING_BASE`. The first stop of a running
//!   device stops it: no job starts, jobs on the NPU run to their end, and
//!   nothing touches the rings or guest memory once the glue has answered
//!   (it waits for those jobs). Objects, queued jobs, parked chains,
//!   answers and events are kept.
//! - The rings **start** again (ready and enabled). If every ring is
//!   exactly where it stopped — same size and addresses, the frontend's
//!   next available index equal to the base the device returned, the used
//!   index in guest memory equal to the device's — the device resumes: what
//!   waited is answered and jobs start. Anything else means the driver
//!   reset the device while it was stopped (QEMU shows a guest reset to
//!   the backend as a stop, then fresh rings): the device is reset.
//! - A **reset** (`RESET_DEVICE`, a reset found at start, a disconnect)
//!   aborts every job, waits until the NPU has stopped them, and only then
//!   drops the VM's objects and is acknowledged.

/// Where a ring is, as far as the device can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_avail: u16,
    pub next_used: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No ring has run since the connection or the last reset.
    Fresh,
    Running,
    /// Stopped after running; the device starts no job.
    Stopped,
}

/// What the glue must do now that some rings may have started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Not every ring runs yet (or the device already runs): nothing.
    Wait,
    /// The rings run for the first time.
    First,
    /// The rings are back where they stopped: resume.
    Resume,
    /// The rings are new: reset the device before using them.
    Reset,
}

/// The rings' life for one VM.
#[derive(Debug, Clone)]
pub struct Rings<const N: usize> {
    phase: Phase,
    saved: [Option<RingConfig>; N],
}

impl<const N: usize> Default for Rings<N> {
    fn default() -> Self {
        Rings {
            phase: Phase::Fresh,
            saved: [None; N],
        }
    }
}

impl<const N: usize> Rings<N> {
    /// The device may use its rings.
    pub fn running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// Ring `q` stopped where `cfg` says. True if this stops the device
    /// (the first stop while it ran): the caller stops starting jobs and
    /// waits for running ones.
    pub fn stop(&mut self, q: usize, cfg: RingConfig) -> bool {
        if let Some(s) = self.saved.get_mut(q) {
            *s = Some(cfg);
        }
        match self.phase {
            Phase::Running => {
                self.phase = Phase::Stopped;
                true
            }
            Phase::Fresh | Phase::Stopped => false,
        }
    }

    /// Some rings may have started; `now[q]` is ring `q`'s place if it
    /// runs, `None` if it does not.
    pub fn start(&mut self, now: [Option<RingConfig>; N]) -> Start {
        if self.phase == Phase::Running || now.iter().any(Option::is_none) {
            return Start::Wait;
        }
        let was = std::mem::replace(&mut self.phase, Phase::Running);
        let saved = std::mem::replace(&mut self.saved, [None; N]);
        match was {
            Phase::Fresh => Start::First,
            _ if saved == now => Start::Resume,
            _ => Start::Reset,
        }
    }

    /// Where the rings stopped (`None` for a ring that did not stop).
    pub fn saved(&self) -> [Option<RingConfig>; N] {
        self.saved
    }

    /// The device was reset: the next start is a first one.
    pub fn reset(&mut self) {
        *self = Rings::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(base: u64, avail: u16, used: u16) -> RingConfig {
        RingConfig {
            size: 256,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_avail: avail,
            next_used: used,
        }
    }

    fn running() -> Rings<2> {
        let mut r = Rings::default();
        assert_eq!(
            r.start([Some(ring(0, 0, 0)), Some(ring(0x10000, 0, 0))]),
            Start::First
        );
        r
    }

    #[test]
    fn start_waits_for_every_ring() {
        let mut r = Rings::<2>::default();
        assert_eq!(r.start([Some(ring(0, 0, 0)), None]), Start::Wait);
        assert!(!r.running());
        assert_eq!(
            r.start([Some(ring(0, 0, 0)), Some(ring(0x10000, 0, 0))]),
            Start::First
        );
        assert!(r.running());
        assert_eq!(
            r.start([Some(ring(0, 5, 5)), Some(ring(0x10000, 0, 0))]),
            Start::Wait
        );
    }

    #[test]
    fn only_the_first_stop_stops_the_device() {
        let mut r = running();
        assert!(r.stop(0, ring(0, 7, 7)));
        assert!(!r.running());
        assert!(!r.stop(1, ring(0x10000, 3, 1)));
        // Stops of a device that never ran stop nothing.
        let mut fresh = Rings::<2>::default();
        assert!(!fresh.stop(0, ring(0, 0, 0)));
    }

    #[test]
    fn rings_back_where_they_stopped_resume() {
        let mut r = running();
        r.stop(0, ring(0, 7, 7));
        r.stop(1, ring(0x10000, 3, 1));
        // Half restarted: wait.
        assert_eq!(r.start([Some(ring(0, 7, 7)), None]), Start::Wait);
        assert_eq!(
            r.start([Some(ring(0, 7, 7)), Some(ring(0x10000, 3, 1))]),
            Start::Resume
        );
        assert!(r.running());
    }

    #[test]
    fn new_rings_after_a_stop_are_a_reset() {
        for now in [
            // The driver re-created its rings elsewhere.
            [Some(ring(0x40000, 0, 0)), Some(ring(0x10000, 3, 1))],
            // Same place, but fresh: base and used index zero.
            [Some(ring(0, 0, 0)), Some(ring(0x10000, 0, 0))],
            // The frontend lost count (its base is not the one returned).
            [Some(ring(0, 6, 7)), Some(ring(0x10000, 3, 1))],
        ] {
            let mut r = running();
            r.stop(0, ring(0, 7, 7));
            r.stop(1, ring(0x10000, 3, 1));
            assert_eq!(r.start(now), Start::Reset, "{now:?}");
            assert!(r.running());
        }
    }

    #[test]
    fn after_a_reset_the_next_start_is_a_first_one() {
        let mut r = running();
        r.stop(0, ring(0, 7, 7));
        r.reset();
        assert_eq!(
            r.start([Some(ring(0, 0, 0)), Some(ring(0x10000, 0, 0))]),
            Start::First
        );
    }
}
