//! Distributed tracing: a caller span and two calls, one retried after a 503.
//! Each attempt is its own CLIENT span and sends its own `traceparent`; the
//! stub server prints what it received, the exporter prints every span as it
//! ends (name, trace id, span id, parent). Exits non-zero if the spans and the
//! headers do not match.
//!
//! Run with `cargo run --example tracing --features opentelemetry`.
//!
//! A service would export with `opentelemetry-otlp` (a batch processor)
//! instead of the printing exporter below; the rest is the same.

#![allow(clippy::print_stdout)] // an example prints what it does

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use resilient_http::{ApiClient, RetryPolicy};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Prints each span as it ends, and keeps it for the checks at the end.
#[derive(Debug, Clone, Default)]
struct PrintExporter {
    ended: Arc<Mutex<Vec<SpanData>>>,
}

impl SpanExporter for PrintExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        for span in &batch {
            let parent = if span.parent_span_id == SpanId::INVALID {
                "-".to_owned()
            } else {
                span.parent_span_id.to_string()
            };
            let attr = |key: &str| {
                span.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == key)
                    .map_or_else(|| "-".to_owned(), |kv| kv.value.to_string())
            };
            println!(
                "span {:<20} {:<8} trace {} span {} parent {:<16} status {:<3} resend {}",
                span.name,
                format!("{:?}", span.span_kind),
                span.span_context.trace_id(),
                span.span_context.span_id(),
                parent,
                attr("http.response.status_code"),
                attr("http.request.resend_count"),
            );
        }
        self.ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(batch);
        std::future::ready(Ok(()))
    }
}

/// 503 the first time, 200 after.
struct FlakyOnce(std::sync::atomic::AtomicUsize);

impl Respond for FlakyOnce {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        match self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => ResponseTemplate::new(503),
            _ => ResponseTemplate::new(200).set_body_string("order 7"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What a service sets up once at start: the W3C propagator, a tracer
    // provider with an exporter, and the tracing -> OpenTelemetry layer.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = PrintExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("checkout-service")));
    tracing::subscriber::set_global_default(subscriber)?;

    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/orders/7"))
        .respond_with(FlakyOnce(0.into()))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/inventory"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
        .mount(&server)
        .await;

    let client = ApiClient::builder()
        .base_url(server.uri())
        .retry(
            RetryPolicy::exponential()
                .max_attempts(3)
                .initial_backoff(Duration::from_millis(50)),
        )
        .build()?;

    let checkout = tracing::info_span!("checkout");
    let (inventory, order) = async {
        let inventory = client.get("inventory").send().await?;
        let order = client.get("orders/7").send().await?;
        Ok::<_, resilient_http::Error>((inventory, order))
    }
    .instrument(checkout)
    .await?;
    println!(
        "calls: inventory {} in {} attempt(s), order {} in {} attempt(s)",
        inventory.status(),
        inventory.attempts(),
        order.status(),
        order.attempts()
    );

    let mut sent = Vec::new();
    for req in server.received_requests().await.unwrap_or_default() {
        let traceparent = req
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        println!(
            "server saw {} {} traceparent {traceparent}",
            req.method,
            req.url.path()
        );
        sent.push(traceparent);
    }
    provider.force_flush()?;
    let ended = exporter
        .ended
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    provider.shutdown()?;

    if let Err(why) = check(&ended, &sent) {
        eprintln!("unexpected outcome: {why}");
        std::process::exit(1);
    }
    println!(
        "ok: one trace; 3 attempts, each a CLIENT span whose id the server received, under its call's span, under `checkout`"
    );
    Ok(())
}

/// Checks the spans against the `traceparent`s the server received: one
/// trace, the caller's; each attempt a CLIENT span whose id was sent; each
/// call under the caller, each attempt under its call.
fn check(spans: &[SpanData], sent: &[String]) -> Result<(), String> {
    let caller = spans
        .iter()
        .find(|s| s.name == "checkout")
        .ok_or("no checkout span")?;
    let trace = caller.span_context.trace_id();
    if spans.iter().any(|s| s.span_context.trace_id() != trace) {
        return Err("spans of more than one trace".into());
    }
    let calls: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "http.client.request")
        .collect();
    if calls.len() != 2
        || calls
            .iter()
            .any(|c| c.parent_span_id != caller.span_context.span_id())
    {
        return Err(format!("{} call spans, not 2 under checkout", calls.len()));
    }
    let attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .collect();
    if sent.len() != 3 || attempts.len() != 3 {
        return Err(format!(
            "{} requests and {} attempt spans, not 3 and 3",
            sent.len(),
            attempts.len()
        ));
    }
    for (value, attempt) in sent.iter().zip(&attempts) {
        let expected = format!("00-{}-{}-01", trace, attempt.span_context.span_id());
        if *value != expected {
            return Err(format!("the server got {value}, the span is {expected}"));
        }
        if !calls
            .iter()
            .any(|c| c.span_context.span_id() == attempt.parent_span_id)
        {
            return Err(format!("attempt {} is not under a call", attempt.name));
        }
    }
    // The two attempts of the retried call share their parent.
    if attempts[1].parent_span_id != attempts[2].parent_span_id {
        return Err("the retried call's attempts have different parents".into());
    }
    Ok(())
}
