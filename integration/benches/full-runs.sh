#!/usr/bin/env bash
# The full benchmark runs the README quotes: each benchmark run three
# times back to back, each run's JSON (figures, per-round data, machine,
# commit) kept under integration/benches/results/, and the README's
# tables regenerated from those files.
#
#   bash integration/benches/full-runs.sh          # about 15 minutes
#   RUNS=1 BENCHES=accel bash integration/benches/full-runs.sh
#
# Run it on a quiet machine: the figures are paired against baselines
# measured in the same rounds, but a machine busy with other work makes
# every figure noisy. Commit first, so that the runs name the commit
# they measured.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Absolute: cargo runs benchmarks from the package folder.
out="$(pwd)/integration/benches/results"
runs=${RUNS:-3}
benches=${BENCHES:-accel sharing models}
mkdir -p "$out"

cargo bench -q -p virtio-accel-integration --no-run
for b in $benches; do
    files=()
    for i in $(seq 1 "$runs"); do
        echo "== $b, run $i of $runs"
        cargo bench -q -p virtio-accel-integration --bench "$b" -- --json "$out/$b-$i.json"
        files+=("$out/$b-$i.json")
    done
    cargo bench -q -p virtio-accel-integration --bench "$b" -- --table "${files[@]}" >"$out/$b.md"
    # The README holds the table between <!-- bench:NAME --> and
    # <!-- /bench:NAME -->.
    python3 - "$b" "$out/$b.md" <<'EOF'
import re, sys
name, table = sys.argv[1], open(sys.argv[2]).read()
readme = open("README.md").read()
start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
pat = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
if not pat.search(readme):
    sys.exit(f"README.md has no {start} … {end} block")
readme = pat.sub(lambda _: f"{start}\n{table}{end}", readme)
open("README.md", "w").write(readme)
EOF
    echo "== $b: $out/$b.md, README table updated"
done
