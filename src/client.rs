//! `ApiClient`: the handle users hold, its request constructors and typed
//! one-liners. The call pipeline itself is in [`crate::pipeline`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use url::Url;

use crate::auth::TokenCache;
use crate::balance::EndpointStatus;
use crate::breaker::{Breakers, CircuitState};
use crate::builder::ApiClientBuilder;
use crate::coalesce::Coalescer;
use crate::discovery::Balancer;
use crate::error::Error;
use crate::fallback::Fallback;
use crate::hedge::{Hedging, Latencies, LatencySketch};
use crate::hook::{RequestHook, RequestSigner};
use crate::limit::Limits;
use crate::origin;
use crate::pushback::{Pause, Pauses};
use crate::redact;
use crate::request::RequestBuilder;
use crate::retry::{Budget, RetryPolicy};
use crate::stats::{ClientStats, Stats};

/// An HTTP client for one service, with timeouts, retries, circuit breakers and
/// limits around every call.
///
/// `ApiClient` is cheap to clone (`Arc` inside) and `Send + Sync`; clones share
/// the connection pool, the circuit breakers, the rate limiter, the concurrency
/// limit and the retry budget. Build one per service you call and share it.
///
/// # Examples
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::path("/api/users/42"))
/// #     .respond_with(wiremock::ResponseTemplate::new(200)
/// #         .set_body_json(serde_json::json!({"id": 42, "name": "Ada"})))
/// #     .mount(&server).await;
/// use resilient_http::ApiClient;
///
/// #[derive(serde::Deserialize)]
/// struct User { id: u64, name: String }
///
/// let client = ApiClient::builder()
///     .base_url(format!("{}/api/", server.uri()))
///     .build()?;
/// let user: User = client.get_json("users/42").await?;
/// assert_eq!((user.id, user.name.as_str()), (42, "Ada"));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone)]
pub struct ApiClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) base: Option<Url>,
    /// The endpoints, for a client built with `endpoints` or a resolver.
    pub(crate) balancer: Option<Balancer>,
    pub(crate) auth: Option<TokenCache>,
    pub(crate) hooks: Box<[Arc<dyn RequestHook>]>,
    /// The async hook run last on every attempt (`ApiClientBuilder::signer`).
    pub(crate) signer: Option<Arc<dyn RequestSigner>>,
    pub(crate) stats: Stats,
    pub(crate) attempt_timeout: Duration,
    pub(crate) total_timeout: Duration,
    /// The longest wait for the next bytes (headers or body), enforced here
    /// rather than by the transport: see `pipeline::body::within_read_timeout`.
    pub(crate) read_timeout: Duration,
    pub(crate) max_response_bytes: usize,
    /// How much of an error response's body is kept in the `Error`.
    pub(crate) max_error_body_bytes: usize,
    pub(crate) retry: RetryPolicy,
    pub(crate) budget: Option<Budget>,
    pub(crate) breakers: Option<Breakers>,
    /// Server pushback pauses of the endpoints called by fixed URL (a client
    /// with endpoints keeps those of its endpoints with them).
    pub(crate) pauses: Pauses,
    pub(crate) limits: Limits,
    /// Sent with every request to the base URL's origin; credential-like ones
    /// are left out of requests to any other origin.
    pub(crate) default_headers: HeaderMap,
    /// Paths may leave the base path (`ApiClientBuilder::allow_path_escape`).
    pub(crate) allow_path_escape: bool,
    /// Hedged requests for every call (`ApiClientBuilder::hedging`).
    pub(crate) hedging: Option<Hedging>,
    /// Recent latencies of the endpoints called by fixed URL, for a
    /// percentile hedging delay (those of a client's endpoints are kept
    /// with them).
    pub(crate) latencies: Latencies,
    /// The calls in flight that identical ones may join
    /// (`ApiClientBuilder::coalesce_requests`).
    pub(crate) coalescer: Option<Coalescer>,
    /// What answers a failed call (`ApiClientBuilder::fallback`).
    pub(crate) fallback: Option<Fallback>,
    /// The response cache (`ApiClientBuilder::cache`).
    #[cfg(feature = "cache")]
    pub(crate) cache: Option<crate::cache::Store>,
}

impl Inner {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        http: reqwest::Client,
        base: Option<Url>,
        balancer: Option<Balancer>,
        auth: Option<TokenCache>,
        hooks: Box<[Arc<dyn RequestHook>]>,
        attempt_timeout: Duration,
        total_timeout: Duration,
        max_response_bytes: usize,
        retry: RetryPolicy,
        budget: Option<Budget>,
        breakers: Option<Breakers>,
        limits: Limits,
        default_headers: HeaderMap,
    ) -> Self {
        Self {
            pauses: Pauses::new(base.as_ref(), |_| Pause::new()),
            latencies: Latencies::new(base.as_ref(), |_| LatencySketch::default()),
            hedging: None,
            coalescer: None,
            fallback: None,
            #[cfg(feature = "cache")]
            cache: None,
            http,
            base,
            balancer,
            auth,
            hooks,
            signer: None,
            stats: Stats::default(),
            attempt_timeout,
            total_timeout,
            read_timeout: crate::builder::DEFAULT_READ_TIMEOUT,
            max_response_bytes,
            max_error_body_bytes: crate::builder::DEFAULT_MAX_ERROR_BODY_BYTES,
            retry,
            budget,
            breakers,
            limits,
            default_headers,
            allow_path_escape: false,
        }
    }
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("ApiClient")
            .field(
                "base_url",
                &inner.base.as_ref().map(|u| redact::url(u).to_string()),
            )
            .field("balancer", &inner.balancer)
            .field("attempt_timeout", &inner.attempt_timeout)
            .field("total_timeout", &inner.total_timeout)
            .field("retry", &inner.retry)
            .field("circuit_breaker", &inner.breakers.is_some())
            .field("limits", &!inner.limits.is_empty())
            .field("coalesce_requests", &inner.coalescer.is_some())
            .field("fallback", &inner.fallback)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A builder with every default; see [`ApiClientBuilder`].
    pub fn builder() -> ApiClientBuilder {
        ApiClientBuilder::new()
    }

    /// A client with every default for `base_url`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for an invalid URL.
    pub fn new(base_url: impl AsRef<str>) -> Result<Self, Error> {
        Self::builder().base_url(base_url).build()
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The concurrency limit now: the fixed
    /// [`max_concurrency`](crate::ApiClientBuilder::max_concurrency), the
    /// current value of the
    /// [`adaptive_concurrency`](crate::ApiClientBuilder::adaptive_concurrency)
    /// limit, or `None` when calls are not limited.
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::ApiClient;
    ///
    /// let client = ApiClient::builder()
    ///     .base_url("http://127.0.0.1:8080/")
    ///     .max_concurrency(64)
    ///     .build()?;
    /// assert_eq!(client.concurrency_limit(), Some(64));
    /// assert_eq!(ApiClient::new("http://127.0.0.1:8080/")?.concurrency_limit(), None);
    /// # Ok::<(), resilient_http::Error>(())
    /// ```
    #[must_use]
    pub fn concurrency_limit(&self) -> Option<usize> {
        self.inner.limits.concurrency_limit()
    }

    /// The base URL paths are joined onto (always ends in `/`).
    #[must_use]
    pub fn base_url(&self) -> Option<&Url> {
        self.inner.base.as_ref()
    }

    /// The state of the base endpoint's circuit breaker (`Closed` when the
    /// breaker is off or there is no base URL).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(503))
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, CircuitBreakerConfig, CircuitState};
    ///
    /// let client = ApiClient::builder()
    ///     .base_url(server.uri())
    ///     .no_retry()
    ///     .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(2))
    ///     .build()?;
    /// assert_eq!(client.circuit_state(), CircuitState::Closed);
    /// for _ in 0..2 {
    ///     let _ = client.get("health").send().await;
    /// }
    /// assert_eq!(client.circuit_state(), CircuitState::Open);
    /// let err = client.get("health").send().await.unwrap_err();
    /// assert!(err.is_circuit_open() && err.attempts() == 0);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    ///
    /// For a client with endpoints: `Open` when every endpoint's breaker is
    /// open (calls fail at once), `HalfOpen` when none is closed but some
    /// admit probes, else `Closed`; see [`endpoints`](Self::endpoints) for
    /// each one.
    #[must_use]
    pub fn circuit_state(&self) -> CircuitState {
        if let Some(balancer) = &self.inner.balancer {
            return balancer.snapshot().state(Instant::now());
        }
        self.inner
            .breakers
            .as_ref()
            .and_then(Breakers::base)
            .map_or(CircuitState::Closed, |b| b.state(Instant::now()))
    }

    /// The state of the circuit breaker of `url`'s endpoint (scheme, host,
    /// port); for a URL on the origin every endpoint shares, the state of
    /// them all, as [`circuit_state`](Self::circuit_state) gives it (calls to
    /// it are balanced over them).
    #[must_use]
    pub fn circuit_state_of(&self, url: &Url) -> CircuitState {
        if let Some(balancer) = &self.inner.balancer {
            let set = balancer.snapshot();
            // A URL on every endpoint's origin is balanced over them all.
            if set.shares_origin(url) {
                return set.state(Instant::now());
            }
            if let Some(instance) = set.find_origin(url) {
                return instance
                    .breaker()
                    .map_or(CircuitState::Closed, |b| b.state(Instant::now()));
            }
        }
        self.inner
            .breakers
            .as_ref()
            .map_or(CircuitState::Closed, |b| {
                b.for_url(url).state(Instant::now())
            })
    }

    /// Adds the default headers the request does not set itself. A request to
    /// another origin than the base URL's gets no credential-like ones.
    /// `own`: the request goes to one of the client's endpoints, or is known
    /// to be on the base URL's origin. Returns
    /// whether the request goes to another origin than the client's own.
    pub(crate) fn apply_default_headers(&self, request: &mut reqwest::Request, own: bool) -> bool {
        let inner = &*self.inner;
        let foreign = !own
            && match (&inner.base, &inner.balancer) {
                (Some(base), _) => !origin::same_origin(base, request.url()),
                (None, Some(b)) => b.snapshot().find_origin(request.url()).is_none(),
                (None, None) => false,
            };
        let defaults = &self.inner.default_headers;
        if defaults.is_empty() {
            return foreign;
        }
        let headers = request.headers_mut();
        for name in defaults.keys() {
            if headers.contains_key(name) || (foreign && redact::is_sensitive_name(name.as_str())) {
                continue;
            }
            for value in defaults.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        foreign
    }

    /// Joins `path` onto the base URL under the path rules (`crate::path`),
    /// or parses it as an absolute URL. For a client with endpoints, a
    /// relative `path` is returned too: the URL is then a placeholder, joined
    /// onto an endpoint per attempt.
    pub(crate) fn url_for(
        &self,
        path: &str,
        allow_escape: bool,
    ) -> Result<(Url, Option<Box<str>>), Error> {
        let (url, routed) = match (&self.inner.base, &self.inner.balancer) {
            (Some(base), _) => (
                crate::path::join(base, path, allow_escape).map_err(|e| e.with_url(base)),
                None,
            ),
            (None, Some(_)) if crate::path::is_absolute(path) => {
                (crate::path::absolute(path), None)
            }
            (None, Some(balancer)) => (
                crate::path::join(balancer.placeholder(), path, allow_escape),
                Some(path.into()),
            ),
            (None, None) => (crate::path::absolute(path), None),
        };
        let url = url?;
        if matches!(url.scheme(), "http" | "https") {
            Ok((url, routed))
        } else {
            Err(Error::config("request URL must be http or https").with_url(&url))
        }
    }

    /// The endpoints of a client built with
    /// [`endpoints`](ApiClientBuilder::endpoints) or a
    /// [`resolver`](ApiClientBuilder::resolver): each one's URL, weight,
    /// address (see [`Endpoint::address`](crate::Endpoint::address)),
    /// circuit state and attempts in flight. Empty for a client with a
    /// `base_url` (see [`circuit_state`](Self::circuit_state)).
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::{ApiClient, CircuitState};
    ///
    /// let client = ApiClient::builder()
    ///     .endpoints(["http://10.0.0.1:8080/", "http://10.0.0.2:8080/"])
    ///     .build()?;
    /// for ep in client.endpoints() {
    ///     assert_eq!((ep.weight, ep.state, ep.in_flight), (1, CircuitState::Closed, 0));
    /// }
    /// # Ok::<(), resilient_http::Error>(())
    /// ```
    #[must_use]
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.inner
            .balancer
            .as_ref()
            .map_or_else(Vec::new, Balancer::statuses)
    }

    /// Asks the resolver for the endpoint list now and applies it, instead of
    /// waiting for the next background refresh; returns how many endpoints
    /// the client has. Useful at startup, to fail fast when discovery is
    /// broken. Without a resolver it does nothing.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`](crate::ErrorKind::Rejected) when the resolver
    /// fails or returns no usable endpoint; the last good list is kept.
    pub async fn refresh_endpoints(&self) -> Result<usize, Error> {
        match &self.inner.balancer {
            Some(balancer) => balancer.refresh().await,
            None => Ok(0),
        }
    }

    /// A snapshot of the client's counters (shared by its clones): calls,
    /// outcomes, attempts, retries, rejections, calls in flight, token
    /// fetches. With the `metrics` feature the same events also go to the
    /// `metrics` facade; see [`ClientStats`].
    #[must_use]
    pub fn stats(&self) -> ClientStats {
        let fetches = self.inner.auth.as_ref().map_or(0, TokenCache::fetches);
        let mut stats = self.inner.stats.snapshot(fetches);
        self.inner.limits.add_stats(&mut stats);
        #[cfg(feature = "cache")]
        if let Some(cache) = &self.inner.cache {
            cache.add_stats(&mut stats);
        }
        stats
    }

    /// A request with any method.
    ///
    /// # Paths
    ///
    /// `path` is joined onto the base URL (or, with endpoints, onto the
    /// endpoint each attempt goes to) as a browser resolves a link, with rules
    /// that keep text from outside from changing which URL is called. A path
    /// that breaks one is a [`Config`](crate::ErrorKind::Config) error from
    /// `send()`, with 0 attempts and nothing sent:
    ///
    /// - `users/42` and `users?page=2` go under the base path; a `?` starts
    ///   the query;
    /// - `/health` (one leading `/`) replaces the base path, and a full URL
    ///   (`scheme://...`) replaces the base: both explicit choices;
    /// - a path may not leave the base path: a `..` segment (also written
    ///   `%2e%2e`, `.%2e`...), a `.` segment after the first, a leading `//`
    ///   (another host), a `\` (read as `/`) or a leading `name:` (read as a
    ///   URL scheme; write `./users:search`) are refused, unless
    ///   [`allow_path_escape`](ApiClientBuilder::allow_path_escape) is on for
    ///   the client or [the request](RequestBuilder::allow_path_escape); and
    ///   the joined URL must have the base's origin and start with its path;
    /// - always refused: a `#` (the fragment is never sent, and would drop the
    ///   rest) and an ASCII control character (tab, newline...) or a leading
    ///   or trailing space, which the URL parser would drop silently.
    ///
    /// Build paths from untrusted text (an id from a request, a file name)
    /// with [`Segments`](crate::Segments), which percent-encodes each segment
    /// and refuses empty, `.` and `..` ones. Refusals name the rule, never the
    /// path.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(204))
    /// #     .expect(1)
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, ErrorKind, Method, Segments};
    ///
    /// let client = ApiClient::builder().base_url(format!("{}/v1/", server.uri())).build()?;
    /// let id = "../admin";   // from an untrusted caller
    ///
    /// let err = client.request(Method::DELETE, format!("orders/{id}")).send().await.unwrap_err();
    /// assert_eq!((err.kind(), err.attempts()), (ErrorKind::Config, 0));
    ///
    /// // Sends DELETE /v1/orders/..%2Fadmin
    /// client.request(Method::DELETE, Segments::new(["orders", id])).send().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn request(&self, method: Method, path: impl AsRef<str>) -> RequestBuilder {
        RequestBuilder::new(self.clone(), method, path.as_ref())
    }

    /// A GET request for `path`, joined onto the base URL (see the
    /// [path rules](Self::request)).
    pub fn get(&self, path: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    /// A POST request (not retried after it may have been sent, unless made
    /// idempotent with [`RequestBuilder::idempotency_key`]).
    pub fn post(&self, path: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    /// A PUT request.
    pub fn put(&self, path: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::PUT, path)
    }

    /// A PATCH request (retried like a POST).
    pub fn patch(&self, path: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::PATCH, path)
    }

    /// A DELETE request.
    pub fn delete(&self, path: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::DELETE, path)
    }

    /// A HEAD request.
    pub fn head(&self, path: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::HEAD, path)
    }

    /// GET `path` and decode the JSON body.
    ///
    /// # Errors
    ///
    /// As [`RequestBuilder::send`], plus [`ErrorKind::Decode`](crate::ErrorKind::Decode) for a body that
    /// is not the expected JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, path: impl AsRef<str>) -> Result<T, Error> {
        self.get(path).send_json().await
    }

    /// GET `path` and decode the JSON body, or `Ok(None)` when the server
    /// answers 404 Not Found: for lookups where a missing resource is an
    /// answer, not a failure.
    ///
    /// The 404 is an answer (see [`RequestBuilder::allow_status`]): it is
    /// not retried and the circuit breaker counts it as a success.
    ///
    /// # Errors
    ///
    /// As [`get_json`](Self::get_json), for every other outcome.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::path("/users/42"))
    /// #     .respond_with(wiremock::ResponseTemplate::new(200)
    /// #         .set_body_json(serde_json::json!({"id": 42})))
    /// #     .mount(&server).await;
    /// # wiremock::Mock::given(wiremock::matchers::path("/users/7"))
    /// #     .respond_with(wiremock::ResponseTemplate::new(404))
    /// #     .mount(&server).await;
    /// #[derive(serde::Deserialize)]
    /// struct User { id: u64 }
    ///
    /// let client = resilient_http::ApiClient::new(server.uri())?;
    /// let found: Option<User> = client.get_json_opt("users/42").await?;
    /// assert_eq!(found.map(|u| u.id), Some(42));
    /// assert!(client.get_json_opt::<User>("users/7").await?.is_none());
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub async fn get_json_opt<T: DeserializeOwned>(
        &self,
        path: impl AsRef<str>,
    ) -> Result<Option<T>, Error> {
        let resp = self
            .get(path)
            .allow_status(reqwest::StatusCode::NOT_FOUND)
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        resp.json().map(Some)
    }

    /// POST `body` as JSON to `path` and decode the JSON answer.
    ///
    /// # Errors
    ///
    /// As [`get_json`](Self::get_json), plus [`ErrorKind::Config`](crate::ErrorKind::Config) for a body
    /// that cannot be serialized.
    pub async fn post_json<B, T>(&self, path: impl AsRef<str>, body: &B) -> Result<T, Error>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.post(path).json(body).send_json().await
    }

    /// PUT `body` as JSON to `path` and decode the JSON answer.
    ///
    /// # Errors
    ///
    /// As [`post_json`](Self::post_json).
    pub async fn put_json<B, T>(&self, path: impl AsRef<str>, body: &B) -> Result<T, Error>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.put(path).json(body).send_json().await
    }

    /// PATCH `body` as JSON to `path` and decode the JSON answer.
    ///
    /// # Errors
    ///
    /// As [`post_json`](Self::post_json).
    pub async fn patch_json<B, T>(&self, path: impl AsRef<str>, body: &B) -> Result<T, Error>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.patch(path).json(body).send_json().await
    }
}
