//! Replica locations: parsing a replica URL and opening its object store.
//!
//! Two forms:
//! - a local directory: `file:///abs/dir` or a bare path;
//! - an S3-compatible bucket:
//!   `s3://BUCKET/PREFIX?endpoint=URL&region=R&force-path-style=true` (see docs/s3.md).

use std::path::PathBuf;
use std::sync::Arc;

use crate::capture::CaptureOptions;
use crate::store::{validate_key, LocalStore, ObjectStore, S3Config, S3Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaUrl {
    /// A local directory (`file:///abs/dir` or a bare path).
    Local(PathBuf),
    /// A prefix in an S3-compatible bucket. The configuration holds no credentials:
    /// they are read from the environment when the store is opened.
    S3(S3Config),
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("replica URL {url:?}: {reason}")]
    Invalid { url: String, reason: String },
}

/// The query parameters an `s3://` URL may carry.
const S3_PARAMS: &str = "endpoint, region, force-path-style, checksums, max-attempts";

/// Environment variable with the Cloudflare account id for `r2://` URLs.
pub const ENV_CLOUDFLARE_ACCOUNT_ID: &str = "CLOUDFLARE_ACCOUNT_ID";

/// A Cloudflare account, for `r2://BUCKET/PREFIX` replicas: the account id
/// gives the endpoint `https://<account_id>.r2.cloudflarestorage.com`; the R2
/// token's keys, when given, sign the requests (else `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY` do).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct R2Account {
    pub account_id: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for R2Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("R2Account")
            .field("account_id", &self.account_id)
            .field("keys", &self.access_key_id.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl R2Account {
    /// The account id from `CLOUDFLARE_ACCOUNT_ID`; keys from the usual variables.
    pub fn from_env() -> R2Account {
        R2Account {
            account_id: std::env::var(ENV_CLOUDFLARE_ACCOUNT_ID)
                .ok()
                .filter(|v| !v.is_empty()),
            ..R2Account::default()
        }
    }
}

impl ReplicaUrl {
    /// Parses a replica URL; `r2://` URLs take their account from
    /// `CLOUDFLARE_ACCOUNT_ID` (see [`ReplicaUrl::parse_with`]).
    pub fn parse(url: &str) -> Result<ReplicaUrl, UrlError> {
        ReplicaUrl::parse_with(url, &R2Account::from_env())
    }

    /// Parses a replica URL, with `account` for `r2://` URLs that do not name
    /// their account (`?account-id=`).
    pub fn parse_with(url: &str, account: &R2Account) -> Result<ReplicaUrl, UrlError> {
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
        if let Some(rest) = url.strip_prefix("s3://") {
            return parse_s3(rest).map(ReplicaUrl::S3).map_err(|r| invalid(&r));
        }
        if let Some(rest) = url.strip_prefix("r2://") {
            return parse_r2(rest, account)
                .map(ReplicaUrl::S3)
                .map_err(|r| invalid(&r));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?}: use file:///abs/dir, a directory path, \
                 s3://bucket/prefix or r2://bucket/prefix"
            )));
        }
        let path = std::path::absolute(url).map_err(|e| invalid(&e.to_string()))?;
        Ok(ReplicaUrl::Local(path))
    }

    /// Opens the store, failing when it cannot be used as configured (for S3: no
    /// credentials in `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`). Nothing is
    /// created or sent until the first operation; needs no async runtime.
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, StoreError> {
        match self {
            ReplicaUrl::Local(path) => Ok(Arc::new(LocalStore::new(path.clone()))),
            ReplicaUrl::S3(config) => Ok(Arc::new(S3Store::new(config.clone())?)),
        }
    }

    /// Upload batching when the configuration sets none: a local directory
    /// ships every commit at once; S3 gathers a second of commits per PUT.
    pub fn default_upload_interval(&self) -> std::time::Duration {
        match self {
            ReplicaUrl::Local(_) => std::time::Duration::ZERO,
            ReplicaUrl::S3(_) => std::time::Duration::from_secs(1),
        }
    }

    /// Longest group-commit pause after a store (see
    /// [`CaptureOptions::pace_limit`]).
    pub fn default_pace_limit(&self) -> std::time::Duration {
        match self {
            ReplicaUrl::Local(_) => crate::capture::DEFAULT_PACE_LIMIT,
            ReplicaUrl::S3(_) => std::time::Duration::ZERO,
        }
    }

    /// Fills in what the configuration left to this kind of store.
    pub fn apply_defaults(&self, opts: &mut CaptureOptions) {
        opts.upload_interval
            .get_or_insert_with(|| self.default_upload_interval());
        opts.pace_limit
            .get_or_insert_with(|| self.default_pace_limit());
    }

    /// How messages name the replica (never contains secrets).
    pub fn describe(&self) -> String {
        match self {
            ReplicaUrl::Local(p) => p.display().to_string(),
            ReplicaUrl::S3(config) => config.describe(),
        }
    }
}

impl std::fmt::Display for ReplicaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaUrl::Local(p) => write!(f, "file://{}", p.display()),
            ReplicaUrl::S3(c) => {
                write!(f, "{}", c.describe())?;
                let mut params = Vec::new();
                if let Some(endpoint) = &c.endpoint {
                    params.push(format!("endpoint={}", percent_encode(endpoint)));
                }
                params.push(format!("region={}", percent_encode(&c.region)));
                params.push(format!("force-path-style={}", c.force_path_style));
                if !c.checksums_when_required {
                    params.push("checksums=when-supported".to_string());
                }
                if c.max_attempts != S3Config::new("", "").max_attempts {
                    params.push(format!("max-attempts={}", c.max_attempts));
                }
                write!(f, "?{}", params.join("&"))
            }
        }
    }
}

/// Parses what follows `s3://`: `BUCKET[/PREFIX][?QUERY]`.
fn parse_s3(rest: &str) -> Result<S3Config, String> {
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    if location.contains('#') || query.contains('#') {
        return Err("an s3:// URL cannot have a #fragment".into());
    }
    let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
    if bucket.is_empty() {
        return Err("no bucket name: use s3://BUCKET/PREFIX".into());
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "invalid bucket name {bucket:?}: use letters, digits, '.', '-' and '_'"
        ));
    }
    let prefix = percent_decode(prefix)?;
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        if let Err(StoreError::InvalidKey { reason, .. }) = validate_key(prefix) {
            return Err(format!("invalid prefix {prefix:?}: {reason}"));
        }
    }
    let mut config = S3Config::new(bucket, prefix);

    let mut seen: Vec<&str> = Vec::new();
    let mut region = None;
    let mut path_style = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if !S3_PARAMS.split(", ").any(|known| known == name) {
            return Err(format!(
                "unknown query parameter {name:?} (known: {S3_PARAMS})"
            ));
        }
        if seen.contains(&name) {
            return Err(format!("query parameter {name:?} given twice"));
        }
        seen.push(name);
        let value = percent_decode(raw)?;
        if value.is_empty() {
            return Err(format!("query parameter {name:?} needs a value"));
        }
        match name {
            "endpoint" => {
                let value = value.trim_end_matches('/');
                if endpoint_host(value).is_none() {
                    return Err(format!(
                        "endpoint {value:?} must be an http:// or https:// URL with a host, \
                         like https://ACCOUNT.r2.cloudflarestorage.com or http://127.0.0.1:8333"
                    ));
                }
                config.endpoint = Some(value.to_string());
            }
            "region" => region = Some(value),
            "force-path-style" => {
                path_style = Some(parse_bool(&value).ok_or_else(|| {
                    format!("force-path-style must be true or false, not {value:?}")
                })?)
            }
            "checksums" => {
                config.checksums_when_required = match value.as_str() {
                    "when-required" => true,
                    "when-supported" => false,
                    _ => {
                        return Err(format!(
                            "checksums must be when-required or when-supported, not {value:?}"
                        ))
                    }
                }
            }
            "max-attempts" => {
                config.max_attempts = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| {
                        format!("max-attempts must be a number from 1 to 100, not {value:?}")
                    })?
            }
            _ => unreachable!("checked against S3_PARAMS"),
        }
    }
    let is_r2 = config
        .endpoint
        .as_deref()
        .and_then(endpoint_host)
        .is_some_and(|host| {
            let host = host.to_ascii_lowercase();
            host == "r2.cloudflarestorage.com" || host.ends_with(".r2.cloudflarestorage.com")
        });
    config.region = region.unwrap_or_else(|| if is_r2 { "auto" } else { "us-east-1" }.into());
    config.force_path_style = path_style.unwrap_or(config.endpoint.is_some());
    Ok(config)
}

/// Parses what follows `r2://`: `BUCKET[/PREFIX][?account-id=ID&...]`, with the
/// other `s3://` parameters except `endpoint`.
fn parse_r2(rest: &str, account: &R2Account) -> Result<S3Config, String> {
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut account_id = account.account_id.clone();
    let mut params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("account-id", id)) => account_id = Some(percent_decode(id)?),
            Some(("endpoint", _)) => {
                return Err("an r2:// URL takes its endpoint from the account id; \
                            use s3://...?endpoint= for another endpoint"
                    .into())
            }
            _ => params.push(pair),
        }
    }
    let id = account_id.filter(|id| !id.is_empty()).ok_or_else(|| {
        format!(
            "an r2:// URL needs the Cloudflare account id: set [cloudflare] account_id in the \
             config, {ENV_CLOUDFLARE_ACCOUNT_ID}, or ?account-id=ID"
        )
    })?;
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "Cloudflare account id {id:?} must be letters and digits (the 32-character id \
             on the dashboard)"
        ));
    }
    params.push("endpoint=https://ACCOUNT.r2.cloudflarestorage.com");
    let mut config = parse_s3(&format!("{location}?{}", params.join("&")))?;
    config.endpoint = Some(format!("https://{id}.r2.cloudflarestorage.com"));
    config.access_key_id = account.access_key_id.clone();
    config.secret_access_key = account.secret_access_key.clone();
    Ok(config)
}

/// The host of an `http://` or `https://` URL (without port or brackets).
fn endpoint_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Escapes everything but unreserved characters and `:` and `/`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    String::from_utf8(out).map_err(|_| "not UTF-8 after %-decoding")
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

    #[test]
    fn each_kind_of_store_fills_in_its_own_defaults_and_keeps_configured_ones() {
        use std::time::Duration;
        let local = ReplicaUrl::parse("/x/y").unwrap();
        let bucket = ReplicaUrl::parse("s3://b/p?endpoint=http://127.0.0.1:9").unwrap();
        let mut o = CaptureOptions::default();
        local.apply_defaults(&mut o);
        assert_eq!(o.upload_interval, Some(Duration::ZERO));
        assert_eq!(o.pace_limit, Some(crate::capture::DEFAULT_PACE_LIMIT));
        let mut o = CaptureOptions::default();
        bucket.apply_defaults(&mut o);
        assert_eq!(o.upload_interval, Some(Duration::from_secs(1)));
        assert_eq!(o.pace_limit, Some(Duration::ZERO));
        let mut o = CaptureOptions {
            upload_interval: Some(Duration::from_millis(7)),
            pace_limit: Some(Duration::from_millis(3)),
            ..CaptureOptions::default()
        };
        bucket.apply_defaults(&mut o);
        assert_eq!(o.upload_interval, Some(Duration::from_millis(7)));
        assert_eq!(o.pace_limit, Some(Duration::from_millis(3)));
    }

    fn s3(url: &str) -> S3Config {
        match ReplicaUrl::parse(url) {
            Ok(ReplicaUrl::S3(config)) => config,
            other => panic!("{url}: {other:?}"),
        }
    }

    fn s3_err(url: &str) -> String {
        match ReplicaUrl::parse(url) {
            Err(e) => e.to_string(),
            Ok(other) => panic!("{url} parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_s3_urls() {
        // AWS: no endpoint, us-east-1, virtual-hosted style.
        let c = s3("s3://my-bucket/backups/app1");
        assert_eq!(c.bucket, "my-bucket");
        assert_eq!(c.prefix, "backups/app1");
        assert_eq!(c.endpoint, None);
        assert_eq!(c.region, "us-east-1");
        assert!(!c.force_path_style);
        assert!(c.checksums_when_required);
        assert_eq!(c.max_attempts, 5);
        assert_eq!((c.access_key_id, c.secret_access_key), (None, None));

        // Endpoint given: path style by default; encoded or not is the same.
        let plain = s3("s3://b/p?endpoint=http://127.0.0.1:8333");
        let encoded = s3("s3://b/p?endpoint=http%3A%2F%2F127.0.0.1%3A8333%2F");
        assert_eq!(plain, encoded);
        assert_eq!(plain.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert!(plain.force_path_style);
        assert_eq!(plain.region, "us-east-1");

        // R2: region auto.
        let r2 = s3("s3://b/p?endpoint=https://0123abcd.r2.cloudflarestorage.com");
        assert_eq!(r2.region, "auto");
        assert!(r2.force_path_style);
        let r2 = s3("s3://b/p?endpoint=https%3A%2F%2F0123abcd.R2.cloudflarestorage.com%3A443");
        assert_eq!(r2.region, "auto");
        // ... but not for a look-alike host.
        assert_eq!(
            s3("s3://b?endpoint=https://evil-r2.cloudflarestorage.com.example").region,
            "us-east-1"
        );

        // Everything explicit.
        let c = s3(
            "s3://b/a/b/c/?endpoint=https://minio.local:9000&region=eu-west-1\
                    &force-path-style=false&checksums=when-supported&max-attempts=9",
        );
        assert_eq!(c.prefix, "a/b/c");
        assert_eq!(c.region, "eu-west-1");
        assert!(!c.force_path_style);
        assert!(!c.checksums_when_required);
        assert_eq!(c.max_attempts, 9);

        // No prefix: the bucket's root.
        assert_eq!(s3("s3://b").prefix, "");
        assert_eq!(s3("s3://b/").prefix, "");
        assert_eq!(s3("s3://b/x%2Dy").prefix, "x-y");
        assert_eq!(s3("s3://b?region=auto").region, "auto");
    }

    #[test]
    fn r2_urls_take_the_endpoint_and_keys_from_the_account() {
        let account = R2Account {
            account_id: Some("0123abcd".into()),
            access_key_id: Some("AK".into()),
            secret_access_key: Some("SK".into()),
        };
        let ReplicaUrl::S3(c) = ReplicaUrl::parse_with("r2://backups/app/db", &account).unwrap()
        else {
            panic!("an r2:// URL is an S3 replica")
        };
        assert_eq!(
            c.endpoint.as_deref(),
            Some("https://0123abcd.r2.cloudflarestorage.com")
        );
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("backups", "app/db")
        );
        assert_eq!((c.region.as_str(), c.force_path_style), ("auto", true));
        assert_eq!(c.access_key_id.as_deref(), Some("AK"));
        assert_eq!(c.secret_access_key.as_deref(), Some("SK"));
        // The URL's own account id wins; other parameters still apply.
        let ReplicaUrl::S3(c) = ReplicaUrl::parse_with(
            "r2://b?account-id=ffff&max-attempts=3",
            &R2Account::default(),
        )
        .unwrap() else {
            panic!("an r2:// URL is an S3 replica")
        };
        assert_eq!(
            c.endpoint.as_deref(),
            Some("https://ffff.r2.cloudflarestorage.com")
        );
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.access_key_id, None, "keys then come from the environment");
    }

    #[test]
    fn r2_urls_without_an_account_or_with_an_endpoint_are_refused() {
        let none = R2Account::default();
        let e = ReplicaUrl::parse_with("r2://b/p", &none).unwrap_err();
        assert!(e.to_string().contains("[cloudflare] account_id"), "{e}");
        let e = ReplicaUrl::parse_with("r2://b/p?account-id=a.b", &none).unwrap_err();
        assert!(e.to_string().contains("letters and digits"), "{e}");
        let e = ReplicaUrl::parse_with("r2://b?account-id=a&endpoint=http://x", &none).unwrap_err();
        assert!(e.to_string().contains("takes its endpoint"), "{e}");
        let e = ReplicaUrl::parse_with("r2://b?account-id=a&colour=red", &none).unwrap_err();
        assert!(e.to_string().contains("unknown query parameter"), "{e}");
    }

    #[test]
    fn rejects_bad_s3_urls() {
        let e = s3_err("s3://b/p?endpoint=http://h&colour=blue");
        assert!(e.contains("unknown query parameter \"colour\""), "{e}");
        let e = s3_err("s3://b/p?Region=x");
        assert!(e.contains("\"Region\""), "{e}");
        assert!(s3_err("s3://").contains("no bucket"));
        assert!(s3_err("s3:///prefix").contains("no bucket"));
        assert!(s3_err("s3://b%20c/p").contains("bucket name"));
        assert!(s3_err("s3://b/a//b").contains("prefix"));
        assert!(s3_err("s3://b/a/../b").contains("prefix"));
        assert!(s3_err("s3://b/a b").contains("prefix"));
        assert!(s3_err("s3://b/p?endpoint=ftp://h").contains("endpoint"));
        assert!(s3_err("s3://b/p?endpoint=127.0.0.1:9000").contains("endpoint"));
        assert!(s3_err("s3://b/p?endpoint=http://").contains("endpoint"));
        assert!(s3_err("s3://b/p?endpoint=").contains("needs a value"));
        assert!(s3_err("s3://b/p?region").contains("needs a value"));
        assert!(s3_err("s3://b/p?region=a&region=b").contains("twice"));
        assert!(s3_err("s3://b/p?force-path-style=yes").contains("true or false"));
        assert!(s3_err("s3://b/p?max-attempts=0").contains("max-attempts"));
        assert!(s3_err("s3://b/p?checksums=always").contains("checksums"));
        assert!(s3_err("s3://b/p?endpoint=http%3").contains("%-escape"));
        assert!(s3_err("s3://b/p#frag").contains("fragment"));
    }

    #[test]
    fn s3_urls_round_trip_through_display() {
        for url in [
            "s3://b/p",
            "s3://b",
            "s3://b/a/b?endpoint=http://127.0.0.1:8333",
            "s3://b/p?endpoint=https://x.r2.cloudflarestorage.com&checksums=when-supported",
            "s3://b/p?endpoint=http://[::1]:9000&region=r&force-path-style=false&max-attempts=2",
        ] {
            let parsed = ReplicaUrl::parse(url).unwrap();
            let shown = parsed.to_string();
            assert_eq!(
                ReplicaUrl::parse(&shown).unwrap(),
                parsed,
                "{url} -> {shown}"
            );
        }
        assert_eq!(
            ReplicaUrl::parse("s3://b/p?endpoint=http://h:1")
                .unwrap()
                .to_string(),
            "s3://b/p?endpoint=http://h:1&region=us-east-1&force-path-style=true"
        );
    }

    #[test]
    fn s3_open_without_credentials_names_the_variables() {
        let url = ReplicaUrl::parse("s3://bucket/prefix?endpoint=http://127.0.0.1:9").unwrap();
        let mut config = match &url {
            ReplicaUrl::S3(c) => c.clone(),
            _ => unreachable!(),
        };
        // With credentials in the configuration, opening works without the environment.
        config.access_key_id = Some("ak".into());
        config.secret_access_key = Some("sk".into());
        let store = ReplicaUrl::S3(config)
            .open()
            .expect("open with credentials");
        assert_eq!(store.describe(), "s3://bucket/prefix");

        // A store that cannot be used is refused at open, with the reason.
        let err = ReplicaUrl::S3(S3Config::new("", "p"))
            .open()
            .expect_err("no bucket");
        assert!(matches!(err, StoreError::Config { .. }), "{err:?}");
        assert!(err.to_string().contains("no bucket name"), "{err}");

        // Without credentials it depends on the environment; only check when it has none.
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            let msg = url.open().expect_err("no credentials").to_string();
            assert!(
                msg.contains("AWS_ACCESS_KEY_ID") && msg.contains("s3://bucket/prefix"),
                "{msg}"
            );
        }
    }
}
