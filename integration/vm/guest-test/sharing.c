// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/*
 * Sharing the node: threads on one file, processes, fork() with the file
 * open, close() racing a submit, buffers shared in from other files, the
 * command-stream buffer closed under its job.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vt.h"

struct worker {
	int fd;
	int id;
	int jobs;
	int bad;
};

/* Copies random data through jobs and checks it; own buffers per worker. */
static void *copy_worker(void *p)
{
	struct worker *w = p;
	const uint32_t len = 65536;
	uint32_t src, dst;
	uint8_t *s, *d;

	if (vt_bo(w->fd, len, &src) || vt_bo(w->fd, len, &dst)) {
		w->bad = 1;
		return NULL;
	}
	s = vt_map(w->fd, src, len);
	d = vt_map(w->fd, dst, len);
	if (!s || !d) {
		w->bad = 1;
		return NULL;
	}
	for (int j = 0; j < w->jobs; j++) {
		for (uint32_t k = 0; k < len; k++)
			s[k] = (uint8_t)(k * 31 + j * 7 + w->id * 131);
		int ret = vt_copy_job(w->fd, src, dst, len);

		if (ret || memcmp(s, d, len)) {
			msg("worker %d job %d: %d%s", w->id, j, ret, ret ? "" : ", data differs");
			w->bad = 1;
			break;
		}
	}
	munmap(s, len);
	munmap(d, len);
	vt_close_bo(w->fd, src);
	vt_close_bo(w->fd, dst);
	return NULL;
}

int case_threads(void *unused)
{
	struct worker w[8];
	pthread_t t[8];
	int fd = vt_open(), bad = 0;

	for (int i = 0; i < 8; i++) {
		w[i] = (struct worker){ .fd = fd, .id = i, .jobs = 15 };
		pthread_create(&t[i], NULL, copy_worker, &w[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(t[i], NULL);
		bad += w[i].bad;
	}
	return bad != 0;
}

int case_procs(void *unused)
{
	pid_t pids[8];
	int bad = 0, st;

	for (int i = 0; i < 8; i++) {
		pids[i] = fork();
		if (!pids[i]) {
			struct worker w = { .fd = vt_open(), .id = i, .jobs = 15 };

			copy_worker(&w);
			_exit(w.bad);
		}
	}
	for (int i = 0; i < 8; i++)
		if (waitpid(pids[i], &st, 0) != pids[i] || !WIFEXITED(st) || WEXITSTATUS(st))
			bad++;
	return bad != 0;
}

/* fork() with the file open: parent and child submit on the same context. */
int case_fork(void *unused)
{
	struct worker w = { .fd = vt_open(), .jobs = 15 };
	int st;
	pid_t pid;

	if (w.fd < 0)
		return 1;
	pid = fork();
	w.id = pid == 0;
	copy_worker(&w);
	if (pid == 0)
		_exit(w.bad);
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st)) {
		msg("child failed");
		return 1;
	}
	return w.bad;
}

struct racer {
	int fd;
	volatile int stop;
	int submits;
};

static void *submit_loop(void *p)
{
	struct racer *r = p;
	struct vt_cmd c;
	uint32_t bo;

	if (vt_cmd_nop(r->fd, &c))
		return NULL;
	while (!r->stop) {
		if (vt_submit(r->fd, &c, NULL, 0, 0) == -EBADF)
			break;
		vt_bo(r->fd, 8192, &bo);
		r->submits++;
	}
	return NULL;
}

/* close() from another thread while one submits and creates buffers. */
int case_close_race(void *unused)
{
	int total = 0;

	for (int round = 0; round < 20; round++) {
		struct racer r = { .fd = vt_open() };
		pthread_t t;

		if (r.fd < 0)
			return 1;
		pthread_create(&t, NULL, submit_loop, &r);
		usleep(20000 + round * 2000);
		close(r.fd);
		usleep(20000);
		r.stop = 1;
		pthread_join(t, NULL);
		total += r.submits;
	}
	msg("%d submits raced with close", total);
	{
		int fd = vt_open();
		uint32_t a, b;

		return fd < 0 || vt_bo(fd, 4096, &a) || vt_bo(fd, 4096, &b) ||
		       vt_copy_job(fd, a, b, 4096);
	}
}

/*
 * A buffer shared into another file (PRIME or FLINK) and used in that
 * file's job: refused, and no buffer of either file is touched. The
 * importer's own first buffer has the same host handle in its context as
 * the exporter's buffer in the exporter's.
 */
static int shared_case(int flink)
{
	const uint32_t len = 4096;
	int a = vt_open(), b = vt_open(), ret;
	uint32_t abo, bfirst, bsrc, imported;
	uint8_t *pa, *pfirst, *psrc;

	if (a < 0 || b < 0 || vt_bo(a, len, &abo) || vt_bo(b, len, &bfirst) ||
	    vt_bo(b, len, &bsrc))
		return 1;
	pa = vt_map(a, abo, len);
	pfirst = vt_map(b, bfirst, len);
	psrc = vt_map(b, bsrc, len);
	if (!pa || !pfirst || !psrc)
		return 1;
	memset(pa, 0xaa, len);
	memset(pfirst, 0xbb, len);
	memset(psrc, 0xcc, len);
	if (flink) {
		struct drm_gem_flink fl = { .handle = abo };
		struct drm_gem_open op = { 0 };

		if (vt_ioctl(a, DRM_IOCTL_GEM_FLINK, &fl))
			return 1;
		op.name = fl.name;
		if (vt_ioctl(b, DRM_IOCTL_GEM_OPEN, &op))
			return 1;
		imported = op.handle;
	} else {
		struct drm_prime_handle ex = { .handle = abo, .flags = DRM_CLOEXEC | DRM_RDWR };
		struct drm_prime_handle im = { 0 };

		if (vt_ioctl(a, DRM_IOCTL_PRIME_HANDLE_TO_FD, &ex))
			return 1;
		im.fd = ex.fd;
		if (vt_ioctl(b, DRM_IOCTL_PRIME_FD_TO_HANDLE, &im))
			return 1;
		imported = im.handle;
	}
	ret = vt_copy_job(b, bsrc, imported, len);
	msg("job in the importing file writing the shared buffer: %d", ret);
	if (pa[0] != 0xaa || pfirst[0] != 0xbb) {
		msg("a buffer was written: exporter's %#x, importer's first %#x", pa[0], pfirst[0]);
		return 1;
	}
	if (ret != -EINVAL)
		return 1;
	/* The owner still uses it. */
	return vt_copy_job(b, bsrc, bfirst, len) || pfirst[0] != 0xcc;
}

int case_prime(void *unused)
{
	return shared_case(0);
}

int case_flink(void *unused)
{
	return shared_case(1);
}

/* The command-stream buffer's handle closed right after SUBMIT. */
int case_cmd_held(void *unused)
{
	int fd = vt_open(), bad = 0;

	for (int i = 0; i < 20; i++) {
		uint32_t src, dst, done, bos[2];
		struct vt_cmd c;
		uint8_t *d;
		int ret;

		if (vt_bo(fd, 65536, &src) || vt_bo(fd, 65536, &dst) || vt_cmd_copy(fd, &c, 65536) ||
		    vt_syncobj(fd, &done, 0))
			return 1;
		memset(vt_map(fd, src, 65536), i + 1, 65536);
		d = vt_map(fd, dst, 65536);
		bos[0] = src;
		bos[1] = dst;
		ret = vt_submit(fd, &c, bos, 2, done);
		vt_close_bo(fd, c.handle);
		vt_close_bo(fd, src);
		if (!ret)
			ret = vt_syncobj_wait(fd, done, 10000);
		if (!ret)
			ret = vt_fence_error(fd, done);
		if (ret || d[65535] != i + 1) {
			msg("round %d: %d, last byte %d", i, ret, d[65535]);
			bad++;
		}
	}
	return bad != 0;
}

