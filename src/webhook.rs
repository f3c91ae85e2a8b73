//! Webhook notifications: a JSON POST when a database's health changes, and
//! optionally a heartbeat after each snapshot. Deliveries run on one task
//! behind a bounded queue (a full queue drops the event with a log line rather
//! than block monitoring), are retried with backoff, and are rate-limited.
//!
//! Payloads hold no secret: the database path, the replica as
//! `ObjectStore::describe` gives it (bucket and prefix, never keys or
//! endpoints with credentials), levels, reasons and txids. The webhook URL
//! itself (which may carry a token) is never logged or echoed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

/// Events waiting for delivery; beyond this they are dropped.
const QUEUE: usize = 32;
const ATTEMPTS: u32 = 5;
const TIMEOUT: Duration = Duration::from_secs(10);
/// At most one delivery per this interval (health changes wait, in order).
const MIN_GAP: Duration = Duration::from_secs(1);
/// Heartbeats closer together than this are skipped.
const HEARTBEAT_GAP: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook URL is not valid")]
    Url,
    #[error("cannot set up TLS for the webhook: {0}")]
    Tls(std::io::Error),
}

/// The JSON body of every POST (`docs/monitoring.md`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// `health_changed` or `heartbeat`.
    pub event: &'static str,
    pub time: String,
    pub host: String,
    pub database: String,
    pub replica: String,
    pub health: crate::health::Level,
    pub previous: Option<crate::health::Level>,
    pub reasons: Vec<String>,
    pub last_shipped_txid: u64,
    pub last_snapshot_time: Option<String>,
    pub last_snapshot: Option<String>,
}

/// Queues events for the delivery task.
#[derive(Clone)]
pub struct Webhook {
    tx: mpsc::Sender<Event>,
}

/// Called after each delivery with whether it succeeded.
pub type ResultFn = Arc<dyn Fn(&Event, bool) + Send + Sync>;

impl Webhook {
    /// Starts the delivery task for `url`.
    pub fn spawn(
        url: &str,
        on_result: ResultFn,
    ) -> Result<(Webhook, tokio::task::JoinHandle<()>), WebhookError> {
        let uri: hyper::Uri = url.parse().map_err(|_| WebhookError::Url)?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(WebhookError::Url);
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(WebhookError::Tls)?
            .https_or_http()
            .enable_http1()
            .build();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(deliver_all(client, uri, rx, on_result));
        Ok((Webhook { tx }, task))
    }

    /// Queues `event`; never waits.
    pub fn send(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            tracing::warn!("webhook queue full or closed; event dropped");
        }
    }
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

async fn deliver_all(
    client: HttpsClient,
    uri: hyper::Uri,
    mut rx: mpsc::Receiver<Event>,
    on_result: ResultFn,
) {
    let mut last: Option<Instant> = None;
    let mut last_heartbeat: Option<Instant> = None;
    while let Some(event) = rx.recv().await {
        if event.event == "heartbeat" && last_heartbeat.is_some_and(|t| t.elapsed() < HEARTBEAT_GAP)
        {
            continue;
        }
        if let Some(t) = last {
            tokio::time::sleep(MIN_GAP.saturating_sub(t.elapsed())).await;
        }
        let ok = deliver(&client, &uri, &event).await;
        last = Some(Instant::now());
        if event.event == "heartbeat" {
            last_heartbeat = last;
        }
        on_result(&event, ok);
    }
}

/// POSTs with retries: 1 s, 2 s, 4 s, 8 s apart (jittered).
async fn deliver(client: &HttpsClient, uri: &hyper::Uri, event: &Event) -> bool {
    let Ok(body) = serde_json::to_vec(event) else {
        return false;
    };
    let body = Bytes::from(body);
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            let wait =
                Duration::from_secs(1 << (attempt - 1)).mul_f64(rand::random_range(0.8..1.2));
            tokio::time::sleep(wait).await;
        }
        match post(client, uri, body.clone()).await {
            Ok(status) if status.is_success() => return true,
            // The URL is not logged: it may hold a token.
            Ok(status) => tracing::warn!(%status, attempt, "webhook refused the event"),
            Err(e) => tracing::warn!(error = %e, attempt, "webhook delivery failed"),
        }
    }
    false
}

async fn post(
    client: &HttpsClient,
    uri: &hyper::Uri,
    body: Bytes,
) -> Result<hyper::StatusCode, String> {
    let req = hyper::Request::post(uri.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("walstream/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(TIMEOUT, client.request(req)).await {
        Ok(Ok(resp)) => Ok(resp.status()),
        // hyper's errors can name the URI: keep only the kind of failure.
        Ok(Err(e)) if e.is_connect() => Err("cannot connect".into()),
        Ok(Err(_)) => Err("request failed".into()),
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A server answering each connection with the next status in `codes`,
    /// counting requests.
    fn server(codes: Vec<u16>) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        std::thread::spawn(move || {
            for (code, stream) in codes.into_iter().zip(listener.incoming()) {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let reply =
                    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(reply.as_bytes());
            }
        });
        (url, count)
    }

    fn event() -> Event {
        Event {
            event: "health_changed",
            time: String::new(),
            host: String::new(),
            database: "/d/a.db".into(),
            replica: "/r".into(),
            health: crate::health::Level::Critical,
            previous: Some(crate::health::Level::Healthy),
            reasons: vec![],
            last_shipped_txid: 1,
            last_snapshot_time: None,
            last_snapshot: None,
        }
    }

    #[tokio::test]
    async fn a_refused_delivery_is_retried() {
        let (url, count) = server(vec![503, 200]);
        let (tx, mut rx) = mpsc::channel(1);
        let (hook, _task) = Webhook::spawn(
            &url,
            Arc::new(move |_: &Event, ok: bool| {
                let _ = tx.try_send(ok);
            }),
        )
        .unwrap();
        hook.send(event());
        assert_eq!(rx.recv().await, Some(true));
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn heartbeats_are_rate_limited() {
        let (url, count) = server(vec![200, 200, 200]);
        let (tx, mut rx) = mpsc::channel(4);
        let (hook, _task) = Webhook::spawn(
            &url,
            Arc::new(move |_: &Event, ok: bool| {
                let _ = tx.try_send(ok);
            }),
        )
        .unwrap();
        let beat = Event {
            event: "heartbeat",
            ..event()
        };
        hook.send(beat.clone());
        hook.send(beat);
        hook.send(event());
        // The health change is delivered after the first heartbeat; the
        // second heartbeat, within HEARTBEAT_GAP, is skipped.
        assert_eq!(rx.recv().await, Some(true));
        assert_eq!(rx.recv().await, Some(true));
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn only_http_urls_are_accepted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let noop: ResultFn = Arc::new(|_: &Event, _: bool| {});
        for bad in ["ftp://x/y", "not a url", "http://"] {
            assert!(Webhook::spawn(bad, Arc::clone(&noop)).is_err(), "{bad}");
        }
    }
}
