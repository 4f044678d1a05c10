//! The hedged race of one attempt: the attempt, and up to `max_hedges`
//! copies sent each after the hedging delay; the first usable answer wins and
//! the others are cancelled (their futures dropped: connections closed,
//! breaker permits released unrecorded, in-flight counts given back).
//!
//! Only the hedged path races here: a call without hedging runs its attempt
//! through the same [`ApiClient::flight`], with no allocation and no extra
//! timer.

use std::borrow::Borrow;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt as _;
use reqwest::StatusCode;
use tokio::time::{Instant, Sleep};
use url::Url;

use super::body::Replay;
use super::route::{Choice, Route};
use super::{CallContext, Got, Routed, attempt_failed, verdict};
use crate::auth::TokenCache;
use crate::balance::{InFlight, Instance};
use crate::breaker::{Permit, Verdict};
use crate::client::ApiClient;
use crate::error::{Error, ErrorKind};
use crate::hedge::LatencySketch;
use crate::hook::SignRequest;
use crate::redirect;
use crate::retry::RetryPolicy;
use crate::timeout::{Deadline, TimeoutPhase};

/// One attempt of a race.
struct Flight<'b, F> {
    fut: Pin<Box<F>>,
    permit: Option<Permit<'b>>,
    target: Option<&'b Arc<Instance>>,
    /// Counts the attempt in its endpoint's load until dropped.
    _load: Option<InFlight<'b>>,
    url: Url,
    started: Instant,
    /// The attempt's number in the call.
    number: u32,
    /// 0 for the attempt raced, `k` for its `k`-th hedge.
    hedge: u32,
}

/// An attempt ready to be sent: the one a race starts from (prepared by the
/// loop), or a hedge.
pub(super) struct First<'b> {
    pub(super) request: reqwest::Request,
    pub(super) permit: Option<Permit<'b>>,
    pub(super) target: Option<&'b Arc<Instance>>,
    pub(super) load: Option<InFlight<'b>>,
    pub(super) url: Url,
    pub(super) started: Instant,
    pub(super) guard: bool,
    pub(super) limit: Duration,
    pub(super) phase: TimeoutPhase,
    /// The attempt's own span (feature `opentelemetry`), its context
    /// already in `request`.
    pub(super) span: crate::otel::AttemptSpan,
}

/// What a race needs of the call besides its first attempt.
pub(super) struct Race<'a, 'b> {
    pub(super) route: &'a Route<'b>,
    pub(super) ctx: &'a CallContext<'a>,
    pub(super) routed: Option<&'a Routed>,
    pub(super) query: Option<&'a str>,
    pub(super) replay: &'a Replay,
    pub(super) auth: Option<&'a TokenCache>,
    pub(super) deadline: &'a Deadline,
    pub(super) allow: &'a [StatusCode],
    pub(super) policy: &'a RetryPolicy,
    /// The call's redirect guard before the hooks ran.
    pub(super) guard_redirects: bool,
    pub(super) delay: Duration,
    pub(super) max_hedges: u32,
    /// Where the raced attempt's latency goes (percentile delays only).
    pub(super) sketch: Option<&'a LatencySketch>,
    /// Attempts of the call so far, the raced one included.
    pub(super) attempts: u32,
}

/// How a race ended: the outcome of the attempt that decided it.
pub(super) struct Raced<'b> {
    pub(super) outcome: Result<Got, Error>,
    pub(super) url: Url,
    pub(super) target: Option<&'b Arc<Instance>>,
    /// Which attempt decided: 0 the raced one, `k` its `k`-th hedge.
    pub(super) hedge: u32,
    /// Hedges sent.
    pub(super) sent: u32,
    /// Attempts of the call, hedges included.
    pub(super) attempts: u32,
}

enum Event<T> {
    Done(usize, T),
    Hedge,
}

impl ApiClient {
    /// One attempt, bounded by `limit` and, where it binds, by `read_timeout`,
    /// in its span: the first attempt of any call, and each hedge. Sent
    /// through `target`'s own transport when it has one.
    ///
    /// Builds the attempt's future at once (a plain function, not an `async
    /// fn`), so the request is not kept beside it in the call's state.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flight<'a>(
        &'a self,
        request: reqwest::Request,
        target: Option<&'a Instance>,
        sent_to: impl Borrow<Url> + Send + 'a,
        stream: bool,
        guard: bool,
        limit: Duration,
        phase: TimeoutPhase,
        allow: &'a [StatusCode],
        span: crate::otel::AttemptSpan,
    ) -> impl Future<Output = Result<Got, Error>> + Send + 'a {
        let read_timeout = self.inner.read_timeout;
        let idle = (read_timeout < limit).then_some(read_timeout);
        let http = target.and_then(Instance::http).unwrap_or(&self.inner.http);
        let guard = redirect::Guard::of(guard, request.body().is_some());
        let attempt = self.attempt(request, http, sent_to, stream, allow, idle);
        span.in_span(tokio::time::timeout(
            limit,
            redirect::guarded(guard, attempt),
        ))
        .map(move |timed| {
            let outcome = timed.unwrap_or_else(|_| Err(Error::timeout(phase)));
            span.ended(outcome.as_ref().map(Got::status));
            outcome
        })
    }

    /// Runs `first` against its hedges; see the module docs.
    #[allow(clippy::too_many_lines)]
    pub(super) async fn race<'b>(&self, first: First<'b>, race: Race<'_, 'b>) -> Raced<'b> {
        let mut attempts = race.attempts;
        let start = |f: First<'b>, number: u32, hedge: u32| Flight {
            fut: Box::pin(self.flight(
                f.request,
                f.target.map(|t| &**t),
                f.url.clone(),
                false,
                f.guard,
                f.limit,
                f.phase,
                race.allow,
                f.span,
            )),
            permit: f.permit,
            target: f.target,
            _load: f.load,
            url: f.url,
            started: f.started,
            number,
            hedge,
        };
        let mut flights = Vec::with_capacity(1 + race.max_hedges as usize);
        let due = first.started + race.delay;
        flights.push(start(first, attempts, 0));
        let mut timer: Option<Pin<Box<Sleep>>> = Some(Box::pin(tokio::time::sleep_until(due)));
        let mut sent = 0u32;
        // A write's final error while other attempts run: theirs may still
        // be the answer (the first attempt did the write, its hedge found it
        // done: a 404, a 409). Kept, and returned if none answers.
        let mut held: Option<Raced<'b>> = None;
        let span = race.ctx.span;
        // Bounded: each turn ends a flight or sends a hedge (at most
        // `max_hedges`), and each flight ends by its timeout.
        loop {
            let event = std::future::poll_fn(|cx| {
                for (i, f) in flights.iter_mut().enumerate() {
                    if let Poll::Ready(out) = f.fut.as_mut().poll(cx) {
                        return Poll::Ready(Event::Done(i, out));
                    }
                }
                if let Some(t) = timer.as_mut()
                    && t.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Event::Hedge);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Hedge => {
                    let avoid = flights.last().and_then(|f| f.target);
                    let hedge = sent + 1;
                    match self.hedge(&race, avoid, attempts, hedge).await {
                        Some(next) => {
                            attempts += 1;
                            flights.push(start(next, attempts, hedge));
                            sent = hedge;
                            if !span.is_disabled() {
                                span.record("hedge.sent", sent);
                            }
                            if sent < race.max_hedges && attempts < race.policy.max_attempts {
                                if let Some(t) = timer.as_mut() {
                                    t.as_mut().reset(Instant::now() + race.delay);
                                }
                            } else {
                                timer = None;
                            }
                        }
                        None => timer = None,
                    }
                }
                Event::Done(i, outcome) => {
                    let flight = flights.swap_remove(i);
                    let now = Instant::now();
                    match outcome {
                        Ok(got) => {
                            if let Some(p) = flight.permit {
                                p.record(Verdict::Success, now);
                            }
                            if let Some(sketch) = race.sketch {
                                // The raced attempt's latency; when a hedge
                                // beat it, the time it had taken so far (it
                                // would have taken longer).
                                let raced = if flight.hedge == 0 {
                                    Some(flight.started)
                                } else {
                                    flights.iter().find(|f| f.hedge == 0).map(|f| f.started)
                                };
                                if let Some(started) = raced {
                                    sketch.record(now.saturating_duration_since(started), now);
                                }
                            }
                            if flight.hedge > 0 {
                                tracing::debug!(
                                    target: "resilient_http::hedge",
                                    hedge = flight.hedge,
                                    cancelled = flights.len(),
                                    "a hedge won"
                                );
                            }
                            // The others are cancelled here, unrecorded.
                            drop(flights);
                            return Raced {
                                outcome: Ok(got),
                                url: flight.url,
                                target: flight.target,
                                hedge: flight.hedge,
                                sent,
                                attempts,
                            };
                        }
                        Err(err) => {
                            if let Some(p) = flight.permit {
                                p.record(verdict(&err, flight.started), now);
                            }
                            attempt_failed(flight.number, &err);
                            if let Some(pause) = race.route.pause_of(flight.target) {
                                self.pushback(pause, &err, &flight.url, now);
                            }
                            let retryable = match err.kind() {
                                ErrorKind::Retryable => true,
                                ErrorKind::Server => race.policy.retry_server_errors,
                                _ => false,
                            };
                            // A transient failure does not end the call while
                            // another attempt may still answer it.
                            if retryable && !flights.is_empty() {
                                continue;
                            }
                            let raced = Raced {
                                outcome: Err(err),
                                url: flight.url,
                                target: flight.target,
                                hedge: flight.hedge,
                                sent,
                                attempts,
                            };
                            // Nor does a write's final failure: no more hedges,
                            // and the first such failure is the answer only if
                            // no attempt still running succeeds.
                            if !race.ctx.method.is_safe() && !flights.is_empty() {
                                timer = None;
                                held.get_or_insert(raced);
                                continue;
                            }
                            drop(flights);
                            return match held {
                                Some(first) => Raced {
                                    sent,
                                    attempts,
                                    ..first
                                },
                                None => raced,
                            };
                        }
                    }
                }
            }
        }
    }

    /// Sends hedge number `hedge`, if everything allows it now: attempts
    /// left, an endpoint that takes it at once (other than `avoid` when
    /// possible), the retry budget, a token, the signer, time left after
    /// it, a free rate permit
    /// (last: it cannot be given back). `None` when any refuses: no hedge is
    /// sent and nothing is spent. (Only a cached token is used; the signer
    /// is awaited with the other attempts unpolled, so for at most the hedge
    /// delay.)
    async fn hedge<'b>(
        &self,
        race: &Race<'_, 'b>,
        avoid: Option<&'b Arc<Instance>>,
        attempts: u32,
        hedge: u32,
    ) -> Option<First<'b>> {
        let inner = &*self.inner;
        if attempts >= race.policy.max_attempts || race.deadline.remaining().is_zero() {
            return None;
        }
        let now = Instant::now();
        let route = race.route.avoiding(avoid);
        let Choice { target, permit } = route.choose(now).ok()?;
        let withdrawal = match &inner.budget {
            None => None,
            Some(budget) => {
                let Some(w) = budget.try_withdraw(now) else {
                    tracing::debug!(
                        target: "resilient_http::hedge",
                        "no hedge: retry budget exhausted"
                    );
                    return None;
                };
                Some(w)
            }
        };
        // The token as it stands: a hedge never waits for, or starts, a
        // fetch (the other attempts are not polled meanwhile).
        let credential = match race.auth {
            Some(auth) => Some(auth.current()?),
            None => None,
        };
        // Nor does it wait for a signer longer than the hedge delay.
        let bound = race.delay.min(race.deadline.remaining());
        let url = match (target, race.routed) {
            (Some(instance), Some(path)) => instance
                .url_for(&path.path, race.query, path.allow_escape)
                .ok()?,
            _ => race.ctx.url.clone(),
        };
        let mut request = race.replay.rebuild(&race.ctx.method, &url);
        let number = attempts + 1;
        let mut guard = self.decorate(
            &mut request,
            credential.as_ref(),
            number,
            race.guard_redirects,
        );
        let span = crate::otel::AttemptSpan::start(&mut request, number);
        if let Some(signer) = &inner.signer {
            let mut signed = SignRequest::new(&mut request, number);
            let signing = signer.sign(&mut signed);
            match tokio::time::timeout(bound, signing).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
            guard = guard || redirect::would_leak(request.headers());
        }
        // The signer may have taken what was left of the call's time.
        let started = Instant::now();
        let (limit, phase) = race
            .deadline
            .attempt_limit_at(started, inner.attempt_timeout);
        if limit.is_zero() {
            return None;
        }
        if !inner.limits.try_rate() {
            tracing::debug!(target: "resilient_http::hedge", "no hedge: no rate permit free");
            return None;
        }
        if let Some(w) = withdrawal {
            w.spend();
        }
        inner.stats.hedge(&race.ctx.method);
        tracing::debug!(
            target: "resilient_http::hedge",
            attempt = number,
            hedge,
            delay_ms = u64::try_from(race.delay.as_millis()).unwrap_or(u64::MAX),
            "hedge sent"
        );
        Some(First {
            request,
            permit,
            target,
            load: target.map(|i| i.start()),
            url,
            started,
            guard,
            limit,
            phase,
            span,
        })
    }
}
