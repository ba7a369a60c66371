/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause) */
/*
 * virtio-accel wire format: the structures a virtio-accel driver and device
 * exchange over their virtqueues. All fields are little-endian; every
 * padding field must be zero. See spec/virtio-accel.md.
 *
 * Kept identical to protocol/src/wire.rs by guest-shim/tests/c_layout.rs.
 */
#ifndef _UAPI_LINUX_VIRTIO_ACCEL_H
#define _UAPI_LINUX_VIRTIO_ACCEL_H

#include <linux/types.h>

/* Provisional device ID; not assigned by OASIS. */
#define VIRTIO_ID_ACCEL_PROVISIONAL	59

/* Virtqueues */
#define VIRTIO_ACCEL_VQ_CONTROL		0
#define VIRTIO_ACCEL_VQ_SUBMIT		1
#define VIRTIO_ACCEL_VQ_EVENT		2
#define VIRTIO_ACCEL_NUM_QUEUES		3

/* Feature bits */
#define VIRTIO_ACCEL_F_INLINE_CMD	0
#define VIRTIO_ACCEL_F_IOCTL		1
#define VIRTIO_ACCEL_F_CROSS_CTX_FENCE	2
#define VIRTIO_ACCEL_F_SHM_BLOB		3
#define VIRTIO_ACCEL_F_QUOTAS		4
#define VIRTIO_ACCEL_F_PAGE_ALIGNED	5
#define VIRTIO_ACCEL_F_DEVICE_ADDR	6

/* The page size of VIRTIO_ACCEL_F_PAGE_ALIGNED. */
#define VIRTIO_ACCEL_PAGE_SIZE		4096

/* Request types */
#define VIRTIO_ACCEL_CMD_GET_CAPS		0x0100
#define VIRTIO_ACCEL_CMD_CTX_CREATE		0x0101
#define VIRTIO_ACCEL_CMD_CTX_DESTROY		0x0102
#define VIRTIO_ACCEL_CMD_BO_CREATE		0x0200
#define VIRTIO_ACCEL_CMD_BO_DESTROY		0x0201
#define VIRTIO_ACCEL_CMD_BO_INFO		0x0202
#define VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING	0x0203
#define VIRTIO_ACCEL_CMD_BO_DETACH_BACKING	0x0204
#define VIRTIO_ACCEL_CMD_BO_MAP_SHM		0x0205
#define VIRTIO_ACCEL_CMD_BO_UNMAP_SHM		0x0206
#define VIRTIO_ACCEL_CMD_FENCE_POLL		0x0300
#define VIRTIO_ACCEL_CMD_IOCTL			0x0400
#define VIRTIO_ACCEL_CMD_SUBMIT			0x0500

/* Response types */
#define VIRTIO_ACCEL_RESP_OK			0x1000
#define VIRTIO_ACCEL_RESP_ERR_INVALID		0x1100
#define VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE	0x1101
#define VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE	0x1102
#define VIRTIO_ACCEL_RESP_ERR_NO_MEMORY		0x1103
#define VIRTIO_ACCEL_RESP_ERR_QUOTA		0x1104
#define VIRTIO_ACCEL_RESP_ERR_BUSY		0x1105
#define VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST	0x1106
#define VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED	0x1107
#define VIRTIO_ACCEL_RESP_ERR_JOB_FAILED	0x1108
#define VIRTIO_ACCEL_RESP_ERR_CANCELED		0x1109

/* Events */
#define VIRTIO_ACCEL_EVENT_CONTEXT_LOST		0x2000
#define VIRTIO_ACCEL_LOST_HANG			1
#define VIRTIO_ACCEL_LOST_RESET			2
#define VIRTIO_ACCEL_LOST_DEVICE_ERROR		3

#define VIRTIO_ACCEL_PRIORITY_LOW		0
#define VIRTIO_ACCEL_PRIORITY_NORMAL		1
#define VIRTIO_ACCEL_PRIORITY_HIGH		2

#define VIRTIO_ACCEL_BO_F_HOST			(1 << 0)
#define VIRTIO_ACCEL_BO_STATE_BACKED		(1 << 0)
#define VIRTIO_ACCEL_BO_STATE_MAPPED		(1 << 1)
#define VIRTIO_ACCEL_BO_STATE_BUSY		(1 << 2)
#define VIRTIO_ACCEL_SUBMIT_F_INLINE		(1 << 0)
#define VIRTIO_ACCEL_ACCESS_READ		(1 << 0)
#define VIRTIO_ACCEL_ACCESS_WRITE		(1 << 1)

#define VIRTIO_ACCEL_NPU_SIM			1
#define VIRTIO_ACCEL_NPU_IVPU			2
#define VIRTIO_ACCEL_NPU_AMDXDNA		3
#define VIRTIO_ACCEL_NPU_OTHER			0xffff
#define VIRTIO_ACCEL_CMD_FORMAT_SNPU		1
#define VIRTIO_ACCEL_CMD_FORMAT_NATIVE		2

#define VIRTIO_ACCEL_MAX_SG_ENTRIES		(1 << 18)
#define VIRTIO_ACCEL_MAX_SUBMIT_BOS		4096
#define VIRTIO_ACCEL_MAX_IN_FENCES		256
#define VIRTIO_ACCEL_MAX_INLINE_CMD		(64 * 1024)
#define VIRTIO_ACCEL_MAX_IOCTL_PAYLOAD		4096

/**
 * struct virtio_accel_hdr - common header of requests, responses and events
 * @type: VIRTIO_ACCEL_CMD_*, VIRTIO_ACCEL_RESP_* or VIRTIO_ACCEL_EVENT_*
 * @flags: must be zero
 * @ctx_id: context the message is about; zero where none
 * @padding: must be zero
 */
struct virtio_accel_hdr {
	__le32 type;
	__le32 flags;
	__le32 ctx_id;
	__le32 padding;
};

/**
 * struct virtio_accel_config - device configuration layout
 * @num_capsets: number of capability sets GET_CAPS answers for
 * @max_contexts: contexts the driver may hold at once
 * @max_bo_size: largest buffer object, in bytes
 * @max_cmd_size: largest command stream, in bytes
 * @max_inline_cmd_size: largest inline command stream, in bytes
 * @max_submit_bos: largest buffer list of one SUBMIT
 * @max_in_fences: largest in-fence list of one SUBMIT
 * @max_sg_entries: largest entry list of one BO_ATTACH_BACKING
 * @max_jobs_in_flight: jobs the driver may have submitted and not completed
 * @shm_id: shared memory region id for host buffers (VIRTIO_ACCEL_F_SHM_BLOB)
 * @padding: must be zero
 * @max_total_bo_bytes: sum of the sizes of the driver's BOs (F_QUOTAS)
 * @max_job_memory: device working memory one job may need (F_QUOTAS)
 * @max_bos: BOs the driver may hold at once (F_QUOTAS)
 * @max_backing_entries: backing entries of all the driver's BOs (F_QUOTAS)
 */
struct virtio_accel_config {
	__le32 num_capsets;
	__le32 max_contexts;
	__le64 max_bo_size;
	__le32 max_cmd_size;
	__le32 max_inline_cmd_size;
	__le32 max_submit_bos;
	__le32 max_in_fences;
	__le32 max_sg_entries;
	__le32 max_jobs_in_flight;
	__u8 shm_id;
	__u8 padding[7];
	__le64 max_total_bo_bytes;
	__le64 max_job_memory;
	__le32 max_bos;
	__le32 max_backing_entries;
};

/**
 * struct virtio_accel_get_caps - VIRTIO_ACCEL_CMD_GET_CAPS
 * @hdr: header; ctx_id must be zero
 * @capset: capability set index, below num_capsets
 * @padding: must be zero
 */
struct virtio_accel_get_caps {
	struct virtio_accel_hdr hdr;
	__le32 capset;
	__le32 padding;
};

/**
 * struct virtio_accel_resp_caps - response to GET_CAPS
 * @hdr: header
 * @npu_kind: VIRTIO_ACCEL_NPU_*
 * @npu_version: NPU version, major << 16 | minor
 * @cmd_format: VIRTIO_ACCEL_CMD_FORMAT_*
 * @cmd_format_version: version of that command-stream format
 * @max_bo_size: as in the configuration
 * @max_contexts: as in the configuration
 * @max_jobs_in_flight: as in the configuration
 * @max_cmd_size: as in the configuration
 * @max_inline_cmd_size: as in the configuration
 * @max_submit_bos: as in the configuration
 * @max_in_fences: as in the configuration
 * @max_sg_entries: as in the configuration
 * @padding: zero
 * @ops: bitmask of supported operations of the command-stream format
 * @name: NUL-padded name of the NPU behind the device
 */
struct virtio_accel_resp_caps {
	struct virtio_accel_hdr hdr;
	__le32 npu_kind;
	__le32 npu_version;
	__le32 cmd_format;
	__le32 cmd_format_version;
	__le64 max_bo_size;
	__le32 max_contexts;
	__le32 max_jobs_in_flight;
	__le32 max_cmd_size;
	__le32 max_inline_cmd_size;
	__le32 max_submit_bos;
	__le32 max_in_fences;
	__le32 max_sg_entries;
	__le32 padding;
	__le64 ops;
	__u8 name[32];
};

/**
 * struct virtio_accel_ctx_create - VIRTIO_ACCEL_CMD_CTX_CREATE
 * @hdr: header; ctx_id must be zero, the response carries the new id
 * @priority: VIRTIO_ACCEL_PRIORITY_*
 * @padding: must be zero
 */
struct virtio_accel_ctx_create {
	struct virtio_accel_hdr hdr;
	__le32 priority;
	__le32 padding;
};

/**
 * struct virtio_accel_bo_create - VIRTIO_ACCEL_CMD_BO_CREATE
 * @hdr: header
 * @size: size in bytes, nonzero
 * @flags: VIRTIO_ACCEL_BO_F_*
 * @padding: must be zero
 */
struct virtio_accel_bo_create {
	struct virtio_accel_hdr hdr;
	__le64 size;
	__le32 flags;
	__le32 padding;
};

/**
 * struct virtio_accel_resp_bo_create - response to BO_CREATE
 * @hdr: header
 * @bo_handle: new handle, unique within the context, never zero
 * @padding: zero
 * @size: size of the object
 */
struct virtio_accel_resp_bo_create {
	struct virtio_accel_hdr hdr;
	__le32 bo_handle;
	__le32 padding;
	__le64 size;
};

/**
 * struct virtio_accel_bo_req - BO_DESTROY, BO_INFO, BO_DETACH_BACKING,
 * BO_MAP_SHM and BO_UNMAP_SHM
 * @hdr: header
 * @bo_handle: the buffer object
 * @padding: must be zero
 */
struct virtio_accel_bo_req {
	struct virtio_accel_hdr hdr;
	__le32 bo_handle;
	__le32 padding;
};

/**
 * struct virtio_accel_resp_bo_info - response to BO_INFO
 * @hdr: header
 * @bo_handle: the buffer object
 * @flags: flags it was created with
 * @size: its size
 * @shm_offset: offset in the shared memory region when mapped
 * @nr_entries: number of backing entries attached
 * @state: VIRTIO_ACCEL_BO_STATE_*
 */
struct virtio_accel_resp_bo_info {
	struct virtio_accel_hdr hdr;
	__le32 bo_handle;
	__le32 flags;
	__le64 size;
	__le64 shm_offset;
	__le32 nr_entries;
	__le32 state;
};

/**
 * struct virtio_accel_resp_bo_info_ext - response to BO_INFO with
 *	VIRTIO_ACCEL_F_DEVICE_ADDR
 * @base: as without the feature
 * @device_addr: the buffer's address in the NPU's address space; zero if none
 * @device_handle: the NPU driver's handle of the buffer in the context's
 *	host file, as native command streams and driver ioctls name it; zero if
 *	none
 * @padding: zero
 */
struct virtio_accel_resp_bo_info_ext {
	struct virtio_accel_resp_bo_info base;
	__le64 device_addr;
	__le32 device_handle;
	__le32 padding;
};

/**
 * struct virtio_accel_bo_attach_backing - BO_ATTACH_BACKING; followed by
 * @nr_entries struct virtio_accel_mem_entry
 * @hdr: header
 * @bo_handle: the buffer object
 * @nr_entries: number of entries, 1 to max_sg_entries
 */
struct virtio_accel_bo_attach_backing {
	struct virtio_accel_hdr hdr;
	__le32 bo_handle;
	__le32 nr_entries;
};

/**
 * struct virtio_accel_mem_entry - one guest-physical range of backing
 * @addr: guest-physical address
 * @length: length in bytes, nonzero
 * @padding: must be zero
 */
struct virtio_accel_mem_entry {
	__le64 addr;
	__le32 length;
	__le32 padding;
};

/**
 * struct virtio_accel_resp_map_shm - response to BO_MAP_SHM
 * @hdr: header
 * @shm_offset: offset of the object in the shared memory region
 */
struct virtio_accel_resp_map_shm {
	struct virtio_accel_hdr hdr;
	__le64 shm_offset;
};

/**
 * struct virtio_accel_fence_poll - VIRTIO_ACCEL_CMD_FENCE_POLL
 * @hdr: header
 * @seqno: fence on the context's timeline
 */
struct virtio_accel_fence_poll {
	struct virtio_accel_hdr hdr;
	__le64 seqno;
};

/**
 * struct virtio_accel_resp_fence - response to FENCE_POLL
 * @hdr: header; OK when signalled, ERR_BUSY when not yet
 * @completed: highest completed seqno on the timeline
 */
struct virtio_accel_resp_fence {
	struct virtio_accel_hdr hdr;
	__le64 completed;
};

/**
 * struct virtio_accel_ioctl - VIRTIO_ACCEL_CMD_IOCTL; followed by @in_size
 * bytes of payload
 * @hdr: header
 * @cmd: driver-specific ioctl number
 * @in_size: payload bytes that follow
 * @out_size: payload bytes the driver has room for in the response
 * @padding: must be zero
 */
struct virtio_accel_ioctl {
	struct virtio_accel_hdr hdr;
	__le32 cmd;
	__le32 in_size;
	__le32 out_size;
	__le32 padding;
};

/**
 * struct virtio_accel_resp_ioctl - response to IOCTL; followed by
 * @out_size bytes of payload
 * @hdr: header
 * @out_size: payload bytes that follow
 * @padding: zero
 */
struct virtio_accel_resp_ioctl {
	struct virtio_accel_hdr hdr;
	__le32 out_size;
	__le32 padding;
};

/**
 * struct virtio_accel_submit - VIRTIO_ACCEL_CMD_SUBMIT; followed by
 * @nr_bos struct virtio_accel_submit_bo, @nr_in_fences struct
 * virtio_accel_fence_ref and, with VIRTIO_ACCEL_SUBMIT_F_INLINE, @cmd_size
 * bytes of command stream
 * @hdr: header; ctx_id is the submitting context
 * @out_fence: seqno this job signals; above every earlier one of the context
 * @cmd_bo_handle: buffer holding the command stream; zero when inline
 * @flags: VIRTIO_ACCEL_SUBMIT_F_*
 * @cmd_offset: offset of the command stream in @cmd_bo_handle
 * @cmd_size: size of the command stream, nonzero
 * @nr_bos: buffers the job touches
 * @nr_in_fences: fences that must signal before the job runs
 * @padding: must be zero
 */
struct virtio_accel_submit {
	struct virtio_accel_hdr hdr;
	__le64 out_fence;
	__le32 cmd_bo_handle;
	__le32 flags;
	__le64 cmd_offset;
	__le32 cmd_size;
	__le32 nr_bos;
	__le32 nr_in_fences;
	__le32 padding;
};

/**
 * struct virtio_accel_submit_bo - one buffer of a job
 * @bo_handle: the buffer object
 * @access: VIRTIO_ACCEL_ACCESS_* bits, nonzero
 */
struct virtio_accel_submit_bo {
	__le32 bo_handle;
	__le32 access;
};

/**
 * struct virtio_accel_fence_ref - a point on a context's timeline
 * @ctx_id: the context
 * @padding: must be zero
 * @seqno: the point
 */
struct virtio_accel_fence_ref {
	__le32 ctx_id;
	__le32 padding;
	__le64 seqno;
};

/**
 * struct virtio_accel_resp_submit - response to SUBMIT, sent when the job's
 * out-fence signals
 * @hdr: header
 * @fence: the job's out-fence
 * @device_time_ns: time the job spent on the NPU
 */
struct virtio_accel_resp_submit {
	struct virtio_accel_hdr hdr;
	__le64 fence;
	__le64 device_time_ns;
};

/**
 * struct virtio_accel_event - an event on the event queue
 * @hdr: header; type is VIRTIO_ACCEL_EVENT_*, ctx_id the context
 * @fence: last seqno the context completed
 * @reason: VIRTIO_ACCEL_LOST_*
 * @padding: zero
 */
struct virtio_accel_event {
	struct virtio_accel_hdr hdr;
	__le64 fence;
	__le32 reason;
	__le32 padding;
};

#endif /* _UAPI_LINUX_VIRTIO_ACCEL_H */
