// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-accel buffer objects: GEM shmem objects whose pinned pages are the
 * host buffer's backing, sent as a list of device addresses: DMA-mapped
 * through the virtio device's parent, or guest-physical where the device
 * has the DMA quirk (no VIRTIO_F_ACCESS_PLATFORM), as virtio-gpu does.
 *
 * A buffer belongs to the context of the file that created it. Its pages
 * are charged to the creator's memory cgroup (shmem) and the driver's own
 * allocations for it are accounted too. Freeing is deferred to the teardown
 * worker, which sends BO_DESTROY and only then releases the pages.
 *
 * A dma-buf of another driver (udmabuf, vgem, ...) imported with PRIME is
 * mapped through the virtio device's parent by the DMA API; it becomes a
 * host buffer of the context of the first file that gets a handle to it,
 * its mapped pages as the backing. Jobs of other files are refused it, as
 * for every buffer.
 */

#include <linux/device.h>
#include <linux/dma-buf.h>
#include <linux/dma-mapping.h>
#include <linux/dma-resv.h>
#include <linux/slab.h>
#include <linux/swiotlb.h>
#include <linux/virtio_config.h>

#include <drm/drm_drv.h>
#include <drm/drm_file.h>
#include <drm/drm_gem.h>
#include <drm/drm_prime.h>
#include <drm/drm_utils.h>
#include <drm/drm_vma_manager.h>
#include <drm/virtio_accel_drm.h>

#include "vaccel_drv.h"

static struct device *vaccel_dma_dev(struct vaccel_device *vd)
{
	return vd->vdev->dev.parent;
}

/* Releases what the guest holds for @bo, once the device no longer uses it. */
void vaccel_bo_release(struct vaccel_bo *bo)
{
	struct vaccel_ctx *ctx = bo->ctx;

	if (bo->attach)
		vaccel_req_put(bo->attach);
	if (bo->teardown)
		vaccel_teardown_free(bo->teardown);
	/* An import's table is the attachment's: drm_gem_shmem_free() unmaps it. */
	if (bo->sgt && !bo->imported) {
		if (bo->sgt_mapped)
			dma_unmap_sgtable(vaccel_dma_dev(ctx->vd), bo->sgt, DMA_BIDIRECTIONAL, 0);
		sg_free_table(bo->sgt);
		kfree(bo->sgt);
	}
	if (bo->pinned)
		drm_gem_shmem_unpin(&bo->base);
	drm_gem_shmem_free(&bo->base);
	if (ctx)
		vaccel_ctx_put(ctx);
}

/* The last reference went: destroy the host buffer first, from the worker. */
static void vaccel_gem_free(struct drm_gem_object *obj)
{
	struct vaccel_bo *bo = to_vaccel_bo(obj);
	struct vaccel_teardown *t = bo->teardown;

	if (!bo->host_handle || !t) {
		vaccel_bo_release(bo);
		return;
	}
	bo->teardown = NULL;
	vaccel_teardown_queue(t, bo->ctx, bo->ctx->id, bo->ctx->gen, bo->host_handle, bo);
}

static int vaccel_gem_open(struct drm_gem_object *obj, struct drm_file *file);

static const struct drm_gem_object_funcs vaccel_gem_funcs = {
	.free = vaccel_gem_free,
	.open = vaccel_gem_open,
	.print_info = drm_gem_shmem_object_print_info,
	.pin = drm_gem_shmem_object_pin,
	.unpin = drm_gem_shmem_object_unpin,
	.get_sg_table = drm_gem_shmem_object_get_sg_table,
	.vmap = drm_gem_shmem_object_vmap,
	.vunmap = drm_gem_shmem_object_vunmap,
	.mmap = drm_gem_shmem_object_mmap,
	.vm_ops = &drm_gem_shmem_vm_ops,
};

bool vaccel_is_bo(struct drm_gem_object *obj)
{
	return obj->funcs == &vaccel_gem_funcs;
}

struct drm_gem_object *vaccel_gem_create_object(struct drm_device *dev, size_t size)
{
	struct vaccel_bo *bo;

	/* The shmem helpers free the object as their own struct. */
	BUILD_BUG_ON(offsetof(struct vaccel_bo, base) != 0);
	bo = kzalloc(sizeof(*bo), GFP_KERNEL_ACCOUNT);
	if (!bo)
		return ERR_PTR(-ENOMEM);
	bo->base.base.funcs = &vaccel_gem_funcs;
	bo->base.map_wc = false;
	return &bo->base.base;
}

/* Builds the device's view of the pinned pages: an sg table, DMA-mapped. */
static int vaccel_bo_map(struct vaccel_device *vd, struct vaccel_bo *bo)
{
	struct sg_table *sgt;
	int ret;

	sgt = drm_gem_shmem_get_sg_table(&bo->base);
	if (IS_ERR(sgt))
		return PTR_ERR(sgt);
	bo->sgt = sgt;
	if (virtio_has_dma_quirk(vd->vdev))
		return 0;
	ret = dma_map_sgtable(vaccel_dma_dev(vd), sgt, DMA_BIDIRECTIONAL, 0);
	if (ret)
		return ret;
	bo->sgt_mapped = true;
	return 0;
}

/*
 * Walks the device address ranges of @bo, merging adjacent ones; writes
 * them as entries of @r from @off when @r is set. Returns the entry count.
 */
static u32 vaccel_bo_entries(struct vaccel_bo *bo, struct vaccel_req *r, size_t off)
{
	struct virtio_accel_mem_entry e = {};
	struct scatterlist *sg;
	u64 next = 0;
	u32 n = 0;
	int i;

	for_each_sgtable_dma_sg(bo->sgt, sg, i) {
		u64 addr = bo->sgt_mapped ? sg_dma_address(sg) : sg_phys(sg);
		u32 len = bo->sgt_mapped ? sg_dma_len(sg) : sg->length;

		if (!len)
			continue;
		if (n && addr == next && le32_to_cpu(e.length) <= U32_MAX - len) {
			le32_add_cpu(&e.length, len);
			next += len;
			continue;
		}
		if (n && r)
			vaccel_req_write(r, off + (n - 1) * sizeof(e), &e, sizeof(e));
		e.addr = cpu_to_le64(addr);
		e.length = cpu_to_le32(len);
		next = addr + len;
		n++;
	}
	if (n && r)
		vaccel_req_write(r, off + (n - 1) * sizeof(e), &e, sizeof(e));
	return n;
}

/* BO_CREATE answered after its waiter gave up: destroy what nobody owns. */
static void vaccel_bo_create_abandoned(struct vaccel_device *vd, struct vaccel_req *r)
{
	const struct virtio_accel_resp_bo_create *resp = r->resp;
	struct vaccel_teardown *t = r->cleanup;

	if (vaccel_status(r->resp, r->used) != VIRTIO_ACCEL_RESP_OK)
		return;
	r->cleanup = NULL;
	vaccel_teardown_queue(t, r->ctx, r->ctx->id, r->ctx->gen, le32_to_cpu(resp->bo_handle),
			      NULL);
}

/* Creates the host buffer and attaches the object's pinned pages to it. */
static int vaccel_bo_attach(struct vaccel_device *vd, struct vaccel_ctx *ctx,
			    struct vaccel_bo *bo)
{
	struct virtio_accel_bo_attach_backing *att;
	struct virtio_accel_bo_create *create;
	struct vaccel_req *r;
	u32 n;
	int ret;

	/* One attach per buffer, at most max_sg_entries entries (spec 6.5). */
	n = vaccel_bo_entries(bo, NULL, 0);
	if (!n || n > vd->max_sg_entries)
		return -E2BIG;

	r = vaccel_req_alloc(vd, &vd->ctrl, sizeof(*create),
			     sizeof(struct virtio_accel_resp_bo_create));
	if (!r)
		return -ENOMEM;
	r->cleanup = vaccel_teardown_alloc(vd, VIRTIO_ACCEL_CMD_BO_DESTROY);
	if (!r->cleanup) {
		vaccel_req_put(r);
		return -ENOMEM;
	}
	r->abandoned = vaccel_bo_create_abandoned;
	vaccel_req_set_ctx(r, ctx);
	create = vaccel_req_body(r);
	create->hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_BO_CREATE);
	create->hdr.ctx_id = cpu_to_le32(ctx->id);
	create->size = cpu_to_le64(bo->base.base.size);
	ret = vaccel_ctrl(vd, r, true);
	if (!ret)
		ret = vaccel_status_errno(vaccel_status(r->resp, r->used));
	if (!ret)
		bo->host_handle = le32_to_cpu(((struct virtio_accel_resp_bo_create *)
					       r->resp)->bo_handle);
	vaccel_req_put(r);
	if (ret)
		return ret;

	r = vaccel_req_alloc(vd, &vd->ctrl, sizeof(*att) + (size_t)n * sizeof(struct
			     virtio_accel_mem_entry), sizeof(struct virtio_accel_hdr));
	if (!r)
		return -ENOMEM;
	vaccel_req_set_ctx(r, ctx);
	att = vaccel_req_body(r);
	att->hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING);
	att->hdr.ctx_id = cpu_to_le32(ctx->id);
	att->bo_handle = cpu_to_le32(bo->host_handle);
	att->nr_entries = cpu_to_le32(n);
	vaccel_bo_entries(bo, r, sizeof(*att));
	ret = vaccel_ctrl(vd, r, true);
	if (!ret)
		ret = vaccel_status_errno(vaccel_status(r->resp, r->used));
	if (atomic_read(&r->state) == VACCEL_REQ_ABANDONED)
		bo->attach = r;	/* the pages stay until the device answers */
	else
		vaccel_req_put(r);
	return ret;
}

/*
 * A handle to @obj was made in @file: an imported buffer not yet bound to a
 * context becomes a host buffer of the file's. Buffers already bound stay
 * their context's; jobs of other contexts are refused them.
 */
static int vaccel_gem_open(struct drm_gem_object *obj, struct drm_file *file)
{
	struct vaccel_device *vd = to_vaccel(obj->dev);
	struct vaccel_bo *bo = to_vaccel_bo(obj);
	struct vaccel_ctx *ctx = file->driver_priv;
	struct vaccel_teardown *t;
	int idx, ret;

	if (!bo->imported || READ_ONCE(bo->ctx))
		return 0;
	if (!ctx)
		return -EINVAL;
	if (obj->size > vd->max_bo_size)
		return -E2BIG;
	if (READ_ONCE(ctx->lost))
		return -EIO;
	if (!drm_dev_enter(obj->dev, &idx))
		return -ENODEV;
	t = vaccel_teardown_alloc(vd, VIRTIO_ACCEL_CMD_BO_DESTROY);
	if (!t) {
		ret = -ENOMEM;
		goto out;
	}
	/* The first file to get a handle binds it, even if two race. */
	kref_get(&ctx->ref);
	if (cmpxchg(&bo->ctx, NULL, ctx)) {
		vaccel_ctx_put(ctx);
		vaccel_teardown_free(t);
		ret = 0;
		goto out;
	}
	bo->teardown = t;
	ret = vaccel_bo_attach(vd, ctx, bo);
out:
	drm_dev_exit(idx);
	return ret;
}

struct drm_gem_object *vaccel_gem_prime_import(struct drm_device *dev, struct dma_buf *buf)
{
	struct vaccel_device *vd = to_vaccel(dev);
	struct device *dma_dev = vaccel_dma_dev(vd);

	/*
	 * Without VIRTIO_F_ACCESS_PLATFORM the device takes guest-physical
	 * addresses: the exporter's mapping for the parent gives them only
	 * when no IOMMU translates and nothing bounces.
	 */
	if (virtio_has_dma_quirk(vd->vdev) &&
	    (device_iommu_mapped(dma_dev) || is_swiotlb_force_bounce(dma_dev)))
		return ERR_PTR(-EOPNOTSUPP);
	return drm_gem_prime_import_dev(dev, buf, dma_dev);
}

struct drm_gem_object *vaccel_gem_prime_import_sg_table(struct drm_device *dev,
							struct dma_buf_attachment *attach,
							struct sg_table *sgt)
{
	struct drm_gem_object *obj = drm_gem_shmem_prime_import_sg_table(dev, attach, sgt);
	struct vaccel_bo *bo;

	if (IS_ERR(obj))
		return obj;
	bo = to_vaccel_bo(obj);
	bo->imported = true;
	bo->sgt = sgt;
	bo->sgt_mapped = true;
	return obj;
}

int vaccel_ioctl_bo_create(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct vaccel_device *vd = to_vaccel(dev);
	struct vaccel_ctx *ctx = file->driver_priv;
	struct drm_vaccel_bo_create *args = data;
	struct drm_gem_shmem_object *shmem;
	struct vaccel_bo *bo;
	size_t size;
	int ret;

	if (args->flags || args->handle)
		return -EINVAL;
	size = PAGE_ALIGN(args->size);
	if (!args->size || size < args->size || size > vd->max_bo_size)
		return -EINVAL;
	if (READ_ONCE(ctx->lost))
		return -EIO;

	shmem = drm_gem_shmem_create(dev, size);
	if (IS_ERR(shmem))
		return PTR_ERR(shmem);
	bo = to_vaccel_bo(&shmem->base);
	kref_get(&ctx->ref);
	bo->ctx = ctx;
	bo->teardown = vaccel_teardown_alloc(vd, VIRTIO_ACCEL_CMD_BO_DESTROY);
	ret = bo->teardown ? drm_gem_shmem_pin(shmem) : -ENOMEM;
	bo->pinned = !ret;
	if (!ret)
		ret = vaccel_bo_map(vd, bo);
	if (!ret)
		ret = vaccel_bo_attach(vd, ctx, bo);
	if (!ret)
		ret = drm_gem_handle_create(file, &shmem->base, &args->handle);
	drm_gem_object_put(&shmem->base);
	return ret;
}

int vaccel_ioctl_bo_info(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct drm_vaccel_bo_info *args = data;
	struct drm_gem_object *obj;
	int ret;

	if (args->pad)
		return -EINVAL;
	obj = drm_gem_object_lookup(file, args->handle);
	if (!obj)
		return -ENOENT;
	ret = drm_gem_create_mmap_offset(obj);
	if (!ret) {
		args->size = obj->size;
		args->mmap_offset = drm_vma_node_offset_addr(&obj->vma_node);
	}
	drm_gem_object_put(obj);
	return ret;
}

/* The status a fence's error stands for (see the UAPI header). */
static u32 vaccel_fence_status(struct dma_fence *f)
{
	switch (f->error) {
	case 0:
		return DRM_VACCEL_JOB_STATUS_OK;
	case -ENOMEM:
		return DRM_VACCEL_JOB_STATUS_NO_MEMORY;
	case -ECANCELED:
		return DRM_VACCEL_JOB_STATUS_CANCELED;
	case -ENOTRECOVERABLE:
		return DRM_VACCEL_JOB_STATUS_CONTEXT_LOST;
	case -ENODEV:
		return DRM_VACCEL_JOB_STATUS_DEVICE_LOST;
	default:
		return DRM_VACCEL_JOB_STATUS_FAILED;
	}
}

int vaccel_ioctl_bo_wait(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct drm_vaccel_bo_wait *args = data;
	struct dma_resv_iter cursor;
	struct drm_gem_object *obj;
	struct dma_fence *f;
	long ret;

	if (args->pad || args->pad2)
		return -EINVAL;
	obj = drm_gem_object_lookup(file, args->handle);
	if (!obj)
		return -ENOENT;
	ret = dma_resv_wait_timeout(obj->resv, DMA_RESV_USAGE_READ, true,
				    drm_timeout_abs_to_jiffies(args->timeout_ns));
	if (ret > 0) {
		/*
		 * The reservation keeps each context's latest fence, signalled
		 * ones too; only the locked walk returns those.
		 */
		args->job_status = DRM_VACCEL_JOB_STATUS_OK;
		ret = dma_resv_lock_interruptible(obj->resv, NULL);
		if (!ret) {
			dma_resv_for_each_fence(&cursor, obj->resv, DMA_RESV_USAGE_READ, f)
				args->job_status = max(args->job_status, vaccel_fence_status(f));
			dma_resv_unlock(obj->resv);
			ret = 1;
		}
	}
	drm_gem_object_put(obj);
	if (ret == 0)
		return -ETIMEDOUT;
	return ret < 0 ? ret : 0;
}
