#!/usr/bin/env bash
# Prepares what the real-guest test needs, cached outside the repository:
# a Debian trixie root (debootstrap) holding QEMU 11.1 and the kernel headers
# from trixie-backports, and the matching kernel image and modules.
#
# The cache lives in $VACCEL_VM_CACHE (default /var/tmp/virtio-accel-vm). The
# root is reused while it exists; the kernel is kept per kernel version. Set
# VACCEL_VM_REFRESH=1 to rebuild everything. Needs root and a Debian mirror.
set -euo pipefail

CACHE=${VACCEL_VM_CACHE:-/var/tmp/virtio-accel-vm}
R=$CACHE/root
log() { echo "vm-prepare: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
[ "${VACCEL_VM_REFRESH:-0}" = 1 ] && rm -rf "$CACHE"
mkdir -p "$CACHE"

# The mirror this machine already uses (deb822 sources or sources.list).
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)}
MIRROR=${MIRROR:-$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

mount_root() {
    mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
    if ! mountpoint -q "$R/dev"; then
        mount --rbind /dev "$R/dev"
        mount --make-rslave "$R/dev"
    fi
}
umount_root() {
    umount -R "$R/dev" 2>/dev/null || true
    umount "$R/proc" 2>/dev/null || true
}

if [ ! -e "$R/.ready" ]; then
    rm -rf "$R" "$CACHE/tools" "$CACHE/apt"
    log "fetching debootstrap and busybox-static from trixie"
    A=$CACHE/apt
    mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/debs" "$CACHE/tools"
    echo "deb [trusted=yes] $MIRROR trixie main" >"$A/sources.list"
    O=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/dev/null
       -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache"
       -o Acquire::Languages=none -o APT::Sandbox::User=root)
    apt-get -q "${O[@]}" update >/dev/null
    (cd "$A/debs" && apt-get -q "${O[@]}" download debootstrap busybox-static >/dev/null)
    for d in "$A"/debs/*.deb; do dpkg -x "$d" "$CACHE/tools"; done

    log "debootstrap trixie (minbase)"
    DEBOOTSTRAP_DIR=$CACHE/tools/usr/share/debootstrap \
        "$CACHE/tools/usr/sbin/debootstrap" --variant=minbase trixie "$R" "$MIRROR" >"$CACHE/debootstrap.log"
    printf 'deb [trusted=yes] %s trixie main\ndeb [trusted=yes] %s trixie-backports main\n' \
        "$MIRROR" "$MIRROR" >"$R/etc/apt/sources.list"
    echo 'Acquire::Languages "none";' >"$R/etc/apt/apt.conf.d/99nolang"
    cp /etc/resolv.conf "$R/etc/resolv.conf"

    trap umount_root EXIT
    mount_root
    log "installing QEMU 11.1, kernel headers and build tools from trixie-backports"
    chroot "$R" apt-get -q update >/dev/null
    chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get -q install -y -t trixie-backports \
        --no-install-recommends qemu-system-x86 linux-headers-amd64 make binutils kmod cpio \
        xz-utils libdrm2 >"$CACHE/apt-install.log"
    chroot "$R" apt-get clean
    umount_root
    trap - EXIT
    touch "$R/.ready"
fi

# Extras, added to an existing root too: Linux 6.12 headers from trixie main
# (the module must build against both), and a C toolchain with libdrm for
# the drmGetVersion() check.
need=()
for p in libdrm-dev gcc libc6-dev; do
    chroot "$R" dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ! ls -d "$R"/usr/src/linux-headers-6.12.*-amd64 >/dev/null 2>&1; then
    h612=$(chroot "$R" apt-cache depends "linux-headers-amd64=$(chroot "$R" apt-cache madison linux-headers-amd64 |
        awk '$3 ~ /^6\.12/ {print $3; exit}')" 2>/dev/null | grep -oE 'linux-headers-6\.12[^ ]*-amd64' | head -1)
    [ -n "$h612" ] && need+=("$h612")
fi
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    trap umount_root EXIT
    mount_root
    chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends \
        "${need[@]}" >>"$CACHE/apt-install.log"
    chroot "$R" apt-get clean
    umount_root
    trap - EXIT
fi

KVER=$(ls "$R/usr/src" | sed -n 's/^linux-headers-\(.*-amd64\)$/\1/p' | sort -V | tail -1)
K=$CACHE/kernel-$KVER
if [ ! -e "$K/.ready" ]; then
    log "fetching kernel image and modules $KVER"
    trap umount_root EXIT
    mount_root
    rm -rf "$R/debs" "$K" && mkdir -p "$R/debs" "$K"
    chroot "$R" sh -c "cd /debs && apt-get -q download linux-binary-$KVER linux-modules-$KVER" >/dev/null \
        || chroot "$R" sh -c "cd /debs && apt-get -q download linux-image-$KVER-unsigned linux-image-$KVER" >/dev/null
    for d in "$R"/debs/*.deb; do dpkg -x "$d" "$K"; done
    rm -rf "$R/debs"
    umount_root
    trap - EXIT
    touch "$K/.ready"
fi
# checkpatch.pl, for the kernel-style check of the driver: Linux 6.12's,
# from trixie's linux-source-6.12. Optional: run.sh skips the check without it.
CP=$CACHE/checkpatch
if [ ! -e "$CP/.ready" ]; then
    log "fetching checkpatch.pl from linux-source-6.12"
    trap umount_root EXIT
    mount_root
    rm -rf "$R/debs" "$CP" && mkdir -p "$R/debs/x" "$CP"
    if chroot "$R" sh -c "cd /debs && apt-get -q download linux-source-6.12" >/dev/null; then
        dpkg -x "$R"/debs/linux-source-6.12_*.deb "$R/debs/x"
        tar -xaf "$R"/debs/x/usr/src/linux-source-6.12.tar.xz -C "$CP" --strip-components=2 \
            --wildcards '*/scripts/checkpatch.pl' '*/scripts/spelling.txt' \
            '*/scripts/const_structs.checkpatch' && touch "$CP/.ready"
    else
        log "linux-source-6.12 not found: no checkpatch"
    fi
    rm -rf "$R/debs"
    umount_root
    trap - EXIT
fi
echo "$KVER" >"$CACHE/kver"
qemu_ver=$(chroot "$R" dpkg-query -W -f '${Version}' qemu-system-x86)
log "ready: kernel $KVER, QEMU $qemu_ver"
