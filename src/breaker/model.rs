//! Model tests of the default breaker: millions of attempts through the state
//! machine on an injected clock, no I/O. They check the promise written on
//! [`CircuitBreakerConfig`] and recompute its arithmetic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{Breaker, CircuitBreakerConfig, CircuitState, Verdict};

/// P(Bin(n, p) >= ceil(n / 2)), summed from the pmf (no overflow for n in
/// the thousands: 0.7^3000 is still a normal f64).
fn half_or_more(n: u32, p: f64) -> f64 {
    let mut pmf = (1.0 - p).powi(i32::try_from(n).unwrap());
    let mut tail = 0.0;
    for i in 0..=n {
        if 2 * i >= n {
            tail += pmf;
        }
        pmf *= f64::from(n - i) / f64::from(i + 1) * p / (1.0 - p);
    }
    tail
}

#[test]
fn the_false_trip_arithmetic_on_the_config_docs_holds() {
    let p: f64 = 0.3;
    let attempts_per_hour = 100_000.0 * 3600.0;
    // 30 in a row.
    let run30 = attempts_per_hour * p.powi(30);
    assert!(run30 < 7.5e-8, "{run30}");
    // 20 in a row lasting 1 s: 3,600 slices of 20 p^20 + p^21 / (1 - p).
    let slice = 20.0 * p.powi(20) + p.powi(21) / (1.0 - p);
    assert!(slice < 7.2e-10, "{slice}");
    let sustained = 3600.0 * slice;
    // The share over n >= 300 attempts: largest at n = 300.
    let at300 = half_or_more(300, p);
    assert!(at300 < 3.5e-13, "{at300}");
    for n in 301..2000 {
        assert!(half_or_more(n, p) <= at300, "n = {n}");
    }
    let d = 0.5 * (0.5 / p).ln() + 0.5 * (0.5 / (1.0 - p)).ln();
    let chernoff = (-300.0 * d).exp();
    assert!(at300 < chernoff && chernoff < 4.4e-12, "{chernoff}");
    let share = attempts_per_hour * at300;
    let total = run30 + sustained + share;
    assert!(total < 1.3e-4, "{total} openings an hour");
    assert!(1.0 / total > 7_700.0, "hours between openings");
    assert!(half_or_more(300, 0.2) < 1e-30);
    // Why not a fixed count of 10: 740 runs an hour at 50,000 a second.
    let one_in = 1.0 / (0.7 * p.powi(10));
    assert!((240_000.0..244_000.0).contains(&one_in), "{one_in}");
    let ten = 50_000.0 * 3600.0 / one_in;
    assert!((740.0..750.0).contains(&ten), "{ten}");
}

/// A default breaker that counts its openings.
fn counted(cfg: CircuitBreakerConfig) -> (Breaker, Arc<AtomicU32>) {
    let opened = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&opened);
    let b = Breaker::new(
        "model",
        cfg.on_state_change(move |change| {
            if change.to == CircuitState::Open {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }),
    );
    (b, opened)
}

/// Drives `attempts` attempts, Poisson arrivals at `per_second`, each failing
/// with probability `p`; returns the openings.
fn drive(seed: u64, per_second: f64, attempts: u64, p: f64) -> u32 {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (b, opened) = counted(CircuitBreakerConfig::default());
    let mut now = Instant::now();
    for _ in 0..attempts {
        // Exponential gaps: a bursty, memoryless arrival process.
        let gap = -(1.0 - rng.f64()).ln() / per_second;
        now += Duration::from_secs_f64(gap);
        if let Ok(permit) = b.try_acquire(now) {
            let verdict = if rng.f64() < p {
                Verdict::Failure
            } else {
                Verdict::Success
            };
            permit.record(verdict, now);
        }
    }
    opened.load(Ordering::Relaxed)
}

/// (attempts a second, attempts): 5.3 million attempts in all, from 1 a
/// second over 100 hours to 50,000 a second. 20 a second is where the
/// sustained rule is closest to tripping, 10 and 300 a second where the share
/// rule counts the fewest attempts.
const RATES: [(u32, u64); 7] = [
    (1, 360_000),
    (10, 720_000),
    (20, 720_000),
    (300, 1_080_000),
    (2_000, 720_000),
    (20_000, 720_000),
    (50_000, 1_000_000),
];

#[test]
fn random_failures_at_30_percent_never_open_the_default_breaker() {
    for (i, (rate, attempts)) in RATES.into_iter().enumerate() {
        let opened = drive(15 + i as u64, f64::from(rate), attempts, 0.3);
        assert_eq!(opened, 0, "{rate} attempts/s: opened {opened} times");
    }
}

#[test]
fn the_model_is_not_vacuous_60_percent_failures_open_it_from_10_per_second() {
    // Below 10 attempts a second, 30 s hold too few attempts to tell 60% from
    // 30%: only a run of failures opens it there.
    for (i, (rate, _)) in RATES.into_iter().enumerate().skip(1) {
        // Enough attempts to fill 30 s at the slowest rate.
        let attempts = u64::from(rate * 40).max(1_000);
        let opened = drive(99 + i as u64, f64::from(rate), attempts, 0.6);
        assert!(opened > 0, "{rate} attempts/s");
    }
}

/// Healthy traffic for a while, then a full outage at a steady rate: returns
/// the failed attempts until the breaker opened, and the time from the first
/// failure until it was seen open (by a refusal or after a failure).
fn outage(per_second: f64) -> (u32, Duration) {
    let gap = Duration::from_secs_f64(1.0 / per_second);
    let b = Breaker::new("model", CircuitBreakerConfig::default());
    let mut now = Instant::now();
    for _ in 0..200 {
        now += gap;
        b.try_acquire(now).unwrap().record(Verdict::Success, now);
    }
    let first = now + gap;
    let mut failed = 0;
    loop {
        now += gap;
        let Ok(permit) = b.try_acquire(now) else {
            return (failed, now - first);
        };
        // The promise: by 20 failures and 1 s, whichever is later, it is open.
        assert!(
            failed < 20 || now < first + Duration::from_secs(1),
            "{per_second}/s: admitted after {failed} failures and {:?}",
            now - first
        );
        permit.record(Verdict::Failure, now);
        failed += 1;
        if b.state(now) == CircuitState::Open {
            return (failed, now - first);
        }
        assert!(
            failed < 20 || now < first + Duration::from_secs(1),
            "{per_second}/s: closed after {failed} failures and {:?}",
            now - first
        );
    }
}

#[test]
fn a_full_outage_opens_it_within_20_failures_or_1_s_whichever_is_later() {
    for per_second in [1.0 / 60.0, 1.0, 10.0, 19.5, 20.0, 25.0, 29.0] {
        let (failed, took) = outage(per_second);
        if per_second <= 20.0 {
            assert!(failed <= 20, "{per_second}/s: {failed} failures");
        } else {
            // Faster than 20 a second: refused at the first ask after 1 s.
            assert!(took < Duration::from_secs(1) + Duration::from_secs_f64(1.0 / per_second));
            assert!(
                failed > 20,
                "{per_second}/s: the count alone does not trip it"
            );
        }
    }
    for per_second in [31.0, 100.0, 1_000.0, 50_000.0] {
        let (failed, took) = outage(per_second);
        // A burst into a dead endpoint costs 30 requests.
        assert_eq!(failed, 30, "{per_second}/s");
        assert!(took < Duration::from_secs(1), "{per_second}/s");
    }
}

#[test]
fn half_failures_sustained_for_30_s_at_10_per_second_open_it() {
    let tenth = Duration::from_millis(100);
    // Exactly half, alternating, from a healthy start.
    let b = Breaker::new("model", CircuitBreakerConfig::default());
    let t0 = Instant::now();
    let mut now = t0;
    let mut opened_at = None;
    for i in 0..400u32 {
        now += tenth;
        let Ok(permit) = b.try_acquire(now) else {
            opened_at = Some(now - t0);
            break;
        };
        let v = if i % 2 == 1 {
            Verdict::Failure
        } else {
            Verdict::Success
        };
        permit.record(v, now);
    }
    let opened_at = opened_at.expect("opened");
    assert!(
        opened_at <= Duration::from_secs(30) + tenth,
        "{opened_at:?}"
    );

    // Random failures at 60%, 100 seeds: open by the first failure after
    // 30 s every time (a success never opens it).
    for seed in 0..100 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (b, opened) = counted(CircuitBreakerConfig::default());
        let t0 = Instant::now();
        let mut now = t0;
        let mut failed_after_30_s = false;
        while !failed_after_30_s && opened.load(Ordering::Relaxed) == 0 {
            now += tenth;
            if let Ok(permit) = b.try_acquire(now) {
                let v = if rng.f64() < 0.6 {
                    Verdict::Failure
                } else {
                    Verdict::Success
                };
                permit.record(v, now);
                failed_after_30_s = v == Verdict::Failure && now - t0 >= Duration::from_secs(30);
            }
        }
        assert_eq!(opened.load(Ordering::Relaxed), 1, "seed {seed}");
        assert!(
            now - t0 < Duration::from_secs(32),
            "seed {seed}: {:?}",
            now - t0
        );
    }
}

#[test]
fn calls_succeed_again_within_open_duration_plus_one_probe() {
    let b = Breaker::new("model", CircuitBreakerConfig::default());
    let gap = Duration::from_millis(10);
    let mut now = Instant::now();
    let opened_at = loop {
        now += gap;
        match b.try_acquire(now) {
            Ok(permit) => permit.record(Verdict::Failure, now),
            Err(_) => break now,
        }
    };
    // The dependency heals at once; calls keep coming every 10 ms.
    let first_success = loop {
        now += gap;
        if let Ok(permit) = b.try_acquire(now) {
            permit.record(Verdict::Success, now);
            break now;
        }
    };
    assert!(first_success - opened_at <= Duration::from_secs(10) + gap);
    now += gap;
    assert!(b.try_acquire(now).is_ok_and(|p| !p.is_probe()));
    assert_eq!(b.state(now), CircuitState::Closed);
}
