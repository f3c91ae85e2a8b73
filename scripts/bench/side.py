#!/usr/bin/env python3
"""One piece of what a replicator does to an application, alone (docs/benchmarks.md).

    scripts/bench/side.py MODE DB

Started by probe.py when PROBE_SIDE=MODE is set, beside its application and
usually with no replicator (`probe.py none NORMAL`), so that the application's
throughput shows what this one piece costs it. Runs until killed. MODE:

  pin           holds a read transaction on DB, renewed every 100 ms
  readwal       reads DB-wal right behind the writer (1 MiB preads; from the
                start again when nothing new arrives, after a WAL restart)
  inotify       watches DB's directory for writes and reads every event at once
  inotify_hold  the same, sleeping 1 ms after each read (events merge meanwhile)
  oneshot_hold  a one-shot watch for writes, put back 1 ms after each event
  burn          a CPU loop on core 1 (run probe.py under `taskset -c 0`)
  memburn       copies 64 MiB over and over on core 1 (the same)
"""
import ctypes, os, sqlite3, sys, threading, time

IN_MODIFY, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_ONESHOT = 0x2, 0x80, 0x100, 0x200, 0x80000000


def pin(db):
    c = sqlite3.connect(db, isolation_level=None)
    while True:
        c.execute("BEGIN")
        c.execute("SELECT count(*) FROM sqlite_master").fetchall()
        time.sleep(0.1)
        c.execute("COMMIT")


def readwal(db):
    fd = None
    while fd is None:
        try:
            fd = os.open(db + "-wal", os.O_RDONLY)
        except FileNotFoundError:
            time.sleep(0.01)
    off = 0
    while True:
        b = os.pread(fd, 1 << 20, off)
        if b:
            off += len(b)
            continue
        time.sleep(0.002)
        if not os.pread(fd, 1, off):
            off = 0


def watch(db, hold, oneshot):
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = libc.inotify_init1(0)
    d = os.path.dirname(db).encode()
    mask = IN_MODIFY | IN_MOVED_TO | IN_CREATE | IN_DELETE
    libc.inotify_add_watch(fd, d, mask)
    while True:
        os.read(fd, 65536)
        if hold:
            time.sleep(hold)
        if oneshot:
            libc.inotify_add_watch(fd, d, mask | IN_ONESHOT)


def burn(_db):
    os.sched_setaffinity(0, {1})
    x = 0
    while True:
        x += 1


def memburn(_db):
    os.sched_setaffinity(0, {1})
    a = bytearray(64 << 20)
    while True:
        bytes(a)


MODES = {
    "pin": pin,
    "readwal": readwal,
    "inotify": lambda db: watch(db, 0, False),
    "inotify_hold": lambda db: watch(db, 0.001, False),
    "oneshot_hold": lambda db: watch(db, 0.001, True),
    "burn": burn,
    "memburn": memburn,
}

if __name__ == "__main__":
    mode, db = sys.argv[1], sys.argv[2]
    threading.Thread(target=MODES[mode], args=(db,), daemon=True).start()
    while True:
        time.sleep(1)
