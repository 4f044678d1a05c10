//! Transport truth over HTTP/2: a stream the server refused, or one above the
//! last stream id of its GOAWAY, was provably not processed. Such requests are
//! sent again whatever their method, and do not count against the breaker.
//!
//! The server is a small raw HTTP/2 (h2c) frame writer, so which streams it
//! refuses or drops is exact, not left to timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use resilient_http::{ApiClient, CircuitBreakerConfig, CircuitState, ErrorReason, RetryPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
const NO_ERROR: u32 = 0x0;

/// What the server does with the requests of its first connection; every
/// later connection answers everything.
#[derive(Clone, Copy)]
enum Mode {
    /// Refuse the first `n` streams (over all connections) with
    /// `RST_STREAM(REFUSED_STREAM)`, answer the rest.
    Refuse(usize),
    /// Wait for `n` complete requests, then send `GOAWAY` whose last stream
    /// id is the second one, and answer only the streams up to it.
    GoAwayAfter(usize),
}

#[derive(Default)]
struct Counts {
    /// Requests the server answered with 200: its "handler runs".
    processed: AtomicUsize,
    refused: AtomicUsize,
    /// Streams above the GOAWAY's last stream id.
    dropped: AtomicUsize,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `:status 200` (HPACK static index 8), ending the stream.
fn ok(stream: u32) -> Vec<u8> {
    frame(HEADERS, END_HEADERS | END_STREAM, stream, &[0x88])
}

async fn start(mode: Mode) -> (String, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let counts = Arc::new(Counts::default());
    let shared = Arc::clone(&counts);
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((socket, _)) = listener.accept().await {
            let mode = first.then_some(mode);
            first = false;
            tokio::spawn(serve(socket, mode, Arc::clone(&shared)));
        }
    });
    (url, counts)
}

/// Serves one connection until the client closes it.
async fn serve(mut socket: TcpStream, mode: Option<Mode>, counts: Arc<Counts>) {
    let mut preface = [0u8; 24];
    if socket.read_exact(&mut preface).await.is_err() || preface != PREFACE {
        return;
    }
    if socket.write_all(&frame(SETTINGS, 0, 0, &[])).await.is_err() {
        return;
    }
    // Complete requests held back until the GOAWAY goes out.
    let mut held: Vec<u32> = Vec::new();
    // Streams refused here: the rest of their frames are ignored.
    let mut refused: Vec<u32> = Vec::new();
    let mut gone_away = false;
    loop {
        let mut frame_head = [0u8; 9];
        if socket.read_exact(&mut frame_head).await.is_err() {
            return;
        }
        let h = frame_head;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if socket.read_exact(&mut payload).await.is_err() {
            return;
        }
        let mut out = Vec::new();
        match kind {
            SETTINGS if flags & ACK == 0 => out = frame(SETTINGS, ACK, 0, &[]),
            PING if flags & ACK == 0 => out = frame(PING, ACK, 0, &payload),
            HEADERS => {
                if let Some(Mode::Refuse(n)) = mode
                    && counts.refused.load(Ordering::SeqCst) < n
                {
                    counts.refused.fetch_add(1, Ordering::SeqCst);
                    refused.push(stream);
                    out = frame(RST_STREAM, 0, stream, &REFUSED_STREAM.to_be_bytes());
                }
            }
            _ => {}
        }
        // A request is complete when its HEADERS or DATA end the stream.
        let complete = matches!(kind, HEADERS | DATA) && flags & END_STREAM != 0;
        if complete && !refused.contains(&stream) {
            match mode {
                Some(Mode::GoAwayAfter(n)) if !gone_away => {
                    held.push(stream);
                    if held.len() == n {
                        gone_away = true;
                        held.sort_unstable();
                        let last = held[1];
                        let mut payload = last.to_be_bytes().to_vec();
                        payload.extend_from_slice(&NO_ERROR.to_be_bytes());
                        out.extend(frame(GOAWAY, 0, 0, &payload));
                        for &id in &held {
                            if id <= last {
                                counts.processed.fetch_add(1, Ordering::SeqCst);
                                out.extend(ok(id));
                            } else {
                                counts.dropped.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                }
                _ => {
                    counts.processed.fetch_add(1, Ordering::SeqCst);
                    out.extend(ok(stream));
                }
            }
        }
        if !out.is_empty() && socket.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// h2c, quick retries, and a breaker that three counted failures would open.
fn client(url: &str) -> ApiClient {
    ApiClient::builder()
        .base_url(url)
        .http2_prior_knowledge()
        .total_timeout(Duration::from_secs(20))
        .retry(
            RetryPolicy::exponential()
                .max_attempts(3)
                .initial_backoff(Duration::from_millis(1))
                .max_backoff(Duration::from_millis(5)),
        )
        .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(3))
        .build()
        .unwrap()
}

/// Sends `n` concurrent POSTs without an idempotency key; returns the attempts
/// of each (all must succeed).
async fn post_concurrently(client: &ApiClient, n: usize) -> Vec<u32> {
    let calls: Vec<_> = (0..n)
        .map(|i| tokio::spawn(client.post(format!("orders/{i}")).body("{}").send()))
        .collect();
    let mut attempts = Vec::new();
    for call in calls {
        let resp = call.await.unwrap().expect("every call succeeds");
        attempts.push(resp.attempts());
    }
    attempts
}

#[tokio::test]
async fn refused_streams_are_sent_again_even_for_posts_and_do_not_open_the_breaker() {
    let (url, counts) = start(Mode::Refuse(5)).await;
    let client = client(&url);

    let attempts = post_concurrently(&client, 6).await;

    assert_eq!(
        counts.processed.load(Ordering::SeqCst),
        6,
        "each POST processed exactly once"
    );
    assert_eq!(
        attempts.iter().sum::<u32>(),
        6 + 5,
        "one resend per refused stream"
    );
    assert_eq!(client.circuit_state(), CircuitState::Closed);
    assert_eq!(client.stats().retries, 5);
}

#[tokio::test]
async fn streams_above_a_goaway_are_sent_again_on_a_new_connection() {
    let (url, counts) = start(Mode::GoAwayAfter(5)).await;
    let client = client(&url);

    let attempts = post_concurrently(&client, 5).await;

    let dropped = counts.dropped.load(Ordering::SeqCst);
    assert_eq!(
        dropped, 3,
        "streams 5, 7 and 9 were above the GOAWAY's last stream 3"
    );
    assert_eq!(
        counts.processed.load(Ordering::SeqCst),
        5,
        "each POST processed exactly once"
    );
    assert_eq!(attempts.iter().sum::<u32>(), 5 + 3);
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test]
async fn a_final_refusal_says_the_request_is_safe_to_send_again() {
    let (url, counts) = start(Mode::Refuse(usize::MAX)).await;
    let client = client(&url);

    let err = client.post("orders").body("{}").send().await.unwrap_err();

    assert_eq!(err.reason(), ErrorReason::Unprocessed);
    assert!(err.is_unprocessed() && err.is_retryable() && !err.is_connect());
    assert_eq!(err.attempts(), 3, "refusals are retried up to max_attempts");
    assert!(err.to_string().contains("did not process"), "{err}");
    assert_eq!(counts.processed.load(Ordering::SeqCst), 0);
    assert_eq!(
        client.circuit_state(),
        CircuitState::Closed,
        "3 refusals, breaker of 3"
    );
}
