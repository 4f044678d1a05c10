//! The breakers of one client: one per endpoint (scheme, host, port), bounded.

use std::sync::Arc;

use tokio::time::Instant;
use url::Url;

use super::{Breaker, CircuitBreakerConfig, CircuitState};
use crate::origin::{Forgettable, PerOrigin};

/// The breakers of one client, one per endpoint (scheme, host, port).
#[derive(Debug)]
pub(crate) struct Breakers {
    cfg: CircuitBreakerConfig,
    map: PerOrigin<Breaker>,
}

impl Forgettable for Breaker {
    fn idle(&self, now: Instant) -> bool {
        self.state(now) == CircuitState::Closed
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
    use crate::breaker::Verdict;
    use crate::origin::MAX_ORIGINS;

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
}
