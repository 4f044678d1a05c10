//! Mutual TLS with an internal CA: the client trusts only the company's CA and
//! proves who it is with its own certificate.
//!
//! Run with `cargo run --example mtls`. It makes its own CA, server and client
//! certificates (rcgen) and starts an HTTPS server on 127.0.0.1 that requires
//! a client certificate, so it needs no network. It exits non-zero when an
//! outcome is not the expected one.

#![allow(clippy::print_stdout)] // an example prints what it does

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use resilient_http::{ApiClient, ErrorKind, ErrorReason, TlsVersion};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// One thread: a TLS 1.3 refusal of the client's certificate is then always
// read with the request it refuses (see `ErrorReason::Certificate` for the
// race a multi-thread runtime can lose).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // 1. The internal PKI: a CA, a server certificate, a client certificate.
    //    In production these are files: the CA from your PKI, the client's
    //    certificate and key from its secret store.
    let ca = internal_ca()?;
    let (server_cert, server_key) =
        issue(&ca, "orders.internal", ExtendedKeyUsagePurpose::ServerAuth)?;
    let (client_cert, client_key) =
        issue(&ca, "billing-service", ExtendedKeyUsagePurpose::ClientAuth)?;

    // 2. The orders service, on 127.0.0.1, requiring a client certificate.
    let port = serve(&ca.pem(), &server_cert, &server_key).await?;
    // Called by address; the certificate names the service.
    let url = format!("https://127.0.0.1:{port}/api/");

    // 3. The client: trusts only the internal CA, presents its certificate.
    let client = ApiClient::builder()
        .base_url(&url)
        .tls_root_certificate_pem(ca.pem())
        .tls_built_in_roots(false)
        .tls_identity_pem(&client_cert, &client_key)
        .tls_min_version(TlsVersion::V1_3)
        .tls_server_name("orders.internal")
        .build()?;
    let body = client.get("orders/7").send().await?.text()?;
    println!("with the client certificate: {body}");
    expect(
        body.contains("billing-service"),
        "the server saw the client certificate",
    )?;

    // 4. Without the client certificate the server refuses: a Config error,
    //    not retried, not counted against the circuit breaker.
    let anonymous = ApiClient::builder()
        .base_url(&url)
        .tls_root_certificate_pem(ca.pem())
        .tls_built_in_roots(false)
        .tls_server_name("orders.internal")
        .build()?;
    let err = anonymous
        .get("orders/7")
        .send()
        .await
        .err()
        .ok_or("the call without a client certificate succeeded")?;
    println!("without it: {err}");
    expect(
        err.kind() == ErrorKind::Config,
        "a refused certificate is a Config error",
    )?;
    expect(
        err.reason() == ErrorReason::Certificate,
        "its reason is Certificate",
    )?;
    expect(err.attempts() == 1, "it is not retried")?;

    // 5. Without the internal CA, the server's certificate is not trusted.
    let untrusting = ApiClient::builder()
        .base_url(&url)
        .tls_server_name("orders.internal")
        .build()?;
    let err = untrusting
        .get("orders/7")
        .send()
        .await
        .err()
        .ok_or("a server certificate from an unknown CA was accepted")?;
    println!("without the CA: {err}");
    expect(
        err.reason() == ErrorReason::Certificate,
        "an unknown issuer is refused",
    )?;
    Ok(())
}

fn expect(ok: bool, what: &str) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected outcome: {what}").into())
    }
}

fn internal_ca() -> Result<CertifiedIssuer<'static, KeyPair>, BoxError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Example Internal CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A certificate for `name` signed by `ca`, and its key, in PEM.
fn issue(
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String), BoxError> {
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// An HTTPS server that requires a client certificate from `ca_pem` and
/// answers with the caller's name; returns its port.
async fn serve(ca_pem: &str, cert: &str, key: &str) -> Result<u16, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes())?],
            PrivateKeyDer::from_pem_slice(key.as_bytes())?,
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).into_fallible().await {
                    Ok(tls) => tls,
                    Err((_, tcp)) => return linger(tcp).await,
                };
                // The client's name, as a real service would log it.
                let who = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .map_or("nobody", |der| {
                        if der.windows(15).any(|w| w == b"billing-service") {
                            "billing-service"
                        } else {
                            "someone else"
                        }
                    });
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("{{\"order\":7,\"caller\":\"{who}\"}}");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// After a refused handshake, close the way production servers do: stop
/// writing (the alert is already out), then read what the client sent until
/// it hangs up. Closing with its request unread would make the kernel answer
/// with a reset, which can discard the alert before the client reads it.
async fn linger(mut tcp: tokio::net::TcpStream) {
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}

/// The test server's crypto provider, named explicitly (the client builds
/// its own TLS configuration and never relies on a process-wide default).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
