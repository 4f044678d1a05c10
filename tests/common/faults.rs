//! Raw-TCP fault server (see issue 7): one mode per way a peer can misbehave.
//!
//! [`FaultServer::start`] listens on `127.0.0.1:0` and answers every connection
//! according to the current [`Mode`], which tests may switch at any time with
//! [`FaultServer::set_mode`]. The mode is read when a connection is accepted,
//! and every answer closes its connection, so each request uses a connection
//! of its own and the counters stay easy to reason about.
//!
//! The server is bounded: it only answers what the client sends, every loop
//! that writes stops when the client goes away or after a fixed amount of
//! data, and dropping the [`FaultServer`] aborts the accept task and, with it,
//! every connection task.
#![allow(dead_code, unreachable_pub)]

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// The largest request head (request line and headers) the server reads.
const MAX_HEAD: usize = 64 * 1024;
/// The largest request body the server drains.
const MAX_BODY: usize = 1024 * 1024;
/// The `Content-Length` that `ShortBody` and `Drip` announce.
pub const ANNOUNCED_LENGTH: usize = 100;
/// The bytes of body `ShortBody` actually sends.
pub const SHORT_BODY_SENT: usize = 10;
/// The size of the header block `HugeHeaders` sends (1 MiB; hyper accepts ~400 KiB).
pub const HUGE_HEADERS_BYTES: usize = 1024 * 1024;
/// `EndlessChunked` gives up after this many bytes even if the client still reads.
const ENDLESS_CAP: usize = 256 * 1024 * 1024;
/// The body of every healthy answer.
pub const HEALTHY_BODY: &str = r#"{"ok":true}"#;
/// How long the `wait_for_*` helpers wait before they fail the test.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// How the server treats the next connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A valid `200 OK` with the JSON body [`HEALTHY_BODY`].
    Healthy,
    /// Accept the connection, never read from it nor write to it.
    AcceptNeverRead,
    /// Read the request head, never answer (the connection stays open until
    /// the client closes it).
    ReadNeverAnswer,
    /// Close the connection right after accepting it, before reading anything.
    CloseAfterAccept,
    /// Read the request, write part of the status line and headers, then reset
    /// the connection (`SO_LINGER` 0, then close).
    ResetMidHeaders,
    /// Answer bytes that are not HTTP, then close.
    Garbage,
    /// `200` with `Content-Length: 100`, then 10 bytes of body and close.
    ShortBody,
    /// `200` with `Content-Length: 100`, then the body one byte per `interval`.
    Drip {
        /// The pause before each byte of the body.
        interval: Duration,
    },
    /// `200` with a chunked JSON-ish body that never ends (stops when the client
    /// goes away, or after 256 MiB).
    EndlessChunked,
    /// `200` with a 1 MiB header block, more than hyper accepts.
    HugeHeaders,
    /// `302` with a `Location` pointing at the request's own path.
    RedirectLoop,
    /// `200` `application/json` with a body that is not JSON.
    BadJson,
    /// Read the request, then answer as `Healthy` once [`FaultServer::release`]
    /// lets the connection through (one release per request).
    Gated,
}

impl Mode {
    /// Every misbehaviour (all modes but `Healthy` and `Gated`), with `Drip`
    /// at `drip` per byte.
    pub fn faults(drip: Duration) -> [Self; 11] {
        [
            Self::AcceptNeverRead,
            Self::ReadNeverAnswer,
            Self::CloseAfterAccept,
            Self::ResetMidHeaders,
            Self::Garbage,
            Self::ShortBody,
            Self::Drip { interval: drip },
            Self::EndlessChunked,
            Self::HugeHeaders,
            Self::RedirectLoop,
            Self::BadJson,
        ]
    }
}

/// State shared by the server task, its connection tasks and the handle.
#[derive(Debug)]
struct Shared {
    mode: Mutex<Mode>,
    connections: AtomicUsize,
    requests: AtomicUsize,
    open: AtomicUsize,
    changed: Notify,
    gate: Semaphore,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// Counts a connection as open until it is dropped (also when aborted).
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// A running fault server; dropping it stops the server and every connection.
#[derive(Debug)]
pub struct FaultServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultServer {
    /// Starts a server on `127.0.0.1:0` in `mode`.
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            changed: Notify::new(),
            gate: Semaphore::new(0),
        });
        let task = tokio::spawn(serve(listener, Arc::clone(&shared)));
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT/`, for `base_url`.
    pub fn uri(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Switches the mode for the connections accepted from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self
            .shared
            .mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = mode;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Request heads read so far (modes that never read count none).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted and not yet closed by either side.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Lets `n` requests waiting in [`Mode::Gated`] be answered.
    pub fn release(&self, n: usize) {
        self.shared.gate.add_permits(n);
    }

    /// Waits until at least `n` request heads were read; panics after 10 s.
    pub async fn wait_for_requests(&self, n: usize) {
        self.wait_until(|s| s.requests() >= n, "requests").await;
    }

    /// Waits until at least `n` connections were accepted; panics after 10 s.
    pub async fn wait_for_connections(&self, n: usize) {
        self.wait_until(|s| s.connections() >= n, "connections")
            .await;
    }

    /// Waits until at most `n` connections are open; panics after 10 s.
    pub async fn wait_for_open_connections_at_most(&self, n: usize) {
        self.wait_until(|s| s.open_connections() <= n, "open connections")
            .await;
    }

    async fn wait_until(&self, done: impl Fn(&Self) -> bool, what: &str) {
        let waiting = async {
            loop {
                let changed = self.shared.changed.notified();
                tokio::pin!(changed);
                // Register before checking, so a change in between is not lost.
                changed.as_mut().enable();
                if done(self) {
                    return;
                }
                changed.await;
            }
        };
        let waited = tokio::time::timeout(WAIT_LIMIT, waiting).await;
        assert!(
            waited.is_ok(),
            "fault server: gave up waiting for {what} ({} connections, {} requests, {} open)",
            self.connections(),
            self.requests(),
            self.open_connections()
        );
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                shared.open.fetch_add(1, Ordering::SeqCst);
                shared.bump(&shared.connections);
                let guard = OpenGuard(Arc::clone(&shared));
                let mode = shared.mode();
                connections.spawn(async move {
                    // Errors only mean the client went away; nothing to report.
                    let _ = handle(stream, mode, &guard.0).await;
                    drop(guard);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one connection in `mode`.
async fn handle(mut stream: TcpStream, mode: Mode, shared: &Shared) -> io::Result<()> {
    match mode {
        Mode::AcceptNeverRead => return hold(stream).await,
        Mode::CloseAfterAccept => return Ok(()),
        _ => {}
    }
    let Some(head) = read_request(&mut stream).await? else {
        return Ok(());
    };
    shared.bump(&shared.requests);
    match mode {
        Mode::Healthy => write_healthy(&mut stream).await,
        Mode::Gated => {
            let permit = shared
                .gate
                .acquire()
                .await
                .map_err(|_| io::Error::other("gate closed"))?;
            permit.forget();
            write_healthy(&mut stream).await
        }
        Mode::ReadNeverAnswer => drain_until_eof(&mut stream).await,
        Mode::ResetMidHeaders => reset_mid_headers(stream).await,
        Mode::Garbage => {
            stream
                .write_all(b"SSH-2.0-OpenSSH_9.6 not http at all\r\n\r\n\x00\x01\x02\xff")
                .await?;
            close(stream).await
        }
        Mode::ShortBody => short_body(stream).await,
        Mode::Drip { interval } => drip(stream, interval).await,
        Mode::EndlessChunked => endless_chunked(stream).await,
        Mode::HugeHeaders => huge_headers(stream).await,
        Mode::RedirectLoop => {
            let target = head.target();
            let answer = format!(
                "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(answer.as_bytes()).await?;
            close(stream).await
        }
        Mode::BadJson => {
            let body = r#"{"ok": tru"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await?;
            close(stream).await
        }
        Mode::AcceptNeverRead | Mode::CloseAfterAccept => Ok(()),
    }
}

/// Part of a status line and headers, then a reset (`SO_LINGER` 0, close).
async fn reset_mid_headers(mut stream: TcpStream) -> io::Result<()> {
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: applica")
        .await?;
    stream.flush().await?;
    // Let the partial head reach the client before the reset.
    tokio::time::sleep(Duration::from_millis(20)).await;
    stream.set_zero_linger()?;
    drop(stream);
    Ok(())
}

/// `Content-Length: 100`, 10 bytes of body, close.
async fn short_body(mut stream: TcpStream) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {ANNOUNCED_LENGTH}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&[b' '; SHORT_BODY_SENT]).await?;
    close(stream).await
}

/// `Content-Length: 100`, then one byte per `interval`.
async fn drip(mut stream: TcpStream, interval: Duration) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {ANNOUNCED_LENGTH}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;
    for _ in 0..ANNOUNCED_LENGTH {
        tokio::time::sleep(interval).await;
        stream.write_all(b".").await?;
        stream.flush().await?;
    }
    close(stream).await
}

/// A chunked body that goes on until the client leaves (or 256 MiB).
async fn endless_chunked(mut stream: TcpStream) -> io::Result<()> {
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await?;
    let data = vec![b' '; 8 * 1024];
    let chunk = [
        format!("{:x}\r\n", data.len()).into_bytes(),
        data,
        b"\r\n".to_vec(),
    ]
    .concat();
    let mut sent = 0;
    while sent < ENDLESS_CAP {
        stream.write_all(&chunk).await?;
        sent += chunk.len();
    }
    Ok(())
}

/// A 1 MiB header block of 1 KiB headers.
async fn huge_headers(mut stream: TcpStream) -> io::Result<()> {
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n")
        .await?;
    let value = "v".repeat(1000);
    let mut sent = 0;
    let mut i = 0;
    while sent < HUGE_HEADERS_BYTES {
        let line = format!("x-filler-{i:05}: {value}\r\n");
        stream.write_all(line.as_bytes()).await?;
        sent += line.len();
        i += 1;
    }
    stream.write_all(b"\r\n").await?;
    close(stream).await
}

/// Keeps the connection open without touching it, until the task is aborted.
async fn hold(stream: TcpStream) -> io::Result<()> {
    std::future::pending::<()>().await;
    drop(stream);
    Ok(())
}

/// Reads and discards until the client closes the connection.
async fn drain_until_eof(stream: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

async fn write_healthy(stream: &mut TcpStream) -> io::Result<()> {
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{HEALTHY_BODY}",
        HEALTHY_BODY.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// Ends the response with a FIN (the request was read whole, so no RST).
async fn close(mut stream: TcpStream) -> io::Result<()> {
    stream.flush().await?;
    stream.shutdown().await
}

/// The head of a request the server read.
struct Head {
    text: String,
}

impl Head {
    /// The request target of the request line (`/path?query`).
    fn target(&self) -> &str {
        self.text.split_whitespace().nth(1).unwrap_or("/")
    }

    fn content_length(&self) -> usize {
        self.text
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Reads one request head and drains its body (`Content-Length` only);
/// `None` when the client closed first.
async fn read_request(stream: &mut TcpStream) -> io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::other("request head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = Head {
        text: String::from_utf8_lossy(&buf[..end]).into_owned(),
    };
    let mut body_left = head
        .content_length()
        .min(MAX_BODY)
        .saturating_sub(buf.len() - end);
    while body_left > 0 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body_left = body_left.saturating_sub(n);
    }
    Ok(Some(head))
}
