// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-accel: binds a virtio-accel device and registers a DRM accel node,
 * /dev/accel/accelN. Each open file gets its own host context.
 */

#include <linux/module.h>
#include <linux/fs.h>
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

unsigned int vaccel_timeout_ms = 5000;
module_param_named(timeout_ms, vaccel_timeout_ms, uint, 0644);
MODULE_PARM_DESC(timeout_ms,
		 "A device that leaves a control request unanswered this long is dead (ms, >= 100)");

struct workqueue_struct *vaccel_wq;
struct workqueue_struct *vaccel_async_wq;
static atomic64_t vaccel_serial;

static int vaccel_open(struct drm_device *dev, struct drm_file *file)
{
	struct vaccel_ctx *ctx;
	int idx;

	if (!drm_dev_enter(dev, &idx))
		return -ENODEV;
	ctx = vaccel_ctx_create(to_vaccel(dev), priority);
	drm_dev_exit(idx);
	if (IS_ERR(ctx))
		return PTR_ERR(ctx);
	file->driver_priv = ctx;
	return 0;
}

static void vaccel_postclose(struct drm_device *dev, struct drm_file *file)
{
	vaccel_ctx_close(file->driver_priv);
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
	args->max_in_syncobjs = vd->max_in_fences;
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
VACCEL_IOCTL(forward, vaccel_npu_ioctl)

static const struct drm_ioctl_desc vaccel_ioctls[] = {
	DRM_IOCTL_DEF_DRV(VACCEL_GET_CAPS, vaccel_ioctl_caps, 0),
	DRM_IOCTL_DEF_DRV(VACCEL_BO_CREATE, vaccel_ioctl_create, 0),
	DRM_IOCTL_DEF_DRV(VACCEL_BO_INFO, vaccel_ioctl_info, 0),
	DRM_IOCTL_DEF_DRV(VACCEL_SUBMIT, vaccel_ioctl_submit_job, 0),
	DRM_IOCTL_DEF_DRV(VACCEL_BO_WAIT, vaccel_ioctl_wait, 0),
	DRM_IOCTL_DEF_DRV(VACCEL_IOCTL, vaccel_ioctl_forward, 0),
};

/*
 * The DRM core ioctls an accel file can serve. The others (master, auth,
 * magic, unique, client/stats/map, vblank and modeset families) assume a
 * primary node: DRM_IOCTL_GET_MAGIC and DRM_IOCTL_GET_UNIQUE, which
 * drm_ioctl() lets any user call, dereference the file's master, which an
 * accel file does not have. They are refused before drm_ioctl() sees them.
 */
static bool vaccel_core_ioctl_allowed(unsigned int nr)
{
	switch (nr) {
	case DRM_IOCTL_NR(DRM_IOCTL_VERSION):
	case DRM_IOCTL_NR(DRM_IOCTL_GET_CAP):
	case DRM_IOCTL_NR(DRM_IOCTL_SET_CLIENT_CAP):
	case DRM_IOCTL_NR(DRM_IOCTL_GEM_CLOSE):
	case DRM_IOCTL_NR(DRM_IOCTL_GEM_FLINK):
	case DRM_IOCTL_NR(DRM_IOCTL_GEM_OPEN):
	case DRM_IOCTL_NR(DRM_IOCTL_PRIME_HANDLE_TO_FD):
	case DRM_IOCTL_NR(DRM_IOCTL_PRIME_FD_TO_HANDLE):
	case DRM_IOCTL_NR(DRM_IOCTL_SYNCOBJ_CREATE):
	case DRM_IOCTL_NR(DRM_IOCTL_SYNCOBJ_DESTROY):
	case DRM_IOCTL_NR(DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD):
	case DRM_IOCTL_NR(DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE):
	case DRM_IOCTL_NR(DRM_IOCTL_SYNCOBJ_WAIT):
	case DRM_IOCTL_NR(DRM_IOCTL_SYNCOBJ_RESET):
	case DRM_IOCTL_NR(DRM_IOCTL_SYNCOBJ_SIGNAL):
	case DRM_IOCTL_NR(DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT):
	case DRM_IOCTL_NR(DRM_IOCTL_SYNCOBJ_QUERY):
	case DRM_IOCTL_NR(DRM_IOCTL_SYNCOBJ_TRANSFER):
	case DRM_IOCTL_NR(DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL):
	case DRM_IOCTL_NR(DRM_IOCTL_SYNCOBJ_EVENTFD):
#ifdef DRM_IOCTL_SET_CLIENT_NAME
	case DRM_IOCTL_NR(DRM_IOCTL_SET_CLIENT_NAME):
#endif
		return true;
	default:
		return false;
	}
}

static int vaccel_ioctl_check(unsigned int cmd)
{
	unsigned int nr = DRM_IOCTL_NR(cmd);

	if (_IOC_TYPE(cmd) != DRM_IOCTL_BASE)
		return -ENOTTY;
	if (nr >= DRM_COMMAND_BASE && nr < DRM_COMMAND_END)
		return 0;
	return vaccel_core_ioctl_allowed(nr) ? 0 : -EOPNOTSUPP;
}

static long vaccel_unlocked_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	int ret = vaccel_ioctl_check(cmd);

	return ret ? ret : drm_ioctl(filp, cmd, arg);
}

#ifdef CONFIG_COMPAT
static long vaccel_compat_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	int ret = vaccel_ioctl_check(cmd);

	return ret ? ret : drm_compat_ioctl(filp, cmd, arg);
}
#else
#define vaccel_compat_ioctl NULL
#endif

/* DEFINE_DRM_ACCEL_FOPS(), with the ioctls going through the check above. */
static const struct file_operations vaccel_fops = {
	.owner = THIS_MODULE,
	.open = accel_open,
	.release = drm_release,
	.unlocked_ioctl = vaccel_unlocked_ioctl,
	.compat_ioctl = vaccel_compat_ioctl,
	.poll = drm_poll,
	.read = drm_read,
	.llseek = noop_llseek,
	.mmap = drm_gem_mmap,
	.fop_flags = FOP_UNSIGNED_OFFSET,
};

static const struct drm_driver vaccel_drm_driver = {
	.driver_features = DRIVER_COMPUTE_ACCEL | DRIVER_GEM | DRIVER_SYNCOBJ,
	.open = vaccel_open,
	.postclose = vaccel_postclose,
	.gem_create_object = vaccel_gem_create_object,
	.gem_prime_import = vaccel_gem_prime_import,
	.gem_prime_import_sg_table = vaccel_gem_prime_import_sg_table,
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

int vaccel_get_caps(struct vaccel_device *vd, struct virtio_accel_resp_caps *caps)
{
	struct virtio_accel_get_caps *req;
	struct vaccel_req *r;
	int ret;

	r = vaccel_req_alloc(vd, &vd->ctrl, sizeof(*req), sizeof(*caps));
	if (!r)
		return -ENOMEM;
	req = vaccel_req_body(r);
	req->hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_GET_CAPS);
	ret = vaccel_ctrl(vd, r, false);
	if (!ret && vaccel_status(r->resp, r->used) != VIRTIO_ACCEL_RESP_OK)
		ret = -EIO;
	if (!ret) {
		memcpy(caps, r->resp, sizeof(*caps));
		caps->name[sizeof(caps->name) - 1] = 0;
	}
	vaccel_req_put(r);
	return ret;
}

static void vaccel_read_config(struct vaccel_device *vd)
{
	struct virtio_device *vdev = vd->vdev;
	u32 v32;
	u64 v64;

	virtio_cread_le(vdev, struct virtio_accel_config, max_bo_size, &v64);
	vd->max_bo_size = v64;
	virtio_cread_le(vdev, struct virtio_accel_config, max_cmd_size, &v32);
	vd->max_cmd_size = v32;
	virtio_cread_le(vdev, struct virtio_accel_config, max_submit_bos, &v32);
	vd->max_submit_bos = min_t(u32, v32, VIRTIO_ACCEL_MAX_SUBMIT_BOS);
	virtio_cread_le(vdev, struct virtio_accel_config, max_in_fences, &v32);
	vd->max_in_fences = min_t(u32, v32, VIRTIO_ACCEL_MAX_IN_FENCES);
	virtio_cread_le(vdev, struct virtio_accel_config, max_sg_entries, &v32);
	vd->max_sg_entries = min_t(u32, v32, VIRTIO_ACCEL_MAX_SG_ENTRIES);
	virtio_cread_le(vdev, struct virtio_accel_config, max_jobs_in_flight, &v32);
	vd->max_jobs = max_t(u32, v32, 1);
	if (virtio_has_feature(vdev, VIRTIO_ACCEL_F_CROSS_CTX_FENCE))
		vd->features |= BIT(VIRTIO_ACCEL_F_CROSS_CTX_FENCE);
	if (virtio_has_feature(vdev, VIRTIO_ACCEL_F_IOCTL))
		vd->features |= BIT(VIRTIO_ACCEL_F_IOCTL);
}

static int vaccel_probe(struct virtio_device *vdev)
{
	struct vaccel_device *vd;
	int ret;

	vd = devm_drm_dev_alloc(&vdev->dev, &vaccel_drm_driver, struct vaccel_device, drm);
	if (IS_ERR(vd))
		return PTR_ERR(vd);
	vd->vdev = vdev;
	vd->serial = atomic64_inc_return(&vaccel_serial);
	vdev->priv = vd;
	xa_init(&vd->ctxs);
	vaccel_read_config(vd);

	ret = vaccel_vq_init(vd);
	if (ret)
		return ret;
	/* Event buffers first, then DRIVER_OK (spec 5). */
	vaccel_vq_fill_events(vd);
	virtio_device_ready(vdev);
	vaccel_vq_start(vd);

	ret = vaccel_get_caps(vd, &vd->caps);
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

/*
 * Fails everything the device holds first, so every waiter wakes and every
 * fence signals; only then waits for ioctls to leave (drm_dev_unplug()).
 */
static void vaccel_remove(struct virtio_device *vdev)
{
	struct vaccel_device *vd = vdev->priv;

	vaccel_device_kill(vd, NULL);
	wait_for_completion(&vd->dead_done);
	drm_dev_unplug(&vd->drm);
	vaccel_vq_fini(vd);
}

static void vaccel_config_changed(struct virtio_device *vdev)
{
	struct vaccel_device *vd = vdev->priv;

	if (vdev->config->get_status(vdev) & VIRTIO_CONFIG_S_NEEDS_RESET)
		vaccel_device_kill(vd, "the device needs a reset");
}

static unsigned int vaccel_features[] = {
	VIRTIO_ACCEL_F_IOCTL,
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
	.config_changed = vaccel_config_changed,
};

static int __init vaccel_init(void)
{
	int ret;

	if (alt_id > 63 || priority > VIRTIO_ACCEL_PRIORITY_HIGH)
		return -EINVAL;
	/* Ordered: teardowns go out one at a time, in order. */
	vaccel_wq = alloc_ordered_workqueue("virtio_accel", 0);
	if (!vaccel_wq)
		return -ENOMEM;
	vaccel_async_wq = alloc_workqueue("virtio_accel_async", WQ_UNBOUND, 0);
	if (!vaccel_async_wq) {
		destroy_workqueue(vaccel_wq);
		return -ENOMEM;
	}
	vaccel_id_table[1].device = alt_id;
	ret = register_virtio_driver(&vaccel_driver);
	if (ret) {
		destroy_workqueue(vaccel_async_wq);
		destroy_workqueue(vaccel_wq);
	}
	return ret;
}

static void __exit vaccel_exit(void)
{
	unregister_virtio_driver(&vaccel_driver);
	/* Every device is gone: run the teardowns they left. */
	destroy_workqueue(vaccel_wq);
	destroy_workqueue(vaccel_async_wq);
	/* Signalled fences may still be read through their ops under RCU. */
	synchronize_rcu();
}

module_init(vaccel_init);
module_exit(vaccel_exit);

MODULE_DESCRIPTION("virtio-accel paravirtual accelerator");
MODULE_LICENSE("GPL");
