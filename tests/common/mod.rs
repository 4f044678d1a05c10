//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]
// Test support: a failed setup step should panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "dns")]
pub mod dns;
pub mod faults;
pub mod scenario;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use resilient_http::{ApiClient, ApiClientBuilder, RetryBudget, RetryPolicy};
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

/// A loopback port nothing listens on (bound, then released): connecting to
/// it is refused.
pub fn closed_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `attempts` in all, 1 ms apart, with no budget to run out of.
pub fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential()
        .max_attempts(attempts)
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(1))
        .jitter(false)
        .budget(RetryBudget::unlimited())
}

/// A builder for `uri` with settings fast enough for tests: short timeouts,
/// 1 ms backoff without jitter, default breaker and budget.
pub fn fast_builder(uri: &str) -> ApiClientBuilder {
    ApiClient::builder()
        .base_url(uri)
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(2))
        .total_timeout(Duration::from_secs(5))
        .retry(
            RetryPolicy::exponential()
                .initial_backoff(Duration::from_millis(1))
                .max_backoff(Duration::from_millis(5))
                .jitter(false),
        )
}

/// A client for a wiremock server, with `fast_builder` settings.
pub fn client_for(server: &MockServer) -> ApiClient {
    fast_builder(&server.uri())
        .build()
        .expect("valid test client")
}

/// Answers with each template in turn; the last one repeats.
#[derive(Clone)]
pub struct Sequence {
    templates: Arc<Vec<ResponseTemplate>>,
    next: Arc<AtomicUsize>,
}

impl Sequence {
    pub fn new(templates: impl IntoIterator<Item = ResponseTemplate>) -> Self {
        let templates: Vec<_> = templates.into_iter().collect();
        assert!(!templates.is_empty(), "a sequence needs a response");
        Self {
            templates: Arc::new(templates),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Statuses with empty bodies, in turn.
    pub fn statuses(codes: &[u16]) -> Self {
        Self::new(codes.iter().map(|c| ResponseTemplate::new(*c)))
    }

    /// Requests answered so far.
    pub fn served(&self) -> usize {
        self.next.load(Ordering::SeqCst)
    }
}

impl Respond for Sequence {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        self.templates[i.min(self.templates.len() - 1)].clone()
    }
}

/// Standard base64, as etcd's JSON gateway takes keys and values.
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(ABC[(n >> (18 - 6 * i) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// The `Display` of each error in `err`'s source chain, outermost first
/// (`err` itself excluded; at most 32).
pub fn source_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut chain = Vec::new();
    let mut cause = err.source();
    while let Some(e) = cause {
        if chain.len() == 32 {
            break;
        }
        chain.push(e.to_string());
        cause = e.source();
    }
    chain
}

/// Waits until `done` holds, checking every millisecond, for at most 10 s
/// of real time.
pub async fn until(mut done: impl FnMut() -> bool) {
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < give_up {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(done(), "condition not met within 10 s");
}

/// The path of the server binary `name` (`etcd`, `redis-server`): on the
/// `PATH`, or in `/usr/bin` or `/usr/local/bin`.
pub fn find_binary(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A TCP port of 127.0.0.1 free a moment ago, for a server the test starts
/// in another process.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Requests the server has received.
pub async fn received(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

/// Connections a [`raw_server`] accepts before it stops listening.
pub const RAW_SERVER_MAX_CONNECTIONS: usize = 32;

/// Starts a raw HTTP/1.1 server on 127.0.0.1 for peers wiremock cannot play
/// (stalls, chunked bodies): on each accepted connection the request head is
/// read, then `script` gets the stream. Returns the base URL `http://127.0.0.1:port/`.
pub async fn raw_server<F, Fut>(script: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    raw_server_with_head(move |_, _, stream| script(stream)).await
}

/// As [`raw_server`], the script also getting the connection's number (0
/// for the first accepted) and the request head as text (lossy), to answer
/// by request (a `Last-Event-ID`, say).
pub async fn raw_server_with_head<F, Fut>(script: F) -> String
where
    F: Fn(usize, String, tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("listener address");
    let script = Arc::new(script);
    tokio::spawn(async move {
        for n in 0..RAW_SERVER_MAX_CONNECTIONS {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let script = Arc::clone(&script);
            tokio::spawn(async move {
                if let Some(head) = read_head(&mut stream).await {
                    script(n, head, stream).await;
                }
            });
        }
    });
    format!("http://{addr}/")
}

/// The value of header `name` (lowercase) in a request head, if present.
pub fn head_value<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Reads a request head (see [`read_request_head`]) and returns it as text.
/// It reads one byte at a time, so the body that follows stays unread.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read_u8().await {
            Ok(b) => head.push(b),
            Err(_) => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Reads a chunked request body (after [`read_head`]), at most `cap` bytes;
/// `None` if the peer left, sent bad framing or more than `cap`.
pub async fn read_chunked_body(stream: &mut tokio::net::TcpStream, cap: usize) -> Option<Vec<u8>> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    let mut reader = tokio::io::BufReader::new(stream);
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
        if body.len() + size > cap {
            return None;
        }
        let mut chunk = vec![0u8; size + 2]; // the data and its CRLF
        reader.read_exact(&mut chunk).await.ok()?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// Reads up to the end of a request head (`\r\n\r\n`, at most 64 KiB);
/// `false` if the peer left or sent too much first.
pub async fn read_request_head(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return false;
        }
    }
    true
}

/// Holds the connection open until the peer closes it (or it fails).
pub async fn until_peer_closes(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

// ---------------------------------------------------------------- tracing
//
// One global subscriber per test binary, writing into a buffer of the thread
// that emitted the event, and only while that thread captures. A global
// subscriber keeps callsite interest consistent across the parallel tests of
// a binary (thread-scoped subscribers can miss events then); per-thread
// buffers keep each test's output its own (a `#[tokio::test]` runs its calls
// on its own thread).

thread_local! {
    static CAPTURE_LEVEL: std::cell::Cell<Option<tracing::Level>> =
        const { std::cell::Cell::new(None) };
    static CAPTURED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes into the emitting thread's capture buffer.
struct ThreadBuffer;

impl std::io::Write for ThreadBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with(|c| c.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a thread captured since [`capture_traces`]; read it on that thread.
#[derive(Debug, Clone, Copy)]
pub struct Captured {
    thread: std::thread::ThreadId,
}

impl Captured {
    /// Everything written so far.
    pub fn text(self) -> String {
        assert_eq!(
            self.thread,
            std::thread::current().id(),
            "read the capture on the thread that made it"
        );
        CAPTURED.with(|c| String::from_utf8_lossy(&c.borrow()).into_owned())
    }
}

/// Stops this thread's capture when dropped.
#[derive(Debug)]
pub struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE_LEVEL.with(|l| l.set(None));
    }
}

/// Captures this thread's tracing output at `level` and above (plain text)
/// until the guard is dropped. Call it first in a test: a thread that used
/// tracing before the global subscriber existed keeps a no-op dispatcher.
pub fn capture_traces(level: tracing::Level) -> (Captured, CaptureGuard) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| ThreadBuffer)
            // Dynamic (not `filter_fn`, whose answer is cached per callsite):
            // asked on every event, on the emitting thread.
            .with_filter(tracing_subscriber::filter::dynamic_filter_fn(|meta, _| {
                CAPTURE_LEVEL.with(|l| l.get().is_some_and(|max| *meta.level() <= max))
            }));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
    });
    CAPTURED.with(|c| c.borrow_mut().clear());
    CAPTURE_LEVEL.with(|l| l.set(Some(level)));
    let captured = Captured {
        thread: std::thread::current().id(),
    };
    (captured, CaptureGuard)
}

/// The crypto provider of test TLS servers: ring (a dev-dependency
/// feature), whichever TLS stack the client is built with, and given
/// explicitly, since with two providers compiled in rustls has no
/// process-wide default.
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test TLS server's configuration builder, with [`tls_provider`] and the
/// TLS versions given (all of rustls' defaults when empty).
pub fn tls_server_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier> {
    let builder = rustls::ServerConfig::builder_with_provider(tls_provider());
    if versions.is_empty() {
        builder.with_safe_default_protocol_versions().unwrap()
    } else {
        builder.with_protocol_versions(versions).unwrap()
    }
}
