//! The breakers of one client: one per endpoint (scheme, host, port), bounded.

use std::sync::Arc;

use tokio::time::Instant;
use url::Url;

use super::{Breaker, CircuitBreakerConfig};
use crate::origin::{Forgettable, PerOrigin};

/// The breakers of one client, one per endpoint (scheme, host, port).
#[derive(Debug)]
pub(crate) struct Breakers {
    cfg: CircuitBreakerConfig,
    map: PerOrigin<Breaker>,
}

impl Forgettable for Breaker {
    fn idle(&self, _now: Instant) -> bool {
        // Read as it stands, without the changes time alone makes: asking
        // `state` here could report a transition (and run the user's
        // callback) under the registry's lock.
        self.is_closed()
    }
}

impl Breakers {
    pub(crate) fn new(cfg: CircuitBreakerConfig, base: Option<&Url>) -> Self {
        let map = PerOrigin::new(base, |key| Breaker::new(key.to_string(), cfg.clone()));
        Self { cfg, map }
    }

    /// The breaker of the base URL's endpoint.
    pub(crate) fn base(&self) -> Option<&Breaker> {
        self.map.base()
    }

    /// The breaker of `url`'s endpoint, created on first use; an open one is
    /// never forgotten.
    pub(crate) fn for_url(&self, url: &Url) -> Arc<Breaker> {
        self.map
            .get(url, |key| Breaker::new(key.to_string(), self.cfg.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{CircuitState, Verdict};
    use crate::origin::MAX_ORIGINS;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fail(b: &Breaker, now: Instant) {
        b.try_acquire(now).unwrap().record(Verdict::Failure, now);
    }

    #[test]
    fn endpoint_breakers_are_bounded() {
        let breakers = Breakers::new(
            CircuitBreakerConfig::default().consecutive_failures(5),
            None,
        );
        let tripped = Url::parse("http://tripped.example:1/").unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            fail(&breakers.for_url(&tripped), t0);
        }
        for i in 0..3 * MAX_ORIGINS {
            let url = Url::parse(&format!("http://h{i}.example/")).unwrap();
            drop(breakers.for_url(&url));
            assert!(breakers.map.tracked() <= MAX_ORIGINS);
        }
        assert_eq!(
            breakers.for_url(&tripped).state(t0),
            CircuitState::Open,
            "an open breaker is never forgotten"
        );
    }

    #[test]
    fn past_the_bound_of_open_breakers_a_new_origins_breaker_is_kept() {
        let breakers = Breakers::new(
            CircuitBreakerConfig::default().consecutive_failures(1),
            None,
        );
        let t0 = Instant::now();
        for i in 0..MAX_ORIGINS {
            let url = Url::parse(&format!("http://h{i}.example/")).unwrap();
            fail(&breakers.for_url(&url), t0);
        }
        // Every remembered breaker is open: a new origin's still trips.
        let new = Url::parse("http://new.example/").unwrap();
        fail(&breakers.for_url(&new), t0);
        assert_eq!(breakers.for_url(&new).state(t0), CircuitState::Open);
        assert!(breakers.map.tracked() <= MAX_ORIGINS);
    }

    #[tokio::test(start_paused = true)]
    async fn forgetting_idle_breakers_reports_no_state_change() {
        // Reporting one would run the user's callback under the registry's
        // lock (a callback asking the client for a circuit state deadlocks).
        let changes = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&changes);
        let breakers = Breakers::new(
            CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .open_duration(std::time::Duration::from_secs(1))
                .on_state_change(move |_| {
                    seen.fetch_add(1, Ordering::SeqCst);
                }),
            None,
        );
        let tripped = Url::parse("http://tripped.example:1/").unwrap();
        fail(&breakers.for_url(&tripped), Instant::now());
        assert_eq!(changes.load(Ordering::SeqCst), 1, "closed -> open");
        // Its open time is over: the next look at its state half-opens it.
        tokio::time::advance(std::time::Duration::from_secs(2)).await;

        for i in 0..2 * MAX_ORIGINS {
            let url = Url::parse(&format!("http://h{i}.example/")).unwrap();
            drop(breakers.for_url(&url));
        }

        assert_eq!(
            changes.load(Ordering::SeqCst),
            1,
            "no report while forgetting"
        );
        assert_eq!(
            breakers.for_url(&tripped).state(Instant::now()),
            CircuitState::HalfOpen,
            "kept, and half-open when asked"
        );
        assert_eq!(changes.load(Ordering::SeqCst), 2);
    }
}
