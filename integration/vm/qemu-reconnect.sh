#!/usr/bin/env bash
# A minimal reproduction of why a vhost-user backend restart cannot work
# under QEMU 11.1 with the generic device (vhost-user-test-device-pci):
# QEMU runs against vhost-user-null, a backend that does nothing but the
# vhost-user handshake (integration/src/bin/vhost-user-null.rs), so the
# outcome owes nothing to vhost-device-accel.
#
#  1. reconnect-ms on the command line: QEMU refuses the device at start-up
#     (vhost-user-base initialises the device before the socket has
#     connected, where vhost-user-blk and -gpio wait for it);
#  2. the device hot-plugged (device_add once connected), started by the
#     guest driver, then the backend killed and started again: QEMU aborts
#     in vhost_dev_start (vhost-user-base cleans the vhost device up on
#     disconnect and never initialises it again on reconnect).
#
# Prints what happened with the QEMU version, and exits 0 either way: it
# documents a defect. If QEMU survives a case, it says so loudly: the
# daemon's own restart, which the harness-level tests cover, can then be
# tried under that QEMU.
#
# Uses what run.sh prepared: the root in $VACCEL_VM_CACHE, the guest kernel
# and initramfs in its /tmp, and the release binaries. Needs root.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
CACHE=${VACCEL_VM_CACHE:-/var/tmp/virtio-accel-vm}
R=$CACHE/root
NULL=$TOP/target/release/vhost-user-null
QMP=$TOP/target/release/vaccel-qmp
L=$CACHE/reconnect
DEV='"driver":"vhost-user-test-device-pci","chardev":"c0","virtio-id":39,"num_vqs":3,"config_size":72'
say() { echo "qemu-reconnect: $*"; }

for f in "$NULL" "$QMP" "$R/tmp/vmlinuz" "$R/tmp/initrd.gz"; do
    [ -e "$f" ] || { say "missing $f (run integration/vm/run.sh first); nothing shown"; exit 0; }
done
rm -rf "$L" && mkdir -p "$L"
mount -t proc proc "$R/proc" 2>/dev/null || true
NP= QP=
kill_qemu() { [ -s "$R/tmp/qemu-null.pid" ] && kill -KILL "$(cat "$R/tmp/qemu-null.pid")" 2>/dev/null; }
cleanup() {
    [ -n "$NP" ] && kill -KILL "$NP" 2>/dev/null
    [ -n "$QP" ] && kill_qemu
    rm -f "$R/tmp/null.sock" "$R/tmp/qmp-null.sock" "$R/tmp/qemu-null.pid"
}
trap cleanup EXIT
# run_qemu NAME ARGS...: QEMU in the background ($QP); its exit status goes
# to $L/NAME.status, its stderr to $L/NAME.qemu.log, the serial port to
# $L/NAME.serial.log.
run_qemu() {
    local name=$1
    shift
    rm -f "$R/tmp/qemu-null.pid"
    (chroot "$R" qemu-system-x86_64 -pidfile /tmp/qemu-null.pid "$@" \
        </dev/null >"$L/$name.serial.log" 2>"$L/$name.qemu.log"
        echo $? >"$L/$name.status") 2>/dev/null &
    QP=$!
}

start_null() { # start_null LOG
    rm -f "$R/tmp/null.sock"
    "$NULL" --socket-path "$R/tmp/null.sock" >"$1" 2>&1 &
    NP=$!
    disown "$NP"
    for _ in $(seq 100); do [ -S "$R/tmp/null.sock" ] && return; sleep 0.05; done
}
# Waits up to $1 seconds for QEMU to exit; true if it did.
qemu_exited() {
    for _ in $(seq $(($1 * 10))); do kill -0 "$QP" 2>/dev/null || return 0; sleep 0.1; done
    return 1
}
requests() { grep -c ': request ' "$1" 2>/dev/null || true; }

ver=$(chroot "$R" qemu-system-x86_64 --version | head -1)
say "$ver"
survived=0

# 1. reconnect-ms on the command line, the device with it.
start_null "$L/case1.null.log"
run_qemu case1 -S -machine q35,accel=tcg -m 256M \
    -object memory-backend-memfd,id=mem,size=256M,share=on -machine memory-backend=mem \
    -chardev socket,id=c0,path=/tmp/null.sock,reconnect-ms=500 \
    -device vhost-user-test-device-pci,chardev=c0,virtio-id=39,num_vqs=3,config_size=72 \
    -display none -monitor none -serial none -qmp unix:/tmp/qmp-null.sock,server=on,wait=off
if qemu_exited 10; then
    st=$(cat "$L/case1.status")
    why=$(grep -E 'vhost_backend_init|Failed|[Ee]rror' "$L/case1.qemu.log" |
        sed 's/^.*: -device [^:]*: //' | paste -sd' ')
    say "1. reconnect-ms=500 on the command line: QEMU exited at start-up (status $st): $why;" \
        "the backend acted on $(requests "$L/case1.null.log") requests"
else
    survived=1
    say "1. reconnect-ms=500 on the command line: QEMU STARTED with the device (it did not in 11.1)"
    "$QMP" "$R/tmp/qmp-null.sock" quit >/dev/null 2>&1
    qemu_exited 10 || kill_qemu
fi
QP=
kill -KILL "$NP" 2>/dev/null; NP=

# 2. Hot-plugged on a reconnecting chardev, started by the guest driver;
# then the backend is killed and started again.
start_null "$L/case2.null1.log"
run_qemu case2 -machine q35,accel=tcg -cpu max -smp 1 -m 512M \
    -object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \
    -chardev socket,id=c0,path=/tmp/null.sock,reconnect-ms=500 \
    -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1 \
    -kernel /tmp/vmlinuz -initrd /tmp/initrd.gz \
    -append "console=ttyS0 panic=-1 quiet vaccel_test=reconnect" \
    -display none -monitor none -no-reboot -serial stdio \
    -qmp unix:/tmp/qmp-null.sock,server=on,wait=off
wait_line() { # wait_line TEXT SECONDS
    for _ in $(seq $(($2 * 10))); do
        grep -q "^$1" "$L/case2.serial.log" && return 0
        kill -0 "$QP" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
step=""
if ! wait_line "VACCEL-HOST plug" 180; then
    step="the guest never asked for the device"
elif ! "$QMP" "$R/tmp/qmp-null.sock" device_add "{$DEV,\"id\":\"acc0\",\"bus\":\"rp1\"}" \
    >"$L/case2.qmp.log" 2>&1; then
    step="device_add failed: $(cat "$L/case2.qmp.log")"
elif ! wait_line "VACCEL-HOST started" 120; then
    step="the guest driver never started the device"
fi
if [ -n "$step" ]; then
    say "2. hot-plug: not reproduced: $step (see $L)"
else
    before=$(requests "$L/case2.null1.log")
    kill -KILL "$NP"
    NP=
    sleep 1
    start_null "$L/case2.null2.log"
    if qemu_exited 20; then
        st=$(cat "$L/case2.status")
        why=$(grep -m1 -E 'Assertion|aborted|core dumped' "$L/case2.qemu.log")
        say "2. hot-plugged, started by the driver (the backend acted on $before requests)," \
            "backend killed and started again: QEMU died (status $st): ${why:-see $L/case2.qemu.log};" \
            "the new backend acted on $(requests "$L/case2.null2.log") requests"
    else
        survived=1
        say "2. hot-plugged, backend killed and started again: QEMU SURVIVED (it did not in 11.1);" \
            "the new backend acted on $(requests "$L/case2.null2.log") requests"
        "$QMP" "$R/tmp/qmp-null.sock" quit >/dev/null 2>&1
    fi
fi
qemu_exited 10 || kill_qemu
QP=
kill -KILL "$NP" 2>/dev/null; NP=

if [ "$survived" = 1 ]; then
    say "!!! $ver took a backend restart case that QEMU 11.1 could not: the defect"
    say "!!! may be fixed; try vhost-device-accel's restart under this QEMU (README, Operations)."
else
    say "the defect is QEMU's (no backend can avoid it): reproduced with $ver"
fi
exit 0
