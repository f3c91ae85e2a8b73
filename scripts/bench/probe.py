#!/usr/bin/env python3
"""walstream alone, for profiling the capture engine (docs/benchmarks.md).

    scripts/bench/probe.py throughput|ingest|none [NORMAL|FULL]

Replicates a fresh database in /tmp to a local directory with
$WALSTREAM (default target/release/walstream, logging at debug) while this
process commits one 40-byte row per transaction for 10 s (throughput), 2000
rows of 100 kB random bytes (ingest), or the same 10 s without a replicator
(none). Prints one JSON line: commits/s, the application's CPU share,
walstream's CPU seconds and peak RSS, segments and commits per segment
(from the "segment shipped" debug lines) and checkpoints. With PERF=FILE,
walstream runs under `perf record -e cpu-clock --call-graph dwarf` instead
(CPU and RSS are then not read). WALSTREAM_TOML adds global config keys,
e.g. WALSTREAM_TOML='checkpoint_pages = 500'. APP_AUTOCHECKPOINT=N sets
the application connection's `PRAGMA wal_autocheckpoint` (SQLite's default
is 1000 pages; 0 turns it off). PROBE_REPLICA_PARENT=DIR puts the replica
in a new directory under DIR instead of beside the database (e.g. /dev/shm,
to take the replica's writes off the application's disk). PROBE_SIDE=MODE
starts scripts/bench/side.py MODE beside the application for the whole run
(one piece of a replicator's work alone, e.g. `PROBE_SIDE=inotify probe.py
none NORMAL`; the modes are listed there). PROBE_LATENCY=1 times every
commit of throughput/none and adds its median, p99, p99.9 and maximum
(lat_ms) and the commits of 1 ms or more (over_1ms, over_1ms_s: their count
and time). app_run_delay_us is how long the application waited on a run
queue per commit (runnable but not running, /proc/self/schedstat). The
output also sums how long walstream held the application's writers
(held_ms, from the checkpoint debug lines). PROBE_LOG sets walstream's
WALSTREAM_LOG (default walstream=debug; the segment, checkpoint and held_ms
figures need it).
"""
import os, sys, time, sqlite3, subprocess, shutil, tempfile, signal, re, json
mode = sys.argv[1]          # throughput | ingest | none
sync = sys.argv[2] if len(sys.argv) > 2 else "NORMAL"
wal = os.environ.get("WALSTREAM", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../target/release/walstream"))
perf = os.environ.get("PERF")  # perf output file
work = tempfile.mkdtemp(prefix="capperf-", dir="/tmp")
db = os.path.join(work, "app.db")
# PROBE_REPLICA_PARENT: put the replica on another file system (e.g. /dev/shm).
rep = os.path.join(tempfile.mkdtemp(prefix="capperf-rep-", dir=os.environ.get("PROBE_REPLICA_PARENT", work)), "rep")
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, seq INTEGER, ts INTEGER, v BLOB)")
c.execute("INSERT INTO t(seq, ts, v) VALUES (0, 0, randomblob(40))")
c.close()
env = dict(os.environ, WALSTREAM_LOG=os.environ.get("PROBE_LOG", "walstream=debug"))
proc = None
side = None
if os.environ.get("PROBE_SIDE"):
    side = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "side.py"), os.environ["PROBE_SIDE"], db])
if mode != "none":
    cmd = [wal, "replicate", db, rep]
    extra = os.environ.get("WALSTREAM_TOML", "")  # e.g. 'checkpoint_pages = 500'
    if extra:
        cfg = os.path.join(work, "walstream.toml")
        with open(cfg, "w") as f:
            f.write(f'{extra}\n[[db]]\npath = "{db}"\n[[db.replica]]\nurl = "file://{rep}"\n')
        cmd = [wal, "replicate", "--config", cfg]
    if perf:
        cmd = ["perf", "record", "-e", "cpu-clock", "--call-graph", "dwarf,16384", "-F", "999", "-o", perf, "--"] + cmd
    log = open(os.path.join(work, "log"), "w")
    proc = subprocess.Popen(cmd, stderr=log, env=env)
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL"); conn.execute(f"PRAGMA synchronous={sync}"); conn.execute("PRAGMA busy_timeout=10000")
if os.environ.get("APP_AUTOCHECKPOINT"):
    conn.execute(f"PRAGMA wal_autocheckpoint={int(os.environ['APP_AUTOCHECKPOINT'])}")
if proc:
    while not (os.path.isdir(rep + "/segments") and os.listdir(rep + "/segments")):
        conn.execute("INSERT INTO t(seq, ts, v) VALUES (-1, 0, randomblob(40))"); time.sleep(0.05)
    time.sleep(1.5)
pid = proc.pid if proc and not perf else None
def cpu():
    if not pid: return 0
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def hwm():
    if not pid: return 0
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmHWM"): return int(l.split()[1]) / 1024
def shipped_lines():
    if not proc: return []
    return [l for l in open(os.path.join(work, "log")) if "segment shipped" in l]
n0 = len(shipped_lines())
def run_delay():  # ns this process waited on a run queue (/proc/self/schedstat)
    return int(open("/proc/self/schedstat").read().split()[1])
cpu0 = cpu(); lat = []; t0 = time.perf_counter(); n = 0; app_cpu0 = time.process_time(); delay0 = run_delay()
if mode in ("throughput", "none"):
    end = t0 + 10
    timed, pc = bool(os.environ.get("PROBE_LATENCY")), time.perf_counter
    while True:
        s = pc()
        if s >= end: break
        conn.execute("BEGIN"); conn.execute("INSERT INTO t(seq, ts, v) VALUES (?, ?, randomblob(40))", (n, 0)); conn.execute("COMMIT"); n += 1
        if timed: lat.append(pc() - s)
    app = time.perf_counter() - t0
else:
    for _ in range(2000):
        conn.execute("INSERT INTO t(seq, ts, v) VALUES (1, 0, randomblob(100000))"); n += 1
    app = time.perf_counter() - t0
time.sleep(4)
res = {"app_cpu_share": round((time.process_time() - app_cpu0) / app, 2),
       "app_run_delay_us": round((run_delay() - delay0) / 1e3 / max(n, 1), 2), "mode": mode, "sync": sync, "commits": n, "app_s": round(app, 2), "commits_per_s": round(n / app),
       "load": open("/proc/loadavg").read().split()[:3]}
if lat:
    lat.sort(); q = lambda f: round(lat[min(len(lat) - 1, int(f * len(lat)))] * 1e3, 3)
    slow = [x for x in lat if x >= 0.001]
    res.update({"lat_ms": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": q(1.0)},
                "over_1ms": len(slow), "over_1ms_s": round(sum(slow), 3), "over_5ms": sum(1 for x in lat if x >= 0.005)})
if proc:
    res["cpu_s"] = round(cpu() - cpu0, 2); res["hwm_mb"] = round(hwm(), 1)
    proc.send_signal(signal.SIGTERM); proc.wait()
    lines = shipped_lines()[n0:]
    commits = sum(int(re.search(r"commits=(\d+)", l).group(1)) for l in lines)
    res["segments"] = len(lines); res["seg_commits"] = commits
    res["commits_per_segment"] = round(commits / max(1, len(lines)), 1)
    res["checkpoints"] = sum(1 for l in open(os.path.join(work, "log")) if "checkpoint" in l and "copied" in l)
    held = sorted(int(m.group(1)) for l in open(os.path.join(work, "log")) for m in [re.search(r"held_us=(\d+)", l)] if m)
    if held:
        res["held_ms"] = {"median": held[len(held) // 2] / 1e3, "max": held[-1] / 1e3, "sum": round(sum(held) / 1e3, 1)}
if side:
    side.kill(); side.wait()
print(json.dumps(res))
shutil.rmtree(work, ignore_errors=True)
shutil.rmtree(os.path.dirname(rep), ignore_errors=True)
