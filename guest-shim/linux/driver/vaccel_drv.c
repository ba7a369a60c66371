// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-accel: binds a virtio-accel device and registers a DRM accel node,
 * /dev/accel/accelN. Each open file gets its own host context.
 */

#include <linux/module.h>
#include <linux/slab.h>
#include <linux/version.h>
#include <linux/virtio_config.h>

#include <drm/drm_accel.h>
#include <drm/drm_drv.h>
#include <drm/drm_file.h>
#include <drm/drm_gem.h>
#include <drm/drm_ioctl.h>
#include <drm/drm_print.h>
#include <drm/virtio_accel_drm.h>

#include "vaccel_drv.h"

static unsigned int alt_id;
module_param(alt_id, uint, 0444);
MODULE_PARM_DESC(alt_id, "Also bind virtio devices with this device ID (1-63)");

static unsigned int priority = VIRTIO_ACCEL_PRIORITY_NORMAL;
module_param(priority, uint, 0444);
MODULE_PARM_DESC(priority, "Scheduling priority of new contexts (0 low, 1 normal, 2 high)");

static int vaccel_open(struct drm_device *dev, struct drm_file *file)
{
	struct vaccel_device *vd = to_vaccel(dev);
	struct virtio_accel_ctx_create req = {
		.hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_CTX_CREATE),
		.priority = cpu_to_le32(priority),
	};
	struct virtio_accel_hdr resp;
	struct vaccel_ctx *ctx;
	int ret, idx;

	if (!drm_dev_enter(dev, &idx))
		return -ENODEV;
	ctx = kzalloc(sizeof(*ctx), GFP_KERNEL);
	if (!ctx) {
		ret = -ENOMEM;
		goto exit;
	}
	kref_init(&ctx->ref);
	mutex_init(&ctx->submit_lock);
	ctx->vd = vd;
	ctx->fence_context = dma_fence_context_alloc(1);
	ret = vaccel_ctrl(vd, &req, sizeof(req), &resp, sizeof(resp));
	if (!ret && vaccel_status(&resp, sizeof(resp)) != VIRTIO_ACCEL_RESP_OK)
		ret = -EBUSY;
	if (!ret) {
		ctx->id = le32_to_cpu(resp.ctx_id);
		ret = xa_insert(&vd->ctxs, ctx->id, ctx, GFP_KERNEL);
	}
	if (ret) {
		vaccel_ctx_put(ctx);
		goto exit;
	}
	file->driver_priv = ctx;
exit:
	drm_dev_exit(idx);
	return ret;
}

static void vaccel_postclose(struct drm_device *dev, struct drm_file *file)
{
	struct vaccel_device *vd = to_vaccel(dev);
	struct vaccel_ctx *ctx = file->driver_priv;
	struct virtio_accel_hdr req = {
		.type = cpu_to_le32(VIRTIO_ACCEL_CMD_CTX_DESTROY),
		.ctx_id = cpu_to_le32(ctx->id),
	}, resp;
	int idx;

	xa_erase(&vd->ctxs, ctx->id);
	/* The host cancels queued jobs; their fences signal with an error. */
	WRITE_ONCE(ctx->dead, true);
	if (drm_dev_enter(dev, &idx)) {
		vaccel_ctrl(vd, &req, sizeof(req), &resp, sizeof(resp));
		drm_dev_exit(idx);
	}
	vaccel_ctx_put(ctx);
}

static int vaccel_ioctl_get_caps(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct vaccel_device *vd = to_vaccel(dev);
	struct drm_vaccel_caps *args = data;
	const struct virtio_accel_resp_caps *c = &vd->caps;

	if (args->capset || args->pad)
		return -EINVAL;
	args->npu_kind = le32_to_cpu(c->npu_kind);
	args->npu_version = le32_to_cpu(c->npu_version);
	args->cmd_format = le32_to_cpu(c->cmd_format);
	args->cmd_format_version = le32_to_cpu(c->cmd_format_version);
	args->max_bo_size = vd->max_bo_size;
	args->max_cmd_size = vd->max_cmd_size;
	args->max_submit_bos = vd->max_submit_bos;
	args->max_in_syncobjs = min_t(u32, vd->max_in_fences, VIRTIO_ACCEL_MAX_IN_FENCES);
	args->features = vd->features;
	args->ops = le64_to_cpu(c->ops);
	memcpy(args->name, c->name, sizeof(args->name));
	args->name[sizeof(args->name) - 1] = 0;
	return 0;
}

/* Wraps an ioctl so it never touches an unplugged device. */
#define VACCEL_IOCTL(name, fn)							\
static int vaccel_ioctl_##name(struct drm_device *dev, void *data,		\
			       struct drm_file *file)				\
{										\
	int idx, ret;								\
										\
	if (!drm_dev_enter(dev, &idx))						\
		return -ENODEV;							\
	ret = fn(dev, data, file);						\
	drm_dev_exit(idx);							\
	return ret;								\
}

VACCEL_IOCTL(caps, vaccel_ioctl_get_caps)
VACCEL_IOCTL(create, vaccel_ioctl_bo_create)
VACCEL_IOCTL(info, vaccel_ioctl_bo_info)
VACCEL_IOCTL(submit_job, vaccel_ioctl_submit)
VACCEL_IOCTL(wait, vaccel_ioctl_bo_wait)

static const struct drm_ioctl_desc vaccel_ioctls[] = {
	DRM_IOCTL_DEF_DRV(VACCEL_GET_CAPS, vaccel_ioctl_caps, 0),
	DRM_IOCTL_DEF_DRV(VACCEL_BO_CREATE, vaccel_ioctl_create, 0),
	DRM_IOCTL_DEF_DRV(VACCEL_BO_INFO, vaccel_ioctl_info, 0),
	DRM_IOCTL_DEF_DRV(VACCEL_SUBMIT, vaccel_ioctl_submit_job, 0),
	DRM_IOCTL_DEF_DRV(VACCEL_BO_WAIT, vaccel_ioctl_wait, 0),
};

DEFINE_DRM_ACCEL_FOPS(vaccel_fops);

static const struct drm_driver vaccel_drm_driver = {
	.driver_features = DRIVER_COMPUTE_ACCEL | DRIVER_GEM | DRIVER_SYNCOBJ,
	.open = vaccel_open,
	.postclose = vaccel_postclose,
	.gem_create_object = vaccel_gem_create_object,
	.ioctls = vaccel_ioctls,
	.num_ioctls = ARRAY_SIZE(vaccel_ioctls),
	.fops = &vaccel_fops,
	.name = "virtio_accel",
	.desc = "virtio-accel paravirtual accelerator",
#if KERNEL_VERSION(6, 14, 0) > LINUX_VERSION_CODE
	/* Removed from struct drm_driver in 6.14. */
	.date = "20261124",
#endif
	.major = 1,
	.minor = 0,
};

static int vaccel_get_caps(struct vaccel_device *vd)
{
	struct virtio_accel_get_caps req = {
		.hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_GET_CAPS),
	};
	int ret;

	ret = vaccel_ctrl(vd, &req, sizeof(req), &vd->caps, sizeof(vd->caps));
	if (ret)
		return ret;
	if (vaccel_status(&vd->caps, sizeof(vd->caps)) != VIRTIO_ACCEL_RESP_OK)
		return -EIO;
	vd->caps.name[sizeof(vd->caps.name) - 1] = 0;
	return 0;
}

static int vaccel_probe(struct virtio_device *vdev)
{
	struct vaccel_device *vd;
	u32 v32;
	u64 v64;
	int ret;

	vd = devm_drm_dev_alloc(&vdev->dev, &vaccel_drm_driver, struct vaccel_device, drm);
	if (IS_ERR(vd))
		return PTR_ERR(vd);
	vd->vdev = vdev;
	vdev->priv = vd;
	xa_init(&vd->ctxs);

	virtio_cread_le(vdev, struct virtio_accel_config, max_bo_size, &v64);
	vd->max_bo_size = v64;
	virtio_cread_le(vdev, struct virtio_accel_config, max_cmd_size, &v32);
	vd->max_cmd_size = v32;
	virtio_cread_le(vdev, struct virtio_accel_config, max_submit_bos, &v32);
	vd->max_submit_bos = min_t(u32, v32, VIRTIO_ACCEL_MAX_SUBMIT_BOS);
	virtio_cread_le(vdev, struct virtio_accel_config, max_in_fences, &v32);
	vd->max_in_fences = v32;
	if (virtio_has_feature(vdev, VIRTIO_ACCEL_F_CROSS_CTX_FENCE))
		vd->features |= BIT(VIRTIO_ACCEL_F_CROSS_CTX_FENCE);

	ret = vaccel_vq_init(vd);
	if (ret)
		return ret;
	virtio_device_ready(vdev);
	vaccel_vq_start(vd);

	ret = vaccel_get_caps(vd);
	if (ret)
		goto err;
	ret = drm_dev_register(&vd->drm, 0);
	if (ret)
		goto err;
	drm_info(&vd->drm, "vaccel: %s, command format %u v%u, features %#x\n",
		 vd->caps.name, le32_to_cpu(vd->caps.cmd_format),
		 le32_to_cpu(vd->caps.cmd_format_version), vd->features);
	return 0;
err:
	vaccel_vq_fini(vd);
	return ret;
}

static void vaccel_remove(struct virtio_device *vdev)
{
	struct vaccel_device *vd = vdev->priv;

	drm_dev_unplug(&vd->drm);
	vaccel_vq_fini(vd);
}

static unsigned int vaccel_features[] = {
	VIRTIO_ACCEL_F_CROSS_CTX_FENCE,
};

static struct virtio_device_id vaccel_id_table[] = {
	{ VIRTIO_ID_ACCEL_PROVISIONAL, VIRTIO_DEV_ANY_ID },
	{ 0, VIRTIO_DEV_ANY_ID },	/* alt_id, set at load time */
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, vaccel_id_table);

static struct virtio_driver vaccel_driver = {
	.driver.name = KBUILD_MODNAME,
	.id_table = vaccel_id_table,
	.feature_table = vaccel_features,
	.feature_table_size = ARRAY_SIZE(vaccel_features),
	.probe = vaccel_probe,
	.remove = vaccel_remove,
};

static int __init vaccel_init(void)
{
	if (alt_id > 63 || priority > VIRTIO_ACCEL_PRIORITY_HIGH)
		return -EINVAL;
	vaccel_id_table[1].device = alt_id;
	return register_virtio_driver(&vaccel_driver);
}

static void __exit vaccel_exit(void)
{
	unregister_virtio_driver(&vaccel_driver);
}

module_init(vaccel_init);
module_exit(vaccel_exit);

MODULE_DESCRIPTION("virtio-accel paravirtual accelerator");
MODULE_LICENSE("GPL");
