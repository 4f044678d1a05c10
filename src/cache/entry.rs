//! One stored response, and the decisions about it that
//! `http-cache-semantics` leaves to the cache: how long it may be served
//! stale, and how long it is worth keeping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_cache_semantics::CachePolicy;
use reqwest::header::{CACHE_CONTROL, ETAG, HeaderMap, LAST_MODIFIED};
use reqwest::{StatusCode, Version};
use tokio::time::Instant;
use url::Url;

/// The longest an entry is kept: a server's `max-age` may be anything.
const MAX_KEEP: Duration = Duration::from_secs(365 * 24 * 3600);

/// The response directives the cache reads itself (the RFC 9111 ones are
/// `http-cache-semantics`'s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Directives {
    /// `stale-if-error=<seconds>` (RFC 5861).
    pub(super) stale_if_error: Option<Duration>,
    /// `stale-while-revalidate=<seconds>` (RFC 5861).
    pub(super) stale_while_revalidate: Option<Duration>,
    /// `must-revalidate` or `no-cache`: never served stale.
    pub(super) no_stale: bool,
    /// `public`: may be stored for a request with credentials.
    pub(super) public: bool,
}

impl Directives {
    /// Reads the `Cache-Control` headers of a response. A directive whose
    /// value is not a number of seconds is ignored.
    pub(super) fn of(headers: &HeaderMap) -> Self {
        let mut found = Self::default();
        let parts = headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for part in parts {
            let (name, value) = match part.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                None => (part.trim(), None),
            };
            let seconds = || value.and_then(|v| v.parse().ok()).map(Duration::from_secs);
            if name.eq_ignore_ascii_case("stale-if-error") {
                found.stale_if_error = seconds();
            } else if name.eq_ignore_ascii_case("stale-while-revalidate") {
                found.stale_while_revalidate = seconds();
            } else if name.eq_ignore_ascii_case("must-revalidate")
                || name.eq_ignore_ascii_case("no-cache")
            {
                found.no_stale = true;
            } else if name.eq_ignore_ascii_case("public") {
                found.public = true;
            }
        }
        found
    }
}

/// How long an entry may be served stale, in each case.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Windows {
    pub(super) if_error: Duration,
    pub(super) while_revalidate: Duration,
}

impl Windows {
    /// The response's directives, else the client's defaults; none for a
    /// response that must not be served stale.
    pub(super) fn of(
        directives: Directives,
        if_error: Option<Duration>,
        while_revalidate: Option<Duration>,
    ) -> Self {
        if directives.no_stale {
            return Self::default();
        }
        Self {
            if_error: directives.stale_if_error.or(if_error).unwrap_or_default(),
            while_revalidate: directives
                .stale_while_revalidate
                .or(while_revalidate)
                .unwrap_or_default(),
        }
    }
}

/// A stored response.
pub(crate) struct Entry {
    pub(super) policy: CachePolicy,
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// The final URL, after any redirects.
    pub(super) url: Url,
    /// When it stops being fresh (when it was stored, if it arrived stale).
    pub(super) fresh_until: Instant,
    /// How long it had been stale when it arrived (its `Age` from upstream
    /// caches past its freshness lifetime); zero if it arrived fresh.
    pub(super) stale_on_arrival: Duration,
    pub(super) windows: Windows,
    /// The bytes it holds, roughly (body, headers, URL).
    pub(super) bytes: u64,
    /// How long it is kept (see [`keep`]).
    pub(super) keep: Option<Duration>,
    /// A background refresh of it is in flight.
    pub(super) refreshing: AtomicBool,
    /// When it was stored: a write to its URL after then outdates it.
    pub(super) stored_at: Instant,
}

impl Entry {
    /// How long it has been stale at `now` (zero while fresh), counting the
    /// time it was stale before it arrived: its stale windows run from when
    /// it went stale (RFC 5861 sections 3 and 4).
    pub(super) fn staleness(&self, now: Instant) -> Duration {
        if now < self.fresh_until {
            return Duration::ZERO;
        }
        now.saturating_duration_since(self.fresh_until)
            .saturating_add(self.stale_on_arrival)
    }

    /// Whether it may answer a failed call at `now`: it is fresh, or stale
    /// by no more than its window.
    pub(super) fn serves_if_error(&self, now: Instant) -> bool {
        self.staleness(now) <= self.windows.if_error
    }

    /// Whether it may answer at once at `now` while it is refreshed: it is
    /// stale, by no more than its window. (A fresh entry the request will
    /// not take, `no-cache`, is revalidated, never served as stale.)
    pub(super) fn serves_while_revalidating(&self, now: Instant) -> bool {
        let staleness = self.staleness(now);
        !staleness.is_zero() && staleness <= self.windows.while_revalidate
    }

    /// Claims its background refresh; false when one is in flight.
    pub(super) fn claim_refresh(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }

    pub(super) fn release_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }
}

/// How long an entry is worth keeping: while it is fresh (`fresh` from
/// now) or may be served stale (its windows, less the time it was already
/// stale on arrival, `stale`); `None` (until evicted) when it can be
/// revalidated (it has an `ETag` or a `Last-Modified`). `Some(ZERO)`: not
/// worth storing.
pub(super) fn keep(
    headers: &HeaderMap,
    fresh: Duration,
    stale: Duration,
    windows: Windows,
) -> Option<Duration> {
    if headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED) {
        return None;
    }
    let window = windows.if_error.max(windows.while_revalidate);
    Some(
        fresh
            .saturating_add(window.saturating_sub(stale))
            .min(MAX_KEEP),
    )
}

/// The bytes an entry holds, roughly: its body, its headers (kept twice:
/// here and in the policy, with the request's), its URL, and a fixed
/// overhead.
pub(super) fn size_of(body: &Bytes, response: &HeaderMap, request: &HeaderMap, url: &Url) -> u64 {
    let headers = |h: &HeaderMap| {
        h.iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 16)
            .sum::<usize>()
    };
    let total =
        body.len() + 2 * headers(response) + headers(request) + 2 * url.as_str().len() + 512;
    u64::try_from(total).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn cc(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn reads_the_stale_directives_and_ignores_bad_values() {
        let d = Directives::of(&cc(
            "max-age=60, stale-if-error=300, Stale-While-Revalidate=\"30\", public",
        ));
        assert_eq!(d.stale_if_error, Some(Duration::from_secs(300)));
        assert_eq!(d.stale_while_revalidate, Some(Duration::from_secs(30)));
        assert!(d.public && !d.no_stale);
        let d = Directives::of(&cc("stale-if-error=soon, must-revalidate"));
        assert_eq!(d.stale_if_error, None);
        assert!(d.no_stale && !d.public);
    }

    #[test]
    fn the_response_window_wins_over_the_default_and_no_cache_forbids_both() {
        let five = Some(Duration::from_secs(5));
        let d = Directives::of(&cc("max-age=1, stale-if-error=60"));
        let w = Windows::of(d, five, five);
        assert_eq!(w.if_error, Duration::from_secs(60));
        assert_eq!(w.while_revalidate, Duration::from_secs(5));
        let w = Windows::of(Directives::of(&cc("no-cache")), five, five);
        assert_eq!(w, Windows::default());
        let w = Windows::of(Directives::default(), None, None);
        assert_eq!(w, Windows::default());
    }
}
