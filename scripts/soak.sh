#!/usr/bin/env bash
# Long randomized crash runs (tests/randomized_crash.rs): random seeds, one
# after another, until the time is up; prints one line per seed and a summary.
#
#   scripts/soak.sh                  # one hour, 350 steps per seed
#   scripts/soak.sh 8h 2000          # eight hours, 2000 steps per seed
#   WALSTREAM_CHECK_ALL=1 scripts/soak.sh 30m   # restore every txid of each window
#   WALSTREAM_RANDOM_S3=1 scripts/soak.sh 1h     # against S3 with store faults
#                                                # (needs WALSTREAM_TEST_S3_* set)
#
# A failing seed keeps its work directory (path in the log) and is listed at the
# end with the command that reproduces it. Logs go to target/soak/.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-1h}"
steps="${2:-350}"
case "$duration" in
    *h) secs=$((${duration%h} * 3600)) ;;
    *m) secs=$((${duration%m} * 60)) ;;
    *s) secs=${duration%s} ;;
    *) secs=$duration ;;
esac
# One build, then the test binary itself: later edits to the sources do not
# change what the soak runs.
bin="$(cargo test --locked --test randomized_crash --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "randomized_crash" and m.get("executable"):
        print(m["executable"])')"
[[ -x "$bin" ]] || { echo "soak.sh: could not build tests/randomized_crash.rs" >&2; exit 1; }
logs="target/soak"
mkdir -p "$logs"
end=$(($(date +%s) + secs))
runs=0
failed=()
while [[ $(date +%s) -lt $end ]]; do
    seed="0x$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
    log="$logs/seed-$seed.log"
    runs=$((runs + 1))
    if WALSTREAM_SEED="$seed" WALSTREAM_RANDOM_STEPS="$steps" \
        "$bin" env_seed --ignored --nocapture >"$log" 2>&1; then
        commits="$(grep -m1 -oE '[0-9]+ commits, [0-9]+ steps' "$log" || true)"
        waits="$(grep -m1 -oE 'write_lock_wait_ms: \([0-9, ]+\)' "$log" || true)"
        echo "ok     $seed  $commits  $waits"
        rm -f "$log"
    else
        echo "FAILED $seed  (log $log)"
        failed+=("$seed")
    fi
done
echo "soak: $runs seeds in $duration, ${#failed[@]} failed"
for seed in "${failed[@]}"; do
    echo "  reproduce: WALSTREAM_SEED=$seed WALSTREAM_RANDOM_STEPS=$steps cargo test --test randomized_crash env_seed -- --ignored --nocapture"
done
[[ ${#failed[@]} -eq 0 ]]
