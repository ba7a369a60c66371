/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * vaccel-test: the real guest's test of the virtio-accel driver, with raw
 * ioctls. Each case runs in its own process under a deadline (a driver bug
 * may leave it in D state) and prints "CHECK <name> PASS|FAIL".
 */
#ifndef VT_H
#define VT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <drm/drm.h>
#include <drm/virtio_accel_drm.h>

#define NODE "/dev/accel/accel0"

/* Case bodies return 0 on success; msg() explains a failure. */
typedef int (*vt_case_fn)(void *arg);
int vt_case(const char *name, vt_case_fn fn, void *arg, int timeout_s);
void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
double now_s(void);

int vt_open(void);
int vt_ioctl(int fd, unsigned long cmd, void *arg);
int vt_caps(int fd, struct drm_vaccel_caps *c);
int vt_bo(int fd, uint64_t size, uint32_t *handle);
void *vt_map(int fd, uint32_t handle, size_t size);
int vt_close_bo(int fd, uint32_t handle);
int vt_syncobj(int fd, uint32_t *handle, int signaled);
int vt_syncobj_wait(int fd, uint32_t handle, int timeout_ms);
int vt_fence_error(int fd, uint32_t syncobj);
int vt_bo_wait(int fd, uint32_t handle, int timeout_ms, uint32_t *status);

/* Writes an SNPU command stream into a buffer; returns its size. */
size_t vt_prog_nop(void *dst);
size_t vt_prog_copy(void *dst, uint32_t len);

/* A command-stream buffer holding a NOP or a COPY of @len bytes (bo 0 -> bo 1). */
struct vt_cmd {
	uint32_t handle;
	uint32_t size;
};

int vt_cmd_nop(int fd, struct vt_cmd *c);
int vt_cmd_copy(int fd, struct vt_cmd *c, uint32_t len);
int vt_submit(int fd, const struct vt_cmd *c, const uint32_t *bos, uint32_t nr_bos,
	      uint32_t out_syncobj);
/* Copies @len bytes from @src to @dst in a job; waits; checks the fence. */
int vt_copy_job(int fd, uint32_t src, uint32_t dst, uint32_t len);

/* sharing.c */
int case_threads(void *unused);
int case_procs(void *unused);
int case_fork(void *unused);
int case_close_race(void *unused);
int case_prime(void *unused);
int case_flink(void *unused);

/* prime.c */
int case_udmabuf(void *unused);
int case_cmd_held(void *unused);

int hostile_main(int argc, char **argv);
int lifecycle_main(int argc, char **argv);
int reset_main(int argc, char **argv);
int pipeline_main(int argc, char **argv);
int canary_main(int argc, char **argv);

#endif
