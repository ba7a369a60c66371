// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-accel jobs and fences.
 *
 * Each context has a dma_fence timeline whose seqnos the driver assigns and
 * sends as the job's out-fence; the device answers the SUBMIT chain when the
 * job is done, and that answer signals the fence. A job's buffers and its
 * context are held until then.
 */

#include <linux/dma-resv.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include <drm/drm_file.h>
#include <drm/drm_gem.h>
#include <drm/drm_print.h>
#include <drm/drm_syncobj.h>
#include <drm/virtio_accel_drm.h>

#include "vaccel_drv.h"

static void vaccel_ctx_free(struct kref *ref)
{
	struct vaccel_ctx *ctx = container_of(ref, struct vaccel_ctx, ref);

	mutex_destroy(&ctx->submit_lock);
	kfree(ctx);
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

static const char *vaccel_fence_driver_name(struct dma_fence *f)
{
	return "virtio_accel";
}

static const char *vaccel_fence_timeline_name(struct dma_fence *f)
{
	return "context";
}

static const struct dma_fence_ops vaccel_fence_ops = {
	.get_driver_name = vaccel_fence_driver_name,
	.get_timeline_name = vaccel_fence_timeline_name,
};

static void vaccel_job_free(struct vaccel_job *job)
{
	for (u32 i = 0; i < job->nr_bos; i++)
		if (job->bos[i])
			drm_gem_object_put(job->bos[i]);
	kvfree(job->bos);
	if (job->fence)
		dma_fence_put(&job->fence->base);
	vaccel_ctx_put(job->ctx);
	kfree(job);
}

/* The device answered a SUBMIT chain (or went away): signal its fence. */
void vaccel_job_done(struct vaccel_req *r)
{
	struct vaccel_job *job = r->job;
	u32 status = r->err ? 0 : vaccel_status(r->resp, r->used);
	int err = 0;

	switch (status) {
	case VIRTIO_ACCEL_RESP_OK:
		break;
	case VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST:
		WRITE_ONCE(job->ctx->lost, true);
		err = -EIO;
		break;
	case VIRTIO_ACCEL_RESP_ERR_CANCELED:
		err = -ECANCELED;
		break;
	case 0:
		err = r->err;
		break;
	default:
		err = -EIO;
		break;
	}
	if (err)
		dma_fence_set_error(&job->fence->base, err);
	dma_fence_signal(&job->fence->base);
	vaccel_job_free(job);
	kfree(r);
}

/* Copies and checks the buffer list; takes a reference on each buffer. */
static int vaccel_job_lookup_bos(struct drm_file *file, struct vaccel_job *job,
				 struct drm_vaccel_submit_bo *list, u32 n)
{
	job->bos = kvcalloc(n, sizeof(*job->bos), GFP_KERNEL);
	if (!job->bos)
		return -ENOMEM;
	job->nr_bos = n;
	for (u32 i = 0; i < n; i++) {
		u32 a = list[i].access;

		if (!a || a & ~(DRM_VACCEL_BO_READ | DRM_VACCEL_BO_WRITE))
			return -EINVAL;
		job->bos[i] = drm_gem_object_lookup(file, list[i].handle);
		if (!job->bos[i])
			return -ENOENT;
	}
	return 0;
}

/*
 * Turns in-syncobjs into host fence references where the device can wait
 * itself (fences of this device's contexts), and waits here for the rest.
 */
static int vaccel_job_in_fences(struct drm_file *file, struct vaccel_device *vd,
				struct vaccel_ctx *ctx, const u32 *handles, u32 n,
				struct virtio_accel_fence_ref *refs, u32 *nr_refs)
{
	bool cross = vd->features & BIT(VIRTIO_ACCEL_F_CROSS_CTX_FENCE);

	*nr_refs = 0;
	for (u32 i = 0; i < n; i++) {
		struct dma_fence *f;
		int ret;

		ret = drm_syncobj_find_fence(file, handles[i], 0, 0, &f);
		if (ret)
			return ret;
		if (f->ops == &vaccel_fence_ops &&
		    container_of(f, struct vaccel_fence, base)->vd == vd &&
		    !dma_fence_is_signaled(f)) {
			struct vaccel_fence *vf = container_of(f, struct vaccel_fence, base);

			if (vf->ctx_id == ctx->id || cross) {
				refs[*nr_refs].ctx_id = cpu_to_le32(vf->ctx_id);
				refs[*nr_refs].seqno = cpu_to_le64(f->seqno);
				(*nr_refs)++;
				dma_fence_put(f);
				continue;
			}
		}
		ret = dma_fence_wait(f, true);
		if (!ret && f->error)
			ret = f->error;
		dma_fence_put(f);
		if (ret)
			return ret;
	}
	return 0;
}

int vaccel_ioctl_submit(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct vaccel_device *vd = to_vaccel(dev);
	struct vaccel_ctx *ctx = file->driver_priv;
	struct drm_vaccel_submit *args = data;
	struct drm_vaccel_submit_bo *list = NULL;
	struct virtio_accel_fence_ref *refs = NULL;
	struct drm_syncobj *out = NULL;
	struct drm_gem_object *cmd = NULL;
	struct virtio_accel_submit *s;
	struct virtio_accel_submit_bo *sb;
	struct vaccel_req *r = NULL;
	struct vaccel_job *job;
	u32 *in = NULL, nr_refs;
	size_t len;
	int ret;

	if (args->flags || args->pad)
		return -EINVAL;
	if (args->nr_bos > vd->max_submit_bos || args->nr_in_syncobjs > VIRTIO_ACCEL_MAX_IN_FENCES)
		return -EINVAL;
	if (!args->cmd_size || args->cmd_size > vd->max_cmd_size)
		return -EINVAL;
	if (READ_ONCE(ctx->lost))
		return -EIO;

	job = kzalloc(sizeof(*job), GFP_KERNEL);
	if (!job)
		return -ENOMEM;
	kref_get(&ctx->ref);
	job->ctx = ctx;

	list = kvmalloc_array(args->nr_bos, sizeof(*list), GFP_KERNEL);
	in = kvmalloc_array(args->nr_in_syncobjs, sizeof(*in), GFP_KERNEL);
	refs = kvcalloc(args->nr_in_syncobjs, sizeof(*refs), GFP_KERNEL);
	if ((args->nr_bos && !list) || (args->nr_in_syncobjs && (!in || !refs))) {
		ret = -ENOMEM;
		goto out;
	}
	if (copy_from_user(list, u64_to_user_ptr(args->bos), args->nr_bos * sizeof(*list)) ||
	    copy_from_user(in, u64_to_user_ptr(args->in_syncobjs),
			   args->nr_in_syncobjs * sizeof(*in))) {
		ret = -EFAULT;
		goto out;
	}
	ret = vaccel_job_lookup_bos(file, job, list, args->nr_bos);
	if (ret)
		goto out;
	cmd = drm_gem_object_lookup(file, args->cmd_bo);
	if (!cmd) {
		ret = -ENOENT;
		goto out;
	}
	if ((u64)args->cmd_offset + args->cmd_size > cmd->size) {
		ret = -EINVAL;
		goto out;
	}
	if (args->out_syncobj) {
		out = drm_syncobj_find(file, args->out_syncobj);
		if (!out) {
			ret = -ENOENT;
			goto out;
		}
	}
	ret = vaccel_job_in_fences(file, vd, ctx, in, args->nr_in_syncobjs, refs, &nr_refs);
	if (ret)
		goto out;

	len = sizeof(*s) + args->nr_bos * sizeof(*sb) + nr_refs * sizeof(*refs);
	r = vaccel_req_alloc(len, sizeof(struct virtio_accel_resp_submit));
	job->fence = kzalloc(sizeof(*job->fence), GFP_KERNEL);
	if (!r || !job->fence) {
		ret = -ENOMEM;
		goto out;
	}
	s = r->req;
	s->hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_SUBMIT);
	s->hdr.ctx_id = cpu_to_le32(ctx->id);
	s->cmd_bo_handle = cpu_to_le32(to_vaccel_bo(cmd)->host_handle);
	s->cmd_offset = cpu_to_le64(args->cmd_offset);
	s->cmd_size = cpu_to_le32(args->cmd_size);
	s->nr_bos = cpu_to_le32(args->nr_bos);
	s->nr_in_fences = cpu_to_le32(nr_refs);
	sb = (struct virtio_accel_submit_bo *)(s + 1);
	for (u32 i = 0; i < args->nr_bos; i++) {
		sb[i].bo_handle = cpu_to_le32(to_vaccel_bo(job->bos[i])->host_handle);
		sb[i].access = cpu_to_le32(list[i].access);
	}
	memcpy(sb + args->nr_bos, refs, nr_refs * sizeof(*refs));

	spin_lock_init(&job->fence->lock);
	job->fence->ctx_id = ctx->id;
	job->fence->vd = vd;

	/* Seqno order on the wire is the order of this lock. */
	mutex_lock(&ctx->submit_lock);
	dma_fence_init(&job->fence->base, &vaccel_fence_ops, &job->fence->lock,
		       ctx->fence_context, ++ctx->next_seqno);
	s->out_fence = cpu_to_le64(job->fence->base.seqno);
	for (u32 i = 0; i < args->nr_bos; i++) {
		struct dma_resv *resv = job->bos[i]->resv;

		dma_resv_lock(resv, NULL);
		ret = dma_resv_reserve_fences(resv, 1);
		if (!ret)
			dma_resv_add_fence(resv, &job->fence->base,
					   list[i].access & DRM_VACCEL_BO_WRITE ?
					   DMA_RESV_USAGE_WRITE : DMA_RESV_USAGE_READ);
		dma_resv_unlock(resv);
		if (ret)
			break;
	}
	if (out)
		drm_syncobj_replace_fence(out, &job->fence->base);
	dma_fence_get(&job->fence->base);
	r->job = job;
	if (!ret)
		ret = vaccel_submit_req(vd, r);
	mutex_unlock(&ctx->submit_lock);
	if (ret) {
		/* Never queued: fail the fence so nothing waits on it forever. */
		dma_fence_set_error(&job->fence->base, ret);
		dma_fence_signal(&job->fence->base);
		dma_fence_put(&job->fence->base);
		goto out;
	}
	job = NULL;
	r = NULL;
out:
	if (out)
		drm_syncobj_put(out);
	if (cmd)
		drm_gem_object_put(cmd);
	kvfree(list);
	kvfree(in);
	kvfree(refs);
	kfree(r);
	if (job)
		vaccel_job_free(job);
	return ret;
}
