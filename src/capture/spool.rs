//! Temporary files in the database's state directory (snapshot and compaction
//! spools), removed when dropped.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

pub(crate) struct Spool {
    pub path: PathBuf,
    pub file: File,
}

impl Spool {
    /// A new file `<kind>-<random>.tmp` in `dir`.
    pub(crate) fn create(dir: &Path, kind: &str) -> std::io::Result<Spool> {
        let path = dir.join(format!("{kind}-{:016x}.tmp", rand::random::<u64>()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Spool { path, file })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
