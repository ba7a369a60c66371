// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/* Helpers of vaccel-test: the node's ioctls, SNPU programs, the case runner. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/sync_file.h>

#include "vt.h"

double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t abs_ns(int timeout_ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + (int64_t)timeout_ms * 1000000;
}

void msg(const char *fmt, ...)
{
	va_list ap;

	printf("  ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

/* Prints where each task of process group @pgid waits: its state, wait
 * channel and kernel stack, so a case that times out says why. */
static void show_group(pid_t pgid)
{
	DIR *d = opendir("/proc");
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		char path[64], buf[512], *p;
		int pid = atoi(e->d_name), pg = 0, n;
		char state = '?';
		FILE *f;

		if (pid <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/stat", pid);
		f = fopen(path, "r");
		if (!f)
			continue;
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n > 0 ? n : 0] = 0;
		p = strrchr(buf, ')');
		if (!p || sscanf(p + 2, "%c %*d %d", &state, &pg) != 2 || pg != pgid)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task", pid);
		{
			DIR *td = opendir(path);
			struct dirent *t;

			while (td && (t = readdir(td))) {
				int tid = atoi(t->d_name);

				if (tid <= 0)
					continue;
				snprintf(path, sizeof(path), "/proc/%d/task/%d/stack", pid, tid);
				f = fopen(path, "r");
				n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
				if (f)
					fclose(f);
				buf[n > 0 ? n : 0] = 0;
				for (p = buf; (p = strchr(p, '\n'));)
					*p = '|';
				msg("task %d/%d (%c): %s", pid, tid, state, buf);
			}
			if (td)
				closedir(td);
		}
	}
	closedir(d);
}

int vt_case(const char *name, vt_case_fn fn, void *arg, int timeout_s)
{
	double deadline = now_s() + timeout_s;
	int status = 0, ok = 0;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		setpgid(0, 0);
		_exit(fn(arg) ? 1 : 0);
	}
	for (;;) {
		pid_t w = waitpid(pid, &status, WNOHANG);

		if (w == pid) {
			ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
			if (WIFSIGNALED(status))
				msg("died of signal %d", WTERMSIG(status));
			break;
		}
		if (now_s() > deadline) {
			msg("still running after %d s: killed", timeout_s);
			show_group(pid);
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			usleep(500000);
			waitpid(pid, &status, WNOHANG);
			break;
		}
		usleep(20000);
	}
	printf("CHECK %s %s\n", name, ok ? "PASS" : "FAIL");
	fflush(stdout);
	return ok;
}

int vt_open(void)
{
	return open(NODE, O_RDWR | O_CLOEXEC);
}

/* 0, or -errno. */
int vt_ioctl(int fd, unsigned long cmd, void *arg)
{
	return ioctl(fd, cmd, arg) ? -errno : 0;
}

int vt_caps(int fd, struct drm_vaccel_caps *c)
{
	memset(c, 0, sizeof(*c));
	return vt_ioctl(fd, DRM_IOCTL_VACCEL_GET_CAPS, c);
}

int vt_bo(int fd, uint64_t size, uint32_t *handle)
{
	struct drm_vaccel_bo_create a = { .size = size };
	int ret = vt_ioctl(fd, DRM_IOCTL_VACCEL_BO_CREATE, &a);

	*handle = a.handle;
	return ret;
}

void *vt_map(int fd, uint32_t handle, size_t size)
{
	struct drm_vaccel_bo_info i = { .handle = handle };
	void *p;

	if (vt_ioctl(fd, DRM_IOCTL_VACCEL_BO_INFO, &i))
		return NULL;
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, i.mmap_offset);
	return p == MAP_FAILED ? NULL : p;
}

int vt_close_bo(int fd, uint32_t handle)
{
	struct drm_gem_close c = { .handle = handle };

	return vt_ioctl(fd, DRM_IOCTL_GEM_CLOSE, &c);
}

int vt_syncobj(int fd, uint32_t *handle, int signaled)
{
	struct drm_syncobj_create c = { .flags = signaled ? DRM_SYNCOBJ_CREATE_SIGNALED : 0 };
	int ret = vt_ioctl(fd, DRM_IOCTL_SYNCOBJ_CREATE, &c);

	*handle = c.handle;
	return ret;
}

int vt_syncobj_wait(int fd, uint32_t handle, int timeout_ms)
{
	struct drm_syncobj_wait w = {
		.handles = (uintptr_t)&handle,
		.timeout_nsec = abs_ns(timeout_ms),
		.count_handles = 1,
		.flags = DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL,
	};

	return vt_ioctl(fd, DRM_IOCTL_SYNCOBJ_WAIT, &w);
}

/*
 * The fence error of a signalled syncobj, the standard way: its sync_file's
 * status. An ioctl that fails gives its -errno instead.
 */
int vt_fence_error(int fd, uint32_t syncobj)
{
	struct drm_syncobj_handle h = {
		.handle = syncobj,
		.flags = DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE,
	};
	struct sync_file_info info = { 0 };
	int ret = vt_ioctl(fd, DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, &h);

	if (ret)
		return ret;
	ret = ioctl(h.fd, SYNC_IOC_FILE_INFO, &info) ? -errno : info.status;
	close(h.fd);
	return ret == 1 ? 0 : ret;
}

int vt_bo_wait(int fd, uint32_t handle, int timeout_ms, uint32_t *status)
{
	struct drm_vaccel_bo_wait w = { .handle = handle, .timeout_ns = abs_ns(timeout_ms),
					.job_status = 0xdead };
	int ret = vt_ioctl(fd, DRM_IOCTL_VACCEL_BO_WAIT, &w);

	if (status)
		*status = w.job_status;
	return ret;
}

struct snpu_tensor {
	uint32_t bo_index;
	uint8_t dtype, rank;
	uint16_t pad;
	uint64_t offset;
	uint32_t dims[4], strides[4];
};

struct snpu_op {
	uint16_t opcode, flags;
	uint32_t pad;
	struct snpu_tensor t[4];
	uint32_t params[8];
};

struct snpu_hdr {
	uint32_t magic;
	uint16_t version, nr_ops;
	uint32_t flags, pad;
};

static size_t vt_prog(void *dst, uint16_t opcode, uint32_t len)
{
	struct snpu_hdr h = { .magic = 0x55504e53, .version = 1, .nr_ops = 1 };
	struct snpu_op op = { .opcode = opcode };

	for (int i = 0; i < 4; i++)
		op.t[i].bo_index = 0xffffffff;
	for (int i = 0; opcode == 1 && i < 2; i++) {
		op.t[i].bo_index = i;
		op.t[i].dtype = 2;
		op.t[i].rank = 1;
		op.t[i].dims[0] = len;
		op.t[i].strides[0] = 1;
	}
	memcpy(dst, &h, sizeof(h));
	memcpy((char *)dst + sizeof(h), &op, sizeof(op));
	return sizeof(h) + sizeof(op);
}

size_t vt_prog_nop(void *dst)
{
	return vt_prog(dst, 0, 0);
}

size_t vt_prog_copy(void *dst, uint32_t len)
{
	return vt_prog(dst, 1, len);
}

static int vt_cmd(int fd, struct vt_cmd *c, uint16_t opcode, uint32_t len)
{
	void *p;
	int ret = vt_bo(fd, 4096, &c->handle);

	if (ret)
		return ret;
	p = vt_map(fd, c->handle, 4096);
	if (!p)
		return -errno;
	c->size = vt_prog(p, opcode, len);
	munmap(p, 4096);
	return 0;
}

int vt_cmd_nop(int fd, struct vt_cmd *c)
{
	return vt_cmd(fd, c, 0, 0);
}

int vt_cmd_copy(int fd, struct vt_cmd *c, uint32_t len)
{
	return vt_cmd(fd, c, 1, len);
}

int vt_submit(int fd, const struct vt_cmd *c, const uint32_t *bos, uint32_t nr_bos,
	      uint32_t out_syncobj)
{
	struct drm_vaccel_submit_bo list[2];
	struct drm_vaccel_submit s = {
		.bos = (uintptr_t)list,
		.cmd_bo = c->handle,
		.cmd_size = c->size,
		.nr_bos = nr_bos,
		.out_syncobj = out_syncobj,
	};

	for (uint32_t i = 0; i < nr_bos && i < 2; i++) {
		list[i].handle = bos[i];
		list[i].access = i == 0 ? DRM_VACCEL_BO_READ : DRM_VACCEL_BO_WRITE;
	}
	return vt_ioctl(fd, DRM_IOCTL_VACCEL_SUBMIT, &s);
}

int vt_copy_job(int fd, uint32_t src, uint32_t dst, uint32_t len)
{
	uint32_t bos[2] = { src, dst }, done;
	struct vt_cmd c;
	int ret;

	const char *step = "command buffer";

	ret = vt_cmd_copy(fd, &c, len);
	if (ret)
		goto out;
	step = "syncobj";
	ret = vt_syncobj(fd, &done, 0);
	if (!ret) {
		step = "submit";
		ret = vt_submit(fd, &c, bos, 2, done);
	}
	if (!ret) {
		step = "wait";
		ret = vt_syncobj_wait(fd, done, 30000);
	}
	if (!ret) {
		step = "fence error";
		ret = vt_fence_error(fd, done);
	}
	vt_close_bo(fd, c.handle);
out:
	/* The errors a lost context or a dead device give are expected. */
	if (ret && ret != -EIO && ret != -ENOTRECOVERABLE && ret != -ENODEV)
		msg("copy job: %s: %d", step, ret);
	return ret;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && !strcmp(argv[1], "hostile"))
		return hostile_main(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "inflight"))
		return lifecycle_main(argc, argv);
	if (argc > 1 && !strcmp(argv[1], "lifecycle"))
		return lifecycle_main(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "reset"))
		return reset_main(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "pipeline"))
		return pipeline_main(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "canary"))
		return canary_main(argc - 1, argv + 1);
	fprintf(stderr, "usage: vaccel-test hostile|lifecycle|inflight|reset|pipeline|canary ...\n");
	return 2;
}
