#!/usr/bin/env bash
# Runs the fuzz targets with cargo-fuzz on the stable toolchain.
#
#   fuzz/run.sh ci            replay every committed corpus, then fuzz each
#                             target for FUZZ_SECONDS (default 30)
#   fuzz/run.sh TARGET [ARGS] fuzz one target; ARGS go to libFuzzer
#
# Limits make amplification a finding: a job's admitted working memory is
# at most 4 MiB in the snpu and device targets, so a single allocation
# above -malloc_limit_mb there means an op allocated what validation did
# not count.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=never

if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi

limits() {
    case "$1" in
        snpu) echo "-rss_limit_mb=2048 -malloc_limit_mb=16 -timeout=10" ;;
        *) echo "-rss_limit_mb=2048 -malloc_limit_mb=64 -timeout=10" ;;
    esac
}

# Runs cargo fuzz with its output in a log; prints the summary, or the
# whole end of the log when libFuzzer found something.
fuzz() {
    local log
    log=$(mktemp)
    if cargo fuzz run "$@" >"$log" 2>&1; then
        grep -E '^(#[0-9]+ +DONE|Done )' "$log" || tail -n 2 "$log"
        rm -f "$log"
    else
        tail -n 60 "$log"
        echo "fuzz: FAILED: cargo fuzz run $*"
        exit 1
    fi
}

if [ "${1:-ci}" = ci ]; then
    cargo fuzz build
    # The seed generator is built by no target: keep it compiling.
    cargo check -q --examples
    for t in decode snpu device ring state onnx uapi; do
        echo "fuzz: $t: replaying corpus/$t ($(find "corpus/$t" -type f | wc -l) inputs)"
        # shellcheck disable=SC2046
        fuzz "$t" "corpus/$t" -- -runs=0 $(limits "$t")
        work=$(mktemp -d)
        echo "fuzz: $t: ${FUZZ_SECONDS:-30} s"
        # shellcheck disable=SC2046
        fuzz "$t" "$work" "corpus/$t" -- -max_total_time="${FUZZ_SECONDS:-30}" $(limits "$t")
        rm -rf "$work"
    done
else
    t=$1
    shift
    # shellcheck disable=SC2046
    cargo fuzz run "$t" "corpus/$t" -- $(limits "$t") "$@"
fi
