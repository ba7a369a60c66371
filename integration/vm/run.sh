#!/usr/bin/env bash
# The real end-to-end test: two Linux guests under QEMU 11.1 (TCG), each with
# the virtio-accel kernel driver, attached at the same time to one
# vhost-device-accel daemon on the software NPU. Each guest runs accel-info,
# accel-run (workloads checked against a CPU reference), SqueezeNet through
# `accel-run --model` against ONNX Runtime's output (model.sh), and libdrm's
# drmGetVersion(), reloads the driver, then removes the device under a
# running job and unloads the driver. A further guest, on a daemon that hangs
# its first job, checks that the context is reported lost. PASS only if every
# check passed in every guest.
#
# Needs root on Debian (bookworm or later) with a Rust toolchain. Downloads
# and the prepared root are cached outside the repository (prepare.sh).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
CACHE=${VACCEL_VM_CACHE:-/var/tmp/virtio-accel-vm}
VMS=${VACCEL_VMS:-2}
TIMEOUT=${VACCEL_VM_TIMEOUT:-240}
R=$CACHE/root
log() { echo "vm-e2e: $*" >&2; }
t0=$(date +%s)

"$HERE/prepare.sh"
KVER=$(cat "$CACHE/kver")
K=$CACHE/kernel-$KVER

mount -t proc proc "$R/proc" 2>/dev/null || true
cleanup() {
    [ -n "${DAEMON:-}" ] && kill "$DAEMON" 2>/dev/null || true
    [ -n "${HANG_DAEMON:-}" ] && kill "$HANG_DAEMON" 2>/dev/null || true
    umount "$R/proc" 2>/dev/null || true
}
trap cleanup EXIT

# The module must build, without warnings, against every kernel series we
# support (Debian trixie's 6.12 and trixie-backports' 7.x); the guest boots
# the newest.
for h in "$R"/usr/src/linux-headers-*-amd64; do
    v=${h##*/linux-headers-}
    [ "$v" = "$KVER" ] && continue
    log "building the kernel module against $v (build only)"
    rm -rf "$R/build/vaccel-$v" && mkdir -p "$R/build/vaccel-$v"
    cp -r "$TOP/guest-shim/linux/driver" "$TOP/guest-shim/linux/include" "$R/build/vaccel-$v/"
    chroot "$R" make -s -C "/usr/src/linux-headers-$v" M="/build/vaccel-$v/driver" KCFLAGS=-Werror modules
done
log "building the kernel module against $KVER"
B=$R/build/vaccel
rm -rf "$B" && mkdir -p "$B"
cp -r "$TOP/guest-shim/linux/driver" "$TOP/guest-shim/linux/include" "$B/"
cp "$HERE/drm-version.c" "$B/"
chroot "$R" make -s -C "/usr/src/linux-headers-$KVER" M=/build/vaccel/driver KCFLAGS=-Werror modules
chroot "$R" gcc -O2 -Wall -Werror -I/usr/include/libdrm -o /build/vaccel/drm-version \
    /build/vaccel/drm-version.c -ldrm

log "building the daemon and the static guest tools"
(cd "$TOP" && cargo build -q --release -p vhost-device-accel)
(cd "$TOP" && RUSTFLAGS='-C target-feature=+crt-static' cargo build -q --release \
    --target x86_64-unknown-linux-gnu -p virtio-accel-guest --bins)

log "building the initramfs"
S=$R/tmp/stage; I=$R/tmp/initramfs
rm -rf "$S" "$I"
mkdir -p "$S/lib/modules"
cp -a "$K/usr/lib/modules/$KVER" "$S/lib/modules/"
cp "$R/usr/lib/modules/$KVER"/modules.* "$S/lib/modules/$KVER/"
mkdir -p "$S/lib/modules/$KVER/extra"
cp "$B/driver/virtio_accel.ko" "$S/lib/modules/$KVER/extra/"
chroot "$R" depmod -b /tmp/stage "$KVER"
mkdir -p "$I/bin" "$I/lib" "$I/proc" "$I/sys" "$I/dev" "$I/tmp"
cp "$CACHE/tools/usr/bin/busybox" "$I/bin/"
cp "$HERE/init" "$I/init"
chmod +x "$I/init"
for t in accel-info accel-run; do
    cp "$TOP/target/x86_64-unknown-linux-gnu/release/$t" "$I/bin/"
done
cp "$B/drm-version" "$I/bin/"
# drm-version is dynamic: bring its libraries and the loader.
chroot "$R" ldd /build/vaccel/drm-version | grep -oE '/[^ ]+' | while read -r lib; do
    mkdir -p "$I$(dirname "$lib")"
    cp -L "$R$lib" "$I$lib"
done
chroot "$R" modprobe -d /tmp/stage -S "$KVER" --show-depends virtio_accel | awk '{print $2}' |
    while read -r f; do
        b=$(basename "$f"); b=${b%.xz}; b=${b%.zst}; b=${b%.ko}
        case $f in
            *.xz) xz -dc "$R$f" ;;
            *.zst) chroot "$R" zstd -dcq "$f" ;;
            *) cat "$R$f" ;;
        esac >"$I/lib/$b.ko"
        echo "$b"
    done >"$I/lib/load-order"
# --- model check (model.sh): SqueezeNet and ONNX Runtime's output for it.
bash "$TOP/integration/models/prepare.sh"
MODELS=${VACCEL_MODELS_DIR:-$TOP/target/models}
mkdir -p "$I/models"
cp "$MODELS"/squeezenet_random.{onnx,input.npy,output.npy} "$I/models/"
cp "$HERE/model.sh" "$I/bin/model.sh"
# --- end of model check
chroot "$R" sh -c 'cd /tmp/initramfs && find . | cpio -o -H newc --quiet' | gzip -1 >"$R/tmp/initrd.gz"
cp "$K/usr/lib/modules/$KVER/vmlinuz" "$R/tmp/vmlinuz" 2>/dev/null ||
    cp "$K/boot/vmlinuz-$KVER" "$R/tmp/vmlinuz"
rm -rf "$S"

# QEMU 11.1 names the generic device this way; fail clearly if it moved.
chroot "$R" qemu-system-x86_64 -device help 2>/dev/null | grep -q vhost-user-test-device-pci ||
    { log "QEMU in the root lacks vhost-user-test-device-pci"; exit 1; }

log "starting vhost-device-accel with $VMS sockets, and one that hangs its first job"
socks=()
for i in $(seq 0 $((VMS - 1))); do
    rm -f "$R/tmp/accel$i.sock"
    socks+=(--socket-path "$R/tmp/accel$i.sock")
done
"$TOP/target/release/vhost-device-accel" "${socks[@]}" --log-level info >"$CACHE/daemon.log" 2>&1 &
DAEMON=$!
rm -f "$R/tmp/accel-hang.sock"
echo "job_timeout_ms = 300" >"$CACHE/hang.toml"
"$TOP/target/release/vhost-device-accel" --socket-path "$R/tmp/accel-hang.sock" --hang-jobs 1 \
    --config "$CACHE/hang.toml" >"$CACHE/daemon-hang.log" 2>&1 &
HANG_DAEMON=$!
for s in "${socks[@]}" "$R/tmp/accel-hang.sock"; do
    [ "$s" = --socket-path ] && continue
    for _ in $(seq 200); do [ -S "$s" ] && break; sleep 0.05; done
done

boot() { # boot NAME SOCKET CMDLINE-EXTRA
    timeout "$TIMEOUT" chroot "$R" qemu-system-x86_64 -machine q35,accel=tcg -cpu max -smp 1 -m 512M \
        -object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \
        -chardev socket,id=c0,path="$2" \
        -device vhost-user-test-device-pci,chardev=c0,virtio-id=39,num_vqs=3,config_size=72 \
        -kernel /tmp/vmlinuz -initrd /tmp/initrd.gz -append "console=ttyS0 panic=-1 quiet $3" \
        -display none -serial stdio -monitor none -no-reboot </dev/null >"$CACHE/$1.log" 2>&1
}
log "booting $VMS guests side by side, then the hang guest"
pids=()
for i in $(seq 0 $((VMS - 1))); do
    boot "guest$i" "/tmp/accel$i.sock" "" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done
boot guest-hang /tmp/accel-hang.sock vaccel_test=hang || true
kill "$HANG_DAEMON" 2>/dev/null || true

fail=0
verdict() { # verdict NAME EXPECTED-PASSES
    g=$CACHE/$1.log
    echo "--- $1"
    grep -E '^(CHECK|accel-run:|accel-info:|libdrm|npu:|driver:)' "$g" | tr -d '\r' || true
    n_pass=$(grep -c '^CHECK .* PASS' "$g" || true)
    if grep -q '^CHECK .* FAIL' "$g" || [ "$n_pass" -lt "$2" ] || ! grep -q E2E-DONE "$g"; then
        fail=1
        echo "--- $1: last lines"
        tail -40 "$g"
    fi
}
for i in $(seq 0 $((VMS - 1))); do verdict "guest$i" 9; done
verdict guest-hang 4
echo "--- daemon"
tail -5 "$CACHE/daemon.log"
secs=$(($(date +%s) - t0))
if [ "$fail" = 0 ]; then
    echo "E2E-RESULT: PASS ($VMS guests side by side + 1 hang guest, ${secs}s)"
else
    echo "E2E-RESULT: FAIL (${secs}s)"
    exit 1
fi
