//! A VMM's side of a device's life, as QEMU plays it over vhost-user: a VM
//! stop and `cont`, a guest driver resetting the device, and a reconnect
//! to a restarted daemon.

use std::io::{Read, Write};
use std::path::Path;

use vhost::vhost_user::message::{VhostTransferStateDirection, VhostTransferStatePhase};
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use virtio_accel_protocol::*;
use vm_memory::{Bytes, GuestAddress};

use crate::guest::{handshake, region_infos, start_ring, Guest, VIRTIO_RING_F_EVENT_IDX};
use crate::ring::{Desc, Ring};

impl Guest {
    /// A VM stop (QEMU `stop`): every ring disabled, then `GET_VRING_BASE`
    /// on each. Returns the bases the daemon gave, for [`Guest::vm_cont`].
    pub fn vm_stop(&mut self) -> Vec<u16> {
        for q in 0..VIRTIO_ACCEL_NUM_QUEUES {
            self.frontend.set_vring_enable(q, false).unwrap();
        }
        (0..VIRTIO_ACCEL_NUM_QUEUES)
            .map(|q| self.frontend.get_vring_base(q).unwrap() as u16)
            .collect()
    }

    /// A VM `cont`: features and memory table again, then every ring
    /// where it stopped, with the bases [`Guest::vm_stop`] returned.
    pub fn vm_cont(&mut self, bases: &[u16]) {
        self.frontend.set_features(self.features).unwrap();
        self.frontend
            .set_mem_table(&region_infos(&self.mem))
            .unwrap();
        for (q, ring) in self.rings.iter().enumerate() {
            start_ring(&mut self.frontend, &self.mem, q, ring, bases[q]);
        }
    }

    /// What a VMM shows the daemon when the guest driver resets the device
    /// and sets it up again: the rings stop, then fresh rings start (see
    /// [`Guest::restart_fresh`]).
    pub fn driver_reset(&mut self, same_place: bool) {
        self.vm_stop();
        self.restart_fresh(same_place);
    }

    /// `RESET_DEVICE`, then fresh rings in place.
    pub fn device_reset(&mut self) {
        self.frontend.reset_device().unwrap();
        self.restart_fresh(true);
    }

    /// Starts fresh rings, as a driver setting the device up again: new
    /// addresses unless `same_place`, zeroed, base 0, the eventq filled.
    /// Chains in flight are forgotten, as a driver's are after a reset.
    pub fn restart_fresh(&mut self, same_place: bool) {
        self.frontend.set_features(self.features).unwrap();
        self.frontend
            .set_mem_table(&region_infos(&self.mem))
            .unwrap();
        let event_idx = self.features & VIRTIO_RING_F_EVENT_IDX != 0;
        let size = self.opts.queue_size;
        for q in 0..VIRTIO_ACCEL_NUM_QUEUES {
            let bytes = Ring::bytes(size);
            let base = if same_place {
                self.rings[q].desc
            } else {
                Guest::alloc(self, bytes, 4096)
            };
            self.mem
                .write_slice(&vec![0u8; bytes as usize], GuestAddress(base))
                .unwrap();
            self.rings[q] = Ring::new(base, size, event_idx);
            start_ring(&mut self.frontend, &self.mem, q, &self.rings[q], 0);
        }
        for (rq, rs) in std::mem::take(&mut self.submits).into_values() {
            Guest::free(self, rq);
            Guest::free(self, rs);
        }
        self.done.clear();
        self.fill_eventq(8);
    }

    /// Connects again, to a daemon restarted on `path`, as QEMU does with
    /// `reconnect-ms`: the whole handshake and memory table, then every
    /// ring at its place with the used index in guest memory as its base,
    /// so that chains the old daemon took and did not answer are delivered
    /// again.
    pub fn reconnect(&mut self, path: &Path) {
        let (frontend, features, _) = handshake(path, &self.opts);
        assert_eq!(features, self.features, "the daemon offers other features");
        self.frontend = frontend;
        self.frontend
            .set_mem_table(&region_infos(&self.mem))
            .unwrap();
        for (q, ring) in self.rings.iter().enumerate() {
            let base = ring.used_idx(&self.mem);
            start_ring(&mut self.frontend, &self.mem, q, ring, base);
        }
    }

    /// The source side of a migration, after [`Guest::vm_stop`]: the
    /// device's state through `SET_DEVICE_STATE_FD(SAVE)` and a pipe, then
    /// `CHECK_DEVICE_STATE`.
    pub fn save_state(&mut self) -> Result<Vec<u8>, String> {
        let (mut rd, wr) = std::io::pipe().map_err(|e| e.to_string())?;
        self.frontend
            .set_device_state_fd(
                VhostTransferStateDirection::SAVE,
                VhostTransferStatePhase::STOPPED,
                wr.into(),
            )
            .map_err(|e| format!("SET_DEVICE_STATE_FD: {e}"))?;
        let mut bytes = Vec::new();
        rd.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        self.frontend
            .check_device_state()
            .map_err(|e| format!("CHECK_DEVICE_STATE: {e}"))?;
        Ok(bytes)
    }

    /// The destination side: connect to the daemon on `path` with this
    /// guest's memory, load `state` (`SET_DEVICE_STATE_FD(LOAD)`,
    /// `CHECK_DEVICE_STATE`), then start the rings with the bases the
    /// source's stop returned. The guest's chains in flight carry on.
    pub fn migrate_to(&mut self, path: &Path, state: &[u8], bases: &[u16]) -> Result<(), String> {
        let (frontend, features, _) = handshake(path, &self.opts);
        assert_eq!(features, self.features, "the daemon offers other features");
        let (rd, mut wr) = std::io::pipe().map_err(|e| e.to_string())?;
        frontend
            .set_device_state_fd(
                VhostTransferStateDirection::LOAD,
                VhostTransferStatePhase::STOPPED,
                rd.into(),
            )
            .map_err(|e| format!("SET_DEVICE_STATE_FD: {e}"))?;
        wr.write_all(state).map_err(|e| e.to_string())?;
        drop(wr);
        frontend
            .check_device_state()
            .map_err(|e| format!("CHECK_DEVICE_STATE: {e}"))?;
        self.frontend = frontend;
        self.frontend
            .set_mem_table(&region_infos(&self.mem))
            .unwrap();
        for (q, ring) in self.rings.iter().enumerate() {
            start_ring(&mut self.frontend, &self.mem, q, ring, bases[q]);
        }
        Ok(())
    }

    /// Sends a control request without waiting for its answer.
    pub fn post(&mut self, req: &Request) -> Posted {
        let bytes = req.encode();
        let resp_len = req.response_size();
        let rq = Guest::alloc(self, bytes.len() as u64, 8);
        let rs = Guest::alloc(self, resp_len as u64, 8);
        self.mem.write_slice(&bytes, GuestAddress(rq)).unwrap();
        let q = VIRTIO_ACCEL_VQ_CONTROL as usize;
        let head = self.rings[q].add(
            &self.mem,
            &[
                Desc {
                    addr: rq,
                    len: bytes.len() as u32,
                    write: false,
                },
                Desc {
                    addr: rs,
                    len: resp_len as u32,
                    write: true,
                },
            ],
        );
        self.rings[q].kick(&self.mem);
        Posted {
            head,
            rq,
            rs,
            kind: req.hdr().type_.get(),
        }
    }

    /// Waits for the answer to a posted control request.
    pub fn wait_posted(&mut self, p: Posted) -> Response {
        let q = VIRTIO_ACCEL_VQ_CONTROL as usize;
        let len = loop {
            if let Some(i) = self.control_done.iter().position(|&(h, _)| h == p.head) {
                break self.control_done.remove(i).1;
            }
            let (mode, timeout) = (self.opts.wait, self.opts.timeout);
            let (h, len) = self.rings[q]
                .wait_used(&self.mem, mode, timeout)
                .unwrap_or_else(|| panic!("control chain {} not answered", p.head));
            self.control_done.push((h, len));
        };
        let mut b = vec![0u8; len as usize];
        self.mem.read_slice(&mut b, GuestAddress(p.rs)).unwrap();
        Guest::free(self, p.rq);
        Guest::free(self, p.rs);
        Response::decode(p.kind, &b).unwrap_or_else(|e| panic!("bad response ({len} bytes): {e}"))
    }
}

/// A control request sent and not answered yet.
#[derive(Debug)]
pub struct Posted {
    head: u16,
    rq: u64,
    rs: u64,
    kind: u32,
}
