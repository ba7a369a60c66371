//! The driver side of a split virtqueue, laid out per the virtio spec in
//! guest memory: descriptor table (16·Q bytes), available ring (6 + 2·Q)
//! and used ring (6 + 8·Q, 4-byte aligned).

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::guest::Mem;

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// How the driver waits for used buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Sleep on the call eventfd.
    Block,
    /// Spin on the used ring's index.
    Spin,
}

/// One descriptor of a chain: guest address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    free: Vec<u16>,
    /// Descriptors of each outstanding chain, by head.
    chains: Vec<Vec<u16>>,
    next_avail: u16,
    /// `next_avail` when the device was last notified.
    kicked_at: std::cell::Cell<u16>,
    last_used: u16,
    pub kick: EventFd,
    pub call: EventFd,
    epoll: Epoll,
    event_idx: bool,
}

impl Ring {
    /// Bytes a ring of `size` entries needs, and its alignment.
    pub fn bytes(size: u16) -> u64 {
        let q = u64::from(size);
        let used = (16 * q + 6 + 2 * q + 2).next_multiple_of(4);
        used + 6 + 8 * q + 2
    }

    /// A ring at guest address `base` (16-byte aligned), zeroed by the caller.
    pub fn new(base: u64, size: u16, event_idx: bool) -> Ring {
        let q = u64::from(size);
        let desc = base;
        let avail = desc + 16 * q;
        let used = (avail + 6 + 2 * q + 2).next_multiple_of(4);
        let call = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let epoll = Epoll::new().expect("epoll");
        epoll
            .ctl(
                ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(&call),
                EpollEvent::new(EventSet::IN, 0),
            )
            .expect("epoll add");
        Ring {
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            chains: vec![Vec::new(); size as usize],
            next_avail: 0,
            kicked_at: std::cell::Cell::new(0),
            last_used: 0,
            kick: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
            call,
            epoll,
            event_idx,
        }
    }

    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Places a chain in the ring and makes it available; returns its head.
    /// Does not kick.
    pub fn add(&mut self, mem: &Mem, descs: &[Desc]) -> u16 {
        assert!(!descs.is_empty(), "empty chain");
        let ids = self.take_ids(descs.len());
        for (i, d) in descs.iter().enumerate() {
            let mut flags = 0u16;
            if d.write {
                flags |= VRING_DESC_F_WRITE;
            }
            let next = if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT;
                ids[i + 1]
            } else {
                0
            };
            write_raw_desc(mem, self.desc, ids[i], d.addr, d.len, flags, next);
        }
        let head = ids[0];
        self.publish(mem, head, ids);
        head
    }

    /// Takes `n` free descriptor slots.
    pub fn take_ids(&mut self, n: usize) -> Vec<u16> {
        assert!(n <= self.free.len(), "ring full");
        (0..n).map(|_| self.free.pop().unwrap()).collect()
    }

    /// Writes descriptor `id` of the table as given, flags and all: for
    /// chains no correct driver builds.
    pub fn write_desc(&self, mem: &Mem, id: u16, addr: u64, len: u32, flags: u16, next: u16) {
        write_raw_desc(mem, self.desc, id, addr, len, flags, next);
    }

    /// Makes `head` available as a chain that owns the slots `ids`; the
    /// head may be outside the table (a hostile avail entry), in which case
    /// the slots are kept by nobody.
    pub fn publish(&mut self, mem: &Mem, head: u16, ids: Vec<u16>) {
        if let Some(c) = self.chains.get_mut(head as usize) {
            *c = ids;
        }
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        fence(Ordering::SeqCst);
        mem.store(
            self.next_avail,
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
        .unwrap();
        fence(Ordering::SeqCst);
    }

    /// Sets the avail index to any value, as a hostile driver may.
    pub fn set_avail_idx(&mut self, mem: &Mem, idx: u16) {
        self.next_avail = idx;
        mem.store(idx, GuestAddress(self.avail + 2), Ordering::Release)
            .unwrap();
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &Mem) -> u16 {
        mem.load(GuestAddress(self.used + 2), Ordering::Acquire)
            .unwrap()
    }

    /// Notifies the device (unless EVENT_IDX says it need not be).
    pub fn kick(&self, mem: &Mem) {
        if self.event_idx {
            let avail_event: u16 = mem
                .load(
                    GuestAddress(self.used + 4 + 8 * u64::from(self.size)),
                    Ordering::Acquire,
                )
                .unwrap();
            // vring_need_event(avail_event, new, old), old being the index
            // at the previous notification.
            let new = self.next_avail;
            let old = self.kicked_at.replace(new);
            if new.wrapping_sub(avail_event).wrapping_sub(1) >= new.wrapping_sub(old) {
                return;
            }
        }
        self.kicked_at.set(self.next_avail);
        self.kick.write(1).unwrap();
    }

    /// Pops one used element: `(head, used length)`.
    pub fn pop_used(&mut self, mem: &Mem) -> Option<(u16, u32)> {
        let idx: u16 = mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .unwrap();
        if idx == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let elem = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let id: u32 = mem.read_obj(GuestAddress(elem)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(elem + 4)).unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            // used_event: interrupt us on the next used element.
            let at = self.avail + 4 + 2 * u64::from(self.size);
            mem.store(self.last_used, GuestAddress(at), Ordering::Release)
                .unwrap();
            fence(Ordering::SeqCst);
        }
        let head = id as u16;
        assert!(
            (head as usize) < self.chains.len(),
            "device returned bad head {id}"
        );
        let ids = std::mem::take(&mut self.chains[head as usize]);
        assert!(!ids.is_empty(), "device returned head {head} twice");
        self.free.extend(ids);
        Some((head, len))
    }

    /// Waits for a used element, up to `timeout`.
    pub fn wait_used(
        &mut self,
        mem: &Mem,
        mode: WaitMode,
        timeout: Duration,
    ) -> Option<(u16, u32)> {
        let deadline = Instant::now() + timeout;
        let mut events = [EpollEvent::default()];
        loop {
            if let Some(u) = self.pop_used(mem) {
                return Some(u);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            match mode {
                WaitMode::Spin => std::hint::spin_loop(),
                WaitMode::Block => {
                    let ms = (deadline - now).as_millis().min(100) as i32;
                    if self.epoll.wait(ms.max(1), &mut events).unwrap_or(0) > 0 {
                        let _ = self.call.read();
                    }
                }
            }
        }
    }
}

/// Writes descriptor `id` of the table at `table`.
pub fn write_raw_desc(mem: &Mem, table: u64, id: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = GuestAddress(table + 16 * u64::from(id));
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&raw, at).unwrap();
}
