//! Configuration as data: [`ApiClientConfig`] and its sections, for
//! configuration files, and the defaults as constants.
//!
//! Every key is named like the builder method it stands for, every key is
//! optional (absent means the builder's default), and an unknown key is an
//! error that names it. Durations are text (`"2s"`, `"150ms"`, see
//! `duration.rs`). A section that can be switched off (`retry`, `retry.budget`,
//! `circuit_breaker`, `circuit_breaker.failure_rate`) is either a table of
//! settings or a bare `true`/`false`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::balance::{Endpoint, LoadBalance};
use crate::breaker::CircuitBreakerConfig;
use crate::builder::ApiClientBuilder;
use crate::client::ApiClient;
use crate::error::Error;
use crate::redact;
use crate::retry::RetryPolicy;
use crate::tls::TlsVersion;

mod duration;
mod section;

#[cfg(feature = "cache")]
pub use section::CacheSection;
#[cfg(feature = "redis")]
pub use section::SharedRateLimitSection;
pub use section::{
    AdaptiveConcurrencySection, CircuitBreakerSection, FailureRateSection, HedgingSection,
    RateLimitSection, RetryBudgetSection, RetrySection,
};

pub use crate::builder::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_ERROR_BODY_BYTES,
    DEFAULT_MAX_REDIRECTS, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_POOL_IDLE_TIMEOUT,
    DEFAULT_READ_TIMEOUT, DEFAULT_TOTAL_TIMEOUT,
};
#[cfg(feature = "cache")]
pub use crate::cache::DEFAULT_CACHE_MAX_BYTES;
pub use crate::discovery::DEFAULT_RESOLVER_REFRESH;

/// Every option of an [`ApiClientBuilder`] that can be written as data, for
/// loading a client's settings from a configuration file.
///
/// It implements serde's `Deserialize` and `Serialize`, so any serde format
/// works (TOML, YAML, JSON...); the crate itself depends on none. Keys are the
/// builder's method names. Every key is optional: an absent key (or an empty
/// file) leaves the builder's default, which each field's docs name. An unknown
/// key, at the top or in a section, is an error that names it, so a typo does
/// not silently leave a default in place.
///
/// Durations are strings in `humantime`'s format: one or more spans of a
/// number and a unit, such as `"2s"`, `"150ms"`, `"1.5s"`, `"1m 30s"`, `"1h"`
/// or `"500us"` (units `h`, `m`, `s`, `ms`, `us`, `ns`, and long forms such as
/// `sec`). They are written back as spans (`"2s"`, `"1s 500ms"`).
///
/// The sections `retry`, `retry.budget`, `circuit_breaker` and
/// `circuit_breaker.failure_rate` can be switched off with a bare `false` (or
/// `enabled = false` in the table).
///
/// Values are checked when the client is built: [`ApiClient::from_config`]
/// reports an invalid one (a rate of 0, `max_attempts = 0`, a bad header...) as
/// an [`ErrorKind::Config`](crate::ErrorKind::Config) error, like the builder.
///
/// `Debug` never shows the `bearer_token`, the values of credential-like
/// `default_headers`, or credentials in any URL (`base_url`, `endpoints`,
/// `proxy`, `etcd.url`, `rate_limit.shared.url`). Serializing writes them
/// all.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::header("x-tenant", "acme"))
/// #     .respond_with(wiremock::ResponseTemplate::new(200).set_body_string("ok"))
/// #     .mount(&server).await;
/// use resilient_http::{ApiClient, ApiClientConfig};
///
/// let text = r#"
///     base_url = "http://users.internal:8080/api/"
///     connect_timeout = "500ms"
///     total_timeout = "5s"
///     max_concurrency = 64
///     user_agent = "orders-service/1.4"
///
///     [default_headers]
///     x-tenant = "acme"
///
///     [retry]
///     max_attempts = 4
///     initial_backoff = "50ms"
///     budget = { ratio = 0.1, min_per_second = 5 }
///
///     [circuit_breaker]
///     consecutive_failures = 3
///     failure_rate = false
///     open_duration = "30s"
///
///     [rate_limit]
///     per_second = 100
///     burst = 20
/// "#;
/// let mut config: ApiClientConfig = toml::from_str(text)?;
/// # config.base_url = Some(server.uri());
/// let client = ApiClient::from_config(&config)?;
/// assert_eq!(client.get("users").send().await?.text()?, "ok");
///
/// // A typo is an error that names the key.
/// let err = toml::from_str::<ApiClientConfig>("conect_timeout = \"1s\"").unwrap_err();
/// assert!(err.to_string().contains("conect_timeout"));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ApiClientConfig {
    /// The URL request paths are joined onto (default none: every request
    /// needs an absolute URL). See [`ApiClientBuilder::base_url`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Several instances instead of `base_url`: each a URL, or a table with
    /// `url` and `weight`. See [`ApiClientBuilder::endpoints`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointEntry>,
    /// `"least_outstanding"` (default), `"round_robin"` or
    /// `"weighted_round_robin"`. See [`ApiClientBuilder::load_balance`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balance: Option<LoadBalance>,
    /// Time between two resolutions of the endpoint list (default `"10s"`).
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub resolver_refresh: Option<Duration>,
    /// Endpoints from etcd (feature `etcd`): `{ url = "http://127.0.0.1:2379",
    /// prefix = "/services/orders/" }`, optionally `base_path`. See
    /// [`EtcdResolver`](crate::EtcdResolver).
    ///
    /// The lookups go through a client of their own (2 s per attempt, 5 s in
    /// all) with this configuration's TLS and proxy keys: `tls_root_certificate_pem`,
    /// `tls_built_in_roots`, `tls_identity_pem`, `tls_min_version`, `proxy`,
    /// `proxy_bypass` and `no_proxy`, so an `https://` etcd behind the same
    /// private CA (or asking for the same client certificate) is reached.
    /// `tls_server_name` and `tls_danger_accept_invalid_certs` apply to the
    /// service's endpoints only.
    #[cfg(feature = "etcd")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdSection>,
    /// Endpoints from DNS (feature `dns`): `{ name = "orders.internal", port
    /// = 8080 }` or `{ srv = "_http._tcp.orders.internal" }`, optionally
    /// `nameserver`, `https` and `base_path`. See
    /// [`DnsResolver`](crate::DnsResolver).
    #[cfg(feature = "dns")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsSection>,
    /// TCP connect and TLS handshake limit (default `"2s"`).
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// The longest gap between two reads (default `"10s"`).
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<Duration>,
    /// One attempt, headers and buffered body (default `"10s"`).
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub attempt_timeout: Option<Duration>,
    /// The whole call: waits, attempts and backoff (default `"30s"`).
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub total_timeout: Option<Duration>,
    /// The retry policy (default [`RetryPolicy::exponential()`]); `false` for
    /// one attempt per call, like [`ApiClientBuilder::no_retry`].
    #[serde(with = "section::switch", skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySection>,
    /// The circuit breaker (default on, [`CircuitBreakerConfig::default()`]);
    /// `false` for none, like [`ApiClientBuilder::no_circuit_breaker`].
    #[serde(with = "section::switch", skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSection>,
    /// A client-side rate limit (default none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSection>,
    /// At most this many calls in flight (default unlimited; 0 is an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    /// A concurrency limit that follows the dependency's capacity, instead of
    /// `max_concurrency` (default off): `{ initial = 20, floor = 4, ceiling =
    /// 256 }`, every key optional. See [`ApiClientBuilder::adaptive_concurrency`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive_concurrency: Option<AdaptiveConcurrencySection>,
    /// Hedged requests (default off): `{ percentile = 0.95 }` or
    /// `{ delay = "20ms" }`, and `max_hedges`. See
    /// [`ApiClientBuilder::hedging`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hedging: Option<HedgingSection>,
    /// A response cache (feature `cache`; default none): `{ max_entries =
    /// 10000, stale_if_error = "5m" }`, every key optional. See
    /// [`CacheSection`] and [`ApiClientBuilder::cache`].
    #[cfg(feature = "cache")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSection>,
    /// Headers sent with every request, name to value (default none). Values
    /// of credential-like headers are never printed; like
    /// [`ApiClientBuilder::default_header`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub default_headers: BTreeMap<String, String>,
    /// The `User-Agent` header (default `resilient-http/<version>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// A token sent as `Authorization: Bearer <token>` with every request
    /// (default none), like [`ApiClientBuilder::bearer_auth`]. A secret: never
    /// shown by `Debug`. It takes precedence over an `authorization` entry in
    /// `default_headers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<String>,
    /// The largest response body buffered, in bytes (default 16 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<usize>,
    /// How much of an error response's body is kept, in bytes (default
    /// 64 KiB); like [`ApiClientBuilder::max_error_body_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_error_body_bytes: Option<usize>,
    /// Redirects followed per attempt (default 10; 0 follows none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_redirects: Option<usize>,
    /// Idle connections kept per host (default: reqwest's, unbounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_max_idle_per_host: Option<usize>,
    /// How long an idle pooled connection is kept (default `"4s"`: see
    /// [`ApiClientBuilder::pool_idle_timeout`]).
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub pool_idle_timeout: Option<Duration>,
    /// TCP keepalive interval on pooled connections (default off).
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<Duration>,
    /// Speak HTTP/2 without negotiation, for `h2c` services (default `false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_prior_knowledge: Option<bool>,
    /// Accept any TLS certificate (default `false`). Turns off what TLS
    /// protects; for test setups only. See
    /// [`ApiClientBuilder::tls_danger_accept_invalid_certs`]; the key
    /// `danger_accept_invalid_certs` is accepted too.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(alias = "danger_accept_invalid_certs")]
    pub tls_danger_accept_invalid_certs: Option<bool>,
    /// A PEM file of CA certificates to trust (default none), read when the
    /// client is built. See [`ApiClientBuilder::tls_root_certificate_pem`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_root_certificate_pem: Option<PathBuf>,
    /// Whether the platform's roots are trusted too (default `true`). See
    /// [`ApiClientBuilder::tls_built_in_roots`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_built_in_roots: Option<bool>,
    /// The client certificate for mutual TLS: `{ cert_chain = "client.pem",
    /// key = "client.key" }`, PEM files read when the client is built (default
    /// none). See [`ApiClientBuilder::tls_identity_pem`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_identity_pem: Option<TlsIdentityFiles>,
    /// The lowest TLS version, `"1.2"` (default) or `"1.3"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_min_version: Option<TlsVersion>,
    /// The name the server's certificate must carry when the base URL names
    /// it by IP address (default none). See [`ApiClientBuilder::tls_server_name`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Every call through this proxy (default: the environment's). Its
    /// password is never shown by `Debug`. See [`ApiClientBuilder::proxy`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Destinations that never go through a proxy (default none beyond
    /// loopback and `NO_PROXY`). See [`ApiClientBuilder::proxy_bypass`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxy_bypass: Vec<String>,
    /// `true`: no proxy, the environment ignored (default `false`). See
    /// [`ApiClientBuilder::no_proxy`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_proxy: Option<bool>,
    /// Let request paths leave the base URL's path (`..`, `//host`...;
    /// default `false`). See [`ApiClientBuilder::allow_path_escape`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_path_escape: Option<bool>,
    /// Identical GET and HEAD calls in flight share one request (default
    /// `false`). See [`ApiClientBuilder::coalesce_requests`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesce_requests: Option<bool>,
}

impl fmt::Debug for ApiClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base_url = self.base_url.as_deref().map(redact::raw_url);
        let default_headers: BTreeMap<&str, &str> = self
            .default_headers
            .iter()
            .map(|(name, value)| {
                let shown = if redact::is_sensitive_name(name) {
                    redact::REDACTED
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect();
        let mut d = f.debug_struct("ApiClientConfig");
        d.field("base_url", &base_url)
            .field(
                "endpoints",
                &self
                    .endpoints
                    .iter()
                    .map(EndpointEntry::endpoint)
                    .collect::<Vec<_>>(),
            )
            .field("load_balance", &self.load_balance)
            .field("resolver_refresh", &self.resolver_refresh)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("total_timeout", &self.total_timeout)
            .field("retry", &self.retry)
            .field("circuit_breaker", &self.circuit_breaker)
            .field("rate_limit", &self.rate_limit)
            .field("max_concurrency", &self.max_concurrency)
            .field("adaptive_concurrency", &self.adaptive_concurrency)
            .field("hedging", &self.hedging)
            .field("default_headers", &default_headers)
            .field("user_agent", &self.user_agent)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| redact::REDACTED),
            )
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_error_body_bytes", &self.max_error_body_bytes)
            .field("max_redirects", &self.max_redirects)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("http2_prior_knowledge", &self.http2_prior_knowledge)
            .field(
                "tls_danger_accept_invalid_certs",
                &self.tls_danger_accept_invalid_certs,
            )
            .field("tls_root_certificate_pem", &self.tls_root_certificate_pem)
            .field("tls_built_in_roots", &self.tls_built_in_roots)
            .field("tls_identity_pem", &self.tls_identity_pem)
            .field("tls_min_version", &self.tls_min_version)
            .field("tls_server_name", &self.tls_server_name)
            .field("proxy", &self.proxy.as_deref().map(crate::proxy::shown))
            .field("proxy_bypass", &self.proxy_bypass)
            .field("no_proxy", &self.no_proxy)
            .field("allow_path_escape", &self.allow_path_escape)
            .field("coalesce_requests", &self.coalesce_requests);
        #[cfg(feature = "etcd")]
        d.field("etcd", &self.etcd);
        #[cfg(feature = "dns")]
        d.field("dns", &self.dns);
        #[cfg(feature = "cache")]
        d.field("cache", &self.cache);
        d.finish()
    }
}

impl ApiClientConfig {
    /// The retry policy this configuration describes: [`RetryPolicy::exponential()`]
    /// with the `retry` section's keys applied, or [`RetryPolicy::none()`] when
    /// it is switched off.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use resilient_http::{ApiClientConfig, RetryPolicy};
    ///
    /// let config: ApiClientConfig = toml::from_str("retry = { max_attempts = 5, jitter = false }")?;
    /// assert_eq!(config.retry_policy(), RetryPolicy::exponential().max_attempts(5).jitter(false));
    /// # Ok::<(), toml::de::Error>(())
    /// ```
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
            .as_ref()
            .map_or_else(RetryPolicy::exponential, RetrySection::policy)
    }

    /// The circuit breaker settings this configuration describes, or `None`
    /// when the breaker is switched off.
    ///
    /// Use it to add what is code rather than data, such as
    /// [`on_state_change`](CircuitBreakerConfig::on_state_change), before
    /// building:
    ///
    /// ```
    /// use resilient_http::{ApiClientBuilder, ApiClientConfig};
    ///
    /// let config: ApiClientConfig = toml::from_str(r#"
    ///     base_url = "http://127.0.0.1:8080/"
    ///     circuit_breaker = { consecutive_failures = 3 }
    /// "#)?;
    /// let mut builder = ApiClientBuilder::from_config(&config);
    /// if let Some(breaker) = config.circuit_breaker_config() {
    ///     builder = builder.circuit_breaker(
    ///         breaker.on_state_change(|c| eprintln!("{}: {} -> {}", c.endpoint, c.from, c.to)),
    ///     );
    /// }
    /// let client = builder.build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn circuit_breaker_config(&self) -> Option<CircuitBreakerConfig> {
        match &self.circuit_breaker {
            None => Some(CircuitBreakerConfig::default()),
            Some(section) => section.config(),
        }
    }

    /// Sets the resolver options (`resolver_refresh`, `etcd`, `dns`) on `b`.
    #[cfg_attr(
        not(any(feature = "etcd", feature = "dns")),
        allow(clippy::unused_self)
    )]
    fn apply_resolver(&self, mut b: ApiClientBuilder) -> ApiClientBuilder {
        if let Some(t) = self.resolver_refresh {
            b = b.resolver_refresh(t);
        }
        #[cfg(feature = "etcd")]
        if let Some(etcd) = &self.etcd {
            // The lookups' own client, with the TLS and proxy settings of
            // this configuration (see `ApiClientConfig::etcd`).
            let lookups = self.apply_trust(crate::EtcdResolver::client_builder(&etcd.url));
            let mut resolver = crate::EtcdResolver::with_builder(lookups, etcd.prefix.clone());
            if let Some(path) = &etcd.base_path {
                resolver = resolver.base_path(path.clone());
            }
            b = b.resolver(resolver);
        }
        #[cfg(feature = "dns")]
        if let Some(dns) = &self.dns {
            #[cfg(feature = "etcd")]
            if self.etcd.is_some() {
                b = b.fail(Error::config("set either etcd or dns, not both"));
            }
            b = match dns.resolver() {
                Ok(resolver) => b.resolver(resolver),
                Err(err) => b.fail(err),
            };
        }
        b
    }

    /// Sets every option this configuration names on `builder`.
    fn apply(&self, mut b: ApiClientBuilder) -> ApiClientBuilder {
        if let Some(url) = &self.base_url {
            b = b.base_url(url);
        }
        if !self.endpoints.is_empty() {
            b = b.endpoints(self.endpoints.iter().map(EndpointEntry::endpoint));
        }
        if let Some(strategy) = self.load_balance {
            b = b.load_balance(strategy);
        }
        b = self.apply_resolver(b);
        if let Some(t) = self.connect_timeout {
            b = b.connect_timeout(t);
        }
        if let Some(t) = self.read_timeout {
            b = b.read_timeout(t);
        }
        if let Some(t) = self.attempt_timeout {
            b = b.attempt_timeout(t);
        }
        if let Some(t) = self.total_timeout {
            b = b.total_timeout(t);
        }
        if self.retry.is_some() {
            b = b.retry(self.retry_policy());
        }
        if self.circuit_breaker.is_some() {
            b = match self.circuit_breaker_config() {
                Some(config) => b.circuit_breaker(config),
                None => b.no_circuit_breaker(),
            };
        }
        if let Some(section) = &self.rate_limit {
            b = match section.rate_limit() {
                Ok(limit) => b.rate_limit(limit),
                Err(err) => b.fail(err),
            };
        }
        if let Some(n) = self.max_concurrency {
            b = b.max_concurrency(n);
        }
        if let Some(section) = &self.adaptive_concurrency {
            b = b.adaptive_concurrency(section.limit());
        }
        if let Some(section) = &self.hedging {
            b = match section.hedging() {
                Ok(hedging) => b.hedging(hedging),
                Err(err) => b.fail(err),
            };
        }
        #[cfg(feature = "cache")]
        if let Some(section) = &self.cache {
            b = b.cache(section.cache());
        }
        for (name, value) in &self.default_headers {
            b = b.default_header(name.as_str(), value.as_str());
        }
        if let Some(agent) = &self.user_agent {
            b = b.user_agent(agent);
        }
        if let Some(token) = &self.bearer_token {
            b = b.bearer_auth(token);
        }
        if let Some(n) = self.max_response_bytes {
            b = b.max_response_bytes(n);
        }
        if let Some(n) = self.max_error_body_bytes {
            b = b.max_error_body_bytes(n);
        }
        if let Some(n) = self.max_redirects {
            b = b.max_redirects(n);
        }
        if let Some(n) = self.pool_max_idle_per_host {
            b = b.pool_max_idle_per_host(n);
        }
        if let Some(t) = self.pool_idle_timeout {
            b = b.pool_idle_timeout(t);
        }
        if let Some(t) = self.tcp_keepalive {
            b = b.tcp_keepalive(t);
        }
        if self.http2_prior_knowledge == Some(true) {
            b = b.http2_prior_knowledge();
        }
        if let Some(accept) = self.tls_danger_accept_invalid_certs {
            b = b.tls_danger_accept_invalid_certs(accept);
        }
        if let Some(allow) = self.allow_path_escape {
            b = b.allow_path_escape(allow);
        }
        if let Some(coalesce) = self.coalesce_requests {
            b = b.coalesce_requests(coalesce);
        }
        self.apply_tls(b)
    }

    /// Sets the TLS and proxy options; files are read here, and one that
    /// cannot be read is the error `build()` returns.
    fn apply_tls(&self, mut b: ApiClientBuilder) -> ApiClientBuilder {
        b = self.apply_trust(b);
        if let Some(name) = &self.tls_server_name {
            b = b.tls_server_name(name);
        }
        b
    }

    /// Sets the TLS and proxy options that hold for any server the client
    /// reaches, its etcd included: trusted roots, client certificate, lowest
    /// TLS version, proxies. Not `tls_server_name`, which names the service's
    /// own certificate, nor `tls_danger_accept_invalid_certs`.
    fn apply_trust(&self, mut b: ApiClientBuilder) -> ApiClientBuilder {
        if let Some(path) = &self.tls_root_certificate_pem {
            b = match read("tls_root_certificate_pem", path) {
                Ok(pem) => b.tls_root_certificate_pem(pem),
                Err(err) => b.fail(err),
            };
        }
        if let Some(on) = self.tls_built_in_roots {
            b = b.tls_built_in_roots(on);
        }
        if let Some(files) = &self.tls_identity_pem {
            let cert = read("tls_identity_pem.cert_chain", &files.cert_chain);
            let key = read("tls_identity_pem.key", &files.key);
            b = match (cert, key) {
                (Ok(cert), Ok(key)) => b.tls_identity_pem(cert, key),
                (Err(err), _) | (_, Err(err)) => b.fail(err),
            };
        }
        if let Some(v) = self.tls_min_version {
            b = b.tls_min_version(v);
        }
        if let Some(url) = &self.proxy {
            b = b.proxy(url);
        }
        if !self.proxy_bypass.is_empty() {
            b = b.proxy_bypass(&self.proxy_bypass);
        }
        if self.no_proxy == Some(true) {
            b = b.no_proxy();
        }
        b
    }
}

/// Reads a PEM file named by a configuration key.
fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::config(format!("{key}: cannot read {}", path.display())).with_source(e))
}

/// The client certificate files of [`ApiClientConfig::tls_identity_pem`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsIdentityFiles {
    /// A PEM file with the client's certificate, then any intermediates.
    pub cert_chain: PathBuf,
    /// A PEM file with the certificate's private key.
    pub key: PathBuf,
}

impl ApiClientBuilder {
    /// A builder with every option `config` names, and the defaults for the
    /// rest. Add what is code rather than data (callbacks, hooks) before
    /// [`build`](Self::build); a setter called afterwards replaces the
    /// configured value of its own option. Options that exclude each other
    /// stay exclusive: a configured `max_concurrency` with
    /// `adaptive_concurrency`, `no_proxy` with `proxy`, or `bearer_token`
    /// with `token_provider` is a `Config` error from `build()`.
    ///
    /// Invalid values are reported by `build()`, like any setter's; setting
    /// the option again in code does not clear the error (an unreadable PEM
    /// file stays one).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use resilient_http::{ApiClientBuilder, ApiClientConfig};
    ///
    /// let config: ApiClientConfig = toml::from_str(r#"
    ///     base_url = "http://127.0.0.1:8080/api/"
    ///     retry = { max_attempts = 2 }
    /// "#)?;
    /// let client = ApiClientBuilder::from_config(&config)
    ///     .total_timeout(Duration::from_secs(3)) // code wins over the file
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_config(config: &ApiClientConfig) -> Self {
        config.apply(Self::new())
    }
}

impl ApiClient {
    /// A client built from `config`: every option it names, the defaults for
    /// the rest. Shorthand for
    /// [`ApiClientBuilder::from_config(config).build()`](ApiClientBuilder::from_config).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for the first invalid
    /// value, as from [`ApiClientBuilder::build`]: a bad URL or header, a zero
    /// timeout, `max_attempts = 0`, a rate of 0, a `rate_limit` section with
    /// neither or both of `per_second` and `per_minute`...
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::{ApiClient, ApiClientConfig, ErrorKind};
    ///
    /// let config: ApiClientConfig = toml::from_str(r#"
    ///     base_url = "http://127.0.0.1:8080/"
    ///     rate_limit = { per_second = 0 }
    /// "#)?;
    /// let err = ApiClient::from_config(&config).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Config);
    /// # Ok::<(), toml::de::Error>(())
    /// ```
    pub fn from_config(config: &ApiClientConfig) -> Result<Self, Error> {
        ApiClientBuilder::from_config(config).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{FailureRate, RateWindow};
    use crate::retry::RetryBudget;

    fn from_toml(text: &str) -> ApiClientConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn sections_apply_over_the_defaults() {
        let config = from_toml(
            r#"
            [retry]
            max_attempts = 5
            max_backoff = "2s"
            budget = { min_per_second = 3 }
            [circuit_breaker]
            open_duration = "1m"
            failure_rate = { threshold = 0.25 }
            "#,
        );
        assert_eq!(
            config.retry_policy(),
            RetryPolicy::exponential()
                .max_attempts(5)
                .max_backoff(Duration::from_secs(2))
                .budget(RetryBudget::default().min_per_second(3))
        );
        let breaker = config.circuit_breaker_config().unwrap();
        assert_eq!(breaker.open_duration, Duration::from_secs(60));
        assert_eq!(breaker.consecutive_failures, 30);
        assert_eq!(
            breaker.failure_rate,
            Some(FailureRate {
                threshold: 0.25,
                window: RateWindow::Time(Duration::from_secs(30)),
                min_calls: 300
            })
        );
    }

    #[test]
    fn breaker_keys_choose_the_run_rules_and_the_rate_window() {
        let config = from_toml(
            r#"
            [circuit_breaker]
            sustained_failures = 10
            sustained_for = "2s"
            failure_rate = { window = 40 }
            "#,
        );
        let breaker = config.circuit_breaker_config().unwrap();
        assert_eq!(breaker.consecutive_failures, 30);
        assert_eq!(
            (breaker.sustained.failures, breaker.sustained.span),
            (10, Duration::from_secs(2))
        );
        assert_eq!(
            breaker.failure_rate,
            Some(FailureRate {
                threshold: 0.5,
                window: RateWindow::Calls(40),
                min_calls: 10
            })
        );
        let config = from_toml(
            r#"circuit_breaker = { sustained_failures = 0, failure_rate = { time_window = "5s", min_calls = 50 } }"#,
        );
        let breaker = config.circuit_breaker_config().unwrap();
        assert_eq!(breaker.sustained.failures, 0);
        assert_eq!(
            breaker.failure_rate,
            Some(FailureRate {
                threshold: 0.5,
                window: RateWindow::Time(Duration::from_secs(5)),
                min_calls: 50
            })
        );
    }

    #[test]
    fn switches_turn_sections_off() {
        let config = from_toml(
            r"
            retry = false
            circuit_breaker = false
            ",
        );
        assert_eq!(config.retry_policy(), RetryPolicy::none());
        assert!(config.circuit_breaker_config().is_none());

        let config = from_toml(
            r"
            retry = { budget = false }
            circuit_breaker = { failure_rate = false, enabled = true }
            ",
        );
        assert_eq!(
            config.retry_policy(),
            RetryPolicy::exponential().budget(RetryBudget::unlimited())
        );
        assert_eq!(config.circuit_breaker_config().unwrap().failure_rate, None);
    }

    #[test]
    fn an_absent_section_keeps_the_default() {
        let config = ApiClientConfig::default();
        assert_eq!(config.retry_policy(), RetryPolicy::exponential());
        let breaker = config.circuit_breaker_config().unwrap();
        let default = CircuitBreakerConfig::default();
        assert_eq!(format!("{breaker:?}"), format!("{default:?}"));
    }

    #[test]
    fn a_misspelled_endpoint_key_is_an_error_that_names_it() {
        let err = toml::from_str::<ApiClientConfig>(
            "endpoints = [{ url = \"http://127.0.0.1:1/\", wieght = 3 }]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("wieght"), "{err}");
        let ok = from_toml(
            "endpoints = [\"http://127.0.0.1:1/\", { url = \"http://127.0.0.1:2/\", weight = 3 }]",
        );
        assert_eq!(
            ok.endpoints,
            vec![
                EndpointEntry::Url("http://127.0.0.1:1/".into()),
                EndpointEntry::Weighted {
                    url: "http://127.0.0.1:2/".into(),
                    weight: 3
                }
            ]
        );
    }

    #[test]
    fn a_section_with_only_its_switch_serializes_as_a_boolean() {
        let off = from_toml("circuit_breaker = false");
        let text = toml::to_string(&off).unwrap();
        assert_eq!(text.trim(), "circuit_breaker = false");
        let on = from_toml("[circuit_breaker]\nenabled = false\nopen_duration = \"2s\"");
        let text = toml::to_string(&on).unwrap();
        assert!(text.contains("enabled = false"), "{text}");
        assert_eq!(from_toml(&text), on);
    }
}

/// One entry of [`ApiClientConfig::endpoints`]: a URL, or a URL with a weight.
///
/// In the table form, a key other than `url` and `weight` is an error that
/// names it, as everywhere in [`ApiClientConfig`].
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EndpointEntry {
    /// `"http://10.0.0.1:8080/api/"`, weight 1.
    Url(String),
    /// `{ url = "http://10.0.0.1:8080/api/", weight = 3 }`.
    Weighted {
        /// The base URL.
        url: String,
        /// Its weight (at least 1).
        #[serde(default = "one")]
        weight: u32,
    },
}

fn one() -> u32 {
    1
}

/// The table form of an [`EndpointEntry`], strict about its keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightedEntry {
    url: String,
    #[serde(default = "one")]
    weight: u32,
}

// By hand rather than `untagged`: an untagged enum would report a misspelled
// key as "did not match any variant" instead of naming it.
impl<'de> Deserialize<'de> for EndpointEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = EndpointEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a URL, or a table with `url` and an optional `weight`")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<EndpointEntry, E> {
                Ok(EndpointEntry::Url(url.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<EndpointEntry, A::Error> {
                let WeightedEntry { url, weight } =
                    WeightedEntry::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointEntry::Weighted { url, weight })
            }
        }
        deserializer.deserialize_any(Entry)
    }
}

impl fmt::Debug for EndpointEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Through `Endpoint`, whose `Debug` redacts credentials in the URL.
        fmt::Debug::fmt(&self.endpoint(), f)
    }
}

impl EndpointEntry {
    fn endpoint(&self) -> Endpoint {
        match self {
            Self::Url(url) => Endpoint::new(url.as_str()),
            Self::Weighted { url, weight } => Endpoint::new(url.as_str()).weight(*weight),
        }
    }
}

/// [`ApiClientConfig::etcd`]: where the instances are registered.
#[cfg(feature = "etcd")]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// The etcd client URL, `http://127.0.0.1:2379`.
    pub url: String,
    /// The key prefix the instances are registered under.
    pub prefix: String,
    /// The path put after `host:port` values (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_path: Option<String>,
}

/// The URL's password is never shown.
#[cfg(feature = "etcd")]
impl fmt::Debug for EtcdSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSection")
            .field("url", &redact::raw_url(&self.url))
            .field("prefix", &self.prefix)
            .field("base_path", &self.base_path)
            .finish()
    }
}

/// [`ApiClientConfig::dns`]: the DNS records that name the instances, either
/// `name` and `port` (A/AAAA records) or `srv`.
#[cfg(feature = "dns")]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// The name whose addresses are the instances, with `port`. See
    /// [`DnsResolver::new`](crate::DnsResolver::new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port of every address of `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The name whose SRV records are the instances, instead of `name` and
    /// `port`. See [`DnsResolver::srv`](crate::DnsResolver::srv).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<String>,
    /// The DNS server to ask (`"127.0.0.1:5353"`); default: the system's. See
    /// [`DnsResolver::nameserver`](crate::DnsResolver::nameserver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameserver: Option<std::net::SocketAddr>,
    /// `https://` endpoints (default `false`). See
    /// [`DnsResolver::https`](crate::DnsResolver::https).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https: bool,
    /// The path of every endpoint's base URL (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_path: Option<String>,
}

#[cfg(feature = "dns")]
impl DnsSection {
    /// The resolver this section describes.
    fn resolver(&self) -> Result<crate::DnsResolver, Error> {
        let mut resolver = match (&self.name, self.port, &self.srv) {
            (Some(name), Some(port), None) => crate::DnsResolver::new(name.clone(), port),
            (None, None, Some(srv)) => crate::DnsResolver::srv(srv.clone()),
            _ => {
                return Err(Error::config("dns needs either name and port, or srv"));
            }
        };
        if let Some(at) = self.nameserver {
            resolver = resolver.nameserver(at);
        }
        if self.https {
            resolver = resolver.https();
        }
        if let Some(path) = &self.base_path {
            resolver = resolver.base_path(path.clone());
        }
        Ok(resolver)
    }
}
