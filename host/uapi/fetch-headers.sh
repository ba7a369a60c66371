#!/usr/bin/env bash
# Fetches the Linux UAPI headers the driver tables are checked against
# (drm/ivpu_accel.h and drm/amdxdna_accel.h, from trixie-backports'
# linux-libc-dev) into a private directory, without installing anything:
#
#   host/uapi/fetch-headers.sh [DIR]     default /var/tmp/virtio-accel-uapi
#
# then VACCEL_UAPI_INCLUDE=DIR/usr/include cargo test -p vhost-device-accel
# --test uapi_layout checks every table against them.
set -euo pipefail
D=${1:-/var/tmp/virtio-accel-uapi}
if [ -e "$D/usr/include/drm/amdxdna_accel.h" ]; then
    echo "uapi headers: $D ($(cat "$D/version"))"
    exit 0
fi
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)}
MIRROR=${MIRROR:-$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
A=$(mktemp -d)
trap 'rm -rf "$A"' EXIT
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/debs"
echo "deb [trusted=yes] $MIRROR trixie-backports main" >"$A/sources.list"
O=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/dev/null
   -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache"
   -o Acquire::Languages=none -o APT::Sandbox::User=root
   -o APT::Architecture=amd64 -o APT::Architectures=amd64)
apt-get -q "${O[@]}" update >/dev/null
(cd "$A/debs" && apt-get -q "${O[@]}" download linux-libc-dev >/dev/null)
rm -rf "$D.tmp"
mkdir -p "$D.tmp"
dpkg -x "$A"/debs/linux-libc-dev_*.deb "$D.tmp"
basename "$A"/debs/linux-libc-dev_*.deb .deb >"$D.tmp/version"
rm -rf "$D"
mv "$D.tmp" "$D"
echo "uapi headers: $D ($(cat "$D/version"))"
