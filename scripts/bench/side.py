#!/usr/bin/env python3
"""One piece of what a replicator does to an application, alone (docs/benchmarks.md).

    scripts/bench/side.py MODE DB

Started by probe.py when PROBE_SIDE=MODE is set, beside its application and
usually with no replicator (`probe.py none NORMAL`), so that the application's
throughput shows what this one piece costs it. Runs until killed. MODE:

  pin           holds a read transaction on DB, renewed every 100 ms
  cycle         the pin and checkpoint cycle alone, as walstream runs it (no
                WAL read, nothing written): the pin held always and moved to
                the WAL's end with a second connection, a PASSIVE checkpoint
                behind it every SIDE_STEP_MS (default 10), and every
                SIDE_CYCLE_MS (default 100) the writers held (BEGIN IMMEDIATE)
                while the pin is dropped, the rest checkpointed and the pin
                taken again, so the application's next write restarts the WAL
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


def cycle(db):
    step = float(os.environ.get("SIDE_STEP_MS", "10")) / 1000
    whole = float(os.environ.get("SIDE_CYCLE_MS", "100")) / 1000
    pin_c, lock_c = (sqlite3.connect(db, isolation_level=None) for _ in range(2))
    for c in (pin_c, lock_c):
        c.execute("PRAGMA wal_autocheckpoint=0")
    def begin_read(c):
        c.execute("BEGIN")
        c.execute("SELECT count(*) FROM sqlite_master").fetchall()
    begin_read(pin_c)
    last_whole = time.monotonic()
    while True:
        time.sleep(step if step > 0 else whole)
        begin_read(lock_c)  # roll: the new pin before the old one ends
        pin_c.execute("COMMIT")
        pin_c, lock_c = lock_c, pin_c
        lock_c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        if time.monotonic() - last_whole < whole:
            continue
        last_whole = time.monotonic()
        lock_c.execute("PRAGMA busy_timeout=0")
        while True:
            try:
                lock_c.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError:
                time.sleep(0.00005)
        pin_c.execute("COMMIT")
        pin_c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        begin_read(pin_c)
        lock_c.execute("ROLLBACK")


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
    "cycle": cycle,
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
