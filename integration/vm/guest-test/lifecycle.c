// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/*
 * The driver against a daemon that fails jobs, stops answering and dies.
 * The host stops, continues and kills the daemon when this program prints
 * "VACCEL-HOST stop|cont|kill" on the console; the guest notices the effect
 * itself (a request that makes no progress), never by timing.
 *
 * Usage: vaccel-test lifecycle MAX_CONTEXTS MAX_BOS   (the daemon's quotas;
 *        its jobs 1 and 2 fail: 1 is accel-run's, 2 is ours)
 *        vaccel-test inflight                          (jobs until the device goes)
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vt.h"

static int max_contexts = 16, max_bos = 32;

static void host(const char *what)
{
	printf("VACCEL-HOST %s\n", what);
	fflush(stdout);
}

static void set_param(const char *name, const char *value)
{
	char path[128];
	int fd;

	snprintf(path, sizeof(path), "/sys/module/virtio_accel/parameters/%s", name);
	fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, value, strlen(value)) < 0)
		msg("cannot set %s: %s", name, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* A job the device fails: failed per BO_WAIT and per the syncobj's fence. */
static int case_failed_job(void *unused)
{
	int fd = vt_open(), ret, err;
	uint32_t src, dst, done, bos[2], status;
	struct vt_cmd c;

	if (fd < 0 || vt_bo(fd, 4096, &src) || vt_bo(fd, 4096, &dst) || vt_cmd_copy(fd, &c, 4096) ||
	    vt_syncobj(fd, &done, 0))
		return 1;
	bos[0] = src;
	bos[1] = dst;
	ret = vt_submit(fd, &c, bos, 2, done);
	if (!ret)
		ret = vt_syncobj_wait(fd, done, 10000);
	err = vt_fence_error(fd, done);
	vt_bo_wait(fd, dst, 10000, &status);
	msg("submit+wait %d, fence error %d, BO_WAIT job_status %u", ret, err, status);
	return ret || err != -EIO || status != DRM_VACCEL_JOB_STATUS_FAILED;
}

/* Forks a process that creates buffers in a loop, reporting each on a pipe. */
static pid_t prober(int *rd)
{
	int p[2];
	pid_t pid;

	if (pipe(p))
		return -1;
	pid = fork();
	if (pid == 0) {
		int fd = vt_open();
		uint32_t h;

		close(p[0]);
		while (fd >= 0 && !vt_bo(fd, 4096, &h)) {
			vt_close_bo(fd, h);
			if (write(p[1], "x", 1) != 1)
				break;
		}
		_exit(0);
	}
	close(p[1]);
	*rd = p[0];
	return pid;
}

/* Returns once the prober made no progress for a second: the daemon is stopped. */
static int wait_stalled(int rd, double limit_s)
{
	double start = now_s(), last = now_s();
	char buf[256];

	while (now_s() - start < limit_s) {
		struct pollfd pfd = { .fd = rd, .events = POLLIN };

		if (poll(&pfd, 1, 100) > 0) {
			if (read(rd, buf, sizeof(buf)) <= 0)
				return -1;
			last = now_s();
		} else if (now_s() - last > 1.0) {
			return 0;
		}
	}
	return -1;
}

static int reap(pid_t pid, double deadline, int *status)
{
	while (now_s() < deadline) {
		if (waitpid(pid, status, WNOHANG) == pid)
			return 0;
		usleep(20000);
	}
	return -1;
}

static void *filler_thread(void *p)
{
	int fd = *(int *)p;
	uint32_t h;

	for (;;)
		vt_bo(fd, 4096, &h);
	return NULL;
}

/*
 * Counts what a fresh process can hold: the device's quotas less @held
 * contexts, if nothing leaked.
 */
static int quota_free(int held, int *ctxs, int *bos)
{
	int fds[256], n = 0;
	uint32_t h;

	while (n < max_contexts + 4 && n < 256 && (fds[n] = vt_open()) >= 0)
		n++;
	*ctxs = n;
	*bos = 0;
	if (n) {
		while (*bos < max_bos + 4 && !vt_bo(fds[0], 4096, &h))
			(*bos)++;
	}
	while (n--)
		close(fds[n]);
	return *ctxs == max_contexts - held && *bos == max_bos;
}

/*
 * A process that lives on: creates 4 buffers, closes them when told (while
 * the control queue is full), then waits for its pipe to close.
 */
static pid_t survivor(int *cmd, int *ack)
{
	int c[2], a[2];
	pid_t pid;

	if (pipe(c) || pipe(a))
		return -1;
	pid = fork();
	if (pid == 0) {
		int fd = vt_open();
		uint32_t h[4];
		char x;

		close(c[1]);
		close(a[0]);
		for (int i = 0; i < 4; i++)
			vt_bo(fd, 4096, &h[i]);
		if (write(a[1], "r", 1) != 1 || read(c[0], &x, 1) != 1)
			_exit(1);
		for (int i = 0; i < 4; i++)
			vt_close_bo(fd, h[i]);
		if (write(a[1], "c", 1) != 1)
			_exit(1);
		while (read(c[0], &x, 1) > 0)
			;
		_exit(0);
	}
	close(c[0]);
	close(a[1]);
	*cmd = c[1];
	*ack = a[0];
	return pid;
}

static int read_timeout(int fd, double s)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	char x;

	return poll(&pfd, 1, (int)(s * 1000)) == 1 && read(fd, &x, 1) == 1 ? 0 : -1;
}

/*
 * A process with jobs in flight and buffers is killed while the control
 * queue is full (the daemon stopped, 80 threads of another process
 * creating buffers, killed too), and a process that lives on closes its
 * buffers meanwhile. Once the daemon answers again, the device holds
 * nothing of them: a fresh process can hold every buffer and every context
 * but the survivor's the quotas allow.
 */
static int case_sigkill(void *unused)
{
	int ready[2], rd, fd_fill, ctxs = 0, bos = 0, st, ok = 0, s_cmd, s_ack;
	pid_t victim, filler, probe, surv;
	double deadline;

	for (int i = 0; i < 25 && !ok; i++) {
		ok = quota_free(0, &ctxs, &bos);
		if (!ok)
			usleep(200000);
	}
	if (!ok) {
		msg("before: %d contexts, %d buffers free; want %d, %d", ctxs, bos, max_contexts,
		    max_bos);
		return 1;
	}
	ok = 0;
	set_param("timeout_ms", "60000");
	if (pipe(ready))
		return 1;
	victim = fork();
	if (victim == 0) {
		int fd = vt_open();
		uint32_t h;
		struct vt_cmd c;

		for (int i = 0; i < 8; i++)
			vt_bo(fd, 65536, &h);
		if (vt_cmd_nop(fd, &c) || write(ready[1], "r", 1) != 1)
			_exit(1);
		for (;;)
			vt_submit(fd, &c, NULL, 0, 0);
	}
	if (read(ready[0], &st, 1) != 1)
		return 1;
	surv = survivor(&s_cmd, &s_ack);
	if (surv < 0 || read_timeout(s_ack, 10))
		return 1;
	fd_fill = vt_open();
	probe = prober(&rd);
	host("stop");
	if (wait_stalled(rd, 20)) {
		msg("the daemon never stopped answering");
		host("cont");
		return 1;
	}
	filler = fork();
	if (filler == 0) {
		pthread_t t;

		for (int i = 0; i < 80; i++)
			pthread_create(&t, NULL, filler_thread, &fd_fill);
		pause();
		_exit(0);
	}
	close(fd_fill);
	sleep(2);
	if (write(s_cmd, "c", 1) != 1 || read_timeout(s_ack, 3))
		msg("the survivor's GEM_CLOSE blocks on the stopped daemon");
	kill(victim, SIGKILL);
	kill(filler, SIGKILL);
	kill(probe, SIGKILL);
	sleep(1);
	host("cont");
	deadline = now_s() + 30;
	if (reap(victim, deadline, &st) || reap(filler, deadline, &st) ||
	    reap(probe, deadline, &st)) {
		msg("a killed process did not exit within 30 s");
		return 1;
	}
	/* Teardown is asynchronous: give the worker a few seconds. */
	for (int i = 0; i < 50 && !ok; i++) {
		ok = quota_free(1, &ctxs, &bos);
		if (!ok)
			usleep(200000);
	}
	msg("after: %d contexts, %d buffers free; want %d, %d", ctxs, bos, max_contexts - 1,
	    max_bos);
	close(s_cmd);
	if (reap(surv, now_s() + 10, &st)) {
		msg("the survivor did not exit");
		kill(surv, SIGKILL);
		ok = 0;
	}
	set_param("timeout_ms", "5000");
	return !ok;
}

struct waiter {
	const char *what;
	pid_t pid;
};

/* Children blocked on the stopped device; each exits 0 if it got ENODEV. */
static pid_t blocked_job_wait(int fd, struct vt_cmd *c, uint32_t done)
{
	pid_t pid = fork();

	if (pid == 0) {
		int ret = vt_submit(fd, c, NULL, 0, done), err = 0;
		uint32_t status = 0;

		if (!ret)
			ret = vt_syncobj_wait(fd, done, 60000);
		if (!ret)
			err = vt_fence_error(fd, done);
		msg("job wait: %d, fence error %d", ret, err);
		(void)status;
		_exit(!(ret == -ENODEV || err == -ENODEV));
	}
	return pid;
}

static pid_t blocked_bo_create(int fd)
{
	pid_t pid = fork();

	if (pid == 0) {
		uint32_t h;
		int ret = vt_bo(fd, 4096, &h);

		msg("BO_CREATE: %d", ret);
		_exit(ret != -ENODEV);
	}
	return pid;
}

static pid_t blocked_open(void)
{
	pid_t pid = fork();

	if (pid == 0) {
		int fd = vt_open();

		msg("open: %d (%s)", fd, fd < 0 ? strerror(errno) : "ok");
		_exit(!(fd < 0 && errno == ENODEV));
	}
	return pid;
}

/*
 * The daemon is killed while processes wait on it in a job wait, a control
 * request and open(): each returns ENODEV in bounded time, and so does
 * everything after.
 */
static int case_daemon_killed(void *unused)
{
	struct waiter w[3];
	int fd = vt_open(), rd, bad = 0, st;
	struct vt_cmd c;
	uint32_t done;
	pid_t probe;
	double t0;

	/* The case before closes what it held just now: its contexts and
	 * buffers are torn down asynchronously, so the quota frees shortly. */
	for (int i = 0; i < 50; i++) {
		if (fd >= 0 && !vt_cmd_nop(fd, &c) && !vt_syncobj(fd, &done, 0))
			break;
		if (i == 49) {
			msg("setting up: open %d, errno %d", fd, errno);
			return 1;
		}
		if (fd >= 0)
			close(fd);
		usleep(100000);
		fd = vt_open();
	}
	probe = prober(&rd);
	host("stop");
	if (wait_stalled(rd, 20)) {
		msg("the daemon never stopped answering");
		return 1;
	}
	w[0] = (struct waiter){ "job wait", blocked_job_wait(fd, &c, done) };
	w[1] = (struct waiter){ "BO_CREATE", blocked_bo_create(fd) };
	w[2] = (struct waiter){ "open", blocked_open() };
	usleep(300000);
	host("kill");
	t0 = now_s();
	for (int i = 0; i < 3; i++) {
		if (reap(w[i].pid, t0 + 20, &st)) {
			msg("%s: still blocked 20 s after the daemon died", w[i].what);
			bad++;
		} else if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			msg("%s: did not fail with ENODEV", w[i].what);
			bad++;
		} else {
			msg("%s: ENODEV after %.1f s", w[i].what, now_s() - t0);
		}
	}
	kill(probe, SIGKILL);
	if (reap(probe, t0 + 25, &st)) {
		msg("the prober is still blocked");
		bad++;
	}
	{
		double t1 = now_s();
		uint32_t h;
		int f2 = vt_open(), ret = vt_bo(fd, 4096, &h);

		msg("afterwards: open %s, BO_CREATE %d, in %.2f s", f2 < 0 ? strerror(errno) : "ok",
		    ret, now_s() - t1);
		if (f2 >= 0 || ret != -ENODEV || now_s() - t1 > 1)
			bad++;
	}
	return bad != 0;
}

int lifecycle_main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "inflight")) {
		/* Copies until the device goes; exits 0 if it ended with ENODEV. */
		int fd = vt_open(), jobs = 0, ret;
		uint32_t a, b;

		if (fd < 0 || vt_bo(fd, 16 << 20, &a) || vt_bo(fd, 16 << 20, &b))
			return 1;
		do {
			ret = vt_copy_job(fd, a, b, 16 << 20);
			if (!ret && ++jobs == 2)
				close(open("/tmp/inflight.ready", O_CREAT | O_WRONLY, 0644));
		} while (!ret);
		printf("inflight: %d jobs, then %d\n", jobs, ret);
		return !(jobs >= 2 && ret == -ENODEV);
	}
	if (argc > 2) {
		max_contexts = atoi(argv[1]);
		max_bos = atoi(argv[2]);
	}
	vt_case("job-failed-status", case_failed_job, NULL, 60);
	vt_case("sigkill-full-ring-no-host-leak", case_sigkill, NULL, 120);
	/* The case raises the driver's timeout; a case killed midway must not
	 * leave it raised for the next one. */
	set_param("timeout_ms", "5000");
	vt_case("daemon-killed-bounded", case_daemon_killed, NULL, 90);
	return 0;
}
