#!/usr/bin/env bash
# The real end-to-end test: two Linux guests under QEMU 11.1 (TCG), each with
# the virtio-accel kernel driver, attached at the same time to one
# vhost-device-accel daemon on the software NPU. Each guest runs accel-info,
# accel-run (workloads checked against a CPU reference), SqueezeNet through
# `accel-run --model` against ONNX Runtime's output (model.sh), and libdrm's
# drmGetVersion(), reloads the driver, then removes the device under running
# jobs and unloads the driver. Five more guests, each on its own daemon:
# one whose jobs hang (their contexts are reported lost, others' files go
# on) and whose NPU fails as a whole (the driver resets the device itself);
# one running hostile userspace (vaccel-test hostile) against a daemon with
# small limits; one whose daemon fails jobs and is stopped, continued and
# killed when the guest asks on its console (vaccel-test lifecycle); one
# whose jobs take a second each, stopped and continued by QEMU's monitor
# (QMP) under running jobs, then unbound and removed under a running job
# with a canary buffer (pause); one that runs vhost-device-accel --driver
# accel on its own node and serves two VMs nested in it with the harness
# (passthrough: accel-passthrough). PASS only if every check passed in every
# guest. qemu-reconnect.sh then shows, for information, that QEMU cannot
# take a backend restart.
#
# VACCEL_DRIVER_DIR builds the kernel module from another tree (its driver/
# and include/), e.g. an older version, to see the checks fail.
# VACCEL_DAEMON runs another vhost-device-accel binary (an older build, to
# see the checks fail). VACCEL_VM_ONLY="NAME..." boots only these guests
# (side, hang, hostile, lifecycle, pause, reconnect, passthrough). VACCEL_PAUSE_ROUNDS
# sets how often the pause guest is stopped and continued (default 3).
#
# Needs root on Debian (bookworm or later) with a Rust toolchain. Downloads
# and the prepared root are cached outside the repository (prepare.sh).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
CACHE=${VACCEL_VM_CACHE:-/var/tmp/virtio-accel-vm}
VMS=${VACCEL_VMS:-2}
TIMEOUT=${VACCEL_VM_TIMEOUT:-300}
DRV=${VACCEL_DRIVER_DIR:-$TOP/guest-shim/linux}
BIN=${VACCEL_DAEMON:-$TOP/target/release/vhost-device-accel}
ONLY=${VACCEL_VM_ONLY:-side hang hostile lifecycle pause reconnect passthrough}
ROUNDS=${VACCEL_PAUSE_ROUNDS:-3}
QMP=$TOP/target/release/vaccel-qmp
R=$CACHE/root
log() { echo "vm-e2e: $*" >&2; }
want() { [[ " $ONLY " == *" $1 "* ]]; }
t0=$(date +%s)

"$HERE/prepare.sh"
KVER=$(cat "$CACHE/kver")
K=$CACHE/kernel-$KVER

mount -t proc proc "$R/proc" 2>/dev/null || true
cleanup() {
    for d in ${DAEMON:-} ${HANG_DAEMON:-} ${HOSTILE_DAEMON:-} ${LIFE_DAEMON:-} ${PAUSE_DAEMON:-} \
        ${PASS_DAEMON:-}; do
        kill -CONT "$d" 2>/dev/null || true
        kill "$d" 2>/dev/null || true
    done
    umount "$R/proc" 2>/dev/null || true
}
trap cleanup EXIT
# A command that fails under set -e says where, before the script exits.
set -E
trap 'log "failed (status $?) at line $LINENO: $BASH_COMMAND"' ERR

# The module must build, without warnings, against every kernel series we
# support (Debian trixie's 6.12 and trixie-backports' 7.x); the guest boots
# the newest.
for h in "$R"/usr/src/linux-headers-*-amd64; do
    v=${h##*/linux-headers-}
    [ "$v" = "$KVER" ] && continue
    log "building the kernel module against $v (build only)"
    rm -rf "$R/build/vaccel-$v" && mkdir -p "$R/build/vaccel-$v"
    cp -r "$DRV/driver" "$DRV/include" "$R/build/vaccel-$v/"
    chroot "$R" make -s -C "/usr/src/linux-headers-$v" M="/build/vaccel-$v/driver" KCFLAGS=-Werror modules
done
log "building the kernel module against $KVER"
B=$R/build/vaccel
rm -rf "$B" && mkdir -p "$B"
cp -r "$DRV/driver" "$DRV/include" "$B/"
cp -r "$HERE/drm-version.c" "$HERE/guest-test" "$B/"
mkdir -p "$B/uapi" && cp -r "$TOP/guest-shim/linux/include/uapi/drm" "$B/uapi/"
chroot "$R" make -s -C "/usr/src/linux-headers-$KVER" M=/build/vaccel/driver KCFLAGS=-Werror modules
chroot "$R" gcc -O2 -Wall -Werror -I/usr/include/libdrm -o /build/vaccel/drm-version \
    /build/vaccel/drm-version.c -ldrm
chroot "$R" sh -c 'gcc -O2 -Wall -Wextra -Wno-unused-parameter -Werror -static -pthread \
    -I/build/vaccel/uapi -I/usr/include/drm -o /build/vaccel/vaccel-test /build/vaccel/guest-test/*.c'

# Kernel style: checkpatch --strict may say only what checkpatch.expected
# lists (README says why each remains).
if [ -z "${VACCEL_DRIVER_DIR:-}" ] && [ -e "$CACHE/checkpatch/.ready" ]; then
    log "checkpatch --strict on the driver"
    got=$(cd "$DRV" && perl "$CACHE/checkpatch/checkpatch.pl" --strict --no-tree --terse -f \
        driver/*.c driver/*.h include/uapi/drm/virtio_accel_drm.h |
        grep -E ': (ERROR|WARNING|CHECK):' | sed 's/:[0-9]*: /: /' | sort || true)
    if [ "$got" != "$(sort "$HERE/checkpatch.expected")" ]; then
        log "checkpatch findings differ from checkpatch.expected:"
        diff <(sort "$HERE/checkpatch.expected") <(echo "$got") >&2 || true
        exit 1
    fi
fi

log "building the daemon, the test tools and the static guest tools"
(cd "$TOP" && cargo build -q --release -p vhost-device-accel)
(cd "$TOP" && cargo build -q --release -p virtio-accel-integration --bin vaccel-qmp \
    --bin vhost-user-null)
(cd "$TOP" && RUSTFLAGS='-C target-feature=+crt-static' cargo build -q --release \
    --target x86_64-unknown-linux-gnu -p virtio-accel-guest --bins)
(cd "$TOP" && RUSTFLAGS='-C target-feature=+crt-static' cargo build -q --release \
    --target x86_64-unknown-linux-gnu -p virtio-accel-integration --bin accel-forward-check \
    --bin accel-passthrough)
# The daemon itself, for the passthrough guest (it serves VMs nested in it).
(cd "$TOP" && RUSTFLAGS='-C target-feature=+crt-static' cargo build -q --release \
    --target x86_64-unknown-linux-gnu -p vhost-device-accel)

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
for t in accel-info accel-run accel-forward-check accel-passthrough vhost-device-accel; do
    cp "$TOP/target/x86_64-unknown-linux-gnu/release/$t" "$I/bin/"
done
cp "$B/drm-version" "$B/vaccel-test" "$I/bin/"
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

log "starting vhost-device-accel ($BIN) with $VMS sockets, and one daemon for each other guest"
socks=()
for i in $(seq 0 $((VMS - 1))); do
    rm -f "$R/tmp/accel$i.sock"
    socks+=("$R/tmp/accel$i.sock")
done
sock_args=()
for s in "${socks[@]}"; do sock_args+=(--socket-path "$s"); done
"$BIN" "${sock_args[@]}" --log-level info >"$CACHE/daemon.log" 2>&1 &
DAEMON=$!
rm -f "$R/tmp/accel-hang.sock"
# Jobs 1 and 2 hang (a 300 ms job timeout loses their contexts); at jobs
# 4, 60 and 150 the NPU fails as a whole.
echo "job_timeout_ms = 300" >"$CACHE/hang.toml"
"$BIN" --socket-path "$R/tmp/accel-hang.sock" --hang-jobs 1,2 --device-error-jobs 4,60,150 \
    --config "$CACHE/hang.toml" >"$CACHE/daemon-hang.log" 2>&1 &
HANG_DAEMON=$!
# Small limits for hostile userspace: 4 jobs in flight, 64 buffers, and
# enough bytes for a 256 MiB buffer; 5 ms per job so jobs pile up.
rm -f "$R/tmp/accel-hostile.sock" "$R/tmp/accel-life.sock" "$R/tmp/accel-pause.sock"
printf '[limits]\nmax_jobs_in_flight = 4\nmax_bos = 64\nmax_total_bo_bytes = 402653184\n' \
    >"$CACHE/hostile.toml"
"$BIN" --socket-path "$R/tmp/accel-hostile.sock" \
    --config "$CACHE/hostile.toml" --latency-us 5000 >"$CACHE/daemon-hostile.log" 2>&1 &
HOSTILE_DAEMON=$!
# Fails jobs 1 and 2; quotas the lifecycle guest fills to prove nothing leaked.
printf '[limits]\nmax_contexts = 16\nmax_bos = 32\n' >"$CACHE/life.toml"
"$BIN" --socket-path "$R/tmp/accel-life.sock" \
    --config "$CACHE/life.toml" --fail-jobs 1,2 >"$CACHE/daemon-life.log" 2>&1 &
LIFE_DAEMON=$!
# Every job takes a second, so that a VM stop and a removal land on running
# jobs; metrics on a loopback port of its choosing.
"$BIN" --vm socket="$R/tmp/accel-pause.sock",name=pause --latency-us 1000000 \
    --metrics-addr 127.0.0.1:0 >"$CACHE/daemon-pause.log" 2>&1 &
PAUSE_DAEMON=$!
# The passthrough guest's daemon: the 10th job it sees hangs (the guest's
# check runs 9 before it) and is lost after a second.
rm -f "$R/tmp/accel-pass.sock"
echo "job_timeout_ms = 1000" >"$CACHE/pass.toml"
"$BIN" --socket-path "$R/tmp/accel-pass.sock" --hang-jobs 10 --config "$CACHE/pass.toml" \
    >"$CACHE/daemon-pass.log" 2>&1 &
PASS_DAEMON=$!
for s in "${socks[@]}" "$R/tmp/accel-hang.sock" "$R/tmp/accel-hostile.sock" \
    "$R/tmp/accel-life.sock" "$R/tmp/accel-pause.sock" "$R/tmp/accel-pass.sock"; do
    for _ in $(seq 200); do [ -S "$s" ] && break; sleep 0.05; done
done
PAUSE_PORT=$(sed -n 's|.*metrics on http://127.0.0.1:\([0-9]*\)/metrics.*|\1|p' "$CACHE/daemon-pause.log")

boot() { # boot NAME SOCKET CMDLINE-EXTRA [MEMORY [QEMU-ARGS...]]
    local name=$1 sock=$2 append=$3 mem=${4:-512M}
    shift $(($# < 4 ? $# : 4))
    timeout "$TIMEOUT" chroot "$R" qemu-system-x86_64 -machine q35,accel=tcg -cpu max -smp 1 -m "$mem" \
        -object memory-backend-memfd,id=mem,size="$mem",share=on -machine memory-backend=mem \
        -chardev socket,id=c0,path="$sock" \
        -device vhost-user-test-device-pci,chardev=c0,virtio-id=39,num_vqs=3,config_size=72 \
        -kernel /tmp/vmlinuz -initrd /tmp/initrd.gz -append "console=ttyS0 panic=-1 quiet $append" \
        -display none -serial stdio -monitor none -no-reboot "$@" </dev/null >"$CACHE/$name.log" 2>&1
}
# Acts on what the lifecycle guest asks on its console: VACCEL-HOST
# stop|cont|kill (SIGSTOP, SIGCONT, SIGKILL its daemon), while $2 runs.
host_agent() { # host_agent LOG PID
    local seen=0 n cmd
    while kill -0 "$2" 2>/dev/null; do
        n=$(grep -c '^VACCEL-HOST ' "$1" 2>/dev/null || true)
        while [ "$seen" -lt "${n:-0}" ]; do
            seen=$((seen + 1))
            cmd=$(grep '^VACCEL-HOST ' "$1" | sed -n "${seen}p" | tr -d '\r' | awk '{print $2}')
            case $cmd in
                stop) kill -STOP "$LIFE_DAEMON" ;;
                cont) kill -CONT "$LIFE_DAEMON" ;;
                kill) kill -KILL "$LIFE_DAEMON" ;;
            esac
            log "lifecycle guest: $cmd the daemon"
        done
        sleep 0.1
    done
}

# The pause daemon's counters: "depth busy jobs device-seconds engine-seconds"
# (jobs in flight, engines running a job, jobs answered, NPU time).
pause_metrics() {
    local text
    text=$(exec 3<>"/dev/tcp/127.0.0.1/$PAUSE_PORT" &&
        printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3) 2>/dev/null || return 1
    awk '/^vaccel_queue_depth\{vm="pause"\} / {d = $2}
         /^vaccel_engines_busy / {b = $2}
         /^vaccel_jobs_total\{vm="pause",/ {j += $2}
         /^vaccel_device_seconds_total\{vm="pause"\} / {s = $2}
         /^vaccel_engine_busy_seconds_total / {e = $2}
         END {printf "%d %d %d %s %s\n", d, b, j, s, e}' <<<"$text"
}
# Stops and continues the pause guest's VM over QMP each time it prints
# VACCEL-HOST pause, once the pipeline's jobs are in flight (4 or more) and
# one is on the NPU; checks that jobs stayed in flight across the stop and
# that nothing ran while the VM was stopped. Writes CHECK pause-stopped to
# $1.host.
pause_agent() { # pause_agent LOG PID
    local seen=0 n ok=1 m0 m1 m2 d b t0 t1
    while kill -0 "$2" 2>/dev/null; do
        n=$(grep -c '^VACCEL-HOST pause' "$1" 2>/dev/null || true)
        while [ "$seen" -lt "${n:-0}" ]; do
            seen=$((seen + 1))
            for _ in $(seq 400); do
                m0=$(pause_metrics) || m0="0 0"
                read -r d b _ <<<"$m0"
                [ "$d" -ge 4 ] && [ "$b" -ge 1 ] && break
                sleep 0.05
            done
            t0=$(date +%s%N)
            "$QMP" "$R/tmp/qmp-pause.sock" stop >/dev/null || ok=0
            t1=$(date +%s%N)
            m1=$(pause_metrics) || ok=0
            sleep 1.5
            m2=$(pause_metrics) || ok=0
            "$QMP" "$R/tmp/qmp-pause.sock" cont >/dev/null || ok=0
            read -r d b _ <<<"$m0"
            { [ "$d" -ge 4 ] && [ "$b" -ge 1 ]; } || ok=0
            read -r d _ <<<"$m1"
            [ "$d" -ge 1 ] || ok=0
            [ "$(cut -d' ' -f3- <<<"$m1")" = "$(cut -d' ' -f3- <<<"$m2")" ] || ok=0
            echo "  stop $seen: before [$m0], the stop took $(((t1 - t0) / 1000000)) ms," \
                "stopped [$m1], 1.5 s later [$m2] (depth busy jobs device engine)" >>"$1.host"
            log "pause guest: stopped and continued the VM ($seen)"
        done
        sleep 0.1
    done
    [ "$seen" -ge "$ROUNDS" ] || ok=0
    echo "CHECK pause-stopped $([ "$ok" = 1 ] && echo PASS || echo FAIL)" >>"$1.host"
}

# Phase 1: the two guests side by side, the hang guest, and QEMU's backend
# restart (informational).
pids=()
if want side; then
    log "booting $VMS guests side by side"
    for i in $(seq 0 $((VMS - 1))); do
        boot "guest$i" "/tmp/accel$i.sock" "" &
        pids+=($!)
    done
fi
if want hang; then
    log "booting the hang guest"
    boot guest-hang /tmp/accel-hang.sock vaccel_test=hang &
    pids+=($!)
fi
if want reconnect; then
    log "showing what QEMU does when a backend restarts (informational)"
    "$HERE/qemu-reconnect.sh" >"$CACHE/qemu-reconnect.log" 2>&1 &
    pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p" || true; done
kill "$HANG_DAEMON" 2>/dev/null || true

# Phase 2: the hostile, lifecycle and pause guests.
pids=()
if want hostile; then
    log "booting the hostile guest"
    boot guest-hostile /tmp/accel-hostile.sock vaccel_test=hostile 1G &
    pids+=($!)
fi
if want pause; then
    log "booting the pause guest"
    rm -f "$CACHE/guest-pause.log.host" "$R/tmp/qmp-pause.sock"
    boot guest-pause /tmp/accel-pause.sock "vaccel_test=pause vaccel_rounds=$ROUNDS" 512M \
        -qmp unix:/tmp/qmp-pause.sock,server=on,wait=off &
    pp=$!
    pids+=($pp)
    if [ "$ROUNDS" -gt 0 ]; then
        pause_agent "$CACHE/guest-pause.log" "$pp" &
        pids+=($!)
    fi
fi
if want lifecycle; then
    log "booting the lifecycle guest"
    boot guest-lifecycle /tmp/accel-life.sock vaccel_test=lifecycle &
    lp=$!
    host_agent "$CACHE/guest-lifecycle.log" "$lp"
fi
for p in "${pids[@]}"; do wait "$p" || true; done

# Phase 3: the accel backend nested: the passthrough guest serves VMs of
# its own from its node (alone: it runs a daemon and two harness VMs on one
# vCPU).
if want passthrough; then
    log "booting the passthrough guest"
    boot guest-passthrough /tmp/accel-pass.sock vaccel_test=passthrough 1G || true
fi
kill "$PASS_DAEMON" 2>/dev/null || true

fail=0
# The guest's log and the host's checks of it (a .host file only some
# guests have), read once: under pipefail, neither a missing file nor a
# writer cut short by `grep -q` may decide the verdict.
verdict() { # verdict NAME EXPECTED-PASSES
    g=$CACHE/$1.log
    local all n_pass
    all=$(cat "$g" "$g.host" 2>/dev/null | tr -d '\r' || true)
    echo "--- $1"
    grep -E '^(CHECK|  |accel-run:|accel-info:|accel-forward-check:|passthrough:|libdrm|npu:|driver:|inflight:|pipeline:)' \
        <<<"$all" || true
    n_pass=$(grep -c '^CHECK .* PASS' <<<"$all" || true)
    if grep -q '^CHECK .* FAIL' <<<"$all" || [ "$n_pass" -lt "$2" ] ||
        ! grep -q E2E-DONE <<<"$all"; then
        fail=1
        echo "--- $1: last lines"
        tail -40 "$g"
    fi
}
if want side; then for i in $(seq 0 $((VMS - 1))); do verdict "guest$i" 10; done; fi
if want hang; then verdict guest-hang 8; fi
if want hostile; then verdict guest-hostile 19; fi
if want lifecycle; then verdict guest-lifecycle 9; fi
if want passthrough; then verdict guest-passthrough 3; fi
if want pause; then verdict guest-pause $((ROUNDS > 0 ? 8 : 6)); fi
if want reconnect; then
    echo "--- QEMU and a backend restart (informational, not a check)"
    cat "$CACHE/qemu-reconnect.log"
fi
echo "--- daemon"
tail -5 "$CACHE/daemon.log"
secs=$(($(date +%s) - t0))
if [ "$fail" = 0 ]; then
    echo "E2E-RESULT: PASS (guests: $ONLY; ${secs}s)"
else
    echo "E2E-RESULT: FAIL (${secs}s)"
    exit 1
fi
