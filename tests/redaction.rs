//! No secret ever appears in `Display`, `Debug` or tracing output: bearer
//! tokens, API-key headers, URL passwords and credential-like query values.

mod common;

use resilient_http::{ApiClient, ApiClientBuilder, ApiResponse, ErrorKind};
use wiremock::matchers::{header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::{Sequence, capture_traces, fast_builder};

const BEARER_TOKEN: &str = "bearer-tok-s3cr3t-1";
const API_KEY: &str = "x-api-key-s3cr3t-2";
const URL_PASSWORD: &str = "url-pw-s3cr3t-3";
const QUERY_API_KEY: &str = "query-api-key-s3cr3t-4";
const QUERY_TOKEN: &str = "query-token-s3cr3t-5";
const REQUEST_API_KEY: &str = "request-api-key-s3cr3t-6";
const PROXY_AUTHORIZATION: &str = "Basic proxy-auth-s3cr3t-7";
const SET_COOKIE: &str = "session=set-cookie-s3cr3t-8; HttpOnly";
const SECRETS: [&str; 8] = [
    BEARER_TOKEN,
    API_KEY,
    URL_PASSWORD,
    QUERY_API_KEY,
    QUERY_TOKEN,
    REQUEST_API_KEY,
    PROXY_AUTHORIZATION,
    SET_COOKIE,
];

/// Fails naming the first secret found in `text` (what `what` describes).
fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} leaks {secret:?}: {text}");
    }
    assert!(!text.contains("s3cr3t"), "{what} leaks a secret: {text}");
}

/// `uri` (`http://host:port`) with user `svc` and the secret password, and `/api/`.
fn base_with_password(uri: &str) -> String {
    let host = uri.trim_start_matches("http://");
    format!("http://svc:{URL_PASSWORD}@{host}/api/")
}

/// A builder carrying every client-wide secret: a password in the base URL, a
/// bearer token and an API key.
fn secret_builder(uri: &str) -> ApiClientBuilder {
    fast_builder(&base_with_password(uri))
        .bearer_auth(BEARER_TOKEN)
        .default_header("x-api-key", API_KEY)
}

/// A path whose query carries secrets next to a harmless parameter.
fn secret_path() -> String {
    format!("orders?page=2&api_key={QUERY_API_KEY}&token={QUERY_TOKEN}")
}

/// Sends the secret-laden GET, with a secret request header too.
async fn secret_call(client: &ApiClient) -> resilient_http::Result<ApiResponse> {
    client
        .get(secret_path())
        .header("x-api-key", REQUEST_API_KEY)
        .send()
        .await
}

/// A server answering every request with `status`.
async fn server_answering(status: u16) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path("/api/orders"))
        .respond_with(ResponseTemplate::new(status))
        .mount(&server)
        .await;
    server
}

// ------------------------------------------------------------------ errors

#[tokio::test]
async fn error_response_display_and_debug_hide_every_secret() {
    let server = server_answering(503).await;
    let client = secret_builder(&server.uri()).no_retry().build().unwrap();

    let err = secret_call(&client).await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_no_secret("Display", &err.to_string());
    assert_no_secret("Debug", &format!("{err:?}"));
    assert_no_secret("Debug (pretty)", &format!("{err:#?}"));
    let url = err.url().unwrap();
    assert_eq!(url.password(), None);
    assert_no_secret("url()", url.as_str());
    assert!(url.as_str().contains("page=2"), "{url}");
}

#[tokio::test]
async fn transport_error_display_debug_and_sources_hide_every_secret() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = secret_builder(&format!("http://127.0.0.1:{port}"))
        .no_retry()
        .build()
        .unwrap();

    let err = secret_call(&client).await.unwrap_err();

    assert!(err.is_connect());
    assert_no_secret("Display", &err.to_string());
    assert_no_secret("Debug", &format!("{err:?}"));
    let mut cause = std::error::Error::source(&err);
    let mut checked = 0;
    for _ in 0..16 {
        let Some(e) = cause else { break };
        assert_no_secret("source Display", &e.to_string());
        assert_no_secret("source Debug", &format!("{e:?}"));
        checked += 1;
        cause = e.source();
    }
    assert!(
        checked > 0,
        "a transport error has causes to check: {err:?}"
    );
    assert!(
        cause.is_none(),
        "the chain is longer than the 16 causes checked"
    );
}

#[tokio::test]
async fn decode_error_display_and_debug_hide_every_secret() {
    let server = MockServer::start().await;
    Mock::given(path("/api/orders"))
        .respond_with(ResponseTemplate::new(200).set_body_string("not json"))
        .mount(&server)
        .await;
    let client = secret_builder(&server.uri()).build().unwrap();

    let err = client
        .get(secret_path())
        .send_json::<serde_json::Value>()
        .await
        .unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Decode);
    assert_no_secret("Display", &err.to_string());
    assert_no_secret("Debug", &format!("{err:?}"));
}

/// A token whose field has the wrong type, to make serde quote the value.
#[derive(Debug, serde::Deserialize)]
struct Token {
    #[allow(dead_code)]
    token: u64,
}

#[tokio::test]
async fn a_decode_error_does_not_quote_the_body_in_its_log_line() {
    let server = MockServer::start().await;
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"token":"bodys3cr3t"}"#))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri()).build().unwrap();

    let err = client.get_json::<Token>("token").await.unwrap_err();

    let line = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(!line.contains("bodys3cr3t"), "{line}");
    assert!(line.contains("line 1"), "where it failed: {line}");
}

#[tokio::test]
async fn config_error_for_a_request_url_hides_its_secrets() {
    let server = MockServer::start().await;
    let client = fast_builder(&server.uri()).build().unwrap();
    let url = format!("ftp://svc:{URL_PASSWORD}@127.0.0.1/x?token={QUERY_TOKEN}");

    let err = client.get(url).send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Config);
    assert_no_secret("Display", &err.to_string());
    assert_no_secret("Debug", &format!("{err:?}"));
}

#[test]
fn invalid_header_errors_do_not_echo_the_value() {
    let err = ApiClient::builder()
        .base_url("http://127.0.0.1:1/")
        .default_header("x-api-key", format!("{API_KEY}\n"))
        .build()
        .unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Config);
    assert_no_secret("Display", &err.to_string());
    assert_no_secret("Debug", &format!("{err:?}"));
}

// ------------------------------------------------------------------ Debug

#[tokio::test]
async fn debug_of_builder_client_request_and_response_hides_every_secret() {
    let server = server_answering(200).await;
    let builder = secret_builder(&server.uri());
    assert_no_secret("ApiClientBuilder", &format!("{builder:?}"));
    let client = builder.build().unwrap();
    assert_no_secret("ApiClient", &format!("{client:?}"));
    let request = client
        .get(secret_path())
        .header("x-api-key", REQUEST_API_KEY)
        .bearer_auth(BEARER_TOKEN);
    assert_no_secret("RequestBuilder", &format!("{request:?}"));

    let resp = request.send().await.unwrap();

    assert_no_secret("ApiResponse", &format!("{resp:?}"));
    assert_no_secret("ApiResponse (pretty)", &format!("{resp:#?}"));
    // The response holds the secret query; its Debug had something to hide.
    assert!(resp.url().as_str().contains(QUERY_TOKEN));
}

/// URL credentials the redaction must also catch: a key given as the URL's
/// user (no password), and query values named `pass`, `pwd` or `…signature`.
#[tokio::test]
async fn a_user_name_key_and_pass_pwd_and_signature_query_values_are_hidden() {
    let server = server_answering(503).await;
    let host = server.uri().trim_start_matches("http://").to_owned();
    let client = fast_builder(&format!("http://{API_KEY}@{host}/api/"))
        .build()
        .unwrap();
    assert_no_secret("ApiClient", &format!("{client:?}"));
    let query =
        format!("orders?pass={URL_PASSWORD}&pwd={QUERY_TOKEN}&X-Goog-Signature={QUERY_API_KEY}");

    let err = client.get(query).send().await.unwrap_err();

    assert_eq!(err.status().map(|s| s.as_u16()), Some(503));
    assert_no_secret("Display", &err.to_string());
    assert_no_secret("Debug", &format!("{err:?}"));
}

#[cfg(feature = "etcd")]
#[test]
fn an_etcd_resolver_debug_hides_the_password_of_its_url() {
    let resolver = resilient_http::EtcdResolver::new(
        format!("http://root:{URL_PASSWORD}@127.0.0.1:2379/"),
        "/svc/",
    );

    let debug = format!("{resolver:?}");

    assert_no_secret("EtcdResolver", &debug);
    assert!(debug.contains("127.0.0.1:2379"), "{debug}");
}

#[cfg(feature = "redis")]
#[test]
fn a_redis_limiter_debug_hides_a_unix_socket_password() {
    let limiter = resilient_http::RedisLimiter::new(
        format!("redis+unix:///run/redis.sock?pass={URL_PASSWORD}"),
        "limit",
    );

    let debug = format!("{limiter:?}");

    assert_no_secret("RedisLimiter", &debug);
    assert!(debug.contains("redis.sock"), "{debug}");
}

// ---------------------------------------------------------------- tracing

#[tokio::test]
async fn tracing_of_a_successful_call_names_the_span_and_url_but_hides_secrets() {
    let (captured, guard) = capture_traces(tracing::Level::TRACE);
    let server = server_answering(200).await;
    let client = secret_builder(&server.uri()).build().unwrap();

    let resp = secret_call(&client).await.unwrap();
    drop(guard);

    let out = captured.text();
    assert!(resp.status().is_success());
    assert!(out.contains("http.client.request"), "{out}");
    assert!(out.contains("url.full"), "{out}");
    assert!(out.contains("page=2"), "{out}");
    assert_no_secret("tracing output", &out);
}

#[tokio::test]
async fn tracing_of_a_call_failing_after_retries_warns_but_hides_secrets() {
    let (captured, guard) = capture_traces(tracing::Level::TRACE);
    let server = MockServer::start().await;
    let replies = Sequence::statuses(&[503]);
    Mock::given(path("/api/orders"))
        .respond_with(replies.clone())
        .mount(&server)
        .await;
    let client = secret_builder(&server.uri()).build().unwrap();

    let err = secret_call(&client).await.unwrap_err();
    drop(guard);

    let out = captured.text();
    assert_eq!(err.attempts(), 3);
    assert_eq!(replies.served(), 3);
    assert!(out.contains("WARN"), "{out}");
    assert!(out.contains("http.client.request"), "{out}");
    assert!(out.contains("url.full"), "{out}");
    assert_no_secret("tracing output", &out);
}

// ---------------------------------------------------------------- proxy credentials and cookies

/// A server whose answers to `/api/orders` set a secret cookie.
async fn server_setting_a_cookie(status: u16) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path("/api/orders"))
        .and(header("proxy-authorization", PROXY_AUTHORIZATION))
        .respond_with(ResponseTemplate::new(status).insert_header("set-cookie", SET_COOKIE))
        .expect(1)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn proxy_authorization_and_set_cookie_are_hidden_from_a_response_and_tracing() {
    let (captured, guard) = capture_traces(tracing::Level::TRACE);
    let server = server_setting_a_cookie(200).await;
    let client = fast_builder(&format!("{}/api/", server.uri()))
        .build()
        .unwrap();
    let request = client
        .get("orders")
        .header("proxy-authorization", PROXY_AUTHORIZATION);
    assert_no_secret("RequestBuilder", &format!("{request:?}"));

    let resp = request.send().await.unwrap();
    drop(guard);

    // The cookie did arrive: there was something to hide.
    assert_eq!(resp.headers()["set-cookie"], SET_COOKIE);
    assert_no_secret("ApiResponse", &format!("{resp:?} {resp:#?}"));
    let out = captured.text();
    assert!(
        out.contains("http.client.request"),
        "nothing captured: {out}"
    );
    assert_no_secret("tracing output", &out);
}

#[tokio::test]
async fn proxy_authorization_and_set_cookie_are_hidden_from_an_error() {
    let (captured, guard) = capture_traces(tracing::Level::TRACE);
    let server = server_setting_a_cookie(500).await;
    let client = fast_builder(&format!("{}/api/", server.uri()))
        .build()
        .unwrap();

    let err = client
        .get("orders")
        .header("proxy-authorization", PROXY_AUTHORIZATION)
        .send()
        .await
        .unwrap_err();
    drop(guard);

    assert_eq!(err.kind(), ErrorKind::Server, "{err}");
    assert!(err.headers().is_some_and(|h| h.contains_key("set-cookie")));
    assert_no_secret("Display", &err.to_string());
    assert_no_secret("Debug", &format!("{err:?} {err:#?}"));
    let out = captured.text();
    assert!(
        out.contains("http.client.request"),
        "nothing captured: {out}"
    );
    assert_no_secret("tracing output", &out);
}
