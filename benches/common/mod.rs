//! Shared by the benches: an in-process HTTP/1.1 server and criterion settings,
//! and the failure-mix server of the `scenarios` bench ([`scenario`]).
// Bench setup fails loudly; not every bench uses every helper.
#![allow(clippy::expect_used, dead_code)]

pub(crate) mod scenario;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The small JSON body every request gets.
pub(crate) const BODY: &[u8] =
    br#"{"id":42,"name":"Ada Lovelace","roles":["admin","dev"],"active":true}"#;

/// Starts a keep-alive HTTP/1.1 server on 127.0.0.1 on its own runtime thread
/// (one worker). It answers every request with `status` and [`BODY`], and
/// lives until the bench process exits.
pub(crate) fn start_server(status: u16) -> SocketAddr {
    start_listeners(status, 1)[0]
}

/// Like [`start_server`], with `n` listeners (each its own port) served by
/// the same one-worker runtime thread: several instances of one service, at
/// the server cost of one.
pub(crate) fn start_listeners(status: u16, n: usize) -> Vec<SocketAddr> {
    let status = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    serve(
        n,
        Arc::new(move |_path: &str| (status, Bytes::from_static(BODY))),
    )
}

/// Starts a server like [`start_server`] that answers a request for a path
/// in `bodies` with 200 and that body (JSON; the `Bytes` is shared, not
/// copied, per request), and any other path with 404.
pub(crate) fn start_server_with(bodies: Vec<(String, Bytes)>) -> SocketAddr {
    let bodies: HashMap<String, Bytes> = bodies.into_iter().collect();
    serve(
        1,
        Arc::new(move |path: &str| match bodies.get(path) {
            Some(body) => (hyper::StatusCode::OK, body.clone()),
            None => (hyper::StatusCode::NOT_FOUND, Bytes::new()),
        }),
    )[0]
}

/// The status and body for a request path.
type Respond = Arc<dyn Fn(&str) -> (hyper::StatusCode, Bytes) + Send + Sync>;

/// `n` listeners on one runtime thread (one worker), answering with `respond`.
fn serve(n: usize, respond: Respond) -> Vec<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let mut accepts = tokio::task::JoinSet::new();
            for _ in 0..n {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                accepts.spawn(accept(listener, respond.clone()));
            }
            while accepts.join_next().await.is_some() {}
        });
    });
    (0..n).map(|_| rx.recv().expect("server address")).collect()
}

async fn accept(listener: TcpListener, respond: Respond) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let respond = respond.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (status, body) = respond(req.uri().path());
                async move {
                    let mut resp = Response::new(Full::new(body));
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A builder for the raw reqwest clients the benches compare against.
///
/// With the `rustls-ring` feature alone, reqwest is built with no crypto
/// provider of its own (the crate's client gets one explicitly, never a
/// process-wide one), so a plain `reqwest::Client::builder().build()` needs a
/// default provider installed. The benches speak plain HTTP: ring is
/// installed as the process default here, for the raw clients only
/// (`ApiClient` keeps its own provider). Harmless with any other stack.
pub(crate) fn reqwest_builder() -> reqwest::ClientBuilder {
    // Err only when a provider is already installed: then that one serves.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// Criterion settings that fit a shared 2-core machine: fewer, shorter samples.
pub(crate) fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .noise_threshold(0.03)
}
