#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), one after another (the machine's
# cores are shared), starting from the committed seeds. Findings land in artifacts/<target>/.
# Usage: fuzz/run-all.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  echo "=== $t: ${seconds}s ($(date -u +%H:%M:%S))"
  start=$(date +%s)
  status=0
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -max_len=65536 -timeout=10 -print_final_stats=1 >"run-$t.log" 2>&1 || status=$?
  grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)|^Done' "run-$t.log" || true
  echo "=== $t: exit $status after $(( $(date +%s) - start ))s"
done
