//! A fault-injecting TCP proxy between walstream and the S3 test server.
//!
//! Requests pass through unchanged (so their signatures stay valid) until the
//! test switches the proxy into a failure mode. Switching closes every open
//! connection, so keep-alive connections cannot slip past a new mode.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the proxy does with each new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Answer every request with `503 SlowDown`.
    SlowDown,
    /// Answer every request with `500 InternalError`.
    InternalError,
    /// Forward, holding every chunk the client sends back this long.
    Latency(Duration),
    /// Accept, then close at once (the client sees a dropped connection).
    Drop,
    /// Accept and never answer (the client times out).
    Blackhole,
}

struct Shared {
    fault: Mutex<Fault>,
    /// Sockets of open connections, to cut them when the mode changes.
    open: Mutex<Vec<TcpStream>>,
    connections: AtomicU64,
}

/// A running proxy; it stops when the test process ends.
pub struct FaultProxy {
    pub endpoint: String,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts a proxy on a loopback port in front of `upstream`
    /// (`http://host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::Pass),
            open: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                s.connections.fetch_add(1, Ordering::SeqCst);
                let fault = *s.fault.lock().expect("fault lock");
                let (s2, up) = (Arc::clone(&s), upstream.clone());
                thread::spawn(move || handle(client, &up, fault, &s2));
            }
        });
        FaultProxy { endpoint, shared }
    }

    /// Switches the mode for new connections and cuts the open ones.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().expect("fault lock") = fault;
        for sock in self.shared.open.lock().expect("open lock").drain(..) {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

fn handle(mut client: TcpStream, upstream: &str, fault: Fault, s: &Shared) {
    match fault {
        Fault::Pass => forward(client, upstream, Duration::ZERO, s),
        Fault::Latency(d) => forward(client, upstream, d, s),
        Fault::SlowDown => answer(&mut client, "503 Slow Down", "SlowDown", s),
        Fault::InternalError => {
            answer(&mut client, "500 Internal Server Error", "InternalError", s)
        }
        Fault::Drop => {
            let _ = client.shutdown(Shutdown::Both);
        }
        Fault::Blackhole => {
            track(s, &client);
            let mut sink = [0u8; 64 * 1024];
            while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
        }
    }
}

fn track(s: &Shared, sock: &TcpStream) {
    if let Ok(c) = sock.try_clone() {
        s.open.lock().expect("open lock").push(c);
    }
}

/// Reads request heads and answers each with an S3 error document, until the
/// client closes (a body sent with a request is read and dropped).
fn answer(client: &mut TcpStream, status: &str, code: &str, s: &Shared) {
    track(s, client);
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            match client.read(&mut chunk) {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        // Drop the request body, which may still be arriving.
        let mut rest = body_len.saturating_sub(buf.len() - end - 4);
        buf.drain(..(end + 4 + body_len).min(buf.len()));
        while rest > 0 {
            match client.read(&mut chunk[..rest.min(64 * 1024)]) {
                Ok(n) if n > 0 => rest -= n,
                _ => return,
            }
        }
        let doc = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
             <Message>injected by the test proxy</Message></Error>"
        );
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{doc}",
            doc.len()
        );
        if client.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn forward(client: TcpStream, upstream: &str, delay: Duration, s: &Shared) {
    let Ok(server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    track(s, &client);
    track(s, &server);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || pipe(client, server, delay));
    pipe(s2, c2, Duration::ZERO);
    let _ = up.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(n) if n > 0 => {
                if !delay.is_zero() {
                    thread::sleep(delay);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
