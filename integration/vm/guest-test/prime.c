// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/*
 * Another driver's dma-buf imported with PRIME: a udmabuf over a sealed
 * memfd used as a job's input and output, its pages the host buffer's
 * backing; shared by name into a second file, still the first's (refused
 * there); imported by the second file too, a buffer of its own context.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/udmabuf.h>

#include "vt.h"

static int all(const uint8_t *p, uint32_t len, uint8_t v)
{
	for (uint32_t i = 0; i < len; i++)
		if (p[i] != v)
			return 0;
	return 1;
}

static int import(int fd, int dmabuf, uint32_t *handle)
{
	struct drm_prime_handle im = { .fd = dmabuf };
	int ret = vt_ioctl(fd, DRM_IOCTL_PRIME_FD_TO_HANDLE, &im);

	*handle = im.handle;
	return ret;
}

int case_udmabuf(void *unused)
{
	const uint32_t len = 256 << 10;
	int fd = vt_open(), other = vt_open(), mfd, ufd, dmabuf, ret;
	struct udmabuf_create c = { .flags = UDMABUF_FLAGS_CLOEXEC, .size = len };
	uint32_t own, imported, own2, imported2;
	uint8_t *pm, *po, *po2;

	mfd = memfd_create("vaccel-test", MFD_ALLOW_SEALING);
	ufd = open("/dev/udmabuf", O_RDWR);
	if (fd < 0 || other < 0 || mfd < 0 || ufd < 0 || ftruncate(mfd, len) ||
	    fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK)) {
		msg("setup failed: %s", strerror(errno));
		return 1;
	}
	c.memfd = mfd;
	dmabuf = ioctl(ufd, UDMABUF_CREATE, &c);
	pm = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (dmabuf < 0 || pm == MAP_FAILED) {
		msg("udmabuf: %s", strerror(errno));
		return 1;
	}
	memset(pm, 0x5a, len);
	ret = import(fd, dmabuf, &imported);
	if (ret || vt_bo(fd, len, &own) || !(po = vt_map(fd, own, len))) {
		msg("import: %d", ret);
		return 1;
	}
	memset(po, 0, len);
	ret = vt_copy_job(fd, imported, own, len);
	if (ret || !all(po, len, 0x5a)) {
		msg("job reading the imported buffer: %d, read %#x", ret, po[0]);
		return 1;
	}
	memset(po, 0xc3, len);
	ret = vt_copy_job(fd, own, imported, len);
	if (ret || !all(pm, len, 0xc3)) {
		msg("job writing the imported buffer: %d, memfd holds %#x", ret, pm[0]);
		return 1;
	}
	/* Shared into the second file by name, it stays the first's: refused. */
	{
		struct drm_gem_flink fl = { .handle = imported };
		struct drm_gem_open op = { 0 };
		uint32_t tmp;

		if (vt_ioctl(fd, DRM_IOCTL_GEM_FLINK, &fl) || (op.name = fl.name,
		    vt_ioctl(other, DRM_IOCTL_GEM_OPEN, &op)) || vt_bo(other, len, &tmp)) {
			msg("flink of the import");
			return 1;
		}
		ret = vt_copy_job(other, tmp, op.handle, len);
		if (ret != -EINVAL || !all(pm, len, 0xc3)) {
			msg("other file's job writing the first file's import: %d, memfd %#x",
			    ret, pm[0]);
			return 1;
		}
		vt_close_bo(other, op.handle);
		vt_close_bo(other, tmp);
	}
	/* A second file imports the same dma-buf: a buffer of its own context. */
	ret = import(other, dmabuf, &imported2);
	if (ret || vt_bo(other, len, &own2) || !(po2 = vt_map(other, own2, len))) {
		msg("import in a second file: %d", ret);
		return 1;
	}
	ret = vt_copy_job(other, imported2, own2, len);
	if (ret || !all(po2, len, 0xc3)) {
		msg("second file's job reading it: %d, read %#x", ret, po2[0]);
		return 1;
	}
	/* The first file's import, closed, leaves the second's working. */
	if (vt_close_bo(fd, imported) || vt_copy_job(other, own2, imported2, len)) {
		msg("second file's job after the first closed its import");
		return 1;
	}
	msg("udmabuf of %u KiB read and written by jobs in two files", len >> 10);
	munmap(pm, len);
	close(dmabuf);
	close(ufd);
	close(mfd);
	close(other);
	close(fd);
	return 0;
}
