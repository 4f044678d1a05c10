//! `ApiClientBuilder`: every option of a client, validated once in `build()`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::adaptive::AdaptiveConcurrency;
use crate::auth::{TokenCache, TokenProvider};
use crate::balance::{Endpoint, LoadBalance, parse_endpoint};
use crate::breaker::{Breakers, CircuitBreakerConfig};
use crate::client::{ApiClient, Inner};
use crate::coalesce::Coalescer;
use crate::discovery::{Balancer, DEFAULT_RESOLVER_REFRESH, Resolver};
use crate::error::{BoxError, Error, ErrorKind};
use crate::fallback::Fallback;
use crate::headers::{bearer, header_pair};
use crate::hedge::Hedging;
use crate::hook::{RequestHook, RequestSigner};
use crate::limit::{Limits, RateLimit};
use crate::origin;
use crate::proxy::ProxySettings;
use crate::redact;
use crate::response::ApiResponse;
use crate::retry::RetryPolicy;
use crate::tls::{Identity, TlsSettings, TlsVersion};
use crate::transport::Transport;

/// Default `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `read_timeout`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `attempt_timeout`.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `total_timeout`.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `max_response_bytes` (16 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Default `max_redirects`.
pub const DEFAULT_MAX_REDIRECTS: usize = 10;
/// Default `pool_idle_timeout`: 4 s, below the shortest common server
/// keep-alive timeouts (Node.js and Apache close idle connections after 5 s,
/// nginx after 75 s), so the client drops an idle connection before the
/// server does, instead of sending a request into a connection being closed.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Default `max_error_body_bytes` (64 KiB).
pub const DEFAULT_MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Builds an [`ApiClient`]. Get one from [`ApiClient::builder`].
///
/// Setters never fail or panic: the first invalid input (a bad URL, header or
/// option) is kept and returned by [`build`](Self::build) as an
/// [`ErrorKind::Config`](crate::ErrorKind::Config) error.
///
/// | option | default |
/// |---|---|
/// | `connect_timeout` (TCP + TLS handshake) | 2 s |
/// | `read_timeout` (longest gap between reads) | 10 s |
/// | `attempt_timeout` (one attempt: headers and body) | 10 s |
/// | `total_timeout` (the whole call: queueing, attempts, backoff) | 30 s |
/// | `retry` | [`RetryPolicy::exponential()`] |
/// | `circuit_breaker` | [`CircuitBreakerConfig::default()`] |
/// | `rate_limit`, `max_concurrency` | off |
/// | `adaptive_concurrency`, `hedging` | off |
/// | `coalesce_requests`, `fallback` | off |
/// | `cache` (feature `cache`) | none |
/// | `max_response_bytes` | 16 MiB |
/// | `max_error_body_bytes` | 64 KiB |
/// | `max_redirects` | 10 |
/// | `user_agent` | `resilient-http/<version>` |
/// | TLS roots | the platform's roots, plus any `tls_root_certificate_pem` |
/// | `tls_min_version` | TLS 1.2 |
/// | proxies | from `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY`; loopback never proxied |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use resilient_http::ApiClient;
///
/// let client = ApiClient::builder()
///     .base_url("http://127.0.0.1:8080/api/")
///     .connect_timeout(Duration::from_millis(500))
///     .total_timeout(Duration::from_secs(5))
///     .default_header("x-api-key", "k")
///     .user_agent("orders-service/1.4")
///     .build()?;
/// # Ok::<(), resilient_http::Error>(())
/// ```
#[must_use]
pub struct ApiClientBuilder {
    base_url: Option<String>,
    endpoints: Vec<Endpoint>,
    load_balance: LoadBalance,
    resolver: Option<Arc<dyn Resolver>>,
    resolver_refresh: Duration,
    token_provider: Option<Arc<dyn TokenProvider>>,
    hooks: Vec<Arc<dyn RequestHook>>,
    signer: Option<Arc<dyn RequestSigner>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    attempt_timeout: Duration,
    total_timeout: Duration,
    retry: RetryPolicy,
    breaker: Option<CircuitBreakerConfig>,
    rate_limit: Option<RateLimit>,
    max_concurrency: Option<usize>,
    adaptive_concurrency: Option<AdaptiveConcurrency>,
    hedging: Option<Hedging>,
    coalesce_requests: bool,
    fallback: Option<Fallback>,
    #[cfg(feature = "cache")]
    cache: Option<crate::cache::Cache>,
    headers: HeaderMap,
    user_agent: Option<HeaderValue>,
    max_response_bytes: usize,
    max_error_body_bytes: usize,
    max_redirects: usize,
    pool_max_idle_per_host: Option<usize>,
    pool_idle_timeout: Duration,
    tcp_keepalive: Option<Duration>,
    http2_prior_knowledge: bool,
    /// Host names pinned to addresses, instead of asking DNS.
    resolve: Vec<(String, Vec<std::net::SocketAddr>)>,
    tls: TlsSettings,
    proxy: ProxySettings,
    allow_path_escape: bool,
    error: Option<Error>,
}

impl Default for ApiClientBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ApiClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = self.base_url.as_deref().map(redact::raw_url);
        f.debug_struct("ApiClientBuilder")
            .field("base_url", &base)
            .field("endpoints", &self.endpoints)
            .field("load_balance", &self.load_balance)
            .field("resolver", &self.resolver.is_some())
            .field("token_provider", &self.token_provider.is_some())
            .field("request_hooks", &self.hooks.len())
            .field("signer", &self.signer.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("total_timeout", &self.total_timeout)
            .field("retry", &self.retry)
            .field("circuit_breaker", &self.breaker)
            .field("rate_limit", &self.rate_limit)
            .field("max_concurrency", &self.max_concurrency)
            .field("adaptive_concurrency", &self.adaptive_concurrency)
            .field("hedging", &self.hedging)
            .field("coalesce_requests", &self.coalesce_requests)
            .field("fallback", &self.fallback)
            .field("cache", &self.cache_settings())
            .field("default_headers", &self.headers.keys().collect::<Vec<_>>())
            .field("max_response_bytes", &self.max_response_bytes)
            .field("tls", &self.tls)
            .field("proxy", &self.proxy)
            .field("max_error_body_bytes", &self.max_error_body_bytes)
            .field("allow_path_escape", &self.allow_path_escape)
            .finish_non_exhaustive()
    }
}

impl ApiClientBuilder {
    /// A builder with every default.
    pub fn new() -> Self {
        Self {
            base_url: None,
            endpoints: Vec::new(),
            load_balance: LoadBalance::default(),
            resolver: None,
            resolver_refresh: DEFAULT_RESOLVER_REFRESH,
            token_provider: None,
            hooks: Vec::new(),
            signer: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
            retry: RetryPolicy::exponential(),
            breaker: Some(CircuitBreakerConfig::default()),
            rate_limit: None,
            max_concurrency: None,
            adaptive_concurrency: None,
            hedging: None,
            coalesce_requests: false,
            fallback: None,
            #[cfg(feature = "cache")]
            cache: None,
            headers: HeaderMap::new(),
            user_agent: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_error_body_bytes: DEFAULT_MAX_ERROR_BODY_BYTES,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            pool_max_idle_per_host: None,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            tcp_keepalive: None,
            http2_prior_knowledge: false,
            resolve: Vec::new(),
            tls: TlsSettings::default(),
            proxy: ProxySettings::default(),
            allow_path_escape: false,
            error: None,
        }
    }

    pub(crate) fn fail(mut self, err: Error) -> Self {
        if self.error.is_none() {
            self.error = Some(err);
        }
        self
    }

    /// The URL that request paths are joined onto (`http` or `https`).
    ///
    /// A missing trailing `/` is added, so `http://h/api` and `http://h/api/`
    /// both give `http://h/api/users` for the path `users`. Paths are joined as
    /// a browser resolves a link (RFC 3986): a path that starts with `/`
    /// replaces the base path, and an absolute URL replaces the base. A
    /// relative path may not leave the base path (`..`, `//host`...) unless
    /// [`allow_path_escape`](Self::allow_path_escape); see
    /// [`ApiClient::request`] for the rules.
    /// Without a base URL every request needs an absolute URL. Credential-like
    /// default headers are only sent to the base URL's origin.
    ///
    /// A query or a fragment in the URL (`http://h/v1/?k=1`) is a
    /// [`Config`](crate::ErrorKind::Config) error from [`build`](Self::build):
    /// joining a path drops them, so they would silently be missing from
    /// every request but the one to the base itself. Put a query on each
    /// request with [`RequestBuilder::query`](crate::RequestBuilder::query).
    pub fn base_url(mut self, url: impl AsRef<str>) -> Self {
        self.base_url = Some(url.as_ref().to_owned());
        self
    }

    /// Several instances of the service instead of one `base_url`: request
    /// paths are joined onto whichever instance an attempt goes to. Takes URLs
    /// (`&str`, `String`, [`Url`](crate::Url)) or weighted [`Endpoint`]s; calling it again
    /// adds more. [`load_balance`](Self::load_balance) says how attempts are
    /// spread; an endpoint whose circuit breaker is open is skipped while
    /// others can take the attempt, and a retry goes to another endpoint when
    /// one is available. Setting both `base_url` and endpoints is a `Config`
    /// error, and so is an endpoint URL with a query or a fragment, as for
    /// [`base_url`](Self::base_url).
    ///
    /// Credential-like default headers go to every endpoint. A request to an
    /// absolute URL goes where it says, not through the balancer.
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::{ApiClient, Endpoint};
    ///
    /// let client = ApiClient::builder()
    ///     .endpoints(["http://10.0.0.1:8080/api/", "http://10.0.0.2:8080/api/"])
    ///     .endpoints([Endpoint::new("http://10.0.0.3:8080/api/").weight(3)])
    ///     .build()?;
    /// // client.get("users/42") goes to http://10.0.0.x:8080/api/users/42
    /// assert_eq!(client.endpoints().len(), 3);
    /// # Ok::<(), resilient_http::Error>(())
    /// ```
    pub fn endpoints<I, E>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = E>,
        E: Into<Endpoint>,
    {
        self.endpoints.extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// How attempts are spread over the endpoints (default
    /// [`LoadBalance::LeastOutstanding`]).
    pub fn load_balance(mut self, strategy: LoadBalance) -> Self {
        self.load_balance = strategy;
        self
    }

    /// Where the endpoint list comes from, kept current in the background
    /// (see [`Resolver`]). Endpoints given with [`endpoints`](Self::endpoints)
    /// serve until the resolver first answers.
    pub fn resolver(mut self, resolver: impl Resolver) -> Self {
        self.resolver = Some(Arc::new(resolver));
        self
    }

    /// Time between two resolutions of the endpoint list (default 10 s). A
    /// failed resolution is retried sooner (from 250 ms, doubling), and an
    /// answer that expires sooner brings the next one forward (see
    /// [`Resolver::valid_for`]).
    pub fn resolver_refresh(mut self, every: Duration) -> Self {
        self.resolver_refresh = every;
        self
    }

    /// Bearer tokens from `provider` on every attempt to the client's own
    /// endpoints: cached, fetched again shortly before they expire (by one
    /// call at a time), and after a `401 Unauthorized`, which retries the call
    /// once whatever its method (the server refused it before acting on it).
    /// A request that sets its own `Authorization` header keeps it. Setting
    /// both a token provider and `bearer_auth` is a `Config` error. See
    /// [`TokenProvider`] and [`OAuth2ClientCredentials`](crate::OAuth2ClientCredentials).
    pub fn token_provider(mut self, provider: impl TokenProvider) -> Self {
        self.token_provider = Some(Arc::new(provider));
        self
    }

    /// Runs `hook` on every attempt, just before it is sent, to add headers
    /// (request ids, `traceparent`, tenant headers). Hooks run in the order
    /// they are added; see [`RequestHook`] for an example.
    pub fn request_hook(mut self, hook: impl RequestHook) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Runs `signer` on every attempt, last before it is sent: after the
    /// token and the [`request_hook`](Self::request_hook)s, so it sees every
    /// header and the body (for request signing). Setting another replaces
    /// it; see [`RequestSigner`] for an example.
    pub fn signer(mut self, signer: impl RequestSigner) -> Self {
        self.signer = Some(Arc::new(signer));
        self
    }

    /// The limit on establishing a connection, TCP and TLS handshake (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest gap between two reads of the response, headers or body
    /// (default 10 s). Catches a peer that stalls midway.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The limit on one attempt, from sending to the last byte of the buffered
    /// body (default 10 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The limit on a whole call: waiting for limits, every attempt and every
    /// backoff (default 30 s). [`RequestBuilder::timeout`](crate::RequestBuilder::timeout)
    /// replaces it for one call. It also bounds each token fetch, even for
    /// a call whose own deadline is longer (see [`TokenProvider`]).
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = timeout;
        self
    }

    /// A concurrency limit that follows the dependency's capacity (default
    /// off): see [`AdaptiveConcurrency`]. Instead of
    /// [`max_concurrency`](Self::max_concurrency) (setting both is a `Config`
    /// error from [`build`](Self::build)); read the limit now with
    /// [`ApiClient::concurrency_limit`].
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::{AdaptiveConcurrency, ApiClient};
    ///
    /// let client = ApiClient::builder()
    ///     .base_url("http://127.0.0.1:8080/")
    ///     .adaptive_concurrency(AdaptiveConcurrency::default().floor(4).ceiling(256))
    ///     .build()?;
    /// assert_eq!(client.concurrency_limit(), Some(20));
    /// # Ok::<(), resilient_http::Error>(())
    /// ```
    pub fn adaptive_concurrency(mut self, limit: AdaptiveConcurrency) -> Self {
        self.adaptive_concurrency = Some(limit);
        self
    }

    /// Hedged requests for every call that may be repeated (default off): a
    /// copy of an attempt is sent when it has not answered within a fixed
    /// delay or a percentile of the endpoint's recent latencies, and the
    /// first usable answer wins. See [`Hedging`] for the rules (hedges are
    /// attempts, paid from the retry budget) and
    /// [`RequestBuilder::hedging`](crate::RequestBuilder::hedging) to set it
    /// per call. An invalid setting is a `Config` error from
    /// [`build`](Self::build).
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::{ApiClient, Hedging};
    ///
    /// let client = ApiClient::builder()
    ///     .base_url("http://127.0.0.1:8080/")
    ///     .hedging(Hedging::percentile(0.95).max_hedges(1))
    ///     .build()?;
    /// # Ok::<(), resilient_http::Error>(())
    /// ```
    pub fn hedging(mut self, hedging: Hedging) -> Self {
        self.hedging = Some(hedging);
        self
    }

    /// Request coalescing (default off): a GET or HEAD sent while an
    /// identical one is in flight sends nothing of its own and gets that
    /// call's answer, its response or its error. A burst of identical reads
    /// (a cold cache, a popular key) then costs the dependency one request.
    ///
    /// - Identical means the same method, final URL (query included),
    ///   request headers (default headers included) and credentials, the
    ///   same [`allow_status`](crate::RequestBuilder::allow_status) set, and
    ///   the same use of the response cache (a `no_cache()` call never
    ///   shares a call that may be answered from it).
    ///   Credentials (an `Authorization` header, an API key, a cookie) are
    ///   part of the identity, so one caller's answer never reaches a caller
    ///   with other credentials; they are hashed with a secret random key,
    ///   never stored. Headers that [request hooks](Self::request_hook), the
    ///   signer or the token provider add to each attempt are not compared:
    ///   they are added to the attempts of the shared request (a hook that
    ///   reads the caller's context, for a request id, sees the first
    ///   caller's).
    /// - Only [`send`](crate::RequestBuilder::send) and the typed one-liners
    ///   built on it coalesce; a call with a body, its own
    ///   [`retry`](crate::RequestBuilder::retry) policy or
    ///   [`hedging`](crate::RequestBuilder::hedging), or
    ///   [`no_coalescing`](crate::RequestBuilder::no_coalescing), and
    ///   [`send_stream`](crate::RequestBuilder::send_stream), never do.
    /// - Each caller keeps its own deadline and may be cancelled alone: the
    ///   shared request goes on while any caller still waits for it, so a
    ///   caller that gives up (dropped, or past its
    ///   [`timeout`](crate::RequestBuilder::timeout)) never fails the
    ///   others: it gets a `Total` [timeout](Error::is_timeout) of its own.
    ///   The shared request runs under the longer of its first caller's
    ///   deadline and `total_timeout`, with one concurrency permit, and is
    ///   cancelled (counted as such) when no caller waits any more. So a
    ///   caller that joined with a longer deadline than that still gets the
    ///   shared request's timeout, and a first caller that gives up with no
    ///   one joined is counted as cancelled (its own timeout error has 0
    ///   attempts).
    /// - The shared request is one call in [`ClientStats`](crate::ClientStats)
    ///   and in its first caller's span; each caller that joined it counts in
    ///   `coalesced` (metric `http.client.coalesced`), and its span has
    ///   `coalesced = true`. Each caller's [fallback](Self::fallback) is its
    ///   own.
    ///
    /// Off, it costs a call one branch. Turn it on for reads whose answer
    /// does not depend on when, within the time of one request, they were
    /// sent.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::path("/config"))
    /// #     .respond_with(wiremock::ResponseTemplate::new(200)
    /// #         .set_body_string("v42")
    /// #         .set_delay(std::time::Duration::from_millis(200)))
    /// #     .expect(1)
    /// #     .mount(&server).await;
    /// use resilient_http::ApiClient;
    ///
    /// let client = ApiClient::builder()
    ///     .base_url(server.uri())
    ///     .coalesce_requests(true)
    ///     .build()?;
    /// let (a, b) = tokio::join!(client.get("config").send(), client.get("config").send());
    /// assert_eq!((a?.text()?, b?.text()?), ("v42".into(), "v42".into()));
    /// assert_eq!(client.stats().coalesced, 1);   // one request was sent
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn coalesce_requests(mut self, coalesce: bool) -> Self {
        self.coalesce_requests = coalesce;
        self
    }

    /// A fallback for every call (default none): when a call fails with an
    /// error that means the dependency is unavailable, `fallback` is asked
    /// for an answer, and what it returns is the call's response instead of
    /// the error. `None` keeps the error.
    ///
    /// The errors it is asked about are those of the kinds
    /// [`Retryable`](ErrorKind::Retryable) (timeouts, connection failures,
    /// 429, 502, 503, 504), [`Server`](ErrorKind::Server) (other 5xx) and
    /// [`Rejected`](ErrorKind::Rejected) (an open circuit breaker, a
    /// pushback pause, a rate or concurrency limit, no endpoint): never a
    /// [`Client`](ErrorKind::Client) error such as a 404 (the dependency
    /// answered), a `Decode` or a `Config` error, nor a token provider's or
    /// signer's failure (a bug or a setup to see). Name other kinds with
    /// [`fallback_on`](Self::fallback_on), which answers every error of
    /// the kinds it names.
    ///
    /// It runs once per call, after the last attempt, with the final error
    /// (its kind, status, [`retry_after`](Error::retry_after)...), on the
    /// caller's task: it should return at once (a default, a value kept
    /// from earlier), not call out. Its answer is marked
    /// [`is_synthetic`](ApiResponse::is_synthetic) (see
    /// [`ApiResponse::synthetic`]); the call still counts as failed in
    /// [`ClientStats`](crate::ClientStats), and also in `fallbacks` (metric
    /// `http.client.fallbacks`); its span has `served_by = "fallback"`.
    /// [`RequestBuilder::fallback`](crate::RequestBuilder::fallback)
    /// replaces it for one call. Only buffered calls
    /// ([`send`](crate::RequestBuilder::send) and the typed one-liners)
    /// have fallbacks.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::path("/recommendations"))
    /// #     .respond_with(wiremock::ResponseTemplate::new(503))
    /// #     .mount(&server).await;
    /// # wiremock::Mock::given(wiremock::matchers::path("/users/7"))
    /// #     .respond_with(wiremock::ResponseTemplate::new(404))
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, ApiResponse, Error, StatusCode};
    ///
    /// let client = ApiClient::builder()
    ///     .base_url(server.uri())
    ///     .fallback(|err: &Error| {
    ///         eprintln!("recommendations unavailable, none shown: {err}");
    ///         Some(ApiResponse::synthetic(StatusCode::OK, "[]"))
    ///     })
    ///     .build()?;
    /// let items: Vec<u64> = client.get_json("recommendations").await?;   // 503s
    /// assert!(items.is_empty());
    /// // A 404 is an answer of the dependency: no fallback.
    /// assert_eq!(client.get("users/7").send().await.unwrap_err().status(), Some(StatusCode::NOT_FOUND));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn fallback<F>(mut self, fallback: F) -> Self
    where
        F: Fn(&Error) -> Option<ApiResponse> + Send + Sync + 'static,
    {
        self.fallback = Some(Fallback::new(fallback));
        self
    }

    /// A [fallback](Self::fallback) for the errors of the `kinds` given
    /// only, in place of the default ones.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(503))
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, ApiResponse, ErrorKind, StatusCode};
    ///
    /// // Only when the circuit is open or a limit refuses: nothing was sent.
    /// let client = ApiClient::builder()
    ///     .base_url(server.uri())
    ///     .no_retry()
    ///     .fallback_on([ErrorKind::Rejected], |_| {
    ///         Some(ApiResponse::synthetic(StatusCode::OK, "cached"))
    ///     })
    ///     .build()?;
    /// assert!(client.get("feed").send().await.is_err());   // a 503 is not Rejected
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn fallback_on<K, F>(mut self, kinds: K, fallback: F) -> Self
    where
        K: IntoIterator<Item = ErrorKind>,
        F: Fn(&Error) -> Option<ApiResponse> + Send + Sync + 'static,
    {
        self.fallback = Some(Fallback::on(kinds, fallback));
        self
    }

    /// The retry policy (default [`RetryPolicy::exponential()`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// No retries: one attempt per call.
    pub fn no_retry(self) -> Self {
        self.retry(RetryPolicy::none())
    }

    /// The circuit breaker settings (on by default with [`CircuitBreakerConfig::default()`]).
    pub fn circuit_breaker(mut self, config: CircuitBreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// No circuit breaker.
    pub fn no_circuit_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// A client-side rate limit shared by all clones (default none).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// At most `n` calls in flight at once (default unlimited). A call waits
    /// for a slot within its deadline. Zero is a `Config` error.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n);
        self
    }

    /// Answers GET and HEAD calls from an in-memory HTTP response cache
    /// (feature `cache`; default none): fresh responses with no I/O, stale
    /// ones after a failure (stale-if-error) or while they are refreshed
    /// (stale-while-revalidate). See [`Cache`](crate::Cache) for the rules,
    /// the bounds and an example; [`RequestBuilder::no_cache`](crate::RequestBuilder::no_cache)
    /// bypasses it for one call.
    #[cfg(feature = "cache")]
    pub fn cache(mut self, cache: crate::cache::Cache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The cache's settings, for `Debug`.
    #[cfg(feature = "cache")]
    fn cache_settings(&self) -> Option<&crate::cache::Cache> {
        self.cache.as_ref()
    }

    /// No cache without the feature, for `Debug`.
    #[cfg(not(feature = "cache"))]
    #[allow(clippy::unused_self)]
    fn cache_settings(&self) -> Option<()> {
        None
    }

    /// A header sent with every request. Values of credential-like headers
    /// (`Authorization`, `x-api-key`, `*token*`, ...) are marked sensitive and never
    /// printed.
    pub fn default_header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: Into<BoxError>,
        V: TryInto<HeaderValue>,
        V::Error: Into<BoxError>,
    {
        match header_pair(name, value) {
            Ok((name, value)) => {
                self.headers.insert(name, value);
                self
            }
            Err(err) => self.fail(err),
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request (never printed).
    pub fn bearer_auth(self, token: impl fmt::Display) -> Self {
        match bearer(&token) {
            Ok(value) => {
                let mut this = self;
                this.headers.insert(header::AUTHORIZATION, value);
                this
            }
            Err(err) => self.fail(err),
        }
    }

    /// The `User-Agent` header (default `resilient-http/<version>`).
    pub fn user_agent(self, agent: impl AsRef<str>) -> Self {
        match HeaderValue::from_str(agent.as_ref()) {
            Ok(value) => Self {
                user_agent: Some(value),
                ..self
            },
            Err(e) => self.fail(Error::config_from("invalid user agent", e)),
        }
    }

    /// The largest response body buffered (default 16 MiB). A larger 2xx body is
    /// an [`ErrorKind::Decode`](crate::ErrorKind::Decode) error, never an unbounded read.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// How much of an error response's body (a non-2xx status) the [`Error`]
    /// keeps for [`Error::body_text`] and [`Error::body_json`] (default
    /// 64 KiB). The rest is not read. Separate from `max_response_bytes`,
    /// which bounds 2xx bodies.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(400).set_body_string("x".repeat(500)))
    /// #     .mount(&server).await;
    /// let client = resilient_http::ApiClient::builder()
    ///     .base_url(server.uri())
    ///     .max_error_body_bytes(100)
    ///     .build()?;
    /// let err = client.get("x").send().await.unwrap_err();
    /// assert_eq!(err.body_text().map(str::len), Some(100));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn max_error_body_bytes(mut self, bytes: usize) -> Self {
        self.max_error_body_bytes = bytes;
        self
    }

    /// Redirects followed per attempt (default 10; 0 follows none). A 3xx that is
    /// not followed is an [`ErrorKind::Client`](crate::ErrorKind::Client) error;
    /// which redirects to another origin are never followed is in README's
    /// security section.
    pub fn max_redirects(mut self, n: usize) -> Self {
        self.max_redirects = n;
        self
    }

    /// Idle connections kept per host (reqwest's default: unbounded).
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = Some(n);
        self
    }

    /// How long an idle pooled connection is kept (default
    /// [`DEFAULT_POOL_IDLE_TIMEOUT`](crate::config::DEFAULT_POOL_IDLE_TIMEOUT),
    /// 4 s). Keep it below the keep-alive timeout of the servers you call: a
    /// request sent on a connection the server is closing fails, and unless it
    /// is safe to repeat it cannot be retried.
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// TCP keepalive probes on pooled connections (default off).
    pub fn tcp_keepalive(mut self, interval: Duration) -> Self {
        self.tcp_keepalive = Some(interval);
        self
    }

    /// Whether request paths may leave the base URL's path (default `false`).
    ///
    /// By default a relative path that would resolve outside the base path is
    /// a [`Config`](crate::ErrorKind::Config) error and nothing is sent: a
    /// `..` segment (also percent-encoded, `%2e%2e`), a `.` segment after the
    /// first, `//host`, a `\`, or `name:` read as a scheme. `true` restores
    /// the plain RFC 3986 join for every request; prefer
    /// [`RequestBuilder::allow_path_escape`](crate::RequestBuilder::allow_path_escape)
    /// for the few paths that need it, and [`Segments`](crate::Segments) for
    /// text from outside. Control characters and `#` stay refused. The rules
    /// are listed at [`ApiClient::request`].
    ///
    /// On a client with [endpoints](Self::endpoints) or a
    /// [resolver](Self::resolver), an escape stays on the origin of the
    /// endpoint each attempt goes to: `..` may climb there, but a path that
    /// would reach another origin (`//host/x`, or `https:host/x` from an
    /// `http` endpoint) is a [`Config`](crate::ErrorKind::Config) error and
    /// nothing is sent, since the client's token and credential-like default
    /// headers go to its endpoints. Call another host with a full
    /// `scheme://` URL.
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::ApiClient;
    ///
    /// let client = ApiClient::builder()
    ///     .base_url("http://127.0.0.1:8080/v1/")
    ///     .allow_path_escape(true)   // "../v2/users" may now reach /v2/users
    ///     .build()?;
    /// # Ok::<(), resilient_http::Error>(())
    /// ```
    pub fn allow_path_escape(mut self, allow: bool) -> Self {
        self.allow_path_escape = allow;
        self
    }

    /// Speak HTTP/2 without negotiation (for `h2c` services).
    pub fn http2_prior_knowledge(mut self) -> Self {
        self.http2_prior_knowledge = true;
        self
    }

    /// Resolves `host` to `addresses` instead of asking DNS, like curl's
    /// `--resolve`: for tests, and for pinning a name to known instances. The
    /// port of each address is used only when the URL names none (port 0
    /// keeps the URL's port). An empty list makes the name unresolvable: calls
    /// to it fail as a DNS failure would (`is_connect()`, `Retryable`).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(200))
    /// #     .mount(&server).await;
    /// use resilient_http::ApiClient;
    ///
    /// let client = ApiClient::builder()
    ///     .base_url(format!("http://orders.test:{}/", server.address().port()))
    ///     .resolve("orders.test", [*server.address()])
    ///     .build()?;
    /// assert_eq!(client.get("health").send().await?.status(), 200);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn resolve(
        mut self,
        host: impl Into<String>,
        addresses: impl IntoIterator<Item = std::net::SocketAddr>,
    ) -> Self {
        self.resolve
            .push((host.into(), addresses.into_iter().collect()));
        self
    }

    /// Accept any TLS certificate, valid or not.
    ///
    /// This turns off the protection TLS gives: anyone on the path can read
    /// and change the traffic. It exists for test setups with self-signed
    /// certificates; `build()` logs a WARN when it is on. The name is
    /// reqwest's own.
    pub fn tls_danger_accept_invalid_certs(mut self, accept: bool) -> Self {
        self.tls.accept_invalid_certs = accept;
        self
    }

    /// Trusts the CA certificates in `pem` (one or more `CERTIFICATE`
    /// blocks), in addition to the platform's roots unless
    /// [`tls_built_in_roots(false)`](Self::tls_built_in_roots). Call it again
    /// to add more. For a private PKI: prefer this to turning verification off.
    ///
    /// Read once, when the client is built: a rotated CA is trusted by a
    /// client built after the rotation.
    ///
    /// # Errors
    ///
    /// `build()` returns a [`Config`](crate::ErrorKind::Config) error when
    /// `pem` holds no valid certificate.
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::{ApiClient, ErrorKind};
    ///
    /// let err = ApiClient::builder()
    ///     .tls_root_certificate_pem(b"not a certificate")
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Config);
    /// ```
    pub fn tls_root_certificate_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls.roots.push(pem.as_ref().to_vec());
        self
    }

    /// Whether the platform's root certificates are trusted (default `true`).
    /// `false` trusts only the roots given with
    /// [`tls_root_certificate_pem`](Self::tls_root_certificate_pem) (at least
    /// one is then needed, or `build()` fails): a service that only ever calls
    /// its company's PKI cannot be fooled by a certificate from a public CA.
    pub fn tls_built_in_roots(mut self, enabled: bool) -> Self {
        self.tls.built_in_roots = Some(enabled);
        self
    }

    /// The client certificate presented to servers that ask for one (mutual
    /// TLS): `cert_chain_pem` holds the client's certificate first, then any
    /// intermediates; `key_pem` its private key (PKCS#8, PKCS#1 or SEC1 PEM;
    /// PKCS#8 only with the `native-tls` stack, see
    /// [TLS stacks](crate#tls-stacks)). The key is never shown by `Debug`.
    ///
    /// A server that refuses the certificate (or its absence) fails the call
    /// with a [`Certificate`](crate::ErrorReason::Certificate) error of kind
    /// [`Config`](crate::ErrorKind::Config), also when a TLS 1.3 server says
    /// so only after the request was written. Read once, when the client is
    /// built: to rotate a short-lived certificate, build a new client (a
    /// reload in place is not supported yet).
    ///
    /// # Errors
    ///
    /// `build()` returns a [`Config`](crate::ErrorKind::Config) error when
    /// either PEM is invalid or the key is missing.
    pub fn tls_identity_pem(
        mut self,
        cert_chain_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        self.tls.identity = Some(Identity {
            cert_chain: cert_chain_pem.as_ref().to_vec(),
            key: key_pem.as_ref().to_vec(),
        });
        self
    }

    /// The lowest TLS version accepted (default [`TlsVersion::V1_2`]).
    pub fn tls_min_version(mut self, version: TlsVersion) -> Self {
        self.tls.min_version = Some(version);
        self
    }

    /// The name the server's certificate must carry when the base URL (or
    /// the endpoints) name the server by IP address: the connection goes to
    /// the address, while SNI, the certificate check and the `Host` header use
    /// `name`.
    ///
    /// How: the host of `base_url` and of the endpoints is replaced by `name`
    /// (so [`ApiClient::base_url`], errors and spans show `name` with the
    /// URL's port), and the transport resolves `name` to that address. Each
    /// endpoint keeps its own address (they may differ: each reaches its own,
    /// as with [`Endpoint::address`]); so do the endpoints a
    /// [`resolver`](Self::resolver) returns by IP address (those it returns
    /// by name keep their name). A `base_url` or endpoint whose host is not
    /// an IP address, or a `name` that is not a DNS name, are `Config` errors
    /// from `build()`. A request to an absolute URL is sent as written.
    /// Through a [`proxy`](Self::proxy), the proxy is asked for `name` and
    /// resolves it itself.
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::ApiClient;
    ///
    /// let client = ApiClient::builder()
    ///     .base_url("https://10.0.0.7:8443/api/")
    ///     .tls_server_name("orders.internal")
    ///     .build()?;
    /// assert_eq!(client.base_url().unwrap().as_str(), "https://orders.internal:8443/api/");
    /// # Ok::<(), resilient_http::Error>(())
    /// ```
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls.server_name = Some(name.into());
        self
    }

    /// Sends every call through the proxy at `url` (`http://host:port`; a
    /// bare `host:port` means `http://`), HTTPS calls through a `CONNECT`
    /// tunnel, whatever the environment says. Credentials in the URL
    /// (`http://user:password@proxy:3128`) go to the proxy as
    /// `Proxy-Authorization` and are never shown by `Debug` or errors.
    /// Loopback destinations and the [`proxy_bypass`](Self::proxy_bypass)
    /// rules still go direct.
    ///
    /// Without it, the environment's `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`
    /// and `NO_PROXY` are read when the client is built (as curl does), but
    /// never for loopback (`localhost`, `127.0.0.0/8`, `::1`).
    ///
    /// # Errors
    ///
    /// `build()` returns a [`Config`](crate::ErrorKind::Config) error for a URL
    /// that is not `http://` or `https://`, or with [`no_proxy`](Self::no_proxy).
    pub fn proxy(mut self, url: impl AsRef<str>) -> Self {
        self.proxy.url = Some(url.as_ref().to_owned());
        self
    }

    /// Destinations that never go through a proxy, added to loopback and the
    /// environment's `NO_PROXY`: a host name (`orders.internal`, which also
    /// covers its subdomains; `.internal` for a whole domain), an IP address,
    /// a network (`10.0.0.0/8`) or `*` for all. Call it again to add more.
    pub fn proxy_bypass<I, S>(mut self, rules: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.proxy
            .bypass
            .extend(rules.into_iter().map(|r| r.as_ref().trim().to_owned()));
        self
    }

    /// No proxy for any call: the environment's `HTTPS_PROXY`, `HTTP_PROXY`
    /// and `ALL_PROXY` are ignored. Setting both `proxy` and `no_proxy` is a
    /// `Config` error.
    pub fn no_proxy(mut self) -> Self {
        self.proxy.off = true;
        self
    }

    /// The former name of
    /// [`tls_danger_accept_invalid_certs`](Self::tls_danger_accept_invalid_certs).
    #[deprecated(
        since = "0.2.0",
        note = "renamed tls_danger_accept_invalid_certs, as in reqwest 0.13"
    )]
    pub fn danger_accept_invalid_certs(self, accept: bool) -> Self {
        self.tls_danger_accept_invalid_certs(accept)
    }

    /// Validates every option and builds the client.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for the first invalid
    /// input: a URL that is not `http`/`https`, a base URL or endpoint with
    /// a query or a fragment, an invalid header, a zero timeout,
    /// `max_attempts(0)`, `max_concurrency(0)`, a budget ratio or
    /// failure-rate threshold outside `0.0..=1.0`, `min_calls > window`, a zero
    /// window, a rate of 0, an invalid PEM certificate or key, a
    /// `tls_server_name` that cannot be honoured, an invalid proxy URL, or a
    /// TLS backend that cannot start.
    #[allow(clippy::too_many_lines)]
    pub fn build(self) -> Result<ApiClient, Error> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let mut base = self
            .base_url
            .as_deref()
            .map(|raw| origin::parse_base(raw, "base_url"))
            .transpose()?;
        let has_endpoints = !self.endpoints.is_empty() || self.resolver.is_some();
        if base.is_some() && has_endpoints {
            return Err(Error::config(
                "set either base_url or endpoints/resolver, not both",
            ));
        }
        if self.token_provider.is_some() && self.headers.contains_key(header::AUTHORIZATION) {
            return Err(Error::config(
                "set either a token provider or an Authorization default header, not both",
            ));
        }
        let mut endpoints = self
            .endpoints
            .iter()
            .map(parse_endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        let server_address = match (&self.tls.server_name, base.as_mut()) {
            (Some(name), Some(base)) => {
                Some((name.clone(), crate::tls::server_name_override(name, base)?))
            }
            (Some(name), None) => {
                if !has_endpoints {
                    return Err(Error::config(
                        "tls_server_name needs a base_url or endpoints whose host is an IP address",
                    ));
                }
                for ep in &mut endpoints {
                    if !crate::tls::server_name_for_endpoint(name, ep)? {
                        return Err(Error::config(
                            "tls_server_name needs the host of base_url and endpoints to be an IP address",
                        ));
                    }
                }
                None
            }
            (None, _) => None,
        };
        for (name, value) in [
            ("resolver_refresh", self.resolver_refresh),
            ("connect_timeout", self.connect_timeout),
            ("read_timeout", self.read_timeout),
            ("attempt_timeout", self.attempt_timeout),
            ("total_timeout", self.total_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::config(format!("{name} must be greater than zero")));
            }
        }
        self.retry.validate()?;
        if let Some(cfg) = &self.breaker {
            cfg.validate()?;
        }
        match self.max_concurrency {
            Some(0) => return Err(Error::config("max_concurrency must be at least 1")),
            Some(n) if n > tokio::sync::Semaphore::MAX_PERMITS => {
                return Err(Error::config(format!(
                    "max_concurrency must be at most {}",
                    tokio::sync::Semaphore::MAX_PERMITS
                )));
            }
            _ => {}
        }
        let limits = Limits::from_settings(self.rate_limit.as_ref(), self.max_concurrency)?;
        if let Some(h) = &self.hedging {
            h.validate()?;
        }
        #[cfg(feature = "cache")]
        if let Some(cache) = &self.cache {
            cache.validate()?;
        }
        if let Some(a) = &self.adaptive_concurrency {
            if self.max_concurrency.is_some() {
                return Err(Error::config(
                    "set either max_concurrency or adaptive_concurrency, not both",
                ));
            }
            a.validate()?;
        }

        let transport = self.transport();
        let pin = server_address
            .as_ref()
            .map(|(name, at)| (name.as_str(), *at));
        let http = transport.client(pin)?;
        let balancer = has_endpoints.then(|| {
            Balancer::new(
                endpoints,
                self.load_balance,
                self.breaker.clone(),
                self.resolver.clone(),
                self.resolver_refresh,
                transport,
                self.tls.server_name.clone(),
            )
        });
        let breakers = self.breaker.map(|cfg| Breakers::new(cfg, base.as_ref()));
        let budget = self.retry.budget.start();
        let limits = limits.with_adaptive(
            self.adaptive_concurrency
                .map(|a| a.start(tokio::time::Instant::now())),
        );
        // A token fetch is bounded like a call (see `TokenProvider`),
        // whatever the deadline of the call that makes it.
        let total_timeout = self.total_timeout;
        let mut inner = Inner::new(
            http,
            base,
            balancer,
            self.token_provider
                .map(|provider| TokenCache::new(provider, total_timeout)),
            self.hooks.into_boxed_slice(),
            self.attempt_timeout,
            self.total_timeout,
            self.max_response_bytes,
            self.retry,
            budget,
            breakers,
            limits,
            self.headers,
        );
        inner.allow_path_escape = self.allow_path_escape;
        inner.read_timeout = self.read_timeout;
        inner.max_error_body_bytes = self.max_error_body_bytes;
        inner.signer = self.signer;
        inner.hedging = self.hedging;
        inner.coalescer = self.coalesce_requests.then(Coalescer::new);
        inner.fallback = self.fallback;
        #[cfg(feature = "cache")]
        {
            inner.cache = self.cache.map(crate::cache::Store::new);
        }
        Ok(ApiClient::from_inner(Arc::new(inner)))
    }

    /// The settings of the client's transport (and of its endpoints' own).
    fn transport(&self) -> Transport {
        Transport {
            connect_timeout: self.connect_timeout,
            user_agent: self.user_agent.clone(),
            max_redirects: self.max_redirects,
            pool_max_idle_per_host: self.pool_max_idle_per_host,
            pool_idle_timeout: self.pool_idle_timeout,
            tcp_keepalive: self.tcp_keepalive,
            http2_prior_knowledge: self.http2_prior_knowledge,
            resolve: self.resolve.clone(),
            tls: self.tls.clone(),
            proxy: self.proxy.clone(),
        }
    }
}
