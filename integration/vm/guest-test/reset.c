// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/*
 * Lost contexts and a device that asks for a reset. Against a daemon whose
 * job 2 hangs (the job timeout loses its context) and whose jobs 4, 60 and
 * 150 make the NPU fail as a whole (every context lost, then the context-0
 * event: the driver must reset the device). Job 1 is accel-run --hang's,
 * jobs 6 to 11 accel-run's after the first reset.
 *
 * Usage: vaccel-test reset          (jobs 2 to 5)
 *        vaccel-test reset stress   (from job 12 on)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vt.h"

#define LEN 65536

/* A file with a source buffer of @fill bytes and a zeroed destination. */
struct file_bos {
	int fd;
	uint32_t src, dst;
};

static int file_open(struct file_bos *f, uint8_t fill)
{
	void *p;

	f->fd = vt_open();
	if (f->fd < 0 || vt_bo(f->fd, LEN, &f->src) || vt_bo(f->fd, LEN, &f->dst))
		return -1;
	p = vt_map(f->fd, f->src, LEN);
	if (!p)
		return -1;
	memset(p, fill, LEN);
	munmap(p, LEN);
	return 0;
}

/* Copies src to dst in a job; 0 if it ran and dst holds @fill. */
static int file_copy(struct file_bos *f, uint8_t fill)
{
	int ret = vt_copy_job(f->fd, f->src, f->dst, LEN);
	uint8_t *p;

	if (ret) {
		msg("copy job: %d", ret);
		return ret;
	}
	p = vt_map(f->fd, f->dst, LEN);
	if (!p)
		return -1;
	for (int i = 0; i < LEN; i++)
		if (p[i] != fill) {
			msg("copy job: byte %d is %#x, want %#x", i, p[i], fill);
			munmap(p, LEN);
			return -1;
		}
	munmap(p, LEN);
	return 0;
}

/* Submits a NOP with an out-syncobj; its fence error after the wait. */
static int nop_job(int fd, int timeout_ms)
{
	struct vt_cmd c;
	uint32_t done;
	int ret;

	if (vt_cmd_nop(fd, &c) || vt_syncobj(fd, &done, 0))
		return -ENOMEM;
	ret = vt_submit(fd, &c, NULL, 0, done);
	if (!ret)
		ret = vt_syncobj_wait(fd, done, timeout_ms);
	if (!ret)
		ret = vt_fence_error(fd, done);
	return ret;
}

/* What a file whose context is lost gets: EIO for new work, caps still. */
static int refuses_work(const char *who, int fd)
{
	struct drm_vaccel_caps caps;
	struct vt_cmd c = { 0 };
	uint32_t h;
	int sub, bo, cap;

	bo = vt_bo(fd, 4096, &h);
	/* Well-formed but for its buffers: a lost context is refused first. */
	c.size = 64;
	sub = vt_submit(fd, &c, NULL, 0, 0);
	cap = vt_caps(fd, &caps);
	msg("%s: SUBMIT %d, BO_CREATE %d, GET_CAPS %d", who, sub, bo, cap);
	return !(sub == -EIO && bo == -EIO && cap == 0);
}

/*
 * Job 2 hangs: its context is lost (HANG). The file's fence fails with the
 * loss, its later work gets EIO, and another file goes on (job 3).
 */
static int case_lost_isolated(void *unused)
{
	struct file_bos other;
	int lost = vt_open(), err, bad = 0;

	if (lost < 0 || file_open(&other, 0x5a))
		return 1;
	err = nop_job(lost, 30000);
	msg("hung job: fence error %d (want %d)", err, -ENOTRECOVERABLE);
	bad |= err != -ENOTRECOVERABLE;
	bad |= refuses_work("the lost file", lost);
	if (file_copy(&other, 0x5a)) {
		msg("another file's job failed after the loss");
		bad = 1;
	}
	close(lost);
	close(other.fd);
	return bad;
}

/* Waits up to @s seconds for @what in the kernel log. */
static int klog_wait(const char *what, double s)
{
	static char buf[1 << 20];
	double end = now_s() + s;

	do {
		int n = klogctl(3, buf, sizeof(buf) - 1);

		if (n > 0) {
			buf[n] = 0;
			if (strstr(buf, what))
				return 0;
		}
		usleep(100000);
	} while (now_s() < end);
	return -1;
}

/*
 * Job 4 makes the NPU fail as a whole: the device loses every context and
 * asks for a reset. The driver resets it by itself. The file whose job it
 * was sees its fence fail, every file opened before gets EIO, and a file
 * opened afterwards runs jobs (job 5).
 */
static int case_device_reset(void *unused)
{
	struct file_bos before, after;
	int culprit = vt_open(), err, bad = 0;
	double t0;

	if (culprit < 0 || file_open(&before, 0x11))
		return 1;
	t0 = now_s();
	err = nop_job(culprit, 30000);
	msg("the job that broke the NPU: fence error %d (want %d)", err, -ENOTRECOVERABLE);
	bad |= err != -ENOTRECOVERABLE;
	if (klog_wait("device reset:", 30)) {
		msg("the driver did not report the device reset within 30 s");
		return 1;
	}
	msg("the driver reset the device within %.1f s", now_s() - t0);
	bad |= refuses_work("a file of before", before.fd);
	bad |= refuses_work("the culprit", culprit);
	if (file_open(&after, 0x22) || file_copy(&after, 0x22)) {
		msg("a file opened after the reset does not work");
		bad = 1;
	}
	close(culprit);
	close(before.fd);
	close(after.fd);
	return bad;
}

/* How often @what is in the kernel log. */
static int klog_count(const char *what)
{
	static char buf[1 << 20];
	int n = klogctl(3, buf, sizeof(buf) - 1), count = 0;

	if (n <= 0)
		return 0;
	buf[n] = 0;
	for (char *p = buf; (p = strstr(p, what)); p += strlen(what))
		count++;
	return count;
}

/*
 * One of the stress workers: opens a file, runs copy jobs and checks them;
 * when its context is lost (EIO, or a fence failed with the loss) it opens
 * a new file. Any other error is unexpected. Exits 0 if it ran jobs and
 * saw nothing unexpected.
 */
static int stress_worker(int id, volatile int *stop)
{
	int jobs = 0, lost = 0, odd = 0;

	while (!*stop && odd < 5) {
		int fd = vt_open(), ret = 0;
		uint32_t src, dst;
		uint8_t *p;

		if (fd < 0) {
			ret = -errno;
		} else {
			ret = vt_bo(fd, LEN, &src);
			if (!ret)
				ret = vt_bo(fd, LEN, &dst);
		}
		if (!ret) {
			p = vt_map(fd, src, LEN);
			if (p) {
				memset(p, id + 1, LEN);
				munmap(p, LEN);
			}
		}
		while (!ret && !*stop) {
			ret = vt_copy_job(fd, src, dst, LEN);
			p = ret ? NULL : vt_map(fd, dst, LEN);
			if (p) {
				if (p[0] != id + 1 || p[LEN - 1] != id + 1) {
					msg("worker %d: wrong output", id);
					odd++;
				}
				munmap(p, LEN);
				jobs++;
			}
		}
		if (ret == -EIO || ret == -ENOTRECOVERABLE) {
			lost++;
		} else if (ret) {
			msg("worker %d: unexpected error %d", id, ret);
			odd++;
		}
		if (fd >= 0)
			close(fd);
	}
	msg("worker %d: %d jobs, %d files lost, %d unexpected", id, jobs, lost, odd);
	return !(jobs > 0 && odd == 0);
}

/*
 * Four processes open files, make buffers and run jobs while the NPU fails
 * as a whole twice more (jobs 60 and 150): each reset races opens, buffer
 * creations, submits and closes. Nothing but EIO and lost fences may come
 * of it, and afterwards a new file runs jobs.
 */
static int case_reset_stress(void *unused)
{
	volatile int *stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int base = klog_count("device reset:"), bad = 0, resets = 0;
	struct file_bos after;
	pid_t w[4];
	double end;

	if (stop == MAP_FAILED)
		return 1;
	*stop = 0;
	for (int i = 0; i < 4; i++) {
		w[i] = fork();
		if (w[i] == 0)
			_exit(stress_worker(i, stop));
	}
	end = now_s() + 60;
	while (now_s() < end && (resets = klog_count("device reset:") - base) < 2)
		usleep(100000);
	/* A second more of work on the new device. */
	sleep(1);
	*stop = 1;
	for (int i = 0; i < 4; i++) {
		int st;

		if (waitpid(w[i], &st, 0) != w[i] || !WIFEXITED(st) || WEXITSTATUS(st))
			bad = 1;
	}
	msg("%d device resets during the run", resets);
	if (resets < 2)
		bad = 1;
	if (file_open(&after, 0x33) || file_copy(&after, 0x33)) {
		msg("a new file does not work afterwards");
		bad = 1;
	}
	return bad;
}

int reset_main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "stress")) {
		vt_case("reset-stress", case_reset_stress, NULL, 120);
		return 0;
	}
	vt_case("context-lost-isolated", case_lost_isolated, NULL, 60);
	vt_case("device-reset-recovers", case_device_reset, NULL, 90);
	return 0;
}
