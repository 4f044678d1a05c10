//! `ErrorBuilder`: an [`Error`] made by hand, for unit tests of the code that
//! handles errors (an SDK's mapping of a 409 to a domain error, a retry wrapper
//! that tells a timeout from a connect failure).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use url::Url;

use super::{Certificate, Error, ErrorReason, Unprocessed, What};
use crate::timeout::TimeoutPhase;

/// Builds an [`Error`] as the client would return it, for tests of the code
/// that handles errors. Get one from [`Error::builder`].
///
/// Kind, retryability and the predicates (`is_timeout()`, `is_connect()`,
/// `is_circuit_open()`...) follow from the reason (and the status or timeout
/// phase) by the same table as real errors; the rest is context you may set.
///
/// | reason | what is built | set with |
/// |---|---|---|
/// | `Status` | an error response (500 unless set) | [`status`](Self::status), [`header`](Self::header), [`body`](Self::body), [`json_body`](Self::json_body) |
/// | `Timeout` | a timeout (phase `Total` unless set) | [`timeout_phase`](Self::timeout_phase) |
/// | `Connect`, `Closed`, `Protocol`, `Redirect` | that transport failure | |
/// | `CircuitOpen`, `RateLimited` | that rejection | [`retry_after`](Self::retry_after) |
/// | others | that failure, with a generic message | |
///
/// # Examples
///
/// A 409 with a problem+json body, a timeout and a connect failure:
///
/// ```
/// use std::time::Duration;
/// use resilient_http::{Error, ErrorKind, ErrorReason, StatusCode, TimeoutPhase};
///
/// let conflict = Error::builder(ErrorReason::Status)
///     .status(StatusCode::CONFLICT)
///     .json_body(&serde_json::json!({ "title": "Out of stock" }))
///     .build();
/// assert_eq!(conflict.kind(), ErrorKind::Client);
/// let problem: serde_json::Value = conflict.body_json()?;
/// assert_eq!(problem["title"], "Out of stock");
///
/// let timeout = Error::builder(ErrorReason::Timeout)
///     .timeout_phase(TimeoutPhase::Attempt)
///     .attempts(3)
///     .build();
/// assert!(timeout.is_retryable() && timeout.is_timeout());
///
/// let refused = Error::builder(ErrorReason::Connect).build();
/// assert!(refused.is_connect());
///
/// let busy = Error::builder(ErrorReason::Status)
///     .status(StatusCode::TOO_MANY_REQUESTS)
///     .header("retry-after", "2")
///     .build();
/// assert_eq!(busy.retry_after(), Some(Duration::from_secs(2)));
/// # Ok::<(), resilient_http::Error>(())
/// ```
#[must_use = "an ErrorBuilder does nothing until built"]
pub struct ErrorBuilder {
    reason: ErrorReason,
    status: Option<StatusCode>,
    phase: Option<TimeoutPhase>,
    headers: HeaderMap,
    body: Option<Bytes>,
    retry_after: Option<Duration>,
    method: Option<Method>,
    url: Option<Url>,
    attempts: u32,
    elapsed: Option<Duration>,
}

impl fmt::Debug for ErrorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorBuilder")
            .field("reason", &self.reason)
            .field("status", &self.status)
            .field("phase", &self.phase)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Error {
    /// A builder for an [`Error`] with this reason, for tests of code that
    /// handles errors; see [`ErrorBuilder`].
    pub fn builder(reason: ErrorReason) -> ErrorBuilder {
        ErrorBuilder {
            reason,
            status: None,
            phase: None,
            headers: HeaderMap::new(),
            body: None,
            retry_after: None,
            method: None,
            url: None,
            attempts: 0,
            elapsed: None,
        }
    }
}

impl ErrorBuilder {
    /// The status of an error response (reason `Status`, default 500), or of
    /// the response whose body a `Decode` error could not decode (default
    /// none). Ignored for other reasons.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// The phase of a `Timeout` (default `Total`).
    pub fn timeout_phase(mut self, phase: TimeoutPhase) -> Self {
        self.phase = Some(phase);
        self
    }

    /// A header of the error response. A `Retry-After` in seconds also sets
    /// [`retry_after`](Self::retry_after). An invalid name or value is ignored.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            if name == RETRY_AFTER
                && let Ok(secs) = value.to_str().unwrap_or_default().trim().parse::<u64>()
            {
                self.retry_after = Some(Duration::from_secs(secs));
            }
            self.headers.append(name, value);
        }
        self
    }

    /// The error response's body, as kept by the client.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// The error response's body as JSON, with `Content-Type:
    /// application/json`. A value that cannot be serialized leaves the body
    /// empty.
    pub fn json_body<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Self {
        if let Ok(bytes) = serde_json::to_vec(body) {
            self.body = Some(bytes.into());
            self.headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        self
    }

    /// When to try again ([`Error::retry_after`]).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// The method of the call.
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// The URL of the call (stored redacted, as the client does).
    pub fn url(mut self, url: &Url) -> Self {
        self.url = Some(crate::redact::url(url).into_owned());
        self
    }

    /// Attempts made (default 0).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// Time from the start of the call to the error.
    pub fn elapsed(mut self, elapsed: Duration) -> Self {
        self.elapsed = Some(elapsed);
        self
    }

    /// The error.
    pub fn build(self) -> Error {
        let made = Cow::Borrowed("built by ErrorBuilder");
        let what = match self.reason {
            ErrorReason::Status => {
                What::Status(self.status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            }
            ErrorReason::Connect => What::Connect,
            ErrorReason::Timeout => What::Timeout(self.phase.unwrap_or(TimeoutPhase::Total)),
            ErrorReason::Closed => What::Closed,
            ErrorReason::Truncated => What::Truncated,
            ErrorReason::Unprocessed => What::Unprocessed(Unprocessed::RefusedStream),
            ErrorReason::Certificate => What::Certificate(Certificate::Invalid),
            ErrorReason::Protocol => What::Protocol,
            ErrorReason::Redirect => What::Redirect,
            ErrorReason::CircuitOpen => What::CircuitOpen,
            ErrorReason::ServerPushback => What::Pushback,
            ErrorReason::RateLimited => What::RateLimited,
            ErrorReason::ConcurrencyLimited => What::ConcurrencyLimited,
            ErrorReason::Auth => What::Auth(made),
            ErrorReason::Signer => What::Signer(made),
            ErrorReason::NoEndpoints => What::NoEndpoints(made),
            ErrorReason::TooLarge => What::TooLarge(0),
            ErrorReason::Decode => What::Decode(made, self.status),
            ErrorReason::Config => What::Config(made),
        };
        let mut err = Error::new(what);
        let inner = &mut *err.inner;
        if matches!(inner.what, What::Status(_)) {
            inner.headers = Some(self.headers);
            inner.body = self.body.filter(|b| !b.is_empty());
        }
        inner.retry_after = self.retry_after;
        inner.method = self.method;
        inner.url = self.url;
        inner.attempts = self.attempts;
        inner.elapsed = self.elapsed;
        err
    }
}
