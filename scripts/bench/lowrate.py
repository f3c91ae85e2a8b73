#!/usr/bin/env python3
"""walstream's CPU at a steady, low commit rate (docs/benchmarks.md).

    scripts/bench/lowrate.py [UPLOAD_INTERVAL] [COMMITS_PER_S] [SECONDS]

Defaults: 1s, 200, 20. Replicates a fresh database in /tmp to a new local
directory with $WALSTREAM (default target/release/walstream) and
`upload_interval = UPLOAD_INTERVAL`, waits for the first segment, then
commits one 40-byte row per transaction at COMMITS_PER_S for SECONDS and
prints one JSON line: walstream's CPU seconds over that time plus 1.2 s,
its share of one core, CPU microseconds and context switches (all threads)
per commit. REP_PARENT=DIR puts the replica under DIR (e.g. /dev/shm, to
leave the file system's costs out). PERF=FILE runs walstream under
`perf record -g` instead (the CPU columns then read 0); PERF_G replaces
`-g`, e.g. PERF_G="--call-graph dwarf,16384" for whole stacks.
"""
import json, os, shutil, signal, sqlite3, subprocess, sys, tempfile, time

interval = sys.argv[1] if len(sys.argv) > 1 else "1s"
rate = float(sys.argv[2]) if len(sys.argv) > 2 else 200
secs = float(sys.argv[3]) if len(sys.argv) > 3 else 20
here = os.path.dirname(os.path.abspath(__file__))
wal = os.environ.get("WALSTREAM", os.path.join(here, "../../target/release/walstream"))
work = tempfile.mkdtemp(prefix="lowrate-", dir="/tmp")
rep_parent = tempfile.mkdtemp(prefix="lowrate-rep-", dir=os.environ.get("REP_PARENT", work))
db, rep = os.path.join(work, "app.db"), os.path.join(rep_parent, "rep")
app = sqlite3.connect(db, isolation_level=None)
app.execute("PRAGMA journal_mode=WAL")
app.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
app.execute("INSERT INTO t(v) VALUES (randomblob(40))")
cfg = os.path.join(work, "walstream.toml")
with open(cfg, "w") as f:
    f.write(f'upload_interval = "{interval}"\n[[db]]\npath = "{db}"\n[[db.replica]]\nurl = "file://{rep}"\n')
cmd = [wal, "replicate", "--config", cfg]
perf = os.environ.get("PERF")
if perf:
    cmd = ["perf", "record", "-e", "cpu-clock", "-F", "4999", *os.environ.get("PERF_G", "-g").split(), "-o", perf, "--"] + cmd
proc = subprocess.Popen(cmd, stderr=open(os.path.join(work, "log"), "w"))
while not (os.path.isdir(rep + "/segments") and os.listdir(rep + "/segments")):
    app.execute("INSERT INTO t(v) VALUES (randomblob(40))")
    time.sleep(0.05)
time.sleep(1.5)


def cpu():
    f = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def switches():
    n = 0
    for t in os.listdir(f"/proc/{proc.pid}/task"):
        for line in open(f"/proc/{proc.pid}/task/{t}/status"):
            if "ctxt_switches" in line:
                n += int(line.split()[1])
    return n


cpu0, sw0, t0, n = cpu(), switches(), time.monotonic(), 0
while t0 + n / rate <= t0 + secs:
    wait = t0 + n / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    app.execute("INSERT INTO t(v) VALUES (randomblob(40))")
    n += 1
time.sleep(1.2)
used, sw = cpu() - cpu0, switches() - sw0
proc.send_signal(signal.SIGINT if perf else signal.SIGTERM)
proc.wait()
print(json.dumps({"upload_interval": interval, "rate": rate, "commits": n, "cpu_s": round(used, 3),
                  "core_pct": round(100 * used / (secs + 1.2), 2), "us_per_commit": round(1e6 * used / n, 1),
                  "switches_per_commit": round(sw / n, 2)}))
shutil.rmtree(work, ignore_errors=True)
shutil.rmtree(rep_parent, ignore_errors=True)
