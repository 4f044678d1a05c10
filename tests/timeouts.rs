//! Each timeout fires and names its phase: connect, read, attempt, total, and
//! the per-call override of the total.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resilient_http::{ApiClientBuilder, ErrorKind, RetryPolicy, TimeoutPhase};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::{fast_builder, head_value, raw_server, raw_server_with_head, until_peer_closes};

/// Short enough to keep the suite fast, long enough to tell phases apart.
const SHORT: Duration = Duration::from_millis(200);
/// Longer than any timeout a test means to fire.
const LONG: Duration = Duration::from_secs(5);
/// How late a timeout may report, for slow shared machines.
const MARGIN: Duration = Duration::from_millis(1500);

/// A one-attempt client for `uri` whose every timeout is `LONG`; tests shorten one.
fn builder(uri: &str) -> ApiClientBuilder {
    fast_builder(uri)
        .connect_timeout(LONG)
        .read_timeout(LONG)
        .attempt_timeout(LONG)
        .total_timeout(LONG * 2)
        .no_retry()
}

/// A wiremock server whose `/slow` answers 200 after `delay`.
async fn slow_server(delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(delay))
        .mount(&server)
        .await;
    server
}

/// A listener on 127.0.0.1 that never accepts, whose accept queue is full, so
/// a new connection's SYN is dropped and its connect hangs. Linux drops a SYN
/// when the accept queue is full (`listen(0)` holds one connection); the
/// returned streams fill it and must live as long as the listener.
async fn unaccepting_listener() -> io::Result<(TcpListener, Vec<TcpStream>)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let listener = socket.listen(0)?;
    let addr = listener.local_addr()?;
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
            Ok(stream) => fillers.push(stream?),
            // A connect that hangs proves the queue is full.
            Err(_) => return Ok((listener, fillers)),
        }
    }
    Err(io::Error::other(
        "the accept queue never filled: connects to a full backlog do not hang here",
    ))
}

#[tokio::test]
async fn connect_timeout_fires_when_the_listener_never_accepts() {
    let (listener, _fillers) = unaccepting_listener().await.unwrap();
    let uri = format!("http://{}/", listener.local_addr().unwrap());
    let client = builder(&uri).connect_timeout(SHORT).build().unwrap();
    let started = Instant::now();

    let err = client.get("x").send().await.unwrap_err();

    let elapsed = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert!(err.is_timeout());
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Connect));
    assert!(err.is_connect());
    assert_eq!(err.attempts(), 1);
    assert!(elapsed >= SHORT, "{elapsed:?}");
    assert!(elapsed < SHORT + MARGIN, "{elapsed:?}");
}

#[tokio::test]
async fn read_timeout_fires_when_the_body_stalls() {
    let uri = raw_server(|mut stream| async move {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst bytes";
        if stream.write_all(head).await.is_ok() {
            until_peer_closes(stream).await;
        }
    })
    .await;
    let client = builder(&uri).read_timeout(SHORT).build().unwrap();
    let started = Instant::now();

    let err = client.get("stall").send().await.unwrap_err();

    let elapsed = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Read));
    assert!(!err.is_connect());
    assert_eq!(err.attempts(), 1);
    assert!(elapsed >= SHORT, "{elapsed:?}");
    assert!(elapsed < SHORT + MARGIN, "{elapsed:?}");
}

#[tokio::test]
async fn read_timeout_fires_when_the_server_never_answers() {
    let uri = raw_server(until_peer_closes).await;
    let client = builder(&uri)
        .read_timeout(SHORT)
        .attempt_timeout(SHORT * 5)
        .build()
        .unwrap();
    let started = Instant::now();

    let err = client.get("silent").send().await.unwrap_err();

    let elapsed = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Read));
    assert!(!err.is_connect());
    assert!(elapsed >= SHORT, "{elapsed:?}");
    assert!(elapsed < SHORT * 5, "{elapsed:?}");
}

#[tokio::test]
async fn attempt_timeout_fires_when_the_response_is_slower_than_the_attempt() {
    let server = slow_server(Duration::from_secs(2)).await;
    let client = builder(&server.uri())
        .attempt_timeout(SHORT)
        .build()
        .unwrap();
    let started = Instant::now();

    let err = client.get("slow").send().await.unwrap_err();

    let elapsed = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Attempt));
    assert!(!err.is_connect());
    assert_eq!(err.attempts(), 1);
    assert!(elapsed >= SHORT, "{elapsed:?}");
    assert!(elapsed < SHORT + MARGIN, "{elapsed:?}");
}

#[tokio::test]
async fn total_timeout_smaller_than_the_attempt_timeout_reports_total() {
    let server = slow_server(Duration::from_secs(2)).await;
    let client = builder(&server.uri())
        .attempt_timeout(Duration::from_secs(2))
        .total_timeout(SHORT)
        .build()
        .unwrap();
    let started = Instant::now();

    let err = client.get("slow").send().await.unwrap_err();

    let elapsed = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Total));
    assert_eq!(err.attempts(), 1);
    assert!(elapsed >= SHORT, "{elapsed:?}");
    assert!(elapsed < SHORT + MARGIN, "{elapsed:?}");
}

#[tokio::test]
async fn total_timeout_bounds_a_retry_loop_and_reports_total_for_the_cut_short_attempt() {
    let server = slow_server(Duration::from_secs(2)).await;
    let client = builder(&server.uri())
        .attempt_timeout(Duration::from_millis(150))
        .total_timeout(Duration::from_millis(400))
        .retry(
            RetryPolicy::exponential()
                .max_attempts(10)
                .initial_backoff(Duration::from_millis(1))
                .max_backoff(Duration::from_millis(2))
                .jitter(false),
        )
        .build()
        .unwrap();
    let started = Instant::now();

    let err = client.get("slow").send().await.unwrap_err();

    let elapsed = started.elapsed();
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Total));
    assert!(err.attempts() >= 2, "{}", err.attempts());
    assert!(err.attempts() < 10, "{}", err.attempts());
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(400) + MARGIN, "{elapsed:?}");
}

#[tokio::test]
async fn per_call_timeout_shorter_than_the_client_total_ends_the_call_early() {
    let server = slow_server(Duration::from_secs(2)).await;
    let client = builder(&server.uri()).build().unwrap();
    let started = Instant::now();

    let err = client.get("slow").timeout(SHORT).send().await.unwrap_err();

    let elapsed = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Total));
    assert!(elapsed >= SHORT, "{elapsed:?}");
    assert!(elapsed < SHORT + MARGIN, "{elapsed:?}");
}

#[tokio::test]
async fn per_call_timeout_longer_than_the_client_total_lets_a_slow_call_finish() {
    let server = slow_server(Duration::from_millis(500)).await;
    let client = builder(&server.uri()).total_timeout(SHORT).build().unwrap();
    let without_override = client.get("slow").send().await.unwrap_err();

    let resp = client
        .get("slow")
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap();

    assert_eq!(without_override.timeout_phase(), Some(TimeoutPhase::Total));
    assert!(resp.status().is_success());
}

#[tokio::test(start_paused = true)]
async fn an_attempt_after_a_slow_token_fetch_still_ends_at_the_total_deadline() {
    // On the paused clock: the token takes 1.2 s, the server (on this
    // runtime, so on the same clock) reads the request and never answers.
    // The call's 2 s are over at 2 s, not 1.2 s + 2 s, and the attempt was
    // sent, with the token, in between.
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    let uri = raw_server_with_head(move |_, head, stream| {
        seen.lock().unwrap().push((Instant::now(), head));
        until_peer_closes(stream)
    })
    .await;
    let client = fast_builder(&uri)
        .retry(RetryPolicy::none())
        .total_timeout(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(10))
        .token_provider(|| async {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            Ok::<_, resilient_http::BoxError>(resilient_http::Token::new("t"))
        })
        .build()
        .unwrap();
    let started = Instant::now();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Total), "{err:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took <= Duration::from_millis(2050), "{took:?}");
    // The server task may not have run since the request arrived: give it
    // turns (no timer, so the paused clock stays put), for at most 10 s of
    // real time.
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    while heads.lock().unwrap().is_empty() && std::time::Instant::now() < give_up {
        tokio::task::yield_now().await;
    }
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "one attempt: {heads:?}");
    let (arrived, head) = &heads[0];
    assert!(head.starts_with("GET /x "), "{head}");
    assert_eq!(
        head_value(head, "authorization"),
        Some("Bearer t"),
        "{head}"
    );
    // Sent once the token was there, not before.
    let sent = arrived.duration_since(started);
    assert!(sent >= Duration::from_millis(1200), "{sent:?}");
}
