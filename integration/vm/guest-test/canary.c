// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/*
 * The VM's life around running jobs, against a daemon that makes every job
 * last about a second:
 *
 *  vaccel-test pipeline N     N copy jobs in flight at once, each of its own
 *                             pattern; within 60 s every fence must signal
 *                             without an error and every output be right
 *                             (the host stops and continues the VM
 *                             meanwhile)
 *  vaccel-test canary NAME PATH VALUE
 *                             writes VALUE to PATH (a device's sysfs remove,
 *                             or the driver's unbind) while a job writes a
 *                             buffer, then checks through a view of that
 *                             buffer that outlives the driver (its dma-buf,
 *                             mapped) that the device writes nothing after
 *                             the removal returned; prints CHECK NAME
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vt.h"

#define MIB (1u << 20)

static uint8_t pattern(int i)
{
	return (uint8_t)(i * 37 + 1);
}

static int fill(int fd, uint32_t bo, uint8_t v, uint32_t len)
{
	void *p = vt_map(fd, bo, len);

	if (!p)
		return -1;
	memset(p, v, len);
	munmap(p, len);
	return 0;
}

/* The first offset of @len bytes at @p that is not @v, or -1. */
static long differs(const volatile uint8_t *p, uint8_t v, uint32_t len)
{
	for (uint32_t i = 0; i < len; i++)
		if (p[i] != v)
			return i;
	return -1;
}

int pipeline_main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 6, fd = vt_open(), bad = 0;
	uint32_t src[32], dst[32], done[32];
	struct vt_cmd c;
	double deadline;

	if (n < 1 || n > 32 || fd < 0 || vt_cmd_copy(fd, &c, MIB)) {
		printf("pipeline: cannot set up: %s\n", strerror(errno));
		return 1;
	}
	for (int i = 0; i < n; i++) {
		if (vt_bo(fd, MIB, &src[i]) || vt_bo(fd, MIB, &dst[i]) ||
		    fill(fd, src[i], pattern(i), MIB) || vt_syncobj(fd, &done[i], 0)) {
			printf("pipeline: cannot set up job %d\n", i);
			return 1;
		}
	}
	for (int i = 0; i < n; i++) {
		uint32_t bos[2] = { src[i], dst[i] };
		int ret = vt_submit(fd, &c, bos, 2, done[i]);

		if (ret) {
			printf("pipeline: submit %d: %d\n", i, ret);
			return 1;
		}
	}
	deadline = now_s() + 60;
	for (int i = 0; i < n; i++) {
		int left = (int)((deadline - now_s()) * 1000);
		int ret = vt_syncobj_wait(fd, done[i], left > 0 ? left : 1);
		int err = ret ? ret : vt_fence_error(fd, done[i]);
		uint8_t *p = vt_map(fd, dst[i], MIB);
		long at = p ? differs(p, pattern(i), MIB) : 0;

		if (err || at >= 0) {
			printf("pipeline: job %d: fence %d, output wrong at %ld\n", i, err, at);
			bad = 1;
		}
		if (p)
			munmap(p, MIB);
	}
	printf("pipeline: %d jobs in flight at once, %s\n", n,
	       bad ? "FAILED" : "each answered with its own output");
	return bad;
}

struct canary {
	const char *path, *value;
};

static int write_file(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY), ret = 0;

	if (fd < 0 || write(fd, value, strlen(value)) < 0)
		ret = -errno;
	if (fd >= 0)
		close(fd);
	return ret;
}

static int case_canary(void *arg)
{
	const struct canary *k = arg;
	struct drm_prime_handle prime = { .flags = DRM_CLOEXEC | DRM_RDWR };
	uint32_t src, dst, bos[2], done;
	int fd = vt_open(), ret;
	volatile uint8_t *view;
	struct vt_cmd c;
	double t0, t1;
	long at;

	if (fd < 0 || vt_bo(fd, MIB, &src) || vt_bo(fd, MIB, &dst) || fill(fd, src, 0xa5, MIB) ||
	    vt_cmd_copy(fd, &c, MIB) || vt_syncobj(fd, &done, 0))
		return 1;
	prime.handle = dst;
	ret = vt_ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &prime);
	view = ret ? MAP_FAILED : mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_SHARED, prime.fd, 0);
	if (view == MAP_FAILED) {
		msg("no view of the buffer through its dma-buf: %d / %s", ret, strerror(errno));
		return 1;
	}
	bos[0] = src;
	bos[1] = dst;
	/* The view sees what the device writes: a job through it first. */
	ret = vt_copy_job(fd, src, dst, MIB);
	at = differs(view, 0xa5, MIB);
	if (ret || at >= 0) {
		msg("the view does not show a job's output: job %d, differs at %ld", ret, at);
		return 1;
	}
	memset((void *)view, 0, MIB);
	ret = vt_submit(fd, &c, bos, 2, done);
	if (ret) {
		msg("submit: %d", ret);
		return 1;
	}
	/* The job is on the NPU (each takes about a second). */
	usleep(300000);
	t0 = now_s();
	ret = write_file(k->path, k->value);
	t1 = now_s();
	msg("%s <- %s: %d, in %.2f s", k->path, k->value, ret, t1 - t0);
	if (ret)
		return 1;
	/* From now on nothing may write the buffer. */
	memset((void *)view, 0, MIB);
	while (now_s() < t1 + 3) {
		at = differs(view, 0, MIB);
		if (at >= 0) {
			msg("CANARY WRITTEN: byte %ld is %#x, %.2f s after the removal returned", at,
			    view[at], now_s() - t1);
			return 1;
		}
		usleep(20000);
	}
	ret = vt_syncobj_wait(fd, done, 1000);
	msg("no write in 3 s; the job's fence: wait %d, error %d", ret,
	    ret ? 0 : vt_fence_error(fd, done));
	munmap((void *)view, MIB);
	close(prime.fd);
	close(fd);
	return 0;
}

int canary_main(int argc, char **argv)
{
	struct canary k;

	if (argc < 4) {
		fprintf(stderr, "usage: vaccel-test canary NAME PATH VALUE\n");
		return 2;
	}
	k.path = argv[2];
	k.value = argv[3];
	vt_case(argv[1], case_canary, &k, 60);
	return 0;
}
