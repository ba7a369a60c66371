// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
/* A client we did not write: libdrm's drmGetVersion() on the accel node. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <xf86drm.h>

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "/dev/accel/accel0";
	int fd = open(path, O_RDWR | O_CLOEXEC);
	drmVersionPtr v;
	int ok;

	if (fd < 0) {
		perror(path);
		return 1;
	}
	v = drmGetVersion(fd);
	if (!v) {
		perror("drmGetVersion");
		return 1;
	}
	printf("libdrm drmGetVersion: %s %d.%d.%d (%s)\n", v->name, v->version_major,
	       v->version_minor, v->version_patchlevel, v->desc);
	ok = strcmp(v->name, "virtio_accel") == 0;
	drmFreeVersion(v);
	return ok ? 0 : 1;
}
