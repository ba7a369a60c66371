/* SPDX-License-Identifier: GPL-2.0 */
/*
 * virtio-accel: a DRM accel node backed by a virtio-accel device.
 */
#ifndef __VACCEL_DRV_H__
#define __VACCEL_DRV_H__

#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/dma-fence.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/scatterlist.h>
#include <linux/spinlock.h>
#include <linux/virtio.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include <drm/drm_device.h>
#include <drm/drm_gem_shmem_helper.h>

#include <linux/virtio_accel.h>

#define VACCEL_NUM_EVENTS	16

/* Milliseconds a control request may stay unanswered before the device is dead. */
extern unsigned int vaccel_timeout_ms;
/* Teardown work of every device, one at a time; drained when the module unloads. */
extern struct workqueue_struct *vaccel_wq;
/* Reaping, events, the watchdog and device death. */
extern struct workqueue_struct *vaccel_async_wq;

/**
 * struct vaccel_queue - one virtqueue and the requests the device holds
 * @vd: the device
 * @vq: the virtqueue; replaced when the driver resets the device
 * @lock: serialises adding, reaping and failing buffers
 * @space: woken when descriptors are freed or the device dies
 * @work: reaps used buffers; the virtqueue callback only schedules it
 * @pending: requests the device holds, oldest first
 * @size: entries of the virtqueue
 * @freed: counts reaps, for waiters on @space
 */
struct vaccel_queue {
	struct vaccel_device *vd;
	struct virtqueue *vq;
	unsigned int size;
	unsigned int freed;
	spinlock_t lock; /* serialises adding, reaping and failing buffers */
	wait_queue_head_t space;
	struct work_struct work;
	struct list_head pending;
};

/**
 * struct vaccel_device - one bound virtio-accel device
 * @drm: the accel node
 * @vdev: the virtio device
 * @serial: unique among all devices ever bound; names the device in fences
 * @ctrl: the control queue
 * @submit: the submit queue
 * @event: the event queue
 * @events: buffers of the event queue
 * @max_bo_size: configuration limit
 * @max_cmd_size: configuration limit
 * @max_submit_bos: configuration limit
 * @max_in_fences: configuration limit
 * @max_sg_entries: configuration limit
 * @max_jobs: configuration limit on SUBMITs outstanding
 * @features: negotiated virtio-accel feature bits
 * @caps: GET_CAPS answer
 * @ctxs: live contexts by host id, for events
 * @flags: VACCEL_DEAD once the device no longer answers (or was removed);
 *	VACCEL_RESET_ASKED when it asked for a reset, VACCEL_RESETTING while
 *	the driver resets it
 * @gen: counts the resets the driver made; a context lives in one
 * @last_answer: jiffies of the last answer the device gave
 * @vq_lock: serialises setting the virtqueues up again with their death
 * @reset_work: resets the device and sets it up again
 * @dead_work: resets a dead device and fails what it held
 * @dead_done: completed once @dead_work has run
 * @watchdog: declares the device dead when a control request goes unanswered
 * @jobs: SUBMITs outstanding
 * @job_space: woken when @jobs drops or the device dies
 */
struct vaccel_device {
	struct drm_device drm;
	struct virtio_device *vdev;
	u64 serial;
	struct vaccel_queue ctrl;
	struct vaccel_queue submit;
	struct vaccel_queue event;
	struct virtio_accel_event *events;
	u64 max_bo_size;
	u32 max_cmd_size;
	u32 max_submit_bos;
	u32 max_in_fences;
	u32 max_sg_entries;
	u32 max_jobs;
	u32 features;
	struct virtio_accel_resp_caps caps;
	struct xarray ctxs;
	unsigned long flags;
	u32 gen;
	unsigned long last_answer;
	struct mutex vq_lock; /* serialises the virtqueues' set-up and death */
	struct work_struct reset_work;
	struct work_struct dead_work;
	struct completion dead_done;
	struct delayed_work watchdog;
	atomic_t jobs;
	wait_queue_head_t job_space;
};

#define VACCEL_DEAD		0
#define VACCEL_RESET_ASKED	1
#define VACCEL_RESETTING	2

static inline bool vaccel_dead(struct vaccel_device *vd)
{
	return test_bit(VACCEL_DEAD, &vd->flags);
}

static inline bool vaccel_resetting(struct vaccel_device *vd)
{
	return test_bit_acquire(VACCEL_RESETTING, &vd->flags);
}

static inline struct vaccel_device *to_vaccel(struct drm_device *drm)
{
	return container_of(drm, struct vaccel_device, drm);
}

enum vaccel_req_state {
	VACCEL_REQ_PENDING,
	VACCEL_REQ_DONE,
	VACCEL_REQ_ABANDONED,
};

/**
 * struct vaccel_req - one descriptor chain: a request and its response
 * @ref: held by its waiter and, while queued, by the device
 * @node: in its queue's pending list
 * @sent: jiffies when queued
 * @state: enum vaccel_req_state; the waiter and the answer race on it
 * @req: device-readable bytes, in @nr_chunks chunks of @chunk bytes
 * @nr_chunks: chunks in @req
 * @chunk: bytes per chunk
 * @req_len: bytes of request
 * @out: scatterlist over @req
 * @resp: device-writable bytes
 * @resp_len: their length
 * @used: bytes the device wrote
 * @err: 0; -ENODEV when the device died before answering; -EIO when the
 *	driver reset it first
 * @gen: the device generation the request is for (0: any) until queued,
 *	then the one that holds it
 * @done: completed when answered or failed
 * @ctx: context the request counts against while queued, if any
 * @job: the job this chain submits, if any
 * @abandoned: runs on the answer of a request whose waiter gave up
 * @cleanup: work @abandoned hands to the teardown worker
 */
struct vaccel_req {
	struct kref ref;
	struct list_head node;
	unsigned long sent;
	atomic_t state;
	void **req;
	unsigned int nr_chunks;
	size_t chunk;
	size_t req_len;
	struct scatterlist *out;
	void *resp;
	size_t resp_len;
	u32 used;
	int err;
	u32 gen;
	struct completion done;
	struct vaccel_ctx *ctx;
	struct vaccel_job *job;
	void (*abandoned)(struct vaccel_device *vd, struct vaccel_req *r);
	struct vaccel_teardown *cleanup;
};

/**
 * struct vaccel_ctx - the host context of one open file
 * @ref: held by the file, its buffers, its jobs and its teardown
 * @vd: the device
 * @id: host context id
 * @gen: the device generation it was created in; a reset loses it
 * @fence_context: dma_fence context of its timeline
 * @submit_lock: orders seqno assignment with queueing
 * @next_seqno: last seqno queued
 * @inflight: control requests of this context the device holds
 * @idle: woken when @inflight drops to zero
 * @teardown: its CTX_DESTROY, reserved at creation
 * @lost: the device reported the context lost, or was reset
 * @destroyed: CTX_DESTROY answered (or the device died): its host
 *	buffers are gone; set and read by the teardown worker only
 */
struct vaccel_ctx {
	struct kref ref;
	struct vaccel_device *vd;
	u32 id;
	u32 gen;
	u64 fence_context;
	struct mutex submit_lock; /* orders seqno assignment with queueing */
	u64 next_seqno;
	atomic_t inflight;
	wait_queue_head_t idle;
	struct vaccel_teardown *teardown;
	bool lost;
	bool destroyed;
};

/**
 * struct vaccel_teardown - a host object to destroy once its guest owner is gone
 * @work: runs on vaccel_wq, which is ordered: teardowns go out one at a
 *	time, in the order they were queued
 * @vd: the device, referenced
 * @req: the CTX_DESTROY or BO_DESTROY, reserved with the object so
 *	teardown never allocates
 * @type: VIRTIO_ACCEL_CMD_CTX_DESTROY or VIRTIO_ACCEL_CMD_BO_DESTROY
 * @ctx: the guest context, referenced; NULL for a context the guest never
 *	saw (its CTX_CREATE waiter gave up)
 * @bo: the buffer to free after the request, if any
 */
struct vaccel_teardown {
	struct work_struct work;
	struct vaccel_device *vd;
	struct vaccel_req *req;
	u32 type;
	struct vaccel_ctx *ctx;
	struct vaccel_bo *bo;
};

/**
 * struct vaccel_bo - a buffer object
 * @base: the shmem GEM object
 * @ctx: the context whose host buffer backs it
 * @host_handle: host buffer handle; zero until BO_CREATE answered
 * @pinned: its pages are pinned
 * @sgt: its pages, DMA-mapped unless the device has the DMA quirk
 * @sgt_mapped: @sgt holds DMA addresses
 * @imported: a PRIME import of another driver's dma-buf; @sgt is the
 *	attachment's, and @ctx is set when a file first gets a handle
 * @attach: the BO_ATTACH_BACKING request, held until answered
 * @teardown: reserved at creation so freeing never allocates
 */
struct vaccel_bo {
	struct drm_gem_shmem_object base;
	struct vaccel_ctx *ctx;
	u32 host_handle;
	bool pinned;
	struct sg_table *sgt;
	bool sgt_mapped;
	bool imported;
	struct vaccel_req *attach;
	struct vaccel_teardown *teardown;
};

static inline struct vaccel_bo *to_vaccel_bo(struct drm_gem_object *obj)
{
	return container_of(to_drm_gem_shmem_obj(obj), struct vaccel_bo, base);
}

/**
 * struct vaccel_fence - a job's out-fence on its context's timeline
 * @base: the fence
 * @lock: the fence lock
 * @ctx_id: host id of its context
 * @serial: serial of its device
 */
struct vaccel_fence {
	struct dma_fence base;
	spinlock_t lock; /* the dma_fence lock */
	u32 ctx_id;
	u64 serial;
};

/**
 * struct vaccel_job - a submitted job, held until the device answers it
 * @ref: held by the SUBMIT ioctl and, while queued, by the device
 * @ctx: its context
 * @fence: its out-fence
 * @fence_live: @fence was initialised (and holds a reference)
 * @bos: every buffer it names, the command-stream buffer last
 * @nr_bos: entries in @bos
 */
struct vaccel_job {
	struct kref ref;
	struct vaccel_ctx *ctx;
	bool fence_live;
	struct vaccel_fence *fence;
	struct drm_gem_object **bos;
	u32 nr_bos;
};

/* vaccel_vq.c */
int vaccel_vq_init(struct vaccel_device *vd);
void vaccel_vq_fill_events(struct vaccel_device *vd);
void vaccel_vq_start(struct vaccel_device *vd);
void vaccel_vq_fini(struct vaccel_device *vd);
void vaccel_device_kill(struct vaccel_device *vd, const char *why);
void vaccel_device_reset(struct vaccel_device *vd);
int vaccel_get_caps(struct vaccel_device *vd, struct virtio_accel_resp_caps *caps);
struct vaccel_req *vaccel_req_alloc(struct vaccel_device *vd, struct vaccel_queue *q,
				    size_t req_len, size_t resp_len);
void vaccel_req_put(struct vaccel_req *r);
void *vaccel_req_body(struct vaccel_req *r);
void vaccel_req_write(struct vaccel_req *r, size_t off, const void *src, size_t len);
int vaccel_ctrl(struct vaccel_device *vd, struct vaccel_req *r, bool killable);
int vaccel_ctrl_simple(struct vaccel_device *vd, struct vaccel_ctx *ctx, const void *req,
		       size_t req_len, void *resp, size_t resp_len);
int vaccel_queue_job(struct vaccel_device *vd, struct vaccel_req *r);
void vaccel_req_set_ctx(struct vaccel_req *r, struct vaccel_ctx *ctx);
u32 vaccel_status(const void *resp, u32 used);
int vaccel_status_errno(u32 status);

/* vaccel_ctx.c */
struct vaccel_ctx *vaccel_ctx_create(struct vaccel_device *vd, u32 priority);
void vaccel_ctx_close(struct vaccel_ctx *ctx);
void vaccel_ctx_put(struct vaccel_ctx *ctx);
void vaccel_ctx_lost(struct vaccel_device *vd, u32 ctx_id);
unsigned int vaccel_ctx_lose_all(struct vaccel_device *vd);
struct vaccel_teardown *vaccel_teardown_alloc(struct vaccel_device *vd, u32 type);
void vaccel_teardown_free(struct vaccel_teardown *t);
void vaccel_teardown_queue(struct vaccel_teardown *t, struct vaccel_ctx *ctx, u32 ctx_id,
			   u32 gen, u32 handle, struct vaccel_bo *bo);

/* vaccel_gem.c */
struct drm_gem_object *vaccel_gem_create_object(struct drm_device *dev, size_t size);
bool vaccel_is_bo(struct drm_gem_object *obj);
struct drm_gem_object *vaccel_gem_prime_import(struct drm_device *dev, struct dma_buf *buf);
struct drm_gem_object *vaccel_gem_prime_import_sg_table(struct drm_device *dev,
							struct dma_buf_attachment *attach,
							struct sg_table *sgt);
void vaccel_bo_release(struct vaccel_bo *bo);
int vaccel_ioctl_bo_create(struct drm_device *dev, void *data, struct drm_file *file);
int vaccel_ioctl_bo_info(struct drm_device *dev, void *data, struct drm_file *file);
int vaccel_ioctl_bo_wait(struct drm_device *dev, void *data, struct drm_file *file);

/* vaccel_job.c */
int vaccel_ioctl_submit(struct drm_device *dev, void *data, struct drm_file *file);
void vaccel_job_done(struct vaccel_device *vd, struct vaccel_req *r);

/* vaccel_fwd.c */
int vaccel_npu_ioctl(struct drm_device *dev, void *data, struct drm_file *file);

#endif /* __VACCEL_DRV_H__ */
