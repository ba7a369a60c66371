//! Guest memory as a dma-buf, without a copy: a buffer's guest-physical
//! ranges are found in the files behind guest memory (the memfds the VMM
//! shares over vhost-user), coalesced, and handed to `/dev/udmabuf`
//! (`UDMABUF_CREATE_LIST`), which pins those pages and exports them as one
//! dma-buf a host accel driver imports (PRIME).
//!
//! udmabuf takes only shmem or hugetlbfs files sealed against shrinking
//! (`F_SEAL_SHRINK`) and not against writing, page-aligned ranges, at most
//! `list_limit` ranges and `size_limit_mb` MiB per buffer (module
//! parameters). Each is checked here first, so a refusal names its cause;
//! nothing is ever copied instead.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{Backing, GuestMem};

const PAGE: u64 = 4096;

/// Why guest memory cannot become a dma-buf here. Each names what the
/// operator or the VMM must change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UdmabufError {
    #[error("backing range {addr:#x}+{len:#x} is not page-aligned")]
    Unaligned { addr: u64, len: u64 },
    #[error("guest memory at {0:#x} is not in the memory table")]
    NotMapped(u64),
    #[error(
        "guest memory at {0:#x} is not backed by a shared file the host can import \
         (use a memfd memory backend, e.g. QEMU -object memory-backend-memfd,share=on)"
    )]
    NoFile(u64),
    #[error(
        "guest memory file is not sealed against shrinking (F_SEAL_SHRINK); udmabuf refuses it \
         (QEMU's memory-backend-memfd seals by default; Cloud Hypervisor's guest memory is not sealed)"
    )]
    NotSealed,
    #[error("guest memory file is sealed against writing; udmabuf refuses it")]
    WriteSealed,
    #[error("{n} ranges after coalescing, udmabuf's list_limit is {limit}")]
    TooManyRanges { n: usize, limit: usize },
    #[error("{bytes} bytes, udmabuf's size_limit_mb is {limit_mb} MiB")]
    TooLarge { bytes: u64, limit_mb: u64 },
    #[error("/dev/udmabuf: {0}")]
    Device(String),
}

/// One range of a file behind guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRange {
    pub fd: RawFd,
    pub offset: u64,
    pub len: u64,
}

/// Finds each guest-physical range of `backing` in the files behind
/// `mem`, splitting at region ends and merging neighbours in the same
/// file. Every range must be page-aligned.
pub fn file_ranges(backing: &Backing, mem: &GuestMem) -> Result<Vec<FileRange>, UdmabufError> {
    let mut out: Vec<FileRange> = Vec::new();
    for &(addr, len) in backing.ranges() {
        let len = u64::from(len);
        if addr % PAGE != 0 || len % PAGE != 0 {
            return Err(UdmabufError::Unaligned { addr, len });
        }
        let mut at = addr;
        let end = addr.checked_add(len).ok_or(UdmabufError::NotMapped(addr))?;
        while at < end {
            let r = mem
                .find_region(GuestAddress(at))
                .ok_or(UdmabufError::NotMapped(at))?;
            let fo = r.file_offset().ok_or(UdmabufError::NoFile(at))?;
            let in_region = at - r.start_addr().raw_value();
            let n = (r.len() - in_region).min(end - at);
            let piece = FileRange {
                fd: fo.file().as_raw_fd(),
                offset: fo.start() + in_region,
                len: n,
            };
            match out.last_mut() {
                Some(p) if p.fd == piece.fd && p.offset + p.len == piece.offset => p.len += n,
                _ => out.push(piece),
            }
            at += n;
        }
    }
    Ok(out)
}

/// The module's limits, as it reports them (its defaults otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub list_limit: usize,
    pub size_limit_mb: u64,
}

impl Limits {
    pub fn read() -> Limits {
        let param = |name: &str, default: u64| {
            std::fs::read_to_string(format!("/sys/module/udmabuf/parameters/{name}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(default)
        };
        Limits {
            list_limit: param("list_limit", 1024) as usize,
            size_limit_mb: param("size_limit_mb", 64),
        }
    }

    pub fn check(&self, ranges: &[FileRange]) -> Result<(), UdmabufError> {
        if ranges.len() > self.list_limit {
            return Err(UdmabufError::TooManyRanges {
                n: ranges.len(),
                limit: self.list_limit,
            });
        }
        let bytes = ranges.iter().map(|r| r.len).sum::<u64>();
        if bytes > self.size_limit_mb << 20 {
            return Err(UdmabufError::TooLarge {
                bytes,
                limit_mb: self.size_limit_mb,
            });
        }
        Ok(())
    }
}

/// Checks that a file behind guest memory can be imported: sealed against
/// shrinking, not against writing.
pub fn check_seals(fd: BorrowedFd<'_>) -> Result<(), UdmabufError> {
    // SAFETY: F_GET_SEALS only reads the file's seals; `fd` is open.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        return Err(UdmabufError::NotSealed);
    }
    if seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) != 0 {
        return Err(UdmabufError::WriteSealed);
    }
    Ok(())
}

// struct udmabuf_create_list { __u32 flags; __u32 count;
//     struct udmabuf_create_item { __u32 memfd; __u32 __pad; __u64 offset;
//     __u64 size; } list[]; } (include/uapi/linux/udmabuf.h)
const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;
/// `_IOW('u', 0x43, struct udmabuf_create_list)`.
pub const UDMABUF_CREATE_LIST: libc::c_ulong = 0x4008_7543;

/// `/dev/udmabuf`, opened once.
pub struct Udmabuf {
    dev: File,
    limits: Limits,
}

impl Udmabuf {
    pub fn open() -> Result<Udmabuf, UdmabufError> {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/udmabuf")
            .map_err(|e| UdmabufError::Device(e.to_string()))?;
        Ok(Udmabuf {
            dev,
            limits: Limits::read(),
        })
    }

    /// The dma-buf of `backing` in `mem`, after every check above.
    pub fn create(&self, backing: &Backing, mem: &GuestMem) -> Result<OwnedFd, UdmabufError> {
        let ranges = file_ranges(backing, mem)?;
        self.limits.check(&ranges)?;
        let mut fds: Vec<RawFd> = ranges.iter().map(|r| r.fd).collect();
        fds.sort_unstable();
        fds.dedup();
        for fd in fds {
            // SAFETY: the fd belongs to a guest memory region `mem` holds
            // open for as long as this borrow.
            check_seals(unsafe { BorrowedFd::borrow_raw(fd) })?;
        }
        // The list as u64 words: flags | count << 32, then per item
        // memfd | pad << 32, offset, size (little-endian, as the kernel
        // reads its u32 pairs on this target).
        let mut buf: Vec<u64> = Vec::with_capacity(1 + 3 * ranges.len());
        buf.push(u64::from(UDMABUF_FLAGS_CLOEXEC) | ((ranges.len() as u64) << 32));
        for r in &ranges {
            buf.push(r.fd as u32 as u64);
            buf.push(r.offset);
            buf.push(r.len);
        }
        // SAFETY: `buf` holds a udmabuf_create_list header followed by
        // `count` udmabuf_create_item, laid out as the kernel reads them
        // (u32 flags, u32 count; u32 memfd, u32 pad, u64 offset, u64 size),
        // and outlives the call. The kernel only reads it.
        let fd = unsafe {
            libc::ioctl(
                self.dev.as_fd().as_raw_fd(),
                UDMABUF_CREATE_LIST,
                buf.as_ptr(),
            )
        };
        if fd < 0 {
            return Err(UdmabufError::Device(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        // SAFETY: the ioctl returned a new dma-buf fd we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::FileOffset;

    fn memfd(len: u64, seals: &[memfd::FileSeal]) -> File {
        let f = memfd::MemfdOptions::default()
            .allow_sealing(true)
            .create("guest")
            .unwrap();
        f.as_file().set_len(len).unwrap();
        for &seal in seals {
            f.add_seal(seal).unwrap();
        }
        f.into_file()
    }

    /// Two regions (0..1 MiB in file a at 0, 1..3 MiB in file b at 4 MiB).
    fn mem() -> (GuestMem, RawFd, RawFd) {
        let a = memfd(1 << 20, &[memfd::FileSeal::SealShrink]);
        let b = memfd(8 << 20, &[memfd::FileSeal::SealShrink]);
        let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
        let m = GuestMem::from_ranges_with_files([
            (GuestAddress(0), 1 << 20, Some(FileOffset::new(a, 0))),
            (
                GuestAddress(1 << 20),
                2 << 20,
                Some(FileOffset::new(b, 4 << 20)),
            ),
        ])
        .unwrap();
        (m, fa, fb)
    }

    #[test]
    fn ranges_are_found_in_their_files_split_at_regions_and_merged() {
        let (m, fa, fb) = mem();
        // Two pages at the end of region 0 then into region 1, then the
        // page after them (merges), then one back in region 0.
        let b = Backing::new(vec![
            (0xfe000, 0x3000),
            (0x101000, 0x1000),
            (0x2000, 0x1000),
        ]);
        assert_eq!(
            file_ranges(&b, &m).unwrap(),
            vec![
                FileRange {
                    fd: fa,
                    offset: 0xfe000,
                    len: 0x2000
                },
                FileRange {
                    fd: fb,
                    offset: 4 << 20,
                    len: 0x2000
                },
                FileRange {
                    fd: fa,
                    offset: 0x2000,
                    len: 0x1000
                },
            ]
        );
    }

    #[test]
    fn unaligned_unmapped_and_fileless_memory_is_refused_with_its_cause() {
        let (m, ..) = mem();
        assert_eq!(
            file_ranges(&Backing::new(vec![(0x1800, 0x1000)]), &m),
            Err(UdmabufError::Unaligned {
                addr: 0x1800,
                len: 0x1000
            })
        );
        assert_eq!(
            file_ranges(&Backing::new(vec![(0x1000, 0x800)]), &m),
            Err(UdmabufError::Unaligned {
                addr: 0x1000,
                len: 0x800
            })
        );
        assert_eq!(
            file_ranges(&Backing::new(vec![(3 << 20, 0x1000)]), &m),
            Err(UdmabufError::NotMapped(3 << 20))
        );
        let anon = GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(
            file_ranges(&Backing::new(vec![(0, 0x1000)]), &anon),
            Err(UdmabufError::NoFile(0))
        );
    }

    #[test]
    fn seals_and_limits_are_checked() {
        let ok = memfd(4096, &[memfd::FileSeal::SealShrink]);
        assert_eq!(check_seals(ok.as_fd()), Ok(()));
        let unsealed = memfd(4096, &[]);
        assert_eq!(check_seals(unsealed.as_fd()), Err(UdmabufError::NotSealed));
        let ro = memfd(
            4096,
            &[memfd::FileSeal::SealShrink, memfd::FileSeal::SealWrite],
        );
        assert_eq!(check_seals(ro.as_fd()), Err(UdmabufError::WriteSealed));
        let l = Limits {
            list_limit: 2,
            size_limit_mb: 1,
        };
        let r = |len| FileRange {
            fd: 3,
            offset: 0,
            len,
        };
        assert_eq!(l.check(&[r(4096), r(4096)]), Ok(()));
        assert_eq!(
            l.check(&[r(4096); 3]),
            Err(UdmabufError::TooManyRanges { n: 3, limit: 2 })
        );
        assert_eq!(
            l.check(&[r(1 << 20), r(4096)]),
            Err(UdmabufError::TooLarge {
                bytes: (1 << 20) + 4096,
                limit_mb: 1
            })
        );
    }
}
