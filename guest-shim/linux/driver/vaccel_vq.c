// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-accel virtqueues: requests out, responses and events back.
 *
 * Each chain is a device-readable request and a device-writable response.
 * Virtqueue callbacks only schedule work; the work reaps used buffers and
 * completes waiters or jobs.
 */

#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/virtio_config.h>

#include <drm/drm_print.h>

#include "vaccel_drv.h"

struct vaccel_req *vaccel_req_alloc(size_t req_len, size_t resp_len)
{
	size_t off = ALIGN(req_len, 8);
	struct vaccel_req *r;

	r = kzalloc(sizeof(*r) + off + resp_len, GFP_KERNEL);
	if (!r)
		return NULL;
	r->req = (u8 *)(r + 1);
	r->req_len = req_len;
	r->resp = (u8 *)(r + 1) + off;
	r->resp_len = resp_len;
	init_completion(&r->done);
	return r;
}

u32 vaccel_status(const void *resp, u32 used)
{
	const struct virtio_accel_hdr *h = resp;

	if (used < sizeof(*h))
		return VIRTIO_ACCEL_RESP_ERR_INVALID;
	return le32_to_cpu(h->type);
}

/* Adds a chain and notifies the device, waiting for ring space if needed. */
static int vaccel_queue_req(struct vaccel_device *vd, struct vaccel_queue *q,
			    struct vaccel_req *r)
{
	struct scatterlist out, in, *sgs[] = { &out, &in };
	bool notify;
	int ret;

	sg_init_one(&out, r->req, r->req_len);
	sg_init_one(&in, r->resp, r->resp_len);
	for (;;) {
		spin_lock(&q->lock);
		if (vd->removing) {
			spin_unlock(&q->lock);
			return -ENODEV;
		}
		ret = virtqueue_add_sgs(q->vq, sgs, 1, 1, r, GFP_ATOMIC);
		if (ret != -ENOSPC)
			break;
		spin_unlock(&q->lock);
		ret = wait_event_interruptible(q->space,
					       q->vq->num_free >= 2 || READ_ONCE(vd->removing));
		if (ret)
			return ret;
	}
	notify = !ret && virtqueue_kick_prepare(q->vq);
	spin_unlock(&q->lock);
	if (notify)
		virtqueue_notify(q->vq);
	return ret;
}

static void vaccel_finish(struct vaccel_req *r)
{
	if (r->job)
		vaccel_job_done(r);
	else
		complete(&r->done);
}

/* Reaps every used request chain of @q. */
static void vaccel_reap(struct vaccel_queue *q)
{
	struct vaccel_req *r;
	unsigned int len;
	LIST_HEAD(done);
	struct vaccel_req *batch[64];
	int n;

	do {
		n = 0;
		spin_lock(&q->lock);
		do {
			virtqueue_disable_cb(q->vq);
			while (n < ARRAY_SIZE(batch) &&
			       (r = virtqueue_get_buf(q->vq, &len))) {
				r->used = min_t(u32, len, r->resp_len);
				batch[n++] = r;
			}
		} while (n < ARRAY_SIZE(batch) && !virtqueue_enable_cb(q->vq));
		spin_unlock(&q->lock);
		wake_up_all(&q->space);
		for (int i = 0; i < n; i++)
			vaccel_finish(batch[i]);
	} while (n == ARRAY_SIZE(batch));
}

static void vaccel_ctrl_work(struct work_struct *w)
{
	vaccel_reap(container_of(w, struct vaccel_queue, work));
}

static int vaccel_add_event_buf(struct vaccel_device *vd, struct virtio_accel_event *ev)
{
	struct scatterlist sg;

	sg_init_one(&sg, ev, sizeof(*ev));
	return virtqueue_add_inbuf(vd->event.vq, &sg, 1, ev, GFP_ATOMIC);
}

static void vaccel_event_work(struct work_struct *w)
{
	struct vaccel_device *vd = container_of(w, struct vaccel_device, event.work);
	struct virtio_accel_event *ev;
	unsigned int len;

	spin_lock(&vd->event.lock);
	while ((ev = virtqueue_get_buf(vd->event.vq, &len))) {
		u32 type = le32_to_cpu(ev->hdr.type);
		u32 ctx = le32_to_cpu(ev->hdr.ctx_id);

		spin_unlock(&vd->event.lock);
		if (len >= sizeof(*ev) && type == VIRTIO_ACCEL_EVENT_CONTEXT_LOST) {
			drm_warn(&vd->drm, "context %u lost (reason %u) after fence %llu\n",
				 ctx, le32_to_cpu(ev->reason), le64_to_cpu(ev->fence));
			vaccel_ctx_lost(vd, ctx);
		} else {
			drm_dbg(&vd->drm, "ignoring event %#x (%u bytes)\n", type, len);
		}
		spin_lock(&vd->event.lock);
		if (!vd->removing)
			vaccel_add_event_buf(vd, ev);
	}
	if (!vd->removing)
		virtqueue_kick(vd->event.vq);
	spin_unlock(&vd->event.lock);
}

static void vaccel_vq_callback(struct virtqueue *vq)
{
	struct vaccel_device *vd = vq->vdev->priv;
	struct vaccel_queue *q = vq == vd->ctrl.vq ? &vd->ctrl :
				 vq == vd->submit.vq ? &vd->submit : &vd->event;

	schedule_work(&q->work);
}

static void vaccel_queue_init(struct vaccel_queue *q, work_func_t fn)
{
	spin_lock_init(&q->lock);
	init_waitqueue_head(&q->space);
	INIT_WORK(&q->work, fn);
}

int vaccel_vq_init(struct vaccel_device *vd)
{
	struct virtqueue_info info[VIRTIO_ACCEL_NUM_QUEUES] = {
		{ "control", vaccel_vq_callback },
		{ "submit", vaccel_vq_callback },
		{ "event", vaccel_vq_callback },
	};
	struct virtqueue *vqs[VIRTIO_ACCEL_NUM_QUEUES];
	int ret;

	vaccel_queue_init(&vd->ctrl, vaccel_ctrl_work);
	vaccel_queue_init(&vd->submit, vaccel_ctrl_work);
	vaccel_queue_init(&vd->event, vaccel_event_work);
	vd->events = devm_kcalloc(vd->drm.dev, VACCEL_NUM_EVENTS, sizeof(*vd->events),
				  GFP_KERNEL);
	if (!vd->events)
		return -ENOMEM;
	ret = virtio_find_vqs(vd->vdev, VIRTIO_ACCEL_NUM_QUEUES, vqs, info, NULL);
	if (ret)
		return ret;
	vd->ctrl.vq = vqs[VIRTIO_ACCEL_VQ_CONTROL];
	vd->submit.vq = vqs[VIRTIO_ACCEL_VQ_SUBMIT];
	vd->event.vq = vqs[VIRTIO_ACCEL_VQ_EVENT];
	return 0;
}

/* Fills the event queue; called once the device is ready. */
void vaccel_vq_start(struct vaccel_device *vd)
{
	spin_lock(&vd->event.lock);
	for (int i = 0; i < VACCEL_NUM_EVENTS; i++)
		vaccel_add_event_buf(vd, &vd->events[i]);
	virtqueue_kick(vd->event.vq);
	spin_unlock(&vd->event.lock);
}

static void vaccel_fail_queue(struct vaccel_queue *q)
{
	struct vaccel_req *r;

	/* Answered before the reset: complete them as answered. */
	vaccel_reap(q);
	while ((r = virtqueue_detach_unused_buf(q->vq))) {
		r->err = -ENODEV;
		r->used = 0;
		vaccel_finish(r);
	}
	wake_up_all(&q->space);
}

/*
 * Stops the device: resets it, then completes every outstanding request
 * with -ENODEV so no waiter or fence is left behind.
 */
void vaccel_vq_fini(struct vaccel_device *vd)
{
	spin_lock(&vd->ctrl.lock);
	spin_lock(&vd->submit.lock);
	spin_lock(&vd->event.lock);
	WRITE_ONCE(vd->removing, true);
	spin_unlock(&vd->event.lock);
	spin_unlock(&vd->submit.lock);
	spin_unlock(&vd->ctrl.lock);

	virtio_reset_device(vd->vdev);
	cancel_work_sync(&vd->ctrl.work);
	cancel_work_sync(&vd->submit.work);
	cancel_work_sync(&vd->event.work);
	vaccel_fail_queue(&vd->ctrl);
	vaccel_fail_queue(&vd->submit);
	while (virtqueue_detach_unused_buf(vd->event.vq))
		;
	vd->vdev->config->del_vqs(vd->vdev);
}

/* Sends a control request and waits for its response. */
int vaccel_ctrl(struct vaccel_device *vd, const void *req, size_t req_len,
		void *resp, size_t resp_len)
{
	struct vaccel_req *r = vaccel_req_alloc(req_len, resp_len);
	int ret;

	if (!r)
		return -ENOMEM;
	memcpy(r->req, req, req_len);
	ret = vaccel_queue_req(vd, &vd->ctrl, r);
	if (ret) {
		kfree(r);
		return ret;
	}
	/* The device answers every chain; removal answers the rest. */
	wait_for_completion(&r->done);
	ret = r->err;
	if (!ret) {
		memcpy(resp, r->resp, r->used);
		if (r->used < resp_len)
			memset((u8 *)resp + r->used, 0, resp_len - r->used);
	}
	kfree(r);
	return ret;
}

/* Queues a job's chain on the submit queue; vaccel_job_done() follows. */
int vaccel_submit_req(struct vaccel_device *vd, struct vaccel_req *r)
{
	return vaccel_queue_req(vd, &vd->submit, r);
}
