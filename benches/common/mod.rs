//! Shared by the benches: an in-process HTTP/1.1 server and criterion settings.
// Bench setup fails loudly; not every bench uses every helper.
#![allow(clippy::expect_used, dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| async move {
                        let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
                        *resp.status_mut() =
                            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    rx.recv().expect("server address")
}

/// Criterion settings that fit a shared 2-core machine: fewer, shorter samples.
pub(crate) fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .noise_threshold(0.03)
}
