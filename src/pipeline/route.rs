//! Where an attempt goes: the request's own URL under its breaker and
//! pushback pause, or an endpoint chosen by the balancer; and the admission
//! for it (pause first, then breaker).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::balance::{EndpointSet, Instance};
use crate::breaker::{Breaker, Permit};
use crate::discovery::Balancer;
use crate::error::Error;
use crate::pushback::Pause;

/// What admission of one attempt yields.
pub(super) struct Admitted<'b> {
    /// The breaker's permit (none without a breaker).
    pub(super) permit: Option<Permit<'b>>,
    /// The time of admission.
    pub(super) now: Instant,
    /// How long the rate limit made the attempt wait.
    pub(super) waited: Duration,
    /// For a routed call, the endpoint chosen.
    pub(super) target: Option<&'b Arc<Instance>>,
}

/// The endpoint (routed calls) and the breaker permit for an attempt.
pub(super) struct Choice<'b> {
    pub(super) target: Option<&'b Arc<Instance>>,
    pub(super) permit: Option<Permit<'b>>,
}

/// Where an attempt goes.
pub(super) enum Route<'b> {
    /// To the request's own URL, under this breaker and pushback pause;
    /// through `via`'s transport when the URL is on one of the endpoints'
    /// origins (whose breaker and pause these are).
    Fixed {
        breaker: Option<&'b Breaker>,
        pause: Option<&'b Pause>,
        via: Option<&'b Arc<Instance>>,
    },
    /// To an endpoint of `set`, chosen by the balancer, avoiding the one the
    /// previous attempt went to when another is available.
    Balanced {
        set: &'b EndpointSet,
        balancer: &'b Balancer,
        avoid: Option<&'b Arc<Instance>>,
    },
}

impl<'b> Route<'b> {
    pub(super) fn new(
        set: Option<&'b EndpointSet>,
        balancer: Option<&'b Balancer>,
        avoid: Option<&'b Arc<Instance>>,
        breaker: Option<&'b Breaker>,
        pause: Option<&'b Pause>,
        via: Option<&'b Arc<Instance>>,
    ) -> Self {
        match (set, balancer) {
            (Some(set), Some(balancer)) => Self::Balanced {
                set,
                balancer,
                avoid,
            },
            _ => Self::Fixed {
                breaker,
                pause,
                via,
            },
        }
    }

    /// The same route, avoiding `avoid` (a hedge's: not where the attempt it
    /// races went, when another endpoint can take it).
    pub(super) fn avoiding(&self, avoid: Option<&'b Arc<Instance>>) -> Self {
        match *self {
            Self::Fixed {
                breaker,
                pause,
                via,
            } => Self::Fixed {
                breaker,
                pause,
                via,
            },
            Self::Balanced { set, balancer, .. } => Self::Balanced {
                set,
                balancer,
                avoid,
            },
        }
    }

    /// `None` when an attempt could be admitted now, else the time until a
    /// breaker lets one through.
    pub(super) fn open_for(&self, now: Instant) -> Option<Duration> {
        match self {
            Self::Fixed { breaker, .. } => breaker.and_then(|b| b.open_for(now)),
            Self::Balanced { set, .. } => set.all_open_for(now),
        }
    }

    /// Whether a retry of the attempt that went to `target` can go to another
    /// endpoint that takes attempts now (routed calls only).
    pub(super) fn elsewhere(&self, target: Option<&Arc<Instance>>, now: Instant) -> bool {
        match (self, target) {
            (Self::Balanced { set, .. }, Some(target)) => set.usable_besides(target, now),
            _ => false,
        }
    }

    /// The pushback pause an attempt's response applies to: the chosen
    /// endpoint's, or the fixed URL's.
    pub(super) fn pause_of(&self, target: Option<&'b Arc<Instance>>) -> Option<&'b Pause> {
        match (target, self) {
            (Some(instance), _) => Some(instance.pause()),
            (None, Self::Fixed { pause, .. }) => *pause,
            (None, Self::Balanced { .. }) => None,
        }
    }

    /// The endpoint (routed calls) and the breaker permit for an attempt now.
    /// An endpoint paused by server pushback refuses first (its breaker is
    /// not asked, so no half-open probe slot is taken).
    pub(super) fn choose(&self, now: Instant) -> Result<Choice<'b>, Error> {
        match *self {
            Self::Fixed {
                breaker,
                pause,
                via,
            } => {
                if let Some(left) = pause.and_then(|p| p.remaining(now)) {
                    return Err(Error::pushback(left));
                }
                ask_breaker(breaker, now).map(|permit| Choice {
                    target: via,
                    permit,
                })
            }
            Self::Balanced {
                set,
                balancer,
                avoid,
            } => set
                .pick(balancer.strategy(), balancer.rr(), now, avoid)
                .map(|(target, permit)| Choice {
                    target: Some(target),
                    permit,
                }),
        }
    }
}

/// The breaker's admission for one attempt (none without a breaker).
fn ask_breaker(breaker: Option<&Breaker>, now: Instant) -> Result<Option<Permit<'_>>, Error> {
    match breaker.map(|b| b.try_acquire(now)) {
        None => Ok(None),
        Some(Ok(permit)) => Ok(Some(permit)),
        Some(Err(wait)) => Err(Error::circuit_open(wait)),
    }
}
