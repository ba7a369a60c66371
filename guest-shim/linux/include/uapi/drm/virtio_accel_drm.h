/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR MIT) */
/*
 * UAPI of the virtio-accel accel node (/dev/accel/accelN).
 *
 * Buffers are GEM objects backed by guest pages; the device reads and
 * writes them in place. Jobs signal DRM syncobjs; wait on them with
 * DRM_IOCTL_SYNCOBJ_WAIT, or on a buffer with DRM_IOCTL_VACCEL_BO_WAIT.
 *
 * What became of a job: BO_WAIT returns a DRM_VACCEL_JOB_STATUS_*, and the
 * job's out-fence carries the error below, which a syncobj exported as a
 * sync_file reports in struct sync_file_info.status (SYNC_IOC_FILE_INFO):
 *
 *	OK		0		the job ran
 *	FAILED		-EIO		the job ran and failed, or the device
 *					refused it (other errnos: its reason)
 *	NO_MEMORY	-ENOMEM		the device had no working memory for it
 *	CANCELED	-ECANCELED	it never ran: its context was destroyed or
 *					a fence it waited for can never signal
 *	CONTEXT_LOST	-ENOTRECOVERABLE its context was lost (a job hung, the
 *					device failed or was reset); the file
 *					takes no more jobs
 *	DEVICE_LOST	-ENODEV		the device stopped answering or was
 *					removed before answering
 *
 * A file whose context is lost gets EIO from every ioctl that would reach
 * the device; other files go on. A device that asks for a reset is reset
 * by the driver and set up again: every file open then loses its context,
 * files opened afterwards work.
 *
 * Every wait on the device is bounded: a device that leaves a request
 * unanswered for the module parameter timeout_ms is declared dead, and
 * every ioctl then fails with ENODEV.
 *
 * Kept identical to guest-shim/src/uapi.rs by guest-shim/tests/c_layout.rs.
 */
#ifndef _UAPI_VIRTIO_ACCEL_DRM_H
#define _UAPI_VIRTIO_ACCEL_DRM_H

#include "drm.h"

#if defined(__cplusplus)
extern "C" {
#endif

#define DRM_VACCEL_GET_CAPS	0x00
#define DRM_VACCEL_BO_CREATE	0x01
#define DRM_VACCEL_BO_INFO	0x02
#define DRM_VACCEL_SUBMIT	0x03
#define DRM_VACCEL_BO_WAIT	0x04
#define DRM_VACCEL_IOCTL	0x05

#define DRM_IOCTL_VACCEL_GET_CAPS \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_GET_CAPS, struct drm_vaccel_caps)
#define DRM_IOCTL_VACCEL_BO_CREATE \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_BO_CREATE, struct drm_vaccel_bo_create)
#define DRM_IOCTL_VACCEL_BO_INFO \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_BO_INFO, struct drm_vaccel_bo_info)
#define DRM_IOCTL_VACCEL_SUBMIT \
	DRM_IOW(DRM_COMMAND_BASE + DRM_VACCEL_SUBMIT, struct drm_vaccel_submit)
#define DRM_IOCTL_VACCEL_BO_WAIT \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_BO_WAIT, struct drm_vaccel_bo_wait)
#define DRM_IOCTL_VACCEL_IOCTL \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_IOCTL, struct drm_vaccel_ioctl)

/**
 * struct drm_vaccel_caps - capabilities of the NPU behind the node
 * @capset: (in) capability set index; 0 is the only one defined
 * @pad: (in) must be zero
 * @npu_kind: VIRTIO_ACCEL_NPU_* of the device
 * @npu_version: major << 16 | minor
 * @cmd_format: VIRTIO_ACCEL_CMD_FORMAT_*
 * @cmd_format_version: version of the command-stream format
 * @max_bo_size: largest buffer object in bytes
 * @max_cmd_size: largest command stream in bytes
 * @max_submit_bos: largest buffer list of one submit
 * @max_in_syncobjs: largest in-syncobj list of one submit
 * @features: virtio-accel feature bits the driver negotiated
 * @ops: bitmask of supported operations of the command-stream format
 * @name: NUL-padded NPU name
 */
struct drm_vaccel_caps {
	__u32 capset;
	__u32 pad;
	__u32 npu_kind;
	__u32 npu_version;
	__u32 cmd_format;
	__u32 cmd_format_version;
	__u64 max_bo_size;
	__u32 max_cmd_size;
	__u32 max_submit_bos;
	__u32 max_in_syncobjs;
	__u32 features;
	__u64 ops;
	char name[32];
};

/**
 * struct drm_vaccel_bo_create - create a buffer object
 * @size: (in) size in bytes, rounded up to a page
 * @flags: (in) must be zero
 * @handle: (out) GEM handle
 */
struct drm_vaccel_bo_create {
	__u64 size;
	__u32 flags;
	__u32 handle;
};

/**
 * struct drm_vaccel_bo_info - query a buffer object
 * @handle: (in) GEM handle
 * @pad: (in) must be zero
 * @size: (out) size in bytes
 * @mmap_offset: (out) offset to pass to mmap() on the node
 */
struct drm_vaccel_bo_info {
	__u32 handle;
	__u32 pad;
	__u64 size;
	__u64 mmap_offset;
};

#define DRM_VACCEL_BO_READ	(1 << 0)
#define DRM_VACCEL_BO_WRITE	(1 << 1)

/**
 * struct drm_vaccel_submit_bo - a buffer a job touches
 * @handle: GEM handle
 * @access: DRM_VACCEL_BO_READ and/or DRM_VACCEL_BO_WRITE
 */
struct drm_vaccel_submit_bo {
	__u32 handle;
	__u32 access;
};

/**
 * struct drm_vaccel_submit - submit a job
 * @bos: pointer to @nr_bos struct drm_vaccel_submit_bo; the command stream
 *	names buffers by their index in this list
 * @in_syncobjs: pointer to @nr_in_syncobjs __u32 syncobj handles the job
 *	waits for
 * @cmd_bo: GEM handle of the buffer holding the command stream
 * @cmd_offset: offset of the command stream in @cmd_bo
 * @cmd_size: size of the command stream
 * @nr_bos: entries in @bos
 * @nr_in_syncobjs: entries in @in_syncobjs
 * @out_syncobj: syncobj that receives the job's fence; zero for none
 * @flags: must be zero
 * @pad: must be zero
 */
struct drm_vaccel_submit {
	__u64 bos;
	__u64 in_syncobjs;
	__u32 cmd_bo;
	__u32 cmd_offset;
	__u32 cmd_size;
	__u32 nr_bos;
	__u32 nr_in_syncobjs;
	__u32 out_syncobj;
	__u32 flags;
	__u32 pad;
};

#define DRM_VACCEL_JOB_STATUS_OK		0
#define DRM_VACCEL_JOB_STATUS_FAILED		1
#define DRM_VACCEL_JOB_STATUS_NO_MEMORY		2
#define DRM_VACCEL_JOB_STATUS_CANCELED		3
#define DRM_VACCEL_JOB_STATUS_CONTEXT_LOST	4
#define DRM_VACCEL_JOB_STATUS_DEVICE_LOST	5

/**
 * struct drm_vaccel_bo_wait - wait until no job uses a buffer
 * @handle: (in) GEM handle
 * @pad: (in) must be zero
 * @timeout_ns: (in) absolute CLOCK_MONOTONIC timeout
 * @job_status: (out) DRM_VACCEL_JOB_STATUS_* of the latest jobs that used
 *	the buffer (the worst of them when several contexts did)
 * @pad2: (in) must be zero
 */
struct drm_vaccel_bo_wait {
	__u32 handle;
	__u32 pad;
	__s64 timeout_ns;
	__u32 job_status;
	__u32 pad2;
};

/**
 * struct drm_vaccel_ioctl - a request of the NPU driver behind the device
 *
 * Forwarded as the device's IOCTL request for the file's context. What
 * @cmd means is the NPU's (drm_vaccel_caps.npu_kind): the software NPU's
 * SNPU_IOCTL_*, or a host accel driver's own ioctl number with its struct
 * and pointed-to data flattened after it (the device specification, IOCTL).
 * Fails with EOPNOTSUPP when the device forwards no such requests or not
 * this one, E2BIG for a payload above 4096 bytes, EINVAL for one the
 * NPU driver refuses, EIO once the context is lost.
 *
 * @cmd: (in) the NPU driver's request
 * @in_size: (in) bytes at @in, at most 4096
 * @out_size: (in) room at @out, at most 4096; (out) bytes the answer holds
 * @pad: (in) must be zero
 * @in: (in) pointer to the request's payload
 * @out: (in) pointer to room for the answer's payload
 */
struct drm_vaccel_ioctl {
	__u32 cmd;
	__u32 in_size;
	__u32 out_size;
	__u32 pad;
	__u64 in;
	__u64 out;
};

#if defined(__cplusplus)
}
#endif

#endif /* _UAPI_VIRTIO_ACCEL_DRM_H */
