//! A VMM and a guest driver in one: memfd-backed guest memory shared with
//! the daemon over a real vhost-user socket, the vrings, and the driver
//! side of every virtio-accel request.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_accel_guest::workloads::Workload;
use virtio_accel_protocol::*;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use zerocopy::FromBytes;

use crate::ring::{Desc, Ring, WaitMode};

pub type Mem = GuestMemoryMmap<()>;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// How to set the guest up.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// Sizes of the guest memory regions, laid out back to back from 0.
    pub regions: Vec<u64>,
    pub queue_size: u16,
    pub event_idx: bool,
    /// Device feature bits (0–23) to accept, if offered.
    pub device_features: u64,
    pub wait: WaitMode,
    pub timeout: Duration,
    /// Size of each buffer placed on the eventq.
    pub event_buf_len: u32,
}

impl Default for GuestOptions {
    fn default() -> Self {
        GuestOptions {
            regions: vec![64 << 20, 64 << 20],
            queue_size: 256,
            event_idx: true,
            device_features: 0xff_ffff,
            wait: WaitMode::Block,
            timeout: Duration::from_secs(20),
            event_buf_len: 32,
        }
    }
}

/// First-fit allocator over a range of guest memory.
struct Alloc {
    free: Vec<(u64, u64)>,
    used: HashMap<u64, u64>,
}

impl Alloc {
    fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let len = len.max(1);
        for i in 0..self.free.len() {
            let (start, size) = self.free[i];
            let a = start.next_multiple_of(align);
            if a + len <= start + size {
                self.free.remove(i);
                if a > start {
                    self.free.push((start, a - start));
                }
                if a + len < start + size {
                    self.free.push((a + len, start + size - a - len));
                }
                self.free.sort();
                self.used.insert(a, len);
                return a;
            }
        }
        panic!("guest memory exhausted allocating {len} bytes");
    }

    fn free(&mut self, addr: u64) {
        let len = self
            .used
            .remove(&addr)
            .expect("free of unallocated address");
        self.free.push((addr, len));
        self.free.sort();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, l) in self.free.drain(..) {
            match merged.last_mut() {
                Some((ps, pl)) if *ps + *pl == s => *pl += l,
                _ => merged.push((s, l)),
            }
        }
        self.free = merged;
    }
}

/// A buffer object as the guest driver knows it.
#[derive(Debug, Clone)]
pub struct GuestBo {
    pub ctx: u32,
    pub handle: u32,
    pub size: u64,
    /// Backing ranges (guest-physical), in buffer order.
    pub ranges: Vec<(u64, u32)>,
}

/// How a buffer's backing is laid out in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One contiguous range.
    Contiguous,
    /// One 4 KiB page per entry, pages in descending address order.
    Scattered,
}

pub struct Guest {
    pub mem: Mem,
    pub frontend: Frontend,
    pub rings: Vec<Ring>,
    alloc: Alloc,
    pub features: u64,
    pub config: Config,
    pub opts: GuestOptions,
    /// Submit chains in flight: head → (request buffer, response buffer).
    pub(crate) submits: HashMap<u16, (u64, u64)>,
    /// Submit completions collected while waiting for something else.
    pub(crate) done: Vec<(u16, Response)>,
    /// Control chains answered while waiting for another: `(head, used)`.
    pub(crate) control_done: Vec<(u16, u32)>,
}

/// The memory table a VMM sends for `mem`.
pub(crate) fn region_infos(mem: &Mem) -> Vec<VhostUserMemoryRegionInfo> {
    mem.iter()
        .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).unwrap())
        .collect()
}

/// Connects to the daemon at `path` as a VMM does: owner, features,
/// protocol features, configuration.
pub(crate) fn handshake(path: &Path, opts: &GuestOptions) -> (Frontend, u64, Config) {
    let mut frontend = Frontend::connect(path, VIRTIO_ACCEL_NUM_QUEUES as u64)
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    frontend.set_owner().unwrap();
    let offered = frontend.get_features().unwrap();
    let mut want = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES | opts.device_features;
    if opts.event_idx {
        want |= VIRTIO_RING_F_EVENT_IDX;
    }
    let features = offered & want;
    frontend.set_features(features).unwrap();
    let proto = frontend.get_protocol_features().unwrap();
    assert!(
        proto.contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK)
    );
    frontend
        .set_protocol_features(
            proto
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::RESET_DEVICE
                    | VhostUserProtocolFeatures::LOG_SHMFD
                    | VhostUserProtocolFeatures::DEVICE_STATE),
        )
        .unwrap();
    let size = std::mem::size_of::<Config>() as u32;
    let (_, cfg) = frontend
        .get_config(
            0,
            size,
            VhostUserConfigFlags::empty(),
            &vec![0u8; size as usize],
        )
        .unwrap();
    let config = Config::read_from_bytes(&cfg).expect("config size");
    (frontend, features, config)
}

/// Hands ring `q` to the daemon as a VMM starts a ring: size, addresses
/// (as the VMM's host addresses), the next available index, call and kick
/// eventfds, then enable.
pub(crate) fn start_ring(frontend: &mut Frontend, mem: &Mem, q: usize, ring: &Ring, base: u16) {
    let hva = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
    frontend.set_vring_num(q, ring.size).unwrap();
    frontend
        .set_vring_addr(
            q,
            &VringConfigData {
                queue_max_size: ring.size,
                queue_size: ring.size,
                flags: 0,
                desc_table_addr: hva(ring.desc),
                used_ring_addr: hva(ring.used),
                avail_ring_addr: hva(ring.avail),
                log_addr: None,
            },
        )
        .unwrap();
    frontend.set_vring_base(q, base).unwrap();
    frontend.set_vring_call(q, &ring.call).unwrap();
    frontend.set_vring_kick(q, &ring.kick).unwrap();
    frontend.set_vring_enable(q, true).unwrap();
}

/// A submit in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pending(pub u16);

impl Guest {
    /// Connects to the daemon at `path` and brings the device up.
    pub fn connect(path: &Path, opts: GuestOptions) -> Guest {
        let (mut frontend, features, config) = handshake(path, &opts);

        // Guest memory: one memfd per region, regions back to back, sealed
        // against resizing as QEMU's memory-backend-memfd seals it (what a
        // backend importing guest memory through udmabuf needs).
        let mut ranges = Vec::new();
        let mut at = 0u64;
        for &len in &opts.regions {
            let mfd = memfd::MemfdOptions::default()
                .allow_sealing(true)
                .create("guest-ram")
                .unwrap();
            mfd.as_file().set_len(len).unwrap();
            mfd.add_seal(memfd::FileSeal::SealShrink).unwrap();
            mfd.add_seal(memfd::FileSeal::SealGrow).unwrap();
            let file = mfd.into_file();
            ranges.push((
                GuestAddress(at),
                len as usize,
                Some(FileOffset::new(file, 0)),
            ));
            at += len;
        }
        let mem = Mem::from_ranges_with_files(ranges.iter().map(|(a, l, f)| (*a, *l, f.clone())))
            .unwrap();
        frontend.set_mem_table(&region_infos(&mem)).unwrap();

        let mut alloc = Alloc {
            free: vec![(0x1000, at - 0x1000)],
            used: HashMap::new(),
        };
        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut rings = Vec::new();
        for q in 0..VIRTIO_ACCEL_NUM_QUEUES {
            let bytes = Ring::bytes(opts.queue_size);
            let base = alloc.alloc(bytes, 4096);
            // Keep each ring inside one region so its host address is valid.
            mem.write_slice(&vec![0u8; bytes as usize], GuestAddress(base))
                .unwrap();
            let ring = Ring::new(base, opts.queue_size, event_idx);
            start_ring(&mut frontend, &mem, q, &ring, 0);
            rings.push(ring);
        }
        let mut g = Guest {
            mem,
            frontend,
            rings,
            alloc,
            features,
            config,
            opts,
            submits: HashMap::new(),
            done: Vec::new(),
            control_done: Vec::new(),
        };
        g.fill_eventq(8);
        g
    }

    /// Places `n` event buffers on the eventq.
    pub fn fill_eventq(&mut self, n: usize) {
        let len = self.opts.event_buf_len;
        for _ in 0..n {
            let buf = self.alloc.alloc(len.into(), 8);
            let q = VIRTIO_ACCEL_VQ_EVENT as usize;
            self.rings[q].add(
                &self.mem,
                &[Desc {
                    addr: buf,
                    len,
                    write: true,
                }],
            );
            self.rings[q].kick(&self.mem);
        }
    }

    /// Sends the memory table again, as a VMM does after a layout change.
    pub fn resend_mem_table(&self) {
        self.frontend
            .set_mem_table(&region_infos(&self.mem))
            .unwrap();
    }

    pub fn has_feature(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    pub fn alloc(&mut self, len: u64, align: u64) -> u64 {
        self.alloc.alloc(len, align)
    }

    pub fn free(&mut self, addr: u64) {
        self.alloc.free(addr)
    }

    /// Sends a chain on queue `q` and waits for it; returns the used length
    /// and the bytes of the writable descriptors.
    pub fn call_chain(&mut self, q: u16, descs: &[Desc]) -> (u32, Vec<u8>) {
        let (mode, timeout) = (self.opts.wait, self.opts.timeout);
        let r = &mut self.rings[q as usize];
        let head = r.add(&self.mem, descs);
        r.kick(&self.mem);
        loop {
            let (h, len) = self.rings[q as usize]
                .wait_used(&self.mem, mode, timeout)
                .unwrap_or_else(|| panic!("queue {q}: no answer within {timeout:?}"));
            if h == head {
                let mut out = Vec::new();
                for d in descs.iter().filter(|d| d.write) {
                    let mut b = vec![0u8; d.len as usize];
                    self.mem.read_slice(&mut b, GuestAddress(d.addr)).unwrap();
                    out.extend(b);
                }
                return (len, out);
            }
            assert_eq!(
                q, VIRTIO_ACCEL_VQ_SUBMIT,
                "unexpected head {h} on queue {q}"
            );
            self.collect_submit(h, len);
        }
    }

    /// Sends raw request bytes with `resp_len` writable bytes on queue `q`.
    pub fn call_raw(&mut self, q: u16, req: &[u8], resp_len: usize) -> (u32, Vec<u8>) {
        let rq = self.alloc.alloc(req.len().max(1) as u64, 8);
        let rs = self.alloc.alloc(resp_len.max(1) as u64, 8);
        self.mem.write_slice(req, GuestAddress(rq)).unwrap();
        self.mem
            .write_slice(&vec![0xeeu8; resp_len], GuestAddress(rs))
            .unwrap();
        let mut descs = Vec::new();
        if !req.is_empty() {
            descs.push(Desc {
                addr: rq,
                len: req.len() as u32,
                write: false,
            });
        }
        if resp_len > 0 {
            descs.push(Desc {
                addr: rs,
                len: resp_len as u32,
                write: true,
            });
        }
        let (len, out) = self.call_chain(q, &descs);
        self.alloc.free(rq);
        self.alloc.free(rs);
        (len, out)
    }

    /// A control request, answered synchronously.
    pub fn call(&mut self, req: &Request) -> Response {
        let t = req.hdr().type_.get();
        let (len, out) = self.call_raw(VIRTIO_ACCEL_VQ_CONTROL, &req.encode(), req.response_size());
        Response::decode(t, &out[..len as usize])
            .unwrap_or_else(|e| panic!("{}: bad response ({len} bytes): {e}", request_name(t)))
    }

    /// The status of a control request.
    pub fn status(&mut self, req: &Request) -> u32 {
        self.call(req).status()
    }

    /// Starts a submit; its response comes from [`Guest::wait_submit`].
    pub fn submit_async(&mut self, req: &Request) -> Pending {
        let bytes = req.encode();
        let rq = self.alloc.alloc(bytes.len() as u64, 8);
        let rs = self.alloc.alloc(32, 8);
        self.mem.write_slice(&bytes, GuestAddress(rq)).unwrap();
        let q = VIRTIO_ACCEL_VQ_SUBMIT as usize;
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
                    len: 32,
                    write: true,
                },
            ],
        );
        self.rings[q].kick(&self.mem);
        self.submits.insert(head, (rq, rs));
        Pending(head)
    }

    fn collect_submit(&mut self, head: u16, len: u32) {
        let (rq, rs) = self
            .submits
            .remove(&head)
            .unwrap_or_else(|| panic!("submit head {head} completed but was not in flight"));
        let mut b = vec![0u8; len as usize];
        self.mem.read_slice(&mut b, GuestAddress(rs)).unwrap();
        self.alloc.free(rq);
        self.alloc.free(rs);
        let r = Response::decode(VIRTIO_ACCEL_CMD_SUBMIT, &b)
            .unwrap_or_else(|e| panic!("bad submit response ({len} bytes): {e}"));
        self.done.push((head, r));
    }

    /// Where the response of a submit in flight will be written.
    pub fn response_buffer(&self, p: Pending) -> u64 {
        self.submits[&p.0].1
    }

    /// Waits for the next submit completion.
    pub fn wait_any_submit(&mut self) -> (Pending, Response) {
        if !self.done.is_empty() {
            let (h, r) = self.done.remove(0);
            return (Pending(h), r);
        }
        let (mode, timeout) = (self.opts.wait, self.opts.timeout);
        let (h, len) = self.rings[VIRTIO_ACCEL_VQ_SUBMIT as usize]
            .wait_used(&self.mem, mode, timeout)
            .unwrap_or_else(|| panic!("no submit completed within {timeout:?}"));
        self.collect_submit(h, len);
        let (h, r) = self.done.pop().unwrap();
        (Pending(h), r)
    }

    /// Waits for one particular submit.
    pub fn wait_submit(&mut self, p: Pending) -> Response {
        loop {
            if let Some(i) = self.done.iter().position(|(h, _)| *h == p.0) {
                return self.done.remove(i).1;
            }
            let (mode, timeout) = (self.opts.wait, self.opts.timeout);
            let (h, len) = self.rings[VIRTIO_ACCEL_VQ_SUBMIT as usize]
                .wait_used(&self.mem, mode, timeout)
                .unwrap_or_else(|| panic!("submit {p:?} not completed within {timeout:?}"));
            self.collect_submit(h, len);
        }
    }

    /// Submits and waits.
    pub fn submit(&mut self, req: &Request) -> Response {
        let p = self.submit_async(req);
        self.wait_submit(p)
    }

    /// Events the device has delivered so far; refills the eventq.
    pub fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let q = VIRTIO_ACCEL_VQ_EVENT as usize;
        while let Some((head, len)) = self.rings[q].pop_used(&self.mem) {
            let addr: u64 = self
                .mem
                .read_obj(GuestAddress(self.rings[q].desc + 16 * u64::from(head)))
                .unwrap();
            // A buffer completed empty carried no event.
            if len > 0 {
                let mut b = vec![0u8; len as usize];
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                out.push(Event::decode(&b).expect("valid event"));
            }
            self.alloc.free(addr);
            self.fill_eventq(1);
        }
        out
    }

    /// Waits until at least one event has arrived.
    pub fn wait_event(&mut self) -> Event {
        let deadline = std::time::Instant::now() + self.opts.timeout;
        loop {
            if let Some(e) = self.events().into_iter().next() {
                return e;
            }
            assert!(std::time::Instant::now() < deadline, "no event arrived");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    // Typed helpers.

    pub fn caps(&mut self) -> RespCaps {
        match self.call(&Request::GetCaps(GetCaps {
            hdr: Hdr::new(VIRTIO_ACCEL_CMD_GET_CAPS, 0),
            ..Default::default()
        })) {
            Response::Caps(c) => c,
            r => panic!("unexpected {r:?}"),
        }
    }

    pub fn ctx_create_status(&mut self, priority: u32) -> (u32, u32) {
        let r = self.call(&Request::CtxCreate(CtxCreate {
            hdr: Hdr::new(VIRTIO_ACCEL_CMD_CTX_CREATE, 0),
            priority: priority.into(),
            padding: 0.into(),
        }));
        (r.status(), r.hdr().ctx_id.get())
    }

    pub fn ctx_create(&mut self) -> u32 {
        let (s, id) = self.ctx_create_status(VIRTIO_ACCEL_PRIORITY_NORMAL);
        assert_eq!(status_name(s), "VIRTIO_ACCEL_RESP_OK");
        assert_ne!(id, 0);
        id
    }

    pub fn ctx_destroy(&mut self, ctx: u32) -> u32 {
        self.status(&Request::CtxDestroy(Hdr::new(
            VIRTIO_ACCEL_CMD_CTX_DESTROY,
            ctx,
        )))
    }

    pub fn bo_create_status(&mut self, ctx: u32, size: u64, flags: u32) -> (u32, u32) {
        match self.call(&Request::BoCreate(BoCreate {
            hdr: Hdr::new(VIRTIO_ACCEL_CMD_BO_CREATE, ctx),
            size: size.into(),
            flags: flags.into(),
            padding: 0.into(),
        })) {
            Response::BoCreate(r) => (r.hdr.type_.get(), r.bo_handle.get()),
            r => panic!("unexpected {r:?}"),
        }
    }

    pub fn bo_req(t: u32, ctx: u32, handle: u32) -> BoReq {
        BoReq {
            hdr: Hdr::new(t, ctx),
            bo_handle: handle.into(),
            padding: 0.into(),
        }
    }

    pub fn attach_request(ctx: u32, handle: u32, ranges: &[(u64, u32)]) -> Request {
        Request::BoAttachBacking {
            req: BoAttachBacking {
                hdr: Hdr::new(VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING, ctx),
                bo_handle: handle.into(),
                nr_entries: (ranges.len() as u32).into(),
            },
            entries: ranges
                .iter()
                .map(|&(a, l)| MemEntry {
                    addr: a.into(),
                    length: l.into(),
                    padding: 0.into(),
                })
                .collect(),
        }
    }

    /// Guest memory for a buffer of `size` bytes.
    pub fn alloc_backing(&mut self, size: u64, layout: Layout) -> Vec<(u64, u32)> {
        match layout {
            Layout::Contiguous => {
                let mut ranges = Vec::new();
                let mut left = size;
                let base = self.alloc.alloc(size, 4096);
                let mut at = base;
                while left > 0 {
                    let n = left.min(1 << 30) as u32;
                    ranges.push((at, n));
                    at += u64::from(n);
                    left -= u64::from(n);
                }
                ranges
            }
            Layout::Scattered => {
                let pages = size.div_ceil(4096);
                let mut addrs: Vec<u64> =
                    (0..pages).map(|_| self.alloc.alloc(4096, 4096)).collect();
                addrs.reverse();
                let mut left = size;
                addrs
                    .into_iter()
                    .map(|a| {
                        let n = left.min(4096);
                        left -= n;
                        (a, n as u32)
                    })
                    .collect()
            }
        }
    }

    /// Creates a buffer and attaches guest backing.
    pub fn bo(&mut self, ctx: u32, size: u64, layout: Layout) -> GuestBo {
        let (s, handle) = self.bo_create_status(ctx, size, 0);
        assert_eq!(status_name(s), "VIRTIO_ACCEL_RESP_OK", "BO_CREATE {size}");
        let ranges = self.alloc_backing(size, layout);
        let s = self.status(&Self::attach_request(ctx, handle, &ranges));
        assert_eq!(status_name(s), "VIRTIO_ACCEL_RESP_OK", "ATTACH_BACKING");
        GuestBo {
            ctx,
            handle,
            size,
            ranges,
        }
    }

    /// Destroys a buffer and frees its guest memory.
    pub fn bo_destroy(&mut self, bo: &GuestBo) -> u32 {
        let s = self.status(&Request::BoDestroy(Self::bo_req(
            VIRTIO_ACCEL_CMD_BO_DESTROY,
            bo.ctx,
            bo.handle,
        )));
        if s == VIRTIO_ACCEL_RESP_OK {
            self.free_backing(&bo.ranges);
        }
        s
    }

    /// Frees guest memory allocated by [`Guest::alloc_backing`].
    pub fn free_backing(&mut self, ranges: &[(u64, u32)]) {
        let mut starts: Vec<u64> = ranges.iter().map(|r| r.0).collect();
        starts.retain(|a| self.alloc.used.contains_key(a));
        for a in starts {
            self.alloc.free(a);
        }
    }

    pub fn write_bo(&self, bo: &GuestBo, off: u64, data: &[u8]) {
        self.for_bo_range(bo, off, data.len(), |gpa, at, n| {
            self.mem
                .write_slice(&data[at..at + n], GuestAddress(gpa))
                .unwrap();
        });
    }

    pub fn read_bo(&self, bo: &GuestBo, off: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.for_bo_range(bo, off, len, |gpa, at, n| {
            self.mem
                .read_slice(&mut out[at..at + n], GuestAddress(gpa))
                .unwrap();
        });
        out
    }

    fn for_bo_range(
        &self,
        bo: &GuestBo,
        off: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, usize),
    ) {
        let mut pos = 0u64;
        let mut done = 0usize;
        for &(addr, l) in &bo.ranges {
            let (s, e) = (pos, pos + u64::from(l));
            pos = e;
            let want_s = off + done as u64;
            if done == len || want_s >= e || want_s < s {
                continue;
            }
            let n = ((e - want_s) as usize).min(len - done);
            f(addr + (want_s - s), done, n);
            done += n;
        }
        assert_eq!(done, len, "range outside buffer");
    }

    /// A submit of `n` NOPs inline, waiting on `in_fences`.
    pub fn nop_request(ctx: u32, fence: u64, in_fences: &[(u32, u64)], n: usize) -> Request {
        let p = snpu::Program {
            ops: vec![snpu::OpDesc::Nop; n],
        };
        Self::submit_request(ctx, fence, &[], in_fences, CmdSource::Inline(p.encode()))
    }

    /// Creates the buffers of one n×n×n f32 MATMUL whose inputs are a
    /// single element each (stride 0, 4-byte buffers) and returns its
    /// submit as fence 1: n³ multiply-accumulates from 8 bytes of input.
    pub fn broadcast_matmul(&mut self, ctx: u32, n: u32) -> Request {
        let a = self.bo(ctx, 4, Layout::Contiguous);
        let b = self.bo(ctx, 4, Layout::Contiguous);
        let c = self.bo(ctx, u64::from(n) * u64::from(n) * 4, Layout::Contiguous);
        self.write_bo(&a, 0, &1f32.to_le_bytes());
        self.write_bo(&b, 0, &1f32.to_le_bytes());
        let mut ta = snpu::TensorDesc::dense(0, snpu::DType::F32, 0, &[n, n]);
        ta.strides = [0; 4];
        let mut tb = ta;
        tb.bo_index = 1;
        let p = snpu::Program {
            ops: vec![snpu::OpDesc::MatMul {
                a: ta,
                b: tb,
                out: snpu::TensorDesc::dense(2, snpu::DType::F32, 0, &[n, n]),
                quant: None,
            }],
        };
        let bos = [
            (a.handle, VIRTIO_ACCEL_ACCESS_READ),
            (b.handle, VIRTIO_ACCEL_ACCESS_READ),
            (c.handle, VIRTIO_ACCEL_ACCESS_WRITE),
        ];
        Self::submit_request(ctx, 1, &bos, &[], CmdSource::Inline(p.encode()))
    }

    /// A submit request for `cmd` (inline if it fits and the feature was
    /// negotiated, else from `cmd_bo`).
    pub fn submit_request(
        ctx: u32,
        fence: u64,
        bos: &[(u32, u32)],
        in_fences: &[(u32, u64)],
        cmd: CmdSource,
    ) -> Request {
        let (flags, cmd_bo, off, size, inline_cmd) = match cmd {
            CmdSource::Inline(v) => (VIRTIO_ACCEL_SUBMIT_F_INLINE, 0, 0, v.len() as u32, v),
            CmdSource::Bo {
                handle,
                offset,
                size,
            } => (0, handle, offset, size, Vec::new()),
        };
        Request::Submit {
            req: Submit {
                hdr: Hdr::new(VIRTIO_ACCEL_CMD_SUBMIT, ctx),
                out_fence: fence.into(),
                cmd_bo_handle: cmd_bo.into(),
                flags: flags.into(),
                cmd_offset: off.into(),
                cmd_size: size.into(),
                nr_bos: (bos.len() as u32).into(),
                nr_in_fences: (in_fences.len() as u32).into(),
                padding: 0.into(),
            },
            bos: bos
                .iter()
                .map(|&(h, a)| SubmitBo {
                    bo_handle: h.into(),
                    access: a.into(),
                })
                .collect(),
            in_fences: in_fences
                .iter()
                .map(|&(c, s)| FenceRef {
                    ctx_id: c.into(),
                    padding: 0.into(),
                    seqno: s.into(),
                })
                .collect(),
            inline_cmd,
        }
    }
}

/// Where a submit's command stream comes from.
#[derive(Debug, Clone)]
pub enum CmdSource {
    Inline(Vec<u8>),
    Bo { handle: u32, offset: u64, size: u32 },
}

/// A workload's buffers, created and filled in a context.
pub struct Loaded {
    pub bos: Vec<GuestBo>,
    pub cmd: GuestBo,
    pub cmd_len: u32,
}

impl Guest {
    /// Creates the workload's buffers (and a buffer for its command stream)
    /// and fills them.
    pub fn load(&mut self, ctx: u32, w: &Workload, layout: Layout) -> Loaded {
        let bos: Vec<GuestBo> = w
            .bos
            .iter()
            .map(|spec| {
                let b = self.bo(ctx, spec.size, layout);
                if !spec.init.is_empty() {
                    self.write_bo(&b, 0, &spec.init);
                }
                b
            })
            .collect();
        let stream = w.program.encode();
        let cmd = self.bo(ctx, stream.len().next_multiple_of(4096) as u64, layout);
        self.write_bo(&cmd, 0, &stream);
        Loaded {
            bos,
            cmd,
            cmd_len: stream.len() as u32,
        }
    }

    /// The submit request that runs a loaded workload.
    pub fn run_request(ctx: u32, fence: u64, w: &Workload, l: &Loaded) -> Request {
        let list: Vec<(u32, u32)> = l
            .bos
            .iter()
            .zip(&w.bos)
            .map(|(b, s)| (b.handle, s.access))
            .collect();
        Self::submit_request(
            ctx,
            fence,
            &list,
            &[],
            CmdSource::Bo {
                handle: l.cmd.handle,
                offset: 0,
                size: l.cmd_len,
            },
        )
    }

    /// Reads a workload's output.
    pub fn output(&self, w: &Workload, l: &Loaded) -> Vec<u8> {
        let (i, off) = w.output;
        self.read_bo(&l.bos[i], off, w.output_len())
    }
}
