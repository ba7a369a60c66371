//! A safe interface to a virtio-accel node (`/dev/accel/accelN`): what a
//! guest ML runtime links. Buffers are GEM objects mapped into the process;
//! jobs signal DRM syncobjs.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::job::JobStatus;
use crate::uapi::*;

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const fn drm_ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'd' as u32) << 8) | nr
}

#[repr(C)]
#[derive(Default)]
struct DrmVersion {
    major: i32,
    minor: i32,
    patch: i32,
    name_len: usize,
    name: u64,
    date_len: usize,
    date: u64,
    desc_len: usize,
    desc: u64,
}

#[repr(C)]
#[derive(Default)]
struct DrmHandle {
    handle: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct DrmSyncobjWait {
    handles: u64,
    timeout_nsec: i64,
    count_handles: u32,
    flags: u32,
    first_signaled: u32,
    pad: u32,
    deadline_nsec: u64,
}

#[repr(C)]
#[derive(Default)]
struct DrmPrimeHandle {
    handle: u32,
    flags: u32,
    fd: i32,
}

const DRM_IOCTL_VERSION: u32 = drm_ioc(IOC_READ | IOC_WRITE, 0x00, size_of::<DrmVersion>());
const DRM_IOCTL_PRIME_FD_TO_HANDLE: u32 =
    drm_ioc(IOC_READ | IOC_WRITE, 0x2e, size_of::<DrmPrimeHandle>());
const DRM_IOCTL_GEM_CLOSE: u32 = drm_ioc(IOC_WRITE, 0x09, size_of::<DrmHandle>());
const DRM_IOCTL_SYNCOBJ_CREATE: u32 = drm_ioc(IOC_READ | IOC_WRITE, 0xbf, size_of::<DrmHandle>());
const DRM_IOCTL_SYNCOBJ_DESTROY: u32 = drm_ioc(IOC_READ | IOC_WRITE, 0xc0, size_of::<DrmHandle>());
const DRM_IOCTL_SYNCOBJ_WAIT: u32 =
    drm_ioc(IOC_READ | IOC_WRITE, 0xc3, size_of::<DrmSyncobjWait>());
const DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL: u32 = 1;

#[repr(C)]
#[derive(Default)]
struct DrmSyncobjHandle {
    handle: u32,
    flags: u32,
    fd: i32,
    pad: u32,
}

/// `struct sync_file_info` of `<linux/sync_file.h>`.
#[repr(C)]
#[derive(Default)]
struct SyncFileInfo {
    name: [u8; 32],
    status: i32,
    flags: u32,
    num_fences: u32,
    pad: u32,
    sync_fence_info: u64,
}

const DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD: u32 =
    drm_ioc(IOC_READ | IOC_WRITE, 0xc1, size_of::<DrmSyncobjHandle>());
const DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE: u32 = 1;
const SYNC_IOC_FILE_INFO: u32 = ((IOC_READ | IOC_WRITE) << 30)
    | ((size_of::<SyncFileInfo>() as u32) << 16)
    | ((b'>' as u32) << 8)
    | 4;

/// Every ioctl request this library issues, on the node and on the
/// sync_files it exports: what a sandboxed user of it allowlists.
pub const IOCTLS: &[u32] = &[
    DRM_IOCTL_VERSION,
    DRM_IOCTL_PRIME_FD_TO_HANDLE,
    DRM_IOCTL_GEM_CLOSE,
    DRM_IOCTL_SYNCOBJ_CREATE,
    DRM_IOCTL_SYNCOBJ_DESTROY,
    DRM_IOCTL_SYNCOBJ_WAIT,
    DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD,
    SYNC_IOC_FILE_INFO,
    DRM_IOCTL_VACCEL_GET_CAPS,
    DRM_IOCTL_VACCEL_BO_CREATE,
    DRM_IOCTL_VACCEL_BO_INFO,
    DRM_IOCTL_VACCEL_SUBMIT,
    DRM_IOCTL_VACCEL_BO_WAIT,
    DRM_IOCTL_VACCEL_IOCTL,
];

/// An open accel node.
pub struct Accel {
    file: File,
}

/// A buffer object of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bo {
    pub handle: u32,
    pub size: u64,
}

/// A buffer mapped into this process; unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

/// A buffer a job touches.
#[derive(Debug, Clone, Copy)]
pub struct JobBo {
    pub bo: Bo,
    pub access: u32,
}

fn clock_monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

impl Accel {
    pub fn open(path: impl AsRef<Path>) -> io::Result<Accel> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Accel { file })
    }

    /// Issues `cmd` with `arg` as its in/out argument.
    fn ioctl<T>(&self, cmd: u32, arg: &mut T) -> io::Result<()> {
        // SAFETY: every command used here takes a pointer to a struct of
        // exactly T's layout (the size is encoded in `cmd`), which the
        // kernel reads and writes within its size.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), cmd as _, arg as *mut T) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Name and version of the kernel driver behind the node.
    pub fn version(&self) -> io::Result<(String, i32, i32)> {
        let mut name = [0u8; 64];
        let mut v = DrmVersion {
            name_len: name.len(),
            name: name.as_mut_ptr() as u64,
            ..Default::default()
        };
        self.ioctl(DRM_IOCTL_VERSION, &mut v)?;
        let n = v.name_len.min(name.len());
        Ok((
            String::from_utf8_lossy(&name[..n]).into_owned(),
            v.major,
            v.minor,
        ))
    }

    pub fn caps(&self) -> io::Result<DrmVaccelCaps> {
        let mut c = DrmVaccelCaps::default();
        self.ioctl(DRM_IOCTL_VACCEL_GET_CAPS, &mut c)?;
        Ok(c)
    }

    pub fn bo_create(&self, size: u64) -> io::Result<Bo> {
        let mut a = DrmVaccelBoCreate {
            size,
            ..Default::default()
        };
        self.ioctl(DRM_IOCTL_VACCEL_BO_CREATE, &mut a)?;
        Ok(Bo {
            handle: a.handle,
            size: size.next_multiple_of(4096),
        })
    }

    /// Imports another driver's dma-buf (a udmabuf over guest memory, say)
    /// as a buffer of this file's context: jobs read and write its pages in
    /// place.
    pub fn prime_import(&self, dmabuf: BorrowedFd<'_>) -> io::Result<Bo> {
        let mut a = DrmPrimeHandle {
            fd: dmabuf.as_raw_fd(),
            ..Default::default()
        };
        self.ioctl(DRM_IOCTL_PRIME_FD_TO_HANDLE, &mut a)?;
        let mut info = DrmVaccelBoInfo {
            handle: a.handle,
            ..Default::default()
        };
        self.ioctl(DRM_IOCTL_VACCEL_BO_INFO, &mut info)?;
        Ok(Bo {
            handle: a.handle,
            size: info.size,
        })
    }

    pub fn bo_close(&self, bo: Bo) -> io::Result<()> {
        let mut a = DrmHandle {
            handle: bo.handle,
            flags: 0,
        };
        self.ioctl(DRM_IOCTL_GEM_CLOSE, &mut a)
    }

    /// Maps a buffer read-write into this process.
    pub fn map(&self, bo: Bo) -> io::Result<Mapping> {
        let mut info = DrmVaccelBoInfo {
            handle: bo.handle,
            ..Default::default()
        };
        self.ioctl(DRM_IOCTL_VACCEL_BO_INFO, &mut info)?;
        let len = info.size as usize;
        // SAFETY: a fresh shared mapping of the node at the offset the
        // kernel gave for this object; nothing else is mapped there.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                info.mmap_offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn syncobj_create(&self) -> io::Result<u32> {
        let mut a = DrmHandle::default();
        self.ioctl(DRM_IOCTL_SYNCOBJ_CREATE, &mut a)?;
        Ok(a.handle)
    }

    pub fn syncobj_destroy(&self, handle: u32) -> io::Result<()> {
        let mut a = DrmHandle { handle, flags: 0 };
        self.ioctl(DRM_IOCTL_SYNCOBJ_DESTROY, &mut a)
    }

    /// Waits until every syncobj has signalled, up to `timeout_ms`.
    pub fn syncobj_wait(&self, handles: &[u32], timeout_ms: i64) -> io::Result<()> {
        let mut a = DrmSyncobjWait {
            handles: handles.as_ptr() as u64,
            timeout_nsec: clock_monotonic_ns() + timeout_ms * 1_000_000,
            count_handles: handles.len() as u32,
            flags: DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL,
            ..Default::default()
        };
        self.ioctl(DRM_IOCTL_SYNCOBJ_WAIT, &mut a)
    }

    /// Waits until no job uses `bo`, up to `timeout_ms`; returns the
    /// status of the latest jobs that used it (the worst, across contexts).
    pub fn bo_wait(&self, bo: Bo, timeout_ms: i64) -> io::Result<JobStatus> {
        let mut a = DrmVaccelBoWait {
            handle: bo.handle,
            timeout_ns: clock_monotonic_ns() + timeout_ms * 1_000_000,
            ..Default::default()
        };
        self.ioctl(DRM_IOCTL_VACCEL_BO_WAIT, &mut a)?;
        Ok(JobStatus::from_uapi(a.job_status))
    }

    /// A request of the NPU driver behind the device (`cmd` is the NPU's
    /// own: `SNPU_IOCTL_*` on the software NPU, a host driver's flattened
    /// ioctl otherwise); returns the answer's payload, at most `out_room`
    /// bytes.
    pub fn npu_ioctl(&self, cmd: u32, input: &[u8], out_room: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; out_room];
        let too_big = || io::Error::from_raw_os_error(libc::E2BIG);
        let mut a = DrmVaccelIoctl {
            cmd,
            in_size: u32::try_from(input.len()).map_err(|_| too_big())?,
            out_size: u32::try_from(out_room).map_err(|_| too_big())?,
            in_: input.as_ptr() as u64,
            out: out.as_mut_ptr() as u64,
            ..Default::default()
        };
        // The kernel reads `in_size` bytes at `in_` and writes at most
        // `out_size` at `out`: both are this function's live buffers.
        self.ioctl(DRM_IOCTL_VACCEL_IOCTL, &mut a)?;
        out.truncate(a.out_size as usize);
        Ok(out)
    }

    /// The fence `syncobj` holds now, as a sync_file: readable once the
    /// fence has signalled, so a poll set can wait for many jobs at once.
    pub fn sync_file(&self, syncobj: u32) -> io::Result<OwnedFd> {
        let mut h = DrmSyncobjHandle {
            handle: syncobj,
            flags: DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE,
            ..Default::default()
        };
        self.ioctl(DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, &mut h)?;
        // SAFETY: the kernel just gave us this descriptor; nothing else
        // owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(h.fd) })
    }

    /// The status of the job whose fence `syncobj` holds, once signalled
    /// (`WouldBlock` before): the fence's error, read through a sync_file.
    pub fn job_status(&self, syncobj: u32) -> io::Result<JobStatus> {
        sync_file_status(self.sync_file(syncobj)?.as_fd())?
            .ok_or_else(|| io::ErrorKind::WouldBlock.into())
    }

    /// Waits for the job whose fence `syncobj` holds, up to `timeout_ms`:
    /// `Ok` if it ran, else an error carrying its
    /// [`JobError`](crate::job::JobError).
    pub fn wait_job(&self, syncobj: u32, timeout_ms: i64) -> io::Result<()> {
        self.syncobj_wait(&[syncobj], timeout_ms)?;
        Ok(self.job_status(syncobj)?.into_result()?)
    }

    /// Submits a job whose command stream is `cmd_size` bytes of `cmd` at
    /// `cmd_offset`; the command stream names buffers by index in `bos`.
    pub fn submit(
        &self,
        bos: &[JobBo],
        cmd: Bo,
        cmd_offset: u32,
        cmd_size: u32,
        in_syncobjs: &[u32],
        out_syncobj: u32,
    ) -> io::Result<()> {
        let list: Vec<DrmVaccelSubmitBo> = bos
            .iter()
            .map(|b| DrmVaccelSubmitBo {
                handle: b.bo.handle,
                access: b.access,
            })
            .collect();
        let mut a = DrmVaccelSubmit {
            bos: list.as_ptr() as u64,
            in_syncobjs: in_syncobjs.as_ptr() as u64,
            cmd_bo: cmd.handle,
            cmd_offset,
            cmd_size,
            nr_bos: list.len() as u32,
            nr_in_syncobjs: in_syncobjs.len() as u32,
            out_syncobj,
            ..Default::default()
        };
        self.ioctl(DRM_IOCTL_VACCEL_SUBMIT, &mut a)
    }

    /// Submits raw arguments, for tests of the kernel's validation.
    pub fn submit_raw(&self, args: &mut DrmVaccelSubmit) -> io::Result<()> {
        self.ioctl(DRM_IOCTL_VACCEL_SUBMIT, args)
    }
}

/// The status of the job whose fence a sync_file holds: `None` while it
/// has not signalled.
pub fn sync_file_status(sync: BorrowedFd<'_>) -> io::Result<Option<JobStatus>> {
    let mut info = SyncFileInfo::default();
    // SAFETY: SYNC_IOC_FILE_INFO takes a struct sync_file_info, which
    // `info` is; with num_fences 0 the kernel writes only that struct.
    let r = unsafe { libc::ioctl(sync.as_raw_fd(), SYNC_IOC_FILE_INFO as _, &mut info) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(match info.status {
        1 => Some(JobStatus::Ok),
        0 => None,
        e => Some(JobStatus::from_fence_error(e)),
    })
}

// SAFETY: a Mapping owns its range of the address space and hands out
// only copies through &self/&mut self; using it from another thread is
// as safe as from this one.
unsafe impl Send for Mapping {}

impl Mapping {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn write(&mut self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len, "write past the mapping");
        // SAFETY: the range lies inside the mapping, which this value owns.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) };
    }

    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len, "read past the mapping");
        let mut v = vec![0u8; len];
        // SAFETY: the range lies inside the mapping, which this value owns.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), v.as_mut_ptr(), len) };
        v
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value created.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
