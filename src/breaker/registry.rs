//! The breakers of one client: one per endpoint (scheme, host, port), bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;
use url::Url;

use super::{Breaker, CircuitBreakerConfig, CircuitState};
use crate::origin::Origin;

/// Breakers remembered for endpoints other than the base URL's. Calls to
/// absolute URLs can name any host; this bounds what they can make us keep.
const MAX_ENDPOINTS: usize = 1024;

/// The breakers of one client, one per endpoint (scheme, host, port).
#[derive(Debug)]
pub(crate) struct Breakers {
    cfg: CircuitBreakerConfig,
    base: Option<(Origin, Arc<Breaker>)>,
    others: Mutex<HashMap<Origin, Arc<Breaker>>>,
}

impl Breakers {
    pub(crate) fn new(cfg: CircuitBreakerConfig, base: Option<&Url>) -> Self {
        let base = base.map(|url| {
            let key = Origin::of(url);
            let breaker = Arc::new(Breaker::new(key.to_string(), cfg.clone()));
            (key, breaker)
        });
        Self {
            cfg,
            base,
            others: Mutex::new(HashMap::new()),
        }
    }

    /// The breaker of the base URL's endpoint.
    pub(crate) fn base(&self) -> Option<&Breaker> {
        self.base.as_ref().map(|(_, b)| &**b)
    }

    /// The breaker of `url`'s endpoint, created on first use.
    pub(crate) fn for_url(&self, url: &Url) -> Arc<Breaker> {
        if let Some((key, breaker)) = &self.base
            && key.matches(url)
        {
            return Arc::clone(breaker);
        }
        let key = Origin::of(url);
        let mut others = self.others.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(breaker) = others.get(&key) {
            return Arc::clone(breaker);
        }
        if others.len() >= MAX_ENDPOINTS {
            // Forget breakers that are closed and not in use by any call.
            let now = Instant::now();
            others.retain(|_, b| Arc::strong_count(b) > 1 || b.state(now) != CircuitState::Closed);
        }
        let breaker = Arc::new(Breaker::new(key.to_string(), self.cfg.clone()));
        if others.len() < MAX_ENDPOINTS {
            others.insert(key, Arc::clone(&breaker));
        }
        // Past the cap, the call gets a fresh breaker that is not remembered.
        breaker
    }

    /// Endpoints with a remembered breaker, besides the base URL's.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.others.lock().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Verdict;

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
        for i in 0..3 * MAX_ENDPOINTS {
            let url = Url::parse(&format!("http://h{i}.example/")).unwrap();
            drop(breakers.for_url(&url));
            assert!(breakers.tracked() <= MAX_ENDPOINTS);
        }
        assert_eq!(
            breakers.for_url(&tripped).state(t0),
            CircuitState::Open,
            "an open breaker is never forgotten"
        );
    }
}
