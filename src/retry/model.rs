//! Model tests of the default retry budget with the attempts policy: long
//! seeded runs on an injected clock, no I/O. They check what
//! [`RetryBudget`](super::RetryBudget)'s docs promise: random failures are
//! healed as far as the attempts allow, and an outage spends the floor alone.

use std::time::Duration;

use tokio::time::Instant;

use super::{Budget, DEFAULT_RATIO};

/// What a run did.
#[derive(Debug, Default)]
struct Run {
    calls: u64,
    succeeded: u64,
    requests: u64,
}

impl Run {
    #[allow(clippy::cast_precision_loss)]
    fn success(&self) -> f64 {
        self.succeeded as f64 / self.calls as f64
    }

    #[allow(clippy::cast_precision_loss)]
    fn per_call(&self) -> f64 {
        self.requests as f64 / self.calls as f64
    }
}

/// `calls` calls, `per_second` apart, each attempt failing with probability
/// `p`, at most `max_attempts` attempts, retries only when the budget gives
/// one. Each retry goes `backoff` after the attempt before it.
fn run(budget: &Budget, seed: u64, per_second: u32, calls: u64, p: f64, max_attempts: u32) -> Run {
    let mut rng = fastrand::Rng::with_seed(seed);
    let start = Instant::now();
    let gap = Duration::from_secs(1) / per_second;
    let backoff = Duration::from_millis(3);
    let mut r = Run::default();
    for i in 0..calls {
        let mut now = start + gap * u32::try_from(i).unwrap();
        r.calls += 1;
        let mut attempts = 0;
        loop {
            attempts += 1;
            r.requests += 1;
            if rng.f64() >= p {
                budget.deposit(now);
                r.succeeded += 1;
                break;
            }
            if attempts >= max_attempts {
                break;
            }
            let Some(retry) = budget.try_withdraw(now) else {
                break;
            };
            retry.spend();
            now += backoff;
        }
    }
    r
}

fn default_budget() -> Budget {
    Budget::new(DEFAULT_RATIO, 10, Duration::from_secs(10), Instant::now())
}

#[test]
fn random_failures_are_healed_as_far_as_four_attempts_allow() {
    // 600,000 calls each: 10 minutes at 1,000 calls a second.
    let at20 = run(&default_budget(), 20, 1_000, 600_000, 0.2, 4);
    assert!(at20.success() >= 0.99, "20%: {at20:?}");
    let at30 = run(&default_budget(), 30, 1_000, 600_000, 0.3, 4);
    assert!(at30.success() >= 0.85, "30%: {at30:?}");
    // In fact both are healed as far as the attempts allow: 1 - p^4.
    assert!(
        at20.success() > 0.997 && at30.success() > 0.99,
        "{at20:?} {at30:?}"
    );
    // A quiet client lives on the floor: 5 calls a second for an hour.
    let quiet = run(&default_budget(), 5, 5, 18_000, 0.3, 4);
    assert!(quiet.success() > 0.99, "{quiet:?}");
}

#[test]
fn the_old_default_ratio_heals_only_about_95_percent() {
    let b = Budget::new(0.2, 10, Duration::from_secs(10), Instant::now());
    let r = run(&b, 20, 1_000, 600_000, 0.2, 4);
    assert!((0.94..0.97).contains(&r.success()), "{r:?}");
}

#[test]
fn a_full_outage_spends_the_floor_alone() {
    // 1,000 calls in one second (16 at a time in the harness): the floor of
    // 100 retries per 10 s is all that is added.
    let burst = run(&default_budget(), 1, 1_000, 1_000, 1.0, 4);
    assert_eq!(burst.succeeded, 0);
    assert_eq!(burst.requests, 1_100, "{burst:?}");
    assert!(burst.per_call() <= 1.15);
    // A long outage: 100 calls a second for 100 s; the floor refills at 10 a
    // second, so at most 100 + 10 × 100 retries.
    let long = run(&default_budget(), 2, 100, 10_000, 1.0, 4);
    assert!(long.requests - long.calls <= 1_100, "{long:?}");
}

#[test]
fn retries_never_pass_half_the_successes_plus_the_floor() {
    // 50% failures want 0.875 retries a call; the budget holds them to its cap.
    for (seed, p) in [(1, 0.5), (2, 0.7), (3, 0.9)] {
        let secs = 300;
        let r = run(&default_budget(), seed, 1_000, 1_000 * secs, p, 4);
        let retries = r.requests - r.calls;
        #[allow(clippy::cast_precision_loss)]
        let cap = DEFAULT_RATIO * r.succeeded as f64 + 10.0 * (secs as f64 + 10.0);
        #[allow(clippy::cast_precision_loss)]
        let retries = retries as f64;
        assert!(retries <= cap, "p = {p}: {retries} retries, cap {cap}");
    }
}
