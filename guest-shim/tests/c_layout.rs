//! Keeps the C headers in `guest-shim/linux/include/uapi/` from drifting from
//! the Rust definitions: compiles a C program against them with `cc`, prints
//! every struct's size and field offsets and every constant, and compares.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use virtio_accel_guest::uapi::*;
use virtio_accel_protocol as p;

type Layout = Vec<(&'static str, usize, Vec<(&'static str, usize)>)>;

macro_rules! layout {
    ($($c:literal => $t:ty { $($f:ident),* $(,)? }),* $(,)?) => {
        vec![$(($c, size_of::<$t>(), vec![$((
            stringify!($f).trim_end_matches('_'), offset_of!($t, $f)
        )),*])),*]
    };
}

fn wire_layout() -> Layout {
    use p::*;
    layout! {
        "virtio_accel_hdr" => Hdr { type_, flags, ctx_id, padding },
        "virtio_accel_config" => Config { num_capsets, max_contexts, max_bo_size, max_cmd_size,
            max_inline_cmd_size, max_submit_bos, max_in_fences, max_sg_entries,
            max_jobs_in_flight, shm_id, padding, max_total_bo_bytes, max_job_memory, max_bos,
            max_backing_entries },
        "virtio_accel_get_caps" => GetCaps { hdr, capset, padding },
        "virtio_accel_resp_caps" => RespCaps { hdr, npu_kind, npu_version, cmd_format,
            cmd_format_version, max_bo_size, max_contexts, max_jobs_in_flight, max_cmd_size,
            max_inline_cmd_size, max_submit_bos, max_in_fences, max_sg_entries, padding, ops,
            name },
        "virtio_accel_ctx_create" => CtxCreate { hdr, priority, padding },
        "virtio_accel_bo_create" => BoCreate { hdr, size, flags, padding },
        "virtio_accel_resp_bo_create" => RespBoCreate { hdr, bo_handle, padding, size },
        "virtio_accel_bo_req" => BoReq { hdr, bo_handle, padding },
        "virtio_accel_resp_bo_info" => RespBoInfo { hdr, bo_handle, flags, size, shm_offset,
            nr_entries, state },
        "virtio_accel_resp_bo_info_ext" => RespBoInfoExt { base, device_addr, device_handle,
            padding },
        "virtio_accel_bo_attach_backing" => BoAttachBacking { hdr, bo_handle, nr_entries },
        "virtio_accel_mem_entry" => MemEntry { addr, length, padding },
        "virtio_accel_resp_map_shm" => RespMapShm { hdr, shm_offset },
        "virtio_accel_fence_poll" => FencePoll { hdr, seqno },
        "virtio_accel_resp_fence" => RespFence { hdr, completed },
        "virtio_accel_ioctl" => Ioctl { hdr, cmd, in_size, out_size, padding },
        "virtio_accel_resp_ioctl" => RespIoctl { hdr, out_size, padding },
        "virtio_accel_submit" => Submit { hdr, out_fence, cmd_bo_handle, flags, cmd_offset,
            cmd_size, nr_bos, nr_in_fences, padding },
        "virtio_accel_submit_bo" => SubmitBo { bo_handle, access },
        "virtio_accel_fence_ref" => FenceRef { ctx_id, padding, seqno },
        "virtio_accel_resp_submit" => RespSubmit { hdr, fence, device_time_ns },
        "virtio_accel_event" => Event { hdr, fence, reason, padding },
    }
}

fn uapi_layout() -> Layout {
    layout! {
        "drm_vaccel_caps" => DrmVaccelCaps { capset, pad, npu_kind, npu_version, cmd_format,
            cmd_format_version, max_bo_size, max_cmd_size, max_submit_bos, max_in_syncobjs,
            features, ops, name },
        "drm_vaccel_bo_create" => DrmVaccelBoCreate { size, flags, handle },
        "drm_vaccel_bo_info" => DrmVaccelBoInfo { handle, pad, size, mmap_offset },
        "drm_vaccel_submit_bo" => DrmVaccelSubmitBo { handle, access },
        "drm_vaccel_submit" => DrmVaccelSubmit { bos, in_syncobjs, cmd_bo, cmd_offset, cmd_size,
            nr_bos, nr_in_syncobjs, out_syncobj, flags, pad },
        "drm_vaccel_bo_wait" => DrmVaccelBoWait { handle, pad, timeout_ns, job_status, pad2 },
        "drm_vaccel_ioctl" => DrmVaccelIoctl { cmd, in_size, out_size, pad, in_, out },
    }
}

fn constants() -> Vec<(&'static str, u64)> {
    use p::*;
    let mut v: Vec<(&'static str, u64)> = REQUEST_TYPES
        .iter()
        .chain(RESPONSE_STATUSES)
        .map(|&(val, name)| (name, u64::from(val)))
        .collect();
    macro_rules! c {
        ($($n:ident),* $(,)?) => { $(v.push((stringify!($n), $n as u64));)* };
    }
    c!(
        VIRTIO_ACCEL_VQ_CONTROL,
        VIRTIO_ACCEL_VQ_SUBMIT,
        VIRTIO_ACCEL_VQ_EVENT,
        VIRTIO_ACCEL_NUM_QUEUES,
        VIRTIO_ACCEL_F_INLINE_CMD,
        VIRTIO_ACCEL_F_IOCTL,
        VIRTIO_ACCEL_F_CROSS_CTX_FENCE,
        VIRTIO_ACCEL_F_SHM_BLOB,
        VIRTIO_ACCEL_F_QUOTAS,
        VIRTIO_ACCEL_F_PAGE_ALIGNED,
        VIRTIO_ACCEL_F_DEVICE_ADDR,
        VIRTIO_ACCEL_PAGE_SIZE,
        VIRTIO_ACCEL_EVENT_CONTEXT_LOST,
        VIRTIO_ACCEL_LOST_HANG,
        VIRTIO_ACCEL_LOST_RESET,
        VIRTIO_ACCEL_LOST_DEVICE_ERROR,
        VIRTIO_ACCEL_PRIORITY_LOW,
        VIRTIO_ACCEL_PRIORITY_NORMAL,
        VIRTIO_ACCEL_PRIORITY_HIGH,
        VIRTIO_ACCEL_BO_F_HOST,
        VIRTIO_ACCEL_BO_STATE_BACKED,
        VIRTIO_ACCEL_BO_STATE_MAPPED,
        VIRTIO_ACCEL_BO_STATE_BUSY,
        VIRTIO_ACCEL_SUBMIT_F_INLINE,
        VIRTIO_ACCEL_ACCESS_READ,
        VIRTIO_ACCEL_ACCESS_WRITE,
        VIRTIO_ACCEL_NPU_SIM,
        VIRTIO_ACCEL_NPU_IVPU,
        VIRTIO_ACCEL_NPU_AMDXDNA,
        VIRTIO_ACCEL_NPU_OTHER,
        VIRTIO_ACCEL_CMD_FORMAT_SNPU,
        VIRTIO_ACCEL_CMD_FORMAT_NATIVE,
        VIRTIO_ACCEL_MAX_SG_ENTRIES,
        VIRTIO_ACCEL_MAX_SUBMIT_BOS,
        VIRTIO_ACCEL_MAX_IN_FENCES,
        VIRTIO_ACCEL_MAX_INLINE_CMD,
        VIRTIO_ACCEL_MAX_IOCTL_PAYLOAD,
        DRM_VACCEL_BO_READ,
        DRM_VACCEL_BO_WRITE,
        DRM_IOCTL_VACCEL_GET_CAPS,
        DRM_IOCTL_VACCEL_BO_CREATE,
        DRM_IOCTL_VACCEL_BO_INFO,
        DRM_IOCTL_VACCEL_SUBMIT,
        DRM_IOCTL_VACCEL_BO_WAIT,
        DRM_IOCTL_VACCEL_IOCTL,
        DRM_VACCEL_JOB_STATUS_OK,
        DRM_VACCEL_JOB_STATUS_FAILED,
        DRM_VACCEL_JOB_STATUS_NO_MEMORY,
        DRM_VACCEL_JOB_STATUS_CANCELED,
        DRM_VACCEL_JOB_STATUS_CONTEXT_LOST,
        DRM_VACCEL_JOB_STATUS_DEVICE_LOST,
    );
    v.push(("VIRTIO_ID_ACCEL_PROVISIONAL", VIRTIO_ACCEL_DEVICE_ID.into()));
    v
}

/// A stand-in for the kernel's `drm.h`, which the host build machine need
/// not have: only the ioctl-number macros the header uses, as the kernel
/// defines them.
const DRM_H: &str = "#include <linux/types.h>\n#include <linux/ioctl.h>\n\
#define DRM_IOCTL_BASE 'd'\n#define DRM_COMMAND_BASE 0x40\n\
#define DRM_IOW(nr, type) _IOW(DRM_IOCTL_BASE, nr, type)\n\
#define DRM_IOWR(nr, type) _IOWR(DRM_IOCTL_BASE, nr, type)\n";

#[test]
fn c_headers_match_rust_layout() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("linux/include/uapi");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c_layout");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("drm.h"), DRM_H).unwrap();

    let layouts: Layout = wire_layout().into_iter().chain(uapi_layout()).collect();
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/virtio_accel.h>\n\
         #include <drm/virtio_accel_drm.h>\nint main(void) {\n",
    );
    let mut want = BTreeMap::new();
    for (name, size, fields) in &layouts {
        c += &format!("printf(\"{name} %zu\\n\", sizeof(struct {name}));\n");
        want.insert(name.to_string(), *size as u64);
        for (f, off) in fields {
            c += &format!("printf(\"{name}.{f} %zu\\n\", offsetof(struct {name}, {f}));\n");
            want.insert(format!("{name}.{f}"), *off as u64);
        }
    }
    for (name, val) in constants() {
        c += &format!("printf(\"{name} %llu\\n\", (unsigned long long)({name}));\n");
        want.insert(name.to_string(), val);
    }
    c += "return 0;\n}\n";
    std::fs::write(dir.join("layout.c"), c).unwrap();

    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let exe = dir.join("layout");
    let out = Command::new(cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(&root)
        .arg("-I")
        .arg(&dir)
        .arg(dir.join("layout.c"))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    let got: BTreeMap<String, u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    let diffs: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: rust {v}, C {:?}", got.get(k)))
        .collect();
    assert!(
        diffs.is_empty(),
        "C and Rust disagree:\n{}",
        diffs.join("\n")
    );
    assert_eq!(got.len(), want.len());
}
