//! The commits found past the shipped position, kept between looks at the
//! WAL: while `upload_interval` holds shipping back, each wake-up reads only
//! the frames written since the last look instead of everything unshipped.

use std::path::{Path, PathBuf};

use crate::error::CaptureError;
use crate::wal::{WalCommit, WalFile, WalHeader};

/// Where a scan started: the file, its WAL generation and the position.
#[derive(Debug)]
struct ScanStart {
    path: PathBuf,
    salts: (u32, u32),
    frame: u32,
    seed: (u32, u32),
}

impl ScanStart {
    fn matches(&self, path: &Path, salts: (u32, u32), frame: u32, seed: (u32, u32)) -> bool {
        (self.salts, self.frame, self.seed) == (salts, frame, seed) && self.path == path
    }
}

/// Commits found by earlier looks, from one start.
#[derive(Debug)]
pub(super) struct Scanned {
    start: ScanStart,
    commits: Vec<WalCommit>,
}

/// The complete commits of `wal` from frame `start` (whose running checksum
/// before it is `seed`), reusing `kept` when it began at the same place and
/// its last commit is still in the file as it was read (the running checksum
/// covers every frame before it). Returns the commits with what to keep.
pub(super) fn scan_from(
    kept: Option<Scanned>,
    wal: &WalFile,
    path: &Path,
    h: &WalHeader,
    start: u32,
    seed: (u32, u32),
) -> Result<Scanned, CaptureError> {
    let salts = (h.salt1, h.salt2);
    let (here, mut commits) = match kept {
        Some(k) if k.start.matches(path, salts, start, seed) => (k.start, k.commits),
        _ => {
            let here = ScanStart {
                path: path.to_path_buf(),
                salts,
                frame: start,
                seed,
            };
            (here, Vec::new())
        }
    };
    let (from, sum) = match commits.last() {
        Some(c) if wal.stored_checksum(h, c.end_frame - 1)? == Some(c.end_checksum) => {
            (c.end_frame, c.end_checksum)
        }
        _ => {
            commits.clear();
            (start, seed)
        }
    };
    commits.extend(wal.scan_commits(h, from, sum)?);
    Ok(Scanned {
        start: here,
        commits,
    })
}

impl Scanned {
    pub(super) fn commits(&self) -> &[WalCommit] {
        &self.commits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// A database in WAL mode with `n` commits in its WAL, which is never
    /// checkpointed while the connection lives.
    fn app(n: usize) -> (tempfile::TempDir, Connection, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("app.db")).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(v BLOB);",
        )
        .unwrap();
        commit(&conn, n);
        let wal = dir.path().join("app.db-wal");
        (dir, conn, wal)
    }

    fn commit(conn: &Connection, n: usize) {
        for _ in 0..n {
            conn.execute("INSERT INTO t VALUES (randomblob(300))", [])
                .unwrap();
        }
    }

    fn full(path: &Path) -> Vec<WalCommit> {
        let wal = WalFile::open(path).unwrap();
        let h = wal.header().unwrap().unwrap();
        wal.scan_commits(&h, 0, h.checksum).unwrap()
    }

    fn look(kept: Option<Scanned>, path: &Path) -> Scanned {
        let wal = WalFile::open(path).unwrap();
        let h = wal.header().unwrap().unwrap();
        scan_from(kept, &wal, path, &h, 0, h.checksum).unwrap()
    }

    #[test]
    fn later_looks_find_what_a_full_scan_finds() {
        let (_dir, conn, wal) = app(5);
        let first = look(None, &wal);
        assert_eq!(first.commits(), full(&wal).as_slice());
        let before = first.commits().len();
        commit(&conn, 7);
        let second = look(Some(first), &wal);
        assert_eq!(second.commits().len(), before + 7);
        assert_eq!(second.commits(), full(&wal).as_slice());
    }

    #[test]
    fn kept_commits_no_longer_in_the_file_are_scanned_again() {
        let (_dir, _conn, wal) = app(6);
        let kept = look(None, &wal);
        let last = kept.commits().last().unwrap().end_frame;
        // Damage the last commit's frame: its stored checksum no longer matches
        // what was read, so nothing kept may be trusted.
        let h = WalFile::open(&wal).unwrap().header().unwrap().unwrap();
        let offset = 32 + u64::from(last - 1) * h.frame_size() + 16;
        let file = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0xff; 8], offset).unwrap();
        let again = look(Some(kept), &wal);
        assert_eq!(again.commits(), full(&wal).as_slice());
        assert!(again.commits().iter().all(|c| c.end_frame < last));
    }

    #[test]
    fn a_scan_from_another_start_keeps_nothing() {
        let (_dir, _conn, wal) = app(4);
        let kept = look(None, &wal);
        let first = kept.commits()[0].clone();
        let file = WalFile::open(&wal).unwrap();
        let h = file.header().unwrap().unwrap();
        let later = scan_from(
            Some(kept),
            &file,
            &wal,
            &h,
            first.end_frame,
            first.end_checksum,
        )
        .unwrap();
        assert_eq!(
            later.commits(),
            file.scan_commits(&h, first.end_frame, first.end_checksum)
                .unwrap()
                .as_slice()
        );
        assert!(!later.commits().contains(&first));
    }
}
