// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-accel contexts, and the teardown of host objects.
 *
 * Every open file has a host context. Host objects are destroyed by
 * teardown work on one ordered workqueue, never by the task that dropped
 * the guest object: a killed process, a full control queue or a job
 * completing in a worker cannot lose or deadlock a CTX_DESTROY or
 * BO_DESTROY. Teardowns go out one at a time in the order they were queued,
 * so a buffer's BO_DESTROY never overtakes its context's CTX_DESTROY and no
 * request names a context id after the device may have reused it. Each
 * teardown's request is allocated together with its object.
 */

#include <linux/slab.h>

#include <drm/drm_drv.h>
#include <drm/drm_print.h>

#include "vaccel_drv.h"

static void vaccel_ctx_free(struct kref *ref)
{
	struct vaccel_ctx *ctx = container_of(ref, struct vaccel_ctx, ref);
	struct vaccel_device *vd = ctx->vd;

	if (ctx->teardown)
		vaccel_teardown_free(ctx->teardown);
	mutex_destroy(&ctx->submit_lock);
	kfree(ctx);
	drm_dev_put(&vd->drm);
}

void vaccel_ctx_put(struct vaccel_ctx *ctx)
{
	kref_put(&ctx->ref, vaccel_ctx_free);
}

void vaccel_ctx_lost(struct vaccel_device *vd, u32 ctx_id)
{
	struct vaccel_ctx *ctx;

	xa_lock(&vd->ctxs);
	ctx = xa_load(&vd->ctxs, ctx_id);
	if (ctx)
		WRITE_ONCE(ctx->lost, true);
	xa_unlock(&vd->ctxs);
}

struct vaccel_teardown *vaccel_teardown_alloc(struct vaccel_device *vd, u32 type)
{
	size_t len = type == VIRTIO_ACCEL_CMD_BO_DESTROY ? sizeof(struct virtio_accel_bo_req) :
			     sizeof(struct virtio_accel_hdr);
	struct vaccel_teardown *t;

	t = kzalloc(sizeof(*t), GFP_KERNEL_ACCOUNT);
	if (!t)
		return NULL;
	t->req = vaccel_req_alloc(vd, &vd->ctrl, len, sizeof(struct virtio_accel_hdr));
	if (!t->req) {
		kfree(t);
		return NULL;
	}
	t->type = type;
	t->vd = vd;
	return t;
}

/* Frees a teardown that was never queued. */
void vaccel_teardown_free(struct vaccel_teardown *t)
{
	vaccel_req_put(t->req);
	kfree(t);
}

static void vaccel_teardown_fn(struct work_struct *w)
{
	struct vaccel_teardown *t = container_of(w, struct vaccel_teardown, work);
	struct vaccel_device *vd = t->vd;
	struct vaccel_ctx *ctx = t->ctx;
	struct vaccel_bo *bo = t->bo;
	int ret;

	/* The device may still be attaching the buffer's pages. */
	if (bo && bo->attach)
		wait_for_completion_state(&bo->attach->done, TASK_IDLE);
	/* A request of the context still queued could otherwise follow it. */
	if (ctx && t->type == VIRTIO_ACCEL_CMD_CTX_DESTROY)
		wait_event_idle(ctx->idle, !atomic_read(&ctx->inflight));

	/* A destroyed context took its buffers with it. */
	if (!(ctx && ctx->destroyed)) {
		ret = vaccel_ctrl(vd, t->req, false);
		if (!ret)
			ret = vaccel_status_errno(vaccel_status(t->req->resp, t->req->used));
		if (ret && ret != -ENODEV)
			drm_warn(&vd->drm, "%s of context %u: %d\n",
				 t->type == VIRTIO_ACCEL_CMD_CTX_DESTROY ? "CTX_DESTROY" :
				 "BO_DESTROY", le32_to_cpu(((struct virtio_accel_hdr *)
							    vaccel_req_body(t->req))->ctx_id), ret);
	}
	if (ctx && t->type == VIRTIO_ACCEL_CMD_CTX_DESTROY)
		ctx->destroyed = true;
	if (bo)
		vaccel_bo_release(bo);
	if (ctx)
		vaccel_ctx_put(ctx);
	vaccel_req_put(t->req);
	kfree(t);
	drm_dev_put(&vd->drm);
}

/*
 * Queues teardown @t of host object @ctx_id / @handle. Takes a reference on
 * @ctx (which may be NULL) and ownership of @bo, freed once the device has
 * let go of its pages.
 */
void vaccel_teardown_queue(struct vaccel_teardown *t, struct vaccel_ctx *ctx, u32 ctx_id,
			   u32 handle, struct vaccel_bo *bo)
{
	struct virtio_accel_bo_req *req = vaccel_req_body(t->req);

	req->hdr.type = cpu_to_le32(t->type);
	req->hdr.ctx_id = cpu_to_le32(ctx_id);
	if (t->type == VIRTIO_ACCEL_CMD_BO_DESTROY)
		req->bo_handle = cpu_to_le32(handle);
	if (ctx)
		kref_get(&ctx->ref);
	t->ctx = ctx;
	t->bo = bo;
	drm_dev_get(&t->vd->drm);
	INIT_WORK(&t->work, vaccel_teardown_fn);
	queue_work(vaccel_wq, &t->work);
}

/* CTX_CREATE answered after its waiter gave up: destroy what nobody owns. */
static void vaccel_ctx_create_abandoned(struct vaccel_device *vd, struct vaccel_req *r)
{
	const struct virtio_accel_hdr *resp = r->resp;
	struct vaccel_teardown *t = r->cleanup;

	if (vaccel_status(r->resp, r->used) != VIRTIO_ACCEL_RESP_OK)
		return;
	r->cleanup = NULL;
	vaccel_teardown_queue(t, NULL, le32_to_cpu(resp->ctx_id), 0, NULL);
}

struct vaccel_ctx *vaccel_ctx_create(struct vaccel_device *vd, u32 priority)
{
	struct virtio_accel_ctx_create *req;
	struct vaccel_ctx *ctx;
	struct vaccel_req *r;
	int ret = -ENOMEM;

	ctx = kzalloc(sizeof(*ctx), GFP_KERNEL_ACCOUNT);
	if (!ctx)
		return ERR_PTR(-ENOMEM);
	kref_init(&ctx->ref);
	mutex_init(&ctx->submit_lock);
	atomic_set(&ctx->inflight, 0);
	init_waitqueue_head(&ctx->idle);
	drm_dev_get(&vd->drm);
	ctx->vd = vd;
	ctx->fence_context = dma_fence_context_alloc(1);
	ctx->teardown = vaccel_teardown_alloc(vd, VIRTIO_ACCEL_CMD_CTX_DESTROY);
	r = vaccel_req_alloc(vd, &vd->ctrl, sizeof(*req), sizeof(struct virtio_accel_hdr));
	if (!ctx->teardown || !r)
		goto out;
	r->cleanup = vaccel_teardown_alloc(vd, VIRTIO_ACCEL_CMD_CTX_DESTROY);
	if (!r->cleanup)
		goto out;
	r->abandoned = vaccel_ctx_create_abandoned;
	req = vaccel_req_body(r);
	req->hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_CTX_CREATE);
	req->priority = cpu_to_le32(priority);
	ret = vaccel_ctrl(vd, r, true);
	if (ret)
		goto out;
	ret = vaccel_status_errno(vaccel_status(r->resp, r->used));
	if (ret)
		goto out;
	ctx->id = le32_to_cpu(((struct virtio_accel_hdr *)r->resp)->ctx_id);
	ret = xa_insert(&vd->ctxs, ctx->id, ctx, GFP_KERNEL);
	if (ret) {
		/* Created on the host but unusable here: destroy it. */
		vaccel_teardown_queue(r->cleanup, NULL, ctx->id, 0, NULL);
		r->cleanup = NULL;
	}
out:
	if (r)
		vaccel_req_put(r);
	if (ret) {
		vaccel_ctx_put(ctx);
		return ERR_PTR(ret);
	}
	return ctx;
}

/*
 * The file is closed: the host context goes, cancelling its queued jobs.
 * Buffers and jobs that still hold the context keep it until they go.
 */
void vaccel_ctx_close(struct vaccel_ctx *ctx)
{
	struct vaccel_teardown *t = ctx->teardown;

	xa_erase(&ctx->vd->ctxs, ctx->id);
	ctx->teardown = NULL;
	vaccel_teardown_queue(t, ctx, ctx->id, 0, NULL);
	vaccel_ctx_put(ctx);
}
