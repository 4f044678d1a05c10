//! Security defaults: TLS verification, credentials on redirects, redirect limits.

// Helpers outside #[test] fns panic on a failed setup step, like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Without TLS the HTTPS tests are out, and what only they use is unused.
#![cfg_attr(not(feature = "_tls"), allow(unused_imports))]

mod common;

use std::sync::Arc;

use common::{capture_traces, fast_builder, source_chain};
use resilient_http::{ApiClient, ApiClientConfig, ErrorKind, StatusCode};
#[cfg(feature = "_tls")]
use rustls::pki_types::pem::PemObject as _;
#[cfg(feature = "_tls")]
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wiremock::matchers::{header, header_exists, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[cfg(feature = "_tls")]
const CERT: &[u8] = include_bytes!("data/self_signed.crt");
#[cfg(feature = "_tls")]
const KEY: &[u8] = include_bytes!("data/self_signed.key");

#[cfg(feature = "_tls")]
/// An HTTPS server on 127.0.0.1 with a self-signed certificate, answering 200.
async fn self_signed_server() -> String {
    self_signed_server_answering(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_vec(),
    )
    .await
}

#[cfg(feature = "_tls")]
/// An HTTPS server on 127.0.0.1 with a self-signed certificate, answering
/// every request with the bytes `response`.
async fn self_signed_server_answering(response: Vec<u8>) -> String {
    let response = Arc::new(response);
    let certs = vec![CertificateDer::from_pem_slice(CERT).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
    let config = common::tls_server_config(&[])
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        // Bounded: a test makes at most a few connections.
        for _ in 0..16 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, response) = (acceptor.clone(), Arc::clone(&response));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls.write_all(&response).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    url
}

#[cfg(feature = "_tls")]
#[tokio::test]
async fn certificates_are_verified_by_default() {
    let url = self_signed_server().await;
    let client = fast_builder(&url).no_retry().build().unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert!(
        err.is_connect(),
        "a refused certificate is a connect error: {err:?}"
    );
    // It never heals: not retried, not the endpoint's fault (see tests/tls.rs).
    assert_eq!(err.kind(), ErrorKind::Config);
    // The handshake failed because of the certificate, not for any other
    // reason a connection can fail.
    let chain = source_chain(&err);
    assert!(
        chain
            .iter()
            .any(|cause| cause.to_lowercase().contains("certificate")),
        "no certificate error among the causes: {chain:#?}"
    );
}

#[cfg(feature = "_tls")]
#[tokio::test]
async fn danger_accept_invalid_certs_from_a_config_reaches_the_client() {
    let url = self_signed_server().await;
    let mut config = ApiClientConfig::default();
    config.base_url = Some(url);
    config.tls_danger_accept_invalid_certs = Some(true);
    let client = ApiClient::from_config(&config).unwrap();

    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.text().unwrap(), "ok");
}

#[cfg(feature = "_tls")]
#[tokio::test]
async fn a_redirect_from_https_to_http_is_not_followed() {
    let plain = MockServer::start().await;
    Mock::given(path("/landing"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&plain)
        .await;
    let response = format!(
        "HTTP/1.1 302 Found\r\nlocation: {}/landing\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        plain.uri()
    );
    let url = self_signed_server_answering(response.into_bytes()).await;
    let client = fast_builder(&url)
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();

    let err = client.get("start").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Client, "{err:?}");
    assert_eq!(err.status(), Some(StatusCode::FOUND));
}

#[tokio::test]
async fn cookies_are_not_forwarded_to_another_host() {
    let other = MockServer::start().await;
    Mock::given(path("/landing"))
        .and(header_exists("cookie"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&other)
        .await;
    Mock::given(path("/landing"))
        .respond_with(ResponseTemplate::new(200).set_body_string("landed"))
        .expect(1)
        .mount(&other)
        .await;
    let origin = MockServer::start().await;
    Mock::given(path("/start"))
        .and(header("cookie", "session=s3cr3t"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/landing", other.uri())),
        )
        .expect(1)
        .mount(&origin)
        .await;
    let client = fast_builder(&origin.uri()).build().unwrap();

    let resp = client
        .get("start")
        .header("cookie", "session=s3cr3t")
        .send()
        .await
        .unwrap();

    assert_eq!(resp.text().unwrap(), "landed");
}

#[cfg(feature = "_tls")]
#[tokio::test]
async fn accepting_invalid_certificates_is_explicit_and_warns() {
    let (logs, guard) = capture_traces(tracing::Level::WARN);
    let url = self_signed_server().await;
    let client = fast_builder(&url)
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    drop(guard);
    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.text().unwrap(), "ok");
    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("certificate verification is OFF"), "{text}");
}

/// A server that redirects `/start` to `target` (302).
async fn redirecting_to(target: &str) -> MockServer {
    redirecting_with(302, target).await
}

#[tokio::test]
async fn authorization_is_not_forwarded_to_another_host() {
    let other = MockServer::start().await;
    Mock::given(path("/landing"))
        .and(header_exists("authorization"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&other)
        .await;
    Mock::given(path("/landing"))
        .respond_with(ResponseTemplate::new(200).set_body_string("landed"))
        .expect(1)
        .mount(&other)
        .await;
    let origin = redirecting_to(&format!("{}/landing", other.uri())).await;
    let client = fast_builder(&origin.uri())
        .bearer_auth("s3cr3t")
        .build()
        .unwrap();

    let resp = client.get("start").send().await.unwrap();

    assert_eq!(resp.text().unwrap(), "landed");
}

#[tokio::test]
async fn a_client_with_api_key_headers_does_not_follow_a_redirect_to_another_host() {
    let other = MockServer::start().await;
    Mock::given(path("/landing"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&other)
        .await;
    let origin = redirecting_to(&format!("{}/landing", other.uri())).await;
    let client = fast_builder(&origin.uri())
        .default_header("x-api-key", "k3y")
        .build()
        .unwrap();

    let err = client.get("start").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Client);
    assert_eq!(err.status(), Some(StatusCode::FOUND));
}

#[tokio::test]
async fn a_client_with_api_key_headers_follows_a_redirect_on_the_same_host() {
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
    let client: ApiClient = fast_builder(&server.uri())
        .default_header("x-api-key", "k3y")
        .build()
        .unwrap();

    client.get("start").send().await.unwrap();
}

/// A server that answers `/start` with `status`, `location: target`.
async fn redirecting_with(status: u16, target: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path("/start"))
        .respond_with(ResponseTemplate::new(status).insert_header("location", target))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn a_body_is_not_sent_again_to_another_origin_by_a_307_or_308() {
    for status in [307, 308] {
        let other = MockServer::start().await;
        Mock::given(path("/landing"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&other)
            .await;
        let origin = redirecting_with(status, &format!("{}/landing", other.uri())).await;
        let client = fast_builder(&origin.uri()).build().unwrap();

        let err = client
            .post("start")
            .body("client_secret=s3cr3t")
            .send()
            .await
            .unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Client, "{status}");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
    }
}

#[tokio::test]
async fn a_body_follows_a_307_on_the_same_origin_and_a_303_anywhere_as_a_get() {
    let server = MockServer::start().await;
    Mock::given(path("/start"))
        .respond_with(ResponseTemplate::new(307).insert_header("location", "/landing"))
        .mount(&server)
        .await;
    Mock::given(path("/landing"))
        .respond_with(ResponseTemplate::new(200).set_body_string("same"))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri()).build().unwrap();
    let resp = client.post("start").body("x=1").send().await.unwrap();
    assert_eq!(resp.text().unwrap(), "same");
    let body_seen = server.received_requests().await.unwrap()[1].body.clone();
    assert_eq!(body_seen, b"x=1", "a 307 sends the body again");

    let other = MockServer::start().await;
    Mock::given(path("/landing"))
        .respond_with(ResponseTemplate::new(200).set_body_string("other"))
        .mount(&other)
        .await;
    let origin = redirecting_with(303, &format!("{}/landing", other.uri())).await;
    let client = fast_builder(&origin.uri()).build().unwrap();
    let resp = client.post("start").body("x=1").send().await.unwrap();
    assert_eq!(resp.text().unwrap(), "other");
    let landed = &other.received_requests().await.unwrap()[0];
    assert_eq!(landed.method.as_str(), "GET");
    assert!(landed.body.is_empty(), "a 303 drops the body");
}

#[tokio::test]
async fn after_a_303_drops_the_body_a_307_on_the_new_origin_is_followed() {
    // POST a/start -> 303 b/items (now a GET, no body) -> 307 b/items/ : the
    // 307 stays on b's origin, so no body leaves for another one.
    let b = MockServer::start().await;
    Mock::given(path("/items"))
        .respond_with(ResponseTemplate::new(307).insert_header("location", "/items/"))
        .mount(&b)
        .await;
    Mock::given(path("/items/"))
        .respond_with(ResponseTemplate::new(200).set_body_string("items"))
        .mount(&b)
        .await;
    let a = redirecting_with(303, &format!("{}/items", b.uri())).await;
    let client = fast_builder(&a.uri()).build().unwrap();

    let resp = client.post("start").body("x=1").send().await.unwrap();

    assert_eq!(resp.text().unwrap(), "items");
}

/// A server where `/r/n` redirects to `/r/n-1` and `/r/0` answers 200.
async fn redirect_chain() -> MockServer {
    let server = MockServer::start().await;
    for n in 1..=20 {
        Mock::given(path(format!("/r/{n}")))
            .respond_with(
                ResponseTemplate::new(302).insert_header("location", format!("/r/{}", n - 1)),
            )
            .mount(&server)
            .await;
    }
    Mock::given(path("/r/0"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn follows_ten_redirects_by_default_and_no_more() {
    let server = redirect_chain().await;
    let client = fast_builder(&server.uri()).build().unwrap();

    client.get("r/10").send().await.unwrap();
    let err = client.get("r/11").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Client);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn default_credentials_are_not_sent_to_another_origin() {
    let home = MockServer::start().await;
    Mock::given(path("/mine"))
        .and(header_exists("authorization"))
        .and(header_exists("x-api-key"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&home)
        .await;
    let elsewhere = MockServer::start().await;
    Mock::given(path("/theirs"))
        .and(header_exists("authorization"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&elsewhere)
        .await;
    Mock::given(path("/theirs"))
        .and(header_exists("x-api-key"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&elsewhere)
        .await;
    Mock::given(path("/theirs"))
        .and(header_exists("ocp-apim-subscription-key"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&elsewhere)
        .await;
    Mock::given(path("/theirs"))
        .and(header_exists("x-request-source"))
        .respond_with(ResponseTemplate::new(200).set_body_string("clean"))
        .expect(1)
        .mount(&elsewhere)
        .await;
    let client = fast_builder(&home.uri())
        .bearer_auth("s3cr3t")
        .default_header("x-api-key", "k3y")
        .default_header("ocp-apim-subscription-key", "k3y")
        .default_header("x-request-source", "orders")
        .build()
        .unwrap();

    client.get("mine").send().await.unwrap();
    let resp = client
        .get(format!("{}/theirs", elsewhere.uri()))
        .send()
        .await
        .unwrap();

    assert_eq!(
        resp.text().unwrap(),
        "clean",
        "non-secret defaults still go"
    );
}

#[tokio::test]
async fn a_per_call_api_key_is_not_redirected_to_another_host() {
    let other = MockServer::start().await;
    Mock::given(path("/landing"))
        .and(header_exists("x-api-key"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&other)
        .await;
    Mock::given(path("/landing"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&other)
        .await;
    let origin = redirecting_to(&format!("{}/landing", other.uri())).await;
    let client = fast_builder(&origin.uri()).build().unwrap();

    let err = client
        .get("start")
        .header("x-api-key", "k3y")
        .send()
        .await
        .unwrap_err();

    assert_eq!(err.status(), Some(StatusCode::FOUND));
    // Without the credential the same redirect is followed.
    assert!(client.get("start").send().await.is_ok());
}

#[tokio::test]
async fn a_redirect_does_not_send_the_original_url_as_referer() {
    let other = MockServer::start().await;
    Mock::given(path("/landing"))
        .and(header_exists("referer"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&other)
        .await;
    Mock::given(path("/landing"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&other)
        .await;
    let origin = redirecting_to(&format!("{}/landing", other.uri())).await;
    let client = fast_builder(&origin.uri()).build().unwrap();

    client
        .get("start")
        .query(&[("api_key", "s3cr3t")])
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_redirect_to_another_scheme_is_not_followed() {
    let server = redirecting_to("ftp://127.0.0.1/file").await;
    let client = fast_builder(&server.uri()).build().unwrap();

    let err = client.get("start").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Client, "{err:?}");
    assert_eq!(err.status(), Some(StatusCode::FOUND));
}
