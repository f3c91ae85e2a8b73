//! `[storage.backup]`: one database backed up to a bucket, in the shape an
//! application's own config file may already have (docs/config.md).

use serde::Deserialize;

use super::locate::{Mistake, Seg};
use crate::crypto::EncryptionConfig;
use crate::replica::{R2Account, ReplicaUrl};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub backup: Option<BackupSection>,
}

/// The `[storage.backup]` table. Public so that an application can put it in
/// its own config struct and hand it to [`crate::Replicator`]'s builder.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    /// Absent: true (the table's presence asks for backups).
    pub enabled: Option<bool>,
    /// The SQLite file (optional when the application names it in code).
    pub database: Option<String>,
    /// `r2://BUCKET/PREFIX` with a `[cloudflare]` table, else `s3://BUCKET/PREFIX`.
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    /// Any replica URL instead of `bucket` (a directory, `s3://...?endpoint=`).
    pub url: Option<String>,
    /// Full snapshot every this many seconds (`snapshot_interval`).
    pub interval_seconds: Option<u64>,
    /// Same as the top-level `retention_count`.
    pub retention_count: Option<usize>,
    pub encryption: Option<EncryptionConfig>,
}

const AT: [Seg; 2] = [Seg::Key("storage"), Seg::Key("backup")];

fn key(k: &'static str) -> Vec<Seg> {
    let mut v = AT.to_vec();
    v.push(Seg::Key(k));
    v
}

/// Whether the section asks for backups.
pub fn enabled(b: &BackupSection) -> bool {
    b.enabled.unwrap_or(true)
}

/// Whether the section asks for a replica (else it only holds settings,
/// such as `[storage.backup.encryption]`).
pub fn names_a_destination(b: &BackupSection) -> bool {
    b.enabled == Some(true)
        || b.bucket.is_some()
        || b.url.is_some()
        || b.database.is_some()
        || b.prefix.is_some()
}

/// The replica the section names. `cloudflare` tells whether the config has
/// a `[cloudflare]` table (then a bare bucket is an R2 bucket).
pub fn replica(
    b: &BackupSection,
    account: &R2Account,
    cloudflare: bool,
) -> Result<ReplicaUrl, Mistake> {
    let url = match (&b.bucket, &b.url) {
        (Some(_), Some(_)) => {
            return Err(Mistake::new(&key("url"), "give bucket or url, not both"))
        }
        (None, None) => {
            return Err(Mistake::new(
                &AT,
                "needs bucket = \"NAME\" (or url = \"REPLICA_URL\"), or enabled = false",
            ))
        }
        (None, Some(url)) => {
            if b.prefix.is_some() {
                return Err(Mistake::new(
                    &key("prefix"),
                    "applies to bucket only: put the prefix in the url",
                ));
            }
            return ReplicaUrl::parse_with(url, account)
                .map_err(|e| Mistake::new(&key("url"), e.to_string()));
        }
        (Some(bucket), None) => bucket_url(bucket, b.prefix.as_deref(), cloudflare),
    };
    let k = if url.contains('?') {
        "bucket"
    } else {
        "prefix"
    };
    ReplicaUrl::parse_with(&url, account).map_err(|e| Mistake::new(&key(k), e.to_string()))
}

fn bucket_url(bucket: &str, prefix: Option<&str>, cloudflare: bool) -> String {
    let scheme = if cloudflare { "r2" } else { "s3" };
    let prefix = prefix.unwrap_or("").trim_matches('/');
    format!("{scheme}://{bucket}/{prefix}")
}

/// `interval_seconds` as a snapshot interval.
pub fn interval(b: &BackupSection) -> Result<Option<std::time::Duration>, Mistake> {
    match b.interval_seconds {
        None => Ok(None),
        Some(0) => Err(Mistake::new(
            &key("interval_seconds"),
            "must be at least 1 (86400 is daily)",
        )),
        Some(s) => Ok(Some(std::time::Duration::from_secs(s))),
    }
}

/// The key path of one of the section's keys, for conflicts found elsewhere.
pub fn key_path(k: &'static str) -> Vec<Seg> {
    key(k)
}

/// The name of the section's replica: its URL's scheme, as for `[[db.replica]]`.
pub fn replica_name(b: &BackupSection, cloudflare: bool) -> &'static str {
    match (&b.url, cloudflare) {
        (Some(url), _) => super::default_name(url),
        (None, true) => "r2",
        (None, false) => "s3",
    }
}
