//! Bearer tokens from a token provider: on every attempt to the client's own
//! origin, cached, refreshed ahead of expiry by one call, fetched once for
//! many waiting calls, renewed after a `401`, never printed; and the built-in
//! OAuth 2.0 client credentials provider against a wiremock token endpoint.

// Test support: a failed setup step should panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{capture_traces, fast_builder, received};
use resilient_http::{
    ApiClient, ApiClientBuilder, ErrorKind, OAuth2ClientCredentials, StatusCode, Token,
    TokenFuture, TokenProvider,
};
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use wiremock::matchers::{any, body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a test waits for something that should happen at once.
const PROMPT: Duration = Duration::from_secs(2);

/// Hands out `t-1`, `t-2`, ... (each living `lifetime`, if set) and counts
/// its fetches. From fetch `gate_from` on, each fetch reports itself on
/// `entered` and then waits for a permit of `release`.
#[derive(Clone)]
struct Numbered {
    fetches: Arc<AtomicUsize>,
    lifetime: Option<Duration>,
    gate_from: usize,
    entered: Arc<Notify>,
    release: Arc<Semaphore>,
}

impl Numbered {
    fn new(lifetime: Option<Duration>) -> Self {
        Self {
            fetches: Arc::new(AtomicUsize::new(0)),
            lifetime,
            gate_from: usize::MAX,
            entered: Arc::new(Notify::new()),
            release: Arc::new(Semaphore::new(0)),
        }
    }

    /// Fetches from the `n`th on (counting from 1) wait to be released.
    fn gated_from(mut self, n: usize) -> Self {
        self.gate_from = n;
        self
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until a gated fetch has started.
    async fn wait_entered(&self) {
        tokio::time::timeout(PROMPT, self.entered.notified())
            .await
            .expect("a gated token fetch started");
    }

    /// Lets one gated fetch finish.
    fn release_one(&self) {
        self.release.add_permits(1);
    }
}

impl TokenProvider for Numbered {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= self.gate_from {
                self.entered.notify_one();
                self.release.acquire().await?.forget();
            }
            let token = Token::new(format!("t-{n}"));
            Ok(match self.lifetime {
                Some(life) => token.expires_in(life),
                None => token,
            })
        })
    }
}

/// A server answering 200 to everything.
async fn ok_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

/// The `Authorization` header of each request the server received, in order
/// (`"-"` for a request without one).
async fn authorizations(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| {
            r.headers
                .get("authorization")
                .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
        })
        .collect()
}

/// Moves tokio's clock forward by `by` at once, then lets it run again.
/// (Tests run on the current-thread runtime of `#[tokio::test]`.)
async fn pass_time(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

fn client_with(server: &MockServer, provider: impl TokenProvider) -> ApiClient {
    fast_builder(&server.uri())
        .token_provider(provider)
        .build()
        .unwrap()
}

// ------------------------------------------------------------ sending tokens

#[tokio::test]
async fn every_attempt_carries_the_providers_token() {
    let server = MockServer::start().await;
    Mock::given(path("/flaky"))
        .respond_with(common::Sequence::statuses(&[503, 200]))
        .mount(&server)
        .await;
    Mock::given(path("/ok"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let provider = Numbered::new(None);
    let client = client_with(&server, provider.clone());

    let resp = client.get("flaky").send().await.unwrap();
    client.post("ok").body("x").send().await.unwrap();

    assert_eq!(resp.attempts(), 2);
    assert_eq!(
        authorizations(&server).await,
        ["Bearer t-1", "Bearer t-1", "Bearer t-1"]
    );
    assert_eq!(provider.fetches(), 1, "the token is cached");
    assert_eq!(client.stats().token_fetches, 1);
}

#[tokio::test]
async fn a_closure_returning_a_future_is_a_token_provider() {
    let server = ok_server().await;
    let client = fast_builder(&server.uri())
        .token_provider(|| async { Ok(Token::new("from-a-closure")) })
        .build()
        .unwrap();

    client.get("x").send().await.unwrap();

    assert_eq!(authorizations(&server).await, ["Bearer from-a-closure"]);
}

#[tokio::test]
async fn concurrent_calls_without_a_token_wait_for_one_fetch() {
    let server = ok_server().await;
    let provider = Numbered::new(None).gated_from(1);
    let client = client_with(&server, provider.clone());
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        calls.spawn(client.get("x").send());
    }

    // One call is fetching; the others queue behind it, and nothing is sent.
    provider.wait_entered().await;
    assert_eq!(received(&server).await, 0);
    provider.release_one();
    while let Some(done) = calls.join_next().await {
        done.unwrap().unwrap();
    }

    assert_eq!(provider.fetches(), 1, "no stampede on the provider");
    assert_eq!(authorizations(&server).await, vec!["Bearer t-1"; 8]);
    assert_eq!(client.stats().token_fetches, 1);
}

#[tokio::test]
async fn concurrent_calls_with_an_expired_token_wait_for_one_fetch() {
    let server = ok_server().await;
    let provider = Numbered::new(Some(Duration::from_secs(20))).gated_from(2);
    let client = client_with(&server, provider.clone());
    client.get("x").send().await.unwrap();
    pass_time(Duration::from_secs(21)).await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        calls.spawn(client.get("x").send());
    }

    provider.wait_entered().await;
    assert_eq!(received(&server).await, 1, "the expired token is not sent");
    provider.release_one();
    while let Some(done) = calls.join_next().await {
        done.unwrap().unwrap();
    }

    assert_eq!(provider.fetches(), 2);
    let mut expected = vec!["Bearer t-1"];
    expected.extend(vec!["Bearer t-2"; 8]);
    assert_eq!(authorizations(&server).await, expected);
}

#[tokio::test]
async fn a_token_is_fetched_again_only_within_its_refresh_margin() {
    // The margin is min(30 s, lifetime / 10).
    for (lifetime, refresh_at) in [
        (Duration::from_secs(20), Duration::from_secs(18)),
        (Duration::from_secs(3600), Duration::from_secs(3570)),
    ] {
        let server = ok_server().await;
        let provider = Numbered::new(Some(lifetime));
        let client = client_with(&server, provider.clone());
        client.get("x").send().await.unwrap();

        pass_time(refresh_at.saturating_sub(Duration::from_millis(500))).await;
        client.get("x").send().await.unwrap();
        assert_eq!(provider.fetches(), 1, "{lifetime:?}: too early to refresh");

        pass_time(Duration::from_secs(1)).await;
        client.get("x").send().await.unwrap();
        assert_eq!(provider.fetches(), 2, "{lifetime:?}: due for a refresh");
        assert_eq!(
            authorizations(&server).await,
            ["Bearer t-1", "Bearer t-1", "Bearer t-2"],
            "{lifetime:?}"
        );
    }
}

#[tokio::test]
async fn a_token_due_for_refresh_is_fetched_by_one_call_while_others_keep_using_it() {
    let server = ok_server().await;
    let provider = Numbered::new(Some(Duration::from_secs(20))).gated_from(2);
    let client = client_with(&server, provider.clone());
    client.get("x").send().await.unwrap();
    // Past the refresh point (18 s), before expiry (20 s).
    pass_time(Duration::from_secs(19)).await;

    let refreshing = tokio::spawn(client.get("x").send());
    provider.wait_entered().await;
    // While that call fetches, others go on at once with the valid token.
    for _ in 0..3 {
        tokio::time::timeout(PROMPT, client.get("x").send())
            .await
            .expect("not blocked by the refresh")
            .unwrap();
    }
    provider.release_one();
    refreshing.await.unwrap().unwrap();
    client.get("x").send().await.unwrap();

    assert_eq!(provider.fetches(), 2);
    assert_eq!(
        authorizations(&server).await,
        [
            "Bearer t-1",
            "Bearer t-1",
            "Bearer t-1",
            "Bearer t-1",
            "Bearer t-2",
            "Bearer t-2"
        ]
    );
}

/// A client whose provider gives `t-1`, valid for `lifetime`, then fails
/// every later fetch; and the count of fetches.
fn one_token_then_failures(
    server: &MockServer,
    lifetime: Duration,
) -> (ApiClient, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&fetches);
    let client = fast_builder(&server.uri())
        .token_provider(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    Ok(Token::new("t-1").expires_in(lifetime))
                } else {
                    Err::<Token, BoxError>("vault sealed".into())
                }
            }
        })
        .build()
        .unwrap();
    (client, fetches)
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_still_valid_token() {
    let server = ok_server().await;
    let (client, fetches) = one_token_then_failures(&server, Duration::from_secs(20));
    client.get("x").send().await.unwrap();
    pass_time(Duration::from_secs(19)).await;

    client.get("x").send().await.unwrap();

    assert_eq!(fetches.load(Ordering::SeqCst), 2, "a refresh was tried");
    assert_eq!(authorizations(&server).await, ["Bearer t-1", "Bearer t-1"]);
}

#[tokio::test]
async fn after_a_failed_refresh_the_next_is_tried_a_second_later_not_by_every_call() {
    let server = ok_server().await;
    // Refreshed from 90 s on (10% ahead).
    let (client, fetches) = one_token_then_failures(&server, Duration::from_secs(100));
    client.get("x").send().await.unwrap();
    pass_time(Duration::from_secs(91)).await;

    client.get("x").send().await.unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "a refresh was tried");
    for _ in 0..3 {
        client.get("x").send().await.unwrap();
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "not by every call");
    pass_time(Duration::from_millis(1500)).await;
    client.get("x").send().await.unwrap();

    assert_eq!(
        fetches.load(Ordering::SeqCst),
        3,
        "tried again a second later"
    );
    assert_eq!(authorizations(&server).await, ["Bearer t-1"; 6]);
}

#[tokio::test]
async fn an_expired_token_is_not_sent_but_fetched_again_first() {
    let server = ok_server().await;
    let provider = Numbered::new(Some(Duration::from_secs(20)));
    let client = client_with(&server, provider.clone());
    client.get("x").send().await.unwrap();
    pass_time(Duration::from_secs(25)).await;

    client.get("x").send().await.unwrap();

    assert_eq!(authorizations(&server).await, ["Bearer t-1", "Bearer t-2"]);
}

// ------------------------------------------------------------------ 401

/// A server refusing the first token (`t-1`) with a 401, answering 200 to
/// anything else.
async fn refusing_t1() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(header("authorization", "Bearer t-1"))
        .respond_with(ResponseTemplate::new(401))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn a_401_drops_the_token_and_retries_once_with_a_new_one_even_a_post_without_retries() {
    let server = MockServer::start().await;
    Mock::given(header("authorization", "Bearer t-1"))
        .respond_with(ResponseTemplate::new(401))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;
    let provider = Numbered::new(Some(Duration::from_secs(3600)));
    let client = fast_builder(&server.uri())
        .no_retry()
        .token_provider(provider.clone())
        .build()
        .unwrap();

    let resp = client
        .post("orders")
        .json(&json!({"item": 7}))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.attempts(), 2);
    assert_eq!(authorizations(&server).await, ["Bearer t-1", "Bearer t-2"]);
    let requests = server.received_requests().await.unwrap();
    for r in &requests {
        assert_eq!(r.method.as_str(), "POST");
        assert_eq!(r.body, br#"{"item":7}"#, "the body is replayed");
        assert_eq!(r.headers["content-type"], "application/json");
    }
    assert_eq!(provider.fetches(), 2);
    assert_eq!(client.stats().token_fetches, 2);
}

#[tokio::test]
async fn a_second_401_ends_the_call_with_the_401() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let provider = Numbered::new(None);
    // fast_builder retries up to 3 attempts: a 401 still gets only one more.
    let client = client_with(&server, provider.clone());

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Client);
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(err.attempts(), 2);
    assert_eq!(authorizations(&server).await, ["Bearer t-1", "Bearer t-2"]);
    assert_eq!(provider.fetches(), 2);
}

#[tokio::test]
async fn the_token_renewed_after_a_401_serves_the_next_calls() {
    let server = refusing_t1().await;
    let provider = Numbered::new(None);
    let client = client_with(&server, provider.clone());

    client.get("x").send().await.unwrap();
    client.get("x").send().await.unwrap();

    assert_eq!(
        authorizations(&server).await,
        ["Bearer t-1", "Bearer t-2", "Bearer t-2"]
    );
    assert_eq!(provider.fetches(), 2);
}

#[tokio::test]
async fn a_refused_token_is_dropped_even_when_the_call_cannot_be_sent_again() {
    let server = refusing_t1().await;
    let provider = Numbered::new(None);
    let client = client_with(&server, provider.clone());
    // A streamed upload larger than its replay buffer: not sent again.
    let parts = (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1024])));

    let err = client
        .put("upload")
        .body_stream(futures_util::stream::iter(parts), 16)
        .send()
        .await
        .unwrap_err();
    client.get("x").send().await.unwrap();

    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(err.attempts(), 1);
    // The next call does not send the refused token again.
    assert_eq!(authorizations(&server).await, ["Bearer t-1", "Bearer t-2"]);
    assert_eq!(provider.fetches(), 2);
}

// ------------------------------------------------------------ provider failure

#[tokio::test]
async fn a_failing_provider_fails_the_call_as_rejected_and_nothing_is_sent() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&fetches);
    let client = fast_builder(&server.uri())
        .token_provider(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    Err::<Token, BoxError>("vault sealed".into())
                } else {
                    Ok(Token::new("t-2"))
                }
            }
        })
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(err.attempts(), 0);
    assert_eq!(err.status(), None);
    assert_eq!(received(&server).await, 0);

    // The failure is not cached: the next call asks again.
    client.get("x").send().await.unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    assert_eq!(authorizations(&server).await, ["Bearer t-2"]);
    let stats = client.stats();
    assert_eq!((stats.calls, stats.failed, stats.succeeded), (2, 1, 1));
    assert_eq!(stats.attempts, 1);
    assert_eq!(stats.token_fetches, 2);
}

#[tokio::test]
async fn concurrent_calls_waiting_for_a_fetch_that_fails_share_its_failure() {
    let server = ok_server().await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Semaphore::new(0));
    let (counted, started, gate) = (
        Arc::clone(&fetches),
        Arc::clone(&entered),
        Arc::clone(&release),
    );
    let client = fast_builder(&server.uri())
        .token_provider(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let (started, gate) = (Arc::clone(&started), Arc::clone(&gate));
            async move {
                started.notify_one();
                gate.acquire().await?.forget();
                Err::<Token, BoxError>("auth server down".into())
            }
        })
        .build()
        .unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        calls.spawn(client.get("x").send());
    }

    tokio::time::timeout(PROMPT, entered.notified())
        .await
        .expect("a token fetch started");
    // Enough for every call to fetch, should each one try.
    release.add_permits(8);
    while let Some(done) = calls.join_next().await {
        let err = done.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected);
    }

    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "one fetch for all waiters"
    );
    assert_eq!(received(&server).await, 0);
}

#[tokio::test]
async fn an_open_circuit_refuses_a_call_before_any_token_fetch() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let provider = Numbered::new(Some(Duration::from_secs(20)));
    let client = fast_builder(&server.uri())
        .no_retry()
        .circuit_breaker(
            resilient_http::CircuitBreakerConfig::default()
                .consecutive_failures(2)
                .open_duration(Duration::from_secs(60)),
        )
        .token_provider(provider.clone())
        .build()
        .unwrap();
    for _ in 0..2 {
        client.get("x").send().await.unwrap_err();
    }
    assert_eq!(client.circuit_state(), resilient_http::CircuitState::Open);
    // The token expires while the circuit is open.
    pass_time(Duration::from_secs(25)).await;

    let err = client.get("x").send().await.unwrap_err();

    assert!(err.is_circuit_open(), "{err:?}");
    assert_eq!(provider.fetches(), 1, "no token is needed to refuse a call");
}

#[tokio::test]
async fn a_provider_that_never_answers_fails_the_call_at_its_deadline() {
    let server = ok_server().await;
    let client = fast_builder(&server.uri())
        .token_provider(std::future::pending::<Result<Token, BoxError>>)
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();

    let err = client
        .get("x")
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(err.attempts(), 0);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < PROMPT,
        "{took:?}"
    );
    assert_eq!(received(&server).await, 0);
}

#[tokio::test(start_paused = true)]
async fn a_hung_token_fetch_is_cut_at_the_total_timeout_and_holds_up_no_other_call() {
    // The first fetch never answers, the later ones do. The call that makes
    // it has no deadline to speak of (as an event stream); a second call
    // waits for that fetch. fast_builder's total_timeout: 5 s.
    let bound = Duration::from_secs(5);
    let server = ok_server().await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(Notify::new());
    let (counted, started) = (Arc::clone(&fetches), Arc::clone(&entered));
    let client = fast_builder(&server.uri())
        .token_provider(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            started.notify_one();
            async move {
                if n == 1 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(Token::new(format!("t-{n}")))
            }
        })
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let timed = |timeout: Duration| {
        let call = client.get("x").timeout(timeout).send();
        tokio::spawn(async move { (call.await, start.elapsed()) })
    };

    let endless = timed(Duration::MAX);
    tokio::time::timeout(PROMPT, entered.notified())
        .await
        .expect("the first token fetch started");
    let waiting = timed(Duration::from_secs(60));
    let ((endless, endless_took), (waiting, waiting_took)) =
        tokio::time::timeout(Duration::from_secs(10), async {
            (endless.await.unwrap(), waiting.await.unwrap())
        })
        .await
        .expect("no call is held up behind the hung fetch");

    let endless = endless.unwrap_err();
    assert_eq!(endless.kind(), ErrorKind::Rejected, "{endless:?}");
    assert_eq!(endless.attempts(), 0);
    assert!(
        endless_took >= bound && endless_took < bound + PROMPT,
        "{endless_took:?}"
    );
    let waiting = waiting.unwrap_err();
    assert_eq!(waiting.kind(), ErrorKind::Rejected, "{waiting:?}");
    assert!(waiting_took < bound + PROMPT, "{waiting_took:?}");
    assert_eq!(received(&server).await, 0);

    // The fetch lock was let go: the next call asks the provider again.
    tokio::time::resume();
    client.get("x").send().await.unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    assert_eq!(authorizations(&server).await, ["Bearer t-2"]);
}

#[tokio::test]
async fn a_token_fetch_may_take_longer_than_an_attempt() {
    // An identity provider slower than the API's attempts (a cold TLS
    // start): the fetch is a step of the call, not an attempt.
    let server = ok_server().await;
    let client = fast_builder(&server.uri())
        .attempt_timeout(Duration::from_secs(1))
        .token_provider(|| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, BoxError>(Token::new("slow"))
        })
        .build()
        .unwrap();

    client.get("x").send().await.unwrap();

    assert_eq!(authorizations(&server).await, ["Bearer slow"]);
}

// -------------------------------------------------- where the token does not go

#[tokio::test]
async fn a_request_with_its_own_authorization_keeps_it_and_the_provider_is_not_asked() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let provider = Numbered::new(None);
    let client = client_with(&server, provider.clone());

    let err = client
        .get("x")
        .bearer_auth("mine")
        .send()
        .await
        .unwrap_err();

    // Its own credential was refused: no token renewal, no second attempt.
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(err.attempts(), 1);
    assert_eq!(authorizations(&server).await, ["Bearer mine"]);
    assert_eq!(provider.fetches(), 0);
    assert_eq!(client.stats().token_fetches, 0);
}

#[tokio::test]
async fn an_absolute_url_to_another_origin_gets_no_token() {
    let own = ok_server().await;
    let other = ok_server().await;
    let provider = Numbered::new(None);
    let client = client_with(&own, provider.clone());

    client
        .get(format!("{}/elsewhere", other.uri()))
        .send()
        .await
        .unwrap();
    // An absolute URL to the client's own origin does get it.
    client
        .get(format!("{}/here", own.uri()))
        .send()
        .await
        .unwrap();

    assert_eq!(authorizations(&other).await, ["-"]);
    assert_eq!(authorizations(&own).await, ["Bearer t-1"]);
    assert_eq!(provider.fetches(), 1);
}

#[tokio::test]
async fn the_token_is_not_carried_on_a_redirect_to_another_origin() {
    let other = ok_server().await;
    let origin = MockServer::start().await;
    Mock::given(path("/start"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/landing", other.uri())),
        )
        .mount(&origin)
        .await;
    let client = client_with(&origin, Numbered::new(None));

    let resp = client.get("start").send().await.unwrap();

    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(authorizations(&origin).await, ["Bearer t-1"]);
    assert_eq!(authorizations(&other).await, ["-"]);
}

#[tokio::test]
async fn a_401_from_a_redirect_target_on_another_origin_keeps_the_token() {
    // The target never got the token (it is not carried there): its 401
    // says nothing of it, and must not make every call fetch a new one.
    let other = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(401))
        .mount(&other)
        .await;
    let origin = MockServer::start().await;
    Mock::given(path("/start"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/landing", other.uri())),
        )
        .mount(&origin)
        .await;
    let provider = Numbered::new(None);
    let client = client_with(&origin, provider.clone());

    for _ in 0..3 {
        let err = client.get("start").send().await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED), "{err}");
    }

    assert_eq!(provider.fetches(), 1);
    assert_eq!(authorizations(&origin).await, ["Bearer t-1"; 3]);
}

#[tokio::test]
async fn every_endpoint_of_an_endpoints_client_gets_the_token() {
    let (a, b) = (ok_server().await, ok_server().await);
    let provider = Numbered::new(None);
    let client = ApiClient::builder()
        .endpoints([a.uri(), b.uri()])
        .load_balance(resilient_http::LoadBalance::RoundRobin)
        .token_provider(provider.clone())
        .build()
        .unwrap();

    for _ in 0..2 {
        client.get("x").send().await.unwrap();
    }

    assert_eq!(authorizations(&a).await, ["Bearer t-1"]);
    assert_eq!(authorizations(&b).await, ["Bearer t-1"]);
    assert_eq!(provider.fetches(), 1);
}

#[tokio::test]
async fn a_default_authorization_with_a_token_provider_is_a_config_error() {
    let builders: [(&str, ApiClientBuilder); 3] = [
        (
            "bearer_auth first",
            ApiClient::builder()
                .base_url("http://127.0.0.1:1/")
                .bearer_auth("static")
                .token_provider(Numbered::new(None)),
        ),
        (
            "token_provider first",
            ApiClient::builder()
                .base_url("http://127.0.0.1:1/")
                .token_provider(Numbered::new(None))
                .bearer_auth("static"),
        ),
        (
            "authorization default header",
            ApiClient::builder()
                .base_url("http://127.0.0.1:1/")
                .default_header("authorization", "Basic abc")
                .token_provider(Numbered::new(None)),
        ),
    ];
    for (case, builder) in builders {
        let err = builder.build().unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Config, "{case}");
    }
}

// ---------------------------------------------------------------- secrecy

#[tokio::test]
async fn token_values_never_appear_in_debug_output() {
    let server = ok_server().await;
    let token = Token::new("tok-SECRET-1").expires_in(Duration::from_secs(60));
    let builder = fast_builder(&server.uri()).token_provider(|| async {
        Ok(Token::new("tok-SECRET-1").expires_in(Duration::from_secs(60)))
    });
    let builder_debug = format!("{builder:?}");
    let client = builder.build().unwrap();
    client.get("x").send().await.unwrap();
    let oauth = OAuth2ClientCredentials::new(
        "https://auth.example/oauth2/token",
        "orders-svc",
        "client-SECRET-2",
    )
    .scope("read");

    let outputs = [
        format!("{token:?}"),
        builder_debug,
        format!("{client:?}"),
        format!("{oauth:?}"),
    ];

    for out in &outputs {
        assert!(!out.contains("tok-SECRET-1"), "{out}");
        assert!(!out.contains("client-SECRET-2"), "{out}");
    }
    assert!(outputs[0].contains("lifetime"), "{}", outputs[0]);
    assert!(outputs[3].contains("orders-svc"), "{}", outputs[3]);
    assert_eq!(token.secret(), "tok-SECRET-1");
    assert_eq!(token.lifetime(), Some(Duration::from_secs(60)));
    assert_eq!(authorizations(&server).await, ["Bearer tok-SECRET-1"]);
}

#[tokio::test]
async fn token_values_never_appear_in_traces() {
    let (logs, _guard) = capture_traces(tracing::Level::TRACE);
    let server = MockServer::start().await;
    Mock::given(header("authorization", "Bearer tok-SECRET-1"))
        .respond_with(ResponseTemplate::new(401))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&fetches);
    let client = fast_builder(&server.uri())
        .token_provider(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(Token::new(format!("tok-SECRET-{n}"))) }
        })
        .build()
        .unwrap();

    // A 401 (renewal), then 503s until the retries run out (a WARN).
    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    let text = logs.text();
    assert!(text.contains("fetched a token"), "{text}");
    assert!(text.contains("call failed"), "{text}");
    assert!(!text.contains("tok-SECRET"), "{text}");
    assert!(!format!("{err:?} {err}").contains("tok-SECRET"));
}

// ------------------------------------------------------------------- OAuth 2.0

const CLIENT_ID: &str = "orders svc";
const CLIENT_SECRET: &str = "s3:cr/t!";
/// base64("orders+svc:s3%3Acr%2Ft%21"): both parts form-urlencoded, then joined.
const BASIC: &str = "Basic b3JkZXJzK3N2YzpzMyUzQWNyJTJGdCUyMQ==";

/// A token endpoint at `/oauth2/token` answering `answer` to any POST.
async fn token_endpoint(answer: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(answer)
        .mount(&server)
        .await;
    server
}

fn token_url(server: &MockServer) -> String {
    format!("{}/oauth2/token", server.uri())
}

fn token_answer(body: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

#[tokio::test]
async fn oauth2_posts_the_client_credentials_grant_with_basic_auth() {
    let auth = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .and(header("authorization", BASIC))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(header("accept", "application/json"))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains("scope=read"))
        .respond_with(token_answer(json!({
            "access_token": "at-1",
            "token_type": "Bearer",
            "expires_in": 3600
        })))
        .expect(1)
        .mount(&auth)
        .await;
    let api = MockServer::start().await;
    Mock::given(header("authorization", "Bearer at-1"))
        .respond_with(ResponseTemplate::new(200))
        .expect(2)
        .mount(&api)
        .await;
    let client = fast_builder(&api.uri())
        .token_provider(
            OAuth2ClientCredentials::new(token_url(&auth), CLIENT_ID, CLIENT_SECRET).scope("read"),
        )
        .build()
        .unwrap();

    client.get("orders/1").send().await.unwrap();
    client.get("orders/2").send().await.unwrap();

    let requests = auth.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "the token is cached");
    let body = String::from_utf8(requests[0].body.clone()).unwrap();
    assert!(!body.contains("client_secret"), "{body}");
    assert!(!body.contains("client_id"), "{body}");
    assert_eq!(client.stats().token_fetches, 1);
}

#[tokio::test]
async fn oauth2_can_send_the_credentials_and_extra_params_in_the_form() {
    let auth = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains("scope=orders.read+orders.write"))
        .and(body_string_contains("audience=https%3A%2F%2Fapi.example"))
        .and(body_string_contains("client_id=orders+svc"))
        .and(body_string_contains("client_secret=s3%3Acr%2Ft%21"))
        // The token type is matched without regard to case.
        .respond_with(token_answer(
            json!({"access_token": "at-1", "token_type": "bearer"}),
        ))
        .expect(1)
        .mount(&auth)
        .await;
    let api = ok_server().await;
    let client = fast_builder(&api.uri())
        .token_provider(
            OAuth2ClientCredentials::new(token_url(&auth), CLIENT_ID, CLIENT_SECRET)
                .scope("orders.read orders.write")
                .param("audience", "https://api.example")
                .credentials_in_body(),
        )
        .build()
        .unwrap();

    client.get("orders/1").send().await.unwrap();

    let requests = auth.received_requests().await.unwrap();
    assert!(
        !requests[0].headers.contains_key("authorization"),
        "no Basic auth when the credentials are in the form"
    );
    assert_eq!(authorizations(&api).await, ["Bearer at-1"]);
}

#[tokio::test]
async fn oauth2_a_secret_in_the_form_is_not_sent_again_to_another_origin() {
    // The token endpoint answers 307 to another server: following it would
    // POST the form, client_secret included, there.
    let elsewhere = token_endpoint(token_answer(
        json!({"access_token": "stolen", "token_type": "Bearer"}),
    ))
    .await;
    let auth =
        token_endpoint(ResponseTemplate::new(307).insert_header("location", token_url(&elsewhere)))
            .await;
    let api = ok_server().await;
    let client = fast_builder(&api.uri())
        .token_provider(
            OAuth2ClientCredentials::new(token_url(&auth), CLIENT_ID, CLIENT_SECRET)
                .credentials_in_body(),
        )
        .build()
        .unwrap();

    let err = client.get("orders/1").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Rejected, "{err:?}");
    assert!(
        elsewhere.received_requests().await.unwrap().is_empty(),
        "the form went to the other origin"
    );
    assert!(api.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn oauth2_expires_in_sets_the_token_lifetime() {
    // (expires_in, time passed, token requests expected after a second call)
    for (expires_in, passed, fetches) in [
        (Some(20), Duration::from_secs(21), 2),
        (Some(3600), Duration::from_secs(21), 1),
        (None, Duration::from_secs(100_000), 1),
    ] {
        let mut answer = json!({"access_token": "at-1", "token_type": "Bearer"});
        if let Some(secs) = expires_in {
            answer["expires_in"] = json!(secs);
        }
        let auth = token_endpoint(token_answer(answer)).await;
        let api = ok_server().await;
        let client = fast_builder(&api.uri())
            .token_provider(OAuth2ClientCredentials::new(
                token_url(&auth),
                CLIENT_ID,
                CLIENT_SECRET,
            ))
            .build()
            .unwrap();
        client.get("x").send().await.unwrap();

        pass_time(passed).await;
        client.get("x").send().await.unwrap();

        assert_eq!(received(&auth).await, fetches, "expires_in {expires_in:?}");
        assert_eq!(received(&api).await, 2, "expires_in {expires_in:?}");
    }
}

#[tokio::test]
async fn oauth2_expires_in_sent_as_a_string_is_read_as_seconds() {
    let auth = token_endpoint(token_answer(json!({
        "access_token": "at-1",
        "token_type": "Bearer",
        "expires_in": "3599"
    })))
    .await;
    let api = ok_server().await;
    let provider = OAuth2ClientCredentials::new(token_url(&auth), CLIENT_ID, CLIENT_SECRET);
    let client = fast_builder(&api.uri())
        .token_provider(OAuth2ClientCredentials::new(
            token_url(&auth),
            CLIENT_ID,
            CLIENT_SECRET,
        ))
        .build()
        .unwrap();

    client.get("x").send().await.unwrap();
    let token = provider.token().await.unwrap();

    assert_eq!(authorizations(&api).await, ["Bearer at-1"]);
    assert_eq!(token.lifetime(), Some(Duration::from_secs(3599)));
}

#[tokio::test]
async fn oauth2_expires_in_is_read_leniently_and_an_unreadable_one_counts_as_absent() {
    for (expires_in, lifetime) in [
        (json!(3600), Some(3600)),
        (json!(" 120 "), Some(120)),
        (json!(3599.9), Some(3599)),
        (json!("59.5"), Some(59)),
        (json!(-5), None),
        (json!("-5"), None),
        (json!("soon"), None),
        (json!(""), None),
        (json!(null), None),
        (json!(true), None),
        (json!({"seconds": 60}), None),
    ] {
        let auth = token_endpoint(token_answer(json!({
            "access_token": "at-1",
            "token_type": "Bearer",
            "expires_in": expires_in
        })))
        .await;
        let provider = OAuth2ClientCredentials::new(token_url(&auth), CLIENT_ID, CLIENT_SECRET);

        let token = provider.token().await.unwrap();

        assert_eq!(
            token.lifetime(),
            lifetime.map(Duration::from_secs),
            "expires_in {expires_in}"
        );
    }
}

#[tokio::test]
async fn oauth2_answers_that_are_not_bearer_tokens_fail_the_call_before_sending() {
    for (case, answer) in [
        (
            "token type mac",
            token_answer(json!({"access_token": "at-1", "token_type": "mac"})),
        ),
        (
            "no access_token",
            token_answer(json!({"token_type": "Bearer"})),
        ),
        (
            "not JSON",
            ResponseTemplate::new(200).set_body_string("<html>login</html>"),
        ),
    ] {
        let auth = token_endpoint(answer).await;
        let api = ok_server().await;
        let client = fast_builder(&api.uri())
            .token_provider(OAuth2ClientCredentials::new(
                token_url(&auth),
                CLIENT_ID,
                CLIENT_SECRET,
            ))
            .build()
            .unwrap();

        let err = client.get("x").send().await.unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Rejected, "{case}");
        assert_eq!(err.attempts(), 0, "{case}");
        assert_eq!(received(&api).await, 0, "{case}");
    }
}

/// `err`'s `Display` and `Debug`, and those of every source, joined.
fn everything_said_about(err: &resilient_http::Error) -> String {
    use std::fmt::Write as _;
    let mut text = format!("{err}\n{err:?}");
    let mut source = err.source();
    while let Some(s) = source {
        write!(text, "\n{s}\n{s:?}").unwrap();
        source = s.source();
    }
    text
}

#[tokio::test]
async fn oauth2_error_names_the_servers_error_code_but_never_the_secret() {
    for status in [400, 401] {
        let auth = token_endpoint(ResponseTemplate::new(status).set_body_json(json!({
            "error": "invalid_client",
            "error_description": "client authentication failed"
        })))
        .await;
        let api = ok_server().await;
        let client = fast_builder(&api.uri())
            .token_provider(OAuth2ClientCredentials::new(
                token_url(&auth),
                CLIENT_ID,
                CLIENT_SECRET,
            ))
            .build()
            .unwrap();

        let err = client.get("x").send().await.unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Rejected, "{status}");
        assert_eq!(received(&api).await, 0, "{status}");
        assert_eq!(received(&auth).await, 1, "a {status} is not retried");
        let text = everything_said_about(&err);
        assert!(format!("{err}").contains("invalid_client"), "{text}");
        for secret in [CLIENT_SECRET, "s3%3Acr%2Ft%21", BASIC, &BASIC[6..]] {
            assert!(!text.contains(secret), "{status}: {secret} in {text}");
        }
    }
}

#[tokio::test]
async fn oauth2_secrets_never_appear_in_traces() {
    let (logs, _guard) = capture_traces(tracing::Level::TRACE);
    let auth = token_endpoint(token_answer(json!({
        "access_token": "at-SECRET-1",
        "token_type": "Bearer",
        "expires_in": 3600
    })))
    .await;
    let api = ok_server().await;
    let client = fast_builder(&api.uri())
        .token_provider(OAuth2ClientCredentials::new(
            token_url(&auth),
            CLIENT_ID,
            CLIENT_SECRET,
        ))
        .build()
        .unwrap();

    client.get("x").send().await.unwrap();

    assert_eq!(authorizations(&api).await, ["Bearer at-SECRET-1"]);
    let text = logs.text();
    assert!(
        text.contains("oauth2/token"),
        "the token request is traced: {text}"
    );
    for secret in ["at-SECRET-1", CLIENT_SECRET, "s3%3Acr%2Ft%21", &BASIC[6..]] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}
