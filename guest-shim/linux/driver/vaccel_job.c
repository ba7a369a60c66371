// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-accel jobs and fences.
 *
 * Each context has a dma_fence timeline whose seqnos the driver assigns and
 * sends as the job's out-fence; the device answers the SUBMIT chain when the
 * job is done, and that answer signals the fence with the job's status as
 * its error. A job holds its context and every buffer it names, the
 * command-stream buffer included, until then.
 *
 * SUBMIT does everything that can fail or wait first: it looks the buffers
 * up, resolves in-fences, takes one of the device's max_jobs_in_flight job
 * slots (throttling, killable), locks the reservations and reserves a fence
 * slot in each. Only then, under the context's submit lock, does it queue
 * the chain (killable wait for ring space), and only once the chain is
 * queued does it publish the fence in the reservations and the out-syncobj.
 * A SUBMIT that fails has published nothing and consumed no seqno.
 *
 * Why not drm_sched: the device is the scheduler. It orders each context's
 * jobs, waits itself for in-fences on this device's timelines, and shares
 * the NPU by priority and weight; drm_sched would resolve those waits in the
 * guest (a round trip per dependency) or be bypassed by them, and duplicate
 * the ordering. Its timeout is a per-job wall-clock timer, while how long a
 * job may run is host policy (device time, the host's job timeout) and a
 * job may wait behind other VMs for any time: a guest timer cannot tell a
 * slow job from a dead device, so the driver detects a dead device by its
 * control queue instead (vaccel_vq.c). And its API changed between the
 * kernels this driver builds against (init arguments, job init, timeout
 * status). What it would give - a fence published only once the job cannot
 * fail to queue, ring space and job slots reserved up front, dependencies
 * off the submit path - is done here directly.
 */

#include <linux/dma-resv.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/ww_mutex.h>

#include <drm/drm_file.h>
#include <drm/drm_gem.h>
#include <drm/drm_print.h>
#include <drm/drm_syncobj.h>
#include <drm/virtio_accel_drm.h>

#include "vaccel_drv.h"

/*
 * From Linux 7.3 on (checked there), a fence whose ops have no release or
 * wait callback detaches from them when it signals, so signalled fences
 * outlive the module safely; every fence of a device signals when it is
 * removed. Before that, each fence holds a module reference until freed.
 */
#define VACCEL_FENCE_DETACHES	(KERNEL_VERSION(7, 3, 0) <= LINUX_VERSION_CODE)

static const char *vaccel_fence_driver_name(struct dma_fence *f)
{
	return "virtio_accel";
}

static const char *vaccel_fence_timeline_name(struct dma_fence *f)
{
	return "context";
}

#if !VACCEL_FENCE_DETACHES
static void vaccel_fence_release(struct dma_fence *f)
{
	dma_fence_free(f);
	module_put(THIS_MODULE);
}
#endif

static const struct dma_fence_ops vaccel_fence_ops = {
	.get_driver_name = vaccel_fence_driver_name,
	.get_timeline_name = vaccel_fence_timeline_name,
#if !VACCEL_FENCE_DETACHES
	.release = vaccel_fence_release,
#endif
};

static void vaccel_fence_init(struct vaccel_fence *f, struct vaccel_ctx *ctx, u64 seqno)
{
#if !VACCEL_FENCE_DETACHES
	__module_get(THIS_MODULE);
#endif
	dma_fence_init(&f->base, &vaccel_fence_ops, &f->lock, ctx->fence_context, seqno);
}

static void vaccel_job_free(struct kref *ref)
{
	struct vaccel_job *job = container_of(ref, struct vaccel_job, ref);

	for (u32 i = 0; i < job->nr_bos; i++)
		if (job->bos[i])
			drm_gem_object_put(job->bos[i]);
	kvfree(job->bos);
	if (job->fence_live)
		dma_fence_put(&job->fence->base);
	else
		kfree(job->fence);
	vaccel_ctx_put(job->ctx);
	kfree(job);
}

static void vaccel_job_put(struct vaccel_job *job)
{
	kref_put(&job->ref, vaccel_job_free);
}

/*
 * The device answered a SUBMIT chain, or died first, or was reset first:
 * signal its fence.
 */
void vaccel_job_done(struct vaccel_device *vd, struct vaccel_req *r)
{
	struct vaccel_job *job = r->job;
	u32 status = vaccel_status(r->resp, r->used);
	int err;

	if (r->err == -ENODEV)
		err = -ENODEV;
	else if (r->err || status == VIRTIO_ACCEL_RESP_ERR_CONTEXT_LOST)
		err = -ENOTRECOVERABLE;	/* lost, or in a reset of the device */
	else
		err = vaccel_status_errno(status);
	if (err == -ENOTRECOVERABLE)
		WRITE_ONCE(job->ctx->lost, true);
	if (err)
		dma_fence_set_error(&job->fence->base, err);
	dma_fence_signal(&job->fence->base);
	r->job = NULL;
	atomic_dec(&vd->jobs);
	wake_up_all(&vd->job_space);
	vaccel_job_put(job);
}

static int vaccel_cmp_ptr(const void *a, const void *b)
{
	uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Looks up the buffer list and the command-stream buffer, taking a reference
 * on each for the job. Every buffer must be one of this device's and belong
 * to the submitting context: a buffer shared in from another file (PRIME or
 * FLINK) has its host buffer in the other file's context, and the device
 * would resolve its handle in this one.
 */
static int vaccel_job_lookup_bos(struct drm_file *file, struct vaccel_job *job,
				 const struct drm_vaccel_submit_bo *list, u32 n, u32 cmd)
{
	struct drm_gem_object **sorted;
	int ret = 0;

	job->bos = kvcalloc(n + 1, sizeof(*job->bos), GFP_KERNEL_ACCOUNT);
	if (!job->bos)
		return -ENOMEM;
	job->nr_bos = n + 1;
	for (u32 i = 0; i <= n; i++) {
		struct drm_gem_object *obj;

		if (i < n && (!list[i].access ||
			      list[i].access & ~(DRM_VACCEL_BO_READ | DRM_VACCEL_BO_WRITE)))
			return -EINVAL;
		obj = drm_gem_object_lookup(file, i < n ? list[i].handle : cmd);
		if (!obj)
			return -ENOENT;
		job->bos[i] = obj;
		if (!vaccel_is_bo(obj) || to_vaccel_bo(obj)->ctx != job->ctx)
			return -EINVAL;
	}
	/* Each buffer once: the device refuses duplicates, and so do we. */
	sorted = kvmalloc_array(n, sizeof(*sorted), GFP_KERNEL_ACCOUNT);
	if (!sorted)
		return -ENOMEM;
	memcpy(sorted, job->bos, n * sizeof(*sorted));
	sort(sorted, n, sizeof(*sorted), vaccel_cmp_ptr, NULL);
	for (u32 i = 1; i < n; i++)
		if (sorted[i] == sorted[i - 1])
			ret = -EINVAL;
	kvfree(sorted);
	return ret;
}

/*
 * Waits for a fence the device cannot wait for: interruptibly, and giving
 * up when the device dies, so removal never waits for another driver.
 */
static int vaccel_wait_foreign(struct vaccel_device *vd, struct dma_fence *f)
{
	long t;

	do {
		if (vaccel_dead(vd))
			return -ENODEV;
		t = dma_fence_wait_timeout(f, true, msecs_to_jiffies(100));
	} while (!t);
	if (t < 0)
		return t;
	return f->error;
}

/*
 * Turns in-syncobjs into device fence references where the device can wait
 * itself (unsignalled fences of this device's contexts), and waits here,
 * interruptibly, for the rest.
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
		if (rcu_access_pointer(f->ops) == &vaccel_fence_ops && !dma_fence_is_signaled(f)) {
			struct vaccel_fence *vf = container_of(f, struct vaccel_fence, base);

			if (vf->serial == vd->serial && (vf->ctx_id == ctx->id || cross)) {
				refs[*nr_refs].ctx_id = cpu_to_le32(vf->ctx_id);
				refs[*nr_refs].seqno = cpu_to_le64(f->seqno);
				(*nr_refs)++;
				dma_fence_put(f);
				continue;
			}
		}
		ret = vaccel_wait_foreign(vd, f);
		dma_fence_put(f);
		if (ret)
			return ret;
	}
	return 0;
}

/* Takes one of the device's job slots: max_jobs_in_flight (spec 7). */
static int vaccel_job_slot_get(struct vaccel_device *vd)
{
	bool got = false;
	int ret;

	ret = wait_event_killable(vd->job_space,
				  (got = atomic_add_unless(&vd->jobs, 1, vd->max_jobs)) ||
				  vaccel_dead(vd));
	if (ret)
		return ret;
	if (vaccel_dead(vd)) {
		if (got) {
			atomic_dec(&vd->jobs);
			wake_up_all(&vd->job_space);
		}
		return -ENODEV;
	}
	return 0;
}

/* Builds the SUBMIT request; its out_fence is filled in when queued. */
static struct vaccel_req *vaccel_job_req(struct vaccel_device *vd, struct vaccel_ctx *ctx,
					 struct drm_vaccel_submit *args,
					 const struct drm_vaccel_submit_bo *list,
					 const struct virtio_accel_fence_ref *refs, u32 nr_refs,
					 struct vaccel_job *job)
{
	size_t len = sizeof(struct virtio_accel_submit) +
		     (size_t)args->nr_bos * sizeof(struct virtio_accel_submit_bo) +
		     (size_t)nr_refs * sizeof(*refs);
	struct virtio_accel_submit *s;
	struct vaccel_req *r;
	size_t off;

	r = vaccel_req_alloc(vd, &vd->submit, len, sizeof(struct virtio_accel_resp_submit));
	if (!r)
		return NULL;
	/*
	 * The job holds the context; the generation alone makes the queue
	 * refuse it (-EIO) once a reset has lost the context, so it never
	 * reaches a device that does not know the context, or that gave its
	 * id to another file's.
	 */
	r->gen = ctx->gen;
	s = vaccel_req_body(r);
	s->hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_SUBMIT);
	s->hdr.ctx_id = cpu_to_le32(ctx->id);
	s->cmd_bo_handle = cpu_to_le32(to_vaccel_bo(job->bos[args->nr_bos])->host_handle);
	s->cmd_offset = cpu_to_le64(args->cmd_offset);
	s->cmd_size = cpu_to_le32(args->cmd_size);
	s->nr_bos = cpu_to_le32(args->nr_bos);
	s->nr_in_fences = cpu_to_le32(nr_refs);
	off = sizeof(*s);
	for (u32 i = 0; i < args->nr_bos; i++) {
		struct virtio_accel_submit_bo sb = {
			.bo_handle = cpu_to_le32(to_vaccel_bo(job->bos[i])->host_handle),
			.access = cpu_to_le32(list[i].access),
		};

		vaccel_req_write(r, off, &sb, sizeof(sb));
		off += sizeof(sb);
	}
	vaccel_req_write(r, off, refs, nr_refs * sizeof(*refs));
	return r;
}

/*
 * Queues @r under the context's submit lock with the next seqno, then
 * publishes the fence in every listed buffer (whose reservations the caller
 * holds, a slot reserved in each) and in @out.
 */
static int vaccel_job_queue(struct vaccel_device *vd, struct vaccel_ctx *ctx,
			    struct vaccel_job *job, struct vaccel_req *r,
			    const struct drm_vaccel_submit_bo *list, u32 nr_bos,
			    struct drm_syncobj *out)
{
	struct virtio_accel_submit *s = vaccel_req_body(r);
	u64 seqno;
	int ret;

	ret = mutex_lock_killable(&ctx->submit_lock);
	if (ret)
		return ret;
	seqno = ctx->next_seqno + 1;
	s->out_fence = cpu_to_le64(seqno);
	vaccel_fence_init(job->fence, ctx, seqno);
	job->fence_live = true;
	r->job = job;
	kref_get(&job->ref);	/* the device's, until vaccel_job_done() */
	ret = vaccel_queue_job(vd, r);
	if (ret) {
		r->job = NULL;
		kref_put(&job->ref, vaccel_job_free);
		mutex_unlock(&ctx->submit_lock);
		/* Never queued, never published: nothing waits on it. */
		dma_fence_set_error(&job->fence->base, ret);
		dma_fence_signal(&job->fence->base);
		return ret;
	}
	ctx->next_seqno = seqno;
	for (u32 i = 0; i < nr_bos; i++)
		dma_resv_add_fence(job->bos[i]->resv, &job->fence->base,
				   list[i].access & DRM_VACCEL_BO_WRITE ?
				   DMA_RESV_USAGE_WRITE : DMA_RESV_USAGE_READ);
	if (out)
		drm_syncobj_replace_fence(out, &job->fence->base);
	mutex_unlock(&ctx->submit_lock);
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
	struct ww_acquire_ctx ww;
	struct vaccel_req *r = NULL;
	struct vaccel_job *job;
	bool slot = false, locked = false;
	u32 *in = NULL, nr_refs = 0;
	int ret;

	if (args->flags || args->pad)
		return -EINVAL;
	if (args->nr_bos > vd->max_submit_bos || args->nr_in_syncobjs > vd->max_in_fences)
		return -EINVAL;
	if (!args->cmd_size || args->cmd_size > vd->max_cmd_size)
		return -EINVAL;
	if (READ_ONCE(ctx->lost))
		return -EIO;

	job = kzalloc(sizeof(*job), GFP_KERNEL_ACCOUNT);
	if (!job)
		return -ENOMEM;
	kref_init(&job->ref);
	kref_get(&ctx->ref);
	job->ctx = ctx;

	list = kvmalloc_array(args->nr_bos, sizeof(*list), GFP_KERNEL_ACCOUNT);
	in = kvmalloc_array(args->nr_in_syncobjs, sizeof(*in), GFP_KERNEL_ACCOUNT);
	refs = kvcalloc(args->nr_in_syncobjs, sizeof(*refs), GFP_KERNEL_ACCOUNT);
	job->fence = kzalloc(sizeof(*job->fence), GFP_KERNEL_ACCOUNT);
	if ((args->nr_bos && !list) || (args->nr_in_syncobjs && (!in || !refs)) || !job->fence) {
		ret = -ENOMEM;
		goto out;
	}
	spin_lock_init(&job->fence->lock);
	job->fence->ctx_id = ctx->id;
	job->fence->serial = vd->serial;
	if (copy_from_user(list, u64_to_user_ptr(args->bos),
			   (size_t)args->nr_bos * sizeof(*list)) ||
	    copy_from_user(in, u64_to_user_ptr(args->in_syncobjs),
			   (size_t)args->nr_in_syncobjs * sizeof(*in))) {
		ret = -EFAULT;
		goto out;
	}
	ret = vaccel_job_lookup_bos(file, job, list, args->nr_bos, args->cmd_bo);
	if (ret)
		goto out;
	if ((u64)args->cmd_offset + args->cmd_size > job->bos[args->nr_bos]->size) {
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
	r = vaccel_job_req(vd, ctx, args, list, refs, nr_refs, job);
	if (!r) {
		ret = -ENOMEM;
		goto out;
	}

	ret = vaccel_job_slot_get(vd);
	if (ret)
		goto out;
	slot = true;
	ret = drm_gem_lock_reservations(job->bos, args->nr_bos, &ww);
	if (ret)
		goto out;
	locked = true;
	for (u32 i = 0; i < args->nr_bos && !ret; i++)
		ret = dma_resv_reserve_fences(job->bos[i]->resv, 1);
	if (ret)
		goto out;
	ret = vaccel_job_queue(vd, ctx, job, r, list, args->nr_bos, out);
	if (!ret)
		slot = false;	/* released by vaccel_job_done() */
out:
	if (locked)
		drm_gem_unlock_reservations(job->bos, args->nr_bos, &ww);
	if (slot) {
		atomic_dec(&vd->jobs);
		wake_up_all(&vd->job_space);
	}
	if (r)
		vaccel_req_put(r);
	if (out)
		drm_syncobj_put(out);
	kvfree(list);
	kvfree(in);
	kvfree(refs);
	vaccel_job_put(job);
	return ret;
}
