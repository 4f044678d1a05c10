//! Trace propagation for each attempt (feature `opentelemetry`).
//!
//! Each attempt is its own `http.client.attempt` span (an OpenTelemetry
//! CLIENT span named after the method, with `http.request.resend_count` on a
//! resend), a child of the call's `http.client.request` span, and its context
//! goes into the attempt's headers through the global text map propagator
//! (`traceparent`, `tracestate`, `baggage`: whatever the propagator writes).
//! The pipeline starts it after the token and the request hooks, before the
//! signer (so a signature covers the trace headers), and ends it when the
//! attempt's outcome is known.
//!
//! - A `traceparent` already on the request (set by the caller, a default
//!   header or a hook) wins: nothing is injected. A header the propagator
//!   would write that the request already has is never replaced.
//! - When a subscriber filters the crate's spans out, the attempt injects the
//!   caller's current context (the current `tracing` span's, else
//!   OpenTelemetry's current context), so the downstream still joins the
//!   trace.
//! - No valid context (no OpenTelemetry layer, no current trace): no header.
//!
//! Without the feature [`AttemptSpan`] is an empty type whose methods do
//! nothing: no span is created and the attempt's future is not wrapped.

use reqwest::StatusCode;

use crate::error::Error;

/// The span of one attempt: `http.client.attempt` with the feature, nothing
/// without it.
#[derive(Debug)]
#[must_use = "an attempt span ends when `ended` is called or it is dropped"]
pub(crate) struct AttemptSpan {
    #[cfg(feature = "opentelemetry")]
    span: tracing::Span,
}

/// `otel.kind` of the call's `http.client.request` span: with the feature
/// each attempt is the CLIENT span (a resend is a new span, as the
/// OpenTelemetry HTTP conventions ask) and the call is the INTERNAL span
/// above them; without it the call is the only span, a CLIENT one.
pub(crate) const CALL_SPAN_KIND: &str = if cfg!(feature = "opentelemetry") {
    "internal"
} else {
    "client"
};

#[cfg(not(feature = "opentelemetry"))]
impl AttemptSpan {
    /// Nothing to start without the feature.
    #[inline]
    pub(crate) fn start(_request: &mut reqwest::Request, _attempt: u32) -> Self {
        Self {}
    }

    /// The attempt's future, as it is.
    #[inline]
    #[allow(clippy::unused_self)]
    pub(crate) fn in_span<F: Future>(&self, attempt: F) -> F {
        attempt
    }

    /// Nothing to record without the feature.
    #[inline]
    #[allow(clippy::needless_pass_by_value, clippy::unused_self)]
    pub(crate) fn ended(self, _outcome: Result<StatusCode, &Error>) {}
}

#[cfg(feature = "opentelemetry")]
impl AttemptSpan {
    /// Starts the span of attempt number `attempt` (from 1) of `request`,
    /// a child of the current span (the call's), and injects its context
    /// into the request's headers.
    pub(crate) fn start(request: &mut reqwest::Request, attempt: u32) -> Self {
        let span = imp::attempt_span(request, attempt);
        imp::inject(&span, request.headers_mut());
        Self { span }
    }

    /// `attempt` inside the attempt's span.
    pub(crate) fn in_span<F: Future>(&self, attempt: F) -> tracing::instrument::Instrumented<F> {
        tracing::Instrument::instrument(attempt, self.span.clone())
    }

    /// Records the attempt's outcome and ends its span.
    pub(crate) fn ended(self, outcome: Result<StatusCode, &Error>) {
        imp::record(&self.span, outcome);
    }
}

#[cfg(feature = "opentelemetry")]
mod imp {
    use opentelemetry::Context;
    use opentelemetry::propagation::Injector;
    use opentelemetry::trace::TraceContextExt as _;
    use reqwest::StatusCode;
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
    use tracing::field::Empty;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use crate::error::Error;
    use crate::redact;

    /// W3C Trace Context's header: when the request has one, nothing is injected.
    const TRACEPARENT: &str = "traceparent";

    /// The `http.client.attempt` span, with the request's fields. Numbers
    /// are recorded as `i64`: `tracing-opentelemetry` exports a `u64` field
    /// as text, and the conventions want integers.
    pub(super) fn attempt_span(request: &reqwest::Request, attempt: u32) -> tracing::Span {
        let method = request.method().as_str();
        let span = tracing::info_span!(
            target: "resilient_http",
            "http.client.attempt",
            otel.kind = "client",
            otel.name = method,
            otel.status_code = Empty,
            http.request.method = method,
            url.full = Empty,
            server.address = Empty,
            server.port = Empty,
            http.request.resend_count = Empty,
            http.response.status_code = Empty,
            error.type = Empty,
        );
        if !span.is_disabled() {
            redact::record_target(&span, request.url());
            if attempt > 1 {
                span.record("http.request.resend_count", i64::from(attempt - 1));
            }
        }
        span
    }

    /// Records an attempt's outcome in its span.
    pub(super) fn record(span: &tracing::Span, outcome: Result<StatusCode, &Error>) {
        if span.is_disabled() {
            return;
        }
        match outcome {
            Ok(status) => {
                span.record("http.response.status_code", i64::from(status.as_u16()));
                // A 4xx or 5xx the call allowed is still an error status for
                // a CLIENT span (the conventions), its code the error type.
                if status.as_u16() >= 400 {
                    span.record("error.type", status.as_str());
                    span.record("otel.status_code", "ERROR");
                }
            }
            Err(err) => {
                if let Some(status) = err.status() {
                    span.record("http.response.status_code", i64::from(status.as_u16()));
                }
                span.record("error.type", &*err.type_name());
                span.record("otel.status_code", "ERROR");
            }
        }
    }

    /// Injects the context of `span` (or, when the crate's spans are filtered
    /// out, the caller's) into `headers`, unless they carry a `traceparent`.
    pub(super) fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
        if headers.contains_key(TRACEPARENT) {
            return;
        }
        // OpenTelemetry's default propagator writes no field: nothing to do.
        let writes =
            opentelemetry::global::get_text_map_propagator(|p| p.fields().next().is_some());
        if !writes {
            return;
        }
        let Some(cx) = context(span) else {
            return;
        };
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&cx, &mut HeaderInjector(headers));
        });
    }

    /// The context to send: the attempt span's; when it has none (disabled,
    /// or not seen by an OpenTelemetry layer), the current span's (the
    /// call's, or, when the crate's spans are off, the caller's); else
    /// OpenTelemetry's current context. `None` when none is a valid span
    /// context: never an all-zero id.
    fn context(span: &tracing::Span) -> Option<Context> {
        let valid = |cx: &Context| cx.span().span_context().is_valid();
        if !span.is_disabled() {
            let cx = span.context();
            if valid(&cx) {
                return Some(cx);
            }
        }
        let cx = tracing::Span::current().context();
        if valid(&cx) {
            return Some(cx);
        }
        let cx = Context::current();
        valid(&cx).then_some(cx)
    }

    /// Writes a propagator's fields as request headers; a header the request
    /// already has is kept, and a name or value that is not valid in HTTP is
    /// skipped.
    pub(super) struct HeaderInjector<'a>(pub(super) &'a mut HeaderMap);

    impl Injector for HeaderInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
                return;
            };
            if self.0.contains_key(&name) {
                return;
            }
            if let Ok(value) = HeaderValue::try_from(value) {
                self.0.insert(name, value);
            }
        }
    }
}

#[cfg(all(test, feature = "opentelemetry"))]
mod tests {
    use opentelemetry::propagation::Injector as _;
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::imp::HeaderInjector;

    #[test]
    fn the_injector_skips_what_is_not_http_and_keeps_what_is_there() {
        let mut headers = HeaderMap::new();
        headers.insert("baggage", HeaderValue::from_static("mine=1"));
        let mut injector = HeaderInjector(&mut headers);
        injector.set("not a name", "v".to_owned());
        injector.set("tracestate", "a=1\nb=2".to_owned());
        injector.set("baggage", "theirs=2".to_owned());
        injector.set("Traceparent", "00-x".to_owned());
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert_eq!(headers["baggage"], "mine=1");
        assert_eq!(headers["traceparent"], "00-x");
    }
}
