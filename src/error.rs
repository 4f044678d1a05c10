//! `Error`, `ErrorKind` and the one classifier that maps an outcome to a kind.
//!
//! Every decision the pipeline takes about a failure (retry it? blame the
//! endpoint's breaker? report a timeout phase?) starts from [`classify`] here.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use crate::timeout::TimeoutPhase;

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The boxed error that [`TokenProvider`](crate::TokenProvider)s and
/// [`Resolver`](crate::Resolver)s return: any error, `Send + Sync`. A `String`
/// or `&str` converts into it with `?` or `.into()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

mod build;

pub use self::build::ErrorBuilder;

/// The class of a failure: what went wrong, and so what can be done about it.
///
/// | kind | what | retried by default |
/// |---|---|---|
/// | `Retryable` | DNS/connect failure, reset or early close, any timeout, 408, 429, 502, 503, 504 | yes |
/// | `Server` | every other 5xx, and a peer that does not speak HTTP | only with `retry_server_errors(true)` |
/// | `Client` | every other 4xx, a 3xx that was not followed, a redirect loop | no |
/// | `Rejected` | refused locally, nothing sent: open circuit, server pushback pause, rate or concurrency limit, no token, a failed signer, no endpoint | no |
/// | `Decode` | a 2xx that cannot be used as asked: wrong type, not UTF-8, too large | no |
/// | `Config` | invalid URL, header, option or unserializable body; a TLS certificate refused by either side | no |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A transient failure that another attempt may not meet.
    Retryable,
    /// The server failed (a 5xx other than 502/503/504, or an invalid HTTP response).
    Server,
    /// The request was refused by the server as the client's fault (4xx), or a
    /// redirect was not followed.
    Client,
    /// Refused locally before anything was sent: an open circuit breaker, a
    /// server pushback pause, a rate limit or a concurrency limit that cannot
    /// be met within the deadline, no token (`Auth`), a failed signer, or no
    /// endpoint ([`ErrorReason`] names which).
    Rejected,
    /// A successful response whose body could not be used as asked.
    Decode,
    /// Invalid configuration or request: URL, header, option, body.
    Config,
}

impl ErrorKind {
    /// A short lowercase name for logs and metrics (`"retryable"`, `"server"`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::Server => "server",
            Self::Client => "client",
            Self::Rejected => "rejected",
            Self::Decode => "decode",
            Self::Config => "config",
        }
    }

    /// Whether an outcome of this kind is the endpoint's fault and so counts as a
    /// failure for its circuit breaker: `Retryable` and `Server` do; `Client`,
    /// `Decode` and `Config` do not (the endpoint answered, or was never asked).
    pub(crate) const fn is_endpoint_failure(self) -> bool {
        matches!(self, Self::Retryable | Self::Server)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call failed: the cause behind its [`ErrorKind`], stable enough to
/// match on and to use as a metric label ([`as_str`](Self::as_str)).
///
/// The kind says what to do about a failure; the reason says what happened.
/// [`Error::reason`] returns it.
///
/// | reason | kind |
/// |---|---|
/// | `Status` | by status: see [`ErrorKind`] |
/// | `Connect`, `Timeout`, `Closed`, `Truncated`, `Unprocessed` | `Retryable` |
/// | `Protocol` | `Server` |
/// | `Redirect` | `Client` |
/// | `CircuitOpen`, `ServerPushback`, `RateLimited`, `ConcurrencyLimited`, `Auth`, `Signer`, `NoEndpoints` | `Rejected` |
/// | `TooLarge`, `Decode` | `Decode` |
/// | `Config`, `Certificate` | `Config` |
///
/// # Examples
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// use resilient_http::{ApiClient, ErrorReason, Token};
///
/// let client = ApiClient::builder()
///     .base_url("http://127.0.0.1:9/")
///     .token_provider(|| async { Err::<Token, _>("vault is sealed".into()) })
///     .build()?;
/// let err = client.get("x").send().await.unwrap_err();
/// assert_eq!(err.reason(), ErrorReason::Auth);
/// assert_eq!(err.reason().as_str(), "auth");
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorReason {
    /// The server answered with a status that is not 2xx; see [`Error::status`].
    Status,
    /// The connection could not be made (DNS, refused, a TLS handshake that
    /// failed for a reason other than a certificate).
    Connect,
    /// A timeout fired; see [`Error::timeout_phase`].
    Timeout,
    /// The connection was closed or reset before any response arrived: the
    /// server may or may not have processed the request (on a reused
    /// connection, typically a keep-alive race with the server closing it).
    Closed,
    /// The connection was closed or reset after the response began (mid-body,
    /// or short of its `Content-Length`): the server answered.
    Truncated,
    /// The server proved it did not process the request: an HTTP/2 stream it
    /// refused (`REFUSED_STREAM`) or one above its `GOAWAY`'s last stream.
    /// Safe to send again, whatever the method; see [`Error::is_unprocessed`].
    Unprocessed,
    /// The peer sent bytes that are not a valid HTTP response.
    Protocol,
    /// Too many redirects, or a redirect loop.
    Redirect,
    /// An open (or saturated half-open) circuit breaker refused the call.
    CircuitOpen,
    /// The endpoint is paused by a server's `Retry-After` (a 429 or 503 to
    /// an earlier call) for longer than the call's deadline; see
    /// [`Error::is_server_pushback`].
    ServerPushback,
    /// The client's rate limit refused the call.
    RateLimited,
    /// No concurrency permit could be had within the deadline.
    ConcurrencyLimited,
    /// The token provider could not give a token.
    Auth,
    /// The [`RequestSigner`](crate::RequestSigner) failed; nothing was sent.
    Signer,
    /// A client with endpoints had none to send to.
    NoEndpoints,
    /// A 2xx body was larger than `max_response_bytes`.
    TooLarge,
    /// A 2xx body could not be decoded as asked.
    Decode,
    /// An invalid option, URL, header or body.
    Config,
    /// A TLS certificate was refused: the server's (unknown issuer, name
    /// mismatch, expired, revoked...) or the client's own, refused by the
    /// server. The message names which. Kind `Config`: another attempt meets
    /// the same certificate, so it is not retried and does not count against
    /// the circuit breaker; [`Error::is_connect`] is true.
    ///
    /// One case cannot always be told: in TLS 1.3 the server checks the
    /// client's certificate after the client's side of the handshake is done,
    /// so its refusal can reach a fresh connection before the request is
    /// written (on a multi-thread runtime the connection's task may read it
    /// first). The transport then reports only that the connection closed
    /// before the request was sent: `Closed`, retried as unsent. The server's
    /// log names the refused certificate; TLS 1.2 refuses inside the
    /// handshake and is always told.
    Certificate,
}

impl ErrorReason {
    /// A short lowercase name for logs and metric labels (`"connect"`,
    /// `"circuit_open"`, ...). These names do not change.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Truncated => "truncated",
            Self::Unprocessed => "unprocessed",
            Self::Protocol => "protocol",
            Self::Redirect => "redirect",
            Self::CircuitOpen => "circuit_open",
            Self::ServerPushback => "server_pushback",
            Self::RateLimited => "rate_limited",
            Self::ConcurrencyLimited => "concurrency_limited",
            Self::Auth => "auth",
            Self::Signer => "signer",
            Self::NoEndpoints => "no_endpoints",
            Self::TooLarge => "too_large",
            Self::Decode => "decode",
            Self::Config => "config",
            Self::Certificate => "certificate",
        }
    }
}

impl fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What failed: the one stored fact of an error. Kind, reason, status,
/// timeout phase and whether it was a connect failure all derive from it.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum What {
    #[error("server answered {0}")]
    Status(StatusCode),
    #[error("could not connect")]
    Connect,
    #[error("{0} timeout elapsed")]
    Timeout(TimeoutPhase),
    #[error("connection closed before a response arrived")]
    Closed,
    #[error("connection closed before the response was complete")]
    Truncated,
    #[error("the server did not process the request ({0}); it is safe to send again")]
    Unprocessed(Unprocessed),
    #[error("peer sent an invalid HTTP response")]
    Protocol,
    #[error("too many redirects or a redirect loop")]
    Redirect,
    #[error("circuit breaker is open")]
    CircuitOpen,
    #[error("endpoint paused by the server's Retry-After")]
    Pushback,
    #[error("rate limit would be exceeded")]
    RateLimited,
    #[error("concurrency limit reached")]
    ConcurrencyLimited,
    #[error("could not get a token: {0}")]
    Auth(Cow<'static, str>),
    #[error("could not sign the request: {0}")]
    Signer(Cow<'static, str>),
    #[error("no endpoint available: {0}")]
    NoEndpoints(Cow<'static, str>),
    #[error("response body is larger than {0} bytes")]
    TooLarge(usize),
    /// What failed, and the status of the response whose body it was.
    #[error("could not decode the response body: {0}")]
    Decode(Cow<'static, str>, Option<StatusCode>),
    #[error("invalid configuration: {0}")]
    Config(Cow<'static, str>),
    #[error("TLS certificate refused: {0}")]
    Certificate(Certificate),
}

/// Which certificate failed a TLS handshake, and why: the reason a
/// [`What::Certificate`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "_tls"), allow(dead_code))]
pub(crate) enum Certificate {
    /// The server's certificate chains to no trusted root.
    UnknownIssuer,
    /// The server's certificate is not valid for the name called.
    NameMismatch,
    /// The server's certificate has expired.
    Expired,
    /// The server's certificate is not valid yet.
    NotYetValid,
    /// The server's certificate was revoked.
    Revoked,
    /// The server's certificate is invalid for another reason (bad
    /// encoding, signature, purpose...).
    Invalid,
    /// The server refused the client's certificate, or its absence.
    ClientRefused,
}

impl fmt::Display for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownIssuer => {
                "the server's certificate is not issued by a trusted CA (unknown issuer)"
            }
            Self::NameMismatch => {
                "the server's certificate is not valid for the name called (name mismatch)"
            }
            Self::Expired => "the server's certificate has expired",
            Self::NotYetValid => "the server's certificate is not valid yet",
            Self::Revoked => "the server's certificate was revoked",
            Self::Invalid => "the server's certificate is invalid",
            Self::ClientRefused => "the server refused the client certificate (or its absence)",
        })
    }
}

impl What {
    /// The classification table, for everything but the transport's errors
    /// (which [`classify`] turns into a `What` first).
    pub(crate) const fn kind(&self) -> ErrorKind {
        match self {
            Self::Status(status) => status_kind(*status),
            Self::Connect
            | Self::Timeout(_)
            | Self::Closed
            | Self::Truncated
            | Self::Unprocessed(_) => ErrorKind::Retryable,
            Self::Protocol => ErrorKind::Server,
            Self::Redirect => ErrorKind::Client,
            Self::CircuitOpen
            | Self::Pushback
            | Self::RateLimited
            | Self::ConcurrencyLimited
            | Self::Auth(_)
            | Self::Signer(_)
            | Self::NoEndpoints(_) => ErrorKind::Rejected,
            Self::TooLarge(_) | Self::Decode(..) => ErrorKind::Decode,
            Self::Config(_) | Self::Certificate(_) => ErrorKind::Config,
        }
    }

    pub(crate) const fn reason(&self) -> ErrorReason {
        match self {
            Self::Status(_) => ErrorReason::Status,
            Self::Connect => ErrorReason::Connect,
            Self::Timeout(_) => ErrorReason::Timeout,
            Self::Closed => ErrorReason::Closed,
            Self::Truncated => ErrorReason::Truncated,
            Self::Unprocessed(_) => ErrorReason::Unprocessed,
            Self::Protocol => ErrorReason::Protocol,
            Self::Redirect => ErrorReason::Redirect,
            Self::CircuitOpen => ErrorReason::CircuitOpen,
            Self::Pushback => ErrorReason::ServerPushback,
            Self::RateLimited => ErrorReason::RateLimited,
            Self::ConcurrencyLimited => ErrorReason::ConcurrencyLimited,
            Self::Auth(_) => ErrorReason::Auth,
            Self::Signer(_) => ErrorReason::Signer,
            Self::NoEndpoints(_) => ErrorReason::NoEndpoints,
            Self::TooLarge(_) => ErrorReason::TooLarge,
            Self::Decode(..) => ErrorReason::Decode,
            Self::Config(_) => ErrorReason::Config,
            Self::Certificate(_) => ErrorReason::Certificate,
        }
    }

    const fn phase(&self) -> Option<TimeoutPhase> {
        match self {
            Self::Timeout(phase) => Some(*phase),
            _ => None,
        }
    }

    /// Whether the connection could not be made. A refused certificate is
    /// one, also when a TLS 1.3 server's refusal arrives after the request
    /// was written: the server refused it before acting on it.
    const fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Connect | Self::Timeout(TimeoutPhase::Connect) | Self::Certificate(_)
        )
    }
}

/// How the server proved it did not process a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unprocessed {
    /// `RST_STREAM(REFUSED_STREAM)`: "guaranteed to be safe to retry" (RFC 9113 §8.7).
    RefusedStream,
    /// A stream above the last stream id of the server's `GOAWAY` (RFC 9113 §6.8).
    GoAway,
}

impl fmt::Display for Unprocessed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RefusedStream => "HTTP/2 stream refused",
            Self::GoAway => "HTTP/2 stream above the server's GOAWAY",
        })
    }
}

/// The outcome of one attempt (or one local step) that is not a success.
#[derive(Debug)]
pub(crate) enum Outcome<'a> {
    /// The server answered with a status that is not 2xx.
    Status(StatusCode),
    /// The transport failed.
    Transport(&'a reqwest::Error),
    /// One of our own timers fired (attempt or total).
    Timeout(TimeoutPhase),
}

/// Classifies an outcome: what failed, from which its [`ErrorKind`] follows
/// by the table on [`ErrorKind`]. Every kind decision in the crate starts here.
///
/// How transport failures map: a certificate refused by either side (a
/// `rustls::Error` in the cause chain, or OpenSSL's wording of one with
/// `native-tls`: the server's certificate invalid, or the server's alert that
/// it refused ours, also after the request was written) is `Certificate`,
/// kind `Config`; DNS failure, connection refused
/// and any other TLS handshake failure are `Connect`; reqwest's connect
/// timeout is `Timeout(Connect)` and its read timeout `Timeout(Read)`; a
/// connection closed or reset before a response is `Closed`, after the
/// response began (mid-body, or short of its Content-Length) `Truncated`;
/// bytes that are not
/// HTTP or a header block too large are `Protocol` (the peer is broken, not
/// busy); an HTTP/2 stream the server refused, or one above the last stream id
/// of its `GOAWAY`, is `Unprocessed` (provably not processed); too many
/// redirects is `Redirect`; a request reqwest cannot build is `Config`.
pub(crate) fn classify(outcome: &Outcome<'_>) -> What {
    match outcome {
        Outcome::Status(status) => What::Status(*status),
        Outcome::Timeout(phase) => What::Timeout(*phase),
        Outcome::Transport(err) => transport_what(err),
    }
}

pub(crate) const fn status_kind(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        408 | 429 | 502 | 503 | 504 => ErrorKind::Retryable,
        500..=599 => ErrorKind::Server,
        // 1xx never reaches us as a final status; 3xx was not followed.
        _ => ErrorKind::Client,
    }
}

fn transport_what(err: &reqwest::Error) -> What {
    if err.is_builder() {
        return What::Config(Cow::Borrowed("invalid request"));
    }
    if err.is_redirect() {
        return What::Redirect;
    }
    if let Some(cert) = certificate_failure(err) {
        return What::Certificate(cert);
    }
    if err.is_timeout() {
        return What::Timeout(if err.is_connect() {
            TimeoutPhase::Connect
        } else {
            TimeoutPhase::Read
        });
    }
    if err.is_connect() {
        return What::Connect;
    }
    // Walk the cause chain: h2 tells a stream the server never processed,
    // hyper a broken peer from a closed connection.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && h2.is_remote()
        {
            // h2 gives this error only to the streams above the GOAWAY's
            // last stream id (those below fail as a closed connection).
            if h2.is_go_away() {
                return What::Unprocessed(Unprocessed::GoAway);
            }
            if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return What::Unprocessed(Unprocessed::RefusedStream);
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_parse() || h.is_parse_status())
        {
            return What::Protocol;
        }
        // hyper reports broken framing (a bad chunk-size line) as invalid
        // data or input; a closed or reset connection is another kind.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            )
        {
            return What::Protocol;
        }
        cause = e.source();
    }
    What::Closed
}

/// The certificate failure in `err`'s cause chain, if any. An `io::Error`'s
/// `source()` skips the error it wraps, so its `get_ref()` is looked at too.
fn certificate_failure(err: &(dyn std::error::Error + 'static)) -> Option<Certificate> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        #[cfg(feature = "_rustls")]
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return tls_certificate(tls);
        }
        #[cfg(feature = "native-tls")]
        if let Some(cert) = openssl_certificate(&e.to_string()) {
            return Some(cert);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(cert) = certificate_failure(inner)
        {
            return Some(cert);
        }
        cause = e.source();
    }
    None
}

/// Which certificate failure an OpenSSL message (feature `native-tls` on
/// Linux) reports, read from its wording as OpenSSL 1.1 and 3 print it;
/// `None` for any other message. Other platforms' libraries word theirs
/// differently: their certificate failures stay `Connect`.
#[cfg(feature = "native-tls")]
fn openssl_certificate(message: &str) -> Option<Certificate> {
    let message = message.to_ascii_lowercase();
    if message.contains("certificate verify failed") {
        let why = |words: &[&str]| words.iter().any(|w| message.contains(w));
        return Some(
            if why(&["unable to get local issuer", "self-signed", "self signed"]) {
                Certificate::UnknownIssuer
            } else if why(&["hostname mismatch", "ip address mismatch"]) {
                Certificate::NameMismatch
            } else if why(&["certificate has expired"]) {
                Certificate::Expired
            } else if why(&["certificate is not yet valid"]) {
                Certificate::NotYetValid
            } else if why(&["certificate revoked"]) {
                Certificate::Revoked
            } else {
                Certificate::Invalid
            },
        );
    }
    let refused = [
        "alert certificate required",
        "alert bad certificate",
        "alert unknown ca",
        "alert certificate expired",
        "alert certificate revoked",
        "alert certificate unknown",
        "alert unsupported certificate",
        "alert access denied",
    ];
    refused
        .iter()
        .any(|alert| message.contains(alert))
        .then_some(Certificate::ClientRefused)
}

/// Which certificate failure a rustls error reports; `None` for a handshake
/// that failed for another reason (those stay `Connect`, retryable).
#[cfg(feature = "_rustls")]
fn tls_certificate(err: &rustls::Error) -> Option<Certificate> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};
    match err {
        rustls::Error::InvalidCertificate(cert) => Some(match cert {
            Cert::UnknownIssuer => Certificate::UnknownIssuer,
            Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                Certificate::NameMismatch
            }
            Cert::Expired | Cert::ExpiredContext { .. } => Certificate::Expired,
            Cert::NotValidYet | Cert::NotValidYetContext { .. } => Certificate::NotYetValid,
            Cert::Revoked => Certificate::Revoked,
            _ => Certificate::Invalid,
        }),
        rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::CertificateUnknown
            | Alert::UnknownCA
            | Alert::CertificateRequired
            | Alert::AccessDenied,
        ) => Some(Certificate::ClientRefused),
        _ => None,
    }
}

/// The error of a call: what failed, classified, with the context to log it.
///
/// The returned error is the last attempt's error, enriched with the number of
/// attempts, the elapsed time, the (redacted) URL and, for error responses, the
/// status, the headers, the body (kept up to
/// [`max_error_body_bytes`](crate::ApiClientBuilder::max_error_body_bytes),
/// 64 KiB by default; [`body_json`](Self::body_json) decodes it) and any
/// `Retry-After`. There is no "retries exhausted" wrapper hiding the real
/// cause; when the circuit breaker or the retry budget cut the retries short,
/// `Display` says so ("3 attempts allowed, 1 made: circuit opened").
///
/// `Display` is one log line; neither it nor `Debug` ever shows credentials.
///
/// # Examples
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::any())
/// #     .respond_with(wiremock::ResponseTemplate::new(404).set_body_string("no such user"))
/// #     .mount(&server).await;
/// use resilient_http::{ApiClient, ErrorKind, StatusCode};
///
/// let client = ApiClient::builder().base_url(server.uri()).build()?;
/// let err = client.get("users/42").send().await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Client);
/// assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
/// assert_eq!(err.body_text(), Some("no such user"));
/// assert!(!err.is_retryable());
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Clone)]
struct Inner {
    what: What,
    /// Shared, so that an error can be handed to every caller of a
    /// coalesced call ([`Error::share`]).
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    method: Option<Method>,
    url: Option<Url>,
    attempts: u32,
    elapsed: Option<Duration>,
    retry_after: Option<Duration>,
    /// An error response's body, up to `max_error_body_bytes`.
    body: Option<Bytes>,
    /// `body` decoded lossily, made on first use when it is not UTF-8.
    lossy: OnceLock<Box<str>>,
    headers: Option<HeaderMap>,
    /// Why the retries stopped before `max_attempts`, when a layer cut them.
    cut: Option<Cut>,
    /// A redirect led the attempt to another origin, whose failure this is:
    /// nothing the endpoint the attempt went to did.
    elsewhere: bool,
}

/// Retries cut short by a layer other than the policy: how many attempts the
/// policy allowed, and which layer stopped them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    pub(crate) allowed: u32,
    pub(crate) by: CutBy,
}

/// The layer that ended a retry loop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CutBy {
    /// The endpoint's circuit breaker opened.
    CircuitOpen,
    /// The shared retry budget had nothing left.
    Budget,
    /// The rate limit could not admit the retry within the deadline.
    RateLimit,
    /// A streamed request body sent more than its replay buffer (this many
    /// bytes): it cannot be sent again.
    ReplayBuffer(usize),
    /// The streamed request body's source failed.
    BodySource,
}

impl fmt::Display for CutBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CircuitOpen => f.write_str("circuit opened"),
            Self::Budget => f.write_str("retry budget exhausted"),
            Self::RateLimit => f.write_str("rate limit reached"),
            Self::ReplayBuffer(bytes) => write!(
                f,
                "the request body streamed past its {bytes}-byte replay buffer, \
                 so it cannot be sent again"
            ),
            Self::BodySource => f.write_str("the request body stream failed"),
        }
    }
}

impl Error {
    fn new(what: What) -> Self {
        Self {
            inner: Box::new(Inner {
                what,
                source: None,
                method: None,
                url: None,
                attempts: 0,
                elapsed: None,
                retry_after: None,
                body: None,
                lossy: OnceLock::new(),
                headers: None,
                cut: None,
                elsewhere: false,
            }),
        }
    }

    /// An invalid configuration or request.
    pub(crate) fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(What::Config(message.into()))
    }

    /// An invalid configuration caused by `source`.
    pub(crate) fn config_from(message: &'static str, source: impl Into<BoxError>) -> Self {
        Self::config(message).with_source(source)
    }

    /// A failed transport, classified.
    pub(crate) fn transport(err: reqwest::Error) -> Self {
        let what = classify(&Outcome::Transport(&err));
        // reqwest's message embeds the URL unredacted; ours carries it redacted.
        Self::new(what).with_source(err.without_url())
    }

    /// A transport failure while reading a body, after the response began: a
    /// closed connection is then `Truncated`, not `Closed`.
    pub(crate) fn transport_mid_body(err: reqwest::Error) -> Self {
        let mut err = Self::transport(err);
        if matches!(err.inner.what, What::Closed) {
            err.inner.what = What::Truncated;
        }
        err
    }

    /// One of our own timers fired.
    pub(crate) fn timeout(phase: TimeoutPhase) -> Self {
        Self::new(classify(&Outcome::Timeout(phase)))
    }

    /// A non-2xx response (`body`: what was kept of it).
    pub(crate) fn from_response(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        retry_after: Option<Duration>,
    ) -> Self {
        let mut err = Self::new(classify(&Outcome::Status(status)));
        err.inner.retry_after = retry_after;
        if !body.is_empty() {
            err.inner.body = Some(body);
        }
        err.inner.headers = Some(headers);
        err
    }

    /// A non-2xx response, from a borrowed body (copied).
    #[cfg(test)]
    pub(crate) fn from_status(
        status: StatusCode,
        headers: HeaderMap,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Self {
        Self::from_response(status, headers, Bytes::copy_from_slice(body), retry_after)
    }

    /// A body that cannot be used as asked.
    pub(crate) fn decode(detail: impl Into<Cow<'static, str>>, source: Option<BoxError>) -> Self {
        let mut err = Self::new(What::Decode(detail.into(), None));
        err.inner.source = source.map(Arc::from);
        err
    }

    /// Keeps, on a `Decode` error, the status of the response whose body it was.
    pub(crate) fn with_decoded_status(mut self, status: StatusCode) -> Self {
        if let What::Decode(_, kept) = &mut self.inner.what {
            *kept = Some(status);
        }
        self
    }

    /// The request signer failed; nothing was sent.
    pub(crate) fn signer(why: impl Into<Cow<'static, str>>) -> Self {
        Self::new(What::Signer(why.into()))
    }

    /// Records that `by` ended the retries before the policy's `allowed` attempts.
    pub(crate) fn with_cut(mut self, allowed: u32, by: CutBy) -> Self {
        self.inner.cut = Some(Cut { allowed, by });
        self
    }

    /// A 2xx body larger than `max_response_bytes`.
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(What::TooLarge(limit))
    }

    /// The breaker refused the call; `retry_after` is the time to the next probe.
    pub(crate) fn circuit_open(retry_after: Option<Duration>) -> Self {
        let mut err = Self::new(What::CircuitOpen);
        err.inner.retry_after = retry_after;
        err
    }

    /// The endpoint is paused by a server's `Retry-After`; `retry_after` is
    /// the time left in the pause.
    pub(crate) fn pushback(retry_after: Duration) -> Self {
        let mut err = Self::new(What::Pushback);
        err.inner.retry_after = Some(retry_after);
        err
    }

    /// The rate limit refused the call; `retry_after` is when a permit frees up.
    pub(crate) fn rate_limited(retry_after: Duration) -> Self {
        let mut err = Self::new(What::RateLimited);
        err.inner.retry_after = Some(retry_after);
        err
    }

    /// No concurrency permit could be had within the deadline.
    pub(crate) fn concurrency_limited() -> Self {
        Self::new(What::ConcurrencyLimited)
    }

    /// A client with endpoints has none to send to (`why`: the resolver's
    /// error, or that it has not answered yet).
    pub(crate) fn no_endpoints(why: impl Into<Cow<'static, str>>) -> Self {
        Self::new(What::NoEndpoints(why.into()))
    }

    /// No token could be had for the call (nothing was sent).
    pub(crate) fn auth(why: impl Into<Cow<'static, str>>) -> Self {
        Self::new(What::Auth(why.into()))
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(Arc::from(source.into()));
        self
    }

    /// A copy of this error, its source shared, for each caller of a
    /// coalesced call.
    pub(crate) fn share(&self) -> Self {
        Self {
            inner: Box::new((*self.inner).clone()),
        }
    }

    /// Marks the failure as another origin's (`yes`): a redirect target's.
    pub(crate) fn with_elsewhere(mut self, yes: bool) -> Self {
        self.inner.elsewhere = yes;
        self
    }

    /// Whether a redirect target on another origin failed, not the endpoint
    /// the attempt went to.
    pub(crate) fn is_from_elsewhere(&self) -> bool {
        self.inner.elsewhere
    }

    /// Adds the call's context: method, URL (stored redacted), attempts, elapsed.
    pub(crate) fn with_call(
        mut self,
        method: &Method,
        url: Option<&Url>,
        attempts: u32,
        elapsed: Duration,
    ) -> Self {
        let inner = &mut *self.inner;
        inner.method = Some(method.clone());
        if inner.url.is_none() {
            inner.url = url.map(|u| crate::redact::url(u).into_owned());
        }
        inner.attempts = attempts;
        inner.elapsed = Some(elapsed);
        self
    }

    /// Adds the URL alone (stored redacted).
    pub(crate) fn with_url(mut self, url: &Url) -> Self {
        self.inner.url = Some(crate::redact::url(url).into_owned());
        self
    }

    /// The class of failure.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.inner.what.kind()
    }

    /// Why the call failed, as a stable value to match on or label metrics
    /// with; see [`ErrorReason`].
    #[must_use]
    pub fn reason(&self) -> ErrorReason {
        self.inner.what.reason()
    }

    /// Whether the failure is transient (`ErrorKind::Retryable`). Whether the
    /// client actually retried also depends on the method and the policy.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Retryable
    }

    /// Whether a timeout fired; [`timeout_phase`](Self::timeout_phase) says which.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        self.timeout_phase().is_some()
    }

    /// The limit that was binding when a timeout fired.
    #[must_use]
    pub fn timeout_phase(&self) -> Option<TimeoutPhase> {
        self.inner.what.phase()
    }

    /// Whether the connection could not be made (DNS, refused, TLS handshake,
    /// connect timeout, a refused certificate). Nothing reached the server's
    /// application: a TLS 1.3 server may refuse the client's certificate only
    /// after the request was written, but it did not act on it.
    #[must_use]
    pub fn is_connect(&self) -> bool {
        self.inner.what.is_connect()
    }

    /// Whether an open (or saturated half-open) circuit breaker refused the call.
    #[must_use]
    pub fn is_circuit_open(&self) -> bool {
        matches!(self.inner.what, What::CircuitOpen)
    }

    /// Whether the call was refused because its endpoint is paused by the
    /// server: a 429 or 503 with `Retry-After` to any call of this client (or
    /// a clone) pauses that endpoint (scheme, host, port) until the time
    /// given, capped at the retry policy's
    /// [`max_retry_after`](crate::RetryPolicy::max_retry_after).
    ///
    /// During a pause nothing is sent to the endpoint: a client with several
    /// endpoints sends to another one; otherwise a call waits for the pause
    /// to end when that fits its deadline, and fails at once with this error
    /// (kind [`ErrorKind::Rejected`], 0 attempts if it was the first) when it
    /// does not. [`retry_after`](Self::retry_after) is the time left in the
    /// pause.
    ///
    /// Why: a server that says "come back in 30 s" says it to the service,
    /// not to one request; every other call sent meanwhile would only meet
    /// the same answer and add to the load the server is shedding.
    #[must_use]
    pub fn is_server_pushback(&self) -> bool {
        matches!(self.inner.what, What::Pushback)
    }

    /// Whether the client-side rate limit refused the call.
    #[must_use]
    pub fn is_rate_limited(&self) -> bool {
        matches!(self.inner.what, What::RateLimited)
    }

    /// Whether no concurrency permit could be had within the deadline.
    #[must_use]
    pub fn is_concurrency_limited(&self) -> bool {
        matches!(self.inner.what, What::ConcurrencyLimited)
    }

    /// Whether the server provably did not process the request, so it is safe
    /// to send again whatever the method (a POST included). True for exactly:
    ///
    /// - a connect failure ([`is_connect`](Self::is_connect)): nothing reached
    ///   the server;
    /// - a local rejection ([`ErrorKind::Rejected`]): nothing was sent;
    /// - an HTTP/2 stream the server refused (`REFUSED_STREAM`) or that was
    ///   above the last stream id of its `GOAWAY` ([`ErrorReason::Unprocessed`]).
    ///
    /// A timeout, or a connection reset or closed after the request was
    /// written, proves nothing: the server may have acted on it. The client
    /// retries unprocessed failures for every method (within the attempts and
    /// the deadline), and HTTP/2 refusals do not count against the breaker.
    #[must_use]
    pub fn is_unprocessed(&self) -> bool {
        self.is_connect()
            || matches!(self.kind(), ErrorKind::Rejected)
            || matches!(self.inner.what, What::Unprocessed(_))
    }

    /// The status of an error response, or of the response whose body could
    /// not be decoded (a [`Decode`](ErrorKind::Decode) error).
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        match self.inner.what {
            What::Status(status) | What::Decode(_, Some(status)) => Some(status),
            _ => None,
        }
    }

    /// The headers of an error response.
    #[must_use]
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.inner.headers.as_ref()
    }

    /// Attempts started, including one whose connection failed; 0 for a call
    /// refused locally before its first attempt.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.inner.attempts
    }

    /// Time from the start of the call to the error.
    #[must_use]
    pub fn elapsed(&self) -> Option<Duration> {
        self.inner.elapsed
    }

    /// When to try again: the server's `Retry-After`, the time until an open
    /// breaker's next probe, the time left in a server pushback pause, or until
    /// the rate limit frees a permit.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// An error response's body as text: all of what was kept (up to
    /// [`max_error_body_bytes`](crate::ApiClientBuilder::max_error_body_bytes),
    /// 64 KiB by default), lossily decoded as UTF-8. `None` when the response
    /// had no body. Never part of `Display` or `Debug`.
    #[must_use]
    pub fn body_text(&self) -> Option<&str> {
        let body = self.inner.body.as_ref()?;
        match std::str::from_utf8(body) {
            Ok(text) => Some(text),
            Err(_) => Some(
                self.inner
                    .lossy
                    .get_or_init(|| String::from_utf8_lossy(body).into()),
            ),
        }
    }

    /// An error response's body as it came, up to
    /// [`max_error_body_bytes`](crate::ApiClientBuilder::max_error_body_bytes)
    /// (64 KiB by default). `None` when the response had no body.
    #[must_use]
    pub fn body_bytes(&self) -> Option<&Bytes> {
        self.inner.body.as_ref()
    }

    /// Decodes an error response's JSON body as `T`: a problem+json
    /// document, a service's own error type.
    ///
    /// # Errors
    ///
    /// A [`Decode`](ErrorKind::Decode) error with this error's status, method
    /// and URL when there is no body (not an error response, or an empty body),
    /// or when it is not JSON of `T`'s shape; its message names the serde
    /// category and the path to the failing field, never the values.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(409).set_body_raw(
    /// #         r#"{"type":"/errors/out-of-stock","title":"Out of stock","sku":"B-7"}"#,
    /// #         "application/problem+json"))
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, StatusCode};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Problem { title: String, sku: String }
    ///
    /// let client = ApiClient::builder().base_url(server.uri()).build()?;
    /// let err = client.post("orders").send().await.unwrap_err();
    /// assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    /// let problem: Problem = err.body_json()?;
    /// assert_eq!((problem.title.as_str(), problem.sku.as_str()), ("Out of stock", "B-7"));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn body_json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let decoded = match &self.inner.body {
            Some(body) => decode_json(body),
            None => Err(Self::decode("the error response has no body", None)),
        };
        decoded.map_err(|err| {
            let mut err = match self.status() {
                Some(status) => err.with_decoded_status(status),
                None => err,
            };
            let inner = &mut *err.inner;
            inner.method.clone_from(&self.inner.method);
            inner.url.clone_from(&self.inner.url);
            inner.attempts = self.inner.attempts;
            inner.elapsed = self.inner.elapsed;
            err
        })
    }

    /// The URL of the call, with its password and credential-like query values removed.
    #[must_use]
    pub fn url(&self) -> Option<&Url> {
        self.inner.url.as_ref()
    }

    /// The method of the call.
    #[must_use]
    pub fn method(&self) -> Option<&Method> {
        self.inner.method.as_ref()
    }

    /// A short name of the failure for the `error.type` tracing field and metrics:
    /// the status code for error responses, else a lowercase word.
    pub(crate) fn type_name(&self) -> Cow<'static, str> {
        match &self.inner.what {
            What::Status(s) => Cow::Owned(s.as_u16().to_string()),
            what => Cow::Borrowed(what.reason().as_str()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        match (&inner.method, &inner.url) {
            (Some(m), Some(u)) => write!(f, "{m} {u}: ")?,
            (None, Some(u)) => write!(f, "{u}: ")?,
            (Some(m), None) => write!(f, "{m}: ")?,
            (None, None) => {}
        }
        write!(f, "{}", inner.what)?;
        if let Some(e) = &inner.source {
            let kind = inner.what.kind();
            if kind == ErrorKind::Config && !matches!(inner.what, What::Certificate(_)) {
                write!(f, " ({e})")?;
            } else if kind == ErrorKind::Decode {
                // A decoder's message can quote the body (a mistyped token
                // field, say): it stays in `source()`, out of the log line.
            } else {
                // The transport's own wording is layered ("error sending
                // request" > "client error" > ...); its root cause is the part
                // worth a log line ("Connection refused (os error 111)").
                let mut root: &(dyn std::error::Error + 'static) = &**e;
                while let Some(next) = root.source() {
                    root = next;
                }
                write!(f, " ({root})")?;
            }
        }
        if inner.attempts > 0 || inner.elapsed.is_some() {
            let plural = if inner.attempts == 1 { "" } else { "s" };
            write!(f, " after {} attempt{plural}", inner.attempts)?;
            if let Some(el) = inner.elapsed {
                write!(f, " in {}ms", el.as_millis())?;
            }
        }
        if let Some(cut) = inner.cut {
            write!(
                f,
                "; {} attempts allowed, {} made: {}",
                cut.allowed, inner.attempts, cut.by
            )?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let mut d = f.debug_struct("Error");
        d.field("kind", &inner.what.kind())
            .field("what", &inner.what);
        if let Some(m) = &inner.method {
            d.field("method", m);
        }
        if let Some(u) = &inner.url {
            d.field("url", &u.as_str());
        }
        d.field("attempts", &inner.attempts);
        if let Some(e) = &inner.elapsed {
            d.field("elapsed", e);
        }
        if let Some(r) = &inner.retry_after {
            d.field("retry_after", r);
        }
        if let Some(cut) = &inner.cut {
            d.field("cut", cut);
        }
        match &inner.source {
            // A decoder's message can quote the body: kept to `source()`.
            Some(_) if inner.what.kind() == ErrorKind::Decode => {
                d.field(
                    "source",
                    &format_args!("(the decoder's message: see source())"),
                );
            }
            Some(s) => {
                d.field("source", s);
            }
            None => {}
        }
        d.finish_non_exhaustive()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Decodes a JSON body as `T`. On failure: a `Decode` error whose message
/// names the serde category, the path to the failing field (field names and
/// indexes only) and the position, but never a value; serde's own message,
/// which can quote the body, stays in `source()`.
///
/// The body is decoded at full speed first; only a body that fails is decoded
/// again, tracking the path (which copies every key it meets), to name where.
pub(crate) fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    // No body (a 204) is JSON `null`: `()` and `Option<T>` decode from it.
    let body = if body.is_empty() { b"null" } else { body };
    serde_json::from_slice(body).map_err(|first| decode_json_error::<T>(body, first))
}

/// The `Decode` error of a body that failed to decode as `T` with `first`.
#[cold]
fn decode_json_error<T: DeserializeOwned>(body: &[u8], first: serde_json::Error) -> Error {
    let mut de = serde_json::Deserializer::from_slice(body);
    let (path, inner) = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(err) => (json_path(err.path()), err.into_inner()),
        // Trailing bytes after the value are an error too, as with `from_slice`.
        Ok(_) => match de.end() {
            Err(err) => ("the top level".to_owned(), err),
            // Decoded this time (a `Deserialize` that is not deterministic):
            // the first failure stands, without a path.
            Ok(()) => ("an unknown place".to_owned(), first),
        },
    };
    let category = match inner.classify() {
        serde_json::error::Category::Io => "I/O",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Data => "type",
        serde_json::error::Category::Eof => "end of input",
    };
    let detail = format!(
        "body is not the expected JSON ({category} error at {path}, line {} column {})",
        inner.line(),
        inner.column()
    );
    Error::decode(detail, Some(Box::new(inner)))
}

/// A path like `` `items[2].id` `` (or `the top level`). Keys that do not look
/// like field names (a map keyed by data) are shown as `<key>`, so no value
/// of the body reaches the message.
fn json_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    use std::fmt::Write as _;
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => {
                let _ = write!(out, "[{index}]");
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                let named = !key.is_empty()
                    && key.len() <= 64
                    && key.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'@' | b'$')
                    });
                out.push_str(if named { key } else { "<key>" });
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    if out.is_empty() {
        "the top level".to_owned()
    } else {
        format!("`{out}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_one_pointer_wide() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn statuses_are_classified_by_the_table() {
        let table = [
            (408, ErrorKind::Retryable),
            (429, ErrorKind::Retryable),
            (502, ErrorKind::Retryable),
            (503, ErrorKind::Retryable),
            (504, ErrorKind::Retryable),
            (500, ErrorKind::Server),
            (501, ErrorKind::Server),
            (505, ErrorKind::Server),
            (599, ErrorKind::Server),
            (400, ErrorKind::Client),
            (401, ErrorKind::Client),
            (404, ErrorKind::Client),
            (409, ErrorKind::Client),
            (422, ErrorKind::Client),
            (301, ErrorKind::Client),
            (304, ErrorKind::Client),
        ];
        for (code, kind) in table {
            let status = StatusCode::from_u16(code).unwrap();
            let what = classify(&Outcome::Status(status));
            assert_eq!(what.kind(), kind, "{code}");
            assert_eq!(what.phase(), None);
        }
    }

    #[test]
    fn timeouts_are_retryable_and_name_their_phase() {
        for phase in [
            TimeoutPhase::Connect,
            TimeoutPhase::Read,
            TimeoutPhase::Attempt,
            TimeoutPhase::Total,
        ] {
            let err = Error::timeout(phase);
            assert!(err.is_retryable());
            assert!(err.is_timeout());
            assert_eq!(err.timeout_phase(), Some(phase));
            assert_eq!(err.is_connect(), phase == TimeoutPhase::Connect);
        }
    }

    #[test]
    fn kind_status_phase_and_connect_derive_from_the_cause() {
        let err = Error::from_status(StatusCode::BAD_GATEWAY, HeaderMap::new(), b"", None);
        assert_eq!(
            (err.kind(), err.reason(), err.status()),
            (
                ErrorKind::Retryable,
                ErrorReason::Status,
                Some(StatusCode::BAD_GATEWAY)
            )
        );
        assert!(!err.is_connect() && !err.is_timeout());
        let connect = Error::timeout(TimeoutPhase::Connect);
        assert!(connect.is_connect() && connect.is_unprocessed());
        assert_eq!(connect.reason(), ErrorReason::Timeout);
        assert_eq!(connect.status(), None);
        for (err, kind, reason) in [
            (
                Error::circuit_open(None),
                ErrorKind::Rejected,
                "circuit_open",
            ),
            (Error::auth("x"), ErrorKind::Rejected, "auth"),
            (
                Error::pushback(Duration::from_secs(1)),
                ErrorKind::Rejected,
                "server_pushback",
            ),
            (
                Error::no_endpoints("x"),
                ErrorKind::Rejected,
                "no_endpoints",
            ),
            (Error::too_large(1), ErrorKind::Decode, "too_large"),
            (Error::config("x"), ErrorKind::Config, "config"),
        ] {
            assert_eq!(err.kind(), kind);
            assert_eq!(err.reason().as_str(), reason);
            assert_eq!(&*err.type_name(), reason);
        }
    }

    #[test]
    fn endpoint_failures_are_retryable_and_server_only() {
        assert!(ErrorKind::Retryable.is_endpoint_failure());
        assert!(ErrorKind::Server.is_endpoint_failure());
        for kind in [
            ErrorKind::Client,
            ErrorKind::Rejected,
            ErrorKind::Decode,
            ErrorKind::Config,
        ] {
            assert!(!kind.is_endpoint_failure());
        }
    }

    #[test]
    fn display_is_one_line_with_context() {
        let url = Url::parse("http://u:pw@127.0.0.1:1/api/x?token=t0k").unwrap();
        let err = Error::from_status(
            StatusCode::SERVICE_UNAVAILABLE,
            HeaderMap::new(),
            b"busy",
            None,
        )
        .with_call(&Method::GET, Some(&url), 3, Duration::from_millis(250));
        let text = err.to_string();
        assert!(!text.contains('\n'));
        assert!(
            text.starts_with("GET http://u@127.0.0.1:1/api/x?token=REDACTED: "),
            "{text}"
        );
        assert!(text.contains("503"), "{text}");
        assert!(text.contains("3 attempts"), "{text}");
        assert!(text.contains("250ms"), "{text}");
        let debug = format!("{err:?}");
        assert!(!debug.contains("pw") && !debug.contains("t0k"), "{debug}");
    }

    #[cfg(feature = "_rustls")]
    #[test]
    fn certificate_failures_are_config_connect_and_name_their_reason() {
        use rustls::{AlertDescription as Alert, CertificateError as Cert};
        let table = [
            (
                rustls::Error::InvalidCertificate(Cert::UnknownIssuer),
                Certificate::UnknownIssuer,
            ),
            (
                rustls::Error::InvalidCertificate(Cert::NotValidForName),
                Certificate::NameMismatch,
            ),
            (
                rustls::Error::InvalidCertificate(Cert::Expired),
                Certificate::Expired,
            ),
            (
                rustls::Error::InvalidCertificate(Cert::NotValidYet),
                Certificate::NotYetValid,
            ),
            (
                rustls::Error::InvalidCertificate(Cert::Revoked),
                Certificate::Revoked,
            ),
            (
                rustls::Error::InvalidCertificate(Cert::BadEncoding),
                Certificate::Invalid,
            ),
            (
                rustls::Error::AlertReceived(Alert::CertificateRequired),
                Certificate::ClientRefused,
            ),
            (
                rustls::Error::AlertReceived(Alert::BadCertificate),
                Certificate::ClientRefused,
            ),
            (
                rustls::Error::AlertReceived(Alert::UnknownCA),
                Certificate::ClientRefused,
            ),
        ];
        for (tls, expected) in table {
            // As the transport wraps it: in an io::Error, whose source() skips it.
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
            assert_eq!(certificate_failure(&io), Some(expected), "{io}");
            let what = What::Certificate(expected);
            assert_eq!(what.kind(), ErrorKind::Config);
            assert_eq!(what.reason(), ErrorReason::Certificate);
            assert!(what.is_connect());
        }
    }

    #[cfg(feature = "_rustls")]
    #[test]
    fn other_handshake_failures_are_not_certificate_failures() {
        for tls in [
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
            rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion),
            rustls::Error::HandshakeNotComplete,
        ] {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
            assert_eq!(certificate_failure(&io), None, "{io}");
        }
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(certificate_failure(&reset), None);
    }

    #[cfg(feature = "native-tls")]
    #[test]
    fn openssl_messages_name_the_certificate_failure() {
        let table = [
            (
                "error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed:../ssl/statem/statem_clnt.c:1889: (unable to get local issuer certificate)",
                Some(Certificate::UnknownIssuer),
            ),
            (
                "error:0A000086:SSL routines::certificate verify failed: (self-signed certificate)",
                Some(Certificate::UnknownIssuer),
            ),
            (
                "error:0A000086:SSL routines::certificate verify failed: (Hostname mismatch)",
                Some(Certificate::NameMismatch),
            ),
            (
                "error:0A000086:SSL routines::certificate verify failed: (certificate has expired)",
                Some(Certificate::Expired),
            ),
            (
                "error:0A000086:SSL routines::certificate verify failed: (certificate is not yet valid)",
                Some(Certificate::NotYetValid),
            ),
            (
                "error:0A000086:SSL routines::certificate verify failed: (certificate revoked)",
                Some(Certificate::Revoked),
            ),
            (
                "error:0A000086:SSL routines::certificate verify failed: (invalid CA certificate)",
                Some(Certificate::Invalid),
            ),
            (
                "error:0A00045C:SSL routines::tlsv13 alert certificate required",
                Some(Certificate::ClientRefused),
            ),
            (
                "error:0A000412:SSL routines::sslv3 alert bad certificate",
                Some(Certificate::ClientRefused),
            ),
            (
                "error:0A000418:SSL routines::tlsv1 alert unknown ca",
                Some(Certificate::ClientRefused),
            ),
            (
                "error:0A000410:SSL routines::sslv3 alert handshake failure",
                None,
            ),
            ("connection reset by peer", None),
        ];
        for (message, expected) in table {
            assert_eq!(openssl_certificate(message), expected, "{message}");
        }
    }

    #[test]
    fn body_text_is_the_whole_kept_body() {
        let body = vec![b'a'; 10_000];
        let err = Error::from_status(StatusCode::BAD_REQUEST, HeaderMap::new(), &body, None);
        assert_eq!(err.body_text().map(str::len), Some(10_000));
        let lossy = Error::from_status(StatusCode::BAD_REQUEST, HeaderMap::new(), b"a\xffb", None);
        assert_eq!(lossy.body_text(), Some("a\u{fffd}b"));
        assert_eq!(lossy.body_bytes().map(bytes::Bytes::len), Some(3));
    }

    #[test]
    fn decode_errors_name_the_category_and_path_but_no_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Item {
            id: u64,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Page {
            items: Vec<Item>,
        }
        let err = decode_json::<Page>(br#"{"items":[{"id":1},{"id":"s3cr3t"}]}"#).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(text.contains("type error at `items[1].id`"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        // Nor does its `Debug` (an `unwrap()`, a `?err` field).
        let debug = format!("{err:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        let err = decode_json::<std::collections::HashMap<String, u64>>(br#"{"tok en":"x"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("`<key>`"), "{err}");
        let err = decode_json::<u64>(b"1 2").unwrap_err();
        assert!(
            err.to_string().contains("syntax error at the top level"),
            "{err}"
        );
    }

    #[test]
    fn a_cut_retry_loop_says_why() {
        let err = Error::timeout(TimeoutPhase::Attempt)
            .with_cut(3, CutBy::CircuitOpen)
            .with_call(&Method::GET, None, 1, Duration::from_millis(5));
        let text = err.to_string();
        assert!(
            text.ends_with("; 3 attempts allowed, 1 made: circuit opened"),
            "{text}"
        );
        let err = Error::timeout(TimeoutPhase::Attempt)
            .with_cut(3, CutBy::Budget)
            .with_call(&Method::GET, None, 2, Duration::from_millis(5));
        assert!(
            err.to_string()
                .ends_with("3 attempts allowed, 2 made: retry budget exhausted")
        );
    }
}
