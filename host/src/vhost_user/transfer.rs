//! The VM's device state in and out of this daemon: saved and loaded for a
//! migration (`SET_DEVICE_STATE_FD`, `CHECK_DEVICE_STATE`), and put back
//! when the rings start.
//!
//! A loaded state is checked at `CHECK_DEVICE_STATE` as far as it can be
//! without guest memory; it is restored when the rings first start (the
//! memory table comes with them), and only if they are where the state
//! left them. A state that does not fit guest memory or the NPU restores
//! its contexts as lost (`VIRTIO_ACCEL_LOST_RESET`): the driver is told,
//! and keeps a working device.

use std::fs::File;
use std::io::{self, Read, Write};
use std::thread::JoinHandle;

use vhost::vhost_user::message::{VhostTransferStateDirection, VhostTransferStatePhase};
use virtio_accel_protocol::*;
use vm_memory::GuestAddressSpace;

use super::persist::ring_state;
use super::{lock, AccelBackend, GlueError, Parked};
use crate::backend::Backend;
use crate::lifecycle::RingConfig;
use crate::queue::WriteArea;
use crate::state::{ParkedChain, RingState, StateError, VmState};

/// The largest device state a frontend may hand over: far above what the
/// limits allow a VM to hold (the backing lists dominate), and bounded.
const MAX_STATE_BYTES: u64 = 1 << 30;

/// A transfer under way: the thread moving the bytes.
pub(super) enum Transfer {
    Saving(JoinHandle<io::Result<()>>),
    Loading(JoinHandle<io::Result<Vec<u8>>>),
}

/// A state waiting for the rings to start.
pub(super) enum Pending {
    /// Loaded by the frontend (a migration).
    Migrated(VmState),
    /// Left on disk by a previous daemon (`--state-dir`).
    Restarted(crate::state_dir::Loaded),
}

/// The result of a transfer thread; a panic there is an error here.
fn joined<T>(r: std::thread::Result<io::Result<T>>) -> io::Result<T> {
    r.unwrap_or_else(|_| Err(io::Error::other("device state transfer panicked")))
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, what.to_owned())
}

impl<B: Backend> AccelBackend<B> {
    /// The VM's state now, for a migration: the rings must be stopped and
    /// no job on the NPU (a stop drains them).
    pub fn save_state(&self) -> Result<VmState, StateError> {
        let rings = lock(&self.inner.rings).map_err(|_| StateError::Busy("broken"))?;
        if rings.running() {
            return Err(StateError::Busy("the rings run"));
        }
        let saved = rings.saved();
        let caps = self.inner.sched.backend().caps();
        let device = self
            .device()
            .map_err(|_| StateError::Busy("broken"))?
            .save()?;
        let parked = lock(&self.inner.parked)
            .map_err(|_| StateError::Busy("broken"))?
            .iter()
            .map(|(&token, p)| ParkedChain {
                token,
                head: p.head,
                ctx: p.ctx_id,
                write: p.write.ranges(),
            })
            .collect();
        Ok(VmState {
            npu_kind: caps.kind,
            cmd_format: caps.cmd_format,
            device,
            rings: saved.iter().flatten().copied().map(ring_state).collect(),
            parked,
            next_token: self
                .inner
                .next_token
                .load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Checks a state before it waits for the rings: its format, the NPU
    /// it was saved on, and everything in it that needs no guest memory.
    fn check_loaded(&self, bytes: &[u8]) -> Result<VmState, StateError> {
        let state = VmState::decode(bytes)?;
        let caps = self.inner.sched.backend().caps();
        if (state.npu_kind, state.cmd_format) != (caps.kind, caps.cmd_format) {
            return Err(StateError::OtherNpu {
                saved: format!("NPU kind {} format {}", state.npu_kind, state.cmd_format),
                here: format!("NPU kind {} format {}", caps.kind, caps.cmd_format),
            });
        }
        let d = self.device().map_err(|_| StateError::Busy("broken"))?;
        if d.counts() != Default::default() {
            return Err(StateError::Busy("the device already holds objects"));
        }
        d.check_state(&state.device)?;
        Ok(state)
    }

    pub(super) fn state_fd(
        &self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        mut file: File,
    ) -> io::Result<Option<File>> {
        if phase != VhostTransferStatePhase::STOPPED {
            return Err(unsupported("device state is only moved while stopped"));
        }
        let mut t = lock(&self.inner.transfer)?;
        if t.is_some() {
            return Err(io::Error::other("a device state transfer is under way"));
        }
        let worker = std::thread::Builder::new().name("device-state".into());
        *t = Some(match direction {
            VhostTransferStateDirection::SAVE => {
                let bytes = self
                    .save_state()
                    .and_then(|s| s.encode())
                    .map_err(io::Error::other)?;
                Transfer::Saving(worker.spawn(move || file.write_all(&bytes))?)
            }
            VhostTransferStateDirection::LOAD => Transfer::Loading(worker.spawn(move || {
                let mut bytes = Vec::new();
                (&mut file)
                    .take(MAX_STATE_BYTES + 1)
                    .read_to_end(&mut bytes)?;
                if bytes.len() as u64 > MAX_STATE_BYTES {
                    return Err(io::Error::other("device state too large"));
                }
                Ok(bytes)
            })?),
        });
        Ok(None)
    }

    pub(super) fn check_state_transfer(&self) -> io::Result<()> {
        let t = lock(&self.inner.transfer)?.take();
        match t {
            None => Err(io::Error::other("no device state transfer under way")),
            Some(Transfer::Saving(h)) => joined(h.join()),
            Some(Transfer::Loading(h)) => {
                let bytes = joined(h.join())?;
                let state = self.check_loaded(&bytes).map_err(|e| {
                    tracing::error!("loading the device state: {e}");
                    io::Error::other(e)
                })?;
                tracing::info!(
                    "device state loaded: {} contexts; restored when the rings start",
                    state.device.contexts.len()
                );
                *lock(&self.inner.pending)? = Some(Pending::Migrated(state));
                Ok(())
            }
        }
    }

    /// Puts a loaded state back now that every ring runs at `now`. Rings
    /// elsewhere than the state says mean the driver set the device up
    /// anew: the state is dropped.
    pub(super) fn restore_migrated(
        &self,
        state: VmState,
        now: [Option<RingConfig>; VIRTIO_ACCEL_NUM_QUEUES],
    ) -> Result<(), GlueError> {
        let here: Vec<RingState> = now.iter().flatten().copied().map(ring_state).collect();
        if here != state.rings {
            tracing::warn!("the rings are not where the device state left them; state dropped");
            return Ok(());
        }
        let mem = self.inner.vm.mem.mem.memory();
        {
            let mut d = self.device()?;
            if let Err(e) = d.restore(&state.device, &mem) {
                tracing::error!("restoring the device state: {e}; its contexts are reported lost");
                d.restore_lost(&state.device, VIRTIO_ACCEL_LOST_RESET);
            }
        }
        let mut parked = lock(&self.inner.parked)?;
        for c in &state.parked {
            parked.insert(
                c.token,
                Parked {
                    head: c.head,
                    write: WriteArea::from_ranges(&c.write),
                    ctx_id: c.ctx,
                },
            );
        }
        self.inner
            .next_token
            .fetch_max(state.next_token, std::sync::atomic::Ordering::Relaxed);
        drop(parked);
        self.inner.sched.kick();
        Ok(())
    }
}
