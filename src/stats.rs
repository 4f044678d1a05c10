//! Numbers for a dashboard: [`ClientStats`] counters (always), and, with the
//! cargo feature `metrics`, the same events through the [`metrics`] facade
//! under OpenTelemetry HTTP-client names.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `http.client.request.duration` (seconds, per call, retries included) | histogram | `http.request.method`, `http.response.status_class`, `outcome`, `server.address` |
//! | `http.client.requests` (calls) | counter | as above |
//! | `http.client.active_requests` (calls in flight) | gauge | `http.request.method` |
//! | `http.client.attempts` (requests sent, retries included) | counter | `http.request.method` |
//! | `http.client.retries` | counter | `http.request.method`, `reason` |
//! | `http.client.hedges` (hedged attempts sent) | counter | `http.request.method` |
//! | `http.client.hedges.won` (calls a hedge answered) | counter | `http.request.method` |
//! | `http.client.coalesced` (calls that shared an identical call's request) | counter | `http.request.method` |
//! | `http.client.fallbacks` (failed calls a fallback answered) | counter | `http.request.method`, `outcome` (the error's kind) |
//! | `http.client.circuit_breaker.state` (0 closed, 1 half-open, 2 open) | gauge | `endpoint` |
//! | `http.client.circuit_breaker.transitions` | counter | `endpoint`, `to` |
//! | `http.client.limit.wait.duration` (seconds) | histogram | `limit` (`rate`, `concurrency`, `pushback`) |
//! | `http.client.limit.rejections` | counter | `limit` (`rate`, `concurrency`, `circuit_open`, `server_pushback`) |
//! | `http.client.pushback.pauses` (endpoints paused by a server's `Retry-After`) | counter | `endpoint` |
//! | `http.client.token.fetches` | counter | `result` (`ok`, `error`) |
//! | `http.client.cache.requests` (feature `cache`: calls that asked the cache) | counter | `result` (`hit`, `stale`, `revalidated`, `miss`) |
//! | `http.client.rate_limit.shared.permits` (feature `redis`: permits from the shared quota) | counter | `source` (`store`: a round trip to Redis, `lease`: a leased permit) |
//! | `http.client.rate_limit.shared.fallbacks` (calls decided without Redis) | counter | `policy` (`local`, `allow`, `reject`) |
//! | `http.client.rate_limit.shared.store_errors` (calls to Redis that failed) | counter | `error` (`timeout`, `connection`, `response`) |
//!
//! `outcome` is `ok` or the [`ErrorKind`](crate::ErrorKind) name; the status
//! class is `2xx`..`5xx`, or `none` when no response came. `server.address`
//! takes the first 64 hosts a client calls; calls to any other share
//! `_OTHER`, so that a client calling arbitrary hosts (or endpoints that
//! churn) keeps its series bounded. Install any
//! `metrics` recorder (Prometheus, OpenTelemetry...) in the service; without
//! one the calls cost next to nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::error::Error;

/// A snapshot of a client's counters, shared by its clones; see
/// [`ApiClient::stats`](crate::ApiClient::stats). It implements
/// `serde::Serialize` (field names as below), to serve it as JSON.
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
/// client.get("health").send().await?;
/// let stats = client.stats();
/// assert_eq!((stats.calls, stats.succeeded, stats.attempts, stats.in_flight), (1, 1, 1, 0));
/// let json = serde_json::to_value(stats).unwrap();
/// assert_eq!(json["calls"], 1);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ClientStats {
    /// Calls that ended (succeeded or failed; cancelled ones are not counted).
    pub calls: u64,
    /// Calls that ended with an answer: a 2xx, or a status the call allowed
    /// (`allow_status`, the `404` of `get_json_opt`).
    pub succeeded: u64,
    /// Calls that ended with an error.
    pub failed: u64,
    /// Calls dropped before they ended.
    pub cancelled: u64,
    /// Calls in flight now.
    pub in_flight: u64,
    /// Requests sent (attempts), retries included.
    pub attempts: u64,
    /// Retries (attempts after the first of a call).
    pub retries: u64,
    /// Calls refused because a circuit breaker was open.
    pub rejected_circuit_open: u64,
    /// Calls refused because their endpoint was paused by a server's
    /// `Retry-After` beyond their deadline
    /// ([`Error::is_server_pushback`](crate::Error::is_server_pushback)).
    pub rejected_server_pushback: u64,
    /// Pushback pauses started: a 429 or 503 with `Retry-After` that paused
    /// an endpoint which was not paused already.
    pub pushback_pauses: u64,
    /// Calls refused by the rate limit.
    pub rejected_rate_limited: u64,
    /// Calls refused by the concurrency limit.
    pub rejected_concurrency: u64,
    /// Tokens fetched from the token provider.
    pub token_fetches: u64,
    /// Permits taken from a shared rate limit's quota in Redis (feature
    /// `redis`), leased ones included; fallback permits are not counted.
    pub shared_permits: u64,
    /// Permits of a shared rate limit that were waited for (reserved in
    /// Redis for a later time).
    pub shared_waits: u64,
    /// Calls a shared rate limit decided without Redis, by its
    /// `StoreFallback` (feature `redis`): Redis failed, was too slow,
    /// or was being skipped after failures.
    pub shared_fallbacks: u64,
    /// Calls to Redis that failed or took longer than their time budget
    /// (failed connection attempts included).
    pub shared_store_errors: u64,
    /// Hedges sent (also counted in `attempts`, not in `retries`); see
    /// [`Hedging`](crate::Hedging).
    pub hedges: u64,
    /// Calls whose answer came from a hedge rather than the attempt it raced.
    pub hedges_won: u64,
    /// Calls that sent no request of their own but shared an identical
    /// call's, in flight when they started (see
    /// [`coalesce_requests`](crate::ApiClientBuilder::coalesce_requests)).
    /// They are not counted in `calls` nor in the outcomes: the call whose
    /// request they shared is.
    pub coalesced: u64,
    /// Failed calls a fallback answered (see
    /// [`fallback`](crate::ApiClientBuilder::fallback)); also counted in
    /// `failed`, unless coalesced.
    pub fallbacks: u64,
    /// Calls a fresh cache entry answered, with no I/O (feature `cache`;
    /// see `Cache` for the `cache_*` counters).
    pub cache_hits: u64,
    /// Calls that asked the cache and were not answered from it (the
    /// cache's background refreshes included: each is a call of its own).
    pub cache_misses: u64,
    /// Calls answered from the cache after a `304 Not Modified`.
    pub cache_revalidations: u64,
    /// Calls answered with a stale entry: after a failure
    /// (stale-if-error), or while it was refreshed (stale-while-revalidate).
    pub cache_stale: u64,
    /// Entries in the cache now.
    pub cache_entries: u64,
    /// Bytes the cache's entries hold now (bodies, headers, URLs; roughly).
    pub cache_bytes: u64,
}

/// The live counters behind [`ClientStats`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    circuit_open: AtomicU64,
    pushback: AtomicU64,
    pauses: AtomicU64,
    rate_limited: AtomicU64,
    concurrency: AtomicU64,
    cancelled: AtomicU64,
    hedges: AtomicU64,
    hedges_won: AtomicU64,
    coalesced: AtomicU64,
    fallbacks: AtomicU64,
    /// The `server.address` label values handed out so far (bounded).
    #[cfg(feature = "metrics")]
    servers: std::sync::Mutex<std::collections::HashSet<Box<str>>>,
}

/// How many distinct `server.address` values a client's metrics use: past
/// them (a client calling arbitrary hosts by absolute URL, endpoints that
/// churn), new hosts share the label `_OTHER`.
#[cfg(feature = "metrics")]
pub(crate) const MAX_SERVER_LABELS: usize = 64;

impl Stats {
    /// `server`'s label: itself while the client has used fewer than
    /// [`MAX_SERVER_LABELS`] hosts, `_OTHER` for a new one past that.
    #[cfg(feature = "metrics")]
    fn server_label(&self, server: &str) -> String {
        let mut seen = self
            .servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(server) {
            return server.to_owned();
        }
        if seen.len() < MAX_SERVER_LABELS {
            seen.insert(server.into());
            return server.to_owned();
        }
        "_OTHER".to_owned()
    }

    pub(crate) fn snapshot(&self, token_fetches: u64) -> ClientStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (succeeded, failed) = (load(&self.succeeded), load(&self.failed));
        let (started, cancelled) = (load(&self.started), load(&self.cancelled));
        ClientStats {
            calls: succeeded + failed,
            succeeded,
            failed,
            cancelled,
            in_flight: started.saturating_sub(succeeded + failed + cancelled),
            attempts: load(&self.attempts),
            retries: load(&self.retries),
            rejected_circuit_open: load(&self.circuit_open),
            rejected_server_pushback: load(&self.pushback),
            pushback_pauses: load(&self.pauses),
            rejected_rate_limited: load(&self.rate_limited),
            rejected_concurrency: load(&self.concurrency),
            token_fetches,
            shared_permits: 0,
            shared_waits: 0,
            shared_fallbacks: 0,
            shared_store_errors: 0,
            hedges: load(&self.hedges),
            hedges_won: load(&self.hedges_won),
            coalesced: load(&self.coalesced),
            fallbacks: load(&self.fallbacks),
            cache_hits: 0,
            cache_misses: 0,
            cache_revalidations: 0,
            cache_stale: 0,
            cache_entries: 0,
            cache_bytes: 0,
        }
    }

    /// A hedge is sent: an attempt, not a retry.
    pub(crate) fn hedge(&self, method: &Method) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.hedges.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("http.client.attempts", "http.request.method" => method_label(method))
                .increment(1);
            metrics::counter!("http.client.hedges", "http.request.method" => method_label(method))
                .increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = method;
    }

    /// A hedge answered the call.
    pub(crate) fn hedge_won(&self, method: &Method) {
        self.hedges_won.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("http.client.hedges.won", "http.request.method" => method_label(method))
            .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = method;
    }

    /// A call shares the request of an identical one in flight.
    pub(crate) fn coalesced(&self, method: &Method) {
        self.coalesced.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("http.client.coalesced", "http.request.method" => method_label(method))
            .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = method;
    }

    /// A fallback answered a call that failed with an error of `kind`.
    pub(crate) fn fallback(&self, method: &Method, kind: crate::ErrorKind) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "http.client.fallbacks",
            "http.request.method" => method_label(method),
            "outcome" => kind.as_str()
        )
        .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = (method, kind);
    }

    /// A call starts; the guard counts it as cancelled unless it ends.
    pub(crate) fn start<'a>(&'a self, method: &Method) -> Active<'a> {
        self.started.fetch_add(1, Ordering::Relaxed);
        #[cfg(not(feature = "metrics"))]
        let _ = method;
        #[cfg(feature = "metrics")]
        metrics::gauge!("http.client.active_requests", "http.request.method" => method_label(method))
            .increment(1.0);
        Active {
            stats: self,
            #[cfg(feature = "metrics")]
            method: method_label(method),
            ended: AtomicBool::new(false),
        }
    }

    /// An attempt is sent; `attempt` counts from 1.
    pub(crate) fn attempt(&self, method: &Method, attempt: u32) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if attempt > 1 {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        #[cfg(feature = "metrics")]
        metrics::counter!("http.client.attempts", "http.request.method" => method_label(method))
            .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = method;
    }

    /// A retry is scheduled, for `reason` (the failure's type name).
    pub(crate) fn retry(method: &Method, reason: &str) {
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "http.client.retries",
            "http.request.method" => method_label(method),
            "reason" => reason.to_owned()
        )
        .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = (method, reason);
    }

    /// A server's `Retry-After` paused `endpoint` (it was not paused).
    pub(crate) fn paused(&self, endpoint: &str) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("http.client.pushback.pauses", "endpoint" => endpoint.to_owned())
            .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = endpoint;
    }

    /// A permit was taken from a shared quota (`source`: `store` or `lease`).
    #[cfg(feature = "redis")]
    pub(crate) fn shared_permit(source: &'static str) {
        #[cfg(feature = "metrics")]
        metrics::counter!("http.client.rate_limit.shared.permits", "source" => source).increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = source;
    }

    /// A call was decided by a shared limit's fallback `policy`.
    #[cfg(feature = "redis")]
    pub(crate) fn shared_fallback(policy: &'static str) {
        #[cfg(feature = "metrics")]
        metrics::counter!("http.client.rate_limit.shared.fallbacks", "policy" => policy)
            .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = policy;
    }

    /// A call to a shared limit's store failed (`error`: `timeout`,
    /// `connection` or `response`).
    #[cfg(feature = "redis")]
    pub(crate) fn shared_store_error(error: &'static str) {
        #[cfg(feature = "metrics")]
        metrics::counter!("http.client.rate_limit.shared.store_errors", "error" => error)
            .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = error;
    }

    /// A call waited `wait` for a `limit` permit.
    pub(crate) fn waited(limit: &'static str, wait: Duration) {
        #[cfg(feature = "metrics")]
        metrics::histogram!("http.client.limit.wait.duration", "limit" => limit)
            .record(wait.as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = (limit, wait);
    }
}

/// A call in flight, as the counters see it.
#[derive(Debug)]
pub(crate) struct Active<'a> {
    stats: &'a Stats,
    #[cfg(feature = "metrics")]
    method: &'static str,
    ended: AtomicBool,
}

impl Active<'_> {
    /// The call ended with `result` (a status or an error) after `elapsed`.
    pub(crate) fn end(
        &self,
        result: Result<StatusCode, &Error>,
        elapsed: Duration,
        server: Option<&str>,
    ) {
        if self.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        let stats = self.stats;
        match result {
            Ok(_) => stats.succeeded.fetch_add(1, Ordering::Relaxed),
            Err(err) => {
                let refused_by = match rejection(err) {
                    Some("circuit_open") => Some(&stats.circuit_open),
                    Some("server_pushback") => Some(&stats.pushback),
                    Some("rate") => Some(&stats.rate_limited),
                    Some("concurrency") => Some(&stats.concurrency),
                    _ => None,
                };
                if let Some(counter) = refused_by {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                stats.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        #[cfg(feature = "metrics")]
        self.record(result, elapsed, server);
        #[cfg(not(feature = "metrics"))]
        let _ = (elapsed, server);
    }

    #[cfg(feature = "metrics")]
    fn record(&self, result: Result<StatusCode, &Error>, elapsed: Duration, server: Option<&str>) {
        let status = match result {
            Ok(status) => Some(status),
            Err(err) => err.status(),
        };
        let outcome = result.err().map_or("ok", |e| e.kind().as_str());
        let labels = [
            ("http.request.method", self.method.to_owned()),
            (
                "http.response.status_class",
                status_class(status).to_owned(),
            ),
            ("outcome", outcome.to_owned()),
            (
                "server.address",
                server.map_or_else(String::new, |s| self.stats.server_label(s)),
            ),
        ];
        metrics::histogram!("http.client.request.duration", &labels).record(elapsed.as_secs_f64());
        metrics::counter!("http.client.requests", &labels).increment(1);
        if let Some(limit) = result.err().and_then(rejection) {
            metrics::counter!("http.client.limit.rejections", "limit" => limit).increment(1);
        }
    }
}

/// Which local protection refused the call, as the `limit` label names it.
fn rejection(err: &Error) -> Option<&'static str> {
    if err.is_circuit_open() {
        Some("circuit_open")
    } else if err.is_server_pushback() {
        Some("server_pushback")
    } else if err.is_rate_limited() {
        Some("rate")
    } else if err.is_concurrency_limited() {
        Some("concurrency")
    } else {
        None
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        metrics::gauge!("http.client.active_requests", "http.request.method" => self.method)
            .decrement(1.0);
        if !*self.ended.get_mut() {
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The method as a low-cardinality label (OpenTelemetry's `_OTHER` for
/// methods outside the standard ones).
#[cfg(feature = "metrics")]
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

#[cfg(feature = "metrics")]
fn status_class(status: Option<StatusCode>) -> &'static str {
    match status.map(|s| s.as_u16() / 100) {
        Some(1) => "1xx",
        Some(2) => "2xx",
        Some(3) => "3xx",
        Some(4) => "4xx",
        Some(5) => "5xx",
        _ => "none",
    }
}

/// Records a breaker transition for `endpoint`.
#[cfg(feature = "metrics")]
pub(crate) fn breaker_transition(endpoint: &str, to: crate::CircuitState) {
    let value = match to {
        crate::CircuitState::Closed => 0.0,
        crate::CircuitState::HalfOpen => 1.0,
        crate::CircuitState::Open => 2.0,
    };
    metrics::gauge!("http.client.circuit_breaker.state", "endpoint" => endpoint.to_owned())
        .set(value);
    metrics::counter!(
        "http.client.circuit_breaker.transitions",
        "endpoint" => endpoint.to_owned(),
        "to" => to.as_str()
    )
    .increment(1);
}

/// Records a token fetch.
#[cfg(feature = "metrics")]
pub(crate) fn token_fetched(ok: bool) {
    metrics::counter!("http.client.token.fetches", "result" => if ok { "ok" } else { "error" })
        .increment(1);
}
