//! Trace propagation (feature `opentelemetry`): each attempt is its own CLIENT
//! span, child of the call's span, itself the child of the caller's span, and
//! sends its own `traceparent`; a caller's `traceparent` wins; nothing is sent
//! without a propagator or a valid context; the caller's context is sent when
//! the crate's spans are filtered out; token fetches made inside a call are
//! spans of the same trace.
//!
//! The global propagator is process-wide: every test takes `GLOBAL` first and
//! sets the propagator it needs. Subscribers are per thread (`set_default`)
//! and `#[tokio::test]` runs each test on one thread.

#![cfg(feature = "opentelemetry")]
// Test support: a failed setup step should panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::{Sequence, fast_builder};
use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{
    SpanId, SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value, global};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use resilient_http::{
    ApiClient, HeaderValue, HookRequest, OAuth2ClientCredentials, RequestSigner, SignFuture,
    SignRequest, Token,
};
use tracing::Instrument as _;
use tracing::subscriber::DefaultGuard;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Held by each test while it uses the global propagator.
static GLOBAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A tracer provider exporting to memory, and a subscriber with the
/// OpenTelemetry layer, the thread's default while this lives.
struct Traced {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _default: DefaultGuard,
}

impl Traced {
    /// With every span seen by the OpenTelemetry layer.
    fn new() -> Self {
        Self::filtered(Targets::new().with_default(LevelFilter::TRACE))
    }

    /// With `filter` in front of the whole subscriber (spans it refuses are
    /// disabled).
    fn filtered(filter: Targets) -> Self {
        Self::with_filter(filter, false)
    }

    /// With `filter` in front of the OpenTelemetry layer only (a per-layer
    /// filter: the spans it refuses exist, but have no OpenTelemetry data).
    fn per_layer(filter: Targets) -> Self {
        Self::with_filter(filter, true)
    }

    fn with_filter(filter: Targets, per_layer: bool) -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("resilient-http-tests");
        let default = if per_layer {
            let layer = tracing_opentelemetry::layer().with_tracer(tracer);
            tracing::subscriber::set_default(
                tracing_subscriber::registry().with(layer.with_filter(filter)),
            )
        } else {
            let layer = tracing_opentelemetry::layer().with_tracer(tracer);
            tracing::subscriber::set_default(
                tracing_subscriber::registry().with(filter).with(layer),
            )
        };
        Self {
            exporter,
            provider,
            _default: default,
        }
    }

    /// Every span ended so far.
    fn spans(&self) -> Vec<SpanData> {
        self.provider.force_flush().unwrap();
        self.exporter.get_finished_spans().unwrap()
    }
}

/// Sets the global propagator to W3C Trace Context (and baggage).
fn trace_context() {
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
}

/// The global default: a propagator that writes nothing.
fn no_propagator() {
    global::set_text_map_propagator(opentelemetry::trace::noop::NoopTextMapPropagator::new());
}

/// The trace and span ids of a span.
fn ids(span: &tracing::Span) -> (TraceId, SpanId) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    assert!(sc.is_valid(), "the span has no valid context");
    (sc.trace_id(), sc.span_id())
}

/// The values of header `name` in the requests `server` received, in order
/// (`None` for a request without it).
async fn header_values(server: &MockServer, name: &str) -> Vec<Option<String>> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.headers.get(name).map(|v| v.to_str().unwrap().to_owned()))
        .collect()
}

/// A `traceparent` value split into trace id and span id.
fn parse_traceparent(value: &str) -> (TraceId, SpanId) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {value}");
    assert_eq!(parts[0], "00", "version: {value}");
    let trace = TraceId::from_hex(parts[1]).unwrap();
    let span = SpanId::from_hex(parts[2]).unwrap();
    assert_ne!(trace, TraceId::INVALID, "all-zero trace id: {value}");
    assert_ne!(span, SpanId::INVALID, "all-zero span id: {value}");
    (trace, span)
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// A stub that answers 503 once, then 200.
async fn flaky_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/orders/7"))
        .respond_with(Sequence::statuses(&[503, 200]))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn each_attempt_is_a_client_span_child_of_the_call_and_sends_its_own_traceparent() {
    let _global = GLOBAL.lock().await;
    trace_context();
    let traced = Traced::new();
    let (caller_trace, caller_id, sent) = retried_in_a_caller_span().await;

    // The stub saw two traceparents: the caller's trace, two span ids.
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|(t, _)| *t == caller_trace), "{sent:?}");
    assert_ne!(sent[0].1, sent[1].1, "each attempt sends its own span id");

    let spans = traced.spans();
    // The call: an INTERNAL span under the caller's.
    let calls = named(&spans, "http.client.request");
    assert_eq!(calls.len(), 1, "{spans:#?}");
    let call = calls[0];
    assert_eq!(call.span_kind, SpanKind::Internal);
    assert_eq!(call.parent_span_id, caller_id);
    assert_eq!(call.span_context.trace_id(), caller_trace);
    // The attempts: exactly the two CLIENT spans, named after the method,
    // children of the call, whose ids are the ones sent.
    let attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .collect();
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for (attempt, (trace, id)) in attempts.iter().zip(&sent) {
        assert_eq!(attempt.name, "GET");
        assert_eq!(attempt.span_context.trace_id(), *trace);
        assert_eq!(attempt.span_context.span_id(), *id);
        assert_eq!(attempt.parent_span_id, call.span_context.span_id());
        assert_eq!(
            attribute(attempt, "http.request.method"),
            Some(&Value::from("GET"))
        );
    }
    // The first is not a resend and got the 503; the second is resend 1.
    assert_eq!(attribute(attempts[0], "http.request.resend_count"), None);
    assert_eq!(
        attribute(attempts[0], "http.response.status_code"),
        Some(&Value::I64(503))
    );
    assert_eq!(
        attribute(attempts[0], "error.type"),
        Some(&Value::from("503"))
    );
    assert_eq!(
        attribute(attempts[1], "http.request.resend_count"),
        Some(&Value::I64(1))
    );
    assert_eq!(
        attribute(attempts[1], "http.response.status_code"),
        Some(&Value::I64(200))
    );
    assert_eq!(attribute(attempts[1], "error.type"), None);
    assert!(
        matches!(attempts[0].status, Status::Error { .. }),
        "{:?}",
        attempts[0].status
    );
    assert_eq!(attempts[1].status, Status::Unset);
    // The URL is there, as the call's span has it.
    assert!(attribute(attempts[1], "url.full").is_some());
    no_propagator();
}

#[tokio::test]
async fn a_traceparent_set_by_the_caller_or_a_hook_is_kept() {
    let _global = GLOBAL.lock().await;
    trace_context();
    let traced = Traced::new();
    let server = flaky_server().await;
    let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    // Set on the request.
    let client = fast_builder(&server.uri()).build().unwrap();
    let caller = tracing::info_span!("caller");
    let resp = async {
        client
            .get("orders/7")
            .header("traceparent", theirs)
            .send()
            .await
    }
    .instrument(caller)
    .await
    .unwrap();
    assert_eq!(resp.attempts(), 2);
    assert_eq!(
        header_values(&server, "traceparent").await,
        vec![Some(theirs.to_owned()), Some(theirs.to_owned())]
    );
    // Nothing else of the propagator's was added beside it.
    assert_eq!(header_values(&server, "tracestate").await, vec![None, None]);

    // Set by a hook.
    server.reset().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let hooked = fast_builder(&server.uri())
        .request_hook(move |req: &mut HookRequest<'_>| {
            req.set_header(
                "traceparent".parse().unwrap(),
                HeaderValue::from_static(theirs),
            );
        })
        .build()
        .unwrap();
    async { hooked.get("orders/7").send().await }
        .instrument(tracing::info_span!("caller"))
        .await
        .unwrap();
    assert_eq!(
        header_values(&server, "traceparent").await,
        vec![Some(theirs.to_owned())]
    );
    // The attempt spans still exist.
    assert_eq!(
        traced
            .spans()
            .iter()
            .filter(|s| s.span_kind == SpanKind::Client)
            .count(),
        3
    );
    no_propagator();
}

#[tokio::test]
async fn without_a_propagator_calls_work_and_send_nothing() {
    let _global = GLOBAL.lock().await;
    no_propagator();
    let traced = Traced::new();
    let server = flaky_server().await;
    let client = fast_builder(&server.uri()).build().unwrap();
    let resp = async { client.get("orders/7").send().await }
        .instrument(tracing::info_span!("caller"))
        .await
        .unwrap();
    assert_eq!(resp.attempts(), 2);
    for name in ["traceparent", "tracestate", "baggage"] {
        assert_eq!(
            header_values(&server, name).await,
            vec![None, None],
            "{name}"
        );
    }
    // The spans are recorded all the same.
    assert_eq!(named(&traced.spans(), "GET").len(), 2);
}

#[tokio::test]
async fn without_a_valid_context_no_header_is_sent() {
    let _global = GLOBAL.lock().await;
    trace_context();
    // A subscriber without the OpenTelemetry layer: spans, but no trace.
    let plain = tracing::subscriber::set_default(tracing_subscriber::registry());
    let server = flaky_server().await;
    let client = fast_builder(&server.uri()).build().unwrap();
    let resp = async { client.get("orders/7").send().await }
        .instrument(tracing::info_span!("caller"))
        .await
        .unwrap();
    assert_eq!(resp.attempts(), 2);
    assert_eq!(
        header_values(&server, "traceparent").await,
        vec![None, None]
    );
    // No subscriber at all.
    drop(plain);
    let _none = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    server.reset().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    client.get("orders/7").send().await.unwrap();
    assert_eq!(header_values(&server, "traceparent").await, vec![None]);
    no_propagator();
}

#[tokio::test]
async fn with_the_crate_spans_filtered_out_the_caller_context_is_sent() {
    let _global = GLOBAL.lock().await;
    trace_context();
    let no_crate_spans = || {
        Targets::new()
            .with_target("resilient_http", LevelFilter::OFF)
            .with_default(LevelFilter::TRACE)
    };
    // Filtered out of the whole subscriber (the spans are disabled).
    check_caller_context_sent(Traced::filtered(no_crate_spans())).await;
    // Filtered out of the OpenTelemetry layer only.
    check_caller_context_sent(Traced::per_layer(no_crate_spans())).await;
    no_propagator();
}

/// One call to [`flaky_server`] (answered at its second attempt) inside a
/// `caller` span: the caller's trace and span ids, and the `traceparent`
/// each attempt sent.
async fn retried_in_a_caller_span() -> (TraceId, SpanId, Vec<(TraceId, SpanId)>) {
    let server = flaky_server().await;
    let client = fast_builder(&server.uri()).build().unwrap();
    let caller = tracing::info_span!("caller");
    let (caller_trace, caller_id) = ids(&caller);
    let resp = async { client.get("orders/7").send().await }
        .instrument(caller.clone())
        .await
        .unwrap();
    drop(caller);
    assert_eq!(resp.attempts(), 2);
    let sent = header_values(&server, "traceparent")
        .await
        .into_iter()
        .map(|v| parse_traceparent(&v.expect("every attempt sends a traceparent")))
        .collect();
    (caller_trace, caller_id, sent)
}

/// A call retried once sends the caller's context on both attempts, and only
/// the caller's span is exported.
async fn check_caller_context_sent(traced: Traced) {
    let (caller_trace, caller_id, sent) = retried_in_a_caller_span().await;
    assert_eq!(sent, vec![(caller_trace, caller_id); 2]);
    // Only the caller's span was recorded.
    let spans = traced.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].name, "caller");
}

#[tokio::test]
async fn the_signer_sees_the_trace_context() {
    let _global = GLOBAL.lock().await;
    trace_context();
    let _traced = Traced::new();
    let server = flaky_server().await;
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let signer = Recorder(Arc::clone(&seen));
    let client = fast_builder(&server.uri()).signer(signer).build().unwrap();
    async { client.get("orders/7").send().await }
        .instrument(tracing::info_span!("caller"))
        .await
        .unwrap();
    let at_signing = seen.lock().unwrap().clone();
    assert_eq!(at_signing, header_values(&server, "traceparent").await);
    assert!(at_signing.iter().all(Option::is_some), "{at_signing:?}");
    no_propagator();
}

/// A signer that records the `traceparent` it sees on each attempt.
struct Recorder(Arc<Mutex<Vec<Option<String>>>>);

impl RequestSigner for Recorder {
    fn sign<'a>(&'a self, req: &'a mut SignRequest<'_>) -> SignFuture<'a> {
        let value = req
            .headers()
            .get("traceparent")
            .map(|v| v.to_str().unwrap().to_owned());
        self.0.lock().unwrap().push(value);
        Box::pin(async { Ok(()) })
    }
}

/// A stub API that wants a bearer token, and a token endpoint.
async fn token_servers() -> (MockServer, MockServer) {
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::header("authorization", "Bearer t-1"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&api)
        .await;
    let auth = MockServer::start().await;
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "t-1",
            "token_type": "Bearer",
            "expires_in": 3600
        })))
        .mount(&auth)
        .await;
    (api, auth)
}

/// After a call whose token was fetched from `auth` within it: the token
/// request is a call span of its own, child of the outer call, in the
/// caller's trace, and sent its own attempt's context.
async fn check_token_fetch_spans(traced: &Traced, auth: &MockServer, caller_trace: TraceId) {
    let spans = traced.spans();
    let calls = named(&spans, "http.client.request");
    assert_eq!(calls.len(), 2, "{spans:#?}");
    let outer = calls
        .iter()
        .find(|s| attribute(s, "http.request.method") == Some(&Value::from("GET")))
        .unwrap();
    let fetch = calls
        .iter()
        .find(|s| s.span_context != outer.span_context)
        .unwrap();
    assert_eq!(fetch.span_context.trace_id(), caller_trace);
    assert_eq!(fetch.parent_span_id, outer.span_context.span_id());
    let sent = header_values(auth, "traceparent").await;
    assert_eq!(sent.len(), 1);
    let (trace, id) = parse_traceparent(sent[0].as_deref().unwrap());
    assert_eq!(trace, caller_trace);
    let fetch_attempt = spans
        .iter()
        .find(|s| s.span_context.span_id() == id)
        .expect("the token request's traceparent is an exported span");
    assert_eq!(fetch_attempt.span_kind, SpanKind::Client);
    assert_eq!(fetch_attempt.parent_span_id, fetch.span_context.span_id());
}

#[tokio::test]
async fn an_oauth2_fetch_inside_a_call_is_its_own_span_in_the_same_trace() {
    let _global = GLOBAL.lock().await;
    trace_context();
    let traced = Traced::new();
    let (api, auth) = token_servers().await;
    let client = fast_builder(&api.uri())
        .token_provider(OAuth2ClientCredentials::new(
            format!("{}/token", auth.uri()),
            "orders",
            "s3cr3t",
        ))
        .build()
        .unwrap();
    let caller = tracing::info_span!("caller");
    let (caller_trace, _) = ids(&caller);
    async { client.get("orders/7").send().await }
        .instrument(caller.clone())
        .await
        .unwrap();
    drop(caller);
    check_token_fetch_spans(&traced, &auth, caller_trace).await;
    // The secret is in no span.
    for span in traced.spans() {
        for kv in &span.attributes {
            assert!(!kv.value.as_str().contains("s3cr3t"), "{kv:?}");
        }
    }
    no_propagator();
}

#[tokio::test]
async fn a_token_provider_call_inside_a_call_is_its_own_span_in_the_same_trace() {
    let _global = GLOBAL.lock().await;
    trace_context();
    let traced = Traced::new();
    let (api, auth) = token_servers().await;
    let token_client = ApiClient::new(format!("{}/", auth.uri())).unwrap();
    let client = fast_builder(&api.uri())
        .token_provider(move || {
            let token_client = token_client.clone();
            async move {
                let resp = token_client.post("token").send().await?;
                let body: serde_json::Value = resp.json()?;
                let token = body["access_token"].as_str().unwrap_or_default();
                Ok::<_, resilient_http::BoxError>(Token::new(token))
            }
        })
        .build()
        .unwrap();
    let caller = tracing::info_span!("caller");
    let (caller_trace, _) = ids(&caller);
    async { client.get("orders/7").send().await }
        .instrument(caller.clone())
        .await
        .unwrap();
    drop(caller);
    check_token_fetch_spans(&traced, &auth, caller_trace).await;
    no_propagator();
}

/// A stub that answers 200 to any GET.
async fn ok_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn baggage_is_sent_and_a_header_the_request_has_is_not_replaced() {
    let _global = GLOBAL.lock().await;
    trace_context();
    let _traced = Traced::new();
    let server = ok_server().await;
    let client = fast_builder(&server.uri()).build().unwrap();
    // The caller's span starts in a context that carries baggage.
    let caller = {
        let _cx = Context::current_with_baggage([KeyValue::new("tenant", "acme")]).attach();
        tracing::info_span!("caller")
    };
    async {
        client.get("a").send().await?;
        client
            .get("b")
            .header("baggage", "tenant=theirs")
            .send()
            .await
    }
    .instrument(caller)
    .await
    .unwrap();
    assert_eq!(
        header_values(&server, "baggage").await,
        vec![
            Some("tenant=acme".to_owned()),
            Some("tenant=theirs".to_owned())
        ]
    );
    // The traceparent is sent beside the caller's own baggage.
    assert!(
        header_values(&server, "traceparent")
            .await
            .iter()
            .all(Option::is_some)
    );
    no_propagator();
}

#[tokio::test]
async fn an_opentelemetry_context_without_tracing_spans_is_sent() {
    let _global = GLOBAL.lock().await;
    trace_context();
    // No tracing subscriber: the caller uses OpenTelemetry's API directly.
    let _none = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let span = provider.tracer("direct").start("caller");
    let cx = Context::current_with_span(span);
    let expected = {
        let sc = cx.span().span_context().clone();
        (sc.trace_id(), sc.span_id())
    };
    let server = ok_server().await;
    let client = fast_builder(&server.uri()).build().unwrap();
    client.get("a").send().with_context(cx).await.unwrap();
    let sent = header_values(&server, "traceparent").await;
    assert_eq!(sent.len(), 1);
    assert_eq!(parse_traceparent(sent[0].as_deref().unwrap()), expected);
    no_propagator();
}

#[tokio::test]
async fn an_allowed_error_status_is_still_an_error_on_the_attempt_span() {
    let _global = GLOBAL.lock().await;
    trace_context();
    let traced = Traced::new();
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri()).build().unwrap();
    let resp = async {
        client
            .get("a")
            .allow_status(resilient_http::StatusCode::NOT_FOUND)
            .send()
            .await
    }
    .instrument(tracing::info_span!("caller"))
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);
    let spans = traced.spans();
    let attempt = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .unwrap();
    assert_eq!(
        attribute(attempt, "http.response.status_code"),
        Some(&Value::I64(404))
    );
    assert_eq!(attribute(attempt, "error.type"), Some(&Value::from("404")));
    assert!(matches!(attempt.status, Status::Error { .. }));
    no_propagator();
}

#[tokio::test]
async fn a_failed_call_is_an_error_on_the_call_span() {
    let _global = GLOBAL.lock().await;
    trace_context();
    let traced = Traced::new();
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri()).build().unwrap();

    let err = client.get("a").send().await.unwrap_err();

    assert_eq!(err.status(), Some(resilient_http::StatusCode::NOT_FOUND));
    let spans = traced.spans();
    let call = named(&spans, "http.client.request")[0];
    assert_eq!(attribute(call, "error.type"), Some(&Value::from("404")));
    assert!(
        matches!(call.status, Status::Error { .. }),
        "{:?}",
        call.status
    );
    no_propagator();
}
