// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-accel buffer objects: GEM shmem objects whose pinned pages are the
 * host buffer's backing, sent as a list of guest-physical ranges. The host
 * reads and writes those pages in place.
 */

#include <linux/dma-resv.h>
#include <linux/slab.h>

#include <drm/drm_file.h>
#include <drm/drm_gem.h>
#include <drm/drm_utils.h>
#include <drm/drm_vma_manager.h>
#include <drm/virtio_accel_drm.h>

#include "vaccel_drv.h"

static int vaccel_host_bo_destroy(struct vaccel_device *vd, u32 ctx, u32 handle)
{
	struct virtio_accel_bo_req req = {
		.hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_BO_DESTROY),
		.hdr.ctx_id = cpu_to_le32(ctx),
		.bo_handle = cpu_to_le32(handle),
	};
	struct virtio_accel_hdr resp;
	int ret;

	ret = vaccel_ctrl(vd, &req, sizeof(req), &resp, sizeof(resp));
	if (ret)
		return ret;
	return vaccel_status(&resp, sizeof(resp)) == VIRTIO_ACCEL_RESP_OK ? 0 : -EIO;
}

static void vaccel_gem_free(struct drm_gem_object *obj)
{
	struct vaccel_bo *bo = to_vaccel_bo(obj);
	struct vaccel_ctx *ctx = bo->ctx;

	/* A destroyed context took its buffers with it on the host. */
	if (ctx && bo->host_handle && !READ_ONCE(ctx->dead) && !READ_ONCE(ctx->vd->removing))
		vaccel_host_bo_destroy(ctx->vd, ctx->id, bo->host_handle);
	if (bo->pinned)
		drm_gem_shmem_unpin(&bo->base);
	drm_gem_shmem_free(&bo->base);
	if (ctx)
		vaccel_ctx_put(ctx);
}

static const struct drm_gem_object_funcs vaccel_gem_funcs = {
	.free = vaccel_gem_free,
	.print_info = drm_gem_shmem_object_print_info,
	.pin = drm_gem_shmem_object_pin,
	.unpin = drm_gem_shmem_object_unpin,
	.get_sg_table = drm_gem_shmem_object_get_sg_table,
	.vmap = drm_gem_shmem_object_vmap,
	.vunmap = drm_gem_shmem_object_vunmap,
	.mmap = drm_gem_shmem_object_mmap,
	.vm_ops = &drm_gem_shmem_vm_ops,
};

struct drm_gem_object *vaccel_gem_create_object(struct drm_device *dev, size_t size)
{
	struct vaccel_bo *bo = kzalloc(sizeof(*bo), GFP_KERNEL);

	if (!bo)
		return ERR_PTR(-ENOMEM);
	bo->base.base.funcs = &vaccel_gem_funcs;
	bo->base.map_wc = false;
	return &bo->base.base;
}

/* Creates the host buffer and attaches the object's pinned pages to it. */
static int vaccel_bo_attach(struct vaccel_device *vd, struct vaccel_ctx *ctx,
			    struct vaccel_bo *bo)
{
	size_t npages = bo->base.base.size >> PAGE_SHIFT;
	struct virtio_accel_bo_create create = {
		.hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_BO_CREATE),
		.hdr.ctx_id = cpu_to_le32(ctx->id),
		.size = cpu_to_le64(bo->base.base.size),
	};
	struct virtio_accel_resp_bo_create created;
	struct virtio_accel_bo_attach_backing *att;
	struct virtio_accel_mem_entry *e;
	struct virtio_accel_hdr resp;
	size_t n = 0, len;
	int ret;

	ret = vaccel_ctrl(vd, &create, sizeof(create), &created, sizeof(created));
	if (ret)
		return ret;
	if (vaccel_status(&created, sizeof(created)) != VIRTIO_ACCEL_RESP_OK)
		return -ENOSPC;
	bo->host_handle = le32_to_cpu(created.bo_handle);

	len = sizeof(*att) + npages * sizeof(*e);
	att = kvzalloc(len, GFP_KERNEL);
	if (!att)
		return -ENOMEM;
	e = (struct virtio_accel_mem_entry *)(att + 1);
	/* One entry per run of physically contiguous pages. */
	for (size_t i = 0; i < npages; i++) {
		phys_addr_t pa = page_to_phys(bo->base.pages[i]);

		if (n && le64_to_cpu(e[n - 1].addr) + le32_to_cpu(e[n - 1].length) == pa &&
		    le32_to_cpu(e[n - 1].length) <= U32_MAX - PAGE_SIZE) {
			le32_add_cpu(&e[n - 1].length, PAGE_SIZE);
			continue;
		}
		e[n].addr = cpu_to_le64(pa);
		e[n].length = cpu_to_le32(PAGE_SIZE);
		n++;
	}
	att->hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_BO_ATTACH_BACKING);
	att->hdr.ctx_id = cpu_to_le32(ctx->id);
	att->bo_handle = cpu_to_le32(bo->host_handle);
	att->nr_entries = cpu_to_le32(n);
	ret = vaccel_ctrl(vd, att, sizeof(*att) + n * sizeof(*e), &resp, sizeof(resp));
	kvfree(att);
	if (ret)
		return ret;
	return vaccel_status(&resp, sizeof(resp)) == VIRTIO_ACCEL_RESP_OK ? 0 : -EIO;
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
	ret = drm_gem_shmem_pin(shmem);
	bo->pinned = !ret;
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

int vaccel_ioctl_bo_wait(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct drm_vaccel_bo_wait *args = data;
	struct drm_gem_object *obj;
	long ret;

	if (args->pad)
		return -EINVAL;
	obj = drm_gem_object_lookup(file, args->handle);
	if (!obj)
		return -ENOENT;
	ret = dma_resv_wait_timeout(obj->resv, DMA_RESV_USAGE_READ, true,
				    drm_timeout_abs_to_jiffies(args->timeout_ns));
	drm_gem_object_put(obj);
	if (ret == 0)
		return -ETIMEDOUT;
	return ret < 0 ? ret : 0;
}
