//! The adaptive concurrency limit: [`AdaptiveConcurrency`], the setting, and
//! [`Adaptive`], the limiter (TCP Vegas applied to calls, with AIMD on drops).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::Error;
use crate::timeout::Deadline;

/// A concurrency limit that follows the dependency's capacity, measured from
/// its response times, instead of a fixed
/// [`max_concurrency`](crate::ApiClientBuilder::max_concurrency).
///
/// The limiter is TCP Vegas applied to calls (as in Netflix's
/// concurrency-limits): it smooths attempt times (an exponential average
/// over about 20 attempts), keeps the lowest smoothed time as the time with
/// no queue (measured afresh every 30 s, from the mean of the first 10
/// attempt times, so that one fast answer does not set it; the limit holds
/// while they are measured), estimates how many calls wait in
/// the dependency's queue (`limit × (1 − rtt_min / rtt)`), and grows the
/// limit by `log10(limit)` per round trip (of `limit` attempts) while that
/// queue is below `log10(limit)`, and shrinks it as fast while the queue is
/// above twice that. A timeout, a 503 or a 429 is a drop: the limit is cut
/// by 10% at once, once per round trip (additive increase, multiplicative
/// decrease). A call's own total deadline running out is a drop only when
/// the attempt had waited at least twice the usual answer time (a caller in
/// a hurry says nothing of the dependency; a dependency that hangs does). The limit stays within
/// [`floor`](Self::floor) and [`ceiling`](Self::ceiling), and only grows while
/// calls use at least half of it.
///
/// A call above the limit waits for a slot within its deadline, then fails
/// with [`ErrorKind::Rejected`](crate::ErrorKind::Rejected) and
/// [`Error::is_concurrency_limited`]; the slot is held for the whole call,
/// retries and backoff included, like `max_concurrency`'s, except that a
/// streamed response ([`send_stream`](crate::RequestBuilder::send_stream),
/// [`send_events`](crate::RequestBuilder::send_events)) gives it back at its
/// headers, where its time is taken: an open stream is no load the limit
/// can measure, and streams holding slots would starve every other call
/// once the limit fell to their number (no answer would then come to raise
/// it).
/// [`ApiClient::concurrency_limit`](crate::ApiClient::concurrency_limit)
/// reads the limit now.
///
/// | option | default |
/// |---|---|
/// | `initial` | 20 |
/// | `floor` | 1 |
/// | `ceiling` | 1,000 |
///
/// # Examples
///
/// ```
/// use resilient_http::{AdaptiveConcurrency, ApiClient};
///
/// let client = ApiClient::builder()
///     .base_url("http://127.0.0.1:8080/")
///     .adaptive_concurrency(AdaptiveConcurrency::default().floor(4).ceiling(256))
///     .build()?;
/// assert_eq!(client.concurrency_limit(), Some(20));
/// # Ok::<(), resilient_http::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct AdaptiveConcurrency {
    initial: usize,
    floor: usize,
    ceiling: usize,
}

impl Default for AdaptiveConcurrency {
    fn default() -> Self {
        Self {
            initial: 20,
            floor: 1,
            ceiling: 1000,
        }
    }
}

impl AdaptiveConcurrency {
    /// The limit to start from (default 20; kept within floor and ceiling).
    pub fn initial(mut self, limit: usize) -> Self {
        self.initial = limit;
        self
    }

    /// The lowest the limit goes (default 1; 0 is a `Config` error).
    pub fn floor(mut self, limit: usize) -> Self {
        self.floor = limit;
        self
    }

    /// The highest the limit goes (default 1,000; below the floor or above
    /// 1,000,000 is a `Config` error).
    pub fn ceiling(mut self, limit: usize) -> Self {
        self.ceiling = limit;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.floor == 0 {
            return Err(Error::config(
                "adaptive_concurrency: floor must be at least 1",
            ));
        }
        if self.ceiling > MAX_LIMIT {
            return Err(Error::config(format!(
                "adaptive_concurrency: ceiling must be at most {MAX_LIMIT}"
            )));
        }
        if self.ceiling < self.floor {
            return Err(Error::config(
                "adaptive_concurrency: ceiling must be at least the floor",
            ));
        }
        Ok(())
    }

    pub(crate) fn start(&self, now: Instant) -> Adaptive {
        let initial = self.initial.clamp(self.floor, self.ceiling);
        Adaptive {
            sem: Arc::new(Semaphore::new(initial)),
            limit: AtomicUsize::new(initial),
            debt: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            vegas: Mutex::new(Vegas {
                #[allow(clippy::cast_precision_loss)]
                limit: initial as f64,
                floor: self.floor,
                ceiling: self.ceiling,
                rtt_min: None,
                rtt_avg: None,
                warm: 0,
                hold_until: None,
                probe_at: now + PROBE,
            }),
        }
    }
}

/// The highest ceiling accepted.
const MAX_LIMIT: usize = 1_000_000;

/// How often the no-queue response time is measured afresh (it may have
/// grown: the dependency moved, its work changed).
const PROBE: Duration = Duration::from_secs(30);

/// The weight of one attempt time in the smoothed time (about the last 20).
const SMOOTHING: f64 = 0.05;

/// Attempt times averaged, after a start or a probe, before the no-queue
/// time is taken from them: one fast answer (a health check, a 304) must not
/// set it.
const WARMUP: u32 = 10;

#[derive(Debug)]
struct Vegas {
    limit: f64,
    floor: usize,
    ceiling: usize,
    /// The lowest smoothed response time since the last probe.
    rtt_min: Option<f64>,
    /// The smoothed response time, in seconds (while warming up, the mean
    /// so far).
    rtt_avg: Option<f64>,
    /// Times averaged since the start or the last probe, up to [`WARMUP`].
    warm: u32,
    /// Until when further drops are part of the one that cut the limit.
    hold_until: Option<Instant>,
    probe_at: Instant,
}

/// What an attempt said about the dependency's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Answered in this time.
    Rtt(Duration),
    /// A timeout (the call's own deadline only past twice the usual answer
    /// time), a 503 or a 429, after the attempt ran this long: the
    /// dependency is past its capacity.
    Drop(Duration),
}

impl Vegas {
    /// The new limit after `signal` with `in_flight` calls.
    fn update(&mut self, signal: Signal, in_flight: usize, now: Instant) -> f64 {
        let limit = self.limit;
        let log = limit.max(1.0).log10().max(0.5);
        let next = match signal {
            // One cut per round trip: the drops of one burst are one signal.
            Signal::Drop(_) if self.hold_until.is_some_and(|t| now < t) => limit,
            Signal::Drop(took) => {
                // Before any answer, the dropped attempt's own time stands
                // for the round trip.
                let rtt = self
                    .rtt_avg
                    .map_or(took, |avg| Duration::from_secs_f64(avg.clamp(0.0, 60.0)))
                    .min(Duration::from_secs(60));
                self.hold_until = now.checked_add(rtt);
                limit * 0.9
            }
            Signal::Rtt(rtt) => {
                // A probe starts once the last warmup is done: with fewer than
                // `WARMUP` answers per probe period, it would never end.
                if now >= self.probe_at && self.warm >= WARMUP {
                    self.rtt_min = None;
                    self.rtt_avg = None;
                    self.warm = 0;
                    self.probe_at = now + PROBE;
                }
                let sample = rtt.as_secs_f64();
                if self.warm < WARMUP {
                    // The mean of the first times; no decision until there
                    // are enough of them.
                    self.warm += 1;
                    let mean = self
                        .rtt_avg
                        .map_or(sample, |a| a + (sample - a) / f64::from(self.warm));
                    self.rtt_avg = Some(mean);
                    if self.warm == WARMUP {
                        self.rtt_min = Some(mean);
                        // The period it holds starts now, measured.
                        self.probe_at = now + PROBE;
                    }
                    return limit;
                }
                let avg = self
                    .rtt_avg
                    .map_or(sample, |a| a + SMOOTHING * (sample - a));
                self.rtt_avg = Some(avg);
                let rtt_min = self.rtt_min.map_or(avg, |m| m.min(avg));
                self.rtt_min = Some(rtt_min);
                #[allow(clippy::cast_precision_loss)]
                let using = in_flight as f64;
                let queue = limit * (1.0 - rtt_min / avg.max(1e-9));
                // `log` per round trip of the whole limit: `log / limit` a sample.
                let step = log / limit.max(1.0);
                if queue > 2.0 * log {
                    limit - step
                } else if using * 2.0 < limit {
                    // Not using the limit: no evidence it could be higher.
                    limit
                } else if queue < log {
                    limit + step
                } else {
                    limit
                }
            }
        };
        #[allow(clippy::cast_precision_loss)]
        let bounded = next.clamp(self.floor as f64, self.ceiling as f64);
        self.limit = bounded;
        bounded
    }
}

/// The adaptive limiter of one client, shared by its clones: a fair (FIFO)
/// semaphore whose permits follow the limit. A lower limit takes free
/// permits out at once and the rest as calls give theirs back (`debt`); a
/// higher one pays the debt first, then adds permits.
#[derive(Debug)]
pub(crate) struct Adaptive {
    sem: Arc<Semaphore>,
    limit: AtomicUsize,
    /// Permits to take out of circulation as they come back.
    debt: AtomicUsize,
    in_flight: AtomicUsize,
    vegas: Mutex<Vegas>,
}

impl Adaptive {
    /// The limit now.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// The dependency's usual answer time (smoothed), once measured.
    pub(crate) fn typical_rtt(&self) -> Option<Duration> {
        let vegas = self.vegas.lock().unwrap_or_else(PoisonError::into_inner);
        vegas
            .rtt_avg
            .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 3600.0)))
    }

    /// Takes a slot, waiting (in turn) at most until the deadline.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        deadline: &Deadline,
    ) -> Result<(AdaptiveSlot, Duration), Error> {
        let (permit, waited) = if let Ok(permit) = Arc::clone(&self.sem).try_acquire_owned() {
            (permit, Duration::ZERO)
        } else {
            let start = Instant::now();
            let wait = Arc::clone(&self.sem).acquire_owned();
            match tokio::time::timeout_at(deadline.end(), wait).await {
                Ok(Ok(permit)) => (permit, start.elapsed()),
                // Timed out, or closed (never: it is not closed).
                _ => return Err(Error::concurrency_limited()),
            }
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok((
            AdaptiveSlot {
                permit: Some(permit),
                limiter: Arc::clone(self),
            },
            waited,
        ))
    }

    /// Feeds one attempt's outcome to the limiter.
    pub(crate) fn observe(&self, signal: Signal, now: Instant) {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let mut vegas = self.vegas.lock().unwrap_or_else(PoisonError::into_inner);
        let next = vegas.update(signal, in_flight, now);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let next = next.round() as usize;
        let before = self.limit.swap(next, Ordering::Relaxed);
        if next > before {
            let up = next - before;
            let paid = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| Some(d - d.min(up)))
                .map_or(0, |d| d.min(up));
            self.sem.add_permits(up - paid);
        } else if next < before {
            let down = before - next;
            let taken = self.sem.forget_permits(down);
            self.debt.fetch_add(down - taken, Ordering::AcqRel);
        }
    }
}

/// A slot of the adaptive limit, given back on drop (or taken out of
/// circulation when the limit fell meanwhile).
#[derive(Debug)]
pub(crate) struct AdaptiveSlot {
    permit: Option<OwnedSemaphorePermit>,
    limiter: Arc<Adaptive>,
}

impl Drop for AdaptiveSlot {
    fn drop(&mut self) {
        let limiter = &self.limiter;
        limiter.in_flight.fetch_sub(1, Ordering::Relaxed);
        let owed = limiter
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if owed && let Some(permit) = self.permit.take() {
            permit.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn vegas(initial: usize) -> (Adaptive, Instant) {
        let now = Instant::now();
        let cfg = AdaptiveConcurrency::default()
            .initial(initial)
            .floor(4)
            .ceiling(64);
        (cfg.start(now), now)
    }

    #[test]
    fn drops_cut_the_limit_by_a_tenth_down_to_the_floor() {
        let (a, now) = vegas(20);
        a.observe(Signal::Drop(ms(0)), now);
        assert_eq!(a.limit(), 18);
        for k in 1..100 {
            a.observe(Signal::Drop(ms(0)), now + ms(k));
        }
        assert_eq!(a.limit(), 4);
        // Before any answer, the dropped attempts' own time is the round
        // trip: a burst of drops at once cuts once.
        let (a, now) = vegas(20);
        for k in 0..10 {
            a.observe(Signal::Drop(ms(30)), now + ms(k));
        }
        assert_eq!(a.limit(), 18);
        // The drops of one round trip cut once.
        let (a, now) = vegas(20);
        a.in_flight.store(20, Ordering::Relaxed);
        a.observe(Signal::Rtt(ms(50)), now);
        for k in 0..10 {
            a.observe(Signal::Drop(ms(0)), now + ms(k));
        }
        assert_eq!(a.limit(), 18);
        a.observe(Signal::Drop(ms(0)), now + ms(60));
        assert_eq!(a.limit(), 16);
    }

    #[test]
    fn a_short_queue_grows_a_used_limit_and_a_long_one_shrinks_it() {
        let (a, now) = vegas(20);
        // Unused (no call in flight): no growth.
        for _ in 0..10 {
            a.observe(Signal::Rtt(ms(5)), now);
        }
        assert_eq!(a.limit(), 20);
        // In use, answered as fast as with no queue: growth, up to the ceiling.
        for _ in 0..5000 {
            let limit = a.limit();
            a.in_flight.store(limit, Ordering::Relaxed);
            a.observe(Signal::Rtt(ms(5)), now);
        }
        assert_eq!(a.limit(), 64);
        // A dependency that serves 16 at once: beyond, calls queue and take
        // longer in proportion; the limit settles near 16.
        for _ in 0..5000 {
            let l = u32::try_from(a.limit().max(16)).unwrap();
            a.observe(Signal::Rtt(ms(5) * l / 16), now);
        }
        let limit = a.limit();
        assert!((14..=22).contains(&limit), "{limit}");
    }

    #[test]
    fn the_no_queue_time_is_measured_afresh() {
        let (a, now) = vegas(20);
        a.in_flight.store(20, Ordering::Relaxed);
        a.observe(Signal::Rtt(ms(5)), now);
        // The dependency got slower for good: after a probe its new speed is
        // the no-queue time, and the limit stops shrinking.
        let later = now + PROBE + ms(1);
        for _ in 0..50 {
            a.observe(Signal::Rtt(ms(50)), later);
        }
        let settled = a.limit();
        for _ in 0..50 {
            a.observe(Signal::Rtt(ms(50)), later);
        }
        assert!(a.limit() >= settled, "{} < {settled}", a.limit());
    }

    #[test]
    fn one_fast_answer_after_a_probe_does_not_set_the_no_queue_time() {
        // Typical answers take 200 ms; right after each probe comes one of
        // 2 ms (a health check). The limit, in use, must not shrink for it.
        let (a, now) = vegas(20);
        a.in_flight.store(20, Ordering::Relaxed);
        for k in 0..4u32 {
            let at = now + (PROBE + ms(1)) * k;
            a.observe(Signal::Rtt(ms(2)), at);
            for _ in 0..100 {
                a.observe(Signal::Rtt(ms(200)), at);
            }
        }
        assert!(a.limit() >= 20, "{}", a.limit());
    }

    #[test]
    fn the_measuring_ends_even_with_few_answers_per_probe_period() {
        // One answer every 4 s (7 per 30 s period), as fast as ever: after
        // its 10 measured times the limit grows again.
        let (a, now) = vegas(4);
        for k in 0..40u32 {
            a.in_flight.store(a.limit(), Ordering::Relaxed);
            a.observe(Signal::Rtt(ms(50)), now + Duration::from_secs(4) * k);
        }
        assert!(a.limit() > 4, "{}", a.limit());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_above_the_limit_wait_for_a_slot_within_the_deadline() {
        let a = Arc::new(
            AdaptiveConcurrency::default()
                .initial(1)
                .start(Instant::now()),
        );
        let deadline = Deadline::after(Duration::from_secs(1));
        let (held, _) = a.acquire(&deadline).await.unwrap();
        let waiting = {
            let a = Arc::clone(&a);
            tokio::spawn(async move {
                a.acquire(&Deadline::after(Duration::from_secs(5)))
                    .await
                    .map(|(_, w)| w)
            })
        };
        tokio::time::sleep(ms(100)).await;
        drop(held);
        let waited = waiting.await.unwrap().unwrap();
        assert_eq!(waited, ms(100));
        let (_held, _) = a.acquire(&deadline).await.unwrap();
        let err = a.acquire(&Deadline::after(ms(50))).await.unwrap_err();
        assert!(err.is_concurrency_limited());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_limit_takes_permits_back_as_calls_end() {
        let a = Arc::new(
            AdaptiveConcurrency::default()
                .initial(4)
                .start(Instant::now()),
        );
        let d = Deadline::after(Duration::from_secs(1));
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(a.acquire(&d).await.unwrap().0);
        }
        for _ in 0..20 {
            a.observe(Signal::Drop(Duration::ZERO), Instant::now());
        }
        assert_eq!(a.limit(), 1);
        held.clear();
        // One slot left in circulation.
        let (one, _) = a.acquire(&d).await.unwrap();
        assert!(a.acquire(&Deadline::after(ms(10))).await.is_err());
        drop(one);
        // A higher limit adds slots back (after the first times, which only
        // measure).
        a.in_flight.store(1, Ordering::Relaxed);
        for _ in 0..WARMUP + 5 {
            a.observe(Signal::Rtt(ms(5)), Instant::now());
        }
        assert!(a.limit() >= 2);
        let (_x, _) = a.acquire(&d).await.unwrap();
        let (_y, _) = a.acquire(&d).await.unwrap();
    }

    #[test]
    fn invalid_settings_are_config_errors() {
        assert!(AdaptiveConcurrency::default().validate().is_ok());
        assert!(AdaptiveConcurrency::default().floor(0).validate().is_err());
        assert!(
            AdaptiveConcurrency::default()
                .floor(8)
                .ceiling(4)
                .validate()
                .is_err()
        );
        let huge = AdaptiveConcurrency::default()
            .initial(usize::MAX)
            .ceiling(usize::MAX);
        assert!(huge.validate().is_err());
    }
}
