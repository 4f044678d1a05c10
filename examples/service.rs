//! A small hyper service that calls a dependency through the client, wired as
//! a real service would: OAuth 2.0 client-credentials tokens, a request hook that
//! propagates the caller's `x-request-id`, and metrics (the `metrics` facade,
//! plus `ApiClient::stats()`) served at `/metrics`.
//!
//! Everything runs locally: the dependency and its token endpoint are stubs,
//! and the example calls its own service a few times, prints what happened,
//! and exits.
//!
//! Run with `cargo run --example service --features metrics`.

#![allow(clippy::print_stdout)] // an example prints what it does

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use resilient_http::{ApiClient, Bytes, HeaderValue, HookRequest, OAuth2ClientCredentials};
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

tokio::task_local! {
    /// The request id of the request being served.
    static REQUEST_ID: String;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let recorder = Recorder::default();
    metrics::set_global_recorder(recorder.clone())?;

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
    if !metrics.contains("http.client.requests{") {
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
async fn serve(orders: ApiClient, recorder: Recorder) -> std::io::Result<SocketAddr> {
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
    recorder: &Recorder,
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
    let call = orders.get(format!("orders/{order}")).send();
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

/// A minimal `metrics` recorder that keeps counters and histogram counts in
/// memory and renders them as text; a real service installs an exporter
/// (Prometheus, OpenTelemetry) instead.
#[derive(Clone, Default)]
struct Recorder {
    values: Arc<Mutex<BTreeMap<String, f64>>>,
}

impl Recorder {
    fn render(&self) -> String {
        let values = self.values.lock().map(|v| v.clone()).unwrap_or_default();
        let lines: Vec<String> = values.iter().map(|(k, v)| format!("{k} {v}")).collect();
        lines.join("\n") + "\n"
    }

    fn handle(&self, key: &metrics::Key, suffix: &str) -> Arc<Handle> {
        let labels: Vec<String> = key
            .labels()
            .filter(|l| !l.value().is_empty())
            .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
            .collect();
        Arc::new(Handle {
            name: format!("{}{suffix}{{{}}}", key.name(), labels.join(",")),
            values: Arc::clone(&self.values),
        })
    }
}

struct Handle {
    name: String,
    values: Arc<Mutex<BTreeMap<String, f64>>>,
}

impl Handle {
    fn update(&self, f: impl FnOnce(&mut f64)) {
        if let Ok(mut values) = self.values.lock() {
            f(values.entry(self.name.clone()).or_default());
        }
    }
}

impl metrics::CounterFn for Handle {
    fn increment(&self, value: u64) {
        #[allow(clippy::cast_precision_loss)] // counts stay far below 2^52
        self.update(|v| *v += value as f64);
    }
    fn absolute(&self, value: u64) {
        #[allow(clippy::cast_precision_loss)]
        self.update(|v| *v = value as f64);
    }
}

impl metrics::GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.update(|v| *v += value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| *v -= value);
    }
    fn set(&self, value: f64) {
        self.update(|v| *v = value);
    }
}

impl metrics::HistogramFn for Handle {
    /// Keeps the count of samples only.
    fn record(&self, _value: f64) {
        self.update(|v| *v += 1.0);
    }
}

impl metrics::Recorder for Recorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.handle(key, ""))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.handle(key, ""))
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.handle(key, "_count"))
    }
}
