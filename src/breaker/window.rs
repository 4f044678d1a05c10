//! What a closed breaker counts: the failure-rate window, by attempts or by time.
//!
//! Two shapes, one per way of setting the rate rule:
//!
//! - by attempts ([`failure_rate`](super::CircuitBreakerConfig::failure_rate)):
//!   a ring of the last `window` outcomes;
//! - by time ([`failure_rate_over`](super::CircuitBreakerConfig::failure_rate_over),
//!   the default): one bucket per second for the current second and the
//!   `window` seconds before it. The rate is taken over the most recent whole
//!   seconds that hold at least `min_calls` attempts, so at a high call rate it
//!   looks at the last second only and at a low one it looks back up to the
//!   whole window.
//!
//! Both are sized when the breaker is built: recording allocates nothing.

use std::time::Duration;

/// The longest time window accepted (buckets are kept for each second of it).
pub(crate) const MAX_TIME_WINDOW: Duration = Duration::from_secs(600);

/// The failure-rate rule: open when at least `threshold` of the counted
/// attempts failed, once at least `min_calls` are counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FailureRate {
    pub(crate) threshold: f64,
    pub(crate) window: RateWindow,
    pub(crate) min_calls: u32,
}

/// Which attempts the failure rate is taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateWindow {
    /// The last this many attempts.
    Calls(u32),
    /// The attempts of the current second and this many whole seconds before
    /// it (rounded up), the most recent that hold `min_calls`.
    Time(Duration),
}

impl RateWindow {
    /// Whole seconds of a time window, rounded up, at least 1.
    fn seconds(window: Duration) -> u64 {
        let whole = window.as_secs() + u64::from(window.subsec_nanos() > 0);
        whole.clamp(1, MAX_TIME_WINDOW.as_secs())
    }
}

/// One second's attempts and failures.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bucket {
    calls: u32,
    failures: u32,
}

/// The counts behind a failure-rate rule.
#[derive(Debug)]
pub(crate) enum Window {
    /// No rate rule.
    Off,
    /// The last `ring.len()` outcomes (`true` = failed).
    Calls {
        ring: Vec<bool>,
        next: usize,
        seen: u32,
        failures: u32,
    },
    /// Per-second buckets; `head` is the second (since the breaker's epoch)
    /// of the most recent bucket.
    Time { buckets: Vec<Bucket>, head: u64 },
}

impl Window {
    pub(crate) fn new(rule: Option<FailureRate>) -> Self {
        match rule.map(|r| r.window) {
            None => Self::Off,
            Some(RateWindow::Calls(n)) => Self::Calls {
                ring: vec![false; n as usize],
                next: 0,
                seen: 0,
                failures: 0,
            },
            Some(RateWindow::Time(d)) => {
                // The current second plus the whole seconds before it.
                let len = usize::try_from(RateWindow::seconds(d) + 1).unwrap_or(1);
                Self::Time {
                    buckets: vec![Bucket::default(); len],
                    head: 0,
                }
            }
        }
    }

    /// Forgets every outcome (the breaker closed again).
    pub(crate) fn clear(&mut self) {
        match self {
            Self::Off => {}
            Self::Calls {
                ring,
                next,
                seen,
                failures,
            } => {
                ring.fill(false);
                *next = 0;
                *seen = 0;
                *failures = 0;
            }
            Self::Time { buckets, .. } => buckets.fill(Bucket::default()),
        }
    }

    /// Counts one outcome recorded `second` whole seconds after the epoch.
    pub(crate) fn push(&mut self, failed: bool, second: u64) {
        match self {
            Self::Off => {}
            Self::Calls {
                ring,
                next,
                seen,
                failures,
            } => {
                if ring.is_empty() {
                    return;
                }
                let len = u32::try_from(ring.len()).unwrap_or(u32::MAX);
                if *seen == len && ring[*next] {
                    *failures -= 1;
                }
                ring[*next] = failed;
                if failed {
                    *failures += 1;
                }
                *seen = (*seen + 1).min(len);
                *next = (*next + 1) % ring.len();
            }
            Self::Time { buckets, head } => {
                let len = buckets.len() as u64;
                if second > *head {
                    // Clear the seconds that passed since the last outcome.
                    let steps = (second - *head).min(len);
                    for s in (second + 1 - steps)..=second {
                        buckets[index(s, len)] = Bucket::default();
                    }
                    *head = second;
                } else if *head - second >= len {
                    // Older than the window (a late result): it no longer counts.
                    return;
                }
                let b = &mut buckets[index(second, len)];
                b.calls = b.calls.saturating_add(1);
                if failed {
                    b.failures = b.failures.saturating_add(1);
                }
            }
        }
    }

    /// Whether the counts meet `rule`.
    pub(crate) fn tripped(&self, rule: &FailureRate) -> bool {
        let (calls, failures) = match self {
            Self::Off => return false,
            Self::Calls { seen, failures, .. } => (u64::from(*seen), u64::from(*failures)),
            Self::Time { buckets, head } => {
                // The most recent whole seconds holding at least `min_calls`.
                let len = buckets.len() as u64;
                let need = u64::from(rule.min_calls.max(1));
                let (mut calls, mut failures) = (0u64, 0u64);
                for back in 0..len.min(*head + 1) {
                    let b = buckets[index(*head - back, len)];
                    calls += u64::from(b.calls);
                    failures += u64::from(b.failures);
                    if calls >= need {
                        break;
                    }
                }
                (calls, failures)
            }
        };
        #[allow(clippy::cast_precision_loss)]
        let share = failures as f64 / calls.max(1) as f64;
        calls > 0 && calls >= u64::from(rule.min_calls) && share >= rule.threshold
    }
}

fn index(second: u64, len: u64) -> usize {
    // `len` is at most MAX_TIME_WINDOW + 1 seconds, so the remainder fits.
    usize::try_from(second % len).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time_rule(secs: u64, min_calls: u32) -> FailureRate {
        FailureRate {
            threshold: 0.5,
            window: RateWindow::Time(Duration::from_secs(secs)),
            min_calls,
        }
    }

    #[test]
    fn the_time_window_takes_the_most_recent_seconds_that_hold_min_calls() {
        let rule = time_rule(30, 10);
        let mut w = Window::new(Some(rule));
        // Second 0: 10 failures. Second 5: 10 successes.
        (0..10).for_each(|_| w.push(true, 0));
        assert!(w.tripped(&rule));
        (0..10).for_each(|_| w.push(false, 5));
        assert!(!w.tripped(&rule), "second 5 alone holds min_calls: 0%");
        // Second 6: 4 failures: second 6 holds 4 < 10, so seconds 5 and 6 count: 4/14.
        (0..4).for_each(|_| w.push(true, 6));
        assert!(!w.tripped(&rule));
        (0..6).for_each(|_| w.push(true, 6));
        assert!(w.tripped(&rule), "second 6 alone: 10 of 10");
    }

    #[test]
    fn seconds_past_the_window_no_longer_count() {
        let rule = time_rule(30, 10);
        let mut w = Window::new(Some(rule));
        (0..9).for_each(|_| w.push(true, 0));
        w.push(true, 30);
        assert!(w.tripped(&rule), "seconds 0..=30 are the window");
        let mut w = Window::new(Some(rule));
        (0..9).for_each(|_| w.push(true, 0));
        w.push(true, 31);
        assert!(!w.tripped(&rule), "second 0 has left the window");
        w.push(true, 0);
        assert!(
            !w.tripped(&rule),
            "a late result older than the window is dropped"
        );
    }

    #[test]
    fn a_long_gap_clears_every_bucket() {
        let rule = time_rule(2, 3);
        let mut w = Window::new(Some(rule));
        (0..3).for_each(|_| w.push(true, 0));
        assert!(w.tripped(&rule));
        w.push(true, 1_000);
        assert!(!w.tripped(&rule), "one attempt is below min_calls");
        w.clear();
        (0..2).for_each(|_| w.push(true, 1_000));
        assert!(!w.tripped(&rule));
    }

    #[test]
    fn the_calls_window_counts_the_last_attempts() {
        let rule = FailureRate {
            threshold: 0.5,
            window: RateWindow::Calls(4),
            min_calls: 4,
        };
        let mut w = Window::new(Some(rule));
        for failed in [true, true, false] {
            w.push(failed, 0);
        }
        assert!(!w.tripped(&rule), "3 < min_calls");
        w.push(false, 0);
        assert!(w.tripped(&rule), "2 of 4");
        w.push(false, 0);
        assert!(!w.tripped(&rule), "1 of the last 4");
    }
}
