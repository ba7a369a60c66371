/* SPDX-License-Identifier: GPL-2.0 */
/*
 * virtio-accel: a DRM accel node backed by a virtio-accel device.
 */
#ifndef __VACCEL_DRV_H__
#define __VACCEL_DRV_H__

#include <linux/completion.h>
#include <linux/dma-fence.h>
#include <linux/kref.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/virtio.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include <drm/drm_device.h>
#include <drm/drm_gem_shmem_helper.h>

#include <linux/virtio_accel.h>

#define VACCEL_NUM_EVENTS	16

/**
 * struct vaccel_queue - one virtqueue and the requests in it
 * @vq: the virtqueue
 * @lock: serialises adding and reaping buffers
 * @space: woken when descriptors are freed
 * @work: reaps used buffers; the virtqueue callback only schedules it
 */
struct vaccel_queue {
	struct virtqueue *vq;
	spinlock_t lock; /* serialises adding and reaping buffers */
	wait_queue_head_t space;
	struct work_struct work;
};

struct vaccel_device {
	struct drm_device drm;
	struct virtio_device *vdev;
	struct vaccel_queue ctrl;
	struct vaccel_queue submit;
	struct vaccel_queue event;
	struct virtio_accel_event *events;
	/* Limits from the configuration space. */
	u64 max_bo_size;
	u32 max_cmd_size;
	u32 max_submit_bos;
	u32 max_in_fences;
	u32 features;
	struct virtio_accel_resp_caps caps;
	/* Live contexts by host id, for events. */
	struct xarray ctxs;
	bool removing;
};

static inline struct vaccel_device *to_vaccel(struct drm_device *drm)
{
	return container_of(drm, struct vaccel_device, drm);
}

/**
 * struct vaccel_req - one descriptor chain: a request and its response
 * @req: device-readable bytes
 * @req_len: their length
 * @resp: device-writable bytes
 * @resp_len: their length
 * @used: bytes the device wrote
 * @err: 0, or -ENODEV when the device went away before answering
 * @done: completed when the device answers (synchronous requests)
 * @job: the job this chain submits, if any
 */
struct vaccel_req {
	void *req;
	size_t req_len;
	void *resp;
	size_t resp_len;
	u32 used;
	int err;
	struct completion done;
	struct vaccel_job *job;
};

/**
 * struct vaccel_ctx - the host context of one open file
 * @ref: held by the file, its buffers and its jobs
 * @vd: the device
 * @id: host context id
 * @fence_context: dma_fence context of its timeline
 * @submit_lock: orders seqno assignment with queueing
 * @next_seqno: last seqno assigned
 * @lost: the device reported the context lost
 * @dead: destroyed on the host; its buffers went with it
 */
struct vaccel_ctx {
	struct kref ref;
	struct vaccel_device *vd;
	u32 id;
	u64 fence_context;
	struct mutex submit_lock; /* orders seqno assignment with queueing */
	u64 next_seqno;
	bool lost;
	bool dead;
};

struct vaccel_bo {
	struct drm_gem_shmem_object base;
	struct vaccel_ctx *ctx;
	u32 host_handle;
	bool pinned;
};

static inline struct vaccel_bo *to_vaccel_bo(struct drm_gem_object *obj)
{
	return container_of(to_drm_gem_shmem_obj(obj), struct vaccel_bo, base);
}

struct vaccel_fence {
	struct dma_fence base;
	spinlock_t lock; /* the dma_fence lock */
	u32 ctx_id;
	struct vaccel_device *vd;
};

struct vaccel_job {
	struct vaccel_ctx *ctx;
	struct vaccel_fence *fence;
	struct drm_gem_object **bos;
	u32 nr_bos;
};

/* vaccel_vq.c */
int vaccel_vq_init(struct vaccel_device *vd);
void vaccel_vq_start(struct vaccel_device *vd);
void vaccel_vq_fini(struct vaccel_device *vd);
int vaccel_ctrl(struct vaccel_device *vd, const void *req, size_t req_len,
		void *resp, size_t resp_len);
struct vaccel_req *vaccel_req_alloc(size_t req_len, size_t resp_len);
int vaccel_submit_req(struct vaccel_device *vd, struct vaccel_req *r);
u32 vaccel_status(const void *resp, u32 used);

/* vaccel_gem.c */
struct drm_gem_object *vaccel_gem_create_object(struct drm_device *dev, size_t size);
int vaccel_ioctl_bo_create(struct drm_device *dev, void *data, struct drm_file *file);
int vaccel_ioctl_bo_info(struct drm_device *dev, void *data, struct drm_file *file);
int vaccel_ioctl_bo_wait(struct drm_device *dev, void *data, struct drm_file *file);

/* vaccel_job.c */
int vaccel_ioctl_submit(struct drm_device *dev, void *data, struct drm_file *file);
void vaccel_job_done(struct vaccel_req *r);
void vaccel_ctx_put(struct vaccel_ctx *ctx);
void vaccel_ctx_lost(struct vaccel_device *vd, u32 ctx_id);

#endif /* __VACCEL_DRV_H__ */
