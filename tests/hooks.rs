//! Request hooks: run on every attempt, after the token is set, in the order
//! they were added, on the caller's task; what they see (method, URL of the
//! chosen endpoint, attempt number, headers) and what they may change.

// Test support: a failed setup step should panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Sequence, fast_builder};
use resilient_http::{
    ApiClient, ErrorKind, HeaderName, HeaderValue, HookRequest, LoadBalance, Method, RateLimit,
    RetryPolicy, StatusCode, Token,
};
use wiremock::matchers::{any, header, header_exists, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

tokio::task_local! {
    /// The id of the request a service is serving.
    static REQUEST_ID: String;
}

/// What hooks saw, shared with the test.
type Seen<T> = Arc<Mutex<Vec<T>>>;

fn seen<T>() -> Seen<T> {
    Arc::new(Mutex::new(Vec::new()))
}

fn taken<T: Clone>(seen: &Seen<T>) -> Vec<T> {
    seen.lock().unwrap().clone()
}

/// The values of header `name` in each request the server received, in order
/// (`"-"` for a request without it).
async fn header_values(server: &MockServer, name: &str) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| {
            r.headers
                .get(name)
                .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
        })
        .collect()
}

async fn ok_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

fn name(s: &'static str) -> HeaderName {
    HeaderName::from_static(s)
}

/// Sets `x-request-id` from the task-local, when there is one.
fn propagate_request_id(req: &mut HookRequest<'_>) {
    if let Ok(Ok(id)) = REQUEST_ID.try_with(|id| HeaderValue::from_str(id)) {
        req.set_header(name("x-request-id"), id);
    }
}

// ------------------------------------------------------------- propagation

#[tokio::test]
async fn a_hook_propagates_the_request_id_of_the_served_request() {
    let server = ok_server().await;
    let client = fast_builder(&server.uri())
        .request_hook(propagate_request_id)
        .build()
        .unwrap();

    let first = REQUEST_ID.scope("req-7".to_owned(), client.get("orders/1").send());
    first.await.unwrap();
    // Also from a spawned task that sets its own id.
    let spawned = tokio::spawn(REQUEST_ID.scope("req-8".to_owned(), client.get("orders/2").send()));
    spawned.await.unwrap().unwrap();
    // Outside any request: no header.
    client.get("orders/3").send().await.unwrap();

    assert_eq!(
        header_values(&server, "x-request-id").await,
        ["req-7", "req-8", "-"]
    );
}

#[tokio::test]
async fn hooks_run_on_every_attempt_with_its_number() {
    let server = MockServer::start().await;
    Mock::given(path("/flaky"))
        .and(header("x-attempt", "1"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/flaky"))
        .and(header("x-attempt", "2"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .request_hook(|req: &mut HookRequest<'_>| {
            let n = HeaderValue::from(req.attempt());
            req.set_header(name("x-attempt"), n);
        })
        .build()
        .unwrap();

    let resp = client.get("flaky").send().await.unwrap();

    assert_eq!(resp.attempts(), 2);
    assert_eq!(header_values(&server, "x-attempt").await, ["1", "2"]);
}

#[tokio::test]
async fn a_header_set_on_one_attempt_does_not_leak_into_the_next() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(Sequence::statuses(&[503, 503, 200]))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .request_hook(|req: &mut HookRequest<'_>| {
            // Appends: a header left over from a previous attempt would show.
            let value = HeaderValue::from(req.attempt());
            req.headers_mut().append(name("x-attempt"), value);
        })
        .build()
        .unwrap();

    client.get("x").send().await.unwrap();

    let requests = server.received_requests().await.unwrap();
    let per_attempt: Vec<Vec<&str>> = requests
        .iter()
        .map(|r| {
            r.headers
                .get_all("x-attempt")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(per_attempt, [vec!["1"], vec!["2"], vec!["3"]]);
}

#[tokio::test]
async fn hooks_run_in_the_order_they_were_added() {
    let server = ok_server().await;
    let order = seen();
    let (first, second) = (Arc::clone(&order), Arc::clone(&order));
    let client = fast_builder(&server.uri())
        .request_hook(move |req: &mut HookRequest<'_>| {
            first.lock().unwrap().push(("first", req.attempt()));
            req.set_header(name("x-trail"), HeaderValue::from_static("first"));
        })
        .request_hook(move |req: &mut HookRequest<'_>| {
            second.lock().unwrap().push(("second", req.attempt()));
            let before = req.headers()[&name("x-trail")].to_str().unwrap().to_owned();
            req.set_header(
                name("x-trail"),
                HeaderValue::from_str(&format!("{before},second")).unwrap(),
            );
        })
        .build()
        .unwrap();

    client.get("x").send().await.unwrap();

    assert_eq!(taken(&order), [("first", 1), ("second", 1)]);
    assert_eq!(header_values(&server, "x-trail").await, ["first,second"]);
}

// ----------------------------------------------------------------- what they see

#[tokio::test]
async fn a_hook_sees_the_method_and_the_full_url() {
    let server = ok_server().await;
    let calls = seen();
    let record = Arc::clone(&calls);
    let client = ApiClient::builder()
        .base_url(format!("{}/api/", server.uri()))
        .no_retry()
        .request_hook(move |req: &mut HookRequest<'_>| {
            record
                .lock()
                .unwrap()
                .push((req.method().clone(), req.url().to_string()));
        })
        .build()
        .unwrap();

    client
        .delete("orders/7")
        .query(&[("force", "1")])
        .send()
        .await
        .unwrap();

    assert_eq!(
        taken(&calls),
        [(
            Method::DELETE,
            format!("{}/api/orders/7?force=1", server.uri())
        )]
    );
}

#[tokio::test]
async fn with_endpoints_a_hook_sees_the_instance_each_attempt_goes_to() {
    let a = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .mount(&a)
        .await;
    let b = ok_server().await;
    let urls = seen();
    let record = Arc::clone(&urls);
    let client = ApiClient::builder()
        .endpoints([a.uri(), b.uri()])
        .load_balance(LoadBalance::RoundRobin)
        .retry(
            RetryPolicy::exponential()
                .initial_backoff(Duration::from_millis(1))
                .jitter(false),
        )
        .request_hook(move |req: &mut HookRequest<'_>| {
            record
                .lock()
                .unwrap()
                .push((req.attempt(), req.url().to_string()));
            // Tell the server which URL the hook saw.
            let url = HeaderValue::from_str(req.url().as_str()).unwrap();
            req.set_header(name("x-seen-url"), url);
        })
        .build()
        .unwrap();

    // Round robin: a first (503), then the retry avoids a.
    let resp = client.get("orders/1?v=2").send().await.unwrap();

    assert_eq!(resp.attempts(), 2);
    assert_eq!(
        taken(&urls),
        [
            (1, format!("{}/orders/1?v=2", a.uri())),
            (2, format!("{}/orders/1?v=2", b.uri())),
        ]
    );
    assert_eq!(
        header_values(&a, "x-seen-url").await,
        [format!("{}/orders/1?v=2", a.uri())]
    );
    assert_eq!(
        header_values(&b, "x-seen-url").await,
        [format!("{}/orders/1?v=2", b.uri())]
    );
}

#[tokio::test]
async fn a_hook_runs_after_the_token_is_set_and_sees_it() {
    let server = ok_server().await;
    let saw = seen();
    let record = Arc::clone(&saw);
    let client = fast_builder(&server.uri())
        .token_provider(|| async { Ok(Token::new("tok-SECRET-1")) })
        .request_hook(move |req: &mut HookRequest<'_>| {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            record.lock().unwrap().push((auth, format!("{req:?}")));
        })
        .build()
        .unwrap();

    client.get("x").send().await.unwrap();

    let saw = taken(&saw);
    assert_eq!(saw.len(), 1);
    assert_eq!(saw[0].0.as_deref(), Some("Bearer tok-SECRET-1"));
    let debug = &saw[0].1;
    assert!(debug.contains("attempt"), "{debug}");
    assert!(!debug.contains("tok-SECRET-1"), "{debug}");
}

#[tokio::test]
async fn after_a_401_the_hook_sees_the_second_attempt_with_the_new_token() {
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
    let fetched = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let saw = seen();
    let record = Arc::clone(&saw);
    let client = fast_builder(&server.uri())
        .no_retry()
        .token_provider(move || {
            let n = fetched.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            async move { Ok(Token::new(format!("t-{n}"))) }
        })
        .request_hook(move |req: &mut HookRequest<'_>| {
            let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
            record.lock().unwrap().push((req.attempt(), auth));
        })
        .build()
        .unwrap();

    client.post("orders").send().await.unwrap();

    assert_eq!(
        taken(&saw),
        [(1, "Bearer t-1".to_owned()), (2, "Bearer t-2".to_owned())]
    );
}

#[tokio::test]
async fn a_hook_does_not_run_for_a_call_refused_before_any_attempt() {
    let server = ok_server().await;
    let runs = seen::<u32>();
    let record = Arc::clone(&runs);
    let client = fast_builder(&server.uri())
        .token_provider(|| async { Err::<Token, _>("vault sealed".into()) })
        .request_hook(move |req: &mut HookRequest<'_>| {
            record.lock().unwrap().push(req.attempt());
        })
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert!(taken(&runs).is_empty());
}

// -------------------------------------------------------------- redirects

/// A server that redirects `/start` to `target`.
async fn redirecting_to(target: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path("/start"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", target))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn a_credential_header_set_by_a_hook_is_not_carried_on_a_cross_origin_redirect() {
    let other = MockServer::start().await;
    Mock::given(path("/landing"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&other)
        .await;
    let origin = redirecting_to(&format!("{}/landing", other.uri())).await;
    let client = fast_builder(&origin.uri())
        .request_hook(|req: &mut HookRequest<'_>| {
            req.set_header(name("x-api-key"), HeaderValue::from_static("k3y"));
        })
        .build()
        .unwrap();

    let err = client.get("start").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Client);
    assert_eq!(err.status(), Some(StatusCode::FOUND));
    assert_eq!(header_values(&origin, "x-api-key").await, ["k3y"]);
}

#[tokio::test]
async fn a_credential_header_set_by_a_hook_follows_a_same_origin_redirect() {
    let server = MockServer::start().await;
    Mock::given(path("/start"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/landing"))
        .mount(&server)
        .await;
    Mock::given(path("/landing"))
        .and(header_exists("x-api-key"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .request_hook(|req: &mut HookRequest<'_>| {
            req.set_header(name("x-api-key"), HeaderValue::from_static("k3y"));
        })
        .build()
        .unwrap();

    let resp = client.get("start").send().await.unwrap();

    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_values(&server, "x-api-key").await, ["k3y", "k3y"]);
}

#[tokio::test]
async fn a_non_credential_header_set_by_a_hook_does_not_stop_a_cross_origin_redirect() {
    let other = ok_server().await;
    let origin = redirecting_to(&format!("{}/landing", other.uri())).await;
    let client = fast_builder(&origin.uri())
        .request_hook(propagate_request_id)
        .build()
        .unwrap();

    let resp = REQUEST_ID
        .scope("req-1".to_owned(), client.get("start").send())
        .await
        .unwrap();

    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_values(&other, "x-request-id").await, ["req-1"]);
}

#[tokio::test]
async fn with_endpoints_and_a_rate_limit_attempts_still_go_round_robin() {
    let (a, b) = (ok_server().await, ok_server().await);
    let urls = seen();
    let record = Arc::clone(&urls);
    let client = ApiClient::builder()
        .endpoints([a.uri(), b.uri()])
        .load_balance(LoadBalance::RoundRobin)
        // Far more than the test needs: no call ever waits.
        .rate_limit(RateLimit::per_second(1000))
        .request_hook(move |req: &mut HookRequest<'_>| {
            record.lock().unwrap().push(req.url().to_string());
        })
        .build()
        .unwrap();

    for _ in 0..4 {
        client.get("x").send().await.unwrap();
    }

    let (at_a, at_b) = (format!("{}/x", a.uri()), format!("{}/x", b.uri()));
    assert_eq!(taken(&urls), [at_a.clone(), at_b.clone(), at_a, at_b]);
}
