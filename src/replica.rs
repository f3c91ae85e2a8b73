//! Replica locations: parsing a replica URL and opening its object store.

use std::path::PathBuf;
use std::sync::Arc;

use crate::store::{LocalStore, ObjectStore};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaUrl {
    /// A local directory (`file:///abs/dir` or a bare path).
    Local(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("replica URL {url:?}: {reason}")]
    Invalid { url: String, reason: String },
}

impl ReplicaUrl {
    pub fn parse(url: &str) -> Result<ReplicaUrl, UrlError> {
        let invalid = |reason: &str| UrlError::Invalid {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.is_empty() {
            return Err(invalid("empty"));
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid(
                    "a file:// URL needs an absolute path, like file:///var/backups/app",
                ));
            }
            return Ok(ReplicaUrl::Local(PathBuf::from(
                percent_decode(rest).map_err(invalid)?,
            )));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?}: use file:///abs/dir or a directory path"
            )));
        }
        let path = std::path::absolute(url).map_err(|e| invalid(&e.to_string()))?;
        Ok(ReplicaUrl::Local(path))
    }

    /// Opens the store. Nothing is created until the first write.
    pub fn open(&self) -> Arc<dyn ObjectStore> {
        match self {
            ReplicaUrl::Local(path) => Arc::new(LocalStore::new(path.clone())),
        }
    }
}

impl std::fmt::Display for ReplicaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaUrl::Local(p) => write!(f, "file://{}", p.display()),
        }
    }
}

fn percent_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "invalid %-escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "path is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_urls_and_paths() {
        assert_eq!(
            ReplicaUrl::parse("file:///a/b%20c").unwrap(),
            ReplicaUrl::Local("/a/b c".into())
        );
        assert_eq!(
            ReplicaUrl::parse("/x/y").unwrap(),
            ReplicaUrl::Local("/x/y".into())
        );
        assert!(
            matches!(ReplicaUrl::parse("rel").unwrap(), ReplicaUrl::Local(p) if p.is_absolute())
        );
        assert!(ReplicaUrl::parse("file://relative").is_err());
        assert!(ReplicaUrl::parse("ftp://host/x").is_err());
        assert!(ReplicaUrl::parse("").is_err());
    }
}
