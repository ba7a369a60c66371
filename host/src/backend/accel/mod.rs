//! The `accel` backend: guest work forwarded to a Linux accel driver on
//! the host (`--driver accel --device /dev/accel/accelN`).
//!
//! - Each guest context is one open file of the node: the host driver's
//!   unit of isolation (its own NPU address space, handles and fences).
//! - A buffer is the guest's own pages: at attach, its guest-physical
//!   ranges become a udmabuf over the files behind guest memory
//!   ([`udmabuf`]), imported into the context's file (PRIME). The NPU
//!   reads and writes guest memory in place; the daemon copies no byte of
//!   it.
//! - Jobs go to the driver with its own submit ioctl; their ends are
//!   learned from their out-fences ([`jobs`]).
//!
//! [`personality`] says which drivers are served. [`uapi`] holds, per
//! host driver, the ioctls a guest may reach and the codec that checks a
//! guest's request against them.

pub mod jobs;
pub mod personality;
pub mod uapi;
pub mod udmabuf;

use std::os::fd::{AsFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use virtio_accel_guest::accel::{Accel, Bo, JobBo};
use virtio_accel_protocol::snpu;
use virtio_accel_protocol::VIRTIO_ACCEL_CMD_FORMAT_SNPU;
use vm_memory::GuestAddressSpace;

use super::sim::{check_ioctl, SNPU_STATS_LEN};
use super::{Backend, BackendError, Caps, Completion, Imported, IoctlError, JobId, Prepared};
use crate::memory::{Backing, VmMemory};
use jobs::{AccelJob, Engine};
use personality::Personality;
use udmabuf::Udmabuf;

/// Why the backend cannot start on a node.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {err}")]
    Node { path: String, err: std::io::Error },
    #[error("{path}: {0}", path = .1)]
    Refused(personality::Refusal, String),
    #[error("{0}; the accel backend hands guest memory to the host driver only through udmabuf")]
    Udmabuf(udmabuf::UdmabufError),
    #[error("starting the job threads: {0}")]
    Threads(std::io::Error),
}

/// A host accel node serving guest contexts.
pub struct AccelNpu {
    path: std::path::PathBuf,
    personality: Personality,
    caps: Caps,
    udmabuf: Udmabuf,
    engine: Engine,
}

/// A guest context: the node opened for it alone.
pub struct AccelContext {
    node: Arc<Accel>,
    slots: jobs::Slots,
}

/// A guest buffer imported into its context's file.
pub struct AccelBuffer {
    bo: Bo,
}

impl AccelNpu {
    /// Opens `path`, identifies its driver and checks what forwarding
    /// needs. `engines`: jobs kept submitted to the driver at once.
    pub fn open(path: &Path, engines: usize) -> Result<AccelNpu, OpenError> {
        let node_err = |err| OpenError::Node {
            path: path.display().to_string(),
            err,
        };
        let node = Accel::open(path).map_err(node_err)?;
        let (driver, major, minor) = node.version().map_err(node_err)?;
        let personality = personality::identify(&driver)
            .map_err(|r| OpenError::Refused(r, path.display().to_string()))?;
        let caps = match personality {
            Personality::Vaccel => {
                let c = node.caps().map_err(node_err)?;
                let end = c.name.iter().position(|&b| b == 0).unwrap_or(c.name.len());
                Caps {
                    kind: c.npu_kind,
                    version: c.npu_version,
                    name: String::from_utf8_lossy(&c.name[..end]).into_owned(),
                    cmd_format: c.cmd_format,
                    cmd_format_version: c.cmd_format_version,
                    ops: c.ops,
                    engines: engines.max(1),
                    // The host driver runs a job to its end.
                    preemptible: false,
                    page_aligned: true,
                }
            }
        };
        drop(node);
        let udmabuf = Udmabuf::open().map_err(OpenError::Udmabuf)?;
        tracing::info!(
            "{}: host driver {driver} {major}.{minor}, NPU \"{}\"",
            path.display(),
            caps.name
        );
        Ok(AccelNpu {
            path: path.to_owned(),
            personality,
            caps,
            udmabuf,
            engine: Engine::new().map_err(OpenError::Threads)?,
        })
    }

    pub fn personality(&self) -> Personality {
        self.personality
    }
}

fn cmd_error(e: impl std::fmt::Display) -> BackendError {
    BackendError::Invalid(e.to_string())
}

impl Backend for AccelNpu {
    type Context = AccelContext;
    type Buffer = AccelBuffer;
    type Job = AccelJob;

    fn caps(&self) -> Caps {
        self.caps.clone()
    }

    fn create_context(&self, _priority: u32) -> Result<AccelContext, BackendError> {
        let node = Accel::open(&self.path).map_err(|e| {
            tracing::warn!("{}: opening a context: {e}", self.path.display());
            match e.raw_os_error() {
                Some(libc::ENOMEM) | Some(libc::EMFILE) | Some(libc::ENFILE) => {
                    BackendError::NoMemory(e.to_string())
                }
                _ => BackendError::Device(e.to_string()),
            }
        })?;
        Ok(AccelContext {
            node: Arc::new(node),
            slots: jobs::Slots::default(),
        })
    }

    fn destroy_context(&self, ctx: AccelContext) {
        // The file closes with the last job that holds it.
        drop(ctx);
    }

    fn import(
        &self,
        ctx: &AccelContext,
        backing: &Backing,
        mem: &VmMemory,
    ) -> Result<Imported<AccelBuffer>, BackendError> {
        let guard = mem.mem.memory();
        let dmabuf = self.udmabuf.create(backing, &guard).map_err(|e| {
            tracing::warn!("a buffer's backing cannot be handed to the host driver: {e}");
            BackendError::Unsupported(e.to_string())
        })?;
        let bo = ctx.node.prime_import(dmabuf.as_fd()).map_err(|e| {
            tracing::warn!("the host driver refused a guest buffer: {e}");
            match e.raw_os_error() {
                Some(libc::ENOMEM) => BackendError::NoMemory(e.to_string()),
                _ => BackendError::Unsupported(e.to_string()),
            }
        })?;
        // The buffer holds the dma-buf; its fd is not needed any more.
        if bo.size != backing.len() {
            let _ = ctx.node.bo_close(bo);
            return Err(BackendError::Device(format!(
                "the host driver imported {} bytes of {}",
                bo.size,
                backing.len()
            )));
        }
        Ok(Imported {
            buffer: AccelBuffer { bo },
            device_addr: None,
        })
    }

    fn release(&self, ctx: &AccelContext, buffer: AccelBuffer) {
        if let Err(e) = ctx.node.bo_close(buffer.bo) {
            tracing::warn!("closing an imported buffer: {e}");
        }
    }

    fn prepare(
        &self,
        ctx: &AccelContext,
        cmd: &[u8],
        bos: &[(&AccelBuffer, u32, u64)],
    ) -> Result<Prepared<AccelJob>, BackendError> {
        if self.caps.cmd_format != VIRTIO_ACCEL_CMD_FORMAT_SNPU {
            return Err(BackendError::Invalid("unknown command format".into()));
        }
        // Checked here as the NPU behind will check it: a request answered
        // invalid never reaches the host driver.
        let program = snpu::parse(cmd).map_err(cmd_error)?;
        let shapes: Vec<(u64, u32)> = bos.iter().map(|&(_, a, size)| (size, a)).collect();
        program.check_bounds(&shapes).map_err(cmd_error)?;
        Ok(Prepared {
            // The host driver's memory, not the daemon's.
            work_bytes: 0,
            job: AccelJob {
                node: ctx.node.clone(),
                slots: ctx.slots.clone(),
                // VIRTIO_ACCEL_ACCESS_* and DRM_VACCEL_BO_* are the same
                // bits.
                bos: bos
                    .iter()
                    .map(|&(b, access, _)| JobBo { bo: b.bo, access })
                    .collect(),
                cmd: cmd.to_vec(),
            },
        })
    }

    fn submit(&self, id: JobId, job: AccelJob) {
        self.engine.submit(id, job);
    }

    fn resume(&self, _id: JobId) {}

    fn preempt(&self, _id: JobId) {}

    fn abort(&self, id: JobId) {
        self.engine.abort(id);
    }

    fn completion_fd(&self) -> RawFd {
        self.engine.fd()
    }

    fn take_completions(&self, out: &mut Vec<Completion>) {
        self.engine.take(out);
    }

    fn ioctl(
        &self,
        ctx: &AccelContext,
        cmd: u32,
        input: &[u8],
        out_max: usize,
    ) -> Result<Vec<u8>, IoctlError> {
        // The software NPU's allowlist, as the NPU behind checks it.
        check_ioctl(cmd, input, out_max)?;
        ctx.node
            .npu_ioctl(cmd, &[], SNPU_STATS_LEN)
            .map_err(|e| IoctlError::Host {
                cmd,
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            })
    }

    fn shutdown(&self) {
        self.engine.shutdown();
    }
}
