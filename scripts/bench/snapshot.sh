#!/usr/bin/env bash
# What a snapshot costs the application: commit latency of a writer while
# `walstream snapshot` runs through a running `walstream replicate`, and the
# replicator's peak RSS, for a database of SIZE_MB (default 200) of
# incompressible rows, local directory replica.
#
#   scripts/bench/snapshot.sh            # 200 MB
#   scripts/bench/snapshot.sh 1000       # 1 GB
#
# Prints a markdown table on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mb="${1:-200}"
cargo build --release --bin walstream >&2
bin="$PWD/target/release/walstream"
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
db="$work/app.db"
python3 - "$db" "$size_mb" <<'PY'
import sqlite3, sys
db, mb = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, v BLOB)")
c.execute("CREATE TABLE small(id INTEGER PRIMARY KEY, v TEXT)")
for i in range(mb * 10):
    c.execute("INSERT INTO blobs(v) VALUES (randomblob(100000))")
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
PY
echo "snapshot.sh: database of $(du -m "$db" | cut -f1) MB ready" >&2
WALSTREAM_LOG=warn "$bin" replicate "$db" "$work/replica" 2>"$work/replicate.log" &
pid=$!
# Start-up is over once the first snapshot is listed; the control socket opens then.
until "$bin" list --json "$work/replica" 2>/dev/null | grep -q '"snapshots": \[$'; do sleep 0.2; done
sleep 1
python3 - "$db" "$bin" "$work/replica" <<'PY'
import sqlite3, subprocess, sys, threading, time
db, bin, replica = sys.argv[1:4]
c = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
c.execute("PRAGMA busy_timeout=10000")
lat, phase, stop = {"before": [], "during": [], "after": []}, ["before"], [False]
def writer():
    while not stop[0]:
        t = time.perf_counter()
        c.execute("INSERT INTO small(v) VALUES ('x')")
        lat[phase[0]].append(time.perf_counter() - t)
        time.sleep(0.001)
th = threading.Thread(target=writer); th.start()
time.sleep(3)
phase[0] = "during"
t = time.perf_counter()
subprocess.run([bin, "snapshot", db, replica], check=True, capture_output=True)
took = time.perf_counter() - t
phase[0] = "after"
time.sleep(3)
stop[0] = True; th.join()
def q(v, p): v = sorted(v); return v[min(len(v) - 1, int(p * len(v)))] * 1000
print(f"snapshot took {took:.2f} s", file=sys.stderr)
print("| phase | commits | p50 ms | p99 ms | max ms |")
print("|---|---|---|---|---|")
for k in ("before", "during", "after"):
    v = lat[k]
    print(f"| {k} | {len(v)} | {q(v, .5):.3f} | {q(v, .99):.3f} | {max(v) * 1000:.3f} |")
print(f"\nsnapshot wall time: {took:.2f} s")
PY
echo "replicator peak RSS: $(grep VmHWM /proc/$pid/status | awk '{print $2 / 1024 " MB"}')"
kill -TERM "$pid"; wait "$pid" || true
