//! The guest library's model runner on the harness: [`HarnessNpu`] is its
//! `Device` over this harness's virtqueues and the real daemon, the same
//! runner a guest program drives through `/dev/accel/accel0`.

use std::collections::HashMap;
use std::io;

use virtio_accel_guest::model::{Device, DeviceLimits};
use virtio_accel_protocol::*;

use crate::guest::{CmdSource, Guest, GuestBo, Layout, Pending};

/// One device context of a harness guest, as the model runner's device.
pub struct HarnessNpu<'g> {
    pub g: &'g mut Guest,
    pub ctx: u32,
    pub layout: Layout,
    bos: HashMap<u32, GuestBo>,
    seqno: u64,
}

/// A job in flight: its chain and its fence.
pub struct HarnessFence {
    pending: Pending,
    seqno: u64,
}

impl<'g> HarnessNpu<'g> {
    /// A new context on `g`; buffers backed by scattered pages, as a
    /// guest kernel's GEM objects are.
    pub fn new(g: &'g mut Guest) -> HarnessNpu<'g> {
        let ctx = g.ctx_create();
        HarnessNpu {
            g,
            ctx,
            layout: Layout::Scattered,
            bos: HashMap::new(),
            seqno: 0,
        }
    }

    fn bo(&self, h: u32) -> io::Result<&GuestBo> {
        self.bos
            .get(&h)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("buffer {h}")))
    }
}

fn status_err(what: &str, s: u32) -> io::Error {
    io::Error::other(format!("{what}: {}", status_name(s)))
}

impl Device for HarnessNpu<'_> {
    type Bo = u32;
    type Fence = HarnessFence;

    fn limits(&mut self) -> io::Result<DeviceLimits> {
        let caps = self.g.caps();
        let c = &self.g.config;
        Ok(DeviceLimits {
            ops: caps.ops.get(),
            max_bo_size: c.max_bo_size.get(),
            max_cmd_size: u64::from(c.max_cmd_size.get()),
            max_job_memory: c.max_job_memory.get(),
        })
    }

    fn bo_create(&mut self, size: u64) -> io::Result<u32> {
        let (s, handle) = self.g.bo_create_status(self.ctx, size, 0);
        if s != VIRTIO_ACCEL_RESP_OK {
            return Err(status_err("BO_CREATE", s));
        }
        let ranges = self.g.alloc_backing(size, self.layout);
        let s = self
            .g
            .status(&Guest::attach_request(self.ctx, handle, &ranges));
        if s != VIRTIO_ACCEL_RESP_OK {
            self.g.free_backing(&ranges);
            return Err(status_err("BO_ATTACH_BACKING", s));
        }
        let bo = GuestBo {
            ctx: self.ctx,
            handle,
            size,
            ranges,
        };
        self.bos.insert(handle, bo);
        Ok(handle)
    }

    fn bo_write(&mut self, bo: u32, off: u64, data: &[u8]) -> io::Result<()> {
        let b = self.bo(bo)?;
        self.g.write_bo(b, off, data);
        Ok(())
    }

    fn bo_read(&mut self, bo: u32, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let b = self.bo(bo)?;
        Ok(self.g.read_bo(b, off, len))
    }

    fn bo_destroy(&mut self, bo: u32) -> io::Result<()> {
        let b = self.bo(bo)?.clone();
        let s = self.g.bo_destroy(&b);
        if s != VIRTIO_ACCEL_RESP_OK {
            return Err(status_err("BO_DESTROY", s));
        }
        self.bos.remove(&bo);
        Ok(())
    }

    fn submit(
        &mut self,
        cmd: u32,
        len: u32,
        bos: &[(u32, u32)],
        after: Option<&HarnessFence>,
    ) -> io::Result<HarnessFence> {
        self.seqno += 1;
        let ins: Vec<(u32, u64)> = after.iter().map(|f| (self.ctx, f.seqno)).collect();
        let req = Guest::submit_request(
            self.ctx,
            self.seqno,
            bos,
            &ins,
            CmdSource::Bo {
                handle: cmd,
                offset: 0,
                size: len,
            },
        );
        Ok(HarnessFence {
            pending: self.g.submit_async(&req),
            seqno: self.seqno,
        })
    }

    fn wait(&mut self, f: HarnessFence) -> io::Result<Option<u64>> {
        match self.g.wait_submit(f.pending) {
            Response::Submit(s) if s.hdr.type_.get() == VIRTIO_ACCEL_RESP_OK => {
                Ok(Some(s.device_time_ns.get()))
            }
            r => Err(status_err("SUBMIT", r.status())),
        }
    }
}

/// The directory of the generated models and ONNX Runtime's outputs
/// (`integration/models/prepare.sh`), made on first use. None, said
/// loudly, when this machine has no Python to make them with; with
/// `VACCEL_REQUIRE_MODELS=1` (CI) that is a failure instead.
pub fn models_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    use std::process::Command;
    let top = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::var_os("VACCEL_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| top.join("target/models"));
    if dir.join("READY").exists() {
        return Some(dir);
    }
    let required = std::env::var("VACCEL_REQUIRE_MODELS").is_ok_and(|v| v == "1");
    let venv_ok = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .status()
        .is_ok_and(|s| s.success());
    if !venv_ok {
        assert!(
            !required,
            "VACCEL_REQUIRE_MODELS=1 but python3 with venv is missing"
        );
        eprintln!(
            "\n*** SKIPPED: no python3 with venv on this machine: the model tests need it \
             to make their models (apt-get install python3-venv) ***\n"
        );
        return None;
    }
    let status = Command::new("bash")
        .arg(top.join("integration/models/prepare.sh"))
        .arg(&dir)
        .status()
        .expect("run integration/models/prepare.sh");
    assert!(status.success(), "integration/models/prepare.sh failed");
    Some(dir)
}

/// An f32 .npy file: its dims and values.
pub fn read_npy_f32(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).expect("an .npy file");
    let dims = npy.shape().iter().map(|&d| d as usize).collect();
    (dims, npy.into_vec::<f32>().expect("f32 values"))
}

/// An i64 .npy file's values.
pub fn read_npy_i64(path: &std::path::Path) -> Vec<i64> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    npyz::NpyFile::new(&bytes[..])
        .expect("an .npy file")
        .into_vec::<i64>()
        .expect("i64 values")
}

/// How far `got` is from `want`: the largest absolute difference, and that
/// divided by the reference's range (or by its largest magnitude when the
/// range is 0, as for the uniform softmax of the light models).
pub fn max_error(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "output sizes differ");
    let abs = got
        .iter()
        .zip(want)
        .map(|(a, b)| {
            if a.is_nan() || b.is_nan() {
                f32::INFINITY
            } else {
                (a - b).abs()
            }
        })
        .fold(0f32, f32::max);
    let (lo, hi) = want
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    let mag = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if hi > lo {
        hi - lo
    } else {
        mag.max(f32::MIN_POSITIVE)
    };
    (abs, abs / scale)
}
