//! Deadline arithmetic shared by every layer of the pipeline.
//!
//! A call has one total deadline. Every wait inside it (a concurrency permit, a
//! rate-limit permit, a backoff sleep) and every attempt is bounded by the time
//! that is left, so the layers never need to agree on anything but this struct.
//! All time is tokio time, so tests can pause and advance the clock.

use std::time::Duration;

use tokio::time::Instant;

/// Nanoseconds from `epoch` to `t` (0 before it, saturating far after, below
/// `u64::MAX`, which callers keep as a sentinel).
pub(crate) fn nanos_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX - 1)
}

/// Which limit was binding when a timeout fired.
///
/// Returned by [`Error::timeout_phase`](crate::Error::timeout_phase).
///
/// # Examples
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::any())
/// #     .respond_with(wiremock::ResponseTemplate::new(200).set_delay(std::time::Duration::from_millis(500)))
/// #     .mount(&server).await;
/// use std::time::Duration;
/// use resilient_http::{ApiClient, TimeoutPhase};
///
/// let client = ApiClient::builder()
///     .base_url(server.uri())
///     .attempt_timeout(Duration::from_millis(100))
///     .no_retry()
///     .build()?;
/// let err = client.get("slow").send().await.unwrap_err();
/// match err.timeout_phase() {
///     Some(TimeoutPhase::Connect) => eprintln!("the host is unreachable"),
///     Some(TimeoutPhase::Attempt | TimeoutPhase::Read) => eprintln!("this attempt was slow"),
///     Some(TimeoutPhase::Total) => eprintln!("the whole call ran out of time"),
///     _ => eprintln!("not a timeout: {err}"),
/// }
/// assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Attempt));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// The TCP connect (and TLS handshake) took longer than `connect_timeout`.
    Connect,
    /// No bytes arrived for `read_timeout` while waiting for headers or body.
    Read,
    /// One attempt (headers and buffered body) took longer than `attempt_timeout`.
    Attempt,
    /// The whole call (queueing, attempts and backoff) ran out of time: the total
    /// timeout, or a per-call [`RequestBuilder::timeout`](crate::RequestBuilder::timeout).
    Total,
}

impl TimeoutPhase {
    /// A short lowercase name for logs and metrics (`"connect"`, `"read"`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Read => "read",
            Self::Attempt => "attempt",
            Self::Total => "total",
        }
    }
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The total deadline of one logical call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    start: Instant,
    end: Instant,
}

/// Far enough in the future to mean "never", small enough not to overflow.
pub(crate) const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Deadline {
    /// A deadline `total` from now (saturating: a huge duration means "about never").
    pub(crate) fn after(total: Duration) -> Self {
        Self::starting_at(Instant::now(), total)
    }

    /// A deadline `total` after `start`.
    pub(crate) fn starting_at(start: Instant, total: Duration) -> Self {
        let end = start
            .checked_add(total.min(NEVER))
            .or_else(|| start.checked_add(NEVER))
            .unwrap_or(start);
        Self { start, end }
    }

    /// Time since the call started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.elapsed_at(Instant::now())
    }

    /// Time from the start of the call to `now`.
    pub(crate) fn elapsed_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }

    /// Time left before the deadline (zero once it passed).
    pub(crate) fn remaining(&self) -> Duration {
        self.remaining_at(Instant::now())
    }

    /// Time left at `now`.
    pub(crate) fn remaining_at(&self, now: Instant) -> Duration {
        self.end.saturating_duration_since(now)
    }

    /// The instant the call started.
    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    /// The instant the deadline passes.
    pub(crate) fn end(&self) -> Instant {
        self.end
    }

    /// Whether a wait of `wait` starting now ends strictly before the deadline,
    /// leaving time for the work the wait is for.
    pub(crate) fn fits(&self, wait: Duration) -> bool {
        wait < self.remaining()
    }

    /// The limit for the next attempt: `min(attempt_timeout, time left)`, and the
    /// phase to report if it fires (`Total` when the time left is the smaller).
    #[cfg(test)]
    pub(crate) fn attempt_limit(&self, attempt_timeout: Duration) -> (Duration, TimeoutPhase) {
        self.attempt_limit_at(Instant::now(), attempt_timeout)
    }

    /// The limit for the next attempt as of `now`: `min(attempt_timeout, time
    /// left)`, and the phase to report if it fires (`Total` when the time left
    /// is the smaller).
    pub(crate) fn attempt_limit_at(
        &self,
        now: Instant,
        attempt_timeout: Duration,
    ) -> (Duration, TimeoutPhase) {
        let left = self.remaining_at(now);
        if left < attempt_timeout {
            (left, TimeoutPhase::Total)
        } else {
            (attempt_timeout, TimeoutPhase::Attempt)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn attempt_limit_names_the_binding_limit() {
        let d = Deadline::after(Duration::from_secs(3));
        assert_eq!(
            d.attempt_limit(Duration::from_secs(1)),
            (Duration::from_secs(1), TimeoutPhase::Attempt)
        );
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert_eq!(
            d.attempt_limit(Duration::from_secs(1)),
            (Duration::from_millis(500), TimeoutPhase::Total)
        );
        assert!(d.fits(Duration::from_millis(499)));
        assert!(!d.fits(Duration::from_millis(500)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(d.remaining(), Duration::ZERO);
        assert_eq!(d.elapsed(), Duration::from_millis(3500));
    }

    #[tokio::test(start_paused = true)]
    async fn huge_totals_saturate_instead_of_overflowing() {
        let d = Deadline::after(Duration::MAX);
        assert!(d.remaining() >= NEVER.checked_sub(Duration::from_secs(1)).unwrap());
        assert!(d.fits(Duration::from_secs(3600)));
    }
}
