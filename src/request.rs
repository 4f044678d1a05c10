//! `RequestBuilder`: per-call options, then `send()` or `send_stream()`.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::ApiClient;
use crate::error::{BoxError, Error, ErrorKind};
use crate::fallback::{Fallback, FallbackChoice};
use crate::headers::{bearer, header_pair};
use crate::hedge::Hedging;
#[cfg(feature = "cache")]
use crate::pipeline::CacheUse;
use crate::pipeline::{Call, HedgeChoice, Plan, Routed, Streamed};
use crate::response::{ApiResponse, ApiStream};
use crate::retry::{RetryPolicy, is_idempotent_method};
use crate::sse::EventStream;
use crate::upload::{Payload, Upload};

/// The header an idempotency key is sent in.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A request being built; get one from [`ApiClient::get`] and friends.
///
/// Like the client builder, setters never fail: the first invalid input (a bad
/// header, an unserializable body or query) is returned by [`send`](Self::send)
/// as an [`ErrorKind::Config`](crate::ErrorKind::Config) error.
///
/// # Examples
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::any())
/// #     .respond_with(wiremock::ResponseTemplate::new(201))
/// #     .mount(&server).await;
/// use std::time::Duration;
///
/// let client = resilient_http::ApiClient::builder().base_url(server.uri()).build()?;
/// let resp = client
///     .post("payments")
///     .json(&serde_json::json!({ "amount": 7 }))
///     .idempotency_key("pay-7")           // now safe to retry
///     .header("x-request-id", "abc")
///     .timeout(Duration::from_secs(5))    // this call's total deadline
///     .send()
///     .await?;
/// assert_eq!(resp.status(), 201);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[must_use = "a request does nothing until it is sent"]
// Independent options of one request, not the states of a machine.
#[allow(clippy::struct_excessive_bools)]
pub struct RequestBuilder {
    client: ApiClient,
    method: Method,
    inner: Result<reqwest::RequestBuilder, Error>,
    /// The relative path, for a client with endpoints: joined onto the
    /// endpoint each attempt goes to.
    routed: Option<Box<str>>,
    /// Why the path breaks the rules that keep it under the base path, if it
    /// does; the request fails with it unless `allow_path_escape`.
    escape: Option<Error>,
    /// The URL was joined onto the base URL under the path rules, so it is
    /// on the base's origin (until a per-request escape is allowed).
    on_base: bool,
    allow_path_escape: bool,
    body: Option<Payload>,
    /// The `Content-Type` the body setter implies, unless the request sets one.
    content_type: Option<&'static str>,
    timeout: Option<Duration>,
    idempotent: Option<bool>,
    retry: Option<Box<RetryPolicy>>,
    hedging: HedgeChoice,
    fallback: FallbackChoice,
    /// The call may join an identical one in flight (when the client
    /// coalesces).
    coalesce: bool,
    allow: Vec<StatusCode>,
    /// How the call uses the client's cache (`no_cache`).
    #[cfg(feature = "cache")]
    cache: CacheUse,
    /// The query pairs added, already form-encoded.
    query: Option<String>,
    /// Why a query could not be serialized, if one could not.
    bad_query: Option<Error>,
}

impl fmt::Debug for RequestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBuilder")
            .field("method", &self.method)
            .field("timeout", &self.timeout)
            .field("idempotent", &self.idempotent)
            .field("allow_path_escape", &self.allow_path_escape)
            .field("retry", &self.retry)
            .field("hedging", &self.hedging)
            .field("fallback", &self.fallback)
            .field("coalesce", &self.coalesce)
            .field("allow_status", &self.allow)
            .finish_non_exhaustive()
    }
}

impl RequestBuilder {
    pub(crate) fn new(client: ApiClient, method: Method, path: &str) -> Self {
        let allow_path_escape = client.inner.allow_path_escape;
        // A path refused only by the rules that keep it under the base path is
        // built all the same, and refused at `send()` unless escaping is
        // allowed, so that `allow_path_escape` works per request too.
        let (joined, escape) = match client.url_for(path, false) {
            Ok(joined) => (Ok(joined), None),
            Err(strict) => match client.url_for(path, true) {
                Ok(joined) => (Ok(joined), Some(strict)),
                Err(err) => (Err(if allow_path_escape { err } else { strict }), None),
            },
        };
        // Under the path rules, a path joined onto the base URL stays on its
        // origin: the base's breaker and pause need no lookup then.
        let on_base = escape.is_none()
            && client.inner.base.is_some()
            && matches!(&joined, Ok((_, None)))
            && !crate::path::is_absolute(path);
        let (inner, routed) = match joined {
            Ok((url, routed)) => (Ok(client.http().request(method.clone(), url)), routed),
            Err(err) => (Err(err), None),
        };
        Self {
            client,
            method,
            inner,
            routed,
            escape,
            on_base,
            allow_path_escape,
            body: None,
            content_type: None,
            timeout: None,
            idempotent: None,
            retry: None,
            hedging: HedgeChoice::Client,
            fallback: FallbackChoice::Client,
            coalesce: true,
            allow: Vec::new(),
            #[cfg(feature = "cache")]
            cache: CacheUse::Ask,
            query: None,
            bad_query: None,
        }
    }

    fn map(mut self, f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder) -> Self {
        self.inner = self.inner.map(f);
        self
    }

    /// Sets `name` to `value` alone, replacing any value set before (reqwest's
    /// `header` adds one more).
    fn set(self, name: HeaderName, value: HeaderValue) -> Self {
        self.map(|r| {
            let mut one = reqwest::header::HeaderMap::new();
            one.insert(name, value);
            r.headers(one)
        })
    }

    fn fail(mut self, err: Error) -> Self {
        if self.inner.is_ok() && self.bad_query.is_none() {
            self.inner = Err(err);
        }
        self
    }

    /// Appends query parameters, serialized with `serde_urlencoded`
    /// (`&[("page", "2")]`, a struct, a map).
    ///
    /// A value that cannot be serialized (a nested struct, a sequence) makes
    /// `send()` fail with a [`Config`](crate::ErrorKind::Config) error that
    /// says "query cannot be serialized", with serde's reason, the method and
    /// the (redacted) URL; nothing is sent.
    pub fn query<T: Serialize + ?Sized>(mut self, query: &T) -> Self {
        match serde_urlencoded::to_string(query) {
            Ok(text) if text.is_empty() => self,
            Ok(text) => {
                match &mut self.query {
                    Some(pairs) => {
                        pairs.push('&');
                        pairs.push_str(&text);
                    }
                    None => self.query = Some(text),
                }
                self
            }
            Err(e) => {
                // Reported with the URL once it is built, in `into_call`.
                let err = Error::config(format!("query cannot be serialized: {e}"));
                if self.inner.is_ok() && self.bad_query.is_none() {
                    self.bad_query = Some(err);
                }
                self
            }
        }
    }

    /// Adds a header to this request (credential-like values are never printed).
    pub fn header<K, V>(self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: Into<BoxError>,
        V: TryInto<HeaderValue>,
        V::Error: Into<BoxError>,
    {
        match header_pair(name, value) {
            Ok((name, value)) => self.map(|r| r.header(name, value)),
            Err(err) => self.fail(err),
        }
    }

    /// Sends `Authorization: Bearer <token>` with this request, replacing
    /// any `Authorization` set on it before.
    pub fn bearer_auth(self, token: impl fmt::Display) -> Self {
        match bearer(&token) {
            Ok(value) => self.set(reqwest::header::AUTHORIZATION, value),
            Err(err) => self.fail(err),
        }
    }

    /// Sends `Authorization: Basic <base64(user:password)>` with this request
    /// (marked sensitive: never printed, and not forwarded on a redirect to
    /// another origin). It replaces the client's token for this call, and
    /// any `Authorization` set on the request before.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::header("authorization", "Basic YWRhOnB3"))
    /// #     .respond_with(wiremock::ResponseTemplate::new(200))
    /// #     .expect(1)
    /// #     .mount(&server).await;
    /// let client = resilient_http::ApiClient::new(server.uri())?;
    /// client.get("me").basic_auth("ada", Some("pw")).send().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn basic_auth(self, user: impl fmt::Display, password: Option<impl fmt::Display>) -> Self {
        let pair = match password {
            Some(password) => format!("{user}:{password}"),
            None => format!("{user}:"),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        match HeaderValue::from_str(&format!("Basic {encoded}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.set(reqwest::header::AUTHORIZATION, value)
            }
            // Base64 is always a valid header value; kept for the type.
            Err(e) => self.fail(Error::config_from("invalid basic auth credentials", e)),
        }
    }

    /// A JSON body (and `Content-Type: application/json` unless set). It is
    /// serialized once and replayed on every attempt.
    pub fn json<T: Serialize + ?Sized>(self, body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => {
                let mut this = self;
                this.body = Some(Payload::Bytes(Bytes::from(bytes)));
                this.content_type = Some("application/json");
                this
            }
            Err(e) => self.fail(Error::config_from("request body is not serializable", e)),
        }
    }

    /// A form body (`application/x-www-form-urlencoded`, unless the request
    /// sets another `Content-Type`), serialized once with `serde_urlencoded`
    /// (`&[("grant_type", "client_credentials")]`, a struct, a map) and
    /// replayed on every attempt.
    ///
    /// A value that cannot be serialized makes `send()` fail with a
    /// [`Config`](crate::ErrorKind::Config) error ("form body cannot be
    /// serialized"); nothing is sent.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::body_string("grant_type=client_credentials&scope=read+write"))
    /// #     .and(wiremock::matchers::header("content-type", "application/x-www-form-urlencoded"))
    /// #     .respond_with(wiremock::ResponseTemplate::new(200))
    /// #     .expect(1)
    /// #     .mount(&server).await;
    /// let client = resilient_http::ApiClient::new(server.uri())?;
    /// client
    ///     .post("token")
    ///     .form(&[("grant_type", "client_credentials"), ("scope", "read write")])
    ///     .send()
    ///     .await?;
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn form<T: Serialize + ?Sized>(self, form: &T) -> Self {
        match serde_urlencoded::to_string(form) {
            Ok(text) => {
                let mut this = self;
                this.body = Some(Payload::Bytes(Bytes::from(text)));
                this.content_type = Some("application/x-www-form-urlencoded");
                this
            }
            Err(e) => self.fail(Error::config_from("form body cannot be serialized", e)),
        }
    }

    /// A raw body, replayed on every attempt.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(Payload::Bytes(body.into()));
        self.content_type = None;
        self
    }

    /// A body read from `stream` as the transport sends it (chunked), never
    /// held whole, with a replay buffer of `replay_buffer_bytes`.
    ///
    /// The chunks sent are recorded while they fit the buffer. An attempt
    /// that fails while everything sent so far is still in the buffer may be
    /// retried as any other (the method must allow it: PUT, an
    /// [`idempotency_key`](Self::idempotency_key), or
    /// [`idempotent(true)`](Self::idempotent)): its body replays the
    /// recording, then goes on reading the stream. Once more than the buffer
    /// was sent, the recording is dropped and the call is not retried; its
    /// error says so ("...: the request body streamed past its 1048576-byte
    /// replay buffer, so it cannot be sent again"). Memory stays bounded by
    /// the buffer; a body is never cut short. An error of the stream fails
    /// the attempt (the error's source) and is not retried.
    ///
    /// [`HookRequest::body`](crate::HookRequest::body) and the signer see no
    /// bytes of a streamed body. An event stream
    /// ([`send_events`](Self::send_events)) with a streamed body does not
    /// reconnect.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::body_string("part 1, part 2"))
    /// #     .respond_with(wiremock::ResponseTemplate::new(201))
    /// #     .expect(1)
    /// #     .mount(&server).await;
    /// use resilient_http::Bytes;
    ///
    /// let parts = ["part 1, ", "part 2"].map(|p| Ok::<_, std::io::Error>(Bytes::from(p)));
    /// let client = resilient_http::ApiClient::new(server.uri())?;
    /// let resp = client
    ///     .put("upload")
    ///     .body_stream(futures_util::stream::iter(parts), 1 << 20) // 1 MiB replay buffer
    ///     .send()
    ///     .await?;
    /// assert_eq!(resp.status(), 201);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn body_stream<S, E>(mut self, stream: S, replay_buffer_bytes: usize) -> Self
    where
        S: futures_core::Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.body = Some(Payload::Stream(Upload::new(stream, replay_buffer_bytes)));
        self.content_type = None;
        self
    }

    /// This call's retry policy, replacing the client's (`RetryPolicy::none()`
    /// for one attempt). The client's retry budget and circuit breaker still
    /// apply; the policy's own `budget` setting is not used per call. An
    /// invalid policy (`max_attempts(0)`) fails `send()` with a
    /// [`Config`](crate::ErrorKind::Config) error.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(503))
    /// #     .expect(1)
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, RetryPolicy};
    ///
    /// let client = ApiClient::new(server.uri())?;   // 3 attempts by default
    /// let err = client.get("health").retry(RetryPolicy::none()).send().await.unwrap_err();
    /// assert_eq!(err.attempts(), 1);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(Box::new(policy));
        self
    }

    /// This call's hedging, replacing the client's (see [`Hedging`]): a copy
    /// of the request is sent when an attempt has not answered within the
    /// delay, and the first usable answer wins. Only calls that may be
    /// repeated are hedged; hedges count toward the retry policy's
    /// `max_attempts` and are paid from the client's retry budget. An
    /// invalid setting fails `send()` with a
    /// [`Config`](crate::ErrorKind::Config) error.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(200))
    /// #     .mount(&server).await;
    /// use std::time::Duration;
    /// use resilient_http::{ApiClient, Hedging};
    ///
    /// let client = ApiClient::new(server.uri())?;
    /// let resp = client
    ///     .get("search")
    ///     .hedging(Hedging::fixed(Duration::from_millis(200)))
    ///     .send()
    ///     .await?;
    /// assert_eq!(resp.attempts(), 1, "answered before the hedge was due");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn hedging(mut self, hedging: Hedging) -> Self {
        self.hedging = HedgeChoice::Call(Box::new(hedging));
        self
    }

    /// No hedging for this call, whatever the client's
    /// [`hedging`](crate::ApiClientBuilder::hedging).
    pub fn no_hedging(mut self) -> Self {
        self.hedging = HedgeChoice::Off;
        self
    }

    /// This call's fallback, replacing the client's
    /// ([`ApiClientBuilder::fallback`](crate::ApiClientBuilder::fallback),
    /// which says when a fallback is asked, and for which kinds of error).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(503))
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, ApiResponse, StatusCode};
    ///
    /// let client = ApiClient::builder().base_url(server.uri()).no_retry().build()?;
    /// let resp = client
    ///     .get("banner")
    ///     .fallback(|_| Some(ApiResponse::synthetic(StatusCode::OK, "Welcome!")))
    ///     .send()
    ///     .await?;
    /// assert!(resp.is_synthetic());
    /// assert_eq!(resp.text()?, "Welcome!");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn fallback<F>(mut self, fallback: F) -> Self
    where
        F: Fn(&Error) -> Option<ApiResponse> + Send + Sync + 'static,
    {
        self.fallback = FallbackChoice::Call(Fallback::new(fallback));
        self
    }

    /// This call's fallback, for the errors of the `kinds` given only (see
    /// [`ApiClientBuilder::fallback_on`](crate::ApiClientBuilder::fallback_on)).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(404))
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, ApiResponse, ErrorKind, StatusCode};
    ///
    /// let client = ApiClient::new(server.uri())?;
    /// let resp = client
    ///     .get("avatars/7")
    ///     .fallback_on([ErrorKind::Client, ErrorKind::Retryable], |_| {
    ///         Some(ApiResponse::synthetic(StatusCode::OK, "default.png"))
    ///     })
    ///     .send()
    ///     .await?;
    /// assert_eq!(resp.text()?, "default.png");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn fallback_on<K, F>(mut self, kinds: K, fallback: F) -> Self
    where
        K: IntoIterator<Item = ErrorKind>,
        F: Fn(&Error) -> Option<ApiResponse> + Send + Sync + 'static,
    {
        self.fallback = FallbackChoice::Call(Fallback::on(kinds, fallback));
        self
    }

    /// No fallback for this call, whatever the client's
    /// [`fallback`](crate::ApiClientBuilder::fallback): it returns its error.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(503))
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, ApiResponse, StatusCode};
    ///
    /// let client = ApiClient::builder()
    ///     .base_url(server.uri())
    ///     .no_retry()
    ///     .fallback(|_| Some(ApiResponse::synthetic(StatusCode::OK, "[]")))
    ///     .build()?;
    /// // A health check must see the dependency as it is.
    /// let err = client.get("health").no_fallback().send().await.unwrap_err();
    /// assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn no_fallback(mut self) -> Self {
        self.fallback = FallbackChoice::Off;
        self
    }

    /// This call sends its own request even when an identical one is in
    /// flight, whatever the client's
    /// [`coalesce_requests`](crate::ApiClientBuilder::coalesce_requests).
    /// For a read that must see what the server holds after it starts (a
    /// read after a write, say).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(200)
    /// #         .set_delay(std::time::Duration::from_millis(100)))
    /// #     .expect(2)
    /// #     .mount(&server).await;
    /// use resilient_http::ApiClient;
    ///
    /// let client = ApiClient::builder().base_url(server.uri()).coalesce_requests(true).build()?;
    /// let (shared, own) = tokio::join!(
    ///     client.get("orders/7").send(),
    ///     client.get("orders/7").no_coalescing().send(),   // its own request
    /// );
    /// assert!(shared.is_ok() && own.is_ok());
    /// assert_eq!(client.stats().coalesced, 0);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn no_coalescing(mut self) -> Self {
        self.coalesce = false;
        self
    }

    /// Bypasses the client's [`Cache`](crate::Cache) for this call: not
    /// answered from it (fresh or stale), not stored in it; the request goes
    /// out as it is.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(200)
    /// #         .insert_header("cache-control", "max-age=60"))
    /// #     .expect(2)
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, Cache};
    ///
    /// let client = ApiClient::builder()
    ///     .base_url(server.uri())
    ///     .cache(Cache::in_memory(1_000))
    ///     .build()?;
    /// client.get("balance").send().await?;                         // stored
    /// let live = client.get("balance").no_cache().send().await?;    // asks the server
    /// assert_eq!(live.attempts(), 1);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[cfg(feature = "cache")]
    pub fn no_cache(mut self) -> Self {
        self.cache = CacheUse::Bypass;
        self
    }

    /// Makes `status` an answer for this call, not an error: `send()` returns
    /// `Ok(ApiResponse)` with it and its body (bounded by
    /// `max_response_bytes`), as for a 2xx. Call it again to allow more.
    ///
    /// An allowed status is an answer, not a failure: it is not retried (even
    /// a 503), and the circuit breaker counts it as a success. A 401 that is
    /// allowed is not retried with a fresh token either.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(409).set_body_string("taken"))
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, StatusCode};
    ///
    /// let client = ApiClient::new(server.uri())?;
    /// let resp = client
    ///     .put("names/ada")
    ///     .allow_status(StatusCode::CONFLICT)
    ///     .send()
    ///     .await?;
    /// assert_eq!(resp.status(), StatusCode::CONFLICT);
    /// assert_eq!(resp.text()?, "taken");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn allow_status(mut self, status: StatusCode) -> Self {
        if !self.allow.contains(&status) {
            self.allow.push(status);
        }
        self
    }

    /// This call's total deadline, replacing the client's `total_timeout`
    /// (longer or shorter).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Whether this call may be sent more than once, overriding the method's
    /// default (GET, HEAD, OPTIONS, TRACE, PUT and DELETE are; POST and PATCH
    /// are not). `idempotent(false)` on a DELETE turns its retries off.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
        self
    }

    /// Sends `Idempotency-Key: <key>` on every attempt (replacing a key set
    /// before), which makes a POST or PATCH safe to retry: the server can
    /// tell a replay from a new request. An `Idempotency-Key` set with
    /// [`header`](Self::header) does the same.
    pub fn idempotency_key(self, key: impl AsRef<str>) -> Self {
        match HeaderValue::from_str(key.as_ref()) {
            Ok(value) => self.set(HeaderName::from_static(IDEMPOTENCY_KEY), value),
            Err(e) => self.fail(Error::config_from("invalid idempotency key", e)),
        }
    }

    /// Whether this request's path may leave the base URL's path (a `..`
    /// segment, `//host`, a `\`...), overriding the client's
    /// [`allow_path_escape`](crate::ApiClientBuilder::allow_path_escape)
    /// (default `false`). See [`ApiClient::request`] for the path rules, and
    /// the [client option](crate::ApiClientBuilder::allow_path_escape) for
    /// what an escape may reach on a client with endpoints.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::path("/static/logo.png"))
    /// #     .respond_with(wiremock::ResponseTemplate::new(200))
    /// #     .expect(1)
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, ErrorKind};
    ///
    /// let client = ApiClient::builder().base_url(format!("{}/v1/", server.uri())).build()?;
    /// let err = client.get("../static/logo.png").send().await.unwrap_err();
    /// assert_eq!((err.kind(), err.attempts()), (ErrorKind::Config, 0));
    ///
    /// // A path the program wrote itself may climb, when asked for.
    /// client.get("../static/logo.png").allow_path_escape(true).send().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn allow_path_escape(mut self, allow: bool) -> Self {
        self.allow_path_escape = allow;
        self
    }

    fn into_call(self) -> (ApiClient, Result<Call, Error>) {
        let Self {
            client,
            method,
            inner,
            routed,
            escape,
            on_base,
            allow_path_escape,
            body,
            content_type,
            timeout,
            idempotent,
            retry,
            hedging,
            fallback: _,
            coalesce: _,
            allow,
            #[cfg(feature = "cache")]
            cache,
            query,
            bad_query,
        } = self;
        let inner = match escape {
            Some(err) if !allow_path_escape => Err(err),
            _ => inner,
        };
        let inner = match retry.as_deref().map(RetryPolicy::validate) {
            Some(Err(err)) => inner.and(Err(err)),
            _ => inner,
        };
        let inner = match &hedging {
            HedgeChoice::Call(h) => inner.and_then(|r| h.validate().map(|()| r)),
            _ => inner,
        };
        let request = inner
            .and_then(|r| r.build().map_err(Error::transport))
            .map_err(|e| e.with_call(&method, None, 0, Duration::ZERO));
        let mut request = match (request, bad_query) {
            (Ok(request), None) => request,
            (Ok(request), Some(err)) => {
                // A routed call's URL is a placeholder: not worth naming.
                let err = match routed {
                    None => err.with_url(request.url()),
                    Some(_) => err,
                };
                return (client, Err(err.with_call(&method, None, 0, Duration::ZERO)));
            }
            (Err(err), _) => return (client, Err(err)),
        };
        if let Some(pairs) = query {
            let url = request.url_mut();
            let joined = match url.query() {
                Some(existing) if !existing.is_empty() => format!("{existing}&{pairs}"),
                _ => pairs,
            };
            url.set_query(Some(&joined));
        }
        *request.body_mut() = body.as_ref().map(Payload::body);
        if let Some(content_type) = content_type {
            request
                .headers_mut()
                .entry(reqwest::header::CONTENT_TYPE)
                .or_insert(HeaderValue::from_static(content_type));
        }
        let own_auth = request
            .headers()
            .contains_key(reqwest::header::AUTHORIZATION);
        // The request's own key (not a client-wide default header's), from
        // `idempotency_key` or `header`; only looked up where it matters.
        let idempotent = idempotent.unwrap_or_else(|| {
            is_idempotent_method(&method) || request.headers().contains_key(IDEMPOTENCY_KEY)
        });
        // A routed call is sent only on its endpoint's origin: an escaped path
        // that would leave it is refused per attempt (`Instance::url_for`).
        let foreign = client.apply_default_headers(&mut request, routed.is_some() || on_base);
        // The token goes only to the client's own endpoints, and not over a
        // request's own Authorization header.
        let use_token = client.inner.auth.is_some() && !own_auth && !foreign;
        let guard_redirects = crate::redirect::would_leak(request.headers());
        (
            client,
            Ok(Call {
                request,
                body,
                timeout,
                plan: Plan {
                    idempotent,
                    guard_redirects,
                    routed: routed.map(|path| Routed {
                        path,
                        allow_escape: allow_path_escape,
                    }),
                    use_token,
                    on_base,
                    retry,
                    hedging,
                    allow: allow.into_boxed_slice(),
                    #[cfg(feature = "cache")]
                    cache,
                },
            }),
        )
    }

    /// Sends the request through the client's pipeline (limits, breaker,
    /// attempts, retries) and buffers the body.
    ///
    /// The returned future owns the call (`Send + 'static`), so it can be
    /// spawned as it is: `tokio::spawn(client.get("x").send())`.
    ///
    /// # Errors
    ///
    /// `Ok` only for a 2xx status (or an [allowed](Self::allow_status) one),
    /// or for the answer of the call's
    /// [fallback](crate::ApiClientBuilder::fallback). Any other status, a
    /// transport failure, a timeout, a local rejection or an invalid request
    /// is an [`Error`] whose [`kind`](Error::kind) says which.
    pub fn send(mut self) -> impl Future<Output = Result<ApiResponse, Error>> + Send + 'static {
        let fallback = std::mem::take(&mut self.fallback);
        let coalesce = self.coalesce;
        let (client, call) = self.into_call();
        client.send(call, coalesce, fallback)
    }

    /// Sends the request and decodes a 2xx JSON body.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), plus [`ErrorKind::Decode`](crate::ErrorKind::Decode)
    /// for a body that is not the expected JSON.
    pub async fn send_json<T: DeserializeOwned>(self) -> Result<T, Error> {
        self.send().await?.json()
    }

    /// Sends the request and returns as soon as the headers of a 2xx response
    /// arrive; the body is read from the returned [`ApiStream`].
    ///
    /// Attempts that fail before the headers arrive are retried as usual. After
    /// that nothing can be retried: the body is not buffered, so a failure while
    /// reading it goes to the reader. `attempt_timeout` covers the wait for the
    /// headers; each read is bounded by `read_timeout`, the whole body by the
    /// call's total deadline.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), for everything up to the headers.
    pub fn send_stream(self) -> impl Future<Output = Result<ApiStream, Error>> + Send + 'static {
        let (client, call) = self.into_call();
        let item_limit = client.inner.max_response_bytes;
        let call = client.execute::<Streamed>(call);
        async move { call.await.map(|stream| stream.with_item_limit(item_limit)) }
    }

    /// Sends the request as a server-sent events subscription and returns
    /// its events as they arrive: an [`EventStream`] of
    /// `Result<`[`SseEvent`](crate::SseEvent)`>` that reconnects by itself
    /// with `Last-Event-ID` when the connection drops.
    ///
    /// The request carries `Accept: text/event-stream` and `Cache-Control:
    /// no-cache` (unless it sets its own). The first connection goes through
    /// the pipeline like [`send_stream`](Self::send_stream); so does every
    /// reconnect, with the same breaker, limits, retry budget and endpoint
    /// choice. An event stream has no total deadline by default: it lives
    /// until dropped, and `read_timeout` is its idle limit (a read that waits
    /// longer is a dropped connection, and reconnects). A call
    /// [`timeout`](Self::timeout) still bounds the whole stream when set.
    /// See [`EventStream`] for when the stream ends.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), for the first connection; a `Decode` error
    /// when its `Content-Type` is not `text/event-stream`. A `204 No Content`
    /// is an empty stream.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::path("/events"))
    /// #     .respond_with(wiremock::ResponseTemplate::new(200)
    /// #         .set_body_raw("id: 1\ndata: hello\n\nid: 2\ndata: world\n\n", "text/event-stream"))
    /// #     .mount(&server).await;
    /// let client = resilient_http::ApiClient::new(server.uri())?;
    /// let mut events = client.get("events").send_events().await?;
    /// let mut words = Vec::new();
    /// while let Some(event) = events.next_event().await {
    ///     words.push(event?.into_data());
    ///     if words.len() == 2 {
    ///         break; // the stream would reconnect after the body ends
    ///     }
    /// }
    /// assert_eq!(words, ["hello", "world"]);
    /// assert_eq!(events.last_event_id(), Some("2"));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn send_events(self) -> impl Future<Output = Result<EventStream, Error>> + Send + 'static {
        let (client, call) = self.into_call();
        EventStream::open(client, call)
    }
}
