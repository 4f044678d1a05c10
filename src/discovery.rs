//! Service discovery: where the endpoint list comes from, and how it is kept
//! current.
//!
//! A [`Resolver`] returns the current list of [`Endpoint`]s. The client asks it
//! once in the background when the first call starts (calls wait for that first
//! answer, within their deadline), then every
//! [`resolver_refresh`](crate::ApiClientBuilder::resolver_refresh), or sooner
//! when the resolver says its answer expires sooner
//! ([`Resolver::valid_for`], a DNS record's TTL), but at most once a second. A refresh
//! that fails, times out or returns no usable endpoint keeps the last good
//! list and is retried sooner. A new list applies to the next attempt; calls
//! in flight finish where they are. Endpoints that stay keep their breaker and
//! load; the breakers of removed endpoints are dropped with them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::balance::{Endpoint, EndpointSet, EndpointStatus, LoadBalance, Parsed, parse_endpoint};
use crate::breaker::CircuitBreakerConfig;
use crate::error::{BoxError, Error};
use crate::timeout::Deadline;
use crate::transport::Transport;

/// The error a resolver may fail with: the crate's one boxed error type,
/// [`BoxError`], under the name it had before (kept for compatibility).
pub type ResolveError = BoxError;

/// What [`Resolver::resolve`] returns: a boxed future of the endpoint list.
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Endpoint>, ResolveError>> + Send + 'a>>;

/// The default time between two resolutions of the endpoint list.
pub const DEFAULT_RESOLVER_REFRESH: Duration = Duration::from_secs(10);

/// The first retry of a failed resolution comes after this; later ones back
/// off up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// The shortest time between two resolutions that an answer's
/// [`Resolver::valid_for`] may ask for.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// A source of the current endpoint list: a registry, DNS, a file.
///
/// Implement it with a boxed future, or pass a closure returning a future
/// (`Fn() -> impl Future<Output = Result<Vec<Endpoint>, ResolveError>>`),
/// which implements it too.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use resilient_http::{ApiClient, Endpoint, ResolveError};
///
/// // A list some other task keeps up to date.
/// let current = Arc::new(Mutex::new(vec![Endpoint::new("http://10.0.0.1:8080/")]));
/// let shared = Arc::clone(&current);
/// let client = ApiClient::builder()
///     .resolver(move || {
///         let list = shared.lock().unwrap().clone();
///         async move { Ok::<_, ResolveError>(list) }
///     })
///     .build()?;
/// # Ok::<(), resilient_http::Error>(())
/// ```
pub trait Resolver: Send + Sync + 'static {
    /// The current endpoint list. An error, or a list without one usable
    /// endpoint, keeps the list the client has.
    fn resolve(&self) -> ResolveFuture<'_>;

    /// How long the list the last [`resolve`](Self::resolve) returned stays
    /// valid, when the source says (a DNS answer's TTL): the client asks
    /// again after that time when it is shorter than
    /// [`resolver_refresh`](crate::ApiClientBuilder::resolver_refresh), but
    /// never more than once a second. Asked right after each successful
    /// `resolve`. Default: `None`, the refresh interval alone decides.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use resilient_http::{Endpoint, ResolveFuture, Resolver};
    ///
    /// struct Leased;
    ///
    /// impl Resolver for Leased {
    ///     fn resolve(&self) -> ResolveFuture<'_> {
    ///         Box::pin(async { Ok(vec![Endpoint::new("http://10.0.0.1:8080/")]) })
    ///     }
    ///     // The registry's lease: ask again within 5 s.
    ///     fn valid_for(&self) -> Option<Duration> {
    ///         Some(Duration::from_secs(5))
    ///     }
    /// }
    /// assert_eq!(Leased.valid_for(), Some(Duration::from_secs(5)));
    /// ```
    fn valid_for(&self) -> Option<Duration> {
        None
    }
}

impl<F, Fut> Resolver for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Endpoint>, ResolveError>> + Send + 'static,
{
    fn resolve(&self) -> ResolveFuture<'_> {
        Box::pin(self())
    }
}

/// A resolver that always returns the same list; what
/// [`endpoints`](crate::ApiClientBuilder::endpoints) amounts to.
///
/// # Examples
///
/// ```
/// use resilient_http::{ApiClient, Endpoint, StaticResolver};
///
/// let client = ApiClient::builder()
///     .resolver(StaticResolver::new([
///         Endpoint::new("http://10.0.0.1:8080/"),
///         Endpoint::new("http://10.0.0.2:8080/").weight(2),
///     ]))
///     .build()?;
/// # Ok::<(), resilient_http::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct StaticResolver {
    endpoints: Vec<Endpoint>,
}

impl StaticResolver {
    /// A resolver for `endpoints`.
    pub fn new<I, E>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = E>,
        E: Into<Endpoint>,
    {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
        }
    }
}

impl Resolver for StaticResolver {
    fn resolve(&self) -> ResolveFuture<'_> {
        let list = self.endpoints.clone();
        Box::pin(async move { Ok(list) })
    }
}

/// The endpoints of one client: the current set, the strategy, and the
/// resolver with its background refresh.
pub(crate) struct Balancer {
    shared: Arc<Shared>,
}

struct Shared {
    /// What relative request URLs are joined onto until an attempt picks an
    /// endpoint.
    placeholder: url::Url,
    strategy: LoadBalance,
    breaker: Option<CircuitBreakerConfig>,
    /// Round robin's position, kept across refreshes.
    rr: AtomicUsize,
    set: watch::Sender<Arc<EndpointSet>>,
    resolver: Option<Arc<dyn Resolver>>,
    refresh: Duration,
    /// What the endpoints' own transports are built with.
    transport: Transport,
    /// `tls_server_name`: resolved endpoints called by IP address are
    /// called by this name instead, each reaching its address.
    server_name: Option<String>,
    /// Held while a new set is built and applied.
    applying: Mutex<()>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let task = self.task.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.take() {
            task.abort();
        }
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("strategy", &self.shared.strategy)
            .field("endpoints", &self.snapshot().len())
            .field("resolver", &self.shared.resolver.is_some())
            .field("refresh", &self.shared.refresh)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    /// A balancer over `endpoints` (already validated), refreshed from
    /// `resolver` when there is one.
    pub(crate) fn new(
        endpoints: Vec<Parsed>,
        strategy: LoadBalance,
        breaker: Option<CircuitBreakerConfig>,
        resolver: Option<Arc<dyn Resolver>>,
        refresh: Duration,
        transport: Transport,
        server_name: Option<String>,
    ) -> Self {
        // A constant, valid URL: parsing it cannot fail.
        #[allow(clippy::expect_used)]
        let placeholder =
            url::Url::parse("http://endpoint.invalid/").expect("a valid constant URL");
        let pending = endpoints.is_empty() && resolver.is_some();
        let empty = EndpointSet::empty(pending, None);
        let set = if endpoints.is_empty() {
            empty
        } else {
            EndpointSet::build(endpoints, &empty, breaker.as_ref(), &transport)
        };
        Self {
            shared: Arc::new(Shared {
                placeholder,
                strategy,
                breaker,
                rr: AtomicUsize::new(0),
                set: watch::Sender::new(Arc::new(set)),
                resolver,
                refresh,
                transport,
                server_name,
                applying: Mutex::new(()),
                task: Mutex::new(None),
            }),
        }
    }

    pub(crate) fn placeholder(&self) -> &url::Url {
        &self.shared.placeholder
    }

    pub(crate) fn strategy(&self) -> LoadBalance {
        self.shared.strategy
    }

    pub(crate) fn rr(&self) -> &AtomicUsize {
        &self.shared.rr
    }

    /// The current set.
    pub(crate) fn snapshot(&self) -> Arc<EndpointSet> {
        Arc::clone(&self.shared.set.borrow())
    }

    pub(crate) fn statuses(&self) -> Vec<EndpointStatus> {
        self.snapshot().statuses(Instant::now())
    }

    /// The set for the next attempt: starts the background refresh on first
    /// use and, until the first resolution has answered, waits for it within
    /// the deadline.
    pub(crate) async fn current(&self, deadline: &Deadline) -> Result<Arc<EndpointSet>, Error> {
        self.start_refresh();
        let set = self.snapshot();
        if !set.pending {
            return Ok(set);
        }
        let mut rx = self.shared.set.subscribe();
        let wait = rx.wait_for(|set| !set.pending);
        match tokio::time::timeout(deadline.remaining(), wait).await {
            Ok(Ok(set)) => Ok(Arc::clone(&set)),
            // The sender lives in `shared`, which `self` holds.
            Ok(Err(_)) => Ok(self.snapshot()),
            Err(_) => Err(Error::no_endpoints(
                "the resolver has not answered yet".to_owned(),
            )),
        }
    }

    /// Starts the background refresh once, from within a runtime.
    /// The task lives on the runtime of the call that started it; if that
    /// runtime is gone (a client shared across runtimes), the next call starts
    /// it again on its own.
    fn start_refresh(&self) {
        if self.shared.resolver.is_none() {
            return;
        }
        let mut task = self
            .shared
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let spawned = runtime.spawn(refresh_loop(Arc::downgrade(&self.shared)));
        *task = Some(spawned.abort_handle());
    }

    /// Asks the resolver now and applies its answer; the number of endpoints.
    pub(crate) async fn refresh(&self) -> Result<usize, Error> {
        self.shared.refresh_once().await.map(|(n, _)| n)
    }
}

impl Shared {
    /// Asks the resolver and applies its answer: the number of endpoints and
    /// how long the answer stays valid, if the resolver says.
    async fn refresh_once(&self) -> Result<(usize, Option<Duration>), Error> {
        let Some(resolver) = &self.resolver else {
            return Ok((self.set.borrow().len(), None));
        };
        let limit = self
            .refresh
            .clamp(Duration::from_secs(1), Duration::from_secs(30));
        let result = match tokio::time::timeout(limit, resolver.resolve()).await {
            Ok(Ok(list)) => self.apply(&list).map(|n| (n, resolver.valid_for())),
            Ok(Err(e)) => Err(Error::no_endpoints(format!("the resolver failed: {e}"))),
            Err(_) => Err(Error::no_endpoints(format!(
                "the resolver did not answer within {limit:?}"
            ))),
        };
        if let Err(err) = &result {
            // Keep the last good set; wake calls waiting for a first answer.
            self.set.send_if_modified(|set| {
                if set.len() > 0 {
                    return false;
                }
                *set = Arc::new(EndpointSet::empty(false, Some(err.to_string().into())));
                true
            });
        }
        result
    }

    /// Replaces the set with `list`, keeping the state of endpoints that stay.
    fn apply(&self, list: &[Endpoint]) -> Result<usize, Error> {
        let mut valid = Vec::with_capacity(list.len());
        for ep in list {
            let named = |mut parsed: Parsed| match &self.server_name {
                Some(name) => {
                    crate::tls::server_name_for_endpoint(name, &mut parsed).map(|_| parsed)
                }
                None => Ok(parsed),
            };
            match parse_endpoint(ep).and_then(named) {
                Ok(v) => valid.push(v),
                Err(err) => tracing::warn!(
                    target: "resilient_http::discovery",
                    endpoint = ?ep,
                    error = %err,
                    "skipping an endpoint the resolver returned"
                ),
            }
        }
        if valid.is_empty() {
            return Err(Error::no_endpoints(
                "the resolver returned no usable endpoint".to_owned(),
            ));
        }
        // One set is built at a time, from the one it replaces; calls keep
        // reading the current set meanwhile (building an endpoint's own
        // transport takes a while).
        let _applying = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = Arc::clone(&self.set.borrow());
        let next = EndpointSet::build(valid, &previous, self.breaker.as_ref(), &self.transport);
        if next.len() == 0 {
            // No endpoint's transport could be built: keep the last good list.
            return Err(Error::no_endpoints(
                "no endpoint the resolver returned could be reached".to_owned(),
            ));
        }
        let (before, after, kept) = (previous.len(), next.len(), next.kept_from(&previous));
        self.set.send_replace(Arc::new(next));
        if kept != before || kept != after {
            tracing::info!(
                target: "resilient_http::discovery",
                before,
                after,
                added = after - kept,
                removed = before - kept,
                "endpoint list changed"
            );
        }
        Ok(after)
    }
}

/// The time until the next resolution after a successful one: `refresh`, or
/// the answer's validity when shorter, but at least [`MIN_REFRESH`] (unless
/// `refresh` itself is shorter).
fn next_refresh(refresh: Duration, valid_for: Option<Duration>) -> Duration {
    match valid_for {
        Some(valid) if valid < refresh => valid.max(MIN_REFRESH).min(refresh),
        _ => refresh,
    }
}

/// Resolves now, then every `refresh` (sooner when the answer expires
/// sooner, or after a failure), until the client is dropped.
async fn refresh_loop(shared: Weak<Shared>) {
    let mut retry_in = FIRST_RETRY;
    loop {
        let Some(this) = shared.upgrade() else { return };
        let refresh = this.refresh;
        let delay = match this.refresh_once().await {
            Ok((_, valid_for)) => {
                retry_in = FIRST_RETRY;
                next_refresh(refresh, valid_for)
            }
            Err(err) => {
                tracing::warn!(
                    target: "resilient_http::discovery",
                    error = %err,
                    retry_in_ms = u64::try_from(retry_in.min(refresh).as_millis()).unwrap_or(u64::MAX),
                    "endpoint refresh failed; keeping the last list"
                );
                let delay = retry_in.min(refresh);
                retry_in = retry_in.saturating_mul(2);
                delay
            }
        };
        drop(this);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_that_expires_sooner_brings_the_next_refresh_forward() {
        let secs = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(next_refresh(secs(10), None), secs(10));
        assert_eq!(next_refresh(secs(10), Some(secs(30))), secs(10));
        assert_eq!(next_refresh(secs(10), Some(secs(3))), secs(3));
        // At most once a second...
        assert_eq!(next_refresh(secs(10), Some(Duration::ZERO)), secs(1));
        assert_eq!(next_refresh(secs(10), Some(ms(300))), secs(1));
        // ...unless the refresh interval itself is shorter.
        assert_eq!(next_refresh(ms(500), Some(ms(100))), ms(500));
    }
}
