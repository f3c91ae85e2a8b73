#!/usr/bin/env bash
# Memory of one `walstream replicate --config` process replicating N idle
# databases, each to its own local directory replica: RSS once every first
# snapshot is stored and the process has idled, its peak RSS, threads and open
# file descriptors.
#
#   scripts/bench/many_dbs.sh              # N = 1, 10, 100
#   scripts/bench/many_dbs.sh 1 50 200     # other counts
#   REPLICAS=2 scripts/bench/many_dbs.sh   # each database to two directories
#
# BIN=path/to/walstream uses that binary instead of building a release one.
# Prints a markdown table on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1 10 100)
replicas="${REPLICAS:-1}"
if [ -n "${BIN:-}" ]; then
    bin="$BIN"
else
    cargo build --release --bin walstream >&2
    bin="$PWD/target/release/walstream"
fi
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

# N databases of a few pages each, in WAL mode, and the config naming them.
make_dbs() {
    local n="$1" dir="$2"
    mkdir -p "$dir"
    python3 - "$n" "$dir" "$replicas" <<'PY'
import sqlite3, sys
n, d, r = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with open(f"{d}/walstream.toml", "w") as cfg:
    for i in range(n):
        c = sqlite3.connect(f"{d}/db{i}.db", isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        c.execute("INSERT INTO t(v) VALUES ('hello')")
        c.close()
        cfg.write(f'[[db]]\npath = "{d}/db{i}.db"\n')
        for j in range(r):
            cfg.write(f'[[db.replica]]\nname = "r{j}"\nurl = "{d}/replica{i}-{j}"\n')
PY
}

status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

echo "| databases ($replicas replica(s) each) | RSS idle | peak RSS | threads | open fds |"
echo "|---:|---:|---:|---:|---:|"
for n in "${counts[@]}"; do
    dir="$work/n$n"
    make_dbs "$n" "$dir"
    WALSTREAM_LOG=warn "$bin" replicate --config "$dir/walstream.toml" 2>"$dir/replicate.log" &
    pid=$!
    # Start-up is over once every replica holds its first snapshot.
    until [ "$(find "$dir" -path '*/snapshots/*.wsnap' | wc -l)" -ge "$((n * replicas))" ]; do
        kill -0 "$pid" || { cat "$dir/replicate.log" >&2; exit 1; }
        sleep 0.2
    done
    sleep 5
    rss=$(status_kb "$pid" VmRSS)
    hwm=$(status_kb "$pid" VmHWM)
    threads=$(status_kb "$pid" Threads)
    fds=$(find "/proc/$pid/fd" -mindepth 1 | wc -l)
    awk -v n="$n" -v r="$rss" -v h="$hwm" -v t="$threads" -v f="$fds" \
        'BEGIN { printf "| %d | %.1f MB | %.1f MB | %d | %d |\n", n, r / 1024, h / 1024, t, f }'
    kill -TERM "$pid"
    wait "$pid" || true
    echo "many_dbs.sh: $n done" >&2
done
