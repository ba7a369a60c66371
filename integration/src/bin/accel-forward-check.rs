//! The `accel` backend's data path, run for real on an accel node: a VM's
//! buffers, scattered over the pages of a sealed memfd as guest memory
//! is, become dma-bufs through udmabuf (the daemon's own code,
//! `backend::accel::udmabuf`), are imported into the node (PRIME) and are
//! read and written in place by the reference workloads' jobs. Each
//! output is read back from the memfd and checked against the CPU
//! reference; nothing of a buffer is copied by this program after the
//! guest wrote its inputs.
//!
//! Also checks that memory udmabuf cannot take is refused with its cause
//! before anything reaches the kernel: a file not sealed against
//! shrinking, and ranges not page-aligned.
//!
//! `accel-forward-check [DEVICE]` (default `/dev/accel/accel0`); prints
//! one line per workload and exits non-zero on the first failure. Needs
//! `/dev/udmabuf` and root (the real-guest test runs it in the guest).

use std::fs::File;
use std::os::fd::AsFd;
use std::process::ExitCode;

use vhost_device_accel::backend::accel::udmabuf::{Udmabuf, UdmabufError};
use vhost_device_accel::memory::{Backing, GuestMem, MemStats};
use virtio_accel_guest::accel::{Accel, Bo, JobBo};
use virtio_accel_guest::workloads::{self, Rng, Workload};
use vm_memory::{FileOffset, GuestAddress};

const PAGE: u64 = 4096;
/// Where the guest memory region starts, as a VM's RAM above 1 MiB.
const BASE: u64 = 1 << 20;

/// Guest memory: one region over a memfd, sealed as QEMU seals it (or not).
fn guest_memory(bytes: u64, sealed: bool) -> Result<GuestMem, String> {
    let f = memfd::MemfdOptions::default()
        .allow_sealing(true)
        .create("guest-ram")
        .map_err(|e| format!("memfd: {e}"))?;
    f.as_file()
        .set_len(bytes)
        .map_err(|e| format!("memfd size: {e}"))?;
    if sealed {
        f.add_seal(memfd::FileSeal::SealShrink)
            .and_then(|()| f.add_seal(memfd::FileSeal::SealGrow))
            .map_err(|e| format!("memfd seals: {e}"))?;
    }
    let file: File = f.into_file();
    GuestMem::from_ranges_with_files([(
        GuestAddress(BASE),
        bytes as usize,
        Some(FileOffset::new(file, 0)),
    )])
    .map_err(|e| format!("guest memory: {e}"))
}

/// Each buffer's pages, taken from a shuffled list of the region's pages
/// (runs of one to four pages), as a guest's allocator leaves them.
fn scatter(sizes: &[u64], pages: u64, seed: u64) -> Vec<Backing> {
    let mut order: Vec<u64> = (0..pages).collect();
    let mut rng = Rng::new(seed);
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut next = order.into_iter();
    sizes
        .iter()
        .map(|&size| {
            let mut ranges: Vec<(u64, u32)> = Vec::new();
            for _ in 0..size.div_ceil(PAGE) {
                let p = next.next().expect("enough pages");
                let addr = BASE + p * PAGE;
                match ranges.last_mut() {
                    Some((a, l)) if *a + u64::from(*l) == addr && *l < 4 * PAGE as u32 => {
                        *l += PAGE as u32
                    }
                    _ => ranges.push((addr, PAGE as u32)),
                }
            }
            Backing::new(ranges)
        })
        .collect()
}

fn run(dev: &Accel, udmabuf: &Udmabuf, w: &Workload, seed: u64) -> Result<String, String> {
    let name = w.name;
    let sizes: Vec<u64> = w
        .bos
        .iter()
        .map(|b| b.size.next_multiple_of(PAGE))
        .collect();
    let pages = sizes.iter().map(|s| s / PAGE).sum::<u64>() + 16;
    let mem = guest_memory(pages * PAGE, true)?;
    let backings = scatter(&sizes, pages, seed);
    let stats = MemStats::default();
    let bo_mem = |b: &Backing| b.resolve(&mem, &stats).map_err(|e| format!("{name}: {e}"));
    let mut bos = Vec::new();
    let mut ranges = 0;
    for (spec, b) in w.bos.iter().zip(&backings) {
        bo_mem(b)?
            .write(0, &spec.init)
            .map_err(|e| format!("{name}: guest write: {e}"))?;
        let dmabuf = udmabuf
            .create(b, &mem)
            .map_err(|e| format!("{name}: udmabuf: {e}"))?;
        let bo = dev
            .prime_import(dmabuf.as_fd())
            .map_err(|e| format!("{name}: PRIME import: {e}"))?;
        if bo.size != b.len() {
            return Err(format!("{name}: imported {} bytes of {}", bo.size, b.len()));
        }
        ranges += b.entries();
        bos.push(JobBo {
            bo,
            access: spec.access,
        });
    }
    // The command stream is the daemon's to copy: it goes in a buffer of
    // the node's own.
    let stream = w.program.encode();
    let cmd: Bo = dev
        .bo_create(stream.len() as u64)
        .map_err(|e| format!("{name}: BO_CREATE: {e}"))?;
    dev.map(cmd)
        .map_err(|e| format!("{name}: mmap: {e}"))?
        .write(0, &stream);
    let done = dev
        .syncobj_create()
        .map_err(|e| format!("{name}: SYNCOBJ_CREATE: {e}"))?;
    dev.submit(&bos, cmd, 0, stream.len() as u32, &[], done)
        .map_err(|e| format!("{name}: SUBMIT: {e}"))?;
    dev.wait_job(done, 30_000)
        .map_err(|e| format!("{name}: job: {e}"))?;
    let (i, off) = w.output;
    let mut out = vec![0u8; w.output_len()];
    bo_mem(&backings[i])?
        .read(off, &mut out)
        .map_err(|e| format!("{name}: guest read: {e}"))?;
    w.check(&out)?;
    for b in bos.iter().map(|b| b.bo).chain([cmd]) {
        dev.bo_close(b)
            .map_err(|e| format!("{name}: GEM_CLOSE: {e}"))?;
    }
    dev.syncobj_destroy(done)
        .map_err(|e| format!("{name}: SYNCOBJ_DESTROY: {e}"))?;
    Ok(format!(
        "{name}: {} buffers over {ranges} guest ranges, imported through udmabuf; output read from guest memory matches the CPU reference",
        bos.len()
    ))
}

/// Memory udmabuf would refuse is refused here first, with its cause.
fn refusals(udmabuf: &Udmabuf) -> Result<(), String> {
    let unsealed = guest_memory(16 * PAGE, false)?;
    match udmabuf.create(&Backing::new(vec![(BASE, PAGE as u32)]), &unsealed) {
        Err(UdmabufError::NotSealed) => {}
        r => return Err(format!("unsealed memory: {:?}", r.map(|_| ()))),
    }
    let sealed = guest_memory(16 * PAGE, true)?;
    match udmabuf.create(&Backing::new(vec![(BASE + 512, PAGE as u32)]), &sealed) {
        Err(UdmabufError::Unaligned { .. }) => {}
        r => return Err(format!("unaligned range: {:?}", r.map(|_| ()))),
    }
    Ok(())
}

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/dev/accel/accel0".into());
    let result = (|| -> Result<(), String> {
        let dev = Accel::open(&path).map_err(|e| format!("{path}: {e}"))?;
        let udmabuf = Udmabuf::open().map_err(|e| e.to_string())?;
        for (k, w) in workloads::standard().iter().enumerate() {
            println!(
                "accel-forward-check: {}",
                run(&dev, &udmabuf, w, k as u64 + 1)?
            );
        }
        refusals(&udmabuf)?;
        println!(
            "accel-forward-check: unsealed and unaligned guest memory refused with their cause"
        );
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accel-forward-check: {e}");
            println!("accel-forward-check: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
