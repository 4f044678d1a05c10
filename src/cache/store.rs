//! The store: entries in a bounded `moka` cache, keyed by method, URL,
//! credential and `Vary` variant; the lookup before a call, and what the
//! call's end does to it.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use reqwest::header::{
    AGE, CACHE_CONTROL, ETAG, HeaderMap, HeaderName, HeaderValue, IF_MATCH, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED, RANGE, SET_COOKIE,
};
use reqwest::{Method, StatusCode, Version};
use tokio::time::Instant;
use url::Url;

use super::Cache;
use super::entry::{Directives, Entry, Windows, keep, size_of};
use super::headers::{
    expired_before_sent, policy_view, pragma_no_cache, response_parts, updated, vary_names,
    without_hop_by_hop,
};
use crate::error::{Error, status_kind};
use crate::redact;
use crate::stats::ClientStats;

/// The client is one user: `private` responses are stored, `s-maxage` is
/// not read. `immutable` gives no freshness of its own (RFC 8246 does not
/// extend a response's lifetime): only `max-age`, `Expires` or
/// `Last-Modified` do.
const OPTIONS: CacheOptions = CacheOptions {
    shared: false,
    cache_heuristic: 0.1,
    immutable_min_time_to_live: Duration::ZERO,
    ignore_cargo_cult: false,
};

/// What identifies a resource for one user: method, URL (without user
/// name, password or fragment) and the credential's identity.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Primary {
    head: bool,
    url: Arc<str>,
    /// A keyed hash of the request's credentials; `None` without any.
    credential: Option<u128>,
}

/// One variant of a resource: the hash of the values of the headers its
/// response's `Vary` names (0 without `Vary`).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    primary: Primary,
    variant: u64,
}

/// A response the cache answers with, or the pipeline got.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) url: Url,
}

/// What answered a call that asked the cache (the span's `cache` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A fresh entry, no I/O.
    Hit,
    /// A stale entry: after a failure, or while it is refreshed.
    Stale,
    /// The entry, after a `304 Not Modified`.
    Revalidated,
    /// The server (or nothing, for a failed call).
    Miss,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Revalidated => "revalidated",
            Self::Miss => "miss",
        }
    }
}

/// What the cache says before a call.
pub(crate) enum Lookup {
    /// Not a call the cache handles.
    Bypass,
    /// A fresh entry answers: no I/O.
    Hit(Answer),
    /// A stale entry answers at once; the claim, if this call got it, is for
    /// its background refresh.
    StaleWhileRevalidate(Answer, Option<RefreshClaim>),
    /// The request goes out, with these conditional headers added; the
    /// pending lookup decides what its end does to the cache.
    Fetch(Pending, HeaderMap),
}

/// A call that asked the cache and went out.
pub(crate) struct Pending {
    primary: Primary,
    /// The request as the policy sees it: no credential headers.
    request: http::request::Parts,
    credentialed: bool,
    /// The stale entry it may be answered from (a 304, or a failure).
    entry: Option<Arc<Entry>>,
    /// A background refresh: a failure answers no one.
    refresh: bool,
}

/// The one background refresh of an entry; released when dropped.
pub(crate) struct RefreshClaim(Arc<Entry>);

impl Drop for RefreshClaim {
    fn drop(&mut self) {
        self.0.release_refresh();
    }
}

/// Expires an entry once it is not worth keeping.
struct Keep;

impl moka::Expiry<Key, Arc<Entry>> for Keep {
    fn expire_after_create(
        &self,
        _: &Key,
        entry: &Arc<Entry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        entry.keep
    }

    fn expire_after_update(
        &self,
        _: &Key,
        entry: &Arc<Entry>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        entry.keep
    }
}

/// The cache's time: tokio's (so paused-time tests drive it), as the
/// wall-clock time `http-cache-semantics` reads.
struct Clock {
    system: SystemTime,
    instant: Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            system: SystemTime::now(),
            instant: Instant::now(),
        }
    }

    fn now(&self) -> (Instant, SystemTime) {
        let now = Instant::now();
        let system = self
            .system
            .checked_add(now.saturating_duration_since(self.instant))
            .unwrap_or(self.system);
        (now, system)
    }
}

/// Write markers kept per entry the cache may hold (see `Store::writes`).
const WRITE_MARKERS_PER_ENTRY: u64 = 16;

/// `t` as nanoseconds after `start`, plus one (so that 0 means "none"),
/// saturating.
fn since(start: Instant, t: Instant) -> u64 {
    crate::timeout::nanos_since(start, t).saturating_add(1)
}

/// A client's response cache.
pub(crate) struct Store {
    settings: Cache,
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    /// The header names a resource's last stored response varies on.
    varies: moka::sync::Cache<Primary, Arc<[HeaderName]>>,
    /// Two keyed hashers: 128 bits of credential identity.
    hashers: [RandomState; 2],
    /// When each URL was last written to through the client (RFC 9111
    /// section 4.4): its entries stored before then answer nothing. A
    /// marker pushed out by newer ones raises `written_floor` to its time.
    writes: moka::sync::Cache<Arc<str>, Instant>,
    /// Entries stored at or before this answer nothing: the time of the
    /// latest write whose marker was pushed out of `writes`, in nanoseconds
    /// after `clock`'s start plus one (0: none). Outdating too many entries
    /// is safe; serving one written over is not. An atomic: every lookup
    /// reads it.
    written_floor: Arc<AtomicU64>,
    clock: Clock,
    bytes: Arc<AtomicU64>,
    hits: AtomicU64,
    misses: AtomicU64,
    revalidations: AtomicU64,
    stale: AtomicU64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("settings", &self.settings)
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Store {
    pub(crate) fn new(settings: Cache) -> Self {
        let max_bytes = u64::try_from(settings.max_bytes).unwrap_or(u64::MAX);
        let max_entries = u64::try_from(settings.max_entries).unwrap_or(u64::MAX);
        // Each entry weighs at least its share, so that no more than
        // `max_entries` fit in `max_bytes`.
        let share = max_bytes.div_ceil(max_entries.max(1)).max(1);
        let bytes = Arc::new(AtomicU64::new(0));
        let evicted = Arc::clone(&bytes);
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |_: &Key, entry: &Arc<Entry>| {
                u32::try_from(entry.bytes.max(share)).unwrap_or(u32::MAX)
            })
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(Keep)
            .eviction_listener(move |_, entry: Arc<Entry>, _| {
                evicted.fetch_sub(entry.bytes, Ordering::Relaxed);
            })
            .build();
        let varies = moka::sync::Cache::builder()
            .max_capacity(max_entries)
            .eviction_policy(EvictionPolicy::lru())
            .build();
        let clock = Clock::new();
        let written_floor = Arc::new(AtomicU64::new(0));
        let (floor, start) = (Arc::clone(&written_floor), clock.instant);
        // Markers are small (a URL and a time): 16 per entry, so that writes
        // to many URLs rarely push one out.
        let markers = max_entries.saturating_mul(WRITE_MARKERS_PER_ENTRY);
        let writes = moka::sync::Cache::builder()
            .max_capacity(markers)
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |_, written: Instant, cause| {
                // Pushed out (not replaced by a newer write to its URL): every
                // entry stored before it is outdated.
                if cause == RemovalCause::Size {
                    floor.fetch_max(since(start, written), Ordering::AcqRel);
                }
            })
            .build();
        Self {
            settings,
            entries,
            varies,
            writes,
            written_floor,
            hashers: [RandomState::new(), RandomState::new()],
            clock,
            bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            revalidations: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        }
    }

    /// Before a call: whether the cache answers it, and how it goes out if
    /// not. `use_token`: the client's token provider adds its token.
    /// `refresh`: the call is a background refresh (never answered stale).
    pub(crate) fn lookup(
        &self,
        request: &reqwest::Request,
        use_token: bool,
        refresh: bool,
    ) -> Lookup {
        let head = match *request.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Lookup::Bypass,
        };
        let own = [
            IF_NONE_MATCH,
            IF_MODIFIED_SINCE,
            IF_MATCH,
            IF_UNMODIFIED_SINCE,
            IF_RANGE,
            RANGE,
        ];
        if own.iter().any(|name| request.headers().contains_key(name)) {
            return Lookup::Bypass;
        }
        let Some((primary, parts, credentialed)) = self.describe(request, head, use_token) else {
            return Lookup::Bypass;
        };
        let (now, system) = self.clock.now();
        let entry = self
            .find(&primary, &parts.headers)
            .filter(|entry| !self.overwritten(&primary.url, entry));
        let mut pending = Pending {
            primary,
            request: parts,
            credentialed,
            entry: None,
            refresh,
        };
        let Some(entry) = entry else {
            return Lookup::Fetch(pending, HeaderMap::new());
        };
        match entry.policy.before_request(&pending.request, system) {
            // Its own headers, every line (the policy's copy keeps one per
            // name).
            BeforeRequest::Fresh(_) => Lookup::Hit(served(&entry, system)),
            BeforeRequest::Stale { matches: false, .. } => Lookup::Fetch(pending, HeaderMap::new()),
            BeforeRequest::Stale { request: out, .. } => {
                // The request's own `no-cache` (RFC 9111 section 5.4: `Pragma`
                // counts when there is no `Cache-Control`) or other directive.
                let asks = pending.request.headers.contains_key(CACHE_CONTROL)
                    || pragma_no_cache(&pending.request.headers);
                if !refresh && !asks && entry.serves_while_revalidating(now) {
                    let claim = entry
                        .claim_refresh()
                        .then(|| RefreshClaim(Arc::clone(&entry)));
                    return Lookup::StaleWhileRevalidate(served(&entry, system), claim);
                }
                let mut conditional = HeaderMap::new();
                for name in [IF_NONE_MATCH, IF_MODIFIED_SINCE] {
                    if let Some(value) = out.headers.get(&name) {
                        conditional.insert(name, value.clone());
                    }
                }
                pending.entry = Some(entry);
                Lookup::Fetch(pending, conditional)
            }
        }
    }

    /// After a call that went out got `answer`: a 304 refreshes the entry
    /// and answers with it; another answer is stored if it may be.
    /// `redirected`: the answer is another URL's (a redirect was followed),
    /// never stored under this one; a 304 from there (to the validators
    /// the redirect carried) answers with the entry as it is, which it does
    /// not refresh.
    ///
    /// A full answer (not a 304) to a call that had an entry (a
    /// revalidation, a background refresh) supersedes that entry (RFC 9111
    /// section 4.3.3): it takes its place if it may be stored, else the
    /// entry is dropped, so that it is never served stale after a newer
    /// answer (a `404` a call allowed, a `no-store` 200). A 5xx is an
    /// outage, not a newer answer: the entry stays for stale-if-error.
    pub(crate) fn complete(
        &self,
        pending: &Pending,
        answer: Answer,
        redirected: bool,
    ) -> (Answer, Outcome) {
        if answer.status == StatusCode::NOT_MODIFIED
            && let Some(entry) = &pending.entry
        {
            let answer = if redirected {
                let (_, system) = self.clock.now();
                served(entry, system)
            } else {
                self.revalidated(pending, entry, &answer)
            };
            return (answer, Outcome::Revalidated);
        }
        // An outage's answer (a 5xx, a 429 or 408 the call allowed) leaves
        // the entry for stale-if-error; any other supersedes it.
        let outage = status_kind(answer.status).is_endpoint_failure();
        if pending.entry.is_some() && !outage {
            self.remove(pending);
        }
        if !redirected {
            self.store(pending, &answer);
        }
        (answer, Outcome::Miss)
    }

    /// A call with an unsafe method (`POST`, `PUT`, `DELETE`, ...) to `url`
    /// succeeded: the entries of `url` stored until now (every method,
    /// credential and `Vary` variant) answer nothing more (RFC 9111 section
    /// 4.4). One marker per URL, O(1); when markers are pushed out by newer
    /// ones, every entry stored before the pushed-out write is outdated.
    pub(crate) fn written(&self, url: &Url) {
        let mut url = url.clone();
        // As the entries' keys: no user info, no fragment.
        if url.set_username("").is_err() || url.set_password(None).is_err() {
            return;
        }
        url.set_fragment(None);
        let (now, _) = self.clock.now();
        self.writes.insert(url.as_str().into(), now);
    }

    /// Whether a write to `url` (or one whose marker was pushed out) came
    /// after `entry` was stored.
    fn overwritten(&self, url: &Arc<str>, entry: &Entry) -> bool {
        let floor = self.written_floor.load(Ordering::Acquire);
        (floor != 0 && since(self.clock.instant, entry.stored_at) <= floor)
            || self
                .writes
                .get(url)
                .is_some_and(|written| entry.stored_at <= written)
    }

    /// After a call that went out failed with `err`: the stale entry that
    /// may answer instead, if any. A `404` or `410` says the resource is
    /// gone: its entry is dropped.
    pub(crate) fn rescue(&self, pending: &Pending, err: &Error) -> Option<Answer> {
        if matches!(err.status(), Some(StatusCode::NOT_FOUND | StatusCode::GONE))
            && pending.entry.is_some()
        {
            self.remove(pending);
            return None;
        }
        let entry = pending.entry.as_ref().filter(|_| !pending.refresh)?;
        let outage =
            err.kind().is_endpoint_failure() || err.is_circuit_open() || err.is_server_pushback();
        let (now, system) = self.clock.now();
        (outage && entry.serves_if_error(now)).then(|| served(entry, system))
    }

    /// Counts what answered a call that asked the cache.
    pub(crate) fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Hit => &self.hits,
            Outcome::Stale => &self.stale,
            Outcome::Revalidated => &self.revalidations,
            Outcome::Miss => &self.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("http.client.cache.requests", "result" => outcome.as_str()).increment(1);
    }

    /// Adds the cache's counters to a snapshot (evictions due are done
    /// first, so that the sizes are current).
    pub(crate) fn add_stats(&self, stats: &mut ClientStats) {
        self.entries.run_pending_tasks();
        stats.cache_hits = self.hits.load(Ordering::Relaxed);
        stats.cache_misses = self.misses.load(Ordering::Relaxed);
        stats.cache_revalidations = self.revalidations.load(Ordering::Relaxed);
        stats.cache_stale = self.stale.load(Ordering::Relaxed);
        stats.cache_entries = self.entries.entry_count();
        stats.cache_bytes = self.bytes.load(Ordering::Relaxed);
    }

    /// The request's key and its copy for the policy (credential headers
    /// left out, their keyed hash in the key instead), and whether it
    /// carries credentials. `None` for a URL the policy cannot read.
    fn describe(
        &self,
        request: &reqwest::Request,
        head: bool,
        use_token: bool,
    ) -> Option<(Primary, http::request::Parts, bool)> {
        let mut url = request.url().clone();
        let userinfo = (!url.username().is_empty() || url.password().is_some())
            .then(|| (url.username().to_owned(), url.password().map(str::to_owned)));
        // Cannot fail for http(s) URLs; a URL it fails for keeps its user info
        // out of the key by not being cached.
        url.set_username("").ok()?;
        url.set_password(None).ok()?;
        url.set_fragment(None);
        let uri: http::Uri = url.as_str().parse().ok()?;
        let mut hashers = self.hashers.each_ref().map(BuildHasher::build_hasher);
        let mut credentialed = false;
        let mut feed = |part: &[u8]| {
            credentialed = true;
            for h in &mut hashers {
                part.hash(h);
            }
        };
        let mut headers = HeaderMap::with_capacity(request.headers().len());
        for (name, value) in request.headers() {
            if value.is_sensitive() || redact::is_sensitive_name(name.as_str()) {
                feed(name.as_str().as_bytes());
                feed(value.as_bytes());
            } else {
                headers.append(name.clone(), value.clone());
            }
        }
        if use_token {
            feed(b"token provider");
        }
        if let Some((user, password)) = &userinfo {
            feed(user.as_bytes());
            feed(password.as_deref().unwrap_or_default().as_bytes());
        }
        let credential = credentialed.then(|| {
            let [a, b] = hashers.map(|h| h.finish());
            (u128::from(a) << 64) | u128::from(b)
        });
        let (mut parts, ()) = http::Request::builder()
            .method(request.method().clone())
            .uri(uri)
            .body(())
            .ok()?
            .into_parts();
        parts.headers = policy_view(headers);
        let primary = Primary {
            head,
            url: url.as_str().into(),
            credential,
        };
        Some((primary, parts, credentialed))
    }

    /// The entry for a request's headers: its variant, by the header names
    /// the resource varies on.
    fn find(&self, primary: &Primary, headers: &HeaderMap) -> Option<Arc<Entry>> {
        let variant = match self.varies.get(primary) {
            Some(names) => self.variant(&names, headers),
            None => 0,
        };
        self.entries.get(&Key {
            primary: primary.clone(),
            variant,
        })
    }

    /// Drops the entry a pending call was looked up with (its variant, by
    /// the header names its resource varies on).
    fn remove(&self, pending: &Pending) {
        let names = self.varies.get(&pending.primary);
        let variant = names.map_or(0, |names| self.variant(&names, &pending.request.headers));
        self.entries.invalidate(&Key {
            primary: pending.primary.clone(),
            variant,
        });
    }

    fn variant(&self, names: &[HeaderName], headers: &HeaderMap) -> u64 {
        if names.is_empty() {
            return 0;
        }
        let mut h = self.hashers[0].build_hasher();
        for name in names {
            name.as_str().hash(&mut h);
            for value in headers.get_all(name) {
                value.as_bytes().hash(&mut h);
            }
            0xffu8.hash(&mut h);
        }
        h.finish()
    }

    /// Stores `answer` for the pending request, if it may be.
    fn store(&self, pending: &Pending, answer: &Answer) {
        let headers = without_hop_by_hop(&answer.headers);
        let Some(parts) = response_parts(answer.status, headers.clone()) else {
            return;
        };
        let (now, system) = self.clock.now();
        let policy = CachePolicy::new_options(&pending.request, &parts, system, OPTIONS);
        if !answer.status.is_success() || !policy.is_storable() {
            return;
        }
        let directives = Directives::of(&headers);
        if pending.credentialed && !directives.public && !self.settings.store_credentialed {
            return;
        }
        // A cookie is one client's session: never handed to the next caller.
        if headers.contains_key(SET_COOKIE) {
            return;
        }
        let Some(names) = vary_names(&headers) else {
            return; // `Vary: *`: no request matches it
        };
        let windows = Windows::of(
            directives,
            self.settings.stale_if_error,
            self.settings.stale_while_revalidate,
        );
        let fresh = policy.time_to_live(system);
        let stale = stale_on_arrival(&pending.request, &parts, &policy, system);
        self.insert(
            pending,
            &names,
            Entry {
                fresh_until: now.checked_add(fresh).unwrap_or(now),
                stale_on_arrival: stale,
                keep: keep(&headers, fresh, stale, windows),
                bytes: size_of(
                    &answer.body,
                    &headers,
                    &pending.request.headers,
                    &answer.url,
                ),
                policy,
                status: answer.status,
                version: answer.version,
                headers,
                body: answer.body.clone(),
                url: answer.url.clone(),
                windows,
                refreshing: AtomicBool::new(false),
                stored_at: now,
            },
        );
    }

    fn insert(&self, pending: &Pending, names: &[HeaderName], entry: Entry) {
        let too_big = entry.bytes > u64::try_from(self.settings.max_bytes).unwrap_or(u64::MAX);
        if entry.keep == Some(Duration::ZERO) || too_big {
            return;
        }
        if names.is_empty() {
            self.varies.invalidate(&pending.primary);
        } else {
            self.varies
                .insert(pending.primary.clone(), Arc::from(names));
        }
        let key = Key {
            primary: pending.primary.clone(),
            variant: self.variant(names, &pending.request.headers),
        };
        self.bytes.fetch_add(entry.bytes, Ordering::Relaxed);
        self.entries.insert(key, Arc::new(entry));
    }

    /// A 304 for `entry`: the entry with the 304's headers (RFC 9111
    /// section 3.2), stored again if it still may be (else dropped: the
    /// call is answered from it all the same).
    fn revalidated(&self, pending: &Pending, entry: &Arc<Entry>, answer: &Answer) -> Answer {
        let (now, system) = self.clock.now();
        if !validates(pending, entry, &answer.headers, system) {
            // Not this entry's validators after all: answer with it as it is.
            return served(entry, system);
        }
        let headers = updated(&entry.headers, &answer.headers);
        // The 304 is as old as its own `Age` says: without one, it is new,
        // and the stored response's `Age` must not carry over into the
        // refreshed entry's freshness.
        let mut aged = headers.clone();
        let age = answer.headers.get(AGE).cloned();
        aged.insert(AGE, age.unwrap_or_else(|| HeaderValue::from(0u32)));
        let Some(parts) = response_parts(entry.status, aged) else {
            return served(entry, system);
        };
        let policy = CachePolicy::new_options(&pending.request, &parts, system, OPTIONS);
        let mut served_headers = headers.clone();
        served_headers.insert(AGE, HeaderValue::from(policy.age(system).as_secs()));
        let answer = answer_from(entry, served_headers);
        let directives = Directives::of(&headers);
        let names = vary_names(&headers);
        // As `store` decides for a new response.
        let refused = !policy.is_storable()
            || headers.contains_key(SET_COOKIE)
            || (pending.credentialed && !directives.public && !self.settings.store_credentialed);
        let (false, Some(names)) = (refused, names) else {
            self.remove(pending);
            return answer;
        };
        let windows = Windows::of(
            directives,
            self.settings.stale_if_error,
            self.settings.stale_while_revalidate,
        );
        let fresh = policy.time_to_live(system);
        let stale = stale_on_arrival(&pending.request, &parts, &policy, system);
        let refreshed = Entry {
            fresh_until: now.checked_add(fresh).unwrap_or(now),
            stale_on_arrival: stale,
            keep: keep(&headers, fresh, stale, windows),
            bytes: size_of(&entry.body, &headers, &pending.request.headers, &entry.url),
            policy,
            status: entry.status,
            version: entry.version,
            headers,
            body: entry.body.clone(),
            url: entry.url.clone(),
            windows,
            refreshing: AtomicBool::new(false),
            stored_at: now,
        };
        // Under the key of its old `Vary` (if the 304 changed it, the new
        // key is another one).
        self.remove(pending);
        self.insert(pending, &names, refreshed);
        answer
    }
}

/// Whether a 304 answered `entry`'s validators (the policy's rules), even
/// if it did not repeat them.
fn validates(
    pending: &Pending,
    entry: &Entry,
    not_modified: &HeaderMap,
    system: SystemTime,
) -> bool {
    let mut headers = not_modified.clone();
    if !headers.contains_key(ETAG) && !headers.contains_key(LAST_MODIFIED) {
        for name in [ETAG, LAST_MODIFIED] {
            if let Some(value) = entry.headers.get(&name) {
                headers.insert(name, value.clone());
            }
        }
    }
    let Some(parts) = response_parts(StatusCode::NOT_MODIFIED, headers) else {
        return false;
    };
    matches!(
        entry
            .policy
            .after_response(&pending.request, &parts, system),
        AfterResponse::NotModified(..)
    )
}

/// How long a response had been stale when it arrived: its age (an
/// upstream cache's `Age`) past its freshness lifetime (RFC 9111 section
/// 4.2); zero if it was fresh. Its stale windows (RFC 5861) count from
/// when it went stale.
fn stale_on_arrival(
    request: &http::request::Parts,
    response: &http::response::Parts,
    policy: &CachePolicy,
    system: SystemTime,
) -> Duration {
    if !policy.time_to_live(system).is_zero() {
        return Duration::ZERO;
    }
    let headers = &response.headers;
    let aged = if headers.contains_key(AGE) {
        // Its lifetime: how long the policy would keep it fresh at age zero
        // (never less than zero).
        let mut unaged = headers.clone();
        unaged.remove(AGE);
        response_parts(response.status, unaged).map_or(Duration::ZERO, |unaged| {
            let lifetime = CachePolicy::new_options(request, &unaged, system, OPTIONS);
            policy
                .age(system)
                .saturating_sub(lifetime.time_to_live(system))
        })
    } else {
        Duration::ZERO
    };
    aged.saturating_add(expired_before_sent(headers))
}

/// An entry as an answer, with `headers`.
fn answer_from(entry: &Entry, headers: HeaderMap) -> Answer {
    Answer {
        status: entry.status,
        version: entry.version,
        headers,
        body: entry.body.clone(),
        url: entry.url.clone(),
    }
}

/// An entry as an answer: its own headers (every line of each), with its
/// current `Age`.
fn served(entry: &Entry, system: SystemTime) -> Answer {
    let mut headers = entry.headers.clone();
    headers.insert(AGE, HeaderValue::from(entry.policy.age(system).as_secs()));
    answer_from(entry, headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for &(name, value) in lines {
            h.append(name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn a_response_stale_on_arrival_has_been_stale_for_its_age_past_its_lifetime() {
        let (request, ()) = http::Request::builder()
            .uri("http://127.0.0.1/a")
            .body(())
            .unwrap()
            .into_parts();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let stale_for = |lines: &[(&'static str, &'static str)]| {
            let response = response_parts(StatusCode::OK, headers(lines)).unwrap();
            let policy = CachePolicy::new_options(&request, &response, now, OPTIONS);
            stale_on_arrival(&request, &response, &policy, now)
        };

        let old = stale_for(&[("cache-control", "max-age=60"), ("age", "100000")]);
        assert_eq!(old, Duration::from_secs(99_940));
        let fresh = stale_for(&[("cache-control", "max-age=60"), ("age", "10")]);
        assert_eq!(fresh, Duration::ZERO);
        let expired = stale_for(&[
            ("date", "Sun, 12 Nov 2023 22:13:20 GMT"),
            ("expires", "Sun, 12 Nov 2023 21:13:20 GMT"),
            ("age", "60"),
        ]);
        assert_eq!(expired, Duration::from_secs(3600 + 60));
        let max_age_wins = stale_for(&[
            ("cache-control", "max-age=0"),
            ("date", "Sun, 12 Nov 2023 22:13:20 GMT"),
            ("expires", "Sun, 12 Nov 2023 21:13:20 GMT"),
        ]);
        assert_eq!(max_age_wins, Duration::ZERO);
        let absurd = stale_for(&[("cache-control", "max-age=60"), ("age", "99999999999999")]);
        assert_eq!(absurd, Duration::from_secs(u64::from(u32::MAX) - 60));
    }
}
