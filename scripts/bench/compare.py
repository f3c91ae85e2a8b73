#!/usr/bin/env python3
"""walstream and Litestream side by side, on the same workloads.

Run through scripts/bench/compare.sh, which installs Litestream and builds
walstream first. Progress goes to stderr, markdown results to stdout, raw
numbers to OUT_DIR/results.json.

Every workload runs both tools alternately (walstream, Litestream, walstream,
Litestream, ...) on a fresh database each time; tables give the median of the
runs and every individual run.

The application is this script: Python's sqlite3 module, WAL mode,
PRAGMA synchronous=NORMAL (--synchronous to change), one row per transaction.

Lag is detected the same way for both tools: a separate watcher process
(`compare.py watch DIR`) blocks in inotify on the directory where the tool
publishes its per-transaction files (walstream: REPLICA/segments,
Litestream: REPLICA/ltx/0) and timestamps every file that appears under its
final name (IN_CREATE or IN_MOVED_TO; names containing "tmp" are ignored) with
CLOCK_MONOTONIC. The application timestamps each COMMIT's return with the same
clock. A commit's lag is the time from its COMMIT returning to the first file
that appears after it.

Lag to S3 (--only lag_s3, SeaweedFS on loopback started by compare.sh) is
taken at the counting proxy in front of it (scripts/bench/s3count.py): the
moment it relayed the answer to a successful PUT of a per-transaction object
(walstream: PREFIX/segments/..., Litestream: PREFIX/0000/..., its level 0), on the same
clock. walstream's default upload_interval for S3 is 1 s, like Litestream's
sync-interval; --walstream-s3-upload-interval 0s ships every commit at once.
"""

import argparse
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time

TOOLS = ("walstream", "litestream")
# The throughput row of --floor: the pin and checkpoint cycle alone.
FLOOR = "cycle alone"
HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"compare: {msg}", file=sys.stderr, flush=True)


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def io_pressure():
    try:
        with open("/proc/pressure/io") as f:
            return f.readline().split()[1].split("=")[1] + " %"
    except OSError:
        return "n/a"


# ---------------------------------------------------------------- watcher


def watch_main(directory, out_path):
    """Print `<monotonic ns> <name>` for each file appearing in DIRECTORY."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = libc.inotify_init1(0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    in_create, in_moved_to = 0x100, 0x80
    if libc.inotify_add_watch(fd, directory.encode(), in_create | in_moved_to) < 0:
        raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
    out = open(out_path, "w", buffering=1)
    out.write("ready\n")
    signal.signal(signal.SIGTERM, lambda *_: (out.flush(), os._exit(0)))
    while True:
        buf = os.read(fd, 65536)
        t = now_ns()
        i = 0
        while i < len(buf):
            _wd, _mask, _cookie, length = struct.unpack_from("iIII", buf, i)
            name = buf[i + 16 : i + 16 + length].rstrip(b"\0").decode()
            i += 16 + length
            if "tmp" not in name and not name.startswith("."):
                out.write(f"{t} {name}\n")


class Watcher:
    def __init__(self, directory, work):
        self.path = os.path.join(work, f"events-{random.randrange(1 << 30)}.txt")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "watch", directory, self.path]
        )
        deadline = time.time() + 10
        while not (os.path.exists(self.path) and open(self.path).read().startswith("ready")):
            if time.time() > deadline:
                raise RuntimeError("watcher did not start")
            time.sleep(0.01)

    def events(self):
        out = []
        with open(self.path) as f:
            for line in f:
                if line.strip() == "ready":
                    continue
                t, name = line.split(" ", 1)
                out.append((int(t), name.strip()))
        return out

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        ev = self.events()
        os.unlink(self.path)
        return ev


# ---------------------------------------------------------------- tools


class Replicator:
    """One running replicator process for one or more databases."""

    def __init__(self, tool, args, dbs, work, s3=None):
        self.tool, self.args, self.dbs, self.work = tool, args, dbs, work
        self.replicas = [os.path.join(os.path.dirname(db), f"replica-{tool}") for db in dbs]
        if s3:  # (endpoint, bucket): one prefix per run
            endpoint, bucket = s3
            prefix = f"compare-{tool}-{random.randrange(1 << 30)}"
            self.replicas = [f"s3://{bucket}/{prefix}"]
        logf = open(os.path.join(work, f"{tool}.log"), "ab")
        if tool == "walstream":
            if s3:
                url = f"{self.replicas[0]}?endpoint={s3[0]}&force-path-style=true&region=us-east-1"
                cmd = [args.walstream, "replicate", dbs[0], url]
                if args.walstream_s3_upload_interval:
                    cfg = os.path.join(work, "walstream.toml")
                    with open(cfg, "w") as f:
                        f.write(f'[[db]]\npath = "{dbs[0]}"\n[[db.replica]]\nurl = "{url}"\n'
                                f'upload_interval = "{args.walstream_s3_upload_interval}"\n')
                    cmd = [args.walstream, "replicate", "--config", cfg]
            elif len(dbs) == 1 and not args.walstream_upload_interval:
                cmd = [args.walstream, "replicate", dbs[0], self.replicas[0]]
            else:
                cfg = os.path.join(work, "walstream.toml")
                every = args.walstream_upload_interval
                with open(cfg, "w") as f:
                    for db, rep in zip(dbs, self.replicas):
                        f.write(f'[[db]]\npath = "{db}"\n[[db.replica]]\nurl = "file://{rep}"\n')
                        f.write(f'upload_interval = "{every}"\n\n' if every else "\n")
                cmd = [args.walstream, "replicate", "--config", cfg]
            env = dict(os.environ, WALSTREAM_LOG="warn")
        else:
            cfg = os.path.join(work, "litestream.yml")
            with open(cfg, "w") as f:
                f.write("dbs:\n")
                for db, rep in zip(dbs, self.replicas):
                    f.write(f"  - path: {db}\n")
                    if args.litestream_interval:
                        f.write(f"    monitor-interval: {args.litestream_interval}\n")
                    if s3:
                        f.write(f"    replicas:\n      - url: {rep}\n        endpoint: {s3[0]}\n"
                                "        force-path-style: true\n        region: us-east-1\n")
                    else:
                        f.write(f"    replicas:\n      - url: file://{rep}\n")
                    if args.litestream_interval:
                        f.write(f"        sync-interval: {args.litestream_interval}\n")
            cmd = [args.litestream, "replicate", "-config", cfg]
            # A CA bundle in the environment makes Litestream's S3 client fail to
            # start ("unable to add custom RootCAs"); the benchmarks use plain HTTP.
            env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, env=env)

    def watch_dir(self, i=0):
        sub = "segments" if self.tool == "walstream" else os.path.join("ltx", "0")
        return os.path.join(self.replicas[i], sub)

    def cpu_s(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status(self, key):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # MB
        return float("nan")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def connect(db, args):
    c = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute(f"PRAGMA synchronous={args.synchronous}")
    c.execute("PRAGMA busy_timeout=10000")
    return c


def new_db(work, name="app.db", payload=True):
    d = os.path.join(work, f"{name}.d-{random.randrange(1 << 30)}")
    os.makedirs(d)
    db = os.path.join(d, name)
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, seq INTEGER, ts INTEGER, v BLOB)")
    c.execute("INSERT INTO t(seq, ts, v) VALUES (0, 0, randomblob(40))")
    c.close()
    return db


def wait_ready(rep, conn, i=0, timeout=60):
    """Commit a row every 50 ms until the tool has published one per-commit file."""
    d = rep.watch_dir(i)
    deadline = time.time() + timeout
    while not (os.path.isdir(d) and os.listdir(d)):
        if rep.proc.poll() is not None:
            raise RuntimeError(f"{rep.tool} exited: see its log in the work directory")
        if time.time() > deadline:
            raise RuntimeError(f"{rep.tool}: no file in {d} after {timeout} s")
        conn.execute("INSERT INTO t(seq, ts, v) VALUES (-1, 0, randomblob(40))")
        time.sleep(0.05)
    time.sleep(1.5)


def q(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))]


def rm(path):
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- workloads


@contextlib.contextmanager
def replicated(tool, args, work):
    """A fresh database, TOOL replicating it (none: no replicator) once it has
    published a first file, and an application connection. FLOOR is no
    replicator either, but side.py's pin and checkpoint cycle beside the
    application (what holding the WAL costs by itself, see --floor)."""
    db = new_db(work)
    rep = Replicator(tool, args, [db], work) if tool not in ("none", FLOOR) else None
    side = start_floor(db) if tool == FLOOR else None
    conn = connect(db, args)
    try:
        if rep:
            wait_ready(rep, conn)
        yield db, rep, conn
    finally:
        conn.close()
        if rep:
            rep.stop()
        if side:
            side.terminate()
            side.wait()


def start_floor(db):
    side = subprocess.Popen([sys.executable, os.path.join(HERE, "side.py"), "cycle", db])
    time.sleep(1.5)  # as long as wait_ready waits once a replicator is ready
    if side.poll() is not None:
        raise RuntimeError("side.py cycle exited at once")
    return side


def commit_series(rep, conn, args):
    """Warm-up, then args.commits timed commits args.interval apart and the
    settle time: (COMMIT-returned times, the replicator's CPU share)."""
    for _ in range(20):  # warm-up, not measured
        conn.execute("INSERT INTO t(seq, ts, v) VALUES (-2, 0, randomblob(40))")
        time.sleep(args.interval)
    time.sleep(2)  # Litestream: let the warm-up sync out
    cpu0, t0 = rep.cpu_s(), time.time()
    commits = []
    nxt = time.perf_counter()
    for seq in range(1, args.commits + 1):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t(seq, ts, v) VALUES (?, ?, randomblob(40))", (seq, time.time_ns()))
        conn.execute("COMMIT")
        commits.append(now_ns())
        nxt += args.interval
        delay = nxt - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    time.sleep(args.settle)
    return commits, (rep.cpu_s() - cpu0) / (time.time() - t0)


def match_lags(commits, times, cpu):
    """Each commit's lag: to the first replica event at or after it."""
    lags, unmatched, k = [], 0, 0
    times = sorted(t for t in times if t >= commits[0] - 10**9)
    for c in commits:
        while k < len(times) and times[k] < c:
            k += 1
        if k == len(times):
            unmatched += 1
        else:
            lags.append((times[k] - c) / 1e6)
    files = sum(1 for t in times if t >= commits[0])
    return {"lags_ms": lags, "unmatched": unmatched, "files": files, "cpu_share": cpu}


def run_lag(tool, args, work):
    with replicated(tool, args, work) as (db, rep, conn):
        w = Watcher(rep.watch_dir(), work)
        commits, cpu = commit_series(rep, conn, args)
        times = [t for t, _ in w.stop()]
    rm(os.path.dirname(db))
    return match_lags(commits, times, cpu)


def s3_put_times(rep):
    """When the counting proxy relayed a successful PUT of one of REP's
    per-transaction objects (walstream: segments/, Litestream: its level 0,
    0000/ in a bucket)."""
    prefix = "/" + rep.replicas[0][len("s3://"):] + "/"
    marker = "segments/" if rep.tool == "walstream" else "0000/"
    out = []
    try:
        with open(os.environ["COMPARE_S3_EVENTS"]) as f:
            for line in f:
                t, t0, status, path = line.rstrip("\n").split(" ", 3)
                if status == "200" and path.startswith(prefix + marker):
                    out.append((int(t), int(t0)))
    except FileNotFoundError:
        pass
    return out


def run_lag_s3(tool, args, work):
    """Lag to an S3 replica: COMMIT returned → the tool's PUT of an object
    holding it answered (seen by the counting proxy)."""
    db, rep, conn = s3_replicated(tool, args, work)
    try:
        deadline = time.time() + 60
        while not s3_put_times(rep):
            if rep.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{tool}: no per-transaction object stored in S3; see its log")
            conn.execute("INSERT INTO t(seq, ts, v) VALUES (-1, 0, randomblob(40))")
            time.sleep(0.05)
        time.sleep(1.5)
        commits, cpu = commit_series(rep, conn, args)
    finally:
        conn.close()
        rep.stop()
    rm(os.path.dirname(db))
    puts = s3_put_times(rep)
    res = match_lags(commits, [t for t, _ in puts], cpu)
    res["put_ms"] = [(t - t0) / 1e6 for t, t0 in puts if t >= commits[0]]
    return res


def run_throughput(tool, args, work):
    with replicated(tool, args, work) as (db, _rep, conn):
        n, t0 = 0, time.perf_counter()
        end = t0 + args.seconds
        while time.perf_counter() < end:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t(seq, ts, v) VALUES (?, ?, randomblob(40))", (n, 0))
            conn.execute("COMMIT")
            n += 1
        rate = n / (time.perf_counter() - t0)
    rm(os.path.dirname(db))
    return {"commits_per_s": rate}


def dir_stats(path):
    files = size = 0
    for root, _dirs, names in os.walk(path):
        for n in names:
            try:
                size += os.stat(os.path.join(root, n)).st_size
                files += 1
            except FileNotFoundError:
                pass
    return files, size


def run_ingest_restore(tool, args, work):
    """Ingest MB of incompressible rows, then restore the latest state."""
    with replicated(tool, args, work) as (db, rep, conn):
        w = Watcher(rep.watch_dir(), work)
        cpu0 = rep.cpu_s()
        t0 = time.perf_counter()
        for _ in range(args.ingest_mb * 10):
            conn.execute("INSERT INTO t(seq, ts, v) VALUES (1, 0, randomblob(100000))")
        last = now_ns()
        ingest_s = time.perf_counter() - t0
        source_rows = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        # Catch-up: the last file published after the last commit and followed
        # by QUIET seconds without another one.
        deadline = time.time() + 300
        while True:
            time.sleep(0.5)
            newest = max([t for t, _ in w.events()], default=0)
            if newest >= last and now_ns() - newest > args.quiet * 1e9:
                break
            if time.time() > deadline:
                raise RuntimeError(f"{tool}: no file after the last commit within 300 s")
        catch_up = (newest - last) / 1e9
        cpu = rep.cpu_s() - cpu0
        hwm = rep.status("VmHWM")
        w.stop()
    db_mb = os.path.getsize(db) / 1e6
    files, size = dir_stats(rep.replicas[0])
    return {
        "ingest_s": ingest_s, "catch_up_s": catch_up, "cpu_s": cpu, "peak_rss_mb": hwm,
        "db_mb": db_mb, "replica_files": files, "replica_mb": size / 1e6,
        "db": db, "replica": rep.replicas[0], "source_rows": source_rows,
    }


def restore_once(tool, args, replica, out, extra=()):
    if os.path.exists(out):
        os.unlink(out)
    if tool == "walstream":
        cmd = [args.walstream, "restore", *extra, "-o", out, replica]
    else:
        cmd = [args.litestream, "restore", *extra, "-o", out, f"file://{replica}"]
    # Wall time from fork to exit, peak RSS from the child's rusage (both
    # finer than /usr/bin/time's 10 ms).
    err = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err.seek(0)
        raise RuntimeError(f"{tool} restore failed: {err.read().decode(errors='replace')[-2000:]}")
    rss = usage.ru_maxrss  # KiB on Linux
    c = sqlite3.connect(out)
    rows = c.execute("SELECT count(*) FROM t").fetchone()[0]
    c.close()
    return {"wall_s": float(wall), "peak_rss_mb": int(rss) / 1024, "rows": rows}


def run_storage(tool, args, work):
    with replicated(tool, args, work) as (db, rep, conn):
        end = time.time() + args.storage_minutes * 60
        n = 0
        while time.time() < end:
            conn.execute("INSERT INTO t(seq, ts, v) VALUES (?, ?, randomblob(100))", (n, 0))
            n += 1
            time.sleep(args.storage_interval)
        time.sleep(5)
        hwm = rep.status("VmHWM")
    files, size = dir_stats(rep.replicas[0])
    rm(os.path.dirname(db))
    return {"commits": n, "files": files, "bytes": size, "peak_rss_mb": hwm}


def s3_replicated(tool, args, work):
    """A fresh database, TOOL replicating it to SeaweedFS through the counting
    proxy, and an application connection."""
    db = new_db(work)
    endpoint = f"http://127.0.0.1:{os.environ['COMPARE_S3_PROXY_PORT']}"
    rep = Replicator(tool, args, [db], work, s3=(endpoint, os.environ["WALSTREAM_TEST_S3_BUCKET"]))
    return db, rep, connect(db, args)


def run_s3(tool, args, work):
    """Constant writes to an S3 replica behind the counting proxy."""
    counts_file = os.environ["COMPARE_S3_COUNTS"]
    def counts():
        try:
            with open(counts_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}
    db, rep, conn = s3_replicated(tool, args, work)
    try:
        conn.execute("INSERT INTO t(seq, ts, v) VALUES (-1, 0, randomblob(40))")
        time.sleep(10)  # start-up: first snapshot, lease, initial listing
        c0, t0 = counts(), time.time()
        end = t0 + args.storage_minutes * 60
        n = 0
        while time.time() < end:
            conn.execute("INSERT INTO t(seq, ts, v) VALUES (?, ?, randomblob(100))", (n, 0))
            n += 1
            time.sleep(args.storage_interval)
        c1, t1 = counts(), time.time()
        if rep.proc.poll() is not None:
            raise RuntimeError(f"{tool} exited during the S3 run: see its log")
    finally:
        conn.close()
        rep.stop()
    rm(os.path.dirname(db))
    per_hour = {k: (c1.get(k, 0) - c0.get(k, 0)) * 3600 / (t1 - t0) for k in set(c0) | set(c1)}
    return {"commits": n, "seconds": t1 - t0, "per_hour": per_hour,
            "total_per_hour": sum(per_hour.values())}


def run_many(tool, args, work, count):
    dbs = [new_db(work, f"db{i}.db") for i in range(count)]
    rep = Replicator(tool, args, dbs, work)
    conns = [connect(db, args) for db in dbs]
    try:
        wait_ready(rep, conns[0], 0, timeout=120)
        end = time.time() + args.many_seconds
        while time.time() < end:  # one commit per database per second
            for c in conns:
                c.execute("INSERT INTO t(seq, ts, v) VALUES (1, 0, randomblob(100))")
            time.sleep(1)
        rss, hwm = rep.status("VmRSS"), rep.status("VmHWM")
    finally:
        for c in conns:
            c.close()
        rep.stop()
    for db in dbs:
        rm(os.path.dirname(db))
    return {"rss_mb": rss, "peak_rss_mb": hwm}


def iso_ms(t):
    """RFC 3339 UTC with milliseconds, which both tools accept."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def build_history(tool, args, work, commits):
    """A fresh database with TOOL replicating it, then COMMITS one-row commits
    (200 random bytes, --history-interval apart: the history.sh application).
    Returns the replica and the middle point: its time and the rows then."""
    with replicated(tool, args, work) as (db, rep, conn):
        t0 = time.perf_counter()
        mid = None
        for i in range(commits):
            conn.execute("INSERT INTO t(seq, ts, v) VALUES (?, 0, randomblob(200))", (i,))
            if i == commits // 2:
                mid = {"time": time.time(), "rows": conn.execute("SELECT count(*) FROM t").fetchone()[0]}
            time.sleep(args.history_interval)
        commit_s = time.perf_counter() - t0
        rows = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        # Both tools ship what is committed on SIGTERM; the quiet time lets
        # walstream's last merge and Litestream's pending sync finish first.
        time.sleep(args.quiet)
    files, size = dir_stats(rep.replicas[0])
    log(f"  {tool}: {commits} commits in {commit_s:.0f} s, replica {files} files, {size / 1e6:.1f} MB")
    return {"db": db, "replica": rep.replicas[0], "rows": rows, "mid": mid,
            "files": files, "replica_mb": size / 1e6, "db_mb": os.path.getsize(db) / 1e6}


def restore_at(tool, args, replica, out, when=None):
    """restore_once, at the latest state or at time WHEN (seconds since the epoch)."""
    extra = []
    if when is not None:
        extra = ["--timestamp", iso_ms(when)] if tool == "walstream" else ["-timestamp", iso_ms(when)]
    return restore_once(tool, args, replica, out, extra)


def run_history(args, work, commits):
    """Per round: a history for each tool, then restores of the latest state
    and of the middle point, alternating tools restore by restore."""
    runs = {t: {"latest": [], "mid": [], "histories": []} for t in TOOLS}
    for r in range(args.rounds):
        hist = {}
        for t in TOOLS:
            log(f"history {commits} round {r + 1}: {t} (load {load()})")
            hist[t] = build_history(t, args, work, commits)
        out = os.path.join(work, "restored.db")
        for _ in range(args.restores):
            for t in TOOLS:
                h = hist[t]
                y = restore_at(t, args, h["replica"], out)
                if y["rows"] != h["rows"]:
                    raise RuntimeError(f"{t} restore has {y['rows']} rows, the source {h['rows']}")
                y["load"] = load()
                runs[t]["latest"].append(y)
                z = restore_at(t, args, h["replica"], out, h["mid"]["time"])
                z["expected_rows"], z["load"] = h["mid"]["rows"], load()
                runs[t]["mid"].append(z)
                log(f"  {t}: latest {y['wall_s']:.3f} s {y['peak_rss_mb']:.0f} MB, "
                    f"middle {z['wall_s']:.3f} s {z['peak_rss_mb']:.0f} MB ({z['rows']} rows, {h['mid']['rows']} then)")
        for t in TOOLS:
            h = hist.pop(t)
            rm(os.path.dirname(h["db"]))
            runs[t]["histories"].append({k: h[k] for k in ("rows", "files", "replica_mb", "db_mb")})
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(out + suffix):
                os.unlink(out + suffix)
    return runs


# ---------------------------------------------------------------- driver


def alternate(args, tools, what, run, summary):
    """ROUNDS rounds of RUN(tool) for each tool in turn: A B A B ..."""
    runs = {t: [] for t in tools}
    for r in range(args.rounds):
        for t in tools:
            log(f"{what} round {r + 1}: {t} (load {load()})")
            x = run(t)
            x["load"] = load()
            log("  " + summary(x))
            runs[t].append(x)
    return runs


def ingest_and_restore(tool, args, work):
    x = run_ingest_restore(tool, args, work)
    out = os.path.join(work, "restored.db")
    x["restores"] = []
    for _ in range(args.restores):
        y = restore_once(tool, args, x["replica"], out)
        if y["rows"] != x["source_rows"]:
            raise RuntimeError(f"{tool} restore has {y['rows']} rows, the source {x['source_rows']}")
        y["load"] = load()
        x["restores"].append(y)
    rm(os.path.dirname(x["db"]))
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(out + suffix):
            os.unlink(out + suffix)
    del x["db"], x["replica"]
    return x


def throughput_rows(args):
    return ("none",) + ((FLOOR,) if args.floor else ()) + TOOLS


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def fmt_runs(runs, key, f="{:.2f}"):
    return ", ".join(f.format(r[key]) for r in runs)


def ratio(a, b):
    return f"{a / b:.3g}" if b else "n/a"


def main_all(args):
    work = tempfile.mkdtemp(prefix="compare-", dir=args.dir)
    res = {"load_before": load(), "io_pressure_before": io_pressure(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = sys.stdout
    try:
        if "lag" in args.only:
            res["lag"] = alternate(args, TOOLS, "lag", lambda t: run_lag(t, args, work), lambda x: (
                f"p50 {q(x['lags_ms'], .5):.2f} ms, p95 {q(x['lags_ms'], .95):.2f} ms, "
                f"{x['files']} files, unmatched {x['unmatched']}"))
        if "lag_s3" in args.only:
            res["lag_s3"] = alternate(args, TOOLS, "lag to S3", lambda t: run_lag_s3(t, args, work), lambda x: (
                f"p50 {q(x['lags_ms'], .5):.2f} ms, p95 {q(x['lags_ms'], .95):.2f} ms, "
                f"{x['files']} PUTs (p50 {q(x['put_ms'] or [0], .5):.1f} ms each), unmatched {x['unmatched']}"))
        if "throughput" in args.only:
            res["throughput"] = alternate(args, throughput_rows(args), "throughput",
                                          lambda t: run_throughput(t, args, work),
                                          lambda x: f"{x['commits_per_s']:.0f} commits/s")
        if "ingest" in args.only:
            runs = alternate(args, TOOLS, f"ingest {args.ingest_mb} MB", lambda t: ingest_and_restore(t, args, work),
                             lambda x: (f"ingest {x['ingest_s']:.1f} s, catch-up {x['catch_up_s']:.2f} s, CPU {x['cpu_s']:.2f} s, "
                                        f"peak RSS {x['peak_rss_mb']:.0f} MB, db {x['db_mb']:.0f} MB, restores (s, MB): "
                                        + ", ".join(f"{y['wall_s']:.2f} {y['peak_rss_mb']:.0f}" for y in x["restores"])))
            res["ingest"] = runs
            res["restore"] = {t: [y for x in runs[t] for y in x.pop("restores")] for t in TOOLS}
        if "storage" in args.only:
            res["storage"] = alternate(args, TOOLS, f"storage {args.storage_minutes} min",
                                       lambda t: run_storage(t, args, work),
                                       lambda x: f"{x['commits']} commits, {x['files']} files, {x['bytes'] / 1e6:.2f} MB")
        if "s3" in args.only:
            res["s3"] = alternate(args, TOOLS, f"S3 requests, {args.storage_minutes} min",
                                  lambda t: run_s3(t, args, work),
                                  lambda x: f"{x['commits']} commits, per hour: {x['per_hour']}")
        if "many" in args.only:
            runs = {}
            for n in args.many:
                for t in TOOLS:
                    log(f"{n} databases: {t} (load {load()})")
                    x = run_many(t, args, work, n)
                    x["load"] = load()
                    log(f"  RSS {x['rss_mb']:.0f} MB, peak {x['peak_rss_mb']:.0f} MB")
                    runs.setdefault(str(n), {})[t] = x
            res["many"] = runs
        if "history" in args.only:
            res["history"] = {str(n): run_history(args, work, n) for n in args.history}
    finally:
        rm(work)
    res["load_after"], res["io_pressure_after"] = load(), io_pressure()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    report(res, args, out)
    charts(res, args)


def report(res, args, out):
    p = lambda *a: print(*a, file=out)
    p(f"started {res['started']}, load average {res['load_before']} → {res['load_after']}, "
      f"IO pressure {res['io_pressure_before']} → {res['io_pressure_after']}\n")
    for key, what, objects in (("lag", "file in the replica", "files"),
                               ("lag_s3", "PUT of an object holding it answered, S3 (SeaweedFS)", "PUTs")):
        if key not in res:
            continue
        L = res[key]
        p(f"### Lag: COMMIT returned → {what} ({args.commits} commits, one per {args.interval * 1000:g} ms, synchronous={args.synchronous})\n")
        p(f"| tool | p50 ms (runs) | median p50 | median p95 | median p99 | {objects}/run | CPU share | load per run |")
        p("|---|---|---:|---:|---:|---:|---:|---|")
        meds = {}
        for t in TOOLS:
            p50s = [q(r["lags_ms"], .5) for r in L[t]]
            p95s = [q(r["lags_ms"], .95) for r in L[t]]
            p99s = [q(r["lags_ms"], .99) for r in L[t]]
            meds[t] = statistics.median(p50s), statistics.median(p95s)
            p(f"| {t} | {', '.join(f'{v:.2f}' for v in p50s)} | {meds[t][0]:.2f} | {meds[t][1]:.2f} | "
              f"{statistics.median(p99s):.2f} | {statistics.median(r['files'] for r in L[t]):.0f} | "
              f"{statistics.median(r['cpu_share'] for r in L[t]) * 100:.1f} % | {'; '.join(r['load'] for r in L[t])} |")
        p(f"\nwalstream / Litestream: p50 {ratio(meds['walstream'][0], meds['litestream'][0])}, p95 {ratio(meds['walstream'][1], meds['litestream'][1])}; "
          f"unmatched commits: {sum(r['unmatched'] for t in TOOLS for r in L[t])}\n")
        if key == "lag_s3":
            p("PUT of a per-transaction object, request to answer, median of each run's p50: "
              + ", ".join(f"{t} {statistics.median(q(r['put_ms'] or [0], .5) for r in L[t]):.1f} ms" for t in TOOLS) + "\n")
    if "throughput" in res:
        T = res["throughput"]
        p(f"### Application write throughput ({args.seconds:g} s of one-row commits back to back, synchronous={args.synchronous})\n")
        p("| replicator | median commits/s | runs | vs none |")
        p("|---|---:|---|---:|")
        base = med(T["none"], "commits_per_s")
        for t in (t for t in ("none", FLOOR) + TOOLS if t in T):
            m = med(T[t], "commits_per_s")
            p(f"| {t} | {m:.0f} | {fmt_runs(T[t], 'commits_per_s', '{:.0f}')} | {(m / base - 1) * 100:+.1f} % |")
        p("")
    if "ingest" in res:
        I, R = res["ingest"], res["restore"]
        p(f"### {args.ingest_mb} MB ingest ({args.ingest_mb * 10} commits of 100 kB random bytes) and restore of the result\n")
        p("| measure | walstream | Litestream | walstream / Litestream |")
        p("|---|---:|---:|---:|")
        rows = [
            ("replicator CPU s (ingest + catch-up)", I, "cpu_s", "{:.2f}"),
            ("replicator peak RSS MB (VmHWM)", I, "peak_rss_mb", "{:.0f}"),
            ("catch-up s after the last commit", I, "catch_up_s", "{:.2f}"),
            ("application ingest time s", I, "ingest_s", "{:.2f}"),
            ("replica files", I, "replica_files", "{:.0f}"),
            ("replica MB", I, "replica_mb", "{:.0f}"),
            ("restore latest, wall s", R, "wall_s", "{:.2f}"),
            ("restore peak RSS MB", R, "peak_rss_mb", "{:.0f}"),
        ]
        for name, src, key, f in rows:
            a, b = med(src["walstream"], key), med(src["litestream"], key)
            p(f"| {name} | {f.format(a)} ({fmt_runs(src['walstream'], key, f)}) | {f.format(b)} ({fmt_runs(src['litestream'], key, f)}) | {ratio(a, b)} |")
        p(f"\ndatabase size {med(I['walstream'], 'db_mb'):.0f} MB; every restore held all the source's rows (checked); restored rows: walstream {sorted(set(r['rows'] for r in R['walstream']))}, Litestream {sorted(set(r['rows'] for r in R['litestream']))}\n")
    if "storage" in res:
        S = res["storage"]
        p(f"### Replica after {args.storage_minutes:g} min of one 100-byte commit every {args.storage_interval * 1000:g} ms\n")
        p("| tool | commits | files | MB | runs (files / MB) |")
        p("|---|---:|---:|---:|---|")
        for t in TOOLS:
            p(f"| {t} | {med(S[t], 'commits'):.0f} | {med(S[t], 'files'):.0f} | {med(S[t], 'bytes') / 1e6:.2f} | "
              + '; '.join(f"{r['files']} / {r['bytes'] / 1e6:.2f}" for r in S[t]) + " |")
        p("")
    if "s3" in res:
        S = res["s3"]
        kinds = sorted({k for t in TOOLS for r in S[t] for k in r["per_hour"]})
        p(f"### S3 requests per hour (SeaweedFS on loopback behind a counting proxy; {args.storage_minutes:g} min of one 100-byte commit every {args.storage_interval * 1000:g} ms, scaled to an hour)\n")
        p("| tool | " + " | ".join(kinds) + " | total | total per run |")
        p("|---|" + "---:|" * (len(kinds) + 1) + "---|")
        for t in TOOLS:
            p(f"| {t} | " + " | ".join(f"{statistics.median(r['per_hour'].get(k, 0) for r in S[t]):.0f}" for k in kinds)
              + f" | {med(S[t], 'total_per_hour'):.0f} | {fmt_runs(S[t], 'total_per_hour', '{:.0f}')} |")
        p("")
    if "history" in res:
        H = res["history"]
        p(f"### Restore after a long history (one-row commits of 200 bytes, {args.history_interval * 1000:g} ms apart; latest state and the middle point)\n")
        p("| commits | database MB | replica files (walstream / Litestream) | restore latest s, walstream | Litestream | ratio | restore middle s, walstream | Litestream | ratio | peak RSS MB (latest, middle), walstream | Litestream |")
        p("|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|")
        for n, v in H.items():
            w, l = v["walstream"], v["litestream"]
            wl, ll, wm, lm = med(w["latest"], "wall_s"), med(l["latest"], "wall_s"), med(w["mid"], "wall_s"), med(l["mid"], "wall_s")
            files = f"{statistics.median(h['files'] for h in w['histories']):.0f} / {statistics.median(h['files'] for h in l['histories']):.0f}"
            p(f"| {int(n):,} | {statistics.median(h['db_mb'] for h in w['histories']):.1f} | {files} | "
              f"**{wl:.3f}** ({fmt_runs(w['latest'], 'wall_s', '{:.3f}')}) | {ll:.3f} ({fmt_runs(l['latest'], 'wall_s', '{:.3f}')}) | {ratio(ll, wl)}x | "
              f"**{wm:.3f}** ({fmt_runs(w['mid'], 'wall_s', '{:.3f}')}) | {lm:.3f} ({fmt_runs(l['mid'], 'wall_s', '{:.3f}')}) | {ratio(lm, wm)}x | "
              f"{med(w['latest'], 'peak_rss_mb'):.0f}, {med(w['mid'], 'peak_rss_mb'):.0f} | {med(l['latest'], 'peak_rss_mb'):.0f}, {med(l['mid'], 'peak_rss_mb'):.0f} |")
        p("\nratio: Litestream's time / walstream's (above 1: walstream faster). Middle-point rows restored (expected at that time): "
          + "; ".join(f"{n}: walstream {sorted(set(z['rows'] for z in v['walstream']['mid']))}, Litestream {sorted(set(z['rows'] for z in v['litestream']['mid']))} "
                      f"({sorted(set(z['expected_rows'] for z in v['walstream']['mid']))})" for n, v in H.items())
          + "; load per restore: " + "; ".join(f"{n}: " + ", ".join(z["load"].split()[0] for t in TOOLS for z in v[t]["latest"]) for n, v in H.items()) + "\n")
    if "many" in res:
        M = res["many"]
        p(f"### Memory with many databases in one process ({args.many_seconds:g} s, one commit per database per second)\n")
        p("| databases | walstream RSS / peak MB | Litestream RSS / peak MB |")
        p("|---:|---:|---:|")
        for n, v in M.items():
            p(f"| {n} | {v['walstream']['rss_mb']:.0f} / {v['walstream']['peak_rss_mb']:.0f} | {v['litestream']['rss_mb']:.0f} / {v['litestream']['peak_rss_mb']:.0f} |")
        p("")


def charts(res, args):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not available: no charts")
        return
    if "lag" in res and args.img:
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=90)
        for t, color in zip(TOOLS, ("tab:blue", "tab:orange")):
            v = sorted(x for r in res["lag"][t] for x in r["lags_ms"])
            ax.plot(v, [i / len(v) for i in range(len(v))], label=f"{t} (p50 {q(v, .5):.2f} ms)", color=color)
        ax.set_xscale("log")
        ax.set_xlabel("COMMIT returned → file in the local replica (ms, log scale)")
        ax.set_ylabel("share of commits")
        ax.set_title(f"Commit-to-replica lag, {len(res['lag']['walstream'])} runs per tool, {args.commits} commits each")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        path = os.path.join(args.img, "lag.png")
        fig.savefig(path)
        log(f"wrote {path}")
    if "restore" in res and args.img:
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=90)
        R = res["restore"]
        names = list(TOOLS)
        ax.bar(names, [med(R[t], "wall_s") for t in names], color=("tab:blue", "tab:orange"))
        for i, t in enumerate(names):
            ax.scatter([i] * len(R[t]), [r["wall_s"] for r in R[t]], color="black", s=10, zorder=3)
            ax.annotate(f"{med(R[t], 'wall_s'):.2f} s, {med(R[t], 'peak_rss_mb'):.0f} MB RSS", (i, max(r["wall_s"] for r in R[t])),
                        ha="center", va="bottom", xytext=(0, 4), textcoords="offset points")
        ax.set_ylim(0, max(r["wall_s"] for t in names for r in R[t]) * 1.2)
        ax.set_ylabel("wall time (s)")
        ax.set_title(f"Restore latest of a {med(res['ingest']['walstream'], 'db_mb'):.0f} MB database (median, dots: runs)")
        fig.tight_layout()
        path = os.path.join(args.img, "restore.png")
        fig.savefig(path)
        log(f"wrote {path}")

    if "history" in res and args.img:
        H = res["history"]
        ns = sorted(int(n) for n in H)
        fig, ax = plt.subplots(figsize=(7, 3.8), dpi=90)
        for t, color in zip(TOOLS, ("tab:blue", "tab:orange")):
            for point, style in (("latest", "-o"), ("mid", "--s")):
                ax.plot(ns, [med(H[str(n)][t][point], "wall_s") for n in ns], style, color=color,
                        label=f"{t}, {'latest state' if point == 'latest' else 'middle point'}")
        ax.set_xscale("log")
        ax.set_xticks(ns, [f"{n:,}" for n in ns])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("one-row commits in the history (log scale)")
        ax.set_ylabel("restore wall time (s, median)")
        ax.set_ylim(bottom=0)
        ax.set_title("Restore after a long history, local replica")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = os.path.join(args.img, "history.png")
        fig.savefig(path)
        log(f"wrote {path}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "watch":
        watch_main(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--walstream", required=True)
    ap.add_argument("--litestream", required=True)
    ap.add_argument("--only", default="lag,throughput,ingest,storage,many",
                    help="comma-separated workloads (default: all)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per workload (default 2: A B A B)")
    ap.add_argument("--commits", type=int, default=2000, help="measured commits per lag run")
    ap.add_argument("--interval", type=float, default=0.005, help="seconds between lag commits")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait after the last lag commit")
    ap.add_argument("--synchronous", default="NORMAL")
    ap.add_argument("--seconds", type=float, default=10, help="throughput run length")
    ap.add_argument("--floor", action="store_true",
                    help="throughput also beside scripts/bench/side.py cycle with no replicator: the pin and "
                         "checkpoint cycle alone, what holding the WAL costs any replicator")
    ap.add_argument("--ingest-mb", type=int, default=200)
    ap.add_argument("--quiet", type=float, default=5.0, help="seconds without a new file that end catch-up")
    ap.add_argument("--restores", type=int, default=2, help="restores per ingest run (history: per point and round)")
    ap.add_argument("--history", default="5000,20000,80000",
                    help="history lengths in commits for --only history (comma-separated)")
    ap.add_argument("--history-interval", type=float, default=0.001, help="seconds between history commits")
    ap.add_argument("--storage-minutes", type=float, default=2)
    ap.add_argument("--storage-interval", type=float, default=0.01)
    ap.add_argument("--many", default="1,10,100")
    ap.add_argument("--many-seconds", type=float, default=20)
    ap.add_argument("--litestream-interval", default="",
                    help="Litestream monitor-interval and sync-interval (default: Litestream's own, 1s)")
    ap.add_argument("--walstream-upload-interval", default="",
                    help="walstream's upload_interval for local replicas (default: its own, 0s), e.g. 1s "
                         "for Litestream's recovery point")
    ap.add_argument("--walstream-s3-upload-interval", default="",
                    help="walstream's upload_interval for the S3 lag workload (default: its own for S3, 1s), "
                         "e.g. 0s to ship every commit at once")
    ap.add_argument("--dir", default=None, help="parent of the work directory (default: system temp)")
    ap.add_argument("--out", default=".tools/compare", help="where results.json goes")
    ap.add_argument("--from-json", default="", help="only print tables and draw charts from this results.json")
    ap.add_argument("--img", default="", help="directory for lag.png / restore.png (default: none)")
    args = ap.parse_args()
    args.only = set(args.only.split(","))
    if args.from_json:  # tables and charts again from an earlier results.json
        with open(args.from_json) as f:
            res = json.load(f)
        report(res, args, sys.stdout)
        charts(res, args)
        return
    args.many = [int(x) for x in args.many.split(",")]
    args.history = [int(x) for x in args.history.split(",")]
    main_all(args)


if __name__ == "__main__":
    main()
