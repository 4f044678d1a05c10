//! Hedged requests: [`Hedging`], the policy, and [`LatencySketch`], the
//! per-endpoint latency histogram a percentile delay is read from.
//!
//! The race itself (the first attempt, the hedges, the first usable answer
//! wins) is the pipeline's (`src/pipeline/hedge.rs`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::origin::{Forgettable, PerOrigin};

/// Samples an endpoint's sketch needs before a percentile delay is used; until
/// then a call with [`Hedging::percentile`] sends no hedge.
pub(crate) const MIN_SAMPLES: u64 = 20;

/// The most hedges one attempt may have.
pub(crate) const MAX_HEDGES: u32 = 10;

/// When to send a second copy of a slow request: hedged requests.
///
/// A hedge is another attempt of the same call, sent when the first one has
/// not answered within a delay. The first usable answer wins (a 2xx, or a
/// status the call allowed); the attempts still in flight are cancelled:
/// their connections dropped, their circuit-breaker permits released, and
/// nothing recorded against their endpoints. A retryable failure of one
/// attempt does not end the call while another is still in flight; nor does
/// a final failure of a write (a `PUT`, `DELETE` or idempotent `POST`: its
/// hedge may find done what the first attempt did, a `404` or a `409`): no
/// more hedges are sent, and that failure is the answer only if no attempt
/// still in flight succeeds. A read's final failure (a `GET`'s `404`) ends
/// the call at once.
///
/// The delay is either fixed ([`Hedging::fixed`]) or a percentile of the
/// endpoint's recent latencies ([`Hedging::percentile`]; until the endpoint
/// has 20 latencies on record, no hedge is sent).
///
/// Hedges are attempts, and cost what retries cost:
///
/// - only calls that may be repeated are hedged (the retry rules: GET, HEAD,
///   OPTIONS, TRACE, PUT, DELETE, or a POST/PATCH with an idempotency key or
///   `idempotent(true)`); a call made with `send_stream()`, or with a
///   streamed body, is never hedged;
/// - each hedge counts toward the retry policy's `max_attempts` (so
///   `RetryPolicy::none()` turns hedging off), takes a rate-limit permit
///   (without waiting: no free permit, no hedge; a limit shared in Redis
///   cannot be asked without a round trip, so it sends none), shares the call's
///   concurrency permit, and is paid from the retry budget (no budget left,
///   no hedge), so a slow dependency cannot double its load;
/// - a hedge goes to another endpoint than the attempt it races when the
///   client has several, and never to one whose breaker is open or that a
///   server paused; when none can take it at once, none is sent;
/// - a hedge carries the client's current token and never fetches one (no
///   valid token cached, no hedge), and is not sent when the
///   [signer](crate::ApiClientBuilder::signer) takes longer than the hedge
///   delay.
///
/// [`ApiResponse::attempts`](crate::ApiResponse::attempts) counts hedges,
/// [`ApiResponse::hedged`](crate::ApiResponse::hedged) says a hedge won, and
/// [`ClientStats`](crate::ClientStats) counts `hedges` and `hedges_won`.
///
/// Off by default; set it on the client with
/// [`ApiClientBuilder::hedging`](crate::ApiClientBuilder::hedging), or per
/// call with [`RequestBuilder::hedging`](crate::RequestBuilder::hedging) and
/// [`RequestBuilder::no_hedging`](crate::RequestBuilder::no_hedging).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use resilient_http::{ApiClient, Hedging};
///
/// // A second copy of any call slower than the endpoint's 95th percentile.
/// let client = ApiClient::builder()
///     .base_url("http://127.0.0.1:8080/")
///     .hedging(Hedging::percentile(0.95).max_hedges(1))
///     .build()?;
/// // One call with a fixed delay instead, another with none.
/// let fixed = client.get("users").hedging(Hedging::fixed(Duration::from_millis(20)));
/// let plain = client.get("report").no_hedging();
/// # drop((fixed, plain));
/// # Ok::<(), resilient_http::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct Hedging {
    delay: HedgeDelay,
    max_hedges: u32,
}

/// How the delay before a hedge is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
enum HedgeDelay {
    Fixed(Duration),
    Percentile(f64),
}

impl Hedging {
    /// A hedge after `delay` without an answer, at most one per attempt
    /// (see [`max_hedges`](Self::max_hedges)). A zero delay sends the copies
    /// at once.
    pub fn fixed(delay: Duration) -> Self {
        Self {
            delay: HedgeDelay::Fixed(delay),
            max_hedges: 1,
        }
    }

    /// A hedge once the attempt has taken longer than the `quantile` (for
    /// example `0.95`) of the endpoint's recent latencies (the last 10 to
    /// 20 s of successful attempts). Until the endpoint has 20 latencies on
    /// record, no hedge is sent. A quantile outside `0.0..1.0`
    /// (exclusive) is a `Config` error.
    pub fn percentile(quantile: f64) -> Self {
        Self {
            delay: HedgeDelay::Percentile(quantile),
            max_hedges: 1,
        }
    }

    /// The most hedges one attempt may have (default 1, at most 10; 0 is a
    /// `Config` error). Each later hedge waits the
    /// delay again after the previous one.
    pub fn max_hedges(mut self, hedges: u32) -> Self {
        self.max_hedges = hedges;
        self
    }

    /// The hedges an attempt may have.
    pub(crate) fn hedges(&self) -> u32 {
        self.max_hedges
    }

    /// The quantile, for a percentile delay.
    pub(crate) fn quantile(&self) -> Option<f64> {
        match self.delay {
            HedgeDelay::Percentile(q) => Some(q),
            HedgeDelay::Fixed(_) => None,
        }
    }

    /// The delay before a hedge, given the endpoint's sketch: `None` when
    /// no hedge is to be sent (a percentile without enough samples).
    pub(crate) fn delay(&self, sketch: Option<&LatencySketch>, now: Instant) -> Option<Duration> {
        match self.delay {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::Percentile(q) => sketch?.quantile(q, now),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let HedgeDelay::Percentile(q) = self.delay
            && !(q > 0.0 && q < 1.0)
        {
            return Err(Error::config(
                "hedging: the percentile must be within 0.0..1.0 (exclusive)",
            ));
        }
        if !(1..=MAX_HEDGES).contains(&self.max_hedges) {
            return Err(Error::config(format!(
                "hedging: max_hedges must be within 1..={MAX_HEDGES}"
            )));
        }
        Ok(())
    }
}

/// Sub-buckets per power of two (4: each bucket is at most 25% wide).
const SUB_BITS: u32 = 2;
/// Buckets: microseconds up to 2^32 (71 minutes); longer goes in the last.
const BUCKETS: usize = 32 << SUB_BITS;
/// How long one window of the sketch lasts; two are kept.
const WINDOW: Duration = Duration::from_secs(10);

/// Recent latencies of one endpoint: a fixed log-bucket histogram (four
/// buckets per power of two of microseconds, so a quantile is read to
/// within 25%), with atomic counters.
///
/// Two windows of [`WINDOW`] are kept: samples go to the current one, a
/// quantile reads both, and a new window clears the oldest, so what is read
/// is the last 10 to 20 s. Recording is a few atomic operations and never
/// takes a lock; the thread that first sees a new window clears it (samples
/// recorded during that clear may be lost, which a sketch can afford).
#[derive(Debug)]
pub(crate) struct LatencySketch {
    base: Instant,
    /// The window samples go to now (windows counted from `base`).
    window: AtomicU64,
    counts: [[AtomicU32; BUCKETS]; 2],
}

impl Default for LatencySketch {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl LatencySketch {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            base: now,
            window: AtomicU64::new(0),
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU32::new(0))),
        }
    }

    fn window_at(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.base).as_nanos() / WINDOW.as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }

    /// Moves to the window of `now` if it is a new one; returns it.
    fn rotate(&self, now: Instant) -> u64 {
        let window = self.window_at(now);
        let seen = self.window.load(Ordering::Acquire);
        if window > seen
            && self
                .window
                .compare_exchange(seen, window, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // The winner clears the window now current, and the other too
            // when more than one window has passed.
            let both = window - seen > 1;
            for w in [window, window.wrapping_add(1)] {
                if w == window || both {
                    for c in &self.counts[slot(w)] {
                        c.store(0, Ordering::Relaxed);
                    }
                }
            }
        }
        window.max(seen)
    }

    /// Records one latency.
    pub(crate) fn record(&self, latency: Duration, now: Instant) {
        let window = self.rotate(now);
        self.counts[slot(window)][bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// Samples on record at `now`.
    #[cfg(test)]
    pub(crate) fn samples(&self, now: Instant) -> u64 {
        self.rotate(now);
        self.counts
            .iter()
            .flatten()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum()
    }

    /// The `q` quantile of the latencies on record (the upper edge of its
    /// bucket), or `None` with fewer than [`MIN_SAMPLES`].
    pub(crate) fn quantile(&self, q: f64, now: Instant) -> Option<Duration> {
        self.rotate(now);
        let mut merged = [0u64; BUCKETS];
        for window in &self.counts {
            for (m, c) in merged.iter_mut().zip(window) {
                *m += u64::from(c.load(Ordering::Relaxed));
            }
        }
        let total: u64 = merged.iter().sum();
        if total < MIN_SAMPLES {
            return None;
        }
        // The rank of the quantile, 1-based: ceil(q * total), within 1..=total.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * total as f64 - 1e-9).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, &n) in merged.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper_edge(i));
            }
        }
        Some(upper_edge(BUCKETS - 1))
    }
}

impl Forgettable for LatencySketch {
    fn idle(&self, _now: Instant) -> bool {
        true
    }
}

/// The sketches of the endpoints a client calls by fixed URL, one per origin.
pub(crate) type Latencies = PerOrigin<LatencySketch>;

fn slot(window: u64) -> usize {
    usize::from(window % 2 == 1)
}

/// The bucket of a latency: values below 4 µs have one each, then four per
/// power of two.
fn bucket(latency: Duration) -> usize {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if us < (1 << SUB_BITS) {
        // Below 4: fits.
        return usize::try_from(us).unwrap_or(0);
    }
    let octave = us.ilog2();
    let sub = (us >> (octave - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    let index = (u64::from(octave) << SUB_BITS) | sub;
    usize::try_from(index).map_or(BUCKETS - 1, |i| i.min(BUCKETS - 1))
}

/// The largest latency bucket `i` holds (exclusive upper edge).
fn upper_edge(i: usize) -> Duration {
    let i = u64::try_from(i).unwrap_or(u64::MAX);
    if i < (1 << SUB_BITS) {
        return Duration::from_micros(i + 1);
    }
    let octave = i >> SUB_BITS;
    let sub = i & ((1 << SUB_BITS) - 1);
    let step = 1u64 << (octave - u64::from(SUB_BITS));
    Duration::from_micros(((1 << SUB_BITS) + sub + 1).saturating_mul(step))
}

#[cfg(test)]
#[allow(clippy::cast_precision_loss)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_are_ordered_and_hold_their_values() {
        let mut last = 0;
        for us in [0u64, 1, 3, 4, 5, 7, 8, 100, 1_000, 12_345, 1 << 20, 1 << 31] {
            let d = Duration::from_micros(us);
            let b = bucket(d);
            assert!(b >= last, "{us}");
            last = b;
            assert!(upper_edge(b) > d, "{us} µs above its bucket's edge");
            // At most 25% above (past the first, exact, buckets).
            if us >= 4 {
                assert!(
                    upper_edge(b).as_micros() as f64 <= us as f64 * 1.25 + 1.0,
                    "{us}"
                );
            }
        }
        assert_eq!(bucket(Duration::from_secs(1 << 40)), BUCKETS - 1);
    }

    #[test]
    fn too_few_samples_give_no_quantile() {
        let t0 = Instant::now();
        let s = LatencySketch::new(t0);
        for _ in 0..MIN_SAMPLES - 1 {
            s.record(ms(5), t0);
        }
        assert_eq!(s.quantile(0.95, t0), None);
        s.record(ms(5), t0);
        assert_eq!(s.samples(t0), MIN_SAMPLES);
        assert!(s.quantile(0.95, t0).is_some());
    }

    #[test]
    fn the_quantile_is_read_within_a_bucket() {
        let t0 = Instant::now();
        let s = LatencySketch::new(t0);
        // 95 fast, 5 slow: p50 and p95 are fast, p99 is slow.
        for _ in 0..95 {
            s.record(ms(2), t0);
        }
        for _ in 0..5 {
            s.record(ms(200), t0);
        }
        let p50 = s.quantile(0.5, t0).unwrap();
        let p95 = s.quantile(0.95, t0).unwrap();
        let p99 = s.quantile(0.99, t0).unwrap();
        assert!(p50 > ms(2) && p50 <= ms(3), "{p50:?}");
        assert_eq!(p95, p50);
        assert!(p99 > ms(200) && p99 <= ms(250), "{p99:?}");
    }

    #[test]
    fn old_windows_are_forgotten() {
        let t0 = Instant::now();
        let s = LatencySketch::new(t0);
        for _ in 0..50 {
            s.record(ms(100), t0);
        }
        // Still read in the next window...
        let t1 = t0 + WINDOW + ms(1);
        for _ in 0..50 {
            s.record(ms(1), t1);
        }
        assert_eq!(s.samples(t1), 100);
        assert!(s.quantile(0.9, t1).unwrap() > ms(100));
        // ...gone the window after.
        let t2 = t0 + WINDOW * 2 + ms(1);
        assert_eq!(s.samples(t2), 50);
        assert!(s.quantile(0.9, t2).unwrap() <= ms(2));
        // A long quiet gap clears both.
        assert_eq!(s.samples(t0 + WINDOW * 10), 0);
        assert_eq!(s.quantile(0.5, t0 + WINDOW * 10), None);
    }

    #[test]
    fn concurrent_recording_loses_nothing_within_a_window() {
        let t0 = Instant::now();
        let s = std::sync::Arc::new(LatencySketch::new(t0));
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let s = std::sync::Arc::clone(&s);
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        s.record(Duration::from_micros(i * (k + 1)), t0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.samples(t0), 4000);
    }

    #[test]
    fn invalid_settings_are_config_errors() {
        assert!(Hedging::percentile(0.95).validate().is_ok());
        assert!(Hedging::fixed(Duration::ZERO).validate().is_ok());
        for bad in [
            Hedging::percentile(1.0),
            Hedging::percentile(0.0),
            Hedging::percentile(f64::NAN),
            Hedging::fixed(ms(1)).max_hedges(0),
            Hedging::fixed(ms(1)).max_hedges(MAX_HEDGES + 1),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_delay_is_fixed_or_read_from_the_sketch() {
        let t0 = Instant::now();
        let s = LatencySketch::new(t0);
        assert_eq!(Hedging::fixed(ms(20)).delay(None, t0), Some(ms(20)));
        assert_eq!(Hedging::percentile(0.9).delay(None, t0), None);
        assert_eq!(Hedging::percentile(0.9).delay(Some(&s), t0), None);
        for _ in 0..MIN_SAMPLES {
            s.record(ms(8), t0);
        }
        let d = Hedging::percentile(0.9).delay(Some(&s), t0).unwrap();
        assert!(d > ms(8) && d <= ms(10), "{d:?}");
    }
}
