//! Hedged requests: when a hedge is sent, what it costs (attempts, the retry
//! budget), which answer wins, and that the losers are cancelled without a
//! trace in the breaker or the counters. On a paused clock, against servers
//! on 127.0.0.1 in the test's runtime (their delays are on the same clock).
// Helpers outside #[test] fns panic on a failed setup step, like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{head_value, read_head};
use resilient_http::{
    ApiClient, ApiClientBuilder, CircuitBreakerConfig, CircuitState, HeaderValue, Hedging,
    HookRequest, LoadBalance, RetryBudget, RetryPolicy,
};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How the server answers one request: after `delay`, with `status`.
#[derive(Debug, Clone, Copy)]
struct Answer {
    delay: Duration,
    status: u16,
}

const fn answer(delay_ms: u64, status: u16) -> Answer {
    Answer {
        delay: Duration::from_millis(delay_ms),
        status,
    }
}

type Script = dyn Fn(&str, u32) -> Answer + Send + Sync;

/// A keep-alive HTTP/1.1 server on 127.0.0.1 whose answers `script` chooses
/// from the request path and the `x-attempt` header the test clients add
/// (the attempt's number, hedges included), so the outcome does not depend
/// on which request arrives first. It records what it served, and counts the
/// requests whose client left before the answer (a cancelled attempt).
struct Server {
    url: String,
    /// (path, attempt) of every request received.
    seen: Arc<Mutex<Vec<(String, u32)>>>,
    /// Requests abandoned by the client before their answer.
    abandoned: Arc<AtomicUsize>,
    left: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(script: impl Fn(&str, u32) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let abandoned = Arc::new(AtomicUsize::new(0));
        let left = Arc::new(Notify::new());
        let script: Arc<Script> = Arc::new(script);
        let (s, a, l) = (Arc::clone(&seen), Arc::clone(&abandoned), Arc::clone(&left));
        let task = tokio::spawn(async move {
            // Bounded: a test opens a few connections.
            for _ in 0..64 {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (script, s, a, l) = (
                    Arc::clone(&script),
                    Arc::clone(&s),
                    Arc::clone(&a),
                    Arc::clone(&l),
                );
                tokio::spawn(async move {
                    // Bounded by the connection: one request at a time.
                    while let Some(head) = read_head(&mut sock).await {
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                        let attempt = head_value(&head, "x-attempt")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        // The body, if any, so that the next read sees only
                        // the client leaving.
                        let length: usize = head_value(&head, "content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0u8; length.min(1 << 16)];
                        if tokio::io::AsyncReadExt::read_exact(&mut sock, &mut body)
                            .await
                            .is_err()
                        {
                            return;
                        }
                        s.lock().unwrap().push((path.clone(), attempt));
                        let Answer { delay, status } = script(&path, attempt);
                        let (mut reader, mut writer) = sock.split();
                        let mut byte = [0u8; 1];
                        // The client closing the connection first is a
                        // cancelled attempt.
                        let gone = tokio::select! {
                            () = tokio::time::sleep(delay) => false,
                            _ = tokio::io::AsyncReadExt::read(&mut reader, &mut byte) => true,
                        };
                        if gone {
                            a.fetch_add(1, Ordering::SeqCst);
                            l.notify_one();
                            return;
                        }
                        // A 429 pauses the endpoint for a minute.
                        let extra = if status == 429 {
                            "retry-after: 60\r\n"
                        } else {
                            ""
                        };
                        let reply =
                            format!("HTTP/1.1 {status} X\r\n{extra}content-length: 2\r\n\r\nok");
                        if writer.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            url,
            seen,
            abandoned,
            left,
            task,
        }
    }

    fn requests(&self) -> Vec<(String, u32)> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (on the paused clock, bounded) until `n` requests were abandoned.
    async fn abandoned(&self, n: usize) {
        let wait = async {
            while self.abandoned.load(Ordering::SeqCst) < n {
                self.left.notified().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .expect("the cancelled attempt's connection was closed");
    }
}

/// Attempt 1 gets `first`, every later one (hedges, retries) `rest`.
fn first_then(first: Answer, rest: Answer) -> impl Fn(&str, u32) -> Answer + Send + Sync + 'static {
    move |_, attempt| if attempt == 1 { first } else { rest }
}

/// Attempt 1 is slow (10 s), any later one answers at once.
fn first_slow(_: &str, attempt: u32) -> Answer {
    if attempt == 1 {
        answer(10_000, 200)
    } else {
        answer(0, 200)
    }
}

/// A client for `url` whose requests carry their attempt number, with 3
/// attempts, no backoff to speak of and no budget to run out of.
fn builder(url: &str) -> ApiClientBuilder {
    settings(ApiClient::builder().base_url(url))
}

/// A client of [`builder`]'s with `attempts` attempts at most (an unlimited
/// budget) and `hedging`.
fn racing(url: &str, attempts: u32, hedging: Hedging) -> ApiClient {
    builder(url)
        .retry(
            RetryPolicy::exponential()
                .max_attempts(attempts)
                .budget(RetryBudget::unlimited()),
        )
        .hedging(hedging)
        .build()
        .unwrap()
}

/// The settings of [`builder`], on `b`.
fn settings(b: ApiClientBuilder) -> ApiClientBuilder {
    b.read_timeout(Duration::from_secs(20))
        .attempt_timeout(Duration::from_secs(20))
        .total_timeout(Duration::from_secs(60))
        .retry(
            RetryPolicy::exponential()
                .max_attempts(3)
                .initial_backoff(ms(1))
                .max_backoff(ms(1))
                .jitter(false)
                .budget(RetryBudget::unlimited()),
        )
        .request_hook(|req: &mut HookRequest| {
            let n = HeaderValue::from(req.attempt());
            req.headers_mut().insert("x-attempt", n);
        })
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_is_hedged_after_the_fixed_delay_and_the_hedge_wins() {
    let server = Server::start(first_slow).await;
    let client = builder(&server.url)
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();

    let started = Instant::now();
    let resp = client.get("x").send().await.unwrap();
    let elapsed = started.elapsed();

    assert!(resp.hedged());
    assert_eq!(resp.attempts(), 2);
    assert!(elapsed >= ms(50) && elapsed < ms(500), "{elapsed:?}");
    let stats = client.stats();
    assert_eq!((stats.hedges, stats.hedges_won), (1, 1));
    assert_eq!((stats.attempts, stats.retries), (2, 0));
    assert_eq!(
        server.requests(),
        [("/x".to_owned(), 1), ("/x".to_owned(), 2)]
    );
}

#[tokio::test(start_paused = true)]
async fn an_answer_within_the_delay_sends_no_hedge() {
    let server = Server::start(|_, _| answer(20, 200)).await;
    let client = builder(&server.url)
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();

    let resp = client.get("x").send().await.unwrap();

    assert!(!resp.hedged());
    assert_eq!(resp.attempts(), 1);
    assert_eq!(client.stats().hedges, 0);
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_first_attempt_may_still_win_the_race() {
    // The first answers at 80 ms, the hedge (sent at 50 ms) would at 150 ms.
    let server = Server::start(first_then(answer(80, 200), answer(100, 200))).await;
    let client = builder(&server.url)
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();

    let started = Instant::now();
    let resp = client.get("x").send().await.unwrap();

    assert!(!resp.hedged());
    assert_eq!(resp.attempts(), 2, "the hedge was sent, and counts");
    assert!(started.elapsed() < ms(100), "{:?}", started.elapsed());
    let stats = client.stats();
    assert_eq!((stats.hedges, stats.hedges_won), (1, 0));
    server.abandoned(1).await;
}

#[tokio::test(start_paused = true)]
async fn a_percentile_delay_waits_for_enough_samples() {
    let server = Server::start(|path, attempt| match (path, attempt) {
        ("/slow", 1) => answer(1_000, 200),
        _ => answer(10, 200),
    })
    .await;
    let client = builder(&server.url)
        .hedging(Hedging::percentile(0.9))
        .build()
        .unwrap();
    for _ in 0..19 {
        assert!(!client.get("fast").send().await.unwrap().hedged());
    }

    // 19 latencies on record: no hedge yet.
    let started = Instant::now();
    let resp = client.get("slow").send().await.unwrap();
    assert!(!resp.hedged());
    assert_eq!(resp.attempts(), 1);
    assert!(started.elapsed() >= ms(1_000));

    // 20: the 90th percentile (10 ms, read to its bucket's edge) is the delay.
    let started = Instant::now();
    let resp = client.get("slow").send().await.unwrap();
    let elapsed = started.elapsed();
    assert!(resp.hedged());
    assert!(elapsed >= ms(10) && elapsed < ms(100), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn no_budget_no_hedge() {
    let server = Server::start(first_slow).await;
    let client = builder(&server.url)
        .retry(
            RetryPolicy::exponential()
                .max_attempts(3)
                .budget(RetryBudget::ratio(0.0).min_per_second(0)),
        )
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();

    let started = Instant::now();
    let resp = client.get("x").send().await.unwrap();

    assert!(!resp.hedged());
    assert_eq!(resp.attempts(), 1);
    assert!(started.elapsed() >= ms(10_000));
    assert_eq!(client.stats().hedges, 0);
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn hedges_count_toward_max_attempts() {
    let server = Server::start(|_, attempt| {
        if attempt < 3 {
            answer(10_000, 200)
        } else {
            answer(0, 200)
        }
    })
    .await;
    // Three hedges allowed, but two attempts in all: one hedge.
    let client = racing(&server.url, 2, Hedging::fixed(ms(50)).max_hedges(3));

    let started = Instant::now();
    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.attempts(), 2);
    assert!(started.elapsed() >= ms(10_000));
    assert_eq!(client.stats().hedges, 1);

    // With attempts to spare, a hedge goes every delay.
    let client = racing(&server.url, 5, Hedging::fixed(ms(50)).max_hedges(3));
    let started = Instant::now();
    let resp = client.get("x").send().await.unwrap();
    assert!(resp.hedged());
    assert_eq!(resp.attempts(), 3);
    let elapsed = started.elapsed();
    assert!(elapsed >= ms(100) && elapsed < ms(500), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_retryable_failure_does_not_end_the_race() {
    // The first fails with 503 at 100 ms; the hedge (sent at 50 ms) answers at 250 ms.
    let server = Server::start(first_then(answer(100, 503), answer(200, 200))).await;
    let client = racing(&server.url, 2, Hedging::fixed(ms(50)));

    let started = Instant::now();
    let resp = client.get("x").send().await.unwrap();

    assert!(resp.hedged());
    assert_eq!(resp.attempts(), 2);
    let elapsed = started.elapsed();
    assert!(elapsed >= ms(250) && elapsed < ms(1_000), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_final_answer_ends_the_race() {
    // A 404 is an answer no other attempt would change.
    let server = Server::start(first_then(answer(100, 404), answer(10_000, 200))).await;
    let client = builder(&server.url)
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();

    let started = Instant::now();
    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
    assert_eq!(err.attempts(), 2);
    assert!(started.elapsed() < ms(1_000));
    server.abandoned(1).await;
}

#[tokio::test(start_paused = true)]
async fn a_writes_hedge_that_finds_it_done_does_not_hide_the_first_attempts_answer() {
    // The first DELETE is slow but deletes; its hedge, sent after 50 ms,
    // finds the item gone (404). The call's answer is the first's 200.
    let server = Server::start(first_then(answer(300, 200), answer(0, 404))).await;
    let client = builder(&server.url)
        .hedging(Hedging::fixed(ms(50)).max_hedges(2))
        .build()
        .unwrap();

    let resp = client.delete("items/7").send().await.unwrap();

    assert_eq!(resp.status(), 200);
    // One hedge only: no more once one failed for good.
    assert_eq!(server.requests().len(), 2, "{:?}", server.requests());
    assert_eq!(resp.attempts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_writes_final_error_is_the_answer_when_no_attempt_succeeds() {
    let server = Server::start(first_then(answer(300, 409), answer(0, 404))).await;
    let client = builder(&server.url)
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();

    let started = Instant::now();
    let err = client.delete("items/7").send().await.unwrap_err();

    // The first final failure (the hedge's 404), after waiting for the other.
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
    assert!(started.elapsed() >= ms(300), "{:?}", started.elapsed());
    assert_eq!(err.attempts(), 2);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_its_signer_refuses_takes_no_rate_permit() {
    // Hedges (attempt 2 and on) cannot be signed.
    fn sign<'a>(req: &'a mut resilient_http::SignRequest<'_>) -> resilient_http::SignFuture<'a> {
        let hedge = req.attempt() > 1;
        Box::pin(async move {
            if hedge {
                Err("no key for hedges".into())
            } else {
                Ok(())
            }
        })
    }
    let server = Server::start(first_then(answer(200, 200), answer(0, 200))).await;
    let client = builder(&server.url)
        .hedging(Hedging::fixed(ms(50)))
        .rate_limit(
            resilient_http::RateLimit::per_second(1)
                .burst(2)
                .fail_fast(),
        )
        .signer(sign)
        .build()
        .unwrap();

    client.get("x").send().await.unwrap();
    // The second permit is still there: the refused hedge did not take it.
    client.get("x").send().await.unwrap();

    assert_eq!(server.requests().len(), 2, "{:?}", server.requests());
}

#[tokio::test(start_paused = true)]
async fn no_hedge_is_sent_when_its_signer_leaves_no_time() {
    // A hedge's signer takes all that is left of the call's 1 s: due at
    // 600 ms, it may take min(delay, time left) = 400 ms.
    fn sign<'a>(req: &'a mut resilient_http::SignRequest<'_>) -> resilient_http::SignFuture<'a> {
        let hedge = req.attempt() > 1;
        Box::pin(async move {
            if hedge {
                tokio::time::sleep(ms(400)).await;
            }
            Ok(())
        })
    }
    let server = Server::start(first_slow).await;
    let client = builder(&server.url)
        .hedging(Hedging::fixed(ms(600)))
        .signer(sign)
        .build()
        .unwrap();

    let err = client
        .get("x")
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .unwrap_err();

    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(client.stats().hedges, 0, "a hedge with no time was sent");
    assert_eq!(server.requests().len(), 1, "{:?}", server.requests());
}

#[tokio::test(start_paused = true)]
async fn cancelled_attempts_release_their_permits_and_are_not_failures() {
    let server = Server::start(first_slow).await;
    // One failure would open this breaker; one call at a time.
    let client = builder(&server.url)
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .no_failure_rate(),
        )
        .max_concurrency(1)
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();

    assert!(client.get("x").send().await.unwrap().hedged());
    server.abandoned(1).await;

    assert_eq!(client.circuit_state(), CircuitState::Closed);
    let stats = client.stats();
    assert_eq!((stats.in_flight, stats.failed, stats.cancelled), (0, 0, 0));
    // The concurrency permit is free: the next call starts at once.
    let started = Instant::now();
    let resp = client.get("x").send().await.unwrap();
    assert!(resp.hedged());
    assert!(started.elapsed() < ms(500), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_cancels_every_attempt() {
    let server = Server::start(|_, _| answer(10_000, 200)).await;
    let client = builder(&server.url)
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();

    let call = client.get("x").send();
    assert!(tokio::time::timeout(ms(200), call).await.is_err());

    server.abandoned(2).await;
    let stats = client.stats();
    assert_eq!((stats.hedges, stats.in_flight, stats.cancelled), (1, 0, 1));
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn only_calls_that_may_be_repeated_are_hedged() {
    let server = Server::start(first_slow).await;
    let client = builder(&server.url)
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();

    let resp = client.post("x").body("b").send().await.unwrap();
    assert!(!resp.hedged());
    assert_eq!(resp.attempts(), 1);

    let resp = client
        .post("x")
        .idempotency_key("k-1")
        .body("b")
        .send()
        .await
        .unwrap();
    assert!(resp.hedged());

    // One attempt allowed: no hedge.
    let resp = client
        .get("x")
        .retry(RetryPolicy::none())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.attempts(), 1);
    assert_eq!(client.stats().hedges, 1);
}

#[tokio::test(start_paused = true)]
async fn hedging_is_chosen_per_call() {
    let server = Server::start(first_slow).await;
    let hedged = builder(&server.url)
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();
    let plain = builder(&server.url).build().unwrap();

    let resp = hedged.get("x").no_hedging().send().await.unwrap();
    assert_eq!(resp.attempts(), 1);
    assert!(!resp.hedged());

    let resp = plain
        .get("x")
        .hedging(Hedging::fixed(ms(20)))
        .send()
        .await
        .unwrap();
    assert!(resp.hedged());

    let err = plain
        .get("x")
        .hedging(Hedging::percentile(1.5))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), resilient_http::ErrorKind::Config);
    assert!(
        ApiClient::builder()
            .hedging(Hedging::fixed(ms(1)).max_hedges(0))
            .build()
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_hedge_goes_to_another_endpoint() {
    let a = Server::start(first_slow).await;
    let b = Server::start(first_slow).await;
    let client = settings(ApiClient::builder())
        .endpoints([a.url.as_str(), b.url.as_str()])
        .load_balance(LoadBalance::RoundRobin)
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();

    for _ in 0..4 {
        let resp = client.get("x").send().await.unwrap();
        assert!(resp.hedged());
        assert_eq!(resp.attempts(), 2);
    }

    // Each call's first attempt went to one endpoint, its hedge to the other.
    let (ra, rb) = (a.requests(), b.requests());
    assert_eq!(ra.len() + rb.len(), 8);
    for (first, hedge) in [(&ra, &rb), (&rb, &ra)] {
        let firsts = first.iter().filter(|(_, n)| *n == 1).count();
        let hedges = hedge.iter().filter(|(_, n)| *n == 2).count();
        assert_eq!(firsts, hedges, "a: {ra:?}, b: {rb:?}");
    }
    assert!(client.endpoints().iter().all(|e| e.in_flight == 0));
}

#[tokio::test(start_paused = true)]
async fn a_hedge_is_never_sent_to_a_paused_endpoint() {
    let a = Server::start(first_slow).await;
    // `b` answers 429 with `Retry-After: 60`, which pauses it.
    let b = Server::start(|_, _| answer(0, 429)).await;
    let client = settings(ApiClient::builder())
        .endpoints([a.url.as_str(), b.url.as_str()])
        .load_balance(LoadBalance::RoundRobin)
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();
    let err = client
        .get(format!("{}x", b.url))
        .retry(RetryPolicy::none())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(429));

    for _ in 0..3 {
        let resp = client.get("x").send().await.unwrap();
        assert!(resp.hedged(), "the hedge went to `a` again");
    }

    assert_eq!(b.requests().len(), 1, "only the request that paused it");
    assert_eq!(a.requests().len(), 6);
}

#[tokio::test(start_paused = true)]
async fn the_span_says_how_many_hedges_were_sent_and_which_won() {
    let (logs, _guard) = common::capture_traces(tracing::Level::DEBUG);
    let server = Server::start(first_slow).await;
    let client = builder(&server.url)
        .hedging(Hedging::fixed(ms(50)))
        .build()
        .unwrap();

    assert!(client.get("x").send().await.unwrap().hedged());

    let text = logs.text();
    assert!(text.contains("hedge sent"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("attempt succeeded"))
        .unwrap_or_else(|| panic!("no success event in:\n{text}"));
    assert!(line.contains("hedge.sent=1"), "{line}");
    assert!(line.contains("hedge.won=1"), "{line}");
}
