//! [`S3Store`]: an [`ObjectStore`] kept in an S3-compatible bucket (AWS S3, Cloudflare
//! R2, SeaweedFS, MinIO, ...).
//!
//! Key `a/b` lives in the object `<prefix>/a/b` of the bucket. Write-once objects use
//! conditional writes: [`PutMode::CreateOnly`] sends `If-None-Match: *`, so of several
//! concurrent creators exactly one wins and the others get `412 Precondition Failed`
//! ([`StoreError::AlreadyExists`]). A `412` can also be the answer to the SDK's own retry
//! of a create whose first attempt succeeded but whose answer was lost; callers that
//! must tell the two apart compare the stored body with theirs (the capture engine does).
//!
//! Files of [`MULTIPART_THRESHOLD`] or more are uploaded in parts of [`PART_SIZE`]
//! (larger when a file would need more than 10,000 parts), two at a time. Each part is
//! read from the file just before it is sent, so memory use is bounded by two parts
//! whatever the file's size, and every part is signed with its SHA-256. A failed
//! upload is aborted (`AbortMultipartUpload`), also when the future is dropped.
//!
//! The client is built without `aws-config`: static credentials (from [`S3Config`] or
//! the `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` environment variables), a fixed
//! region and endpoint, the SDK's standard retry strategy (exponential backoff with
//! jitter on 5xx, `SlowDown`, timeouts and connection errors), connect and read
//! timeouts, and by default checksums only where an operation requires them, which is
//! what Cloudflare R2 needs. No request ever carries `Content-MD5` together with an
//! `x-amz-checksum-*` header: walstream never sets `Content-MD5` itself.

use std::fmt;
use std::io::{self, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{
    validate_key, ObjectMeta, ObjectReader, ObjectStore, PutMode, RemoteError, StoreError,
};

/// Files at least this big are uploaded with a multipart upload.
pub const MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;
/// Size of every part of a multipart upload but the last (grown for huge files so that
/// no upload needs more than [`MAX_PARTS`] parts).
pub const PART_SIZE: u64 = 8 * 1024 * 1024;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;
/// Parts of one upload in flight at once.
const PART_CONCURRENCY: usize = 2;
/// Attempts at a create-only write that the service answered `409
/// ConditionalRequestConflict` (another conditional write to the key was in flight).
const CONFLICT_ATTEMPTS: u32 = 5;

const ENV_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
const ENV_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
const ENV_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// Where and how to reach a bucket. Secrets are never printed: `Debug` redacts them.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (empty: the
    /// bucket's root). Key `k` is stored as `<prefix>/k`.
    pub prefix: String,
    /// Endpoint URL, like `https://<account>.r2.cloudflarestorage.com` or
    /// `http://127.0.0.1:8333`; `None` means AWS S3 in `region`.
    pub endpoint: Option<String>,
    /// Signing region (`auto` for R2; anything works for most other services).
    pub region: String,
    /// Address buckets as `<endpoint>/<bucket>` rather than `<bucket>.<endpoint>`.
    pub force_path_style: bool,
    /// Access key ID; `None` reads `AWS_ACCESS_KEY_ID` when the store is opened.
    pub access_key_id: Option<String>,
    /// Secret access key; `None` reads `AWS_SECRET_ACCESS_KEY` when the store is opened.
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials; `None` reads `AWS_SESSION_TOKEN` when
    /// the keys come from the environment.
    pub session_token: Option<String>,
    /// Send and validate checksums only where an operation requires them (default
    /// `true`; Cloudflare R2 rejects the CRC32 headers newer SDKs add by default).
    /// `false` uses the SDK's default (checksums wherever supported).
    pub checksums_when_required: bool,
    /// Attempts per request, first one included (default 5).
    pub max_attempts: u32,
    /// Time allowed to open a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Time allowed from sending a request until its response starts (default 60 s).
    /// It includes sending the request body, so it must allow for one part
    /// ([`PART_SIZE`]) on the slowest link in use.
    pub read_timeout: Duration,
}

impl S3Config {
    /// A configuration for AWS S3 in `us-east-1` with every default; set `endpoint`,
    /// `region` and `force_path_style` for other services.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: prefix.into().trim_matches('/').to_string(),
            endpoint: None,
            region: "us-east-1".to_string(),
            force_path_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            checksums_when_required: true,
            max_attempts: 5,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
        }
    }

    /// `s3://bucket/prefix`: how messages name this store (never contains secrets).
    pub fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field("access_key_id", &redacted(&self.access_key_id))
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("checksums_when_required", &self.checksums_when_required)
            .field("max_attempts", &self.max_attempts)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

/// The credentials to sign with: the configured ones, else the environment's.
fn resolve_credentials(
    config: &S3Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Credentials, String> {
    let pick = |given: &Option<String>, var: &str| {
        given
            .clone()
            .filter(|v| !v.is_empty())
            .map(|v| (v, false))
            .or_else(|| env(var).filter(|v| !v.is_empty()).map(|v| (v, true)))
    };
    let access = pick(&config.access_key_id, ENV_ACCESS_KEY_ID);
    let secret = pick(&config.secret_access_key, ENV_SECRET_ACCESS_KEY);
    let (Some((access, access_from_env)), Some((secret, _))) = (access.clone(), secret.clone())
    else {
        let missing: Vec<&str> = [
            (access.is_none(), ENV_ACCESS_KEY_ID),
            (secret.is_none(), ENV_SECRET_ACCESS_KEY),
        ]
        .iter()
        .filter(|(missing, _)| *missing)
        .map(|(_, var)| *var)
        .collect();
        return Err(format!(
            "no S3 credentials: set the environment variables {ENV_ACCESS_KEY_ID} and \
             {ENV_SECRET_ACCESS_KEY} ({} not set)",
            missing.join(" and ")
        ));
    };
    let token = config.session_token.clone().or_else(|| {
        access_from_env
            .then(|| env(ENV_SESSION_TOKEN))
            .flatten()
            .filter(|v| !v.is_empty())
    });
    Ok(Credentials::new(access, secret, token, None, "walstream"))
}

/// An object store in an S3-compatible bucket.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    bucket: String,
    /// `<prefix>/`, or empty.
    root: String,
    describe: String,
    /// Where requests go, for messages.
    endpoint: String,
    max_attempts: u32,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.inner.describe)
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Builds the client. Nothing is sent until the first operation; fails only when
    /// the configuration is unusable (no credentials, bad endpoint, empty bucket).
    /// Does not need an async runtime (but every operation does: tokio).
    pub fn new(config: S3Config) -> Result<S3Store, StoreError> {
        Self::with_env(config, |var| std::env::var(var).ok())
    }

    fn with_env(
        mut config: S3Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<S3Store, StoreError> {
        config.prefix = config.prefix.trim_matches('/').to_string();
        let describe = config.describe();
        let config_err = |reason: String| StoreError::Config {
            store: describe.clone(),
            reason,
        };
        if config.bucket.is_empty() {
            return Err(config_err("no bucket name".into()));
        }
        if let Some(endpoint) = &config.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(config_err(format!(
                    "endpoint {endpoint:?} must start with http:// or https://"
                )));
            }
        }
        if config.max_attempts == 0 {
            return Err(config_err("max_attempts must be at least 1".into()));
        }
        let credentials = resolve_credentials(&config, env).map_err(config_err)?;

        let checksums = config.checksums_when_required;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(config.force_path_style)
            .http_client(http_client)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(config.max_attempts)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(20)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .read_timeout(config.read_timeout)
                    .build(),
            );
        if checksums {
            builder = builder
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.trim_end_matches('/'));
        }
        let client = Client::from_conf(builder.build());
        let root = if config.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", config.prefix)
        };
        let endpoint = config
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("AWS S3 in {}", config.region));
        Ok(S3Store {
            inner: Arc::new(Inner {
                client,
                bucket: config.bucket,
                root,
                describe,
                endpoint,
                max_attempts: config.max_attempts,
            }),
        })
    }

    /// The SDK client (for tools and tests that need more than [`ObjectStore`]).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// The full object name of `key` in the bucket.
    pub fn object_name(&self, key: &str) -> String {
        format!("{}{key}", self.inner.root)
    }

    fn ctx<'a>(&'a self, op: &'static str, key: &'a str) -> Ctx<'a> {
        Ctx {
            inner: &self.inner,
            op,
            key,
        }
    }

    async fn put_body(&self, ctx: &Ctx<'_>, body: Bytes, mode: PutMode) -> Result<(), StoreError> {
        let name = self.object_name(ctx.key);
        let mut attempt = 1;
        loop {
            let mut req = self
                .inner
                .client
                .put_object()
                .bucket(&self.inner.bucket)
                .key(&name)
                .content_length(body.len() as i64)
                .body(ByteStream::from(body.clone()));
            if mode == PutMode::CreateOnly {
                req = req.if_none_match("*");
            }
            match req.send().await {
                Ok(_) => return Ok(()),
                Err(e) => match ctx.classify(e) {
                    Failure::Conflict if attempt < CONFLICT_ATTEMPTS => {
                        attempt += 1;
                        conflict_backoff(attempt).await;
                    }
                    failure => return Err(ctx.write_error(failure)),
                },
            }
        }
    }

    async fn put_multipart(
        &self,
        ctx: &Ctx<'_>,
        path: PathBuf,
        size: u64,
        mode: PutMode,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let name = self.object_name(ctx.key);
        let created = inner
            .client
            .create_multipart_upload()
            .bucket(&inner.bucket)
            .key(&name)
            .send()
            .await
            .map_err(|e| ctx.write_error(ctx.classify(e)))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(ctx.remote(
                "InvalidResponse",
                "CreateMultipartUpload answered without an upload ID".into(),
            ));
        };
        // Aborts the upload if this future is dropped before it finishes.
        let mut guard = AbortGuard {
            client: inner.client.clone(),
            bucket: inner.bucket.clone(),
            key: name.clone(),
            upload_id: Some(upload_id.clone()),
        };
        let result = self
            .upload_parts_and_complete(ctx, &name, &upload_id, path, size, mode)
            .await;
        if result.is_err() {
            // Best effort: an upload that cannot be aborted now is left to the bucket's
            // lifecycle rules (see docs/s3.md).
            let aborted = inner
                .client
                .abort_multipart_upload()
                .bucket(&inner.bucket)
                .key(&name)
                .upload_id(&upload_id)
                .send()
                .await;
            if let Err(e) = aborted {
                tracing::warn!(
                    store = %inner.describe, key = ctx.key, upload_id,
                    error = %error_chain(&e),
                    "could not abort a failed multipart upload"
                );
            }
        }
        guard.upload_id = None;
        result
    }

    async fn upload_parts_and_complete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        upload_id: &str,
        path: PathBuf,
        size: u64,
        mode: PutMode,
    ) -> Result<(), StoreError> {
        let part_size = PART_SIZE.max(size.div_ceil(MAX_PARTS).next_multiple_of(1024 * 1024));
        let count = size.div_ceil(part_size);
        let path = Arc::new(path);
        let mut tasks = tokio::task::JoinSet::new();
        let mut parts = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut next = 0u64;
        loop {
            while tasks.len() < PART_CONCURRENCY && next < count {
                let offset = next * part_size;
                let len = part_size.min(size - offset);
                let number = i32::try_from(next + 1).expect("at most 10,000 parts");
                let part = PartJob {
                    client: self.inner.client.clone(),
                    bucket: self.inner.bucket.clone(),
                    key: name.to_string(),
                    upload_id: upload_id.to_string(),
                    path: Arc::clone(&path),
                    number,
                    offset,
                    len,
                };
                tasks.spawn(part.run());
                next += 1;
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            match joined {
                Ok(Ok(part)) => parts.push(part),
                Ok(Err(failure)) => {
                    tasks.abort_all();
                    return Err(match failure {
                        PartFailure::File(e) => ctx.io(e),
                        PartFailure::Remote(e) => ctx.write_error(ctx.classify(*e)),
                    });
                }
                Err(join) => {
                    tasks.abort_all();
                    return Err(ctx.io(io::Error::other(format!("upload task failed: {join}"))));
                }
            }
        }
        parts.sort_by_key(|p| p.part_number());

        let mut attempt = 1;
        loop {
            let mut req = self
                .inner
                .client
                .complete_multipart_upload()
                .bucket(&self.inner.bucket)
                .key(name)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts.clone()))
                        .build(),
                );
            if mode == PutMode::CreateOnly {
                req = req.if_none_match("*");
            }
            match req.send().await {
                Ok(_) => return Ok(()),
                Err(e) => match ctx.classify(e) {
                    Failure::Conflict if attempt < CONFLICT_ATTEMPTS => {
                        attempt += 1;
                        conflict_backoff(attempt).await;
                    }
                    // A retried complete whose first attempt succeeded finds no upload.
                    Failure::Service { ref code, .. } if code == "NoSuchUpload" => {
                        return self.after_lost_complete(ctx, name, size, mode).await;
                    }
                    failure => return Err(ctx.write_error(failure)),
                },
            }
        }
    }

    /// CompleteMultipartUpload said `NoSuchUpload`: if an object of the uploaded size is
    /// there, an earlier attempt (whose answer was lost) completed it.
    async fn after_lost_complete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        size: u64,
        mode: PutMode,
    ) -> Result<(), StoreError> {
        let head = self
            .inner
            .client
            .head_object()
            .bucket(&self.inner.bucket)
            .key(name)
            .send()
            .await;
        match head {
            Ok(h) if h.content_length() == Some(size as i64) => match mode {
                PutMode::Overwrite => Ok(()),
                // As for a 412 after a retry: the caller compares contents.
                PutMode::CreateOnly => Err(ctx.already_exists()),
            },
            _ => Err(ctx.remote(
                "NoSuchUpload",
                "the multipart upload vanished before it was completed".into(),
            )),
        }
    }

    /// GET with an optional `Range`, the whole body collected.
    async fn get_bytes(
        &self,
        ctx: &Ctx<'_>,
        range: Option<(u64, u64)>,
    ) -> Result<Option<(Bytes, bool)>, StoreError> {
        let name = self.object_name(ctx.key);
        let mut attempt = 1;
        loop {
            let mut req = self
                .inner
                .client
                .get_object()
                .bucket(&self.inner.bucket)
                .key(&name);
            if let Some((first, last)) = range {
                req = req.range(format!("bytes={first}-{last}"));
            }
            let out = match req.send().await {
                Ok(out) => out,
                Err(e) => {
                    return match ctx.classify(e) {
                        Failure::NotFound => Err(ctx.not_found()),
                        Failure::RangeNotSatisfiable => Ok(None),
                        failure => Err(ctx.read_error(failure)),
                    }
                }
            };
            let partial = out.content_range().is_some();
            match out.body.collect().await {
                Ok(body) => return Ok(Some((body.into_bytes(), partial))),
                // The SDK does not retry a body that broke off; do it here.
                Err(_) if attempt < self.inner.max_attempts => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
                }
                Err(e) => {
                    return Err(ctx.io(io::Error::other(format!(
                        "reading the response body: {}",
                        error_chain(&e)
                    ))))
                }
            }
        }
    }
}

/// An error and its sources, `: `-separated (without the Debug dump that the SDK's
/// `DisplayErrorContext` appends).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// Sleeps a little (with jitter) before retrying a conflicting conditional write.
async fn conflict_backoff(attempt: u32) {
    let ms = 50u64 << attempt.min(6);
    let jitter = rand::random::<u64>() % ms;
    tokio::time::sleep(Duration::from_millis(ms / 2 + jitter)).await;
}

/// Aborts a multipart upload when dropped while armed (`upload_id` is `Some`).
struct AbortGuard {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let req = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id);
        handle.spawn(async move {
            let _ = req.send().await;
        });
    }
}

/// One part of a multipart upload: read from the file, then sent.
struct PartJob {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    path: Arc<PathBuf>,
    number: i32,
    offset: u64,
    len: u64,
}

enum PartFailure {
    File(io::Error),
    Remote(Box<SdkError<aws_sdk_s3::operation::upload_part::UploadPartError, HttpResponse>>),
}

impl PartJob {
    async fn run(self) -> Result<CompletedPart, PartFailure> {
        let body = read_part(&self.path, self.offset, self.len)
            .await
            .map_err(PartFailure::File)?;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(self.number)
            .content_length(body.len() as i64)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| PartFailure::Remote(Box::new(e)))?;
        Ok(CompletedPart::builder()
            .part_number(self.number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
            .set_checksum_crc32_c(out.checksum_crc32_c().map(str::to_string))
            .set_checksum_crc64_nvme(out.checksum_crc64_nvme().map(str::to_string))
            .set_checksum_sha1(out.checksum_sha1().map(str::to_string))
            .set_checksum_sha256(out.checksum_sha256().map(str::to_string))
            .build())
    }
}

/// Reads `len` bytes at `offset` of the file; a file that got shorter is an error.
async fn read_part(path: &std::path::Path, offset: u64, len: u64) -> io::Result<Bytes> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(SeekFrom::Start(offset)).await?;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    (&mut file).take(len).read_to_end(&mut buf).await?;
    if (buf.len() as u64) != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("file shrank while it was uploaded (part at offset {offset})"),
        ));
    }
    Ok(Bytes::from(buf))
}

/// What went wrong with one request, in the terms this store cares about.
#[derive(Debug)]
enum Failure {
    NotFound,
    PreconditionFailed,
    Conflict,
    RangeNotSatisfiable,
    /// The service answered with an error.
    Service {
        status: Option<u16>,
        code: String,
        message: String,
    },
    /// No (usable) answer: connection, timeout, ... `code` names which.
    Transport {
        code: &'static str,
        detail: String,
    },
}

/// The operation and key a request was for, to build errors.
struct Ctx<'a> {
    inner: &'a Inner,
    op: &'static str,
    key: &'a str,
}

impl Ctx<'_> {
    fn io(&self, source: io::Error) -> StoreError {
        StoreError::Io {
            store: self.inner.describe.clone(),
            op: self.op,
            key: self.key.to_string(),
            source,
        }
    }

    fn not_found(&self) -> StoreError {
        StoreError::NotFound {
            store: self.inner.describe.clone(),
            key: self.key.to_string(),
        }
    }

    fn already_exists(&self) -> StoreError {
        StoreError::AlreadyExists {
            store: self.inner.describe.clone(),
            key: self.key.to_string(),
        }
    }

    /// A failure worth retrying later (no answer, an overloaded or failing
    /// service): see [`RemoteError::transient`].
    fn remote(&self, code: &str, message: String) -> StoreError {
        self.remote_with(code, message, true)
    }

    fn remote_with(&self, code: &str, message: String, transient: bool) -> StoreError {
        StoreError::Remote(Box::new(RemoteError {
            store: self.inner.describe.clone(),
            op: self.op,
            key: self.key.to_string(),
            code: code.to_string(),
            message,
            transient,
        }))
    }

    /// Sorts an SDK error into a [`Failure`].
    fn classify<E>(&self, err: SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        match &err {
            SdkError::ServiceError(service) => {
                let e = service.err();
                let code = e.code().map(str::to_string);
                let message = e.message().unwrap_or_default().to_string();
                match (code.as_deref(), status) {
                    (Some("NoSuchKey"), _) | (Some("NotFound") | None, Some(404)) => {
                        Failure::NotFound
                    }
                    (Some("PreconditionFailed"), _) | (_, Some(412)) => Failure::PreconditionFailed,
                    (Some("ConditionalRequestConflict"), _) => Failure::Conflict,
                    (Some("InvalidRange"), _) | (_, Some(416)) => Failure::RangeNotSatisfiable,
                    _ => Failure::Service {
                        status,
                        code: code.unwrap_or_else(|| match status {
                            Some(s) => format!("HTTP {s}"),
                            None => "UnknownError".to_string(),
                        }),
                        message,
                    },
                }
            }
            SdkError::ResponseError(_) => Failure::Transport {
                code: "InvalidResponse",
                detail: format!(
                    "the endpoint's answer (HTTP {}) could not be understood: {}",
                    status.map_or("?".to_string(), |s| s.to_string()),
                    error_chain(&err)
                ),
            },
            SdkError::DispatchFailure(d) => {
                let code = if d.is_timeout() {
                    "Timeout"
                } else if d.is_io() {
                    "ConnectFailed"
                } else {
                    "DispatchFailure"
                };
                Failure::Transport {
                    code,
                    detail: error_chain(&err),
                }
            }
            SdkError::TimeoutError(_) => Failure::Transport {
                code: "Timeout",
                detail: error_chain(&err),
            },
            _ => Failure::Transport {
                code: "RequestFailed",
                detail: error_chain(&err),
            },
        }
    }

    /// The error for a failed write (412 means the key exists).
    fn write_error(&self, failure: Failure) -> StoreError {
        match failure {
            Failure::PreconditionFailed => self.already_exists(),
            other => self.error(other),
        }
    }

    /// The error for a failed read (404 means the key is missing).
    fn read_error(&self, failure: Failure) -> StoreError {
        match failure {
            Failure::NotFound => self.not_found(),
            other => self.error(other),
        }
    }

    /// Turns a failure into a message that says what to check.
    fn error(&self, failure: Failure) -> StoreError {
        let inner = self.inner;
        let attempts = inner.max_attempts;
        let transient = match &failure {
            Failure::Transport { .. } | Failure::Conflict => true,
            Failure::Service { status, code, .. } => {
                status.is_some_and(|s| s >= 500)
                    || matches!(
                        code.as_str(),
                        "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout"
                    )
            }
            _ => false,
        };
        let (code, message) = match failure {
            Failure::NotFound => ("NoSuchKey".to_string(), "not found".to_string()),
            Failure::PreconditionFailed => (
                "PreconditionFailed".to_string(),
                "a condition of the request did not hold".to_string(),
            ),
            Failure::Conflict => (
                "ConditionalRequestConflict".to_string(),
                "other conditional writes to this key kept conflicting with this one".to_string(),
            ),
            Failure::RangeNotSatisfiable => (
                "InvalidRange".to_string(),
                "the requested range is not satisfiable".to_string(),
            ),
            Failure::Service {
                status,
                code,
                message,
            } => {
                let said = if message.is_empty() {
                    String::new()
                } else {
                    format!(" (the service said: {message})")
                };
                let explained = match code.as_str() {
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "InvalidToken"
                    | "ExpiredToken"
                    | "TokenRefreshRequired"
                    | "InvalidSecurity" => format!(
                        "the credentials are wrong: {} rejected the access key ID or secret \
                         access key; check {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY}{said}",
                        inner.endpoint
                    ),
                    "AuthorizationHeaderMalformed" => format!(
                        "the request was signed for the wrong region: set region= in the \
                         replica URL{said}"
                    ),
                    "AccessDenied" | "AllAccessDisabled" => format!(
                        "access denied: the credentials are not allowed to {} in bucket {} \
                         (walstream needs s3:PutObject, s3:GetObject, s3:DeleteObject and \
                         s3:ListBucket on it); if the credentials may be wrong, check \
                         {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY}{said}",
                        self.op, inner.bucket
                    ),
                    "NoSuchBucket" => format!(
                        "bucket {} does not exist at {}: create it, or fix the bucket name in \
                         the replica URL{said}",
                        inner.bucket, inner.endpoint
                    ),
                    "PermanentRedirect"
                    | "TemporaryRedirect"
                    | "IllegalLocationConstraintException" => format!(
                        "bucket {} is in another region or needs another endpoint: set \
                         region= (and endpoint=) in the replica URL{said}",
                        inner.bucket
                    ),
                    "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout" => {
                        format!("the service kept failing after {attempts} attempts{said}")
                    }
                    _ if status.is_some_and(|s| s >= 500) => {
                        format!("the service kept failing after {attempts} attempts{said}")
                    }
                    _ if status == Some(403) => format!(
                        "forbidden: wrong credentials or missing permissions on bucket {} \
                         (check {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY}){said}",
                        inner.bucket
                    ),
                    _ if message.is_empty() => "the request failed".to_string(),
                    _ => message.clone(),
                };
                (code, explained)
            }
            Failure::Transport { code, detail } => {
                let what = match code {
                    "ConnectFailed" => "could not connect to",
                    "Timeout" => "no answer in time from",
                    _ => "request failed at",
                };
                (
                    code.to_string(),
                    format!(
                        "{what} the S3 endpoint {} (after {attempts} attempts): {detail}",
                        inner.endpoint
                    ),
                )
            }
        };
        self.remote_with(&code, message, transient)
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<(), StoreError> {
        validate_key(key)?;
        let ctx = self.ctx("put", key);
        self.put_body(&ctx, body, mode).await
    }

    async fn put_file(&self, key: &str, path: PathBuf, mode: PutMode) -> Result<(), StoreError> {
        validate_key(key)?;
        let ctx = self.ctx("put_file", key);
        let meta = tokio::fs::metadata(&path).await.map_err(|e| ctx.io(e))?;
        if !meta.is_file() {
            return Err(ctx.io(io::Error::other(format!(
                "{} is not a regular file",
                path.display()
            ))));
        }
        let size = meta.len();
        if size < MULTIPART_THRESHOLD {
            let body = read_part(&path, 0, size).await.map_err(|e| ctx.io(e))?;
            self.put_body(&ctx, body, mode).await
        } else {
            self.put_multipart(&ctx, path, size, mode).await
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let ctx = self.ctx("get", key);
        match self.get_bytes(&ctx, None).await? {
            Some((body, _)) => Ok(body),
            None => Ok(Bytes::new()),
        }
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let ctx = self.ctx("get_range", key);
        // No object is this big; HTTP servers may not parse such numbers.
        const MAX_POS: u64 = i64::MAX as u64;
        if len == 0 || offset >= MAX_POS {
            // Still NotFound for a missing key: probe one byte.
            self.get_bytes(&ctx, Some((0, 0))).await?;
            return Ok(Bytes::new());
        }
        let last = offset.saturating_add(len - 1).min(MAX_POS - 1);
        match self.get_bytes(&ctx, Some((offset, last))).await? {
            // 416: the range starts at or past the end.
            None => Ok(Bytes::new()),
            Some((body, true)) => Ok(body),
            // No Content-Range: the service sent the whole object.
            Some((body, false)) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(body.len());
                let end = usize::try_from(last.saturating_add(1))
                    .unwrap_or(usize::MAX)
                    .min(body.len());
                Ok(body.slice(start..end))
            }
        }
    }

    async fn get_reader(&self, key: &str) -> Result<ObjectReader, StoreError> {
        validate_key(key)?;
        let ctx = self.ctx("get_reader", key);
        let out = self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.bucket)
            .key(self.object_name(key))
            .send()
            .await
            .map_err(|e| ctx.read_error(ctx.classify(e)))?;
        Ok(Box::pin(out.body.into_async_read()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let ctx = self.ctx("list", prefix);
        let inner = &self.inner;
        let full_prefix = format!("{}{prefix}", inner.root);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = inner
                .client
                .list_objects_v2()
                .bucket(&inner.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| match ctx.classify(e) {
                    // Only the bucket can be missing here; say so.
                    Failure::NotFound => ctx.error(Failure::Service {
                        status: Some(404),
                        code: "NoSuchBucket".into(),
                        message: String::new(),
                    }),
                    failure => ctx.error(failure),
                })?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&inner.root)) else {
                    continue;
                };
                // Directory markers and foreign objects no key can address.
                if !key.starts_with(prefix) || validate_key(key).is_err() {
                    continue;
                }
                out.push(ObjectMeta {
                    key: key.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) && !next.is_empty() => {
                    token = Some(next.to_string());
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        let ctx = self.ctx("delete", key);
        match self
            .inner
            .client
            .delete_object()
            .bucket(&self.inner.bucket)
            .key(self.object_name(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match ctx.classify(e) {
                Failure::NotFound => Ok(()),
                failure => Err(ctx.error(failure)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn credentials_from_config_or_env() {
        let mut config = S3Config::new("b", "p");
        let err = resolve_credentials(&config, env_of(&[])).unwrap_err();
        assert!(
            err.contains("AWS_ACCESS_KEY_ID") && err.contains("AWS_SECRET_ACCESS_KEY"),
            "{err}"
        );
        let err = resolve_credentials(&config, env_of(&[("AWS_ACCESS_KEY_ID", "ak")])).unwrap_err();
        assert!(err.contains("(AWS_SECRET_ACCESS_KEY not set)"), "{err}");
        let creds = resolve_credentials(
            &config,
            env_of(&[
                ("AWS_ACCESS_KEY_ID", "ak"),
                ("AWS_SECRET_ACCESS_KEY", "sk"),
                ("AWS_SESSION_TOKEN", "tok"),
            ]),
        )
        .unwrap();
        assert_eq!(creds.access_key_id(), "ak");
        assert_eq!(creds.secret_access_key(), "sk");
        assert_eq!(creds.session_token(), Some("tok"));

        config.access_key_id = Some("cfg-ak".into());
        config.secret_access_key = Some("cfg-sk".into());
        let creds = resolve_credentials(
            &config,
            env_of(&[("AWS_ACCESS_KEY_ID", "ak"), ("AWS_SESSION_TOKEN", "tok")]),
        )
        .unwrap();
        assert_eq!(creds.access_key_id(), "cfg-ak");
        assert_eq!(creds.secret_access_key(), "cfg-sk");
        assert_eq!(creds.session_token(), None, "env token only with env keys");
    }

    #[test]
    fn missing_credentials_fail_at_open_and_name_the_variables() {
        let err = S3Store::with_env(S3Config::new("bucket", "pre/fix"), env_of(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("s3://bucket/pre/fix: "), "{msg}");
        assert!(msg.contains("AWS_ACCESS_KEY_ID"), "{msg}");
        assert!(msg.contains("AWS_SECRET_ACCESS_KEY"), "{msg}");
    }

    #[test]
    fn secrets_never_in_debug_or_describe() {
        let mut config = S3Config::new("bucket", "/pre/");
        config.access_key_id = Some("AKIDMARKER".into());
        config.secret_access_key = Some("SECRETMARKER".into());
        config.session_token = Some("TOKENMARKER".into());
        config.endpoint = Some("http://127.0.0.1:9".into());
        let store = S3Store::with_env(config.clone(), env_of(&[])).unwrap();
        for text in [
            format!("{config:?}"),
            format!("{store:?}"),
            store.describe(),
        ] {
            for secret in ["AKIDMARKER", "SECRETMARKER", "TOKENMARKER"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        // The SDK's own Debug shows the access key ID (not a secret), never the secret.
        let sdk = format!("{:?}", store.inner.client.config());
        for secret in ["SECRETMARKER", "TOKENMARKER"] {
            assert!(!sdk.contains(secret), "{secret} in {sdk}");
        }
        assert_eq!(store.describe(), "s3://bucket/pre");
        assert_eq!(store.object_name("a/b"), "pre/a/b");
        let root = S3Store::with_env(
            S3Config {
                prefix: String::new(),
                ..config
            },
            env_of(&[]),
        )
        .unwrap();
        assert_eq!(root.describe(), "s3://bucket");
        assert_eq!(root.object_name("a/b"), "a/b");
    }

    #[test]
    fn bad_configuration_is_rejected() {
        let creds = env_of(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "s")]);
        let mut config = S3Config::new("b", "");
        config.endpoint = Some("127.0.0.1:9000".into());
        let err = S3Store::with_env(config, &creds).unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
        let err = S3Store::with_env(S3Config::new("", ""), &creds).unwrap_err();
        assert!(err.to_string().contains("bucket"), "{err}");
    }
}
