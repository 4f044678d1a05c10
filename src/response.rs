//! `ApiResponse` (a buffered 2xx response) and `ApiStream` (a streamed one).

use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Version};
use serde::de::DeserializeOwned;
use tokio::time::{Instant, Sleep};
use url::Url;

use crate::error::Error;
use crate::limit::Slot;
use crate::redact;
use crate::timeout::{Deadline, TimeoutPhase};

/// A successful (2xx) response whose body is already buffered, or one with a
/// status the call allowed ([`RequestBuilder::allow_status`](crate::RequestBuilder::allow_status)),
/// or one a [fallback](crate::ApiClientBuilder::fallback) gave
/// ([`synthetic`](Self::synthetic)).
///
/// The body was read inside the attempt, bounded by `max_response_bytes`, so a
/// body that failed midway was retried like any other transient failure.
///
/// # Examples
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::any())
/// #     .respond_with(wiremock::ResponseTemplate::new(200).set_body_string(r#"[{"id":1}]"#))
/// #     .mount(&server).await;
/// #[derive(serde::Deserialize)]
/// struct User { id: u64 }
///
/// let client = resilient_http::ApiClient::builder().base_url(server.uri()).build()?;
/// let resp = client.get("users").query(&[("page", "2")]).send().await?;
/// assert!(resp.status().is_success());
/// assert_eq!(resp.attempts(), 1);
/// let users: Vec<User> = resp.json()?;
/// assert_eq!(users[0].id, 1);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
///
/// A clone is cheap: the body is shared, the headers are copied.
#[derive(Clone)]
pub struct ApiResponse {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) attempts: u32,
    pub(crate) elapsed: std::time::Duration,
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) hedged: bool,
    /// Built by the program ([`ApiResponse::synthetic`]) or returned by a
    /// fallback, not received for this call.
    pub(crate) synthetic: bool,
    /// Served from the cache past its freshness (feature `cache`).
    #[cfg(feature = "cache")]
    pub(crate) stale: bool,
}

impl fmt::Debug for ApiResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ApiResponse");
        d.field("status", &self.status)
            .field("url", &redact::url(&self.url).as_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .field("attempts", &self.attempts)
            .field("hedged", &self.hedged)
            .field("synthetic", &self.synthetic);
        #[cfg(feature = "cache")]
        d.field("stale", &self.stale);
        d.finish_non_exhaustive()
    }
}

impl ApiResponse {
    /// A response built by the program rather than received: what a
    /// [fallback](crate::ApiClientBuilder::fallback) returns when the
    /// dependency is unavailable (a default, an empty list, a value kept
    /// from earlier).
    ///
    /// It has no headers (add some with [`headers_mut`](Self::headers_mut)),
    /// HTTP/1.1 as its version, 0 [`attempts`](Self::attempts), and
    /// [`is_synthetic`](Self::is_synthetic) says so. Its [`url`](Self::url)
    /// is `about:blank` until a fallback serves it: then it is the call's
    /// (redacted) URL, and its method and [`elapsed`](Self::elapsed) are the
    /// call's. Any status may be given; the caller sees it as an answer.
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::{ApiResponse, StatusCode};
    ///
    /// let resp = ApiResponse::synthetic(StatusCode::OK, r#"{"items":[]}"#);
    /// assert!(resp.is_synthetic());
    /// assert_eq!((resp.status(), resp.attempts()), (StatusCode::OK, 0));
    /// assert_eq!(resp.text()?, r#"{"items":[]}"#);
    /// # Ok::<(), resilient_http::Error>(())
    /// ```
    #[must_use]
    pub fn synthetic(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body: body.into(),
            attempts: 0,
            elapsed: std::time::Duration::ZERO,
            method: Method::GET,
            url: blank(),
            hedged: false,
            synthetic: true,
            #[cfg(feature = "cache")]
            stale: false,
        }
    }

    /// Whether this response was not received for this call: built with
    /// [`synthetic`](Self::synthetic), or returned by a
    /// [fallback](crate::ApiClientBuilder::fallback) (whatever it returned).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(200))
    /// #     .mount(&server).await;
    /// let client = resilient_http::ApiClient::new(server.uri())?;
    /// assert!(!client.get("health").send().await?.is_synthetic());
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[must_use]
    pub fn is_synthetic(&self) -> bool {
        self.synthetic
    }

    /// The response headers, to change (a [`synthetic`](Self::synthetic)
    /// response's `Content-Type`, say).
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::{ApiResponse, HeaderValue, StatusCode};
    ///
    /// let mut resp = ApiResponse::synthetic(StatusCode::OK, "[]");
    /// resp.headers_mut()
    ///     .insert("content-type", HeaderValue::from_static("application/json"));
    /// assert_eq!(resp.headers()["content-type"], "application/json");
    /// ```
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// Whether the client's [`Cache`](crate::Cache) answered with an entry
    /// past its freshness (feature `cache`): after the call failed
    /// (stale-if-error), or while the entry is refreshed in the background
    /// (stale-while-revalidate). Its `Age` header says how old it is.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(200)
    /// #         .insert_header("cache-control", "max-age=0, stale-if-error=600")
    /// #         .set_body_string("yesterday's prices"))
    /// #     .up_to_n_times(1)
    /// #     .mount(&server).await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(503))
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, Cache};
    ///
    /// let client = ApiClient::builder()
    ///     .base_url(server.uri())
    ///     .cache(Cache::in_memory(1_000))
    ///     .build()?;
    /// assert!(!client.get("prices").send().await?.is_stale());
    /// // The service is down now: the entry answers, marked stale.
    /// let resp = client.get("prices").send().await?;
    /// assert!(resp.is_stale());
    /// assert_eq!(resp.text()?, "yesterday's prices");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[cfg(feature = "cache")]
    #[must_use]
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// The status code: 2xx, or one the call allowed with
    /// [`allow_status`](crate::RequestBuilder::allow_status) (any, for a
    /// [`synthetic`](Self::synthetic) one).
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The HTTP version of the response.
    #[must_use]
    pub fn version(&self) -> Version {
        self.version
    }

    /// The response headers.
    #[must_use]
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The final URL, after any redirects (for a
    /// [`synthetic`](Self::synthetic) one, see there).
    #[must_use]
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Attempts it took, the successful one included; hedges
    /// ([`Hedging`](crate::Hedging)) count as attempts. 0 for a
    /// [`synthetic`](Self::synthetic) response.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether the answer came from a hedge (a copy sent because the attempt
    /// it raced was slow; see [`Hedging`](crate::Hedging)) rather than that
    /// attempt.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(200))
    /// #     .mount(&server).await;
    /// let client = resilient_http::ApiClient::new(server.uri())?;
    /// let resp = client.get("fast").send().await?;
    /// assert!(!resp.hedged());
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[must_use]
    pub fn hedged(&self) -> bool {
        self.hedged
    }

    /// Time the call took, from the start of the call to the buffered body.
    #[must_use]
    pub fn elapsed(&self) -> std::time::Duration {
        self.elapsed
    }

    /// The body bytes (a cheap reference-counted clone).
    #[must_use]
    pub fn bytes(&self) -> Bytes {
        self.body.clone()
    }

    /// The body, consuming the response.
    #[must_use]
    pub fn into_bytes(self) -> Bytes {
        self.body
    }

    /// The body as UTF-8 text.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Decode`](crate::ErrorKind::Decode) when the body is not valid UTF-8.
    pub fn text(&self) -> Result<String, Error> {
        match std::str::from_utf8(&self.body) {
            Ok(text) => Ok(text.to_owned()),
            Err(e) => Err(self.decode_error("body is not valid UTF-8", e)),
        }
    }

    /// The body deserialized from JSON. An empty body (a `204`) reads as
    /// `null`, so `()` and `Option<T>` decode from it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Decode`](crate::ErrorKind::Decode) when the body is not JSON
    /// of the requested shape. The error keeps the response's
    /// [`status`](Error::status), and its message names the serde category
    /// (syntax, type, end of input), the path to the failing field
    /// (`` `items[2].id` ``) and the position, never a value of the body;
    /// serde's own message is its [`source`](std::error::Error::source).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        crate::error::decode_json(&self.body).map_err(|e| self.with_context(e))
    }

    fn decode_error(
        &self,
        detail: impl Into<std::borrow::Cow<'static, str>>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        self.with_context(Error::decode(detail, Some(Box::new(source))))
    }

    fn with_context(&self, err: Error) -> Error {
        err.with_decoded_status(self.status).with_call(
            &self.method,
            Some(&self.url),
            self.attempts,
            self.elapsed,
        )
    }
}

/// `about:blank`: the URL of a response that came from no server.
fn blank() -> Url {
    // A constant, valid URL: parsing it cannot fail.
    #[allow(clippy::expect_used)]
    Url::parse("about:blank").expect("a valid constant URL")
}

type ChunkStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A successful (2xx) response whose body is read as it arrives, from
/// [`RequestBuilder::send_stream`](crate::RequestBuilder::send_stream).
///
/// Read it with [`chunk`](Self::chunk) or as a [`Stream`] of `Result<Bytes>`.
/// Each read is bounded by `read_timeout` and the whole body by the call's total
/// deadline. Once the headers have arrived nothing is retried: a failure while
/// streaming is returned to the reader. With `max_concurrency`, the call's
/// permit is held until the stream is dropped. `max_response_bytes` does not apply
/// to the raw chunks (the reader decides how much to take); it is the default
/// per-item limit of the typed readers [`json_lines`](Self::json_lines) and
/// [`json_array`](Self::json_array).
///
/// # Examples
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::any())
/// #     .respond_with(wiremock::ResponseTemplate::new(200).set_body_string("line 1\nline 2\n"))
/// #     .mount(&server).await;
/// let client = resilient_http::ApiClient::new(server.uri())?;
/// let mut stream = client.get("export.ndjson").send_stream().await?;
/// let mut total = 0;
/// while let Some(chunk) = stream.chunk().await? {
///     total += chunk.len();
/// }
/// assert_eq!(total, 14);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub struct ApiStream {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// Time from the start of the call to the headers.
    elapsed: std::time::Duration,
    url: Url,
    method: Method,
    attempts: u32,
    started: Instant,
    /// The call's concurrency permit, held until the body ends or the stream is dropped.
    slot: Option<Slot>,
    body: ChunkStream,
    deadline: Pin<Box<Sleep>>,
    /// `read_timeout`, and the time the next bytes are due by.
    idle: (std::time::Duration, Pin<Box<Sleep>>),
    done: bool,
    /// The default size limit of one item of `json_lines`/`json_array`.
    pub(crate) item_limit: usize,
}

impl fmt::Debug for ApiStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiStream")
            .field("status", &self.status)
            .field("url", &redact::url(&self.url).as_str())
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl ApiStream {
    pub(crate) fn new(
        response: reqwest::Response,
        method: Method,
        attempts: u32,
        deadline: Deadline,
        read_timeout: std::time::Duration,
        slot: Option<Slot>,
    ) -> Self {
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        let url = response.url().clone();
        Self {
            status,
            version,
            headers,
            elapsed: deadline.elapsed(),
            url,
            method,
            attempts,
            started: deadline.start(),
            slot,
            body: Box::pin(response.bytes_stream()),
            deadline: Box::pin(tokio::time::sleep_until(deadline.end())),
            idle: (read_timeout, Box::pin(tokio::time::sleep(read_timeout))),
            done: false,
            item_limit: usize::MAX,
        }
    }

    /// Sets the default item limit of the typed item streams (the client's
    /// `max_response_bytes`).
    pub(crate) fn with_item_limit(mut self, limit: usize) -> Self {
        self.item_limit = limit;
        self
    }

    /// The body ended or failed: nothing more comes, and the call's
    /// concurrency permit goes back even if the stream is kept.
    fn finish(&mut self) {
        self.done = true;
        self.slot = None;
    }

    pub(crate) fn fail(&self, err: Error) -> Error {
        err.with_call(
            &self.method,
            Some(&self.url),
            self.attempts,
            self.started.elapsed(),
        )
    }

    /// The status code: 2xx, or one the call allowed with
    /// [`allow_status`](crate::RequestBuilder::allow_status).
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    #[must_use]
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The final URL, after any redirects.
    #[must_use]
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Attempts it took to get the headers.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The HTTP version of the response.
    #[must_use]
    pub fn version(&self) -> Version {
        self.version
    }

    /// Time from the start of the call to the response headers (the body is
    /// still to be read).
    #[must_use]
    pub fn elapsed(&self) -> std::time::Duration {
        self.elapsed
    }

    /// The body's length from `Content-Length`, when the server sent one.
    #[must_use]
    pub fn content_length(&self) -> Option<u64> {
        self.headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    /// The next chunk of the body, or `None` at its end.
    ///
    /// # Errors
    ///
    /// A classified transport error (reset, read timeout...) or a `Total`
    /// timeout when the call's deadline passes.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }
}

impl Stream for ApiStream {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        // The deadline first: a body that is always ready (a reader slower
        // than the network) must not outlive it.
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.finish();
            let err = self.fail(Error::timeout(TimeoutPhase::Total));
            return Poll::Ready(Some(Err(err)));
        }
        if let Poll::Ready(item) = self.body.as_mut().poll_next(cx) {
            return Poll::Ready(match item {
                None => {
                    self.finish();
                    None
                }
                Some(Ok(bytes)) => {
                    // The next bytes are due `read_timeout` from now.
                    let (limit, timer) = &mut self.idle;
                    // Saturating: a huge `read_timeout` means "no idle limit".
                    let due = Deadline::after(*limit).end();
                    timer.as_mut().reset(due);
                    Some(Ok(bytes))
                }
                Some(Err(e)) => {
                    self.finish();
                    Some(Err(self.fail(Error::transport_mid_body(e))))
                }
            });
        }
        if self.idle.1.as_mut().poll(cx).is_ready() {
            self.finish();
            let err = self.fail(Error::timeout(TimeoutPhase::Read));
            return Poll::Ready(Some(Err(err)));
        }
        Poll::Pending
    }
}
