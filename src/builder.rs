//! `ApiClientBuilder`: every option of a client, validated once in `build()`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use url::Url;

use crate::auth::{TokenCache, TokenProvider};
use crate::balance::{Endpoint, LoadBalance, parse_endpoint};
use crate::breaker::{Breakers, CircuitBreakerConfig};
use crate::client::{ApiClient, Inner};
use crate::discovery::{Balancer, DEFAULT_RESOLVER_REFRESH, Resolver};
use crate::error::{BoxError, Error};
use crate::hook::RequestHook;
use crate::limit::{Limits, RateLimit};
use crate::redact;
use crate::retry::RetryPolicy;

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
/// | `max_response_bytes` | 16 MiB |
/// | `max_redirects` | 10 |
/// | `user_agent` | `resilient-http/<version>` |
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
    connect_timeout: Duration,
    read_timeout: Duration,
    attempt_timeout: Duration,
    total_timeout: Duration,
    retry: RetryPolicy,
    breaker: Option<CircuitBreakerConfig>,
    rate_limit: Option<RateLimit>,
    max_concurrency: Option<usize>,
    headers: HeaderMap,
    user_agent: Option<HeaderValue>,
    max_response_bytes: usize,
    max_redirects: usize,
    pool_max_idle_per_host: Option<usize>,
    pool_idle_timeout: Option<Duration>,
    tcp_keepalive: Option<Duration>,
    http2_prior_knowledge: bool,
    accept_invalid_certs: bool,
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
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("total_timeout", &self.total_timeout)
            .field("retry", &self.retry)
            .field("circuit_breaker", &self.breaker)
            .field("rate_limit", &self.rate_limit)
            .field("max_concurrency", &self.max_concurrency)
            .field("default_headers", &self.headers.keys().collect::<Vec<_>>())
            .field("max_response_bytes", &self.max_response_bytes)
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
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
            retry: RetryPolicy::exponential(),
            breaker: Some(CircuitBreakerConfig::default()),
            rate_limit: None,
            max_concurrency: None,
            headers: HeaderMap::new(),
            user_agent: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            pool_max_idle_per_host: None,
            pool_idle_timeout: None,
            tcp_keepalive: None,
            http2_prior_knowledge: false,
            accept_invalid_certs: false,
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
    /// replaces the base path, and an absolute URL replaces the base.
    /// Without a base URL every request needs an absolute URL. Credential-like
    /// default headers are only sent to the base URL's origin.
    pub fn base_url(mut self, url: impl AsRef<str>) -> Self {
        self.base_url = Some(url.as_ref().to_owned());
        self
    }

    /// Several instances of the service instead of one `base_url`: request
    /// paths are joined onto whichever instance an attempt goes to. Takes URLs
    /// (`&str`, `String`, [`Url`]) or weighted [`Endpoint`]s; calling it again
    /// adds more. [`load_balance`](Self::load_balance) says how attempts are
    /// spread; an endpoint whose circuit breaker is open is skipped while
    /// others can take the attempt, and a retry goes to another endpoint when
    /// one is available. Setting both `base_url` and endpoints is a `Config`
    /// error.
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
    /// failed resolution is retried sooner (from 250 ms, doubling).
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
    /// replaces it for one call.
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = timeout;
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

    /// Redirects followed per attempt (default 10; 0 follows none). A 3xx that is
    /// not followed is an [`ErrorKind::Client`](crate::ErrorKind::Client) error.
    pub fn max_redirects(mut self, n: usize) -> Self {
        self.max_redirects = n;
        self
    }

    /// Idle connections kept per host (reqwest's default: unbounded).
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = Some(n);
        self
    }

    /// How long an idle pooled connection is kept (reqwest's default: 90 s).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = Some(timeout);
        self
    }

    /// TCP keepalive probes on pooled connections (default off).
    pub fn tcp_keepalive(mut self, interval: Duration) -> Self {
        self.tcp_keepalive = Some(interval);
        self
    }

    /// Speak HTTP/2 without negotiation (for `h2c` services).
    pub fn http2_prior_knowledge(mut self) -> Self {
        self.http2_prior_knowledge = true;
        self
    }

    /// Accept any TLS certificate, valid or not.
    ///
    /// This turns off the protection TLS gives: anyone on the path can read
    /// and change the traffic. It exists for test setups with self-signed
    /// certificates; `build()` logs a WARN when it is on.
    pub fn danger_accept_invalid_certs(mut self, accept: bool) -> Self {
        self.accept_invalid_certs = accept;
        self
    }

    /// Validates every option and builds the client.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for the first invalid
    /// input: a URL that is not `http`/`https`, an invalid header, a zero
    /// timeout, `max_attempts(0)`, `max_concurrency(0)`, a budget ratio or
    /// failure-rate threshold outside `0.0..=1.0`, `min_calls > window`, a zero
    /// window, a rate of 0, or a TLS backend that cannot start.
    pub fn build(self) -> Result<ApiClient, Error> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let base = self
            .base_url
            .as_deref()
            .map(|raw| parse_base(raw, "base_url"))
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
        let endpoints = self
            .endpoints
            .iter()
            .map(parse_endpoint)
            .collect::<Result<Vec<_>, _>>()?;
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
        let rate = self
            .rate_limit
            .map(|r| r.validate().map(|quota| (quota, r.waits())))
            .transpose()?;
        if self.max_concurrency == Some(0) {
            return Err(Error::config("max_concurrency must be at least 1"));
        }

        let http = self.transport()?;
        let balancer = has_endpoints.then(|| {
            Balancer::new(
                endpoints,
                self.load_balance,
                self.breaker.clone(),
                self.resolver.clone(),
                self.resolver_refresh,
            )
        });
        let breakers = self.breaker.map(|cfg| Breakers::new(cfg, base.as_ref()));
        let budget = self.retry.budget.start();
        let limits = Limits::new(rate, self.max_concurrency);
        Ok(ApiClient::from_inner(Arc::new(Inner::new(
            http,
            base,
            balancer,
            self.token_provider.map(TokenCache::new),
            self.hooks.into_boxed_slice(),
            self.attempt_timeout,
            self.total_timeout,
            self.max_response_bytes,
            self.retry,
            budget,
            breakers,
            limits,
            self.headers,
        ))))
    }

    fn transport(&self) -> Result<reqwest::Client, Error> {
        let max_redirects = self.max_redirects;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if max_redirects == 0 {
                return attempt.stop();
            }
            // `previous()` holds the original URL and every redirect followed.
            if attempt.previous().len() > max_redirects {
                return attempt.error(TooManyRedirects(max_redirects));
            }
            // reqwest drops Authorization and cookies on a redirect to another
            // host; a request with other credential headers (x-api-key...) is
            // not redirected there at all. The flag is set per attempt.
            // Only http(s) is followed; any other scheme comes back as the 3xx.
            if !matches!(attempt.url().scheme(), "http" | "https") {
                return attempt.stop();
            }
            // Never from https down to plain http: the 3xx comes back.
            let from_https = attempt
                .previous()
                .last()
                .is_some_and(|u| u.scheme() == "https");
            if from_https && attempt.url().scheme() == "http" {
                return attempt.stop();
            }
            // reqwest drops Authorization and cookies on a redirect to another
            // origin; a request with other credential headers (x-api-key...) is
            // not redirected there at all. The flag is set per attempt.
            if crate::pipeline::REDIRECT_GUARD
                .try_with(|guard| *guard)
                .unwrap_or(false)
            {
                let same = attempt
                    .previous()
                    .first()
                    .is_none_or(|first| redact::same_origin(first, attempt.url()));
                if !same {
                    return attempt.stop();
                }
            }
            attempt.follow()
        });
        let user_agent = self.user_agent.clone().unwrap_or_else(|| {
            HeaderValue::from_static(concat!("resilient-http/", env!("CARGO_PKG_VERSION")))
        });
        let mut b = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .user_agent(user_agent)
            // The original URL's query may hold credentials.
            .referer(false)
            .redirect(policy)
            // Attempts are ours to count and decide; reqwest must not add its own.
            .retry(reqwest::retry::never())
            .tcp_nodelay(true);
        if let Some(n) = self.pool_max_idle_per_host {
            b = b.pool_max_idle_per_host(n);
        }
        if let Some(t) = self.pool_idle_timeout {
            b = b.pool_idle_timeout(t);
        }
        if let Some(t) = self.tcp_keepalive {
            b = b.tcp_keepalive(t);
        }
        if self.http2_prior_knowledge {
            b = b.http2_prior_knowledge();
        }
        if self.accept_invalid_certs {
            tracing::warn!(
                target: "resilient_http::tls",
                "TLS certificate verification is OFF (danger_accept_invalid_certs): \
                 traffic can be read and changed by anyone on the path"
            );
            b = b.tls_danger_accept_invalid_certs(true);
        }
        b.build()
            .map_err(|e| Error::config_from("could not build the HTTP transport", e))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("more than {0} redirects")]
struct TooManyRedirects(usize);

pub(crate) fn parse_base(raw: &str, what: &'static str) -> Result<Url, Error> {
    let mut url =
        Url::parse(raw).map_err(|e| Error::config(format!("invalid {what}")).with_source(e))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::config(format!(
            "{what} must be an http or https URL"
        )));
    }
    if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
        return Err(Error::config(format!("{what} must have a host")));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Converts a header name and value, marking credential-like values sensitive.
pub(crate) fn header_pair<K, V>(name: K, value: V) -> Result<(HeaderName, HeaderValue), Error>
where
    K: TryInto<HeaderName>,
    K::Error: Into<BoxError>,
    V: TryInto<HeaderValue>,
    V::Error: Into<BoxError>,
{
    let name: HeaderName = name
        .try_into()
        .map_err(|e| Error::config_from("invalid header name", e))?;
    let mut value: HeaderValue = value
        .try_into()
        .map_err(|e| Error::config_from("invalid header value", e))?;
    redact::mark_sensitive(&name, &mut value);
    Ok((name, value))
}

/// `Bearer <token>`, marked sensitive.
pub(crate) fn bearer(token: &dyn fmt::Display) -> Result<HeaderValue, Error> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| Error::config_from("invalid bearer token", e))?;
    value.set_sensitive(true);
    Ok(value)
}
