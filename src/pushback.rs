//! Server pushback: a 429 or 503 with `Retry-After` pauses its endpoint
//! (scheme, host, port) for every call of the client and its clones, until
//! the time given, capped at the retry policy's `max_retry_after`.
//!
//! A [`Pause`] is one atomic "paused until" per endpoint, kept beside the
//! endpoint's breaker but independent of it, so pushback works with breakers
//! off too: an endpoint of a client with endpoints holds its own (in
//! `balance::Instance`); calls to fixed URLs find theirs in [`Pauses`], keyed
//! by origin and bounded like the breakers. When not paused, asking costs one
//! atomic load.
//!
//! The decision what to do during a pause (go elsewhere, wait within the
//! deadline, or refuse with [`Error::is_server_pushback`](crate::Error::is_server_pushback))
//! is the pipeline's (`src/pipeline/route.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use url::Url;

use crate::origin::{Forgettable, PerOrigin};

/// One endpoint's pushback pause: "paused until", as nanoseconds after
/// `base` on tokio's clock (0: never paused). Lock-free.
#[derive(Debug)]
pub(crate) struct Pause {
    base: Instant,
    until: AtomicU64,
}

impl Default for Pause {
    fn default() -> Self {
        Self::new()
    }
}

impl Pause {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            until: AtomicU64::new(0),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The time left in the pause at `now`, or `None` when not paused.
    pub(crate) fn remaining(&self, now: Instant) -> Option<Duration> {
        let until = self.until.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let now = self.nanos(now);
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Pauses the endpoint for `length` from `now` (a longer pause already
    /// running is kept). Returns whether this started a pause, that is,
    /// none was running.
    pub(crate) fn pause(&self, now: Instant, length: Duration) -> bool {
        if length.is_zero() {
            return false;
        }
        let from = self.nanos(now);
        let length = u64::try_from(length.as_nanos()).unwrap_or(u64::MAX);
        let until = from.saturating_add(length).max(1);
        let previous = self.until.fetch_max(until, Ordering::Relaxed);
        previous <= from
    }
}

/// The pauses of the endpoints a client calls by fixed URL, one per origin,
/// bounded; a running pause is never forgotten.
pub(crate) type Pauses = PerOrigin<Pause>;

impl Pauses {
    /// The pause of `url`'s endpoint, created on first use.
    pub(crate) fn for_url(&self, url: &Url) -> Arc<Pause> {
        self.get(url, |_| Pause::new())
    }
}

impl Forgettable for Pause {
    fn idle(&self, now: Instant) -> bool {
        self.remaining(now).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::MAX_ORIGINS;

    #[tokio::test(start_paused = true)]
    async fn a_pause_ends_at_its_time_and_keeps_the_longer_one() {
        let pause = Pause::new();
        let t0 = Instant::now();
        assert_eq!(pause.remaining(t0), None);
        assert!(pause.pause(t0, Duration::from_secs(2)), "a pause starts");
        assert_eq!(pause.remaining(t0), Some(Duration::from_secs(2)));
        assert!(!pause.pause(t0, Duration::from_secs(1)), "already paused");
        assert_eq!(
            pause.remaining(t0),
            Some(Duration::from_secs(2)),
            "a shorter pause does not cut a longer one"
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(pause.remaining(t1), Some(Duration::from_secs(1)));
        assert_eq!(pause.remaining(t0 + Duration::from_secs(2)), None);
        assert!(!pause.pause(t1, Duration::ZERO), "no pause for zero");
        assert!(pause.pause(t0 + Duration::from_secs(3), Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn endpoint_pauses_are_bounded_and_a_running_one_is_kept() {
        let pauses = Pauses::new(None, |_| Pause::new());
        let long = Url::parse("http://paused.example:1/").unwrap();
        pauses
            .for_url(&long)
            .pause(Instant::now(), Duration::from_secs(60));
        for i in 0..3 * MAX_ORIGINS {
            let url = Url::parse(&format!("http://h{i}.example/")).unwrap();
            drop(pauses.for_url(&url));
            assert!(pauses.tracked() <= MAX_ORIGINS);
        }
        assert!(pauses.for_url(&long).remaining(Instant::now()).is_some());
    }
}
