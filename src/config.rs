//! The configuration file (TOML). See `docs/config.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::capture::CaptureOptions;
use crate::crypto::EncryptionConfig;
use crate::replica::ReplicaUrl;

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
    retain_snapshots: Option<usize>,
    checkpoint_pages: Option<u32>,
    upload_interval: Option<String>,
    #[serde(default)]
    db: Vec<RawDb>,
    encryption: Option<EncryptionConfig>,
    storage: Option<crate::crypto::settings::RawStorage>,
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
    url: String,
}

/// One database and where it is replicated.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub path: PathBuf,
    pub replica: ReplicaUrl,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub capture: CaptureOptions,
    pub dbs: Vec<DbConfig>,
    /// `[encryption]` (or `[storage.backup.encryption]`), keys not yet parsed.
    pub encryption: Option<EncryptionConfig>,
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
            toml::from_str(&text).map_err(|e| invalid(parse_error(unexpanded, e)))?;
        let mut capture = CaptureOptions::default();
        if let Some(s) = &raw.snapshot_interval {
            capture.snapshot_interval = parse_duration(s).ok_or_else(|| {
                invalid(format!(
                    "snapshot_interval = {s:?}: use a number with s, m, h or d, like \"24h\""
                ))
            })?;
        }
        if let Some(s) = &raw.upload_interval {
            capture.upload_interval = Some(parse_duration(s).ok_or_else(|| {
                invalid(format!(
                    "upload_interval = {s:?}: use a duration like \"1s\" or \"500ms\""
                ))
            })?);
        }
        if let Some(n) = raw.retain_snapshots {
            capture.retain_snapshots = n.max(1);
        }
        if let Some(n) = raw.checkpoint_pages {
            capture.checkpoint_pages = n.max(1);
        }
        let mut dbs = Vec::new();
        for (i, db) in raw.db.iter().enumerate() {
            let replica = match db.replica.as_slice() {
                [one] => ReplicaUrl::parse(&one.url)
                    .map_err(|e| invalid(format!("db[{i}].replica: {e}")))?,
                [] => {
                    return Err(invalid(format!(
                        "db[{i}] ({}) has no [[db.replica]] with a url",
                        db.path
                    )))
                }
                _ => {
                    return Err(invalid(format!(
                        "db[{i}] ({}): one replica per database is supported",
                        db.path
                    )))
                }
            };
            dbs.push(DbConfig {
                path: PathBuf::from(&db.path),
                replica,
            });
        }
        let encryption =
            crate::crypto::settings::pick_table(raw.encryption, raw.storage).map_err(invalid)?;
        Ok(Config {
            capture,
            dbs,
            encryption,
        })
    }
}

/// A parse error without the expanded text: TOML errors quote the offending
/// line, which may hold a secret put there by `${VAR}` (an encryption key).
/// The unexpanded text's error, when it has one, points at the same place.
fn parse_error(unexpanded: &str, e: toml::de::Error) -> String {
    match toml::from_str::<RawConfig>(unexpanded) {
        Err(original) => original.to_string(),
        Ok(_) => format!("after expanding ${{VAR}}s: {}", e.message()),
    }
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

/// Replaces `${VAR}` with the variable's value; an unset variable is an error.
fn expand(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or("unterminated ${ in config")?;
        let name = &after[..end];
        let value = std::env::var(name)
            .map_err(|_| format!("environment variable {name} (used as ${{{name}}}) is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
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
        assert_eq!(c.capture.retain_snapshots, 3);
        assert_eq!(c.capture.upload_interval, Some(Duration::from_millis(500)));
        assert_eq!(c.dbs[0].replica, ReplicaUrl::Local("/b".into()));
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
}
