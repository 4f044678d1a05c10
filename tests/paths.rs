//! Request paths: text from outside cannot change which URL is called.
//!
//! Each row of issue 14's table (`client.delete(format!("orders/{id}"))` with
//! a hostile `id`) is either refused with a `Config` error before anything is
//! sent, or reaches exactly the safely encoded URL through `Segments`; the same
//! holds for endpoint clients; `allow_path_escape` restores the plain join.
//! Property tests: no input to `Segments` changes the origin or climbs above
//! the base, and a plain relative path is joined exactly as `Url::join` does.

// Helpers outside #[test] fns panic on a failed setup step, like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Debug;

use common::{fast_builder, received};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use resilient_http::{ApiClient, ApiClientConfig, Error, ErrorKind, Method, Segments, Token, Url};
use wiremock::matchers::{any as any_request, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A server answering 200 to anything, and a client with base `<server>/v1/`.
async fn setup() -> (MockServer, ApiClient) {
    let server = MockServer::start().await;
    Mock::given(any_request())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let client = fast_builder(&format!("{}/v1/", server.uri()))
        .build()
        .unwrap();
    (server, client)
}

/// A client for `server` with one endpoint, `<server>/v1/`.
fn endpoint_client(server: &MockServer) -> ApiClient {
    ApiClient::builder()
        .endpoints([format!("{}/v1/", server.uri())])
        .build()
        .unwrap()
}

/// The path and query of every request the server received, in order.
async fn targets(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| match r.url.query() {
            Some(q) => format!("{}?{q}", r.url.path()),
            None => r.url.path().to_owned(),
        })
        .collect()
}

/// Asserts a refusal: `Config`, no attempt, and nothing reached the server.
async fn assert_refused(result: Result<resilient_http::ApiResponse, Error>, server: &MockServer) {
    let err = result.expect_err("the path must be refused");
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert_eq!(err.attempts(), 0, "{err:?}");
    assert_eq!(received(server).await, 0, "nothing may be sent");
}

// ---------------------------------------------------------------------------
// The table: raw paths with untrusted text
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_dot_dot_id_is_refused_instead_of_deleting_the_parent() {
    let (server, client) = setup().await;
    let id = "../admin";

    let result = client.delete(format!("orders/{id}")).send().await;

    assert_refused(result, &server).await;
}

#[tokio::test]
async fn percent_encoded_dots_are_refused_like_dots() {
    let (server, client) = setup().await;

    for id in [
        "%2e%2e/%2e%2e/admin",
        "%2E%2E/admin",
        ".%2e/admin",
        "%2e./admin",
        "%2e",
    ] {
        let result = client.delete(format!("orders/{id}")).send().await;
        assert_refused(result, &server).await;
    }
}

#[tokio::test]
async fn a_question_mark_in_a_raw_path_starts_the_query_and_segments_encode_it() {
    let (server, client) = setup().await;
    let id = "a?admin=true";

    // A raw path may carry a query: that is documented and kept.
    client.get("orders?page=2").send().await.unwrap();
    // Untrusted text goes through Segments: one segment, no query.
    client
        .delete(Segments::new(["orders", id]))
        .send()
        .await
        .unwrap();

    assert_eq!(
        targets(&server).await,
        ["/v1/orders?page=2", "/v1/orders/a%3Fadmin%3Dtrue"]
    );
}

#[tokio::test]
async fn a_hash_is_refused_instead_of_dropping_the_rest() {
    let (server, client) = setup().await;

    for path in ["orders/a#b", "orders/a?x=1#b", "#"] {
        let result = client.delete(path).send().await;
        assert_refused(result, &server).await;
    }
}

#[tokio::test]
async fn control_characters_and_outer_spaces_are_refused_instead_of_dropped() {
    let (server, client) = setup().await;

    for id in ["a\tb", "a\nb", "a\r\nb", "a\0", "a\u{7f}", "a "] {
        let result = client.delete(format!("orders/{id}")).send().await;
        assert_refused(result, &server).await;
    }
    let result = client.get(" //127.0.0.1:1/").send().await;
    assert_refused(result, &server).await;
}

#[tokio::test]
async fn a_dot_dot_or_dot_id_is_refused_instead_of_calling_the_collection() {
    let (server, client) = setup().await;

    for id in ["..", "."] {
        let result = client.delete(format!("orders/{id}")).send().await;
        assert_refused(result, &server).await;
    }
    for id in ["", ".", ".."] {
        let result = client.delete(Segments::new(["orders", id])).send().await;
        assert_refused(result, &server).await;
    }
}

#[tokio::test]
async fn a_scheme_relative_path_is_refused_instead_of_calling_another_origin() {
    let (server, client) = setup().await;
    let other = MockServer::start().await;
    let host = other.address().to_string();

    for path in [
        format!("//{host}/admin"),
        format!("\\\\{host}/admin"),
        format!("/\\{host}/admin"),
        format!("http:\\\\{host}/admin"),
        format!("http:{host}"),
    ] {
        let result = client.get(&path).send().await;
        assert_refused(result, &server).await;
    }
    assert_eq!(received(&other).await, 0);
}

#[tokio::test]
async fn backslashes_are_refused_since_the_parser_reads_them_as_slashes() {
    let (server, client) = setup().await;

    let result = client.get("orders\\..\\admin").send().await;

    assert_refused(result, &server).await;
}

#[tokio::test]
async fn refusals_name_the_rule_not_the_path() {
    let (_server, client) = setup().await;

    for path in ["../s3cr3t", "//s3cr3t/", "a#s3cr3t", "s3cr3t\t", "s3cr3t:x"] {
        let err = client.get(path).send().await.unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        assert!(!format!("{err:?}").contains("s3cr3t"), "{err:?}");
    }
}

#[tokio::test]
async fn explicit_choices_stay_allowed() {
    let (server, client) = setup().await;
    let uri = server.uri();

    client.get("orders/42").send().await.unwrap();
    client.get("/health").send().await.unwrap();
    client.get(format!("{uri}/other/x")).send().await.unwrap();
    client.get("./users:search").send().await.unwrap();
    client.get("orders/a%2Fb").send().await.unwrap();
    client.get("").send().await.unwrap();

    assert_eq!(
        targets(&server).await,
        [
            "/v1/orders/42",
            "/health",
            "/other/x",
            "/v1/users:search",
            "/v1/orders/a%2Fb",
            "/v1/",
        ]
    );
}

// ---------------------------------------------------------------------------
// Segments
// ---------------------------------------------------------------------------

#[tokio::test]
async fn segments_with_hostile_text_reach_exactly_the_encoded_path() {
    let (server, client) = setup().await;
    let cases = [
        ("../admin", "/v1/orders/..%2Fadmin"),
        ("..%2F..%2Fadmin", "/v1/orders/..%252F..%252Fadmin"),
        ("a/b", "/v1/orders/a%2Fb"),
        ("a?x=1", "/v1/orders/a%3Fx%3D1"),
        ("a#b", "/v1/orders/a%23b"),
        ("%2e%2e", "/v1/orders/%252e%252e"),
        ("a\\b", "/v1/orders/a%5Cb"),
        ("a\tb\n", "/v1/orders/a%09b%0A"),
        (" a ", "/v1/orders/%20a%20"),
        ("日本🦀", "/v1/orders/%E6%97%A5%E6%9C%AC%F0%9F%A6%80"),
        ("//evil", "/v1/orders/%2F%2Fevil"),
        ("...", "/v1/orders/..."),
        ("A-z_0.9~", "/v1/orders/A-z_0.9~"),
    ];

    for (id, _) in cases {
        client
            .delete(Segments::new(["orders", id]))
            .send()
            .await
            .unwrap();
    }

    let want: Vec<&str> = cases.iter().map(|(_, path)| *path).collect();
    assert_eq!(targets(&server).await, want);
}

#[tokio::test]
async fn empty_dot_and_dot_dot_segments_fail_at_send_with_nothing_sent() {
    let (server, client) = setup().await;

    for parts in [
        vec![""],
        vec!["orders", ""],
        vec![".", "x"],
        vec!["a", ".."],
    ] {
        let segments = Segments::new(&parts);
        assert!(!segments.is_valid());
        let result = client.get(segments).send().await;
        assert_refused(result, &server).await;
    }
}

#[tokio::test]
async fn segments_work_with_queries_typed_helpers_and_any_method() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/users/a%20b"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"ok": true})))
        .expect(2)
        .mount(&server)
        .await;
    let client = fast_builder(&format!("{}/v1/", server.uri()))
        .build()
        .unwrap();
    let user = Segments::new(["users", "a b"]);

    let body: serde_json::Value = client.get_json(&user).await.unwrap();
    client
        .request(Method::GET, user.clone())
        .query(&[("page", "2")])
        .send()
        .await
        .unwrap();

    assert_eq!(body["ok"], true);
    assert_eq!(
        targets(&server).await,
        ["/v1/users/a%20b", "/v1/users/a%20b?page=2"]
    );
}

// ---------------------------------------------------------------------------
// Endpoint clients
// ---------------------------------------------------------------------------

#[tokio::test]
async fn endpoint_clients_refuse_escapes_and_send_segments_encoded() {
    let (server, _) = setup().await;
    let client = endpoint_client(&server);
    let other = MockServer::start().await;

    for path in [
        "orders/../../admin".to_owned(),
        "%2e%2e/admin".to_owned(),
        "orders/a#b".to_owned(),
        "orders/a\tb".to_owned(),
        format!("//{}/admin", other.address()),
    ] {
        let result = client.delete(&path).send().await;
        assert_refused(result, &server).await;
    }
    client
        .delete(Segments::new(["orders", "../admin"]))
        .send()
        .await
        .unwrap();
    client.get("/health").send().await.unwrap();
    let result = client.get(Segments::new(["orders", ".."])).send().await;

    let err = result.unwrap_err();
    assert_eq!((err.kind(), err.attempts()), (ErrorKind::Config, 0));
    assert_eq!(targets(&server).await, ["/v1/orders/..%2Fadmin", "/health"]);
    assert_eq!(received(&other).await, 0);
}

#[tokio::test]
async fn endpoint_clients_escape_only_when_asked() {
    let (server, _) = setup().await;
    let client = endpoint_client(&server);
    let opted = ApiClient::builder()
        .endpoints([format!("{}/v1/", server.uri())])
        .allow_path_escape(true)
        .build()
        .unwrap();

    client
        .get("../admin")
        .allow_path_escape(true)
        .send()
        .await
        .unwrap();
    opted.get("x/../../root").send().await.unwrap();
    let refused = opted
        .get("../admin")
        .allow_path_escape(false)
        .send()
        .await
        .unwrap_err();

    assert_eq!((refused.kind(), refused.attempts()), (ErrorKind::Config, 0));
    assert_eq!(targets(&server).await, ["/admin", "/root"]);
}

#[tokio::test]
async fn an_escaped_path_never_takes_an_endpoint_clients_credentials_to_another_origin() {
    let (server, _) = setup().await;
    let other = MockServer::start().await;
    Mock::given(any_request())
        .respond_with(ResponseTemplate::new(200))
        .mount(&other)
        .await;
    let builder = || {
        ApiClient::builder()
            .endpoints([format!("{}/v1/", server.uri())])
            .token_provider(|| async { Ok(Token::new("t0ken")) })
            .default_header("x-api-key", "k3y")
    };
    let client = builder().build().unwrap();
    let opted = builder().allow_path_escape(true).build().unwrap();
    let port = other.address().port();

    let per_request = client
        .get(format!("//127.0.0.1:{port}/x"))
        .allow_path_escape(true)
        .send()
        .await;
    assert_refused(per_request, &other).await;
    for path in [
        format!("//127.0.0.1:{port}/x"),
        format!("https:127.0.0.1:{port}/x"),
    ] {
        assert_refused(opted.get(&path).send().await, &other).await;
    }
    // Within the endpoint's origin an escape still goes, credentials and all.
    opted.get("../v2/users").send().await.unwrap();

    assert_eq!(
        received(&other).await,
        0,
        "nothing may reach the other host"
    );
    let seen = server.received_requests().await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].url.path(), "/v2/users");
    assert!(seen[0].headers.contains_key("authorization"));
    assert!(seen[0].headers.contains_key("x-api-key"));
}

// ---------------------------------------------------------------------------
// Opting out
// ---------------------------------------------------------------------------

#[tokio::test]
async fn allow_path_escape_restores_the_plain_join() {
    let (server, _) = setup().await;
    let other = MockServer::start().await;
    let base = format!("{}/v1/", server.uri());
    let client = fast_builder(&base).allow_path_escape(true).build().unwrap();

    client.delete("orders/../admin").send().await.unwrap();
    client.delete("%2e%2e/%2e%2e/admin").send().await.unwrap();
    client.get("orders/.").send().await.unwrap();
    client
        .get(format!("//{}/elsewhere", other.address()))
        .send()
        .await
        .unwrap_err(); // `other` has no mock: 404

    assert_eq!(
        targets(&server).await,
        ["/v1/admin", "/admin", "/v1/orders/"]
    );
    assert_eq!(targets(&other).await, ["/elsewhere"]);
    // Silent changes stay refused: they are not escapes.
    let err = client.get("a#b").send().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = client.get("a\tb").send().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn allow_path_escape_works_per_request_both_ways() {
    let (server, client) = setup().await;
    let opted = fast_builder(&format!("{}/v1/", server.uri()))
        .allow_path_escape(true)
        .build()
        .unwrap();

    client
        .get("../v2/users")
        .header("x-kept", "1")
        .allow_path_escape(true)
        .send()
        .await
        .unwrap();
    let err = opted
        .get("../v2/users")
        .allow_path_escape(false)
        .send()
        .await
        .unwrap_err();

    assert_eq!((err.kind(), err.attempts()), (ErrorKind::Config, 0));
    let seen = server.received_requests().await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].url.path(), "/v2/users");
    assert!(seen[0].headers.contains_key("x-kept"));
}

#[tokio::test]
async fn allow_path_escape_is_a_configuration_key() {
    let (server, _) = setup().await;
    let mut config: ApiClientConfig = toml::from_str("allow_path_escape = true").unwrap();
    config.base_url = Some(format!("{}/v1/", server.uri()));
    let client = ApiClient::from_config(&config).unwrap();

    client.get("../admin").send().await.unwrap();

    assert_eq!(targets(&server).await, ["/admin"]);
    let default: ApiClientConfig = toml::from_str("").unwrap();
    assert_eq!(default.allow_path_escape, None);
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// Cases of a property whose every case is an HTTP exchange.
const HTTP_CASES: u32 = 64;
/// Cases of a property that does no I/O.
const LOCAL_CASES: u32 = 2048;

/// Runs `test` on `cases` inputs from `strategy`; panics with the smallest
/// failing input. Nothing is written to disk.
fn check<S>(cases: u32, strategy: &S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(failure) = runner.run(strategy, test) {
        panic!("{failure}");
    }
}

/// One segment of untrusted text: fragments that trip URL parsers, and
/// arbitrary text.
fn segment() -> impl Strategy<Value = String> {
    let fragments = prop::sample::select(vec![
        "", ".", "..", "...", "/", "//", "\\", "%", "%2e", "%2E%2e", "%2f", "%00", "?", "#",
        "?q=1", "#f", " ", "\t", "\n", "\r\n", "\0", "\u{7f}", "@", ":", "http:", "http://",
        "//h/", "[::1]", ";", "~", "é", "日本", "🦀", "\u{202e}", "\u{feff}", "a", "users",
    ]);
    prop_oneof![
        4 => prop::collection::vec(fragments, 1..4).prop_map(|parts| parts.concat()),
        1 => "\\PC{0,8}",
        1 => any::<String>(),
    ]
}

/// Decodes `%XX` escapes (the encoder's inverse); `None` for a bad escape.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn is_dot_segment(s: &str) -> bool {
    matches!(s, "" | "." | "..")
}

#[test]
fn no_segments_change_the_origin_or_climb_above_the_base() {
    let base = Url::parse("http://127.0.0.1:8080/api/v1/").unwrap();
    let strategy = prop::collection::vec(segment(), 0..5);

    check(LOCAL_CASES, &strategy, |parts| {
        let segments = Segments::new(&parts);
        let valid = !parts.iter().any(|p| is_dot_segment(p));
        prop_assert_eq!(segments.is_valid(), valid);
        if !valid {
            // The marker is never a path the URL parser would accept as is.
            prop_assert!(segments.as_str().starts_with('\0'));
            return Ok(());
        }
        let encoded = segments.as_str();
        prop_assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%/".contains(&b)),
            "{}",
            encoded
        );
        let url = base.join(encoded).unwrap();
        prop_assert_eq!(url.origin(), base.origin());
        prop_assert!(url.path().starts_with(base.path()), "{}", url);
        prop_assert_eq!(url.query(), None);
        prop_assert_eq!(url.fragment(), None);
        // Each segment comes back whole: nothing split, merged or dropped.
        let tail = &url.path()[base.path().len()..];
        let decoded: Vec<String> = if parts.is_empty() {
            Vec::new()
        } else {
            tail.split('/')
                .map(|s| percent_decode(s).unwrap())
                .collect()
        };
        prop_assert_eq!(decoded, parts);
        Ok(())
    });
}

#[test]
fn segments_reach_the_server_under_the_base_through_either_kind_of_client() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (server, base_client) = rt.block_on(setup());
    let routed = endpoint_client(&server);
    let strategy = (prop::collection::vec(segment(), 0..4), any::<bool>());

    check(HTTP_CASES, &strategy, |(parts, use_endpoints)| {
        let client = if use_endpoints { &routed } else { &base_client };
        let segments = Segments::new(&parts);
        let before = rt.block_on(received(&server));
        let result = rt.block_on(client.get(&segments).send());
        let seen = rt.block_on(targets(&server));
        if !segments.is_valid() {
            let err = result.unwrap_err();
            prop_assert_eq!((err.kind(), err.attempts()), (ErrorKind::Config, 0));
            prop_assert_eq!(seen.len(), before);
            return Ok(());
        }
        prop_assert!(result.is_ok(), "{:?}", result);
        prop_assert_eq!(seen.len(), before + 1);
        prop_assert_eq!(&seen[before], &format!("/v1/{}", segments.as_str()));
        Ok(())
    });
}

/// Plain relative paths: segments without `/ \ # ? :`, controls or dot
/// segments, the first one not empty, with an optional query.
fn plain_paths() -> impl Strategy<Value = String> {
    let chars = prop_oneof![
        4 => "[a-zA-Z0-9._~!$&'()*+,;=@ -]{1,6}",
        1 => prop::sample::select(vec!["%2F", "%20", "%zz", "%", "é", "日本", "%2e%2e%2e", "a..b"])
            .prop_map(str::to_owned),
        1 => "[^/\\\\#?:\\x00-\\x1f\\x7f]{1,4}",
    ];
    let segment = chars.prop_filter("not a dot segment", |s| {
        let d = s.replace("%2e", ".").replace("%2E", ".");
        d != "." && d != ".."
    });
    let query = prop_oneof![
        Just(String::new()),
        "[a-z0-9=&.%/ ]{0,8}".prop_map(|q| format!("?{q}")),
    ];
    (prop::collection::vec(segment, 1..4), query)
        .prop_map(|(segments, query)| format!("{}{query}", segments.join("/")))
        .prop_filter("no outer spaces", |p| {
            !p.starts_with(' ') && !p.ends_with(' ')
        })
}

#[test]
fn plain_relative_paths_join_exactly_as_url_join() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (server, client) = rt.block_on(setup());
    let base = client.base_url().unwrap().clone();

    check(HTTP_CASES, &plain_paths(), |path| {
        let want = base.join(&path).unwrap();
        let result = rt.block_on(client.get(&path).send());
        prop_assert!(result.is_ok(), "{:?}: {:?}", path, result);
        let seen = rt.block_on(targets(&server));
        let want = match want.query() {
            Some(q) => format!("{}?{q}", want.path()),
            None => want.path().to_owned(),
        };
        prop_assert_eq!(seen.last().unwrap(), &want);
        Ok(())
    });
}
