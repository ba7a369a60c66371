// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-accel: DRM_IOCTL_VACCEL_IOCTL, a request of the NPU driver behind
 * the device (VIRTIO_ACCEL_CMD_IOCTL) for the calling file's context. The
 * payloads are copied, never interpreted: the device checks them against
 * its NPU driver's allowlist. A request may act on the NPU (create a queue,
 * say) before a killed caller or a bad answer pointer loses its answer: it
 * is not retried, and what it made lives as long as the context.
 */

#include <linux/slab.h>
#include <linux/uaccess.h>

#include <drm/drm_file.h>
#include <drm/virtio_accel_drm.h>

#include "vaccel_drv.h"

int vaccel_npu_ioctl(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct vaccel_device *vd = to_vaccel(dev);
	struct vaccel_ctx *ctx = file->driver_priv;
	struct drm_vaccel_ioctl *args = data;
	const struct virtio_accel_resp_ioctl *resp;
	struct virtio_accel_ioctl req = {};
	struct vaccel_req *r;
	void *in = NULL;
	u32 out;
	int ret;

	if (args->pad)
		return -EINVAL;
	if (!(vd->features & BIT(VIRTIO_ACCEL_F_IOCTL)))
		return -EOPNOTSUPP;
	if (args->in_size > VIRTIO_ACCEL_MAX_IOCTL_PAYLOAD ||
	    args->out_size > VIRTIO_ACCEL_MAX_IOCTL_PAYLOAD)
		return -E2BIG;
	if (READ_ONCE(ctx->lost))
		return -EIO;
	/* The request acts on the device: its answer must have somewhere to go. */
	if (!access_ok(u64_to_user_ptr(args->out), args->out_size))
		return -EFAULT;
	if (args->in_size) {
		in = memdup_user(u64_to_user_ptr(args->in), args->in_size);
		if (IS_ERR(in))
			return PTR_ERR(in);
	}
	r = vaccel_req_alloc(vd, &vd->ctrl, sizeof(req) + args->in_size,
			     sizeof(*resp) + args->out_size);
	if (!r) {
		kfree(in);
		return -ENOMEM;
	}
	req.hdr.type = cpu_to_le32(VIRTIO_ACCEL_CMD_IOCTL);
	req.hdr.ctx_id = cpu_to_le32(ctx->id);
	req.cmd = cpu_to_le32(args->cmd);
	req.in_size = cpu_to_le32(args->in_size);
	req.out_size = cpu_to_le32(args->out_size);
	vaccel_req_write(r, 0, &req, sizeof(req));
	if (in)
		vaccel_req_write(r, sizeof(req), in, args->in_size);
	kfree(in);
	vaccel_req_set_ctx(r, ctx);
	ret = vaccel_ctrl(vd, r, true);
	if (!ret)
		ret = vaccel_status_errno(vaccel_status(r->resp, r->used));
	if (!ret) {
		resp = r->resp;
		out = r->used >= sizeof(*resp) ? le32_to_cpu(resp->out_size) : U32_MAX;
		/* An answer longer than the room or than what arrived: a broken device. */
		if (out > args->out_size || out > r->used - sizeof(*resp))
			ret = -EIO;
		else if (copy_to_user(u64_to_user_ptr(args->out), resp + 1, out))
			ret = -EFAULT;
		else
			args->out_size = out;
	}
	vaccel_req_put(r);
	return ret;
}
