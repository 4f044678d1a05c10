//! The response cache (feature `cache`): [`Cache`], its settings and rules,
//! and the store the pipeline asks before a call and tells after it.
//!
//! The HTTP rules (freshness, `Vary`, validators, what may be stored) are
//! `http-cache-semantics`'s; the entries live in a bounded `moka` cache. What
//! is decided here: which calls the cache sees, whose entry is whose
//! (credentials), when a stale entry may answer, and the header fields an
//! entry keeps and answers with (`headers`: the library's own copies keep
//! one line per field name).

use std::time::Duration;

use crate::error::Error;

mod entry;
mod headers;
mod store;

pub(crate) use store::{Answer, Lookup, Outcome, Pending, RefreshClaim, Store};

/// The bytes a cache keeps by default (64 MiB), when
/// [`max_bytes`](Cache::max_bytes) is not set.
pub const DEFAULT_CACHE_MAX_BYTES: usize = 64 << 20;

/// An in-memory HTTP response cache for a client's GET and HEAD calls
/// (feature `cache`), given to
/// [`ApiClientBuilder::cache`](crate::ApiClientBuilder::cache).
///
/// # What is stored, and when it answers
///
/// The client acts as a private (one-user) cache under RFC 9111:
///
/// - a 2xx response to a GET or HEAD is stored when its headers allow it
///   (`Cache-Control: no-store` never is; `private` and `public` both are),
///   and answers the same call, with no I/O, while it is fresh: its
///   `max-age`, else its `Expires`, less its `Age`; without either, a
///   fraction of the time since its `Last-Modified`, or not at all
///   (`immutable` gives no freshness of its own); an entry answers with the
///   stored response's own headers, every line of a repeated field, and an
///   up-to-date `Age`;
/// - `Vary` is honoured: an entry answers only a request with the same
///   values of the headers it names (`Vary: *` is never stored);
/// - a stale entry with an `ETag` or `Last-Modified` is revalidated: the
///   call sends `If-None-Match` / `If-Modified-Since`, and a
///   `304 Not Modified` refreshes the entry and answers with its body, which
///   is not downloaded again (each header field the 304 sends replaces every
///   line of that field in the entry, RFC 9111 section 3.2, except those
///   that describe the body, such as `Content-Length`; a 304 whose headers
///   no longer let the entry be stored, such as `no-store`, answers with it
///   and drops it); a full answer instead supersedes the entry: it takes its
///   place, or, if it may not be stored (a `404` the call allows, a
///   `no-store` 200), the entry is dropped (a 5xx, or a 429 or 408 the
///   call allows, leaves it, for stale-if-error);
/// - a request's own `Cache-Control` (`no-cache`, `max-age=0`, `no-store`),
///   or `Pragma: no-cache`, is honoured; a request with its own conditional or `Range` headers, a
///   streamed call ([`send_stream`](crate::RequestBuilder::send_stream),
///   [`send_events`](crate::RequestBuilder::send_events)), any other method,
///   and a call with [`no_cache`](crate::RequestBuilder::no_cache) bypass the
///   cache.
///
/// # Stale entries: stale-if-error and stale-while-revalidate
///
/// - **stale-if-error**: when a call fails with a
///   [`Retryable`](crate::ErrorKind::Retryable) or
///   [`Server`](crate::ErrorKind::Server) error, or is refused because the
///   endpoint's circuit breaker is open or the server paused it
///   ([`Error::is_server_pushback`]), after every retry the policy allowed,
///   a stale entry answers instead if it has been stale for no longer than
///   its window (counted from when it went stale, the time it spent in
///   caches upstream, its `Age`, included): the response's
///   `stale-if-error=<seconds>` directive, else
///   [`stale_if_error`](Self::stale_if_error) (default none). The response
///   says so ([`ApiResponse::is_stale`](crate::ApiResponse::is_stale)). A
///   `Client` error (a 404...) is returned as it is.
/// - **stale-while-revalidate**: a stale entry within its window (counted
///   the same way; the response's `stale-while-revalidate=<seconds>`, else
///   [`stale_while_revalidate`](Self::stale_while_revalidate), default none)
///   answers at once, marked stale, and one call refreshes it in the
///   background (one refresh in flight per entry; the others are answered
///   from the entry meanwhile).
///
/// A response with `must-revalidate` or `no-cache` is never served stale.
///
/// # Credentials
///
/// A request carries credentials when the client's token provider adds its
/// token, or it has an `Authorization`, `Cookie` or other credential-like
/// header (the names the crate redacts), or a user name in its URL. Its
/// response is stored only if it says `Cache-Control: public`, or the cache
/// is told to with [`store_credentialed`](Self::store_credentialed). An entry
/// belongs to its credential and never answers a request with another (or
/// none): entries are keyed by the token provider (so a refreshed token
/// keeps the client's entries) or by a keyed hash of the credential headers'
/// values. No secret is stored: the copy of the request an entry keeps for
/// `Vary` has its credential headers removed. Headers that request hooks or
/// the signer add to each attempt are not seen by the cache: they are the
/// client's, the same for every call; a hook that adds credentials that
/// differ from call to call needs [`no_cache`](crate::RequestBuilder::no_cache)
/// on those calls. A credential in the URL's query (`?access_token=`) is not
/// recognized as one: such an entry keeps that URL. A response that sets a
/// cookie (`Set-Cookie`) is never stored: a cookie is one caller's session.
///
/// Not stored either: an answer reached through a redirect (it is another
/// URL's). A write through the client (a call with an unsafe method:
/// `POST`, `PUT`, `PATCH`, `DELETE`, ...) that succeeds drops the entries of
/// its URL stored before it (RFC 9111 section 4.4; writes by others are only
/// seen when the entry goes stale). The cache remembers the last
/// `16 × max_entries` URLs written to; when more are written, every entry
/// stored before the forgotten write is outdated too, which can only cost
/// hits. A `404` or `410` drops the entry it revalidated, whether it is an
/// error or an answer the call allows. The cache is asked when the call is
/// first polled: a call built and dropped unpolled asks it nothing.
///
/// # Bounds
///
/// At most `max_entries` entries and [`max_bytes`](Self::max_bytes) bytes
/// (64 MiB by default) of bodies, headers and URLs: an entry counts as at
/// least `max_bytes / max_entries`, so that both bounds hold; the least
/// recently used entries are evicted first, by the store's housekeeping,
/// which runs as entries are written and read (so the last few writes may
/// pass the bounds for a moment; [`ApiClient::stats`](crate::ApiClient::stats)
/// runs it before counting). An entry is dropped once it is too old to serve
/// even stale, unless it can be revalidated.
///
/// # Observability
///
/// The call's `http.client.request` span records `cache` = `hit` (fresh, no
/// I/O), `revalidated` (a 304), `stale` (served stale) or `miss`;
/// [`ClientStats`](crate::ClientStats) counts the same (`cache_*`), and so
/// does the `metrics` feature (`http.client.cache.requests`, see
/// [`ClientStats`](crate::ClientStats)). The background refresh of
/// stale-while-revalidate is a call of its own, on a task of its own: its
/// span `http.client.cache.refresh` has no parent and *follows from* the span
/// of the call that served the stale entry. It is the one exception to the
/// rule that the crate's spans are emitted on the caller's task.
///
/// # Examples
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::path("/users/42"))
/// #     .respond_with(wiremock::ResponseTemplate::new(200)
/// #         .insert_header("cache-control", "max-age=60")
/// #         .set_body_string(r#"{"id":42}"#))
/// #     .expect(1)
/// #     .mount(&server).await;
/// use std::time::Duration;
/// use resilient_http::{ApiClient, Cache};
///
/// let client = ApiClient::builder()
///     .base_url(server.uri())
///     .cache(Cache::in_memory(10_000)
///         .max_bytes(64 << 20)
///         .stale_if_error(Duration::from_secs(300)))
///     .build()?;
/// let first = client.get("users/42").send().await?;
/// let again = client.get("users/42").send().await?;   // fresh for 60 s: no request
/// assert_eq!((first.attempts(), again.attempts()), (1, 0));
/// assert_eq!(again.text()?, r#"{"id":42}"#);
/// assert_eq!(client.stats().cache_hits, 1);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    pub(crate) max_entries: usize,
    pub(crate) max_bytes: usize,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) store_credentialed: bool,
}

impl Cache {
    /// A cache in the client's memory of at most `max_entries` responses
    /// (0 is a [`Config`](crate::ErrorKind::Config) error from `build()`).
    #[must_use]
    pub fn in_memory(max_entries: usize) -> Self {
        Self {
            max_entries,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            stale_if_error: None,
            stale_while_revalidate: None,
            store_credentialed: false,
        }
    }

    /// At most this many bytes of entries (default
    /// [`DEFAULT_CACHE_MAX_BYTES`](crate::config::DEFAULT_CACHE_MAX_BYTES),
    /// 64 MiB; 0 is a
    /// [`Config`](crate::ErrorKind::Config) error). A response larger than
    /// it is not stored.
    #[must_use]
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// How long a stale entry may answer a failed call when its response
    /// has no `stale-if-error` directive of its own (default none: only
    /// responses that say so are served after a failure).
    #[must_use]
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// How long a stale entry may answer at once, while one call refreshes
    /// it in the background, when its response has no
    /// `stale-while-revalidate` directive of its own (default none).
    #[must_use]
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// Whether responses to requests with credentials are stored even
    /// without `Cache-Control: public` (default `false`). They are still
    /// kept apart per credential.
    #[must_use]
    pub fn store_credentialed(mut self, store: bool) -> Self {
        self.store_credentialed = store;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.max_entries == 0 {
            return Err(Error::config("cache: max_entries must be at least 1"));
        }
        if self.max_bytes == 0 {
            return Err(Error::config("cache: max_bytes must be at least 1"));
        }
        Ok(())
    }
}
