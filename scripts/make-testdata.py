#!/usr/bin/env python3
"""Generate WAL test data with real SQLite: testdata/wal/*.wal + manifest.json.

Usage:  python3 scripts/make-testdata.py [--out testdata/wal]

Every WAL file is written by SQLite itself (Python's standard `sqlite3` module,
which links the system libsqlite3). SQLite checkpoints and deletes the -wal file
when the last connection closes, so each file is copied while the writing
connection is still open, with `PRAGMA wal_autocheckpoint=0` so that nothing is
checkpointed behind our back.

Cases:
  a  page size 4096, 5 transactions (the last one spans several frames)
  b  page size 1024, cache_size=1: transactions spill dirty pages to the WAL
     before COMMIT, and the last transaction writes the same page twice
     (once when it is spilled, once as the commit frame)
  c  page size 65536 (stored as 0x00010000 in the WAL header), 2 transactions
  d  a WAL restarted after a checkpoint: salt1 incremented, checkpoint
     sequence 1, two new transactions, followed by stale frames of the
     previous generation (other salts)
  e  copy of a with its last frame cut in half (torn write): only 4 commits
  f  copy of a with one byte of the 3rd transaction's first page flipped: the
     checksum chain breaks there, only 2 commits
  g  copy of a rewritten to big-endian checksums: header magic set to
     0x377f0683 and the header checksum and every frame checksum recomputed
     with big-endian words (SQLite writes this variant on big-endian hosts;
     SQLite on this little-endian host reads it back, which the script checks)
  h  copy of b's WAL taken in the middle of a further transaction, after it
     spilled pages but before COMMIT: a real uncommitted tail made by SQLite

Where the expected values come from (nothing here uses walstream):
  * frame headers are parsed by a small independent parser below (salts,
    running checksum, commit frames);
  * `db_pages` of each commit is checked against `PRAGMA page_count` of the
    writing connection right after the COMMIT, and against SQLite's own
    recovery of a copy (base database file + the WAL as it was right after
    that COMMIT), which is then checkpointed;
  * `page_crc32` (zlib CRC-32 == crc32fast) of every page a commit wrote is
    taken from that checkpointed copy, i.e. from the database as SQLite
    rebuilds it; the parser checks the WAL frame holds exactly those bytes and
    that every page that changed was written by the commit;
  * for the damaged variants (e, f, g, h) SQLite recovers base database +
    variant WAL and must end up byte-identical to the state after exactly the
    expected number of commits (`sqlite_visible_commits`).

The salts are random (SQLite draws them), so each run produces different bytes
and a matching manifest; commit the files and the manifest together.
"""

import argparse
import json
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
import zlib

MAGIC_LE = 0x377F0682
MAGIC_BE = 0x377F0683
FORMAT_VERSION = 3007000
WAL_HDR = 32
FRAME_HDR = 24
MAX_FILE = 200 * 1024


def fail(msg):
    raise SystemExit(f"make-testdata: check failed: {msg}")


def check(cond, msg):
    if not cond:
        fail(msg)


# ---------------------------------------------------------------------------
# An independent WAL parser (SQLite file format, section 4 "The WAL file")
# ---------------------------------------------------------------------------


def wal_checksum(data, big_endian, seed=(0, 0)):
    assert len(data) % 8 == 0
    n = len(data) // 4
    words = struct.unpack((">" if big_endian else "<") + "%dI" % n, data)
    s0, s1 = seed
    for i in range(0, n, 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return (s0, s1)


def parse_header(buf):
    magic, version, page_size, ckpt, salt1, salt2, c0, c1 = struct.unpack(">8I", buf[:32])
    check(magic in (MAGIC_LE, MAGIC_BE), "bad magic %#x" % magic)
    check(version == FORMAT_VERSION, "bad version %d" % version)
    check(page_size >= 512 and page_size <= 65536 and page_size & (page_size - 1) == 0,
          "bad page size %d" % page_size)
    big_endian = magic == MAGIC_BE
    check(wal_checksum(buf[:24], big_endian) == (c0, c1), "bad header checksum")
    return {
        "magic": magic,
        "big_endian": big_endian,
        "page_size": page_size,
        "checkpoint_seq": ckpt,
        "salt1": salt1,
        "salt2": salt2,
        "checksum": (c0, c1),
    }


def parse_wal(buf):
    """Returns (header, commits, tail) the way SQLite's recovery reads the log."""
    h = parse_header(buf)
    ps = h["page_size"]
    fs = ps + FRAME_HDR
    complete = (len(buf) - WAL_HDR) // fs
    partial = (len(buf) - WAL_HDR) % fs
    running = h["checksum"]
    commits, pending = [], []
    stop_frame, stop_reason = None, None
    for i in range(complete):
        off = WAL_HDR + i * fs
        pgno, commit_size, s1, s2, k0, k1 = struct.unpack(">6I", buf[off:off + 24])
        if (s1, s2) != (h["salt1"], h["salt2"]):
            stop_frame, stop_reason = i, "salt_mismatch"
            break
        if pgno == 0:
            stop_frame, stop_reason = i, "zero_page_number"
            break
        s = wal_checksum(buf[off:off + 8], h["big_endian"], running)
        s = wal_checksum(buf[off + FRAME_HDR:off + fs], h["big_endian"], s)
        if s != (k0, k1):
            stop_frame, stop_reason = i, "checksum_mismatch"
            break
        running = s
        pending.append((pgno, i, zlib.crc32(buf[off + FRAME_HDR:off + fs])))
        if commit_size:
            commits.append({
                "db_pages": commit_size,
                "frames": pending,
                "first_frame": pending[0][1],
                "end_frame": i + 1,
                "end_checksum": running,
            })
            pending = []
    if stop_reason is None:
        stop_frame = complete
        stop_reason = "partial_frame" if partial else "end_of_file"
    stale = 0
    if stop_reason == "salt_mismatch":
        for i in range(stop_frame, complete):
            off = WAL_HDR + i * fs
            s1, s2 = struct.unpack(">II", buf[off + 8:off + 16])
            if (s1, s2) != (h["salt1"], h["salt2"]):
                stale += 1
    tail = {
        "complete_frames": complete,
        "partial_frame_bytes": partial,
        "valid_frames": stop_frame,
        "uncommitted_frames": len(pending),
        "stop_frame": stop_frame,
        "stop_reason": stop_reason,
        "stale_frames": stale,
    }
    return h, commits, tail


def rewrite_big_endian(buf):
    """The same log with big-endian checksums (magic 0x377f0683)."""
    h = parse_header(buf)
    out = bytearray(buf)
    struct.pack_into(">I", out, 0, MAGIC_BE)
    hsum = wal_checksum(bytes(out[:24]), True)
    struct.pack_into(">II", out, 24, *hsum)
    fs = h["page_size"] + FRAME_HDR
    running = hsum
    for i in range((len(buf) - WAL_HDR) // fs):
        off = WAL_HDR + i * fs
        s = wal_checksum(bytes(out[off:off + 8]), True, running)
        s = wal_checksum(bytes(out[off + FRAME_HDR:off + fs]), True, s)
        struct.pack_into(">II", out, off + 16, *s)
        running = s
    return bytes(out)


# ---------------------------------------------------------------------------
# What SQLite itself makes of a database file plus a WAL
# ---------------------------------------------------------------------------


def sqlite_state(db_bytes, wal_bytes, page_size):
    """Lets SQLite recover db+wal in a scratch directory, checkpoints, and returns
    (page_count, [page bytes...]) of the resulting database."""
    d = tempfile.mkdtemp(prefix="walstate-")
    try:
        path = os.path.join(d, "x.db")
        with open(path, "wb") as f:
            f.write(db_bytes)
        if wal_bytes is not None:
            with open(path + "-wal", "wb") as f:
                f.write(wal_bytes)
        c = sqlite3.connect(path, isolation_level=None)
        check(c.execute("pragma quick_check").fetchone()[0] == "ok", "quick_check")
        n = c.execute("pragma page_count").fetchone()[0]
        busy, _, _ = c.execute("pragma wal_checkpoint(TRUNCATE)").fetchone()
        check(busy == 0, "checkpoint of the copy was blocked")
        c.close()
        with open(path, "rb") as f:
            data = f.read()
        check(len(data) == n * page_size,
              "checkpointed copy is %d bytes, page_count %d" % (len(data), n))
        return n, [data[i * page_size:(i + 1) * page_size] for i in range(n)]
    finally:
        shutil.rmtree(d)


# ---------------------------------------------------------------------------
# Writing WALs
# ---------------------------------------------------------------------------


class Writer:
    """One writing connection on a fresh WAL database in a scratch directory.

    The database starts in rollback-journal mode with one small table so that the
    database file is never empty: SQLite deletes a -wal file next to a zero-length
    database when it opens it, which would defeat the recovery checks.
    """

    def __init__(self, workdir, name, page_size, cache_size=None):
        self.page_size = page_size
        self.path = os.path.join(workdir, name + ".db")
        self.wal = self.path + "-wal"
        c = sqlite3.connect(self.path, isolation_level=None)
        self.c = c
        c.execute("pragma page_size=%d" % page_size)
        c.execute("create table meta(k integer primary key, v text)")
        c.execute("insert into meta values(0, 'base')")
        check(c.execute("pragma journal_mode=wal").fetchone()[0] == "wal", "WAL mode")
        c.execute("pragma wal_autocheckpoint=0")
        if cache_size is not None:
            c.execute("pragma cache_size=%d" % cache_size)
        check(c.execute("pragma page_size").fetchone()[0] == page_size, "page size")
        check(not os.path.exists(self.wal) or os.path.getsize(self.wal) == 0,
              "WAL is empty before the first transaction")
        self.base_db = self.read(self.path)
        # One entry per COMMIT: what the writer saw and copies of both files.
        self.commits = []

    @staticmethod
    def read(path):
        with open(path, "rb") as f:
            return f.read()

    def tx(self, *stmts):
        c = self.c
        c.execute("begin immediate")
        for s in stmts:
            if isinstance(s, tuple):
                c.execute(*s).fetchall()
            else:
                c.execute(s).fetchall()
        c.execute("commit")
        self.commits.append({
            "page_count": c.execute("pragma page_count").fetchone()[0],
            "db": self.read(self.path),
            "wal": self.read(self.wal),
        })

    def wal_now(self):
        return self.read(self.wal)


def commit_records(h, commits, db_bytes_for, wal_for, page_size, expected_counts):
    """Cross-checks the parsed commits against SQLite and returns manifest records.

    db_bytes_for(k)/wal_for(k): the database file and WAL as they were right after
    commit k (1-based); k=0 is the state before the first commit of this WAL.
    """
    check(len(commits) == len(expected_counts),
          "parsed %d commits, SQLite made %d" % (len(commits), len(expected_counts)))
    prev_n, prev = sqlite_state(db_bytes_for(0), wal_for(0), page_size)
    out = []
    for k, (c, count) in enumerate(zip(commits, expected_counts), start=1):
        n, pages = sqlite_state(db_bytes_for(k), wal_for(k), page_size)
        check(c["db_pages"] == count == n,
              "commit %d: commit frame says %d pages, writer page_count %d, recovery %d"
              % (k, c["db_pages"], count, n))
        latest = {}
        for pgno, frame, crc in c["frames"]:
            latest[pgno] = (frame, crc)
        for pgno, (frame, crc) in latest.items():
            check(pgno <= n, "commit %d wrote page %d beyond db size %d" % (k, pgno, n))
            check(zlib.crc32(pages[pgno - 1]) == crc,
                  "commit %d: frame %d differs from SQLite's page %d" % (k, frame, pgno))
        changed = {i + 1 for i in range(n)
                   if i >= prev_n or pages[i] != prev[i]}
        check(changed <= set(latest),
              "commit %d: pages %s changed but were not written"
              % (k, sorted(changed - set(latest))))
        out.append({
            "db_pages": c["db_pages"],
            "first_frame": c["first_frame"],
            "end_frame": c["end_frame"],
            "pages": [p for p, _, _ in c["frames"]],
            "latest_frames": sorted([p, f] for p, (f, _) in latest.items()),
            "end_checksum": list(c["end_checksum"]),
            "page_crc32": {str(p): zlib.crc32(pages[p - 1]) for p in sorted(latest)},
        })
        prev_n, prev = n, pages
    return out


def entry(name, buf, description, commits_records, tail, h, visible, **extra):
    kind = "clean"
    if tail["stale_frames"]:
        kind = "stale"
    if tail["uncommitted_frames"] or tail["partial_frame_bytes"]:
        kind = "uncommitted" if not tail["partial_frame_bytes"] else "torn"
    if tail["stop_reason"] == "checksum_mismatch":
        kind = "corrupt"
    e = {
        "file": name + ".wal",
        "description": description,
        "file_size": len(buf),
        "magic": "%#010x" % h["magic"],
        "big_endian": h["big_endian"],
        "page_size": h["page_size"],
        "checkpoint_seq": h["checkpoint_seq"],
        "salt1": h["salt1"],
        "salt2": h["salt2"],
        "header_checksum": list(h["checksum"]),
        "commits": commits_records,
        "tail": kind,
        "torn_tail": kind in ("torn", "uncommitted", "corrupt"),
        "complete_frames": tail["complete_frames"],
        "partial_frame_bytes": tail["partial_frame_bytes"],
        "valid_frames": tail["valid_frames"],
        "uncommitted_frames": tail["uncommitted_frames"],
        "stop_frame": tail["stop_frame"],
        "stop_reason": tail["stop_reason"],
        "stale_frames": tail["stale_frames"],
        "sqlite_visible_commits": visible,
    }
    e.update(extra)
    check(len(buf) < MAX_FILE, "%s is %d bytes" % (name, len(buf)))
    return e


def single_generation(w, name, description):
    """Manifest entry for a writer whose WAL never restarted; returns (entry, wal)."""
    buf = w.wal_now()
    h, commits, tail = parse_wal(buf)
    check(len(commits) == len(w.commits), "%s: one commit frame per COMMIT" % name)
    for k, rec in enumerate(w.commits):
        end = WAL_HDR + commits[k]["end_frame"] * (h["page_size"] + FRAME_HDR)
        check(len(rec["wal"]) >= end and rec["wal"][:end] == buf[:end],
              "%s: the WAL after commit %d is not a prefix of the final WAL" % (name, k + 1))
    recs = commit_records(
        h, commits,
        lambda k: w.base_db if k == 0 else w.commits[k - 1]["db"],
        lambda k: None if k == 0 else w.commits[k - 1]["wal"],
        h["page_size"],
        [c["page_count"] for c in w.commits])
    check(tail["stop_reason"] == "end_of_file", "%s: unexpected tail %s" % (name, tail))
    return entry(name, buf, description, recs, tail, h, len(commits)), buf


def variant(name, buf, base, base_w, description, expect_commits, modification):
    """A damaged or rewritten copy of `base` (an entry made by single_generation)."""
    h, commits, tail = parse_wal(buf)
    check(len(commits) == expect_commits,
          "%s: parser finds %d commits, expected %d" % (name, len(commits), expect_commits))
    # SQLite must see exactly the state after `expect_commits` commits.
    want = sqlite_state(base_w.commits[expect_commits - 1]["db"],
                        base_w.commits[expect_commits - 1]["wal"], h["page_size"])
    got = sqlite_state(base_w.base_db, buf, h["page_size"])
    check(got == want, "%s: SQLite does not see the state after commit %d"
          % (name, expect_commits))
    recs = commit_records(
        h, commits,
        lambda k: base_w.base_db if k == 0 else base_w.commits[k - 1]["db"],
        lambda k: None if k == 0 else base_w.commits[k - 1]["wal"],
        h["page_size"],
        [c["page_count"] for c in base_w.commits[:expect_commits]])
    if not h["big_endian"]:
        for r, b in zip(recs, base["commits"]):
            check(r == b, "%s: commit differs from %s" % (name, base["file"]))
    return entry(name, buf, description, recs, tail, h, expect_commits,
                 derived_from=base["file"], modification=modification)


def blob(n, seed):
    x = seed * 2654435761 % 2**32 or 1
    out = bytearray()
    for _ in range(n):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out.append(x & 0xFF)
    return bytes(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "testdata", "wal"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="make-testdata-")
    files = {}
    entries = []
    try:
        # (a) page size 4096, 5 transactions.
        a = Writer(work, "a", 4096)
        a.tx("create table t(id integer primary key, v blob)")
        a.tx(("insert into t(v) values(?)", ("one",)))
        a.tx(("insert into t(v) values(?)", ("two",)),
             ("insert into t(v) values(?)", ("three",)),
             ("insert into t(v) values(?)", ("four",)))
        a.tx("update t set v = 'ONE' where id = 1")
        # Spans several frames: overflow pages, the table leaf, and page 1
        # (the database grows, which updates the in-header size).
        a.tx(("insert into t(v) values(?)", (blob(10000, 5),)))
        ea, wa = single_generation(
            a, "a-ps4096-5tx",
            "page size 4096, 5 transactions; the 5th spans several frames")
        check(len(ea["commits"][-1]["pages"]) > 1, "a: last commit has several frames")
        entries.append(ea)
        files["a-ps4096-5tx"] = wa

        # (b) page size 1024, cache_size=1: spills, one page written twice.
        b = Writer(work, "b", 1024, cache_size=1)
        b.tx("create table t1(id integer primary key, v text)")
        b.tx(*[("insert into t1(v) values(?)", ("x" * 200,)) for _ in range(40)])
        b.tx("create table t2(id integer primary key, v)")
        b.tx("insert into t2 values(1, 0)")
        b.tx("update t2 set v = v + 1", "update t1 set v = upper(v)",
             "update t2 set v = v + 1")
        eb, wb = single_generation(
            b, "b-ps1024-spill",
            "page size 1024, cache_size=1: dirty pages spill to the WAL before "
            "COMMIT; the last transaction writes its commit page twice")
        last = eb["commits"][-1]["pages"]
        check(len(last) != len(set(last)), "b: a page written twice in one commit")
        entries.append(eb)
        files["b-ps1024-spill"] = wb

        # (h) b's connection in the middle of another spilling transaction.
        c = b.c
        c.execute("begin immediate")
        c.execute("update t1 set v = lower(v)")
        wh = b.wal_now()
        c.execute("rollback")
        check(b.wal_now()[:len(wb)] == wb, "h: rollback left b's frames alone")
        _, _, htail = parse_wal(wh)
        check(htail["uncommitted_frames"] > 0, "h: spilled frames before COMMIT")
        eh = variant("h-ps1024-uncommitted", wh, eb, b,
                     "b's WAL copied while a further transaction had spilled "
                     "pages but not committed (uncommitted tail written by SQLite)",
                     len(eb["commits"]),
                     "copied during an open transaction after cache spill; then rolled back")
        entries.append(eh)
        files["h-ps1024-uncommitted"] = wh

        # (c) page size 65536, 2 transactions.
        cw = Writer(work, "c", 65536)
        cw.tx(("insert into meta values(1, ?)", ("sixty-four k",)))
        cw.tx("create table t(id integer primary key, v)")
        ec, wc = single_generation(cw, "c-ps65536-2tx",
                                   "page size 65536 (header word 0x00010000), 2 transactions")
        check(struct.unpack(">I", wc[8:12])[0] == 65536, "c: page size word")
        entries.append(ec)
        files["c-ps65536-2tx"] = wc

        # (d) checkpoint + restart: new generation over stale frames.
        d = Writer(work, "d", 4096)
        d.tx("create table t(id integer primary key, v blob)")
        for i in range(5):
            d.tx(("insert into t(v) values(?)", (blob(5000, 10 + i),)))
        gen1 = d.wal_now()
        h1, c1, t1 = parse_wal(gen1)
        check(len(c1) == 6, "d: 6 commits in the first generation")
        busy, log, done = d.c.execute("pragma wal_checkpoint(PASSIVE)").fetchone()
        check(busy == 0 and log == done == t1["valid_frames"], "d: full checkpoint")
        gen1_commits = len(d.commits)
        db_after_checkpoint = d.read(d.path)
        d.tx(("insert into meta values(2, ?)", ("after restart",)))
        d.tx("update meta set v = 'restarted' where k = 0")
        wd = d.wal_now()
        hd, cd, td = parse_wal(wd)
        check(hd["salt1"] == (h1["salt1"] + 1) & 0xFFFFFFFF, "d: salt1 incremented")
        check(hd["checkpoint_seq"] == h1["checkpoint_seq"] + 1, "d: checkpoint seq")
        check(len(wd) == len(gen1), "d: the file was overwritten in place")
        check(td["stop_reason"] == "salt_mismatch" and td["stale_frames"] > 0,
              "d: stale frames after the new ones: %s" % td)
        gen2 = d.commits[gen1_commits:]
        recs = commit_records(
            hd, cd,
            lambda k: db_after_checkpoint if k == 0 else gen2[k - 1]["db"],
            lambda k: None if k == 0 else gen2[k - 1]["wal"],
            4096, [x["page_count"] for x in gen2])
        # Checkpointed db of generation 1 alone equals the state after its last commit.
        check(sqlite_state(db_after_checkpoint, None, 4096)
              == sqlite_state(d.base_db, gen1, 4096), "d: checkpoint backfilled everything")
        ed = entry("d-restart-stale", wd,
                   "checkpoint (PASSIVE, complete) then 2 more transactions: the WAL "
                   "restarted from frame 0 with salt1+1 and checkpoint_seq 1; frames "
                   "of the previous generation follow the new ones",
                   recs, td, hd, len(cd),
                   previous_generation={
                       "salt1": h1["salt1"], "salt2": h1["salt2"],
                       "checkpoint_seq": h1["checkpoint_seq"],
                       "frames": t1["valid_frames"], "commits": len(c1)})
        entries.append(ed)
        files["d-restart-stale"] = wd

        # (e) a with the last frame cut in half.
        fs = ea["page_size"] + FRAME_HDR
        last_off = WAL_HDR + (ea["complete_frames"] - 1) * fs
        we = wa[:last_off + fs // 2]
        entries.append(variant("e-torn-tail", we, ea, a,
                               "a with its last frame (the 5th commit frame) cut in half",
                               4, "truncated to %d bytes (last frame halved)" % len(we)))
        files["e-torn-tail"] = we

        # (f) a with one byte flipped inside the 3rd transaction's first page.
        third = ea["commits"][2]["first_frame"]
        flip_at = WAL_HDR + third * fs + FRAME_HDR + 2000
        wf = bytearray(wa)
        wf[flip_at] ^= 0xFF
        wf = bytes(wf)
        entries.append(variant("f-flipped-byte", wf, ea, a,
                               "a with one byte of the 3rd commit's page data flipped",
                               2, "byte at offset %d xor 0xff (frame %d, page offset 2000)"
                               % (flip_at, third)))
        files["f-flipped-byte"] = wf

        # (g) a rewritten with big-endian checksums.
        wg = rewrite_big_endian(wa)
        entries.append(variant("g-big-endian", wg, ea, a,
                               "a with magic 0x377f0683 and all checksums recomputed "
                               "over big-endian words",
                               5, "magic set to 0x377f0683; header checksum and every "
                               "frame checksum recomputed big-endian by this script"))
        files["g-big-endian"] = wg

        for w in (a, b, cw, d):
            w.c.close()
    finally:
        shutil.rmtree(work)

    for name, buf in files.items():
        with open(os.path.join(args.out, name + ".wal"), "wb") as f:
            f.write(buf)
    manifest = {
        "generator": "scripts/make-testdata.py",
        "sqlite_version": sqlite3.sqlite_version,
        "notes": [
            "Frame indexes are 0-based; end_frame is the index after the commit frame.",
            "end_checksum is the running checksum stored in the commit frame's header.",
            "page_crc32 maps each page a commit wrote to zlib.crc32 of that page as "
            "SQLite rebuilds the database after that commit.",
            "tail: clean | stale (frames of an older generation) | uncommitted "
            "(valid frames after the last commit) | torn (a partial frame) | "
            "corrupt (a frame failing its checksum); torn_tail is true for the last three.",
        ],
        "files": sorted(entries, key=lambda e: e["file"]),
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    for e in manifest["files"]:
        print("%-26s %7d bytes  page %5d  commits %d  tail %s"
              % (e["file"], e["file_size"], e["page_size"], len(e["commits"]), e["tail"]))


if __name__ == "__main__":
    main()
