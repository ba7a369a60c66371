//! The software NPU's command stream: parse, validate against fuzzer-sized
//! buffers, and execute what validation admits on the real software NPU
//! over real guest memory. Validation must make execution safe: no panic,
//! no write outside the job's buffers (guard bytes between buffers are
//! checked), and no allocation beyond the job's admitted working memory
//! (run with -malloc_limit_mb far below what an unchecked op allocates).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use vhost_device_accel::backend::sim::{Exec, Progress, Tile};
use vhost_device_accel::memory::{Backing, GuestMem, MemStats};
use virtio_accel_protocol::snpu;
use vm_memory::{Bytes, GuestAddress};

/// Working memory a fuzzed job may have: small, so that any allocation of
/// an op that escaped the accounting shows up against -malloc_limit_mb.
const MAX_JOB_MEMORY: u64 = 4 << 20;
/// Work (elements touched plus multiply-accumulates) above which a job is
/// validated but not executed, to keep executions fast.
const MAX_COST: u64 = 1 << 22;
const SLOT: u64 = 0x2_0000;

/// Counts live heap bytes and their peak, so the target can check that an
/// execution allocates no more than the working memory validation
/// admitted (`OpDesc::work_bytes` is an upper bound, not an estimate).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;
const GUARD: u8 = 0xa5;

/// Input: `nr_bos` (u8), four times (`size - 1` le16, access u8), `fill`
/// (u8), then the command stream.
struct Input<'a> {
    bos: [(u16, u8); 4],
    nr_bos: u8,
    fill: u8,
    cmd: &'a [u8],
}

fn input(data: &[u8]) -> Option<Input<'_>> {
    let (head, cmd) = data.split_first_chunk::<14>()?;
    let mut bos = [(0u16, 0u8); 4];
    for (i, b) in bos.iter_mut().enumerate() {
        let at = 1 + 3 * i;
        *b = (u16::from_le_bytes([head[at], head[at + 1]]), head[at + 2]);
    }
    Some(Input {
        bos,
        nr_bos: head[0],
        fill: head[13],
        cmd,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = input(data) else {
        return;
    };
    let Ok(program) = snpu::parse(input.cmd) else {
        return;
    };
    // Whatever parses encodes back to a stream that parses the same.
    assert_eq!(snpu::parse(&program.encode()).as_ref(), Ok(&program));
    let n = usize::from(input.nr_bos % 5);
    let shapes: Vec<(u64, u32)> = input.bos[..n]
        .iter()
        .map(|&(s, a)| (u64::from(s) + 1, u32::from(a % 3) + 1))
        .collect();
    // What the software NPU's prepare does.
    if program.check_bounds(&shapes).is_err() {
        return;
    }
    let work = program.work_bytes();
    if work > MAX_JOB_MEMORY || program.cost() > MAX_COST {
        return;
    }
    // Buffer i lives at i * SLOT, the rest of its slot is guard bytes.
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), SLOT as usize * 4)]).unwrap();
    mem.write_slice(&vec![GUARD; SLOT as usize * 4], GuestAddress(0))
        .unwrap();
    let stats = MemStats::default();
    let backings: Vec<Backing> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(size, _))| {
            let at = i as u64 * SLOT;
            let init: Vec<u8> = (0..size).map(|j| (j as u8) ^ input.fill).collect();
            mem.write_slice(&init, GuestAddress(at)).unwrap();
            Backing::new(vec![(at, size as u32)])
        })
        .collect();
    let bos: Vec<_> = backings
        .iter()
        .map(|b| b.resolve(&mem, &stats).unwrap())
        .collect();
    // Tiles from whole ops down to a few elements: every size of step.
    let k = u32::from(input.fill % 16);
    let tile = if k == 15 {
        Tile::WHOLE
    } else {
        Tile {
            macs: 1 << (6 + k),
            elems: 1 << (2 + k % 12),
        }
    };
    // The job as the device holds it from SUBMIT on (the validated program
    // is the device's own copy); only what running it allocates counts.
    let mut exec = Exec::new(program.clone(), tile);
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    while let Ok(Progress::Paused) = exec.run(&bos, &mut || true) {}
    let used = PEAK.load(Ordering::Relaxed).saturating_sub(base) as u64;
    assert!(
        used <= work,
        "execution allocated {used} bytes, validation admitted {work}"
    );
    for (i, &(size, _)) in shapes.iter().enumerate() {
        let mut guard = vec![0u8; (SLOT - size) as usize];
        mem.read_slice(&mut guard, GuestAddress(i as u64 * SLOT + size))
            .unwrap();
        assert!(
            guard.iter().all(|&b| b == GUARD),
            "write outside buffer {i}"
        );
    }
});
