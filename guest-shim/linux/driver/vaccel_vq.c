// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-accel virtqueues: requests out, responses and events back.
 *
 * Each chain is a device-readable request and a device-writable response.
 * A request is referenced by its waiter and, while queued, by the device, so
 * a waiter that gives up (it is killed) never frees memory the device may
 * still write. Virtqueue callbacks only schedule work; the work reaps used
 * buffers and completes waiters or jobs.
 *
 * Every wait is bounded: a watchdog declares the device dead when a control
 * request stays unanswered for vaccel_timeout_ms (jobs may legitimately run
 * long, so while only jobs are outstanding it sends a GET_CAPS to see whether
 * the device still answers). A dead device is reset, which stops it touching
 * guest memory, and everything it held fails with -ENODEV.
 */

#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/virtio_config.h>

#include <drm/drm_print.h>

#include "vaccel_drv.h"

/* Requests at most this large are one chunk; larger ones are split. */
#define VACCEL_CHUNK	PAGE_SIZE

static void vaccel_req_release(struct kref *ref)
{
	struct vaccel_req *r = container_of(ref, struct vaccel_req, ref);

	for (unsigned int i = 0; i < r->nr_chunks; i++)
		kfree(r->req[i]);
	kfree(r->req);
	kfree(r->out);
	kfree(r->resp);
	if (r->cleanup)
		vaccel_teardown_free(r->cleanup);
	if (r->ctx)
		vaccel_ctx_put(r->ctx);
	kfree(r);
}

void vaccel_req_put(struct vaccel_req *r)
{
	kref_put(&r->ref, vaccel_req_release);
}

/*
 * Allocates a request of @req_len readable and @resp_len writable bytes for
 * @q. A request longer than a page is split into equal chunks, each its own
 * descriptor, so no allocation is larger than it must be for the chain to
 * fit the queue (at most size - 1 readable descriptors).
 */
struct vaccel_req *vaccel_req_alloc(struct vaccel_device *vd, struct vaccel_queue *q,
				    size_t req_len, size_t resp_len)
{
	unsigned int max_out = max(q->size, 2U) - 1;
	size_t chunk = VACCEL_CHUNK;
	struct vaccel_req *r;

	while (DIV_ROUND_UP(req_len, chunk) > max_out)
		chunk <<= 1;
	r = kzalloc(sizeof(*r), GFP_KERNEL_ACCOUNT);
	if (!r)
		return NULL;
	kref_init(&r->ref);
	INIT_LIST_HEAD(&r->node);
	init_completion(&r->done);
	atomic_set(&r->state, VACCEL_REQ_PENDING);
	r->req_len = req_len;
	r->chunk = chunk;
	r->nr_chunks = DIV_ROUND_UP(req_len, chunk);
	r->req = kcalloc(r->nr_chunks, sizeof(*r->req), GFP_KERNEL_ACCOUNT);
	r->out = kcalloc(r->nr_chunks, sizeof(*r->out), GFP_KERNEL_ACCOUNT);
	r->resp = kzalloc(resp_len, GFP_KERNEL_ACCOUNT);
	r->resp_len = resp_len;
	if (!r->req || !r->out || !r->resp) {
		r->nr_chunks = 0;
		goto fail;
	}
	sg_init_table(r->out, r->nr_chunks);
	for (unsigned int i = 0; i < r->nr_chunks; i++) {
		size_t len = min(chunk, req_len - i * chunk);

		r->req[i] = kzalloc(len, GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
		if (!r->req[i])
			goto fail;
		sg_set_buf(&r->out[i], r->req[i], len);
	}
	return r;
fail:
	vaccel_req_put(r);
	return NULL;
}

/* Counts @r against @ctx while the device holds it; holds @ctx until freed. */
void vaccel_req_set_ctx(struct vaccel_req *r, struct vaccel_ctx *ctx)
{
	kref_get(&ctx->ref);
	r->ctx = ctx;
}

/* The first chunk: the request header and whatever fits after it. */
void *vaccel_req_body(struct vaccel_req *r)
{
	return r->req[0];
}

/* Copies @len bytes into the request at @off, across chunks. */
void vaccel_req_write(struct vaccel_req *r, size_t off, const void *src, size_t len)
{
	while (len) {
		size_t i = off / r->chunk, o = off % r->chunk;
		size_t n = min(len, r->chunk - o);

		memcpy((u8 *)r->req[i] + o, src, n);
		src = (const u8 *)src + n;
		off += n;
		len -= n;
	}
}

u32 vaccel_status(const void *resp, u32 used)
{
	const struct virtio_accel_hdr *h = resp;

	if (used < sizeof(*h))
		return VIRTIO_ACCEL_RESP_ERR_INVALID;
	return le32_to_cpu(h->type);
}

/* The errno userspace gets for a device status other than OK. */
int vaccel_status_errno(u32 status)
{
	switch (status) {
	case VIRTIO_ACCEL_RESP_OK:
		return 0;
	case VIRTIO_ACCEL_RESP_ERR_UNKNOWN_HANDLE:
		return -ENOENT;
	case VIRTIO_ACCEL_RESP_ERR_OUT_OF_RANGE:
		return -E2BIG;
	case VIRTIO_ACCEL_RESP_ERR_NO_MEMORY:
		return -ENOMEM;
	case VIRTIO_ACCEL_RESP_ERR_QUOTA:
		return -ENOSPC;
	case VIRTIO_ACCEL_RESP_ERR_BUSY:
		return -EBUSY;
	case VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST:
	case VIRTIO_ACCEL_RESP_ERR_JOB_FAILED:
		return -EIO;
	case VIRTIO_ACCEL_RESP_ERR_UNSUPPORTED:
		return -EOPNOTSUPP;
	case VIRTIO_ACCEL_RESP_ERR_CANCELED:
		return -ECANCELED;
	default:
		return -EINVAL;
	}
}

static unsigned long vaccel_timeout(void)
{
	return msecs_to_jiffies(max(READ_ONCE(vaccel_timeout_ms), 100U));
}

/* Checks at least every 250 ms, so a lowered timeout_ms applies at once. */
static void vaccel_watchdog_arm(struct vaccel_device *vd)
{
	unsigned long period = clamp(vaccel_timeout() / 4, 1UL, (unsigned long)HZ / 4);

	queue_delayed_work(vaccel_async_wq, &vd->watchdog, period);
}

/*
 * Adds @r to @q and notifies the device. With @state TASK_KILLABLE or
 * TASK_IDLE, waits in that state for ring space; with 0, fails with -ENOSPC
 * when the ring is full. Fails with -ENODEV once the device is dead.
 */
static int vaccel_queue_add(struct vaccel_device *vd, struct vaccel_queue *q,
			    struct vaccel_req *r, unsigned int state)
{
	struct scatterlist in, *sgs[] = { r->out, &in };
	unsigned int seen;
	bool notify;
	int ret;

	sg_init_one(&in, r->resp, r->resp_len);
	for (;;) {
		spin_lock(&q->lock);
		if (vaccel_dead(vd)) {
			spin_unlock(&q->lock);
			return -ENODEV;
		}
		ret = virtqueue_add_sgs(q->vq, sgs, 1, 1, r, GFP_ATOMIC);
		if (!ret)
			break;
		seen = q->freed;
		spin_unlock(&q->lock);
		if (ret != -ENOSPC || !state)
			return ret;
		ret = 0;
		if (state == TASK_KILLABLE)
			ret = wait_event_killable(q->space, READ_ONCE(q->freed) != seen ||
						  vaccel_dead(vd));
		else
			wait_event_idle(q->space, READ_ONCE(q->freed) != seen || vaccel_dead(vd));
		if (ret)
			return ret;
	}
	kref_get(&r->ref);
	r->sent = jiffies;
	list_add_tail(&r->node, &q->pending);
	if (r->ctx)
		atomic_inc(&r->ctx->inflight);
	notify = virtqueue_kick_prepare(q->vq);
	spin_unlock(&q->lock);
	if (notify)
		virtqueue_notify(q->vq);
	vaccel_watchdog_arm(vd);
	return 0;
}

/* The device answered @r (@err 0) or will never answer it (-ENODEV). */
static void vaccel_req_finish(struct vaccel_device *vd, struct vaccel_req *r, int err, u32 len)
{
	struct vaccel_ctx *ctx = r->ctx;

	r->err = err;
	r->used = err ? 0 : min_t(u32, len, r->resp_len);
	if (r->job) {
		vaccel_job_done(vd, r);
	} else if (atomic_cmpxchg(&r->state, VACCEL_REQ_PENDING, VACCEL_REQ_DONE) ==
		   VACCEL_REQ_ABANDONED && r->abandoned) {
		r->abandoned(vd, r);
	}
	complete_all(&r->done);
	if (ctx && atomic_dec_and_test(&ctx->inflight))
		wake_up_all(&ctx->idle);
	vaccel_req_put(r);
}

/* Reaps every used chain of @q. */
static void vaccel_reap(struct vaccel_device *vd, struct vaccel_queue *q)
{
	struct vaccel_req *batch[64], *r;
	unsigned int len, lens[64];
	unsigned int n;

	do {
		n = 0;
		spin_lock(&q->lock);
		do {
			virtqueue_disable_cb(q->vq);
			while (n < ARRAY_SIZE(batch) && (r = virtqueue_get_buf(q->vq, &len))) {
				list_del_init(&r->node);
				lens[n] = len;
				batch[n++] = r;
			}
		} while (n < ARRAY_SIZE(batch) && !virtqueue_enable_cb(q->vq));
		if (n) {
			q->freed++;
			WRITE_ONCE(vd->last_answer, jiffies);
		}
		spin_unlock(&q->lock);
		if (n)
			wake_up_all(&q->space);
		for (unsigned int i = 0; i < n; i++)
			vaccel_req_finish(vd, batch[i], 0, lens[i]);
	} while (n == ARRAY_SIZE(batch));
}

static void vaccel_reap_work(struct work_struct *w)
{
	struct vaccel_queue *q = container_of(w, struct vaccel_queue, work);
	struct vaccel_device *vd = q->vq->vdev->priv;

	/* A dead device's buffers are reaped by vaccel_dead_work(). */
	if (!vaccel_dead(vd))
		vaccel_reap(vd, q);
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
	while (!vaccel_dead(vd) && (ev = virtqueue_get_buf(vd->event.vq, &len))) {
		u32 type = le32_to_cpu(ev->hdr.type);
		u32 ctx = le32_to_cpu(ev->hdr.ctx_id);
		u32 reason = le32_to_cpu(ev->reason);

		spin_unlock(&vd->event.lock);
		if (len >= sizeof(*ev) && type == VIRTIO_ACCEL_EVENT_CONTEXT_LOST) {
			drm_warn(&vd->drm, "context %u lost (reason %u) after fence %llu\n",
				 ctx, reason, le64_to_cpu(ev->fence));
			if (ctx)
				vaccel_ctx_lost(vd, ctx);
			else
				vaccel_device_kill(vd, "the device reported a broken queue");
		} else {
			drm_dbg(&vd->drm, "ignoring event %#x (%u bytes)\n", type, len);
		}
		spin_lock(&vd->event.lock);
		if (!vaccel_dead(vd))
			vaccel_add_event_buf(vd, ev);
	}
	if (!vaccel_dead(vd))
		virtqueue_kick(vd->event.vq);
	spin_unlock(&vd->event.lock);
}

static void vaccel_vq_callback(struct virtqueue *vq)
{
	struct vaccel_device *vd = vq->vdev->priv;
	struct vaccel_queue *q = vq == vd->ctrl.vq ? &vd->ctrl :
				 vq == vd->submit.vq ? &vd->submit : &vd->event;

	queue_work(vaccel_async_wq, &q->work);
}

/* Answers, or fails with -ENODEV, every chain of a reset device's queue. */
static void vaccel_fail_queue(struct vaccel_device *vd, struct vaccel_queue *q)
{
	struct vaccel_req *r, *tmp;
	LIST_HEAD(failed);

	/* Answered before the reset: complete them as answered. */
	vaccel_reap(vd, q);
	spin_lock(&q->lock);
	while ((r = virtqueue_detach_unused_buf(q->vq)))
		list_move_tail(&r->node, &failed);
	/* Anything else the device held is gone with the reset. */
	list_splice_tail_init(&q->pending, &failed);
	q->freed++;
	spin_unlock(&q->lock);
	wake_up_all(&q->space);
	list_for_each_entry_safe(r, tmp, &failed, node) {
		list_del_init(&r->node);
		vaccel_req_finish(vd, r, -ENODEV, 0);
	}
}

static void vaccel_dead_work(struct work_struct *w)
{
	struct vaccel_device *vd = container_of(w, struct vaccel_device, dead_work);

	/* After the reset the device touches no guest memory. */
	virtio_reset_device(vd->vdev);
	cancel_work_sync(&vd->ctrl.work);
	cancel_work_sync(&vd->submit.work);
	cancel_work_sync(&vd->event.work);
	vaccel_fail_queue(vd, &vd->ctrl);
	vaccel_fail_queue(vd, &vd->submit);
	spin_lock(&vd->event.lock);
	while (virtqueue_detach_unused_buf(vd->event.vq))
		;
	spin_unlock(&vd->event.lock);
	complete_all(&vd->dead_done);
}

/*
 * Marks the device dead: new requests fail at once, waiters for ring space
 * or job slots wake, and a worker resets the device and fails every
 * request it held. @why is NULL when the device is being removed.
 */
void vaccel_device_kill(struct vaccel_device *vd, const char *why)
{
	if (test_and_set_bit(VACCEL_DEAD, &vd->flags))
		return;
	/* Whoever was adding a buffer has finished once we hold the lock. */
	spin_lock(&vd->ctrl.lock);
	spin_unlock(&vd->ctrl.lock);
	spin_lock(&vd->submit.lock);
	spin_unlock(&vd->submit.lock);
	spin_lock(&vd->event.lock);
	spin_unlock(&vd->event.lock);
	if (why)
		drm_err(&vd->drm, "device dead: %s\n", why);
	wake_up_all(&vd->ctrl.space);
	wake_up_all(&vd->submit.space);
	wake_up_all(&vd->job_space);
	queue_work(vaccel_async_wq, &vd->dead_work);
}

/* Sends a GET_CAPS nobody waits for: its answer proves the device alive. */
static void vaccel_heartbeat(struct vaccel_device *vd)
{
	struct virtio_accel_get_caps *req;
	struct vaccel_req *r;

	r = vaccel_req_alloc(vd, &vd->ctrl, sizeof(*req), sizeof(struct virtio_accel_resp_caps));
	if (!r)
		return;
	req = vaccel_req_body(r);
	req->hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_GET_CAPS);
	atomic_set(&r->state, VACCEL_REQ_ABANDONED);
	vaccel_queue_add(vd, &vd->ctrl, r, 0);
	vaccel_req_put(r);
}

static void vaccel_watchdog(struct work_struct *w)
{
	struct vaccel_device *vd = container_of(to_delayed_work(w), struct vaccel_device,
						watchdog);
	unsigned long timeout = vaccel_timeout();
	unsigned long oldest = 0;
	bool ctrl, jobs;

	if (vaccel_dead(vd))
		return;
	if (vd->vdev->config->get_status(vd->vdev) & VIRTIO_CONFIG_S_NEEDS_RESET) {
		vaccel_device_kill(vd, "the device needs a reset");
		return;
	}
	spin_lock(&vd->ctrl.lock);
	ctrl = !list_empty(&vd->ctrl.pending);
	if (ctrl)
		oldest = list_first_entry(&vd->ctrl.pending, struct vaccel_req, node)->sent;
	spin_unlock(&vd->ctrl.lock);
	spin_lock(&vd->submit.lock);
	jobs = !list_empty(&vd->submit.pending);
	spin_unlock(&vd->submit.lock);

	if (ctrl && time_after(jiffies, oldest + timeout)) {
		vaccel_device_kill(vd, "a control request went unanswered");
		return;
	}
	if (!ctrl && jobs && time_after(jiffies, READ_ONCE(vd->last_answer) + timeout / 2))
		vaccel_heartbeat(vd);
	if (ctrl || jobs)
		vaccel_watchdog_arm(vd);
}

static void vaccel_queue_init(struct vaccel_queue *q, work_func_t fn)
{
	spin_lock_init(&q->lock);
	init_waitqueue_head(&q->space);
	INIT_WORK(&q->work, fn);
	INIT_LIST_HEAD(&q->pending);
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

	vaccel_queue_init(&vd->ctrl, vaccel_reap_work);
	vaccel_queue_init(&vd->submit, vaccel_reap_work);
	vaccel_queue_init(&vd->event, vaccel_event_work);
	INIT_WORK(&vd->dead_work, vaccel_dead_work);
	init_completion(&vd->dead_done);
	INIT_DELAYED_WORK(&vd->watchdog, vaccel_watchdog);
	init_waitqueue_head(&vd->job_space);
	vd->last_answer = jiffies;
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
	vd->ctrl.size = virtqueue_get_vring_size(vd->ctrl.vq);
	vd->submit.size = virtqueue_get_vring_size(vd->submit.vq);
	vd->event.size = virtqueue_get_vring_size(vd->event.vq);
	return 0;
}

/* Fills the event queue; before DRIVER_OK, as the device expects (spec 5). */
void vaccel_vq_fill_events(struct vaccel_device *vd)
{
	spin_lock(&vd->event.lock);
	for (int i = 0; i < VACCEL_NUM_EVENTS; i++)
		vaccel_add_event_buf(vd, &vd->events[i]);
	spin_unlock(&vd->event.lock);
}

/* Tells the device about the event buffers; after DRIVER_OK. */
void vaccel_vq_start(struct vaccel_device *vd)
{
	spin_lock(&vd->event.lock);
	virtqueue_kick(vd->event.vq);
	spin_unlock(&vd->event.lock);
}

/*
 * Stops the device for good: marks it dead, resets it and fails every
 * outstanding request (their waiters wake, their fences signal with an
 * error), then deletes the virtqueues. Nothing here waits for the device.
 */
void vaccel_vq_fini(struct vaccel_device *vd)
{
	vaccel_device_kill(vd, NULL);
	wait_for_completion(&vd->dead_done);
	cancel_delayed_work_sync(&vd->watchdog);
	vd->vdev->config->del_vqs(vd->vdev);
}

/*
 * Sends control request @r and waits for its answer: killable when
 * @killable (a waiter that gives up leaves @r to the device, and its
 * abandoned() handler undoes what the answer created), else in TASK_IDLE.
 * Bounded either way: a device that stops answering is declared dead and
 * the request fails with -ENODEV.
 */
int vaccel_ctrl(struct vaccel_device *vd, struct vaccel_req *r, bool killable)
{
	int ret;

	ret = vaccel_queue_add(vd, &vd->ctrl, r, killable ? TASK_KILLABLE : TASK_IDLE);
	if (ret)
		return ret;
	if (!killable) {
		wait_for_completion_state(&r->done, TASK_IDLE);
		return r->err;
	}
	ret = wait_for_completion_killable(&r->done);
	if (ret && atomic_cmpxchg(&r->state, VACCEL_REQ_PENDING, VACCEL_REQ_ABANDONED) ==
	    VACCEL_REQ_PENDING)
		return ret;
	/* Answered meanwhile: its result is ours. */
	wait_for_completion(&r->done);
	return r->err;
}

/* A control request whose answer creates nothing: copy in, send, copy out. */
int vaccel_ctrl_simple(struct vaccel_device *vd, struct vaccel_ctx *ctx, const void *req,
		       size_t req_len, void *resp, size_t resp_len)
{
	struct vaccel_req *r = vaccel_req_alloc(vd, &vd->ctrl, req_len, resp_len);
	int ret;

	if (!r)
		return -ENOMEM;
	vaccel_req_write(r, 0, req, req_len);
	if (ctx)
		vaccel_req_set_ctx(r, ctx);
	ret = vaccel_ctrl(vd, r, true);
	if (!ret)
		memcpy(resp, r->resp, resp_len);
	vaccel_req_put(r);
	return ret;
}

/*
 * Queues a job's chain on the submit queue, waiting (killable) for ring
 * space. The caller has reserved a job slot; vaccel_job_done() follows.
 */
int vaccel_queue_job(struct vaccel_device *vd, struct vaccel_req *r)
{
	return vaccel_queue_add(vd, &vd->submit, r, TASK_KILLABLE);
}
