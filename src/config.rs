//! The configuration file (TOML). Every key, its default and meaning:
//! `docs/config.md`. Mistakes are reported with the file, line and key.

mod locate;
mod storage;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::capture::CaptureOptions;
use crate::crypto::EncryptionConfig;
use crate::monitor::MonitorConfig;
use crate::replica::{R2Account, ReplicaUrl};
use crate::retention::RetentionPolicy;
use crate::schedule::TimeOfDay;

use locate::{Mistake, Seg};
pub use storage::BackupSection;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    snapshot_interval: Option<String>,
    snapshot_at: Option<String>,
    /// Older name of `retention_count`.
    retain_snapshots: Option<usize>,
    retention_count: Option<usize>,
    retention_age: Option<String>,
    keep_daily: Option<usize>,
    keep_weekly: Option<usize>,
    keep_monthly: Option<usize>,
    min_snapshots: Option<usize>,
    checkpoint_pages: Option<u32>,
    compact_segments: Option<usize>,
    upload_interval: Option<String>,
    outage_wal_hold: Option<String>,
    outage_wal_max_mb: Option<u64>,
    cloudflare: Option<RawCloudflare>,
    #[serde(default)]
    db: Vec<RawDb>,
    encryption: Option<EncryptionConfig>,
    storage: Option<storage::RawStorage>,
    // Monitoring (docs/monitoring.md).
    health_warning_after: Option<String>,
    health_critical_after: Option<String>,
    lag_warning_after: Option<String>,
    lag_critical_after: Option<String>,
    verify_interval: Option<String>,
    metrics_addr: Option<String>,
    webhook_url: Option<String>,
    webhook_heartbeat: Option<bool>,
}

/// The Cloudflare account for `r2://` replicas (the keys of an R2 API token).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloudflare {
    account_id: Option<String>,
    r2_access_key_id: Option<String>,
    r2_secret_access_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDb {
    path: String,
    #[serde(default)]
    replica: Vec<RawReplica>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplica {
    /// Unique within its database; default: the URL's scheme (`file`, `s3`, `r2`).
    name: Option<String>,
    url: String,
    /// This replica's `upload_interval` (else the global one).
    upload_interval: Option<String>,
    /// Keys for an S3 replica (else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`).
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
}

/// One database and where it is replicated.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub path: PathBuf,
    /// At least one, in the order the file lists them (the first is the
    /// primary: see `docs/config.md`, several replicas).
    pub replicas: Vec<ReplicaConfig>,
}

/// One `[[db.replica]]`: a destination with its own position, retries and lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// Unique within the database (`restore --replica NAME`, `status`).
    pub name: String,
    pub url: ReplicaUrl,
    /// This replica's `upload_interval`; `None`: the global one, else the
    /// store's default.
    pub upload_interval: Option<Duration>,
}

impl ReplicaConfig {
    /// A replica named after its URL's scheme (`file`, `s3`, `r2`).
    pub fn unnamed(raw_url: &str, url: ReplicaUrl) -> ReplicaConfig {
        ReplicaConfig {
            name: default_name(raw_url).to_string(),
            url,
            upload_interval: None,
        }
    }
}

/// The default name of a replica: its URL's scheme.
pub fn default_name(raw_url: &str) -> &'static str {
    if raw_url.starts_with("s3://") {
        "s3"
    } else if raw_url.starts_with("r2://") {
        "r2"
    } else {
        "file"
    }
}

/// Whether `name` can name a replica: 1 to 64 letters, digits, `-`, `_`, `.`,
/// starting with a letter or digit (it names a directory in the state
/// directory too).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Debug, Clone)]
pub struct Config {
    pub capture: CaptureOptions,
    pub dbs: Vec<DbConfig>,
    /// `[encryption]` (or `[storage.backup.encryption]`), keys not yet parsed.
    pub encryption: Option<EncryptionConfig>,
    pub monitor: MonitorConfig,
    /// `[storage.backup] enabled = false`: back up nothing (`dbs` is empty).
    pub backups_disabled: bool,
    /// The `[storage.backup]` replica when the table names no `database`
    /// (an application that knows its file gives it to the builder).
    pub backup_replica: Option<ReplicaConfig>,
}

impl Config {
    pub fn load(path: &Path, expand_env: bool) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text, expand_env)
    }

    pub fn parse(path: &Path, text: &str, expand_env: bool) -> Result<Config, ConfigError> {
        let unexpanded = text;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let text = if expand_env {
            expand(text).map_err(invalid)?
        } else {
            text.to_string()
        };
        let raw: RawConfig =
            toml::from_str(&text).map_err(|e| invalid(parse_error(unexpanded, &text, e)))?;
        // Lines come from the unexpanded text: a ${VAR} holding a newline
        // would shift them, and a line number never reveals a value.
        from_raw(raw).map_err(|m| invalid(m.render(unexpanded)))
    }
}

fn from_raw(mut raw: RawConfig) -> Result<Config, Mistake> {
    let backup = raw.storage.as_mut().and_then(|s| s.backup.take());
    let capture = capture_options(&raw, backup.as_ref())?;
    let account = r2_account(raw.cloudflare.as_ref());
    let mut dbs: Vec<DbConfig> = Vec::new();
    for (i, db) in raw.db.iter().enumerate() {
        let path = PathBuf::from(&db.path);
        if let Some(k) = dbs.iter().position(|d| same_path(&d.path, &path)) {
            return Err(Mistake::new(
                &[Seg::Key("db"), Seg::Index(i), Seg::Key("path")],
                format!(
                    "{} is already listed as db[{k}]: list all its replicas under one [[db]]",
                    db.path
                ),
            ));
        }
        dbs.push(DbConfig {
            path,
            replicas: db_replicas(i, db, &account)?,
        });
    }
    distinct_locations(&dbs)?;
    let monitor = monitor_config(&raw)?;
    let nested = backup.as_ref().and_then(|b| b.encryption.clone());
    let encryption = crate::crypto::settings::pick_table(raw.encryption.take(), nested)
        .map_err(|m| Mistake::new(&storage::key_path("encryption"), m))?;
    let mut config = Config {
        capture,
        dbs,
        encryption,
        monitor,
        backups_disabled: false,
        backup_replica: None,
    };
    if let Some(b) = &backup {
        apply_backup(&mut config, b, &account, raw.cloudflare.is_some())?;
    }
    Ok(config)
}

/// Adds the `[storage.backup]` database, or with `enabled = false` removes
/// every database.
fn apply_backup(
    config: &mut Config,
    b: &BackupSection,
    account: &R2Account,
    cloudflare: bool,
) -> Result<(), Mistake> {
    if !storage::enabled(b) {
        config.backups_disabled = true;
        config.dbs.clear();
        return Ok(());
    }
    if !storage::names_a_destination(b) {
        // Only [storage.backup.encryption] (or interval/retention) is set.
        return Ok(());
    }
    let replica = storage::replica(b, account, cloudflare)?;
    match &b.database {
        Some(path) => {
            let path = PathBuf::from(path);
            if let Some(k) = config.dbs.iter().position(|d| same_path(&d.path, &path)) {
                return Err(Mistake::new(
                    &storage::key_path("database"),
                    format!(
                        "{} is listed as db[{k}] too: give it once (add this bucket as \
                         another [[db.replica]] there)",
                        path.display()
                    ),
                ));
            }
            let name = storage::replica_name(b, cloudflare);
            if let Some((k, j)) = location_used(&config.dbs, &replica) {
                return Err(Mistake::new(
                    &storage::key_path(if b.url.is_some() { "url" } else { "bucket" }),
                    format!("db[{k}].replica[{j}] replicates to the same location: {SHARED}"),
                ));
            }
            config.dbs.push(DbConfig {
                path,
                replicas: vec![ReplicaConfig {
                    name: name.to_string(),
                    url: replica,
                    upload_interval: None,
                }],
            });
        }
        None => {
            config.backup_replica = Some(ReplicaConfig {
                name: storage::replica_name(b, cloudflare).to_string(),
                url: replica,
                upload_interval: None,
            })
        }
    }
    Ok(())
}

fn capture_options(
    raw: &RawConfig,
    backup: Option<&BackupSection>,
) -> Result<CaptureOptions, Mistake> {
    let mut capture = CaptureOptions::default();
    if let Some(s) = &raw.snapshot_interval {
        capture.snapshot_interval = parse_duration(s).ok_or_else(|| {
            Mistake::at(
                "snapshot_interval",
                format!("{s:?} is not a duration: use a number with s, m, h or d, like \"24h\""),
            )
        })?;
    }
    if let Some(d) = backup.map(storage::interval).transpose()?.flatten() {
        if raw.snapshot_interval.is_some() {
            return Err(Mistake::new(
                &storage::key_path("interval_seconds"),
                "snapshot_interval is set too: give one",
            ));
        }
        capture.snapshot_interval = d;
    }
    if let Some(s) = &raw.upload_interval {
        capture.upload_interval = Some(parse_duration(s).ok_or_else(|| {
            Mistake::at(
                "upload_interval",
                format!("{s:?} is not a duration: use one like \"1s\" or \"500ms\""),
            )
        })?);
    }
    if let Some(s) = &raw.snapshot_at {
        capture.snapshot_at = Some(TimeOfDay::parse(s).ok_or_else(|| {
            Mistake::at(
                "snapshot_at",
                format!("{s:?}: use HH:MM in UTC, or with an offset like \"03:00+01:00\""),
            )
        })?);
    }
    let backup_count = backup.and_then(|b| b.retention_count);
    capture.retention = retention_policy(raw, backup_count)?;
    if let Some(n) = raw.compact_segments {
        capture.compact_segments = n;
    }
    if let Some(n) = raw.checkpoint_pages {
        capture.checkpoint_pages = n.max(1);
    }
    if let Some(s) = &raw.outage_wal_hold {
        capture.outage_wal_hold =
            Some(parse_duration(s).filter(|d| !d.is_zero()).ok_or_else(|| {
                Mistake::at(
                    "outage_wal_hold",
                    format!("{s:?}: use a duration like \"6h\""),
                )
            })?);
    }
    if let Some(mb) = raw.outage_wal_max_mb {
        if mb == 0 {
            return Err(Mistake::at("outage_wal_max_mb", "must be at least 1"));
        }
        capture.outage_wal_max_bytes = Some(mb.saturating_mul(1 << 20));
    }
    Ok(capture)
}

/// The replicas of `[[db]]` number `i`, named and checked.
fn db_replicas(i: usize, db: &RawDb, account: &R2Account) -> Result<Vec<ReplicaConfig>, Mistake> {
    let at = |j: usize, k: &'static str| {
        let mut key = vec![
            Seg::Key("db"),
            Seg::Index(i),
            Seg::Key("replica"),
            Seg::Index(j),
        ];
        if !k.is_empty() {
            key.push(Seg::Key(k));
        }
        key
    };
    if db.replica.is_empty() {
        return Err(Mistake::new(
            &[Seg::Key("db"), Seg::Index(i)],
            format!("{} has no [[db.replica]] with a url", db.path),
        ));
    }
    let mut out: Vec<ReplicaConfig> = Vec::new();
    for (j, raw) in db.replica.iter().enumerate() {
        let url = replica_url(raw, account).map_err(|(k, m)| Mistake::new(&at(j, k), m))?;
        let name = match &raw.name {
            Some(n) if !valid_name(n) => {
                return Err(Mistake::new(
                    &at(j, "name"),
                    format!(
                        "{n:?}: use 1 to 64 letters, digits, '-', '_' or '.', starting with \
                         a letter or digit"
                    ),
                ))
            }
            Some(n) => n.clone(),
            None => default_name(&raw.url).to_string(),
        };
        if let Some(k) = out.iter().position(|r| r.name == name) {
            let message = match &raw.name {
                Some(_) => format!("replica[{k}] of {} is named {name:?} too", db.path),
                None => format!(
                    "replica[{k}] of {} is named {name:?} too (a replica without a name is \
                     named after its URL's scheme): give each a name = \"...\"",
                    db.path
                ),
            };
            let key = if raw.name.is_some() { "name" } else { "" };
            return Err(Mistake::new(&at(j, key), message));
        }
        let upload_interval = match &raw.upload_interval {
            None => None,
            Some(s) => Some(parse_duration(s).ok_or_else(|| {
                Mistake::new(
                    &at(j, "upload_interval"),
                    format!("{s:?} is not a duration: use one like \"1s\" or \"500ms\""),
                )
            })?),
        };
        out.push(ReplicaConfig {
            name,
            url,
            upload_interval,
        });
    }
    Ok(out)
}

const SHARED: &str = "each replica needs a location of its own (a prefix or directory per \
                      database and replica)";

/// No two replicas (of any database) write to one location: they would
/// fight over its lease.
fn distinct_locations(dbs: &[DbConfig]) -> Result<(), Mistake> {
    for (i, db) in dbs.iter().enumerate() {
        for (j, r) in db.replicas.iter().enumerate() {
            if let Some((k, l)) = location_used(&dbs[..i], &r.url)
                .or_else(|| location_used_in(&db.replicas[..j], &r.url).map(|l| (i, l)))
            {
                return Err(Mistake::new(
                    &[
                        Seg::Key("db"),
                        Seg::Index(i),
                        Seg::Key("replica"),
                        Seg::Index(j),
                        Seg::Key("url"),
                    ],
                    format!("db[{k}].replica[{l}] replicates to the same location: {SHARED}"),
                ));
            }
        }
    }
    Ok(())
}

fn location_used(dbs: &[DbConfig], url: &ReplicaUrl) -> Option<(usize, usize)> {
    dbs.iter()
        .enumerate()
        .find_map(|(k, d)| location_used_in(&d.replicas, url).map(|l| (k, l)))
}

fn location_used_in(replicas: &[ReplicaConfig], url: &ReplicaUrl) -> Option<usize> {
    // Display leaves the keys out: one location with two key pairs is one location.
    let here = url.to_string();
    replicas.iter().position(|r| r.url.to_string() == here)
}

fn same_path(a: &Path, b: &Path) -> bool {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    abs(a) == abs(b)
}

/// A parse error without the expanded text: TOML errors quote the offending
/// line, which may hold a secret put there by `${VAR}` (an encryption key).
/// The unexpanded text's error, when it has one, points at the same place.
fn parse_error(unexpanded: &str, expanded: &str, e: toml::de::Error) -> String {
    match toml::from_str::<RawConfig>(unexpanded) {
        Err(original) => original.to_string(),
        Ok(_) => match e.span() {
            Some(span) => format!(
                "line {}: after expanding ${{VAR}}s: {}",
                locate::line_at(expanded, span.start),
                e.message()
            ),
            None => format!("after expanding ${{VAR}}s: {}", e.message()),
        },
    }
}

/// The retention keys; with none given, the default (7 snapshots).
/// `backup_count` is `[storage.backup] retention_count`.
fn retention_policy(
    raw: &RawConfig,
    backup_count: Option<usize>,
) -> Result<RetentionPolicy, Mistake> {
    if raw.retain_snapshots.is_some() && raw.retention_count.is_some() {
        return Err(Mistake::at(
            "retain_snapshots",
            "retain_snapshots is the older name of retention_count: give one",
        ));
    }
    let top = raw.retention_count.or(raw.retain_snapshots);
    if top.is_some() && backup_count.is_some() {
        return Err(Mistake::new(
            &storage::key_path("retention_count"),
            "retention_count is set at the top level too: give one",
        ));
    }
    let count = top.or(backup_count);
    let age = match &raw.retention_age {
        Some(s) => Some(parse_duration(s).ok_or_else(|| {
            Mistake::at(
                "retention_age",
                format!("{s:?} is not a duration: use one like \"30d\" or \"12h\""),
            )
        })?),
        None => None,
    };
    let tiers = (raw.keep_daily, raw.keep_weekly, raw.keep_monthly);
    let any = count.is_some() || age.is_some() || tiers != (None, None, None);
    let default = RetentionPolicy::default();
    Ok(RetentionPolicy {
        count: if any { count } else { default.count },
        age,
        daily: raw.keep_daily.unwrap_or(0),
        weekly: raw.keep_weekly.unwrap_or(0),
        monthly: raw.keep_monthly.unwrap_or(0),
        min: raw.min_snapshots.unwrap_or(1).max(1),
    })
}

fn monitor_config(raw: &RawConfig) -> Result<MonitorConfig, Mistake> {
    let mut m = MonitorConfig::default();
    let duration = |key: &'static str, v: &Option<String>, into: &mut Duration| {
        if let Some(s) = v {
            *into = parse_duration(s).ok_or_else(|| {
                Mistake::at(key, format!("{s:?}: use a duration like \"25h\" or \"5m\""))
            })?;
        }
        Ok::<_, Mistake>(())
    };
    let t = &mut m.thresholds;
    duration(
        "health_warning_after",
        &raw.health_warning_after,
        &mut t.snapshot_warning,
    )?;
    duration(
        "health_critical_after",
        &raw.health_critical_after,
        &mut t.snapshot_critical,
    )?;
    duration(
        "lag_warning_after",
        &raw.lag_warning_after,
        &mut t.lag_warning,
    )?;
    duration(
        "lag_critical_after",
        &raw.lag_critical_after,
        &mut t.lag_critical,
    )?;
    if t.snapshot_warning > t.snapshot_critical {
        return Err(Mistake::at(
            "health_warning_after",
            "must not exceed health_critical_after",
        ));
    }
    if t.lag_warning > t.lag_critical {
        return Err(Mistake::at(
            "lag_warning_after",
            "must not exceed lag_critical_after",
        ));
    }
    m.verify_interval = match raw.verify_interval.as_deref() {
        None => m.verify_interval,
        Some("off") => None,
        Some(s) => Some(parse_duration(s).filter(|d| !d.is_zero()).ok_or_else(|| {
            Mistake::at(
                "verify_interval",
                format!("{s:?}: use a duration like \"24h\", or \"off\""),
            )
        })?),
    };
    if let Some(s) = &raw.metrics_addr {
        m.metrics_addr = Some(crate::monitor::parse_metrics_addr(s).ok_or_else(|| {
            Mistake::at(
                "metrics_addr",
                format!("{s:?}: use HOST:PORT like \"127.0.0.1:9157\""),
            )
        })?);
    }
    if let Some(url) = &raw.webhook_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            // Not quoted: the URL may carry a token.
            return Err(Mistake::at(
                "webhook_url",
                "must start with http:// or https://",
            ));
        }
        m.webhook_url = Some(url.clone());
    }
    m.webhook_heartbeat = raw.webhook_heartbeat.unwrap_or(false);
    Ok(m)
}

/// The `[cloudflare]` table, completed from the environment.
fn r2_account(raw: Option<&RawCloudflare>) -> R2Account {
    let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let from_env = R2Account::from_env();
    match raw {
        None => from_env,
        Some(c) => R2Account {
            account_id: nonempty(&c.account_id).or(from_env.account_id),
            access_key_id: nonempty(&c.r2_access_key_id),
            secret_access_key: nonempty(&c.r2_secret_access_key),
        },
    }
}

/// One `[[db.replica]]`: its URL, with the keys given beside it.
/// Errors name the key they are about.
fn replica_url(
    raw: &RawReplica,
    account: &R2Account,
) -> Result<ReplicaUrl, (&'static str, String)> {
    let mut url = ReplicaUrl::parse_with(&raw.url, account).map_err(|e| ("url", e.to_string()))?;
    let keys = (&raw.access_key_id, &raw.secret_access_key);
    let named = if keys.0.is_some() {
        "access_key_id"
    } else {
        "secret_access_key"
    };
    let wrong = match (&mut url, keys) {
        (_, (None, None)) => None,
        (ReplicaUrl::S3(c), (Some(id), Some(secret))) => {
            c.access_key_id = Some(id.clone());
            c.secret_access_key = Some(secret.clone());
            None
        }
        (ReplicaUrl::S3(_), _) => Some("give both access_key_id and secret_access_key, or neither"),
        (ReplicaUrl::Local(_), _) => {
            Some("access_key_id and secret_access_key apply to s3:// and r2:// replicas only")
        }
    };
    if let Some(message) = wrong {
        return Err((named, message.into()));
    }
    Ok(url)
}

/// Durations like "90s", "15m", "24h", "7d" (a bare number is seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        "ms" => return Some(Duration::from_millis(n)),
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Replaces every `${NAME}` with the environment variable's value, outside
/// TOML comments (a `# ${VAR} is expanded` note must not need `VAR` set).
fn expand(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<&str> = None;
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let step = verbatim_step(rest, &mut quote);
        if step > 0 {
            out.push_str(&rest[..step]);
            i += step;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or("unterminated ${ in config")?;
            let name = &after[..end];
            let value = std::env::var(name).map_err(|_| {
                format!("environment variable {name} (used as ${{{name}}}) is not set")
            })?;
            out.push_str(&value);
            i += 2 + end + 1;
        } else {
            let ch = rest.chars().next().map_or(1, char::len_utf8);
            out.push_str(&rest[..ch]);
            i += ch;
        }
    }
    Ok(out)
}

/// How many bytes at the start of `rest` are copied as they are: a comment to
/// the end of its line, a string delimiter (updating `quote`, the string the
/// text is in), an escape inside a basic string; 0 otherwise.
fn verbatim_step(rest: &str, quote: &mut Option<&'static str>) -> usize {
    const QUOTES: [&str; 4] = ["\"\"\"", "'''", "\"", "'"];
    match *quote {
        None if rest.starts_with('#') => rest.find('\n').unwrap_or(rest.len()),
        None => match QUOTES.into_iter().find(|q| rest.starts_with(q)) {
            Some(q) => {
                *quote = Some(q);
                q.len()
            }
            None => 0,
        },
        Some(q) if q.starts_with('"') && rest.starts_with('\\') => {
            1 + rest[1..].chars().next().map_or(0, char::len_utf8)
        }
        Some(q) if rest.starts_with(q) => {
            *quote = None;
            q.len()
        }
        // A one-line string does not go past its line (TOML reports that).
        Some(q) if q.len() == 1 && rest.starts_with('\n') => {
            *quote = None;
            1
        }
        Some(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_database_with_one_replica() {
        let c = Config::parse(
            Path::new("t.toml"),
            "snapshot_interval = \"12h\"\nretain_snapshots = 3\nupload_interval = \"500ms\"\n[[db]]\npath = \"/d/app.db\"\n[[db.replica]]\nurl = \"file:///b\"\n",
            false,
        )
        .unwrap();
        assert_eq!(c.capture.snapshot_interval, Duration::from_secs(12 * 3600));
        assert_eq!(c.capture.retention.count, Some(3));
        assert_eq!(c.capture.upload_interval, Some(Duration::from_millis(500)));
        assert_eq!(c.dbs[0].replicas[0].url, ReplicaUrl::Local("/b".into()));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let e = Config::parse(Path::new("t.toml"), "snapshot_intervl = \"1h\"", false).unwrap_err();
        assert!(e.to_string().contains("snapshot_intervl"), "{e}");
        let e =
            Config::parse(Path::new("t.toml"), "snapshot_interval = \"soon\"", false).unwrap_err();
        assert!(e.to_string().contains("snapshot_interval"), "{e}");
        let e = Config::parse(Path::new("t.toml"), "[[db]]\npath = \"x\"\n", false).unwrap_err();
        assert!(e.to_string().contains("no [[db.replica]]"), "{e}");
    }

    #[test]
    fn cloudflare_table_configures_r2_replicas() {
        std::env::set_var("WALSTREAM_TEST_R2_SECRET", "s3cr3t-marker");
        let text = "[cloudflare]\naccount_id = \"abc123\"\nr2_access_key_id = \"AKR2\"\n\
                    r2_secret_access_key = \"${WALSTREAM_TEST_R2_SECRET}\"\n\
                    [[db]]\npath = \"/d/app.db\"\n[[db.replica]]\nurl = \"r2://backups/app\"\n";
        let c = Config::parse(Path::new("t.toml"), text, true).unwrap();
        let ReplicaUrl::S3(s3) = &c.dbs[0].replicas[0].url else {
            panic!("r2:// is an S3 replica")
        };
        assert_eq!(
            s3.endpoint.as_deref(),
            Some("https://abc123.r2.cloudflarestorage.com")
        );
        assert_eq!(s3.region, "auto");
        assert_eq!(s3.access_key_id.as_deref(), Some("AKR2"));
        assert_eq!(s3.secret_access_key.as_deref(), Some("s3cr3t-marker"));
        assert!(
            !format!("{c:?}").contains("s3cr3t-marker"),
            "secrets never appear in debug output"
        );
        let e = Config::parse(
            Path::new("t.toml"),
            "[cloudflare]\naccount = \"x\"\n",
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("account"), "{e}");
    }

    #[test]
    fn replica_keys_apply_to_s3_only_and_in_pairs() {
        let base = "[[db]]\npath = \"/d/a.db\"\n[[db.replica]]\n";
        let parse = |rest: &str| Config::parse(Path::new("t"), &format!("{base}{rest}"), false);
        let c = parse("url = \"s3://b/p\"\naccess_key_id = \"A\"\nsecret_access_key = \"S\"\n")
            .unwrap();
        let ReplicaUrl::S3(s3) = &c.dbs[0].replicas[0].url else {
            panic!("an S3 replica")
        };
        assert_eq!(s3.access_key_id.as_deref(), Some("A"));
        let e = parse("url = \"s3://b/p\"\naccess_key_id = \"A\"\n").unwrap_err();
        assert!(e.to_string().contains("both"), "{e}");
        let e =
            parse("url = \"/r\"\naccess_key_id = \"A\"\nsecret_access_key = \"S\"\n").unwrap_err();
        assert!(e.to_string().contains("s3:// and r2://"), "{e}");
    }

    #[test]
    fn retention_and_schedule_keys() {
        let c = Config::parse(
            Path::new("t"),
            "snapshot_at = \"03:00\"\nretention_age = \"30d\"\nkeep_daily = 7\nkeep_weekly = 4\n\
             keep_monthly = 12\nmin_snapshots = 2\n",
            false,
        )
        .unwrap();
        let r = &c.capture.retention;
        assert_eq!(r.count, None, "explicit rules replace the default count");
        assert_eq!(r.age, Some(Duration::from_secs(30 * 86400)));
        assert_eq!((r.daily, r.weekly, r.monthly, r.min), (7, 4, 12, 2));
        assert_eq!(c.capture.snapshot_at.map(|t| t.minute), Some(180));
        let d = Config::parse(Path::new("t"), "", false).unwrap();
        assert_eq!(d.capture.retention, RetentionPolicy::default());
        for (text, needle) in [
            ("snapshot_at = \"3am\"", "snapshot_at"),
            ("retention_age = \"a month\"", "retention_age"),
            ("retain_snapshots = 3\nretention_count = 4", "older name"),
            ("keep_daily = -1", "keep_daily"),
        ] {
            let e = Config::parse(Path::new("t"), text, false).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn monitoring_keys() {
        let c = Config::parse(
            Path::new("t"),
            "health_warning_after = \"2h\"\nhealth_critical_after = \"3h\"\n\
             lag_warning_after = \"10s\"\nlag_critical_after = \"1m\"\nverify_interval = \"off\"\n\
             metrics_addr = \":9000\"\nwebhook_url = \"https://h/x?token=t\"\nwebhook_heartbeat = true\n",
            false,
        )
        .unwrap();
        let m = &c.monitor;
        assert_eq!(m.thresholds.snapshot_warning, Duration::from_secs(7200));
        assert_eq!(m.thresholds.lag_critical, Duration::from_secs(60));
        assert_eq!(m.verify_interval, None);
        assert_eq!(
            m.metrics_addr.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9000")
        );
        assert!(m.webhook_heartbeat);
        assert!(
            !format!("{c:?}").contains("token=t"),
            "webhook URLs are redacted"
        );
        let d = Config::parse(Path::new("t"), "", false).unwrap().monitor;
        assert_eq!(d, MonitorConfig::default());
        for (text, needle) in [
            (
                "health_warning_after = \"3h\"\nhealth_critical_after = \"2h\"",
                "exceed",
            ),
            ("verify_interval = \"0\"", "verify_interval"),
            ("metrics_addr = \"everywhere\"", "metrics_addr"),
            ("webhook_url = \"ftp://secret@x\"", "webhook_url"),
        ] {
            let e = Config::parse(Path::new("t"), text, false).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
            assert!(!e.to_string().contains("secret@"), "{e}");
        }
    }

    #[test]
    fn expands_environment_variables() {
        std::env::set_var("WALSTREAM_TEST_DIR", "/from/env");
        let c = Config::parse(
            Path::new("t"),
            "[[db]]\npath = \"${WALSTREAM_TEST_DIR}/a.db\"\n[[db.replica]]\nurl = \"/r\"\n",
            true,
        )
        .unwrap();
        assert_eq!(c.dbs[0].path, PathBuf::from("/from/env/a.db"));
        assert!(Config::parse(Path::new("t"), "x = \"${WALSTREAM_UNSET_VAR_XYZ}\"", true).is_err());
    }
    #[test]
    fn comments_are_not_expanded_but_strings_with_a_hash_are() {
        std::env::set_var("WALSTREAM_TEST_EXPAND", "v");
        let text = r##"a = "x#${WALSTREAM_TEST_EXPAND}" # ${UNSET_IN_COMMENT}
# ${ALSO_UNSET}
b = 'y#${WALSTREAM_TEST_EXPAND}'
c = "q\"#${WALSTREAM_TEST_EXPAND}"
d = """
#${WALSTREAM_TEST_EXPAND}""" # ${UNSET}
e = 'ü#${WALSTREAM_TEST_EXPAND}'
"##;
        let want = r##"a = "x#v" # ${UNSET_IN_COMMENT}
# ${ALSO_UNSET}
b = 'y#v'
c = "q\"#v"
d = """
#v""" # ${UNSET}
e = 'ü#v'
"##;
        assert_eq!(expand(text).unwrap(), want);
        assert!(expand("a = \"${WALSTREAM_UNSET_VAR_XYZ}\" # note").is_err());
    }
}

#[cfg(test)]
mod tests_lines;
