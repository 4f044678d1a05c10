//! A small hyper service that calls a dependency through the client, wired as
//! a real service would: OAuth 2.0 client-credentials tokens, a request hook that
//! propagates the caller's `x-request-id`, and metrics (the `metrics` facade
//! recorded by `metrics-exporter-prometheus`, plus `ApiClient::stats()`)
//! served at `/metrics`.
//!
//! Everything runs locally: the dependency and its token endpoint are stubs,
//! and the example calls its own service a few times, prints what happened,
//! and exits.
//!
//! Run with `cargo run --example service --features metrics`.

#![allow(clippy::print_stdout)] // an example prints what it does

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use resilient_http::{
    ApiClient, Bytes, HeaderValue, HookRequest, OAuth2ClientCredentials, Segments,
};
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

tokio::task_local! {
    /// The request id of the request being served.
    static REQUEST_ID: String;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The process-wide recorder, installed once at startup; its handle renders
    // the Prometheus text format for the service's own `/metrics` route.
    let recorder = PrometheusBuilder::new().install_recorder()?;

    let (dependency, auth) = (MockServer::start().await, MockServer::start().await);
    stub_dependency(&dependency, &auth).await;

    // The client, built once at startup and shared by every handler.
    let orders = ApiClient::builder()
        .base_url(format!("{}/v1/", dependency.uri()))
        .token_provider(
            OAuth2ClientCredentials::new(
                format!("{}/oauth2/token", auth.uri()),
                "checkout-svc",
                "s3cr3t",
            )
            .scope("orders.read"),
        )
        .request_hook(|req: &mut HookRequest<'_>| {
            if let Ok(Ok(id)) = REQUEST_ID.try_with(|id| HeaderValue::from_str(id)) {
                req.set_header(resilient_http::HeaderName::from_static("x-request-id"), id);
            }
        })
        .build()?;

    let addr = serve(orders.clone(), recorder).await?;
    println!("service listening on http://{addr}");

    // A caller of the service.
    let caller = ApiClient::new(format!("http://{addr}/"))?;
    for (id, order, expected) in [
        ("req-1", "7", StatusCode::OK),
        ("req-2", "8", StatusCode::OK),
        ("req-3", "missing", StatusCode::NOT_FOUND),
    ] {
        let result = caller
            .get(format!("checkout/{order}"))
            .header("x-request-id", id)
            .send()
            .await;
        let status = match result {
            Ok(resp) => {
                println!(
                    "GET /checkout/{order} ({id}): {} {}",
                    resp.status(),
                    resp.text()?
                );
                Some(resp.status())
            }
            Err(err) => {
                println!("GET /checkout/{order} ({id}): {err}");
                err.status()
            }
        };
        if status != Some(expected) {
            return Err(
                format!("GET /checkout/{order}: expected {expected}, got {status:?}").into(),
            );
        }
    }
    let seen: Vec<String> = dependency
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            r.headers
                .get("x-request-id")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .collect();
    println!("request ids the dependency saw: {seen:?}");
    if seen != ["req-1", "req-2", "req-3"] {
        return Err("every dependency call should carry its caller's request id".into());
    }
    let metrics = caller.get("metrics").send().await?.text()?;
    println!("\nGET /metrics:\n{metrics}");
    // Prometheus writes `http.client.requests` as `http_client_requests`.
    if !metrics.contains("http_client_requests{") {
        return Err("the client's metrics should be recorded".into());
    }
    Ok(())
}

/// The dependency wants a bearer token from the token endpoint.
async fn stub_dependency(dependency: &MockServer, auth: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "tok-123", "token_type": "Bearer", "expires_in": 3600
        })))
        .mount(auth)
        .await;
    Mock::given(path_regex("^/v1/orders/[0-9]+$"))
        .and(header("authorization", "Bearer tok-123"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "paid"
        })))
        .mount(dependency)
        .await;
    Mock::given(path_regex("^/v1/orders/"))
        .respond_with(ResponseTemplate::new(404))
        .mount(dependency)
        .await;
}

/// Serves `/checkout/{id}` (through the client) and `/metrics`.
async fn serve(orders: ApiClient, recorder: PrometheusHandle) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (orders, recorder) = (orders.clone(), recorder.clone());
            let service = service_fn(move |req: Request<Incoming>| {
                let (orders, recorder) = (orders.clone(), recorder.clone());
                async move { Ok::<_, Infallible>(handle(req, &orders, &recorder).await) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn handle(
    req: Request<Incoming>,
    orders: &ApiClient,
    recorder: &PrometheusHandle,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/metrics" {
        let stats = orders.stats();
        let text = format!("{}# ApiClient::stats(): {stats:?}\n", recorder.render());
        return reply(StatusCode::OK, text);
    }
    let Some(order) = path.strip_prefix("/checkout/") else {
        return reply(StatusCode::NOT_FOUND, "no such route".into());
    };
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    // Everything the client does for this request sees its id.
    // `order` comes from the caller: as one encoded segment it cannot climb
    // to another path (`..%2F..%2Fadmin`) or add a query.
    let call = orders.get(Segments::new(["orders", order])).send();
    match REQUEST_ID.scope(request_id, call).await {
        Ok(resp) => reply(StatusCode::OK, resp.text().unwrap_or_default()),
        Err(err) if err.status() == Some(StatusCode::NOT_FOUND) => {
            reply(StatusCode::NOT_FOUND, "no such order".into())
        }
        Err(err) => reply(
            StatusCode::BAD_GATEWAY,
            format!("orders service: {}", err.kind()),
        ),
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
