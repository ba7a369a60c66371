// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/*
 * Hostile userspace against the driver: malformed ioctls, the core ioctls
 * an accel file cannot serve, device limits, concurrency, buffers shared in
 * from other files, large scattered buffers, memory accounting.
 *
 * Usage: vaccel-test hostile MAX_BOS (the device's max_bos quota)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vt.h"

#define KPTR ((uint64_t)0xffffffff81000000ULL)
#define UNMAPPED ((uint64_t)0x10)

static int max_bos = 64;

static int expect(int fd, const char *what, unsigned long cmd, void *arg, int want)
{
	int got = vt_ioctl(fd, cmd, arg);

	if (got != want) {
		msg("%s: got %d, want %d", what, got, want);
		return 1;
	}
	return 0;
}


/* The NPU's own requests: the software NPU counts each file's jobs alone. */
static int case_npu_ioctl(void *unused)
{
	int fd = vt_open(), other = vt_open(), bad = 0;
	uint64_t stats[4] = { 0 }, none[4] = { 0 };
	static uint8_t room[4097];
	uint64_t out = (uintptr_t)stats;
	struct drm_vaccel_ioctl a = { .cmd = 1, .out_size = sizeof(stats), .out = out };
	struct drm_vaccel_ioctl b = { .cmd = 1, .out_size = sizeof(none), .out = (uintptr_t)none };
	uint32_t src, dst;

	if (fd < 0 || other < 0 || vt_bo(fd, 4096, &src) || vt_bo(fd, 4096, &dst)) {
		msg("setup failed");
		return 1;
	}
	for (int i = 0; i < 3; i++)
		if (vt_copy_job(fd, src, dst, 4096)) {
			msg("copy job %d failed", i);
			return 1;
		}
	bad += expect(fd, "get_stats", DRM_IOCTL_VACCEL_IOCTL, &a, 0);
	bad += expect(other, "get_stats other file", DRM_IOCTL_VACCEL_IOCTL, &b, 0);
	if (a.out_size != 32 || stats[0] != 3 || stats[1] != 0 || b.out_size != 32 || none[0]) {
		msg("get_stats: %u bytes, %llu jobs done, %llu failed; other file %u bytes, %llu done; want 32, 3, 0; 32, 0",
		    a.out_size, (unsigned long long)stats[0], (unsigned long long)stats[1],
		    b.out_size, (unsigned long long)none[0]);
		bad++;
	}
	{
		struct drm_vaccel_ioctl unknown = { .cmd = 0x77, .out_size = 32, .out = out };
		struct drm_vaccel_ioctl in = { .cmd = 1, .in_size = 4, .in = (uintptr_t)room,
					       .out_size = 32, .out = out };
		struct drm_vaccel_ioctl small = { .cmd = 1, .out_size = 16, .out = out };
		struct drm_vaccel_ioctl big = { .cmd = 1, .out_size = 4097, .out = (uintptr_t)room };
		struct drm_vaccel_ioctl pad = { .cmd = 1, .pad = 1, .out_size = 32, .out = out };
		struct drm_vaccel_ioctl kin = { .cmd = 1, .in_size = 4, .in = KPTR,
						.out_size = 32, .out = out };
		struct drm_vaccel_ioctl kout = { .cmd = 1, .out_size = 32, .out = KPTR };

		bad += expect(fd, "npu ioctl unknown", DRM_IOCTL_VACCEL_IOCTL, &unknown, -EOPNOTSUPP);
		bad += expect(fd, "npu ioctl in_size", DRM_IOCTL_VACCEL_IOCTL, &in, -EINVAL);
		bad += expect(fd, "npu ioctl out_size small", DRM_IOCTL_VACCEL_IOCTL, &small, -EINVAL);
		bad += expect(fd, "npu ioctl out_size big", DRM_IOCTL_VACCEL_IOCTL, &big, -E2BIG);
		bad += expect(fd, "npu ioctl pad", DRM_IOCTL_VACCEL_IOCTL, &pad, -EINVAL);
		bad += expect(fd, "npu ioctl in kernel", DRM_IOCTL_VACCEL_IOCTL, &kin, -EFAULT);
		bad += expect(fd, "npu ioctl out kernel", DRM_IOCTL_VACCEL_IOCTL, &kout, -EFAULT);
	}
	close(other);
	close(fd);
	return bad;
}
/* Every driver ioctl with bad pointers, huge counts, nonzero pad, unknown flags. */
static int case_garbage(void *unused)
{
	unsigned long cmds[] = { DRM_IOCTL_VACCEL_GET_CAPS, DRM_IOCTL_VACCEL_BO_CREATE,
				 DRM_IOCTL_VACCEL_BO_INFO, DRM_IOCTL_VACCEL_SUBMIT,
				 DRM_IOCTL_VACCEL_BO_WAIT, DRM_IOCTL_VACCEL_IOCTL };
	uint64_t ptrs[] = { 0, UNMAPPED, KPTR };
	int fd = vt_open(), bad = 0;
	struct drm_vaccel_caps caps;
	struct drm_vaccel_submit_bo list[2];
	uint32_t bo, bo2, in[1] = { 0 };
	struct vt_cmd c;

	if (fd < 0 || vt_caps(fd, &caps) || vt_bo(fd, 4096, &bo) || vt_bo(fd, 4096, &bo2) ||
	    vt_cmd_nop(fd, &c)) {
		msg("setup failed");
		return 1;
	}
	for (unsigned int i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		for (unsigned int j = 0; j < 3; j++) {
			int got = ioctl(fd, cmds[i], (void *)(uintptr_t)ptrs[j]) ? errno : 0;

			if (got != EFAULT) {
				msg("ioctl %#lx arg %#llx: errno %d, want EFAULT", cmds[i],
				    (unsigned long long)ptrs[j], got);
				bad++;
			}
		}
	{
		struct drm_vaccel_caps a = { .capset = 1 }, b = { .pad = 1 };

		bad += expect(fd, "caps capset", DRM_IOCTL_VACCEL_GET_CAPS, &a, -EINVAL);
		bad += expect(fd, "caps pad", DRM_IOCTL_VACCEL_GET_CAPS, &b, -EINVAL);
	}
	{
		struct drm_vaccel_bo_create a = { .size = 4096, .flags = 1 };
		struct drm_vaccel_bo_create b = { .size = 4096, .handle = 7 };
		struct drm_vaccel_bo_create z = { .size = 0 };
		struct drm_vaccel_bo_create h = { .size = UINT64_MAX };
		struct drm_vaccel_bo_create m = { .size = caps.max_bo_size + 1 };

		bad += expect(fd, "bo_create flags", DRM_IOCTL_VACCEL_BO_CREATE, &a, -EINVAL);
		bad += expect(fd, "bo_create handle", DRM_IOCTL_VACCEL_BO_CREATE, &b, -EINVAL);
		bad += expect(fd, "bo_create size 0", DRM_IOCTL_VACCEL_BO_CREATE, &z, -EINVAL);
		bad += expect(fd, "bo_create size max", DRM_IOCTL_VACCEL_BO_CREATE, &h, -EINVAL);
		bad += expect(fd, "bo_create too big", DRM_IOCTL_VACCEL_BO_CREATE, &m, -EINVAL);
	}
	{
		struct drm_vaccel_bo_info a = { .handle = bo, .pad = 1 };
		struct drm_vaccel_bo_info b = { .handle = 0xfffff };

		bad += expect(fd, "bo_info pad", DRM_IOCTL_VACCEL_BO_INFO, &a, -EINVAL);
		bad += expect(fd, "bo_info handle", DRM_IOCTL_VACCEL_BO_INFO, &b, -ENOENT);
	}
	{
		struct drm_vaccel_bo_wait a = { .handle = bo, .pad = 1 };
		struct drm_vaccel_bo_wait b = { .handle = bo, .pad2 = 1 };
		struct drm_vaccel_bo_wait h = { .handle = 0xfffff };

		bad += expect(fd, "bo_wait pad", DRM_IOCTL_VACCEL_BO_WAIT, &a, -EINVAL);
		bad += expect(fd, "bo_wait pad2", DRM_IOCTL_VACCEL_BO_WAIT, &b, -EINVAL);
		bad += expect(fd, "bo_wait handle", DRM_IOCTL_VACCEL_BO_WAIT, &h, -ENOENT);
	}
	{
		struct drm_vaccel_submit g = {
			.bos = (uintptr_t)list, .in_syncobjs = (uintptr_t)in,
			.cmd_bo = c.handle, .cmd_size = c.size, .nr_bos = 2,
		};
		struct {
			const char *what;
			struct drm_vaccel_submit s;
			uint32_t access0, handle1;
			int want;
		} cases[] = {
			{ "flags", { .flags = 1 }, 1, 0, -EINVAL },
			{ "flags high", { .flags = 0x80000000 }, 1, 0, -EINVAL },
			{ "pad", { .pad = 1 }, 1, 0, -EINVAL },
			{ "nr_bos huge", { .nr_bos = 0xffffffff }, 1, 0, -EINVAL },
			{ "nr_in huge", { .nr_in_syncobjs = 0xffffffff }, 1, 0, -EINVAL },
			{ "bos NULL", { .bos = 1 }, 1, 0, -EFAULT },
			{ "bos kernel", { .bos = KPTR }, 1, 0, -EFAULT },
			{ "in unmapped", { .in_syncobjs = UNMAPPED, .nr_in_syncobjs = 1 }, 1, 0,
			  -EFAULT },
			{ "in kernel", { .in_syncobjs = KPTR, .nr_in_syncobjs = 1 }, 1, 0, -EFAULT },
			{ "cmd_size 0", { .cmd_size = 0xffffffff }, 1, 0, -EINVAL },
			{ "cmd past bo", { .cmd_offset = 0xffffff00 }, 1, 0, -EINVAL },
			{ "cmd handle", { .cmd_bo = 0xfffff }, 1, 0, -ENOENT },
			{ "access 0", { .nr_bos = 2 }, 0, 0, -EINVAL },
			{ "access unknown", { .nr_bos = 2 }, 4, 0, -EINVAL },
			{ "bo handle", { .nr_bos = 2 }, 1, 0xfffff, -ENOENT },
			{ "bo twice", { .nr_bos = 2 }, 1, 1, -EINVAL },
			{ "in handle", { .nr_in_syncobjs = 1 }, 1, 0, -ENOENT },
			{ "out handle", { .out_syncobj = 0xfffff }, 1, 0, -ENOENT },
		};

		for (unsigned int i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
			struct drm_vaccel_submit s = g;
			const struct drm_vaccel_submit *o = &cases[i].s;

			if (o->flags)
				s.flags = o->flags;
			if (o->pad)
				s.pad = o->pad;
			if (o->nr_bos)
				s.nr_bos = o->nr_bos;
			if (o->nr_in_syncobjs)
				s.nr_in_syncobjs = o->nr_in_syncobjs;
			if (o->bos)
				s.bos = o->bos == 1 ? 0 : o->bos;
			if (o->in_syncobjs)
				s.in_syncobjs = o->in_syncobjs;
			if (o->cmd_size)
				s.cmd_size = o->cmd_size == 0xffffffff ? 0 : o->cmd_size;
			if (o->cmd_offset)
				s.cmd_offset = o->cmd_offset;
			if (o->cmd_bo)
				s.cmd_bo = o->cmd_bo;
			if (o->out_syncobj)
				s.out_syncobj = o->out_syncobj;
			in[0] = 0xfffff;
			list[0] = (struct drm_vaccel_submit_bo){ bo, cases[i].access0 };
			list[1] = (struct drm_vaccel_submit_bo){
				cases[i].handle1 == 1 ? bo : cases[i].handle1 ? cases[i].handle1 : bo2,
				DRM_VACCEL_BO_WRITE };
			bad += expect(fd, cases[i].what, DRM_IOCTL_VACCEL_SUBMIT, &s, cases[i].want);
		}
	}
	bad += expect(fd, "driver ioctl past the table",
		      DRM_IOWR(DRM_COMMAND_BASE + 0x20, struct drm_vaccel_caps), &caps, -EINVAL);
	/* The file still works. */
	if (vt_copy_job(fd, bo, bo2, 4096)) {
		msg("a good job failed after the garbage");
		bad++;
	}
	return bad != 0;
}

/* Core ioctls: GET_MAGIC/GET_UNIQUE and the rest of the sweep, as nobody. */
static int case_core_ioctls(void *unused)
{
	static const unsigned int refused[] = { 0x01, 0x02, 0x05, 0x06, 0x07, 0x10, 0x11, 0x1e,
						0x1f, 0x3a, 0xa0, 0xa1 };
	char buf[256];
	int fd, bad = 0;

	if (setuid(65534)) {
		msg("setuid: %s", strerror(errno));
		return 1;
	}
	fd = vt_open();
	if (fd < 0) {
		msg("open as nobody: %s", strerror(errno));
		return 1;
	}
	{
		struct drm_auth auth = { 0 };
		struct drm_unique u = { 0 };

		bad += expect(fd, "GET_MAGIC", DRM_IOCTL_GET_MAGIC, &auth, -EOPNOTSUPP);
		bad += expect(fd, "GET_UNIQUE", DRM_IOCTL_GET_UNIQUE, &u, -EOPNOTSUPP);
	}
	for (unsigned int i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		memset(buf, 0, sizeof(buf));
		if (ioctl(fd, _IOC(_IOC_READ | _IOC_WRITE, 'd', refused[i], sizeof(buf)), buf) != -1 ||
		    errno != EOPNOTSUPP) {
			msg("core ioctl %#x not refused (errno %d)", refused[i], errno);
			bad++;
		}
	}
	/* Every core number, zeroed arguments: any errno, no oops (dmesg is checked). */
	for (unsigned int nr = 0; nr < 0x100; nr++) {
		if (nr >= DRM_COMMAND_BASE && nr < DRM_COMMAND_END)
			continue;
		memset(buf, 0, sizeof(buf));
		ioctl(fd, _IOC(_IOC_READ | _IOC_WRITE, 'd', nr, sizeof(buf)), buf);
		ioctl(fd, _IOC(_IOC_NONE, 'd', nr, 0), NULL);
	}
	{
		struct drm_version v = { 0 };

		bad += expect(fd, "VERSION still served", DRM_IOCTL_VERSION, &v, 0);
	}
	return bad != 0;
}

static int case_max_in_fences(void *unused)
{
	struct drm_vaccel_caps caps;
	uint32_t in[257];
	struct vt_cmd c;
	int fd = vt_open(), ret;

	if (fd < 0 || vt_caps(fd, &caps) || vt_cmd_nop(fd, &c) || caps.max_in_syncobjs > 256)
		return 1;
	for (uint32_t i = 0; i <= caps.max_in_syncobjs; i++)
		if (vt_syncobj(fd, &in[i], 1))
			return 1;
	{
		struct drm_vaccel_submit s = { .in_syncobjs = (uintptr_t)in, .cmd_bo = c.handle,
					       .cmd_size = c.size,
					       .nr_in_syncobjs = caps.max_in_syncobjs + 1 };

		ret = vt_ioctl(fd, DRM_IOCTL_VACCEL_SUBMIT, &s);
		msg("%u in-syncobjs (device limit %u): %d", s.nr_in_syncobjs,
		    caps.max_in_syncobjs, ret);
		if (ret != -EINVAL)
			return 1;
		s.nr_in_syncobjs--;
		ret = vt_ioctl(fd, DRM_IOCTL_VACCEL_SUBMIT, &s);
		msg("%u in-syncobjs: %d", s.nr_in_syncobjs, ret);
		return ret != 0;
	}
}

/* 16 jobs back to back on a device taking 4 at a time: throttled, all fine. */
static int case_throttle(void *unused)
{
	uint32_t done[16];
	struct vt_cmd c;
	int fd = vt_open(), bad = 0;

	if (fd < 0 || vt_cmd_nop(fd, &c))
		return 1;
	for (int i = 0; i < 16; i++) {
		int ret = vt_syncobj(fd, &done[i], 0);

		if (!ret)
			ret = vt_submit(fd, &c, NULL, 0, done[i]);
		if (ret) {
			msg("submit %d: %d", i, ret);
			bad++;
		}
	}
	for (int i = 0; i < 16; i++) {
		int ret = vt_syncobj_wait(fd, done[i], 30000);

		if (!ret)
			ret = vt_fence_error(fd, done[i]);
		if (ret) {
			msg("job %d ended %d", i, ret);
			bad++;
		}
	}
	return bad != 0;
}

static long slab_objs(void)
{
	char line[512], name[64];
	long active, total = 0;
	FILE *f = fopen("/proc/slabinfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%63s %ld", name, &active) == 2 && !strncmp(name, "kmalloc", 7))
			total += active;
	fclose(f);
	return total;
}

/* 1000 jobs leave no objects behind once their file is closed. */
static int case_fence_leak(void *unused)
{
	const int jobs = 1000;
	long before, after;
	uint32_t done;
	struct vt_cmd c;
	int fd;

	fd = vt_open();
	if (fd < 0 || vt_cmd_nop(fd, &c) || vt_syncobj(fd, &done, 0))
		return 1;
	vt_submit(fd, &c, NULL, 0, done);
	vt_syncobj_wait(fd, done, 10000);
	sleep(1);
	before = slab_objs();
	for (int i = 0; i < jobs; i++)
		if (vt_submit(fd, &c, NULL, 0, done) || vt_syncobj_wait(fd, done, 10000))
			return 1;
	close(fd);
	sleep(2);
	after = slab_objs();
	msg("kmalloc objects: %ld before, %ld after %d jobs and close (%.2f per job)", before,
	    after, jobs, (double)(after - before) / jobs);
	return before < 0 || after - before > jobs / 4;
}

/* Creating buffers until the device's quota: ENOSPC, not another errno. */
static int case_quota_errno(void *unused)
{
	int fd = vt_open(), n = 0, ret;
	uint32_t h;

	while (!(ret = vt_bo(fd, 4096, &h)) && n < 100000)
		n++;
	msg("%d buffers, then %d (quota %d)", n, ret, max_bos);
	return ret != -ENOSPC || n > max_bos;
}

/*
 * A 256 MiB buffer on fragmented memory: scattered pages, one attach of up
 * to 65536 entries whose request is chunked to fit the queue. A job writes
 * its first MiB and the data is checked.
 */
static int case_big_bo(void *unused)
{
	const size_t frag = 640UL << 20, size = 256UL << 20, len = 1 << 20;
	uint32_t big, src;
	uint8_t *p, *s, *d;
	int fd = vt_open(), ret;

	/* Fragment most of memory: touch pages, then free every other one. */
	p = mmap(NULL, frag, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return 1;
	for (size_t o = 0; o < frag; o += 4096)
		p[o] = 1;
	for (size_t o = 0; o < frag; o += 8192)
		madvise(p + o, 4096, MADV_DONTNEED);
	ret = vt_bo(fd, size, &big);
	msg("256 MiB buffer on fragmented memory: %d", ret);
	munmap(p, frag);
	if (ret || vt_bo(fd, len, &src))
		return 1;
	s = vt_map(fd, src, len);
	d = vt_map(fd, big, size);
	if (!s || !d)
		return 1;
	for (size_t k = 0; k < len; k++)
		s[k] = (uint8_t)(k * 13 + 5);
	ret = vt_copy_job(fd, src, big, len);
	msg("copy into it: %d", ret);
	return ret || memcmp(s, d, len);
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY), ok;

	if (fd < 0)
		return -1;
	ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
	close(fd);
	return ok ? 0 : -1;
}

static long read_long(const char *path)
{
	char buf[64] = { 0 };
	int fd = open(path, O_RDONLY);

	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) <= 0)
		return -1;
	close(fd);
	return atol(buf);
}

/* Pinned buffer memory is charged to the creator's memory cgroup. */
static int case_memcg(void *unused)
{
	const char *cg = "/sys/fs/cgroup/vaccel";
	char path[128], pid[32];
	long before, after;
	uint32_t h;
	int fd, ret;

	mkdir(cg, 0755);
	snprintf(path, sizeof(path), "%s/memory.max", cg);
	if (write_file(path, "48M")) {
		msg("no memory cgroup (%s)", strerror(errno));
		return 1;
	}
	snprintf(path, sizeof(path), "%s/cgroup.procs", cg);
	snprintf(pid, sizeof(pid), "%d", getpid());
	if (write_file(path, pid))
		return 1;
	snprintf(path, sizeof(path), "%s/memory.current", cg);
	fd = vt_open();
	before = read_long(path);
	ret = vt_bo(fd, 16 << 20, &h);
	after = read_long(path);
	msg("16 MiB buffer: %d, cgroup memory %ld -> %ld", ret, before, after);
	if (ret || after - before < (16 << 20))
		return 1;
	ret = vt_bo(fd, 64 << 20, &h);
	msg("64 MiB buffer over a 48 MiB limit: %d", ret);
	return ret != -ENOMEM;
}

int hostile_main(int argc, char **argv)
{
	if (argc > 1)
		max_bos = atoi(argv[1]);
	vt_case("ioctl-garbage", case_garbage, NULL, 60);
	vt_case("npu-ioctl", case_npu_ioctl, NULL, 60);
	vt_case("max-in-fences", case_max_in_fences, NULL, 60);
	vt_case("jobs-throttled", case_throttle, NULL, 60);
	vt_case("fence-no-leak", case_fence_leak, NULL, 120);
	vt_case("threads-one-fd", case_threads, NULL, 120);
	vt_case("processes", case_procs, NULL, 120);
	vt_case("fork-shared-fd", case_fork, NULL, 60);
	vt_case("close-during-submit", case_close_race, NULL, 60);
	vt_case("prime-other-context", case_prime, NULL, 60);
	vt_case("flink-other-context", case_flink, NULL, 60);
	vt_case("prime-udmabuf", case_udmabuf, NULL, 60);
	vt_case("cmd-bo-held", case_cmd_held, NULL, 60);
	vt_case("bo-quota-enospc", case_quota_errno, NULL, 60);
	vt_case("big-scattered-bo", case_big_bo, NULL, 120);
	vt_case("memcg-charged", case_memcg, NULL, 60);
	/* Last: on a driver without the fix this oopses and wedges master_mutex. */
	vt_case("core-ioctls-refused", case_core_ioctls, NULL, 30);
	return 0;
}
