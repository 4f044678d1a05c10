//! TLS between services: a private CA, client certificates (mTLS), honest
//! certificate errors, the server-name override and proxies. Every
//! certificate is made here with rcgen; every server and proxy runs on
//! 127.0.0.1.

// Every test here makes TLS calls.
#![cfg(feature = "_tls")]
// Helpers outside #[test] fns panic on a failed setup step, like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::fast_builder;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use resilient_http::{
    ApiClient, ApiClientConfig, CircuitState, ErrorKind, ErrorReason, TlsVersion,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// Certificates

/// A private CA that issues server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, expired: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, "leaf");
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self, names: &[&str]) -> Leaf {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, false)
    }

    fn client(&self) -> Leaf {
        self.issue(
            &["orders-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        )
    }
}

// ---------------------------------------------------------------------------
// A TLS server

/// How the test server treats client certificates and TLS versions.
#[derive(Default)]
struct ServerOptions<'a> {
    /// Require a client certificate issued by this CA.
    client_ca: Option<&'a str>,
    /// Speak TLS 1.2 only (a refused client certificate then fails the handshake).
    tls12_only: bool,
    /// Answer with this JSON body instead of the SNI name.
    json: Option<&'a str>,
}

/// A running HTTPS server on 127.0.0.1 that answers every request with 200
/// and, as its body, the SNI name it was sent (`-` for none), or the
/// [`ServerOptions::json`] it was given.
struct TlsServer {
    addr: SocketAddr,
    /// TCP connections accepted.
    connections: Arc<AtomicUsize>,
}

impl TlsServer {
    async fn start(leaf: &Leaf, options: ServerOptions<'_>) -> Self {
        Self::start_at([127, 0, 0, 1], leaf, options).await
    }

    /// A server on `ip` (any of 127/8 on Linux).
    async fn start_at(ip: [u8; 4], leaf: &Leaf, options: ServerOptions<'_>) -> Self {
        let certs = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
        let builder = if options.tls12_only {
            common::tls_server_config(&[&rustls::version::TLS12])
        } else {
            common::tls_server_config(&[])
        };
        let builder = match options.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(cert.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    common::tls_provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let json: Option<Arc<str>> = options.json.map(Arc::from);
        let listener = TcpListener::bind((std::net::Ipv4Addr::from(ip), 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let json = json.clone();
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).into_fallible().await {
                        Ok(tls) => tls,
                        Err((_, tcp)) => return linger(tcp).await,
                    };
                    let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    // Read the request's body too (an etcd range request has
                    // one): closing with it unread would reset the connection.
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let end = text.find("\r\n\r\n").map_or(0, |i| i + 4);
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while head.len() < end + length {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (kind, body) = match &json {
                        Some(json) => ("application/json", json.to_string()),
                        None => ("text/plain", sni),
                    };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self { addr, connections }
    }

    /// `https://127.0.0.1:<port>/`.
    fn url(&self) -> String {
        format!("https://{}/", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A client builder for `url` that would retry (3 attempts), so that one
/// attempt proves a failure was not retried.
/// After a refused handshake, close as production servers do: stop writing
/// (the alert is out), then read until the client hangs up. Closing with its
/// request unread makes the kernel send a reset, which can discard the alert
/// before the client reads it, and the refusal would look like a dropped
/// connection.
async fn linger(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}

fn builder(url: &str) -> resilient_http::ApiClientBuilder {
    fast_builder(url).no_proxy()
}

/// Asserts the error of a refused certificate: `Config`, connect, one
/// attempt, the breaker still closed, a message naming `why`.
fn assert_certificate_refused(client: &ApiClient, err: &resilient_http::Error, why: &str) {
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert_eq!(err.reason(), ErrorReason::Certificate, "{err:?}");
    assert!(err.is_connect(), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(err.attempts(), 1, "{err}");
    assert_eq!(client.circuit_state(), CircuitState::Closed);
    let text = err.to_string();
    assert!(text.contains(why), "{text}");
}

// ---------------------------------------------------------------------------
// Trust

#[tokio::test]
async fn a_private_ca_trusted_through_the_option_is_accepted() {
    let ca = Ca::new("orders CA");
    let server = TlsServer::start(&ca.server(&["127.0.0.1"]), ServerOptions::default()).await;
    let client = builder(&server.url())
        .tls_root_certificate_pem(ca.pem())
        .build()
        .unwrap();

    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn only_the_roots_given_can_be_trusted() {
    let ca = Ca::new("orders CA");
    let server = TlsServer::start(&ca.server(&["127.0.0.1"]), ServerOptions::default()).await;
    let client = builder(&server.url())
        .tls_root_certificate_pem(ca.pem())
        .tls_built_in_roots(false)
        .tls_min_version(TlsVersion::V1_3)
        .build()
        .unwrap();

    assert_eq!(client.get("x").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_unknown_issuer_is_a_config_error_tried_once_that_spares_the_breaker() {
    let ca = Ca::new("orders CA");
    let server = TlsServer::start(&ca.server(&["127.0.0.1"]), ServerOptions::default()).await;
    let client = builder(&server.url())
        .circuit_breaker(resilient_http::CircuitBreakerConfig::default().consecutive_failures(1))
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_certificate_refused(&client, &err, "unknown issuer");
    assert_eq!(server.connections(), 1);
    // The breaker did not count it: a second call is tried, not refused locally.
    let again = client.get("x").send().await.unwrap_err();
    assert_eq!(again.reason(), ErrorReason::Certificate);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_root_from_another_ca_does_not_vouch_for_the_server() {
    let ca = Ca::new("orders CA");
    let other = Ca::new("another CA");
    let server = TlsServer::start(&ca.server(&["127.0.0.1"]), ServerOptions::default()).await;
    let client = builder(&server.url())
        .tls_root_certificate_pem(other.pem())
        .tls_built_in_roots(false)
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_certificate_refused(&client, &err, "unknown issuer");
}

#[tokio::test]
async fn an_expired_server_certificate_is_a_config_error() {
    let ca = Ca::new("orders CA");
    let leaf = ca.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, true);
    let server = TlsServer::start(&leaf, ServerOptions::default()).await;
    let client = builder(&server.url())
        .tls_root_certificate_pem(ca.pem())
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_certificate_refused(&client, &err, "expired");
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_handshake_cut_short_stays_retryable() {
    // A peer that accepts and closes: not a certificate problem.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(tcp);
        }
    });
    let client = builder(&url).build().unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(err.attempts(), 3, "{err}");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------------------
// Server name

#[tokio::test]
async fn a_name_mismatch_is_a_config_error() {
    let ca = Ca::new("orders CA");
    let server = TlsServer::start(&ca.server(&["orders.test"]), ServerOptions::default()).await;
    let client = builder(&server.url())
        .tls_root_certificate_pem(ca.pem())
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_certificate_refused(&client, &err, "name mismatch");
}

#[tokio::test]
async fn the_server_name_override_fixes_a_name_mismatch_and_is_sent_as_sni() {
    let ca = Ca::new("orders CA");
    let server = TlsServer::start(&ca.server(&["orders.test"]), ServerOptions::default()).await;
    let client = builder(&server.url())
        .tls_root_certificate_pem(ca.pem())
        .tls_server_name("orders.test")
        .build()
        .unwrap();

    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.text().unwrap(), "orders.test");
    assert_eq!(
        client.base_url().unwrap().as_str(),
        format!("https://orders.test:{}/", server.addr.port())
    );
}

#[cfg(feature = "dns")]
#[tokio::test]
async fn dns_endpoints_keep_the_service_name_for_sni_and_the_certificate() {
    let ca = Ca::new("orders CA");
    let server = TlsServer::start(&ca.server(&["orders.test"]), ServerOptions::default()).await;
    let port = server.addr.port();
    let dns = common::dns::DnsServer::start(60).await;
    dns.set_a("orders.test", &[std::net::Ipv4Addr::LOCALHOST]);
    let config: ApiClientConfig = toml::from_str(&format!(
        "[dns]\nname = \"orders.test\"\nport = {port}\nnameserver = \"{}\"\nhttps = true\n",
        dns.addr
    ))
    .unwrap();
    let client = resilient_http::ApiClientBuilder::from_config(&config)
        .tls_root_certificate_pem(ca.pem())
        .no_proxy()
        .build()
        .unwrap();

    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.text().unwrap(), "orders.test", "the SNI sent");
    let endpoints = client.endpoints();
    assert_eq!(
        endpoints[0].url.as_str(),
        format!("https://orders.test:{port}/")
    );
    assert_eq!(endpoints[0].address, Some(server.addr));
}

#[tokio::test]
async fn a_server_name_override_that_cannot_be_honoured_is_refused_at_build() {
    let named = ApiClient::builder()
        .base_url("https://orders.internal/")
        .tls_server_name("orders.internal")
        .build()
        .unwrap_err();
    let mixed = ApiClient::builder()
        .endpoints(["https://10.0.0.1/", "https://orders.internal/"])
        .tls_server_name("orders.internal")
        .build()
        .unwrap_err();
    let nothing = ApiClient::builder()
        .tls_server_name("orders.internal")
        .build()
        .unwrap_err();

    assert_eq!(named.kind(), ErrorKind::Config);
    assert_eq!(mixed.kind(), ErrorKind::Config);
    assert_eq!(nothing.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn endpoints_at_different_addresses_share_the_server_name() {
    let ca = Ca::new("orders CA");
    let leaf = ca.server(&["orders.test"]);
    let a = TlsServer::start(&leaf, ServerOptions::default()).await;
    let b = TlsServer::start_at([127, 0, 0, 2], &leaf, ServerOptions::default()).await;
    let urls = [a.url(), b.url()];
    let resolved = urls.clone();
    let given = ApiClient::builder().endpoints(urls);
    let from_a_resolver = ApiClient::builder().resolver(move || {
        let list: Vec<resilient_http::Endpoint> = resolved.iter().map(Into::into).collect();
        async move { Ok::<_, resilient_http::ResolveError>(list) }
    });

    for builder in [given, from_a_resolver] {
        let client = builder
            .load_balance(resilient_http::LoadBalance::RoundRobin)
            .tls_root_certificate_pem(ca.pem())
            .tls_server_name("orders.test")
            .no_proxy()
            .build()
            .unwrap();
        for _ in 0..2 {
            let resp = client.get("x").send().await.unwrap();
            assert_eq!(resp.text().unwrap(), "orders.test", "the SNI sent");
        }
        let mut seen: Vec<_> = client
            .endpoints()
            .iter()
            .map(|e| (e.url.host_str().unwrap().to_owned(), e.address))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("orders.test".to_owned(), Some(a.addr)),
                ("orders.test".to_owned(), Some(b.addr)),
            ]
        );
    }
    assert_eq!((a.connections(), b.connections()), (2, 2));
}

// ---------------------------------------------------------------------------
// Client certificates

#[tokio::test]
async fn a_client_certificate_is_presented_when_the_server_requires_one() {
    let ca = Ca::new("orders CA");
    let ca_pem = ca.pem();
    let options = ServerOptions {
        client_ca: Some(&ca_pem),
        ..ServerOptions::default()
    };
    let server = TlsServer::start(&ca.server(&["127.0.0.1"]), options).await;
    let id = ca.client();
    let client = builder(&server.url())
        .tls_root_certificate_pem(&ca_pem)
        .tls_identity_pem(&id.cert, &id.key)
        .build()
        .unwrap();

    assert_eq!(client.get("x").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_missing_client_certificate_refused_after_the_tls13_handshake_is_a_config_error() {
    // In TLS 1.3 the client finishes its handshake first and writes the
    // request; the server's refusal arrives as an alert in its place.
    let ca = Ca::new("orders CA");
    let ca_pem = ca.pem();
    let options = ServerOptions {
        client_ca: Some(&ca_pem),
        ..ServerOptions::default()
    };
    let server = TlsServer::start(&ca.server(&["127.0.0.1"]), options).await;
    let client = builder(&server.url())
        .tls_root_certificate_pem(&ca_pem)
        .build()
        .unwrap();

    let err = client.post("x").body("order").send().await.unwrap_err();

    assert_certificate_refused(&client, &err, "refused the client certificate");
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_missing_client_certificate_refused_in_a_tls12_handshake_is_a_config_error() {
    let ca = Ca::new("orders CA");
    let ca_pem = ca.pem();
    let options = ServerOptions {
        client_ca: Some(&ca_pem),
        tls12_only: true,
        ..ServerOptions::default()
    };
    let server = TlsServer::start(&ca.server(&["127.0.0.1"]), options).await;
    let client = builder(&server.url())
        .tls_root_certificate_pem(&ca_pem)
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_certificate_refused(&client, &err, "refused the client certificate");
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_as_a_config_error() {
    let ca = Ca::new("orders CA");
    let ca_pem = ca.pem();
    let options = ServerOptions {
        client_ca: Some(&ca_pem),
        ..ServerOptions::default()
    };
    let server = TlsServer::start(&ca.server(&["127.0.0.1"]), options).await;
    let stranger = Ca::new("another CA").client();
    let client = builder(&server.url())
        .tls_root_certificate_pem(&ca_pem)
        .tls_identity_pem(&stranger.cert, &stranger.key)
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_certificate_refused(&client, &err, "refused the client certificate");
}

#[tokio::test]
async fn the_private_key_never_shows_in_debug() {
    let id = Ca::new("orders CA").client();
    let builder = ApiClient::builder().tls_identity_pem(&id.cert, &id.key);

    let debug = format!("{builder:?}");

    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    assert!(!debug.contains(id.key.lines().nth(1).unwrap()), "{debug}");
}

// ---------------------------------------------------------------------------
// Invalid input

#[tokio::test]
async fn invalid_pem_and_impossible_trust_are_config_errors_from_build() {
    let id = Ca::new("orders CA").client();
    let cases = [
        ApiClient::builder().tls_root_certificate_pem("not a certificate"),
        ApiClient::builder().tls_root_certificate_pem(&id.key),
        ApiClient::builder().tls_built_in_roots(false),
        ApiClient::builder().tls_identity_pem("garbage", "garbage"),
        ApiClient::builder().tls_identity_pem(&id.cert, "no key here"),
        ApiClient::builder().tls_server_name("not a name!"),
        ApiClient::builder().proxy("socks5://127.0.0.1:1080"),
        ApiClient::builder()
            .proxy("http://127.0.0.1:3128")
            .no_proxy(),
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let err = case.build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "case {i}: {err}");
    }
}

// ---------------------------------------------------------------------------
// Configuration files

/// A temporary directory for this test's files, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("resilient-http-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().replace('\\', "/")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_configuration_file_names_the_pem_files_for_mtls() {
    let ca = Ca::new("orders CA");
    let ca_pem = ca.pem();
    let options = ServerOptions {
        client_ca: Some(&ca_pem),
        ..ServerOptions::default()
    };
    let server = TlsServer::start(&ca.server(&["orders.test"]), options).await;
    let id = ca.client();
    let dir = TempDir::new("mtls-config");
    let text = format!(
        r#"
        base_url = "{url}"
        tls_root_certificate_pem = "{ca}"
        tls_built_in_roots = false
        tls_identity_pem = {{ cert_chain = "{cert}", key = "{key}" }}
        tls_min_version = "1.2"
        tls_server_name = "orders.test"
        no_proxy = true
        "#,
        url = server.url(),
        ca = dir.write("ca.pem", &ca_pem),
        cert = dir.write("client.pem", &id.cert),
        key = dir.write("client.key", &id.key),
    );
    let config: ApiClientConfig = toml::from_str(&text).unwrap();
    let client = ApiClient::from_config(&config).unwrap();

    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.text().unwrap(), "orders.test");
}

#[cfg(feature = "etcd")]
#[tokio::test]
async fn a_configurations_etcd_lookups_use_its_private_ca_and_client_certificate() {
    // An instance registered in an etcd stub (the JSON gateway's range
    // answer) served over TLS by the private CA, asking for a client
    // certificate from it.
    let instance = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_string("instance a"))
        .mount(&instance)
        .await;
    let range = serde_json::json!({"kvs": [{
        "key": common::base64(b"/services/orders/a"),
        "value": common::base64(instance.uri().as_bytes()),
    }]})
    .to_string();
    let ca = Ca::new("orders CA");
    let ca_pem = ca.pem();
    let options = ServerOptions {
        client_ca: Some(&ca_pem),
        json: Some(&range),
        ..ServerOptions::default()
    };
    let etcd = TlsServer::start(&ca.server(&["127.0.0.1"]), options).await;
    let id = ca.client();
    let dir = TempDir::new("etcd-config");
    let text = format!(
        r#"
        etcd = {{ url = "{url}", prefix = "/services/orders/" }}
        tls_root_certificate_pem = "{ca}"
        tls_built_in_roots = false
        tls_identity_pem = {{ cert_chain = "{cert}", key = "{key}" }}
        no_proxy = true
        "#,
        url = etcd.url(),
        ca = dir.write("ca.pem", &ca_pem),
        cert = dir.write("client.pem", &id.cert),
        key = dir.write("client.key", &id.key),
    );
    let config: ApiClientConfig = toml::from_str(&text).unwrap();
    let client = ApiClient::from_config(&config).unwrap();

    let found = client.refresh_endpoints().await;

    assert_eq!(found.unwrap(), 1);
    let resp = client.get("x").send().await.unwrap();
    assert_eq!(resp.text().unwrap(), "instance a");
}

#[test]
fn a_pem_file_that_cannot_be_read_is_a_config_error_naming_the_key() {
    let config: ApiClientConfig =
        toml::from_str(r#"tls_root_certificate_pem = "/nonexistent/ca.pem""#).unwrap();

    let err = ApiClient::from_config(&config).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("tls_root_certificate_pem"),
        "{err}"
    );
}

#[test]
fn a_proxy_password_in_a_configuration_never_shows_in_debug() {
    let config: ApiClientConfig = toml::from_str(
        r#"
        proxy = "http://svc:hunter2@proxy.internal:3128"
        proxy_bypass = ["10.0.0.0/8", ".internal"]
        "#,
    )
    .unwrap();

    let debug = format!("{config:?}");

    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("proxy.internal"), "{debug}");
}

// ---------------------------------------------------------------------------
// Proxies

/// A small CONNECT proxy on 127.0.0.1 that records each request line and
/// tunnels to 127.0.0.1 at the requested port, whatever the host name. With
/// `credentials` it answers 407 to a request without them.
struct ConnectProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    async fn start(credentials: Option<&str>) -> Self {
        use base64::Engine as _;
        let expected = credentials.map(|c| {
            format!(
                "proxy-authorization: basic {}",
                base64::engine::general_purpose::STANDARD.encode(c)
            )
            .to_ascii_lowercase()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let log = log.clone();
                let expected = expected.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1];
                    // Byte by byte: nothing past the head may be swallowed.
                    while !head.ends_with(b"\r\n\r\n") {
                        match inbound.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => head.push(buf[0]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    log.lock().unwrap().push(line.clone());
                    if let Some(expected) = expected
                        && !head.to_ascii_lowercase().contains(&expected)
                    {
                        let _ = inbound
                            .write_all(
                                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                                  proxy-authenticate: Basic realm=\"test\"\r\n\
                                  content-length: 0\r\nconnection: close\r\n\r\n",
                            )
                            .await;
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
                        return;
                    };
                    let port = target.rsplit(':').next().unwrap_or_default();
                    let Ok(mut outbound) = TcpStream::connect(format!("127.0.0.1:{port}")).await
                    else {
                        return;
                    };
                    if inbound
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Self { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A server with a certificate for `orders.test`, and a client builder that
/// calls it by that name (the proxy resolves it to 127.0.0.1).
async fn orders_test_server(ca: &Ca) -> TlsServer {
    TlsServer::start(
        &ca.server(&["orders.test", "127.0.0.1"]),
        ServerOptions::default(),
    )
    .await
}

#[tokio::test]
async fn calls_go_through_the_proxy_in_a_connect_tunnel() {
    let ca = Ca::new("orders CA");
    let server = orders_test_server(&ca).await;
    let proxy = ConnectProxy::start(None).await;
    let client = fast_builder(&format!("https://orders.test:{}/", server.addr.port()))
        .tls_root_certificate_pem(ca.pem())
        .proxy(proxy.url())
        .build()
        .unwrap();

    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.text().unwrap(), "orders.test");
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with(&format!("CONNECT orders.test:{} ", server.addr.port())),
        "{seen:?}"
    );
}

#[tokio::test]
async fn loopback_and_bypassed_names_never_go_through_the_proxy() {
    let ca = Ca::new("orders CA");
    let server = orders_test_server(&ca).await;
    let proxy = ConnectProxy::start(None).await;
    let loopback = fast_builder(&server.url())
        .tls_root_certificate_pem(ca.pem())
        .proxy(proxy.url())
        .build()
        .unwrap();
    // orders.test reached directly: by the server-name override's address.
    let bypassed = fast_builder(&server.url())
        .tls_root_certificate_pem(ca.pem())
        .tls_server_name("orders.test")
        .proxy(proxy.url())
        .proxy_bypass([".test"])
        .build()
        .unwrap();

    assert_eq!(loopback.get("x").send().await.unwrap().status(), 200);
    assert_eq!(bypassed.get("x").send().await.unwrap().status(), 200);

    assert_eq!(proxy.seen(), Vec::<String>::new());
}

#[tokio::test]
async fn a_server_name_pinned_to_a_loopback_address_is_not_proxied() {
    // https://127.0.0.1 called as orders.test: still loopback, so direct
    // (through the proxy, the proxy would resolve the name itself).
    let ca = Ca::new("orders CA");
    let server = orders_test_server(&ca).await;
    let proxy = ConnectProxy::start(None).await;
    let client = fast_builder(&server.url())
        .tls_root_certificate_pem(ca.pem())
        .tls_server_name("orders.test")
        .proxy(proxy.url())
        .build()
        .unwrap();

    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.text().unwrap(), "orders.test");
    assert_eq!(proxy.seen(), Vec::<String>::new());
}

#[tokio::test]
async fn proxy_credentials_are_sent_to_the_proxy_and_never_shown() {
    let ca = Ca::new("orders CA");
    let server = orders_test_server(&ca).await;
    let proxy = ConnectProxy::start(Some("svc:hunter2")).await;
    let url = format!("https://orders.test:{}/", server.addr.port());
    let good = fast_builder(&url)
        .tls_root_certificate_pem(ca.pem())
        .proxy(format!("http://svc:hunter2@{}", proxy.addr));
    let bad = fast_builder(&url)
        .no_retry()
        .tls_root_certificate_pem(ca.pem())
        .proxy(format!("http://svc:wrong-hunter2@{}", proxy.addr));
    let builder_debug = format!("{good:?} {bad:?}");
    let good = good.build().unwrap();
    let bad = bad.build().unwrap();

    let resp = good.get("x").send().await.unwrap();
    let err = bad.get("x").send().await.unwrap_err();

    assert_eq!(resp.status(), 200);
    assert_eq!(proxy.seen().len(), 2);
    for text in [
        builder_debug,
        format!("{good:?}"),
        format!("{bad:?}"),
        err.to_string(),
        format!("{err:?}"),
    ] {
        assert!(!text.contains("hunter2"), "{text}");
        // Nor its Basic encoding ("svc:wrong-hunter2", "svc:hunter2").
        assert!(!text.contains("c3ZjOn"), "{text}");
    }
}

/// Set in the child process of `the_environments_proxy_is_used_but_never_for_loopback`.
const CHILD: &str = "RESILIENT_HTTP_TEST_ENV_PROXY_CHILD";

#[tokio::test]
async fn the_environments_proxy_is_used_but_never_for_loopback() {
    // The environment is the process's: the calls run in a child process
    // (this test binary, running only `environment_proxy_child`).
    let ca = Ca::new("orders CA");
    let server = orders_test_server(&ca).await;
    let proxy = ConnectProxy::start(None).await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    // The child test is ignored (it cannot pass without this setup): only
    // `--ignored` runs it.
    child.args([
        "--ignored",
        "--exact",
        "environment_proxy_child",
        "--test-threads=1",
    ]);
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        child.env_remove(name);
    }
    child
        .env("HTTPS_PROXY", proxy.url())
        .env(CHILD, format!("{}\n{}", server.addr.port(), ca.pem()));

    // Its output is captured: its own "test result" line would read as ours.
    let out = tokio::task::spawn_blocking(move || child.output())
        .await
        .unwrap()
        .unwrap();

    assert!(
        out.status.success(),
        "the child's calls failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It ran, and only it: a filter that matched nothing would succeed too.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("test environment_proxy_child ... ok")
            && stdout.contains("test result: ok. 1 passed;"),
        "the child test did not run: {stdout}"
    );
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "only the call by name is proxied: {seen:?}");
    assert!(seen[0].starts_with("CONNECT orders.test:"), "{seen:?}");
}

/// The child of `the_environments_proxy_is_used_but_never_for_loopback`,
/// which runs it in a process of its own with the environment it needs;
/// run on its own, it fails.
#[tokio::test]
#[ignore = "run by the_environments_proxy_is_used_but_never_for_loopback, in a child process with the proxy environment"]
async fn environment_proxy_child() {
    let setup = std::env::var(CHILD).unwrap_or_else(|_| {
        panic!(
            "{CHILD} is not set: run the_environments_proxy_is_used_but_never_for_loopback instead"
        )
    });
    let (port, ca) = setup.split_once('\n').unwrap();
    let by_name = format!("https://orders.test:{port}/");
    let by_address = format!("https://127.0.0.1:{port}/");
    // Through HTTPS_PROXY: the proxy resolves orders.test.
    let proxied = fast_builder(&by_name)
        .tls_root_certificate_pem(ca)
        .build()
        .unwrap();
    // Loopback: direct, whatever the environment says.
    let loopback = fast_builder(&by_address)
        .tls_root_certificate_pem(ca)
        .build()
        .unwrap();
    // no_proxy(): direct (orders.test mapped to 127.0.0.1 by the override).
    let direct = fast_builder(&by_address)
        .tls_root_certificate_pem(ca)
        .tls_server_name("orders.test")
        .no_proxy()
        .build()
        .unwrap();

    for client in [proxied, loopback, direct] {
        assert_eq!(client.get("x").send().await.unwrap().status(), 200);
    }
}

#[test]
fn the_tls_and_proxy_keys_are_written_back_as_they_were_read() {
    let text = r#"
        tls_root_certificate_pem = "/etc/pki/ca.pem"
        tls_built_in_roots = false
        tls_identity_pem = { cert_chain = "/run/secrets/c.pem", key = "/run/secrets/c.key" }
        tls_min_version = "1.3"
        tls_server_name = "orders.internal"
        proxy = "http://proxy.internal:3128"
        proxy_bypass = ["10.0.0.0/8", ".internal"]
        no_proxy = false
    "#;
    let config: ApiClientConfig = toml::from_str(text).unwrap();

    let again: ApiClientConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();

    assert_eq!(again, config);
    assert_eq!(config.tls_min_version, Some(TlsVersion::V1_3));
    assert!(toml::from_str::<ApiClientConfig>(r#"tls_min_version = "1.1""#).is_err());
    assert!(
        toml::from_str::<ApiClientConfig>(r#"tls_identity_pem = { cert = "c.pem", key = "k" }"#)
            .is_err()
    );
}
