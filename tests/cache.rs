//! The response cache (feature `cache`): freshness, revalidation, `Vary`,
//! credentials, bounds, stale-if-error and stale-while-revalidate.
#![cfg(feature = "cache")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use resilient_http::{
    ApiClient, ApiClientBuilder, ApiResponse, BoxError, Cache, CircuitBreakerConfig, CircuitState,
    ErrorKind, StatusCode, Token,
};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::{Sequence, fast_builder, received, until};

/// Moves tokio's clock (the cache's) forward by `by` at once, then lets it
/// run again; I/O keeps real time.
async fn pass_time(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn cached(server: &MockServer, cache: Cache) -> ApiClientBuilder {
    fast_builder(&server.uri()).cache(cache)
}

fn ok(body: &str, cache_control: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("cache-control", cache_control)
        .set_body_string(body)
}

/// A server whose `path` answers `entry` (with `ETag: "v1"`), and whose
/// revalidation of it (`If-None-Match: "v1"`) answers `not_modified` (a 304,
/// with the same `ETag`).
async fn revalidating_server(
    path_: &str,
    entry: ResponseTemplate,
    not_modified: ResponseTemplate,
) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(header("if-none-match", "\"v1\""))
        .respond_with(not_modified.insert_header("etag", "\"v1\""))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path(path_))
        .respond_with(entry.insert_header("etag", "\"v1\""))
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

/// A server that answers one GET of `at` with `first`, and 503 to every
/// request after it; the client `client` builds reads `at` once, then 2 s
/// pass.
async fn down_after_one_read(
    at: &str,
    first: ResponseTemplate,
    client: impl FnOnce(&MockServer) -> ApiClient,
) -> (MockServer, ApiClient) {
    let server = MockServer::start().await;
    Mock::given(path(at))
        .respond_with(first)
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let client = client(&server);
    client.get(at.trim_start_matches('/')).send().await.unwrap();
    pass_time(secs(2)).await;
    (server, client)
}

// ------------------------------------------------------ freshness and 304s

#[tokio::test]
async fn a_fresh_response_answers_again_without_a_request() {
    let server = MockServer::start().await;
    Mock::given(path("/users/42"))
        .respond_with(ok("ada", "max-age=60"))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();

    let first = client.get("users/42").send().await.unwrap();
    let second = client.get("users/42").send().await.unwrap();

    assert_eq!(received(&server).await, 1);
    assert_eq!((first.attempts(), second.attempts()), (1, 0));
    assert_eq!(second.text().unwrap(), "ada");
    assert!(!second.is_stale());
    let stats = client.stats();
    assert_eq!((stats.cache_hits, stats.cache_misses), (1, 1));
    assert_eq!((stats.calls, stats.succeeded, stats.attempts), (2, 2, 1));
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_and_a_304_reuses_its_body() {
    let server = revalidating_server(
        "/report",
        ok("the report", "max-age=60"),
        ResponseTemplate::new(304).insert_header("cache-control", "max-age=60"),
    )
    .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    client.get("report").send().await.unwrap();
    pass_time(secs(61)).await;

    let revalidated = client.get("report").send().await.unwrap();
    let fresh_again = client.get("report").send().await.unwrap();

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2, "the 304 made the entry fresh again");
    assert!(!requests[0].headers.contains_key("if-none-match"));
    assert_eq!(requests[1].headers["if-none-match"], "\"v1\"");
    assert_eq!(revalidated.status(), 200);
    assert_eq!(revalidated.text().unwrap(), "the report");
    assert_eq!(fresh_again.text().unwrap(), "the report");
    assert_eq!(fresh_again.attempts(), 0);
    let stats = client.stats();
    assert_eq!(
        (
            stats.cache_misses,
            stats.cache_revalidations,
            stats.cache_hits
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn an_absurd_age_header_is_an_old_response_not_a_panic() {
    let server = MockServer::start().await;
    Mock::given(path("/old"))
        .respond_with(
            ok("old", "max-age=60")
                .insert_header("age", "18446744073709551615")
                .insert_header("etag", "\"e\""),
        )
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();

    for _ in 0..2 {
        assert_eq!(
            client.get("old").send().await.unwrap().text().unwrap(),
            "old"
        );
        pass_time(secs(2)).await; // the policy adds the time since to the age
    }

    assert_eq!(
        received(&server).await,
        2,
        "older than its max-age: not fresh"
    );
}

#[tokio::test]
async fn no_store_and_no_cache_calls_go_to_the_server_every_time() {
    let server = MockServer::start().await;
    Mock::given(path("/secret"))
        .respond_with(ok("s", "no-store"))
        .mount(&server)
        .await;
    Mock::given(path("/public"))
        .respond_with(ok("p", "max-age=60"))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();

    for _ in 0..2 {
        client.get("secret").send().await.unwrap();
        client.get("public").no_cache().send().await.unwrap();
    }
    client.post("public").send().await.unwrap();

    assert_eq!(received(&server).await, 5);
    assert_eq!(client.stats().cache_entries, 0);
}

// ------------------------------------------------------------------ outage

#[tokio::test]
async fn during_an_outage_stale_entries_answer_and_fresh_misses_fail() {
    let server = MockServer::start().await;
    Mock::given(path("/prices"))
        .respond_with(ok("yesterday", "max-age=1"))
        .mount(&server)
        .await;
    let client = cached(
        &server,
        Cache::in_memory(100).stale_if_error(Duration::from_secs(300)),
    )
    .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(5))
    .build()
    .unwrap();
    client.get("prices").send().await.unwrap();
    // The outage: every request fails.
    server.reset().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    pass_time(secs(2)).await;

    // Enough calls for the circuit breaker to open: stale answers throughout.
    for _ in 0..30 {
        let resp = client.get("prices").send().await.unwrap();
        assert!(resp.is_stale());
        assert_eq!(resp.text().unwrap(), "yesterday");
        assert!(resp.headers().contains_key("age"));
    }
    assert_eq!(client.circuit_state(), CircuitState::Open);
    let err = client.get("news").send().await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");

    let stats = client.stats();
    assert_eq!(stats.cache_stale, 30);
    assert_eq!(stats.cache_misses, 2, "the first call and `news`");
    assert_eq!((stats.succeeded, stats.failed), (31, 1));

    // Past the window, the entry no longer answers.
    pass_time(secs(301)).await;
    let err = client.get("prices").send().await.unwrap_err();
    assert!(matches!(
        err.kind(),
        ErrorKind::Rejected | ErrorKind::Retryable
    ));
}

#[tokio::test]
async fn the_response_s_own_stale_if_error_is_honoured_and_a_client_error_is_not_hidden() {
    let server = MockServer::start().await;
    Mock::given(path("/a"))
        .respond_with(ok("a", "max-age=1, stale-if-error=10"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/b"))
        .respond_with(ok("b", "max-age=1, stale-if-error=10"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/a"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    Mock::given(path("/b"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    // No client-side window: only the response's.
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    client.get("a").send().await.unwrap();
    client.get("b").send().await.unwrap();
    pass_time(secs(5)).await;

    assert!(client.get("a").send().await.unwrap().is_stale());
    let err = client.get("b").send().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Client);

    pass_time(secs(10)).await;
    let err = client.get("a").send().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server);
}

// -------------------------------------------------------------------- Vary

#[tokio::test]
async fn vary_keeps_one_entry_per_value_of_the_header() {
    let server = MockServer::start().await;
    for (lang, greeting) in [("en", "hello"), ("fr", "bonjour")] {
        Mock::given(header("accept-language", lang))
            .respond_with(ok(greeting, "max-age=60").insert_header("vary", "Accept-Language"))
            .expect(1)
            .mount(&server)
            .await;
    }
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    let greet = |lang: &'static str| {
        let call = client
            .get("greeting")
            .header("accept-language", lang)
            .send();
        async move { call.await.unwrap().text().unwrap() }
    };

    for _ in 0..2 {
        assert_eq!(greet("en").await, "hello");
        assert_eq!(greet("fr").await, "bonjour");
    }

    assert_eq!(received(&server).await, 2);
    assert_eq!(client.stats().cache_hits, 2);
}

// ------------------------------------------------------------- credentials

#[tokio::test]
async fn two_tokens_never_see_each_other_s_entries() {
    let server = MockServer::start().await;
    for (token, body) in [("a", "alice's"), ("b", "bob's")] {
        Mock::given(header("authorization", format!("Bearer {token}").as_str()))
            .respond_with(ok(body, "public, max-age=60"))
            .expect(1)
            .mount(&server)
            .await;
    }
    Mock::given(path("/me"))
        .respond_with(ok("nobody's", "public, max-age=60"))
        .with_priority(10)
        .expect(1)
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    let me = |token: Option<&'static str>| {
        let call = match token {
            Some(token) => client.get("me").bearer_auth(token),
            None => client.get("me"),
        }
        .send();
        async move { call.await.unwrap().text().unwrap() }
    };

    for _ in 0..2 {
        assert_eq!(me(Some("a")).await, "alice's");
        assert_eq!(me(Some("b")).await, "bob's");
        assert_eq!(me(None).await, "nobody's");
    }

    assert_eq!(received(&server).await, 3);
    let stats = client.stats();
    assert_eq!((stats.cache_hits, stats.cache_entries), (3, 3));
}

#[tokio::test]
async fn a_credentialed_response_without_public_is_not_stored_unless_asked() {
    let server = MockServer::start().await;
    Mock::given(path("/me"))
        .respond_with(ok("mine", "private, max-age=60"))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100))
        .bearer_auth("static-token")
        .build()
        .unwrap();
    let opted_in = cached(&server, Cache::in_memory(100).store_credentialed(true))
        .bearer_auth("static-token")
        .build()
        .unwrap();

    for _ in 0..2 {
        client.get("me").send().await.unwrap();
        opted_in.get("me").send().await.unwrap();
    }

    assert_eq!(received(&server).await, 3);
    assert_eq!(
        (client.stats().cache_entries, opted_in.stats().cache_entries),
        (0, 1)
    );
}

#[tokio::test]
async fn a_refreshed_token_keeps_the_token_provider_s_entries() {
    let server = MockServer::start().await;
    Mock::given(path("/catalog"))
        .respond_with(ok("items", "public, max-age=600"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/other"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let fetched = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&fetched);
    let client = cached(&server, Cache::in_memory(100))
        .token_provider(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(Token::new(format!("token-{n}")).expires_in(secs(60))) }
        })
        .build()
        .unwrap();

    client.get("catalog").send().await.unwrap();
    pass_time(secs(120)).await; // the token expired; the entry did not
    client.get("other").no_cache().send().await.unwrap(); // a new token
    let again = client.get("catalog").send().await.unwrap();

    assert_eq!(fetched.load(Ordering::SeqCst), 2);
    assert_eq!(again.attempts(), 0);
    assert_eq!(again.text().unwrap(), "items");
}

// ------------------------------------------------------------------ bounds

#[tokio::test]
async fn the_cache_holds_at_most_its_entries_and_its_bytes() {
    let server = MockServer::start().await;
    Mock::given(path("/big"))
        .respond_with(ok(&"x".repeat(300_000), "max-age=60"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ok(&"y".repeat(20_000), "max-age=60"))
        .with_priority(10)
        .mount(&server)
        .await;
    let few = cached(&server, Cache::in_memory(5)).build().unwrap();
    let small = cached(&server, Cache::in_memory(1_000).max_bytes(200_000))
        .build()
        .unwrap();

    for i in 0..20 {
        few.get(format!("item/{i}")).send().await.unwrap();
        small.get(format!("item/{i}")).send().await.unwrap();
    }
    small.get("big").send().await.unwrap();

    let (few, small) = (few.stats(), small.stats());
    assert!(few.cache_entries <= 5, "{few:?}");
    assert!(few.cache_entries >= 1, "{few:?}");
    assert!(small.cache_bytes <= 200_000, "{small:?}");
    assert!(small.cache_entries <= 9, "{small:?}");
    assert!(small.cache_entries >= 1, "{small:?}");
}

#[tokio::test]
async fn a_zero_bound_is_a_config_error() {
    for cache in [Cache::in_memory(0), Cache::in_memory(10).max_bytes(0)] {
        let err = ApiClient::builder()
            .base_url("http://127.0.0.1:1/")
            .cache(cache)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }
}

// ------------------------------------------------- stale-while-revalidate

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once_in_the_background() {
    let (logs, _guard) = common::capture_traces(tracing::Level::DEBUG);
    let server = MockServer::start().await;
    Mock::given(path("/feed"))
        .respond_with(ok("v1", "max-age=1, stale-while-revalidate=60"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/feed"))
        .respond_with(ok("v2", "max-age=60").set_delay(Duration::from_millis(300)))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    client.get("feed").send().await.unwrap();
    pass_time(secs(2)).await;

    // While the one refresh is in flight, every call answers at once from
    // the entry (no attempt). (On this one-thread runtime the refresh task
    // cannot even start before the loop yields.)
    for _ in 0..5 {
        let resp = client.get("feed").send().await.unwrap();
        assert!(resp.is_stale());
        assert_eq!(resp.text().unwrap(), "v1");
        assert_eq!(resp.attempts(), 0);
    }

    // The refresh is stored.
    until(|| client.stats().cache_misses == 2).await;
    let resp = client.get("feed").send().await.unwrap();
    assert_eq!(resp.text().unwrap(), "v2");
    assert!(!resp.is_stale());
    assert_eq!(received(&server).await, 2, "one refresh");
    let stats = client.stats();
    assert_eq!((stats.cache_stale, stats.cache_hits), (5, 1));
    // The refresh ran as a call of its own under its own span.
    let text = logs.text();
    let refreshed = text
        .lines()
        .find(|l| l.contains("attempt succeeded") && l.contains("http.client.cache.refresh"))
        .unwrap_or_else(|| panic!("no refresh in:\n{text}"));
    assert!(refreshed.contains("cache=\"miss\""), "{refreshed}");
}

// ------------------------------------------------------------- the span

#[tokio::test]
async fn the_span_says_what_the_cache_did() {
    let (logs, _guard) = common::capture_traces(tracing::Level::DEBUG);
    let server = MockServer::start().await;
    Mock::given(path("/a"))
        .respond_with(ok("a", "max-age=60"))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();

    client.get("a").send().await.unwrap();
    client.get("a").send().await.unwrap();

    let text = logs.text();
    let line = |event: &str| {
        text.lines()
            .find(|l| l.contains(event))
            .unwrap_or_else(|| panic!("no `{event}` event in:\n{text}"))
            .to_owned()
    };
    assert!(
        line("attempt succeeded").contains("cache=\"miss\""),
        "{text}"
    );
    assert!(
        line("answered from the cache").contains("cache=\"hit\""),
        "{text}"
    );
}

#[tokio::test]
async fn a_failed_background_refresh_answers_no_one_and_a_later_call_tries_again() {
    let first = ok("v1", "max-age=1, stale-while-revalidate=60");
    let (server, client) = down_after_one_read("/feed", first, |server| {
        // Even with a stale-if-error window: the refresh answers no one.
        cached(server, Cache::in_memory(100).stale_if_error(secs(300)))
            .build()
            .unwrap()
    })
    .await;

    assert!(client.get("feed").send().await.unwrap().is_stale());
    // The refresh fails: it is a failed call, not a stale answer.
    until(|| client.stats().failed == 1).await;
    assert!(client.get("feed").send().await.unwrap().is_stale());
    until(|| client.stats().failed == 2).await;

    let stats = client.stats();
    assert_eq!((stats.cache_stale, stats.calls), (2, 5));
    assert_eq!(
        received(&server).await,
        1 + 2 * 3,
        "two refreshes of 3 attempts"
    );
}

#[tokio::test]
async fn a_stale_entry_answers_before_the_fallback_which_answers_the_misses() {
    let first = ok("yesterday", "max-age=1");
    let (_server, client) = down_after_one_read("/prices", first, |server| {
        cached(server, Cache::in_memory(100).stale_if_error(secs(300)))
            .fallback(|_| Some(ApiResponse::synthetic(StatusCode::OK, "fallback")))
            .build()
            .unwrap()
    })
    .await;

    let stale = client.get("prices").send().await.unwrap();
    let missed = client.get("news").send().await.unwrap();

    assert!(stale.is_stale() && !stale.is_synthetic());
    assert_eq!(stale.text().unwrap(), "yesterday");
    assert!(missed.is_synthetic() && !missed.is_stale());
    assert_eq!(missed.text().unwrap(), "fallback");
    let stats = client.stats();
    assert_eq!((stats.cache_stale, stats.fallbacks), (1, 1));
}

// ------------------------------------------- what is never stored or shared

#[tokio::test]
async fn a_call_built_and_dropped_unpolled_asks_the_cache_nothing() {
    let server = MockServer::start().await;
    Mock::given(path("/feed"))
        .respond_with(ok("v1", "max-age=1, stale-while-revalidate=60"))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    client.get("feed").send().await.unwrap();
    pass_time(secs(2)).await;

    // A refresh is a copy of the call that claimed it: its header says whose.
    drop(client.get("feed").header("x-call", "dropped").send());
    assert_eq!(client.stats().cache_stale, 0);

    // Polled, a call answers stale and starts the one refresh (which a
    // refresh of the dropped call, in flight, would have kept it from).
    let polled = client.get("feed").header("x-call", "polled").send().await;
    assert!(polled.unwrap().is_stale());
    until(|| client.stats().cache_misses == 2).await;

    let requests = server.received_requests().await.unwrap();
    let calls: Vec<_> = requests
        .iter()
        .map(|r| r.headers.get("x-call").map(|v| v.to_str().unwrap()))
        .collect();
    assert_eq!(
        calls,
        [None, Some("polled")],
        "one refresh, the polled call's"
    );
    assert_eq!(client.stats().cache_stale, 1);
}

#[tokio::test]
async fn a_response_that_sets_a_cookie_is_not_stored() {
    let server = MockServer::start().await;
    Mock::given(path("/session"))
        .respond_with(ok("hello", "max-age=60").insert_header("set-cookie", "sid=s3cr3t"))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    for _ in 0..2 {
        client.get("session").send().await.unwrap();
    }
    assert_eq!(received(&server).await, 2, "each caller got its own cookie");
    assert_eq!(client.stats().cache_entries, 0);
}

#[tokio::test]
async fn an_answer_reached_through_a_redirect_is_not_stored_under_the_first_url() {
    let server = MockServer::start().await;
    Mock::given(path("/latest"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/v/123"))
        .mount(&server)
        .await;
    Mock::given(path("/v/123"))
        .respond_with(ok("v123", "max-age=3600"))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    for _ in 0..2 {
        let resp = client.get("latest").send().await.unwrap();
        assert_eq!(resp.text().unwrap(), "v123");
    }
    // Both reads asked `/latest` again (and followed it): 2 redirects, 2 answers.
    assert_eq!(received(&server).await, 4);
}

#[tokio::test]
async fn a_no_cache_call_never_shares_the_request_of_one_that_may_be_answered_stale() {
    let server = MockServer::start().await;
    Mock::given(path("/slow"))
        .respond_with(ok("fresh", "max-age=60").set_delay(Duration::from_millis(300)))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100))
        .coalesce_requests(true)
        .build()
        .unwrap();
    let (a, b) = tokio::join!(
        client.get("slow").send(),
        client.get("slow").no_cache().send()
    );
    assert_eq!(
        (a.unwrap().status(), b.unwrap().status()),
        (StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(received(&server).await, 2, "not coalesced");
    assert_eq!(client.stats().coalesced, 0);
}

#[tokio::test]
async fn a_write_through_the_client_drops_the_entries_of_its_url() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/users/42"))
        .respond_with(ok("ada", "max-age=60"))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/users/42"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    client.get("users/42").send().await.unwrap();
    client.get("users/42").send().await.unwrap();
    assert_eq!(received(&server).await, 1, "the second read was a hit");

    client.put("users/42").send().await.unwrap();
    let read = client.get("users/42").send().await.unwrap();
    assert_eq!(read.attempts(), 1, "read again from the server");
    assert_eq!(received(&server).await, 3);
    // And stored again: the next read is a hit.
    client.get("users/42").send().await.unwrap();
    assert_eq!(received(&server).await, 3);
}

#[tokio::test]
async fn a_404_drops_the_entry_so_no_later_outage_serves_it() {
    let server = MockServer::start().await;
    Mock::given(path("/gone"))
        .respond_with(ok("here", "max-age=1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/gone"))
        .respond_with(ResponseTemplate::new(404))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/gone"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100).stale_if_error(secs(300)))
        .build()
        .unwrap();
    client.get("gone").send().await.unwrap();
    pass_time(secs(2)).await;
    let gone = client.get("gone").send().await.unwrap_err();
    assert_eq!(gone.status(), Some(StatusCode::NOT_FOUND));
    // The server is down now: without the entry, nothing stale answers.
    let down = client.get("gone").send().await.unwrap_err();
    assert_eq!(
        down.status(),
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "{down}"
    );
    assert_eq!(client.stats().cache_stale, 0);
}

#[tokio::test]
async fn a_write_s_invalidation_holds_after_many_later_writes() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/profile"))
        .respond_with(Sequence::new([
            ok("before the write", "max-age=600"),
            ok("after the write", "max-age=600"),
        ]))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;
    // 4 entries: the cache remembers the last 64 URLs written to.
    let client = cached(&server, Cache::in_memory(4)).build().unwrap();
    client.get("profile").send().await.unwrap();

    client.put("profile").send().await.unwrap();
    // More writes to other URLs than it remembers.
    for i in 0..300 {
        client.post(format!("items/{i}")).send().await.unwrap();
    }

    let read = client.get("profile").send().await.unwrap();
    assert_eq!(read.text().unwrap(), "after the write");
    assert_eq!(read.attempts(), 1);
}

#[tokio::test]
async fn a_304_with_no_store_answers_from_the_entry_and_drops_it() {
    let server = revalidating_server(
        "/doc",
        ok("the doc", "max-age=60"),
        ResponseTemplate::new(304).insert_header("cache-control", "no-store"),
    )
    .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    client.get("doc").send().await.unwrap();
    pass_time(secs(61)).await;

    let revalidated = client.get("doc").send().await.unwrap();
    assert_eq!(revalidated.status(), 200);
    assert_eq!(revalidated.text().unwrap(), "the doc");
    assert_eq!(client.stats().cache_entries, 0, "not stored again");

    client.get("doc").send().await.unwrap();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    assert!(
        !requests[2].headers.contains_key("if-none-match"),
        "no entry left to revalidate"
    );
}

#[tokio::test]
async fn a_304_that_is_not_public_drops_a_credentialed_entry() {
    let server = revalidating_server(
        "/me",
        ok("mine", "public, max-age=60"),
        ResponseTemplate::new(304).insert_header("cache-control", "private, max-age=60"),
    )
    .await;
    let client = cached(&server, Cache::in_memory(100))
        .bearer_auth("static-token")
        .build()
        .unwrap();
    client.get("me").send().await.unwrap();
    assert_eq!(client.stats().cache_entries, 1, "public: stored");
    pass_time(secs(61)).await;

    let revalidated = client.get("me").send().await.unwrap();
    assert_eq!(revalidated.text().unwrap(), "mine");
    assert_eq!(client.stats().cache_entries, 0, "private now: dropped");

    let again = client.get("me").send().await.unwrap();
    assert_eq!(again.attempts(), 1, "not answered from a private entry");
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    assert!(!requests[2].headers.contains_key("if-none-match"));
}

#[tokio::test]
async fn a_304_after_a_redirect_answers_with_the_entry_s_body() {
    let server = MockServer::start().await;
    Mock::given(path("/doc"))
        .respond_with(ok("the doc", "max-age=1").insert_header("etag", "\"v1\""))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/doc"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/doc/v1"))
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(path("/doc/v1"))
        .and(header("if-none-match", "\"v1\""))
        .respond_with(ResponseTemplate::new(304).insert_header("etag", "\"v1\""))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    client.get("doc").send().await.unwrap();
    pass_time(secs(2)).await;

    let resp = client.get("doc").send().await.unwrap();

    assert_eq!(resp.status(), 200, "the caller sent no conditional request");
    assert_eq!(resp.text().unwrap(), "the doc");
    assert_eq!(received(&server).await, 3);
    assert_eq!(client.stats().cache_revalidations, 1);
}

#[tokio::test]
async fn a_304_without_age_makes_the_entry_fresh_for_its_full_max_age() {
    let server = revalidating_server(
        "/report",
        ok("the report", "max-age=60").insert_header("age", "50"),
        ResponseTemplate::new(304).insert_header("cache-control", "max-age=60"),
    )
    .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    client.get("report").send().await.unwrap();
    pass_time(secs(11)).await; // 61 s old
    let revalidated = client.get("report").send().await.unwrap();
    assert_eq!(revalidated.text().unwrap(), "the report");

    pass_time(secs(30)).await; // 30 s after the 304
    let again = client.get("report").send().await.unwrap();

    assert_eq!(again.attempts(), 0, "fresh for 60 s from the 304");
    assert_eq!(received(&server).await, 2);
}

#[tokio::test]
async fn a_pragma_no_cache_request_is_not_answered_stale_while_revalidating() {
    let server = MockServer::start().await;
    let swr = "max-age=60, stale-while-revalidate=600";
    Mock::given(path("/feed"))
        .respond_with(Sequence::new([ok("v1", swr), ok("v2", swr), ok("v3", swr)]))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    client.get("feed").send().await.unwrap();
    let no_cache = || client.get("feed").header("pragma", "no-cache").send();

    // Fresh: not stale, so never answered as stale.
    let resp = no_cache().await.unwrap();
    assert!(!resp.is_stale());
    assert_eq!((resp.text().unwrap().as_str(), resp.attempts()), ("v2", 1));

    // Stale, within its stale-while-revalidate window.
    pass_time(secs(61)).await;
    let resp = no_cache().await.unwrap();
    assert!(!resp.is_stale());
    assert_eq!((resp.text().unwrap().as_str(), resp.attempts()), ("v3", 1));

    assert_eq!(received(&server).await, 3);
    assert_eq!(client.stats().cache_stale, 0);
}

#[tokio::test]
async fn a_response_that_is_only_immutable_is_not_stored() {
    let server = MockServer::start().await;
    Mock::given(path("/logo"))
        .respond_with(ok("logo", "immutable"))
        .expect(2)
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();

    for _ in 0..2 {
        client.get("logo").send().await.unwrap();
    }

    assert_eq!(received(&server).await, 2, "no freshness of its own");
    assert_eq!(client.stats().cache_hits, 0);
}

#[tokio::test]
async fn a_404_answer_drops_the_entry_it_revalidated() {
    let server = MockServer::start().await;
    Mock::given(path("/gone"))
        .respond_with(Sequence::new([
            ok("\"here\"", "max-age=1, stale-if-error=600"),
            ResponseTemplate::new(404),
            ResponseTemplate::new(503),
        ]))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    let here: Option<String> = client.get_json_opt("gone").await.unwrap();
    assert_eq!(here.as_deref(), Some("here"));
    pass_time(secs(2)).await;

    // The 404 is an answer (allowed), not an error.
    let gone: Option<String> = client.get_json_opt("gone").await.unwrap();
    assert_eq!(gone, None);
    // The server is down now: the entry the 404 superseded does not answer.
    let down = client.get_json_opt::<String>("gone").await.unwrap_err();

    assert_eq!(down.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(client.stats().cache_stale, 0);
}

#[tokio::test]
async fn an_allowed_429_leaves_the_entry_for_the_next_outage() {
    let server = MockServer::start().await;
    Mock::given(path("/doc"))
        .respond_with(Sequence::new([
            ok("v1", "max-age=1, stale-if-error=600"),
            ResponseTemplate::new(429),
            ResponseTemplate::new(503),
        ]))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    client.get("doc").send().await.unwrap();
    pass_time(secs(2)).await;

    // Pushback, allowed as an answer by this call: an outage, not news.
    let pushed = client
        .get("doc")
        .allow_status(StatusCode::TOO_MANY_REQUESTS)
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), StatusCode::TOO_MANY_REQUESTS);
    let stale = client.get("doc").send().await.unwrap();

    assert_eq!(stale.text().unwrap(), "v1");
    assert!(stale.is_stale());
}

#[tokio::test]
async fn a_newer_answer_that_may_not_be_stored_drops_the_entry_it_superseded() {
    let server = MockServer::start().await;
    Mock::given(path("/doc"))
        .respond_with(Sequence::new([
            ok("v1", "max-age=1, stale-if-error=600").insert_header("etag", "\"v1\""),
            ok("v2", "no-store"),
            ResponseTemplate::new(503),
        ]))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    client.get("doc").send().await.unwrap();
    pass_time(secs(2)).await;

    let newer = client.get("doc").send().await.unwrap();
    assert_eq!(newer.text().unwrap(), "v2");
    let down = client.get("doc").send().await.unwrap_err();

    assert_eq!(down.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(client.stats().cache_stale, 0);
}

#[tokio::test]
async fn a_response_that_arrived_stale_is_past_its_stale_if_error_window() {
    // An upstream cache kept it 100000 s: stale for 99940 s already.
    let old = || ok("old", "max-age=60, stale-if-error=300").insert_header("age", "100000");
    let server = MockServer::start().await;
    Mock::given(path("/validated"))
        .respond_with(Sequence::new([
            old().insert_header("etag", "\"v1\""),
            ResponseTemplate::new(503),
        ]))
        .mount(&server)
        .await;
    Mock::given(path("/plain"))
        .respond_with(Sequence::new([old(), ResponseTemplate::new(503)]))
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();

    for at in ["validated", "plain"] {
        assert_eq!(client.get(at).send().await.unwrap().text().unwrap(), "old");
        let down = client.get(at).send().await.unwrap_err();
        assert_eq!(down.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{at}");
    }
    assert_eq!(client.stats().cache_stale, 0);
}

#[tokio::test]
async fn a_fresh_entry_answers_with_every_line_of_a_repeated_header() {
    let server = MockServer::start().await;
    Mock::given(path("/page"))
        .respond_with(
            ok("page", "max-age=60")
                .append_header("link", "</a>; rel=\"next\"")
                .append_header("link", "</b>; rel=\"prev\""),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    client.get("page").send().await.unwrap();

    let hit = client.get("page").send().await.unwrap();

    assert_eq!(hit.attempts(), 0);
    assert_eq!(hit.headers().get_all("link").iter().count(), 2);
}

#[tokio::test]
async fn a_vary_in_two_lines_still_names_both_headers_after_a_304() {
    let server = revalidating_server(
        "/greeting",
        ok("hello", "max-age=1")
            .append_header("vary", "Accept")
            .append_header("vary", "Accept-Language"),
        ResponseTemplate::new(304).insert_header("cache-control", "max-age=60"),
    )
    .await;
    let client = cached(&server, Cache::in_memory(100)).build().unwrap();
    let greet = |accept: &'static str| {
        client
            .get("greeting")
            .header("accept", accept)
            .header("accept-language", "en")
            .send()
    };
    greet("text/plain").await.unwrap();
    pass_time(secs(2)).await;
    let revalidated = greet("text/plain").await.unwrap();
    assert_eq!(client.stats().cache_revalidations, 1);

    let other = greet("text/html").await.unwrap();

    assert_eq!(other.attempts(), 1, "another variant: not the entry");
    assert_eq!(received(&server).await, 3);
    assert_eq!(revalidated.headers().get_all("vary").iter().count(), 2);
}
