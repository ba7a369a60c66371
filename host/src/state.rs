//! One VM's device state as it leaves the daemon: saved for a migration
//! (`VHOST_USER_PROTOCOL_F_DEVICE_STATE`) and kept under `--state-dir` for
//! a restart. `host/STATE.md` documents the format; this file is its
//! definition.
//!
//! A saved state is the 8 bytes `VACCSTAT`, a little-endian `u32` version,
//! then a [`VmState`] in postcard's encoding (postcard 1.x wire format).
//! What a newer daemon cannot read is refused with the version it found.

use serde::{Deserialize, Serialize};

/// The first bytes of every saved state.
pub const MAGIC: &[u8; 8] = b"VACCSTAT";
/// The version this daemon writes and reads.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("not a virtio-accel device state")]
    NotAState,
    #[error("device state version {found}; this daemon reads version {VERSION}")]
    Version { found: u32 },
    #[error("malformed device state: {0}")]
    Malformed(String),
    #[error("device state saved on {saved}; this daemon runs {here}")]
    OtherNpu { saved: String, here: String },
    #[error("device state does not fit this daemon: {0}")]
    Limits(String),
    #[error("device state is inconsistent: {0}")]
    Inconsistent(String),
    #[error("device state cannot be saved: {0}")]
    Busy(&'static str),
}

/// A VM's device, between two daemons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    /// The NPU it was saved on (`npu_kind`, `cmd_format`): jobs and
    /// buffers only mean something to the same kind.
    pub npu_kind: u32,
    pub cmd_format: u32,
    pub device: DeviceState,
    /// Where the rings were when the state was taken.
    pub rings: Vec<RingState>,
    /// Chains the device had taken and not answered yet.
    pub parked: Vec<ParkedChain>,
    /// The glue's next chain token.
    pub next_token: u64,
}

/// The device model: what the driver created and what is under way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Device feature bits the driver acknowledged.
    pub features: u64,
    pub next_ctx: u32,
    pub contexts: Vec<ContextState>,
    /// Events not delivered yet, in order.
    pub events: Vec<EventState>,
    /// Jobs' answers not written yet, in order.
    pub answers: Vec<AnswerState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextState {
    pub id: u32,
    pub priority: u32,
    pub next_bo: u32,
    pub last_submitted: u64,
    pub completed: u64,
    /// `VIRTIO_ACCEL_LOST_*`, once lost.
    pub lost: Option<u32>,
    pub bos: Vec<BoState>,
    /// Queued jobs in order; a job that was on the NPU when the state was
    /// taken (a restart, never a migration) comes first with `ran` set.
    pub jobs: Vec<JobState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoState {
    pub handle: u32,
    pub size: u64,
    pub flags: u32,
    /// Guest-physical `(address, length)` ranges, once attached.
    pub backing: Option<Vec<(u64, u32)>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// The chain it answers.
    pub token: u64,
    pub out_fence: u64,
    /// Listed buffers: `(handle, VIRTIO_ACCEL_ACCESS_*)`, in index order.
    pub bos: Vec<(u32, u32)>,
    /// Fences it still waits on: `(context, seqno)`.
    pub waits: Vec<(u32, u64)>,
    /// The command stream as copied at `SUBMIT`.
    pub cmd: Vec<u8>,
    /// The status it is answered with once its turn comes, if it will
    /// never run.
    pub doomed: Option<u32>,
    /// It was on the NPU: it runs again from its start.
    pub ran: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventState {
    pub ctx: u32,
    pub fence: u64,
    pub reason: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerState {
    pub token: u64,
    /// The encoded `SUBMIT` response.
    pub response: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedChain {
    pub token: u64,
    pub head: u16,
    pub ctx: u32,
    /// The chain's writable descriptors: `(guest address, length)`.
    pub write: Vec<(u64, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingState {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_avail: u16,
    pub next_used: u16,
}

impl VmState {
    /// The saved bytes: magic, version, then the state.
    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        postcard::to_io(self, &mut out).map_err(|e| StateError::Malformed(e.to_string()))?;
        Ok(out)
    }

    /// Reads saved bytes; another version, or bytes that are not a whole
    /// state, are refused.
    pub fn decode(bytes: &[u8]) -> Result<VmState, StateError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(StateError::NotAState)?;
        let (v, body) = rest.split_first_chunk::<4>().ok_or(StateError::NotAState)?;
        let found = u32::from_le_bytes(*v);
        if found != VERSION {
            return Err(StateError::Version { found });
        }
        let (state, tail) = postcard::take_from_bytes::<VmState>(body)
            .map_err(|e| StateError::Malformed(e.to_string()))?;
        if !tail.is_empty() {
            return Err(StateError::Malformed(format!(
                "{} bytes after the state",
                tail.len()
            )));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmState {
        VmState {
            npu_kind: 1,
            cmd_format: 1,
            device: DeviceState {
                features: 0b10111,
                next_ctx: 3,
                contexts: vec![ContextState {
                    id: 2,
                    priority: 1,
                    next_bo: 5,
                    last_submitted: 9,
                    completed: 7,
                    lost: None,
                    bos: vec![BoState {
                        handle: 4,
                        size: 8192,
                        flags: 0,
                        backing: Some(vec![(0x10000, 4096), (0x30000, 4096)]),
                    }],
                    jobs: vec![JobState {
                        token: 12,
                        out_fence: 9,
                        bos: vec![(4, 3)],
                        waits: vec![(1, 3)],
                        cmd: vec![1, 2, 3],
                        doomed: None,
                        ran: false,
                    }],
                }],
                events: vec![EventState {
                    ctx: 1,
                    fence: 2,
                    reason: 1,
                }],
                answers: vec![AnswerState {
                    token: 11,
                    response: vec![0; 32],
                }],
            },
            rings: vec![RingState {
                size: 256,
                desc: 0x1000,
                avail: 0x2000,
                used: 0x3000,
                next_avail: 40,
                next_used: 38,
            }],
            parked: vec![ParkedChain {
                token: 12,
                head: 7,
                ctx: 2,
                write: vec![(0x5000, 32)],
            }],
            next_token: 13,
        }
    }

    #[test]
    fn a_state_reads_back_as_saved() {
        let s = sample();
        assert_eq!(VmState::decode(&s.encode().unwrap()), Ok(s));
    }

    #[test]
    fn other_versions_and_damaged_bytes_are_refused() {
        let bytes = sample().encode().unwrap();
        let mut v2 = bytes.clone();
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(VmState::decode(&v2), Err(StateError::Version { found: 2 }));
        assert_eq!(VmState::decode(b"VACCSTA"), Err(StateError::NotAState));
        assert_eq!(VmState::decode(&bytes[1..]), Err(StateError::NotAState));
        for cut in [12, bytes.len() / 2, bytes.len() - 1] {
            assert!(matches!(
                VmState::decode(&bytes[..cut]),
                Err(StateError::Malformed(_))
            ));
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            VmState::decode(&long),
            Err(StateError::Malformed(_))
        ));
    }
}
