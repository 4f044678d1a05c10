//! Credentials that refresh: the [`TokenProvider`] trait and the client's
//! token cache. [`OAuth2ClientCredentials`](crate::OAuth2ClientCredentials) is
//! a provider built on the client, in its own module.
//!
//! With [`token_provider`](crate::ApiClientBuilder::token_provider), every
//! attempt to the client's own endpoints carries `Authorization: Bearer
//! <token>`. The token is cached and fetched again shortly before it expires,
//! by one call at a time (the others keep using the still valid token, or
//! wait for the fetch when there is none). A `401 Unauthorized` answer drops
//! the token, and the call is retried once with a new one. Tokens are secrets:
//! they never appear in `Debug`, `Display`, logs or tracing fields.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use reqwest::header::HeaderValue;
use tokio::time::Instant;

use crate::error::{BoxError, Error};
use crate::timeout::Deadline;

/// A token is fetched again when it has less than this left to live
/// (or a tenth of its lifetime, if shorter).
const REFRESH_AHEAD: Duration = Duration::from_secs(30);

/// After a refresh ahead of expiry failed, the next one is tried no sooner
/// than this (the token is still valid; each try makes one call wait).
const REFRESH_RETRY: Duration = Duration::from_secs(1);

/// A bearer token and when it expires. Its value never appears in `Debug`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use resilient_http::Token;
///
/// let token = Token::new("s3cr3t").expires_in(Duration::from_secs(3600));
/// assert!(!format!("{token:?}").contains("s3cr3t"));
/// assert_eq!(token.secret(), "s3cr3t");
/// ```
#[derive(Clone)]
pub struct Token {
    value: String,
    lifetime: Option<Duration>,
}

impl Token {
    /// A token that does not expire (until a `401` says otherwise).
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            lifetime: None,
        }
    }

    /// The token expires this long after it was fetched.
    #[must_use]
    pub fn expires_in(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// The token's value. Keep it out of logs.
    #[must_use]
    pub fn secret(&self) -> &str {
        &self.value
    }

    /// How long the token lives from when it was fetched, if it expires.
    #[must_use]
    pub fn lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// What [`TokenProvider::token`] returns: a boxed future of a [`Token`].
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<Token, BoxError>> + Send + 'a>>;

/// A source of bearer tokens: an OAuth 2.0 server, a vault, a file a sidecar
/// rewrites. The client caches the token; the provider is asked only when the
/// cached one is missing, about to expire, or was refused with a `401`.
///
/// One call at a time fetches; the others keep using the still valid token,
/// or wait for that fetch when there is none. Each fetch is cut after the
/// client's [`total_timeout`](crate::ApiClientBuilder::total_timeout), or
/// sooner at the deadline of the call that makes it: even a call without a
/// deadline of its own (an event stream from
/// [`send_events`](crate::RequestBuilder::send_events)) cannot keep the
/// others waiting behind a provider that hangs. A fetch cut that way has
/// failed, like one whose provider returned an error: a refresh ahead of
/// expiry keeps the still valid token; without one, the call that fetched and
/// the calls waiting for that fetch fail with
/// [`ErrorKind::Rejected`](crate::ErrorKind::Rejected), and the next call asks
/// the provider again.
///
/// Closures returning a future implement it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use resilient_http::{ApiClient, Token};
///
/// let client = ApiClient::builder()
///     .base_url("http://127.0.0.1:8080/")
///     .token_provider(|| async {
///         // e.g. read the token a sidecar keeps fresh
///         Ok(Token::new("token-from-somewhere").expires_in(Duration::from_secs(300)))
///     })
///     .build()?;
/// # Ok::<(), resilient_http::Error>(())
/// ```
pub trait TokenProvider: Send + Sync + 'static {
    /// Fetches a new token.
    fn token(&self) -> TokenFuture<'_>;
}

impl<F, Fut> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, BoxError>> + Send + 'static,
{
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(self())
    }
}

/// A cached token, as the header it is sent in.
#[derive(Clone)]
struct Cached {
    header: HeaderValue,
    /// When to fetch a new one (before it expires).
    refresh_at: Option<Instant>,
    /// When it stops being usable.
    expires_at: Option<Instant>,
    generation: u64,
}

/// The client's token: cached, refreshed by one call at a time.
pub(crate) struct TokenCache {
    provider: Arc<dyn TokenProvider>,
    /// The limit on one fetch, whatever the deadline of the call that makes
    /// it (the client's `total_timeout`).
    fetch_timeout: Duration,
    current: RwLock<Option<Cached>>,
    /// Held by the one call fetching a token.
    fetching: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    fetches: AtomicU64,
    /// Fetches that finished, to tell the ones a call waited for.
    completed: AtomicU64,
    /// The number (in `completed`) of the last fetch, if it failed, and why.
    failure: Mutex<Option<(u64, Arc<str>)>>,
    /// No refresh ahead of expiry before this (one failed just now).
    refresh_not_before: Mutex<Option<Instant>>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("fetches", &self.fetches.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The header to send and the token generation it belongs to.
pub(crate) type Credential = (HeaderValue, u64);

impl TokenCache {
    /// A cache over `provider`, each fetch cut after `fetch_timeout` (or
    /// sooner, at the deadline of the call that makes it).
    pub(crate) fn new(provider: Arc<dyn TokenProvider>, fetch_timeout: Duration) -> Self {
        Self {
            provider,
            fetch_timeout,
            current: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failure: Mutex::new(None),
            refresh_not_before: Mutex::new(None),
        }
    }

    /// How many tokens were fetched.
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn cached(&self) -> Option<Cached> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The usable token as it stands, without fetching one (a hedge's: it
    /// must not wait for, or start, a fetch).
    pub(crate) fn current(&self) -> Option<Credential> {
        let now = Instant::now();
        self.cached()
            .filter(|c| c.expires_at.is_none_or(|t| now < t))
            .map(|c| (c.header, c.generation))
    }

    /// The header for the next attempt, fetching a token if there is no
    /// usable one (within the call's deadline).
    pub(crate) async fn credential(&self, deadline: &Deadline) -> Result<Credential, Error> {
        let now = Instant::now();
        let cached = self.cached();
        if let Some(c) = &cached {
            let usable = c.expires_at.is_none_or(|t| now < t);
            let due = c.refresh_at.is_some_and(|t| now >= t);
            if usable && !due {
                return Ok((c.header.clone(), c.generation));
            }
            if usable {
                // Due for a refresh: one call fetches, the others go on with
                // the valid token; none for a moment after a failed one.
                let not_before = self.refresh_not_before.lock();
                let not_before = *not_before.unwrap_or_else(PoisonError::into_inner);
                let resting = not_before.is_some_and(|t| now < t);
                let fetching = if resting {
                    None
                } else {
                    self.fetching.try_lock().ok()
                };
                let Some(_fetching) = fetching else {
                    return Ok((c.header.clone(), c.generation));
                };
                return match self.fetch(deadline).await {
                    Ok(fresh) => Ok(fresh),
                    Err(err) => {
                        *self
                            .refresh_not_before
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) =
                            Instant::now().checked_add(REFRESH_RETRY);
                        tracing::warn!(
                            target: "resilient_http::auth",
                            error = %err,
                            "token refresh failed; using the current token until it expires"
                        );
                        Ok((c.header.clone(), c.generation))
                    }
                };
            }
        }
        let stale = cached.map(|c| c.generation);
        let seen = self.completed.load(Ordering::Acquire);
        let Ok(_fetching) = tokio::time::timeout(deadline.remaining(), self.fetching.lock()).await
        else {
            return Err(Error::auth("timed out waiting for a token"));
        };
        // Another call may have fetched one while this one waited.
        if let Some(c) = self.cached()
            && Some(c.generation) != stale
            && c.expires_at.is_none_or(|t| Instant::now() < t)
        {
            return Ok((c.header, c.generation));
        }
        // Or failed to: the calls that waited for that fetch share its
        // failure rather than each asking the provider again.
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some((number, why)) = failure
            && number > seen
        {
            return Err(Error::auth("the token fetch this call waited for failed")
                .with_source(BoxError::from(why.to_string())));
        }
        self.fetch(deadline).await
    }

    /// Drops the token of `generation` after a `401`, unless a newer one
    /// already replaced it.
    pub(crate) fn reject(&self, generation: u64) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
        }
    }

    /// Asks the provider (the caller holds `fetching`), for no longer than
    /// the fetch timeout: a call with a far deadline (an event stream) must
    /// not hold `fetching`, and so every other call, behind a provider that
    /// hangs.
    async fn fetch(&self, deadline: &Deadline) -> Result<Credential, Error> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch_once(deadline).await;
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        let number = self.completed.fetch_add(1, Ordering::AcqRel) + 1;
        *failure = match &result {
            Ok(_) => None,
            Err(err) => Some((number, err.to_string().into())),
        };
        result
    }

    async fn fetch_once(&self, deadline: &Deadline) -> Result<Credential, Error> {
        let remaining = deadline.remaining();
        let limit = remaining.min(self.fetch_timeout);
        let fetched = tokio::time::timeout(limit, self.provider.token()).await;
        #[cfg(feature = "metrics")]
        crate::stats::token_fetched(matches!(fetched, Ok(Ok(_))));
        let token = match fetched {
            Ok(Ok(token)) => token,
            Ok(Err(e)) => return Err(Error::auth("the token provider failed").with_source(e)),
            Err(_) if limit < remaining => {
                return Err(Error::auth(
                    "the token provider did not answer within the token fetch timeout",
                ));
            }
            Err(_) => return Err(Error::auth("the token provider did not answer in time")),
        };
        let mut header = crate::headers::bearer(&token.value)
            .map_err(|_| Error::auth("the token is not a valid header value"))?;
        header.set_sensitive(true);
        let now = Instant::now();
        let (refresh_at, expires_at) = match token.lifetime {
            Some(life) => {
                let ahead = REFRESH_AHEAD.min(life / 10);
                (
                    now.checked_add(life.saturating_sub(ahead)),
                    now.checked_add(life),
                )
            }
            None => (None, None),
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let cached = Cached {
            header: header.clone(),
            refresh_at,
            expires_at,
            generation,
        };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(cached);
        tracing::debug!(
            target: "resilient_http::auth",
            lifetime_s = token.lifetime.map(|d| d.as_secs()),
            "fetched a token"
        );
        Ok((header, generation))
    }
}
