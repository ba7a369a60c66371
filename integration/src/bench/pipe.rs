//! Raw chains kept in flight on one queue: the same driver work for the
//! daemon and for the echo floor, so a ratio between them compares the
//! devices, not two driver paths.

use std::collections::HashMap;
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress};

use crate::guest::Guest;
use crate::ring::Desc;

/// Buffers for `depth` chains of a request of up to `req_max` bytes and a
/// response area of `resp_len`, allocated once and reused.
pub struct Pipe {
    q: u16,
    resp_len: u32,
    slots: Vec<(u64, u64)>,
    free: Vec<usize>,
    /// Head in flight → its slot.
    inflight: HashMap<u16, usize>,
}

impl Pipe {
    pub fn new(g: &mut Guest, q: u16, depth: usize, req_max: usize, resp_len: u32) -> Pipe {
        let slots = (0..depth)
            .map(|_| (g.alloc(req_max as u64, 8), g.alloc(resp_len.into(), 8)))
            .collect();
        Pipe {
            q,
            resp_len,
            slots,
            free: (0..depth).rev().collect(),
            inflight: HashMap::new(),
        }
    }

    /// Sends `n` chains, keeping every slot in flight, and returns the
    /// seconds until the last completed. `make(i)` gives chain `i`'s
    /// request; `check(used_len, response)` sees each response.
    pub fn run(
        &mut self,
        g: &mut Guest,
        n: u64,
        mut make: impl FnMut(u64) -> Vec<u8>,
        mut check: impl FnMut(u32, &[u8]),
    ) -> f64 {
        let q = self.q as usize;
        let (mode, timeout) = (g.opts.wait, g.opts.timeout);
        let mut resp = vec![0u8; self.resp_len as usize];
        let (mut sent, mut done) = (0u64, 0u64);
        let t = Instant::now();
        while done < n {
            while sent < n {
                let Some(slot) = self.free.pop() else { break };
                let (rq, rs) = self.slots[slot];
                let req = make(sent);
                g.mem.write_slice(&req, GuestAddress(rq)).unwrap();
                let head = g.rings[q].add(
                    &g.mem,
                    &[
                        Desc {
                            addr: rq,
                            len: req.len() as u32,
                            write: false,
                        },
                        Desc {
                            addr: rs,
                            len: self.resp_len,
                            write: true,
                        },
                    ],
                );
                g.rings[q].kick(&g.mem);
                self.inflight.insert(head, slot);
                sent += 1;
            }
            let (head, len) = g.rings[q]
                .wait_used(&g.mem, mode, timeout)
                .expect("a chain completed in time");
            let slot = self.inflight.remove(&head).expect("a head in flight");
            let used = (len as usize).min(resp.len());
            g.mem
                .read_slice(&mut resp[..used], GuestAddress(self.slots[slot].1))
                .unwrap();
            check(len, &resp[..used]);
            self.free.push(slot);
            done += 1;
        }
        t.elapsed().as_secs_f64()
    }
}
