//! The call pipeline: one async loop that sequences the layers, in the order
//! the crate docs give (`src/lib.rs`, "The call pipeline"); that list is the
//! one copy of the order.
//!
//! The breaker is asked before the rate limit so that an open circuit costs
//! callers nothing, not even a rate-limit wait.

use std::borrow::Borrow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::ExponentialBackoff;
use bytes::Bytes;
use futures_util::future::Either;
use reqwest::header::RETRY_AFTER;
use reqwest::{Method, StatusCode};
use tokio::time::Instant;
use tracing::Instrument as _;
use tracing::field::Empty;
use url::Url;

mod body;
#[cfg(feature = "cache")]
mod cached;
mod degrade;
mod hedge;
mod join;
mod route;

#[cfg(feature = "cache")]
pub(crate) use self::cached::CacheUse;

use self::body::{Replay, read_body, read_prefix, within_read_timeout};
#[cfg(feature = "cache")]
use self::cached::Before;
use self::degrade::Degrade;
use self::hedge::{First, Race, Raced};
use self::route::{Admitted, Choice, Route};
use crate::adaptive::Signal;
use crate::auth::Credential;
use crate::balance::Instance;
use crate::breaker::Verdict;
#[cfg(feature = "cache")]
use crate::cache::Outcome;
use crate::client::ApiClient;
use crate::error::{CutBy, Error, ErrorKind, ErrorReason};
use crate::fallback::FallbackChoice;
use crate::hedge::{Hedging, LatencySketch};
use crate::hook::{HookRequest, SignRequest};
use crate::limit::Slot;
use crate::origin::{Origin, same_origin};
use crate::pushback::Pause;
use crate::redact;
use crate::redirect;
use crate::response::{ApiResponse, ApiStream};
use crate::retry::{Decision, RetryPolicy, Withdrawal, parse_retry_after};
use crate::stats::{Active, Stats};
use crate::timeout::{Deadline, TimeoutPhase};
use crate::upload::{NoReplay, Payload};

/// A prepared call: the request (its body built: `Bytes`, or a stream with
/// its replay buffer) and its options.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) request: reqwest::Request,
    /// The body, also in `request`; kept to replay it (bytes without a
    /// copy, a stream from its replay buffer).
    pub(crate) body: Option<Payload>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) plan: Plan,
}

impl Call {
    /// A copy to send again (an event stream's reconnect); `None` when the
    /// request's body cannot be copied.
    pub(crate) fn try_clone(&self) -> Option<Self> {
        Some(Self {
            request: self.request.try_clone()?,
            body: self.body.clone(),
            timeout: self.timeout,
            plan: self.plan.clone(),
        })
    }
}

/// The relative path of a call on a client with endpoints.
#[derive(Debug, Clone)]
pub(crate) struct Routed {
    /// Joined onto the endpoint each attempt goes to.
    pub(crate) path: Box<str>,
    /// The path may leave the endpoint's base path (`allow_path_escape`).
    pub(crate) allow_escape: bool,
}

/// How the outcome of a successful pipeline becomes what the caller asked for:
/// a buffered [`ApiResponse`] or a streamed [`ApiStream`].
pub(crate) trait Finish: 'static {
    type Output: Send + 'static;
    /// Whether the attempt hands over the body unread.
    const STREAM: bool;
    /// `slot` is the call's concurrency permit, for outputs that outlive the call.
    fn finish(
        got: Got,
        attempts: u32,
        elapsed: Duration,
        ctx: CallContext<'_>,
        slot: Option<Slot>,
    ) -> Result<Self::Output, Error>;
}

/// `send()`: the body is buffered inside the attempt.
pub(crate) struct Buffer;

impl Finish for Buffer {
    type Output = ApiResponse;
    const STREAM: bool = false;
    fn finish(
        got: Got,
        attempts: u32,
        elapsed: Duration,
        ctx: CallContext<'_>,
        _slot: Option<Slot>,
    ) -> Result<ApiResponse, Error> {
        match got {
            Got::Buffered {
                status,
                version,
                headers,
                body,
                url,
            } => Ok(ApiResponse {
                status,
                version,
                headers,
                body,
                attempts,
                elapsed,
                method: ctx.method,
                url: url.unwrap_or(ctx.url),
                hedged: ctx.hedged,
                synthetic: false,
                #[cfg(feature = "cache")]
                stale: ctx.stale,
            }),
            // Not asked for; cannot happen, but is not worth a panic.
            Got::Streaming(_) => Err(Error::decode("unexpected stream", None)),
        }
    }
}

/// `send_stream()`: the body is handed over unread.
pub(crate) struct Streamed;

impl Finish for Streamed {
    type Output = ApiStream;
    const STREAM: bool = true;
    fn finish(
        got: Got,
        attempts: u32,
        _elapsed: Duration,
        ctx: CallContext<'_>,
        slot: Option<Slot>,
    ) -> Result<ApiStream, Error> {
        // An adaptive slot goes back at the headers (see
        // `AdaptiveConcurrency`); a fixed one is held by the stream.
        let slot = slot.filter(|s| matches!(s, Slot::Fixed(_)));
        match got {
            Got::Streaming(resp) => Ok(ApiStream::new(
                resp,
                ctx.method,
                attempts,
                ctx.deadline,
                ctx.read_timeout,
                slot,
            )),
            Got::Buffered { .. } => Err(Error::decode("stream was buffered", None)),
        }
    }
}

/// What the pipeline knows of the call, for its error context and span.
// Independent facts about one call, not a state in disguise.
#[allow(clippy::struct_excessive_bools)]
pub(crate) struct CallContext<'a> {
    method: Method,
    url: Url,
    deadline: Deadline,
    span: &'a tracing::Span,
    /// The call, as the client's counters see it.
    active: Active<'a>,
    /// `url` is the placeholder of a routed call that has not chosen an
    /// endpoint yet: not to be reported.
    placeholder: bool,
    /// The client's `read_timeout`: a stream's idle limit.
    read_timeout: Duration,
    /// The answer came from a hedge.
    hedged: bool,
    /// The answer is a stale cache entry.
    #[cfg(feature = "cache")]
    stale: bool,
}

/// How a call is carried out, besides its context and request.
// Four independent facts about one call, not a state in disguise.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The call may be sent more than once.
    pub(crate) idempotent: bool,
    /// The request carries credentials a cross-origin redirect would leak.
    pub(crate) guard_redirects: bool,
    /// For a client with endpoints: the relative path, joined onto the
    /// endpoint each attempt goes to (the request's URL is a placeholder).
    pub(crate) routed: Option<Routed>,
    /// Send the client's token (see [`crate::auth`]) with each attempt.
    pub(crate) use_token: bool,
    /// The URL is on the base URL's origin (joined onto it under the path
    /// rules): the base's breaker and pause serve without a lookup.
    pub(crate) on_base: bool,
    /// This call's retry policy, replacing the client's (boxed: most calls
    /// have none, and pay one pointer for it).
    pub(crate) retry: Option<Box<RetryPolicy>>,
    /// Statuses besides 2xx that are answers for this call, not errors.
    pub(crate) allow: Box<[StatusCode]>,
    /// This call's hedging: the client's, none, or its own.
    pub(crate) hedging: HedgeChoice,
    /// How the call uses the client's response cache.
    #[cfg(feature = "cache")]
    pub(crate) cache: CacheUse,
}

/// A call's hedging (see [`Hedging`]).
#[derive(Debug, Clone, Default)]
pub(crate) enum HedgeChoice {
    /// The client's ([`crate::ApiClientBuilder::hedging`]).
    #[default]
    Client,
    /// None for this call.
    Off,
    /// This call's own (boxed: most calls have none).
    Call(Box<Hedging>),
}

impl CallContext<'_> {
    /// Enriches the final error with the call's context and reports it.
    fn fail(&self, err: Error, attempts: u32) -> Error {
        let err = err.with_call(
            &self.method,
            (!self.placeholder).then_some(&self.url),
            attempts,
            self.deadline.elapsed(),
        );
        let server = if self.placeholder {
            None
        } else {
            self.url.host_str()
        };
        self.active.end(Err(&err), self.deadline.elapsed(), server);
        let span = self.span;
        if !span.is_disabled() {
            if let Some(status) = err.status() {
                span.record("http.response.status_code", i64::from(status.as_u16()));
            }
            if attempts > 1 {
                span.record("http.request.resend_count", i64::from(attempts - 1));
            }
            span.record("error.type", &*err.type_name());
            // The span's status for OpenTelemetry: a failed call is an error.
            span.record("otel.status_code", "ERROR");
        }
        if matches!(err.kind(), ErrorKind::Server | ErrorKind::Retryable) {
            tracing::warn!(
                target: "resilient_http",
                kind = err.kind().as_str(),
                attempts,
                error = %err,
                "call failed"
            );
        }
        err
    }

    /// Reports a wait for one limit (`"concurrency"` or `"rate"`) and records
    /// the call's total wait so far in the span.
    fn waited(&self, limit: &'static str, wait: Duration, total: Duration) {
        if wait.is_zero() {
            return;
        }
        Stats::waited(limit, wait);
        if self.span.is_disabled() {
            return;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.span.record("limit.wait_ms", ms(total));
        tracing::debug!(target: "resilient_http::limit", limit, wait_ms = ms(wait), "waited for a permit");
    }

    /// Points a routed call at `instance`: its URL for `routed` and `query`,
    /// recorded in the span.
    fn aim(
        &mut self,
        instance: &Instance,
        routed: &Routed,
        query: Option<&str>,
    ) -> Result<(), Error> {
        self.url = instance.url_for(&routed.path, query, routed.allow_escape)?;
        self.placeholder = false;
        let span = self.span;
        if !span.is_disabled() {
            redact::record_target(span, &self.url);
        }
        Ok(())
    }

    /// Records a successful call in the span.
    fn succeeded(&self, status: StatusCode, attempts: u32, now: Instant) {
        self.active.end(
            Ok(status),
            self.deadline.elapsed_at(now),
            self.url.host_str(),
        );
        if !self.span.is_disabled() {
            self.span
                .record("http.response.status_code", i64::from(status.as_u16()));
            if attempts > 1 {
                self.span
                    .record("http.request.resend_count", i64::from(attempts - 1));
            }
        }
        tracing::debug!(target: "resilient_http", attempt = attempts, "attempt succeeded");
    }
}

impl Got {
    fn status(&self) -> StatusCode {
        match self {
            Self::Buffered { status, .. } => *status,
            Self::Streaming(r) => r.status(),
        }
    }
}

/// What one successful attempt yields.
pub(crate) enum Got {
    Buffered {
        status: StatusCode,
        version: reqwest::Version,
        headers: reqwest::header::HeaderMap,
        body: Bytes,
        /// The final URL when a redirect changed it.
        url: Option<Url>,
    },
    Streaming(reqwest::Response),
}

impl ApiClient {
    /// Runs a prepared call through the pipeline inside its
    /// `http.client.request` span. One future, no nesting: the pipeline's
    /// state is moved as rarely as possible.
    pub(crate) fn execute<F: Finish>(
        self,
        call: Result<Call, Error>,
    ) -> impl Future<Output = Result<F::Output, Error>> + Send + 'static {
        let span = call_span(&call);
        self.run::<F>(call, span)
    }

    /// `send()`: before the loop, an identical call in flight is joined
    /// when coalescing is on (`coalesce`: the call allows it); after it, a
    /// failure may be answered by the fallback (see [`Degrade`]). With
    /// neither, this is [`execute`](Self::execute).
    pub(crate) fn send(
        self,
        call: Result<Call, Error>,
        coalesce: bool,
        fallback: FallbackChoice,
    ) -> impl Future<Output = Result<ApiResponse, Error>> + Send + 'static {
        let span = call_span(&call);
        let key = match (&self.inner.coalescer, &call) {
            (Some(coalescer), Ok(call)) if coalesce => coalescer.key(call),
            _ => None,
        };
        let degrade = fallback
            .resolve(self.inner.fallback.as_ref())
            .map(|fallback| Degrade {
                fallback,
                client: self.clone(),
                span: span.clone(),
            });
        let run = match (key, call) {
            (Some(key), Ok(call)) => Either::Right(Box::pin(self.coalesced(key, call, span))),
            (_, call) => Either::Left(self.run::<Buffer>(call, span)),
        };
        // Without a fallback, no step after the loop: no wrapper either.
        match degrade {
            None => Either::Left(run),
            Some(degrade) => Either::Right(async move {
                match run.await {
                    Err(err) => degrade.recover(err),
                    answered => answered,
                }
            }),
        }
    }

    /// Runs a prepared call through the pipeline inside `span`, its
    /// `http.client.request` span.
    pub(super) fn run<F: Finish>(
        self,
        call: Result<Call, Error>,
        span: tracing::Span,
    ) -> impl Future<Output = Result<F::Output, Error>> + Send + 'static {
        let call = match call {
            Ok(call) => call,
            Err(err) => return Either::Right(std::future::ready(Err(err))),
        };
        let inner_span = span.clone();
        // With a response cache, the call looks it up when first polled, as
        // all of a call's work: a future built and dropped unpolled asks the
        // cache nothing and starts no background refresh.
        #[cfg(feature = "cache")]
        if self.inner.cache.is_some() {
            let deferred: Deferred<F::Output> =
                Box::pin(async move { self.pipeline::<F>(call, inner_span).await });
            return Either::Left(Either::Right(deferred).instrument(span));
        }
        // Boxed: the pipeline's state is kilobytes (every layer's wait lives
        // in it), and a caller moves the returned future a few times before
        // polling it; a pointer moves for free, the state once per call.
        let now: Pin<Box<_>> = Box::pin(self.pipeline::<F>(call, inner_span));
        Either::Left(Either::<_, Deferred<F::Output>>::Left(now).instrument(span))
    }

    /// The call loop. A plain function returning one `async` block, not an
    /// `async fn`: what the block captures it uses in place, where an
    /// `async fn` would keep its arguments beside the values made from them.
    // One loop in one future, on purpose: splitting it into nested async
    // functions moved the whole state more often (see BENCHMARKS.md).
    #[allow(clippy::too_many_lines)]
    fn pipeline<F: Finish>(
        self,
        call: Call,
        span: tracing::Span,
    ) -> impl Future<Output = Result<F::Output, Error>> + Send + 'static {
        // Before the loop: the response cache; its validators go on the
        // request before the replay copies its headers.
        #[cfg(feature = "cache")]
        let mut call = call;
        #[cfg(feature = "cache")]
        let before = match &self.inner.cache {
            Some(store) => self.ask_cache::<F>(store, &mut call, &span),
            None => Before::Bypass,
        };
        let Call {
            request,
            body,
            timeout,
            plan,
        } = call;
        let Plan {
            idempotent,
            guard_redirects: plan_guard,
            routed,
            use_token,
            on_base,
            retry,
            allow,
            hedging,
            ..
        } = plan;
        // An absolute URL on the origin every endpoint shares (the addresses
        // of one DNS name) is balanced over them, as a relative path is:
        // pinned to the first, it would have no failover.
        // (A URL already names its place: it is reported as it is.)
        let placeholder = routed.is_some();
        let routed = routed.or_else(|| {
            let set = self.inner.balancer.as_ref()?.snapshot();
            let path = request.url().path();
            // A path starting with `//` would read as another host.
            (set.shares_origin(request.url()) && !path.starts_with("//")).then(|| Routed {
                path: path.into(),
                allow_escape: false,
            })
        });
        let replay = self.replay_of(&request, body, retry.as_deref(), use_token);
        let (method, url) = (request.method().clone(), request.url().clone());
        // A write through the client drops the cached entries of its URL
        // (the URL the cache knows it by: a routed call's placeholder).
        #[cfg(feature = "cache")]
        let writes = self
            .inner
            .cache
            .is_some()
            .then(|| url.clone())
            .filter(|_| !method.is_safe());
        let mut original = Some(request);
        async move {
            let (span, inner) = (&span, &*self.inner);
            let mut ctx = CallContext {
                deadline: Deadline::after(timeout.unwrap_or(inner.total_timeout)),
                span,
                active: inner.stats.start(&method),
                method,
                url,
                placeholder,
                read_timeout: inner.read_timeout,
                hedged: false,
                #[cfg(feature = "cache")]
                stale: false,
            };
            #[cfg(feature = "cache")]
            let mut cached = match (before, &inner.cache) {
                (Before::Answer(answer), Some(store)) => {
                    let (got, outcome) = *answer;
                    return Self::answered::<F>(store, got, outcome, ctx, 0);
                }
                (Before::Fetch(pending), _) => Some(pending),
                _ => None,
            };
            let policy = retry.as_deref().unwrap_or(&inner.retry);
            // Hedged only when it may be repeated, buffered, and has attempts to
            // spare; a percentile delay records the latencies it reads.
            let hedging = match hedging {
                HedgeChoice::Client => inner.hedging,
                HedgeChoice::Off => None,
                HedgeChoice::Call(h) => Some(*h),
            }
            .filter(|_| idempotent && policy.max_attempts > 1 && !F::STREAM && !replay.streamed());
            let records = hedging.is_some_and(|h| h.quantile().is_some());
            let auth = inner.auth.as_ref().filter(|_| use_token);
            let mut reauthorized = false;
            let deadline = ctx.deadline;
            // For a routed call: the balancer, the path and the query to put on
            // each endpoint's URL.
            let balancer = routed.as_ref().and(inner.balancer.as_ref());
            let query: Option<Box<str>> = routed.as_ref().and(ctx.url.query().map(Into::into));
            let mut tried: Option<Arc<Instance>> = None;
            let mut attempts = 0u32;

            // Every failure leaves this block with its error: after the loop,
            // a stale cache entry may answer instead.
            let failed: Error = 'call: {
                let (mut slot, mut waited) = match inner.limits.concurrency(&deadline).await {
                    Ok((permit, wait)) => {
                        ctx.waited("concurrency", wait, wait);
                        (permit, wait)
                    }
                    Err(err) => break 'call err,
                };
                // A call to an absolute URL on one of the endpoints' origins shares
                // that endpoint's breaker (and transport); any other fixed URL has
                // its own.
                let pinned = match (&inner.balancer, &routed) {
                    (Some(b), None) => b.snapshot().find_origin(&ctx.url).cloned(),
                    _ => None,
                };
                // (The base URL's own, on its origin, is found without a lookup.)
                let fixed = balancer.is_none() && pinned.is_none();
                let registered = match &inner.breakers {
                    Some(b) if fixed && !on_base => Some(b.for_url(&ctx.url)),
                    _ => None,
                };
                let breaker = pinned
                    .as_deref()
                    .and_then(Instance::breaker)
                    .or(registered.as_deref())
                    .or_else(|| {
                        let base = inner.breakers.as_ref().and_then(|b| b.base());
                        base.filter(|_| fixed && on_base)
                    });
                // The same for the server pushback pause, kept with breakers off too.
                let paused_by = (fixed && !on_base).then(|| inner.pauses.for_url(&ctx.url));
                let pause = pinned
                    .as_deref()
                    .map(Instance::pause)
                    .or(paused_by.as_deref())
                    .or_else(|| inner.pauses.base().filter(|_| fixed && on_base));
                let mut schedule = None;
                let mut last: Option<Error> = None;
                // A retry taken from the budget, spent once the retry is admitted;
                // refunded (on drop) if the breaker or the rate limit refuses it.
                let mut pending = None;
                loop {
                    // A routed call takes the current endpoint set for each attempt.
                    let set = match balancer {
                        Some(b) => match b.current(&deadline).await {
                            Ok(set) => Some(set),
                            Err(err) => break 'call last.take().unwrap_or(err),
                        },
                        None => None,
                    };
                    let avoid = tried.take();
                    let route = Route::new(
                        set.as_deref(),
                        balancer,
                        avoid.as_ref(),
                        breaker,
                        pause,
                        pinned.as_ref(),
                    );
                    let Admitted {
                        permit,
                        now,
                        target,
                        ..
                    } = match self.admit(&route, &deadline).await {
                        Ok(admitted) => {
                            waited += admitted.waited;
                            ctx.waited("rate", admitted.waited, waited);
                            admitted
                        }
                        Err(err) => {
                            // A retry the admission refused: the last real error, and why.
                            let err = match (last.take(), cut_by(&err)) {
                                (Some(last), Some(by)) => last.with_cut(policy.max_attempts, by),
                                (Some(last), None) => last,
                                (None, _) => err,
                            };
                            break 'call err;
                        }
                    };
                    // After admission: an open circuit costs no token fetch.
                    let credential = match auth {
                        Some(auth) => match auth.credential(&deadline).await {
                            Ok(credential) => Some(credential),
                            Err(err) => break 'call err,
                        },
                        None => None,
                    };
                    if let (Some(instance), Some(path)) = (target, &routed) {
                        if let Err(err) = ctx.aim(instance, path, query.as_deref()) {
                            break 'call err;
                        }
                        tried = Some(Arc::clone(instance));
                    }
                    let attempt_no = attempts + 1;
                    // In a block of its own: the request is lent to the hooks and
                    // the signer, and a lent local would keep its place in the
                    // call's state while the attempt runs.
                    let (request, guard_redirects, attempt_span, now) = {
                        let mut request = replay.next(&mut original, &ctx, target.is_some());
                        let mut guard_redirects = self.decorate(
                            &mut request,
                            credential.as_ref(),
                            attempt_no,
                            plan_guard,
                        );
                        // The trace context: after the hooks, before the signer.
                        let attempt_span =
                            crate::otel::AttemptSpan::start(&mut request, attempt_no);
                        // A token fetch since admission took time: the attempt's
                        // limit counts from when it is sent.
                        let mut now = if credential.is_some() {
                            Instant::now()
                        } else {
                            now
                        };
                        if let Some(signer) = &inner.signer {
                            // Last before sending: the signer sees every header and the body.
                            let mut signed = SignRequest::new(&mut request, attempt_no);
                            let outcome = tokio::time::timeout(
                                deadline.remaining(),
                                signer.sign(&mut signed),
                            )
                            .await;
                            match outcome {
                                Ok(Ok(())) => {}
                                Ok(Err(why)) => {
                                    let err = Error::signer("the signer failed").with_source(why);
                                    break 'call err;
                                }
                                Err(_) => {
                                    break 'call Error::timeout(TimeoutPhase::Total);
                                }
                            }
                            guard_redirects =
                                guard_redirects || redirect::would_leak(request.headers());
                            now = Instant::now();
                        }
                        (request, guard_redirects, attempt_span, now)
                    };
                    let (limit, phase) = deadline.attempt_limit_at(now, inner.attempt_timeout);
                    if limit.is_zero() {
                        // No time left to send it: the call's timeout, not an
                        // attempt, and nothing the endpoint did (its permit goes
                        // back unused, as does a retry's budget withdrawal).
                        break 'call Error::timeout(phase);
                    }
                    // The retry is sent: its budget withdrawal is spent.
                    if let Some(w) = pending.take() {
                        Withdrawal::spend(w);
                    }
                    let flight = target.map(|i| i.start());
                    attempts = attempt_no;
                    inner.stats.attempt(&ctx.method, attempts);
                    let sketch = if records {
                        Some(self.sketch(target, &ctx.url))
                    } else {
                        None
                    };
                    let delay = hedging
                        .filter(|h| h.hedges() > 0 && attempts < policy.max_attempts)
                        .and_then(|h| h.delay(sketch.as_deref(), now).map(|d| (h, d)))
                        .filter(|(_, d)| *d < limit);
                    let started = now;
                    let (outcome, permit, raced, target) = if let Some((h, delay)) = delay {
                        let first = First {
                            request,
                            permit,
                            target,
                            load: flight,
                            url: ctx.url.clone(),
                            started,
                            guard: guard_redirects,
                            limit,
                            phase,
                            span: attempt_span,
                        };
                        let race = Race {
                            route: &route,
                            ctx: &ctx,
                            routed: routed.as_ref(),
                            query: query.as_deref(),
                            replay: &replay,
                            auth,
                            deadline: &deadline,
                            allow: &allow,
                            policy,
                            guard_redirects: plan_guard,
                            delay,
                            max_hedges: h.hedges(),
                            sketch: sketch.as_deref(),
                            attempts,
                        };
                        let Raced {
                            outcome,
                            url,
                            target: decided_by,
                            hedge,
                            sent,
                            attempts: made,
                        } = Box::pin(self.race(first, race)).await;
                        attempts = made;
                        if let (Some(instance), Some(path)) = (decided_by, &routed)
                            && !target.is_some_and(|t| Arc::ptr_eq(t, instance))
                        {
                            // A hedge to another endpoint decided: the call's URL is its.
                            if let Err(err) = ctx.aim(instance, path, query.as_deref()) {
                                break 'call err;
                            }
                            tried = Some(Arc::clone(instance));
                        } else if ctx.url != url {
                            ctx.url = url;
                        }
                        if sent > 0 && !span.is_disabled() {
                            span.record("hedge.sent", sent);
                            span.record("hedge.won", hedge);
                        }
                        if outcome.is_ok() && hedge > 0 {
                            ctx.hedged = true;
                            inner.stats.hedge_won(&ctx.method);
                        }
                        (outcome, None, true, decided_by)
                    } else {
                        let outcome = self
                            .flight(
                                request,
                                target.map(|t| &**t),
                                &ctx.url,
                                F::STREAM,
                                guard_redirects,
                                limit,
                                phase,
                                &allow,
                                attempt_span,
                            )
                            .await;
                        drop(flight);
                        if let (Ok(_), Some(sketch)) = (&outcome, &sketch) {
                            let end = Instant::now();
                            sketch.record(end.saturating_duration_since(started), end);
                        }
                        (outcome, permit, false, target)
                    };
                    let now = Instant::now();
                    if let Some(adaptive) = inner.limits.adaptive()
                        && let Some(signal) = capacity_signal(
                            &outcome,
                            now.saturating_duration_since(started),
                            adaptive.typical_rtt(),
                        )
                        && !(ctx.hedged && matches!(signal, Signal::Rtt(_)))
                    {
                        // (A hedge's answer is not timed from its own start: no sample.)
                        adaptive.observe(signal, now);
                    }
                    match outcome {
                        Ok(got) => {
                            if let Some(p) = permit {
                                p.record(Verdict::Success, now);
                            }
                            if let Some(budget) = &inner.budget {
                                budget.deposit(now);
                            }
                            #[cfg(feature = "cache")]
                            let got = match (&inner.cache, cached.take()) {
                                (Some(store), Some(pending)) => {
                                    Self::tell_cache(store, &pending, got, &ctx)
                                }
                                (Some(store), None) => {
                                    if let Some(url) = &writes {
                                        store.written(url);
                                    }
                                    got
                                }
                                _ => got,
                            };
                            ctx.succeeded(got.status(), attempts, now);
                            let elapsed = ctx.deadline.elapsed_at(now);
                            return F::finish(got, attempts, elapsed, ctx, slot.take());
                        }
                        Err(err) => {
                            // The transport may still be writing a streamed
                            // body (a server answered before reading it all):
                            // stopped, it pulls no more than this attempt took.
                            replay.cut_off();
                            // A streamed body past its replay buffer cannot be sent again.
                            let replayable = replay.replayable();
                            // The caller's own body source failed: nothing the
                            // endpoint did.
                            let own_body = matches!(replayable, Err(NoReplay::SourceFailed));
                            if let Some(p) = permit {
                                let verdict = if own_body {
                                    Verdict::Neutral
                                } else {
                                    verdict(&err, started)
                                };
                                p.record(verdict, now);
                            }
                            if !raced {
                                attempt_failed(attempts, &err);
                                if let Some(pause) = route.pause_of(target).filter(|_| !own_body) {
                                    self.pushback(pause, &err, &ctx.url, now);
                                }
                            }
                            // (A redirect target on another origin never got the token.)
                            if let (Some(auth), Some((_, generation))) = (auth, &credential)
                                && err.status() == Some(StatusCode::UNAUTHORIZED)
                                && !err.is_from_elsewhere()
                                && !reauthorized
                            {
                                // The token was refused: drop it (other calls must not
                                // send it again), and try once more with a new one, at
                                // once, if the body can be sent again.
                                auth.reject(*generation);
                                if replayable.is_ok() {
                                    reauthorized = true;
                                    Stats::retry(&ctx.method, "401");
                                    last = Some(err);
                                    continue;
                                }
                            }
                            let (delay, withdrawal) = match self.retry_delay(
                                policy,
                                &err,
                                attempts,
                                idempotent,
                                &mut schedule,
                                &deadline,
                                |now| route.open_for(now),
                                route.elsewhere(target, now),
                                now,
                            ) {
                                Ok(next) => next,
                                Err(None) => break 'call err,
                                Err(Some(by)) => {
                                    let err = err.with_cut(policy.max_attempts, by);
                                    break 'call err;
                                }
                            };
                            if let Err(why) = replayable {
                                drop(withdrawal); // given back: no retry is made
                                let by = match why {
                                    NoReplay::Overflowed(bytes) => CutBy::ReplayBuffer(bytes),
                                    NoReplay::SourceFailed => CutBy::BodySource,
                                };
                                tracing::debug!(
                                    target: "resilient_http::retry",
                                    attempt = attempts,
                                    "not retrying: {by}"
                                );
                                break 'call err.with_cut(policy.max_attempts, by);
                            }
                            Stats::retry(&ctx.method, &err.type_name());
                            // Dropped with the call if it is cancelled during the sleep.
                            pending = withdrawal;
                            tokio::time::sleep(delay).await;
                            last = Some(err);
                        }
                    }
                }
            };
            #[cfg(feature = "cache")]
            if let (Some(store), Some(pending)) = (&inner.cache, cached.take())
                && let Some(got) = Self::rescue(store, &pending, &failed, &ctx)
            {
                return Self::answered::<F>(store, got, Outcome::Stale, ctx, attempts);
            }
            Err(ctx.fail(failed, attempts))
        }
    }

    /// The latency sketch of an attempt's endpoint: the chosen endpoint's,
    /// or the fixed URL's origin's.
    fn sketch(&self, target: Option<&Arc<Instance>>, url: &Url) -> Arc<LatencySketch> {
        match target {
            Some(instance) => Arc::clone(instance.latency()),
            None => self.inner.latencies.get(url, |_| LatencySketch::default()),
        }
    }

    /// What a retry needs to rebuild the request: the first attempt sends
    /// the request itself, a retry rebuilds it from the call's method and
    /// URL, these headers and the shared body bytes. A 401 retries once even
    /// without a retry policy.
    fn replay_of(
        &self,
        request: &reqwest::Request,
        body: Option<Payload>,
        retry: Option<&RetryPolicy>,
        use_token: bool,
    ) -> Replay {
        let policy = retry.unwrap_or(&self.inner.retry);
        let may_repeat = policy.max_attempts > 1 || use_token;
        Replay {
            headers: (may_repeat && !request.headers().is_empty())
                .then(|| request.headers().clone()),
            body,
            version: request.version(),
        }
    }

    /// Sets the token (if any) and runs the request hooks on an attempt's
    /// request. Returns whether the attempt must not follow redirects to
    /// another origin.
    fn decorate(
        &self,
        request: &mut reqwest::Request,
        credential: Option<&Credential>,
        attempt: u32,
        guard_redirects: bool,
    ) -> bool {
        if let Some((header, _)) = credential {
            request
                .headers_mut()
                .insert(reqwest::header::AUTHORIZATION, header.clone());
        }
        let hooks = &self.inner.hooks;
        if hooks.is_empty() {
            return guard_redirects;
        }
        let mut hooked = HookRequest::new(request, attempt);
        for hook in hooks {
            hook.on_request(&mut hooked);
        }
        guard_redirects || redirect::would_leak(request.headers())
    }

    /// Admission of one attempt: the breaker first (an open one refuses at
    /// once, before any wait; for a routed call, the endpoint is chosen with
    /// it), then a rate-limit permit within the deadline. Returns the breaker
    /// permit, the current time, the rate-limit wait and the chosen endpoint.
    async fn admit<'b>(
        &self,
        route: &Route<'b>,
        deadline: &Deadline,
    ) -> Result<Admitted<'b>, Error> {
        let (now, Choice { target, permit }) = Self::choose_within(route, deadline).await?;
        match self.inner.limits.rate(deadline).await? {
            // No wait: the clock read above is still current.
            waited if waited.is_zero() => Ok(Admitted {
                permit,
                now,
                waited,
                target,
            }),
            waited => {
                // The breaker may have opened during the wait: ask again.
                drop(permit);
                let (now, Choice { target, permit }) = Self::choose_within(route, deadline).await?;
                Ok(Admitted {
                    permit,
                    now,
                    waited,
                    target,
                })
            }
        }
    }

    /// Chooses where an attempt goes (`Route::choose`). While the endpoint is
    /// paused by server pushback (every endpoint, for a routed call), waits
    /// for the pause to end when that fits the deadline, and refuses at once
    /// when it does not. Returns the time of the choice and the choice.
    async fn choose_within<'b>(
        route: &Route<'b>,
        deadline: &Deadline,
    ) -> Result<(Instant, Choice<'b>), Error> {
        loop {
            let now = Instant::now();
            match route.choose(now) {
                Err(err) if err.is_server_pushback() => {
                    let left = err.retry_after().unwrap_or_default();
                    if !deadline.fits(left) {
                        return Err(err);
                    }
                    Stats::waited("pushback", left);
                    tracing::debug!(
                        target: "resilient_http::pushback",
                        wait_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                        "waiting for the server's pushback pause to end"
                    );
                    tokio::time::sleep(left).await;
                }
                chosen => return chosen.map(|choice| (now, choice)),
            }
        }
    }

    /// After a failed attempt to `url`'s endpoint: a 429 or 503 with a
    /// `Retry-After` pauses the endpoint for every call, until the time given
    /// capped at `max_retry_after`. The call that got it is not delayed twice:
    /// its retry sleeps the same `Retry-After`, by which time the pause is over.
    fn pushback(&self, pause: &Pause, err: &Error, url: &Url, now: Instant) {
        // Another origin's pushback (a redirect target's) is not the endpoint's.
        let pushed = !err.is_from_elsewhere() && overloaded(err);
        let Some(after) = err.retry_after().filter(|_| pushed) else {
            return;
        };
        let length = after.min(self.inner.retry.max_retry_after);
        if pause.pause(now, length) {
            let endpoint = Origin::of(url).to_string();
            self.inner.stats.paused(&endpoint);
            tracing::warn!(
                target: "resilient_http::pushback",
                endpoint = %endpoint,
                pause_ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX),
                "endpoint paused by the server's Retry-After"
            );
        }
    }

    /// After a failed attempt: the delay before the next one, or why to stop:
    /// `Err(None)` when the policy says so, `Err(Some(layer))` when the
    /// breaker or the budget cut a retry the policy allowed. Asks, in order,
    /// the policy (kind, idempotency, attempts, Retry-After, deadline), the
    /// breaker (an open breaker ends the loop) and the budget.
    #[allow(clippy::too_many_arguments)]
    fn retry_delay(
        &self,
        retry: &RetryPolicy,
        err: &Error,
        attempts: u32,
        idempotent: bool,
        schedule: &mut Option<ExponentialBackoff>,
        deadline: &Deadline,
        open_for: impl FnOnce(Instant) -> Option<Duration>,
        elsewhere: bool,
        now: Instant,
    ) -> Result<(Duration, Option<Withdrawal<'_>>), Option<CutBy>> {
        let scheduled = schedule
            .get_or_insert_with(|| retry.schedule())
            .next()
            .unwrap_or(retry.max_backoff);
        let proposed = retry.jittered(scheduled);
        // A retry that can go to another endpoint does not wait out the
        // Retry-After of the one that answered (it paused that one).
        let decision = if elsewhere {
            retry.decide_elsewhere(err, attempts, idempotent, proposed, deadline.remaining())
        } else {
            retry.decide(err, attempts, idempotent, proposed, deadline.remaining())
        };
        let delay = match decision {
            Decision::Retry(delay) => delay,
            Decision::Stop(reason) => {
                tracing::debug!(
                    target: "resilient_http::retry",
                    attempt = attempts,
                    reason = reason.as_str(),
                    "not retrying"
                );
                return Err(None);
            }
        };
        if let Some(open_for) = open_for(now) {
            tracing::debug!(
                target: "resilient_http::retry",
                attempt = attempts,
                open_for_ms = u64::try_from(open_for.as_millis()).unwrap_or(u64::MAX),
                "not retrying: circuit breaker is open"
            );
            return Err(Some(CutBy::CircuitOpen));
        }
        let withdrawal = match &self.inner.budget {
            None => None,
            Some(budget) => {
                let Some(w) = budget.try_withdraw(now) else {
                    tracing::debug!(
                        target: "resilient_http::retry",
                        attempt = attempts,
                        "not retrying: retry budget exhausted"
                    );
                    return Err(Some(CutBy::Budget));
                };
                Some(w)
            }
        };
        tracing::debug!(
            target: "resilient_http::retry",
            attempt = attempts,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            reason = &*err.type_name(),
            "retrying"
        );
        Ok((delay, withdrawal))
    }

    /// One attempt: send, then buffer the body (or hand the stream over).
    /// A 2xx, or a status in `allow`, is an answer; any other an error.
    ///
    /// Hands the request to reqwest at once (a plain function returning a
    /// future): only reqwest's small pending future is kept, not the request.
    fn attempt<'a>(
        &'a self,
        request: reqwest::Request,
        http: &'a reqwest::Client,
        sent_to: impl Borrow<Url> + Send + 'a,
        stream: bool,
        allow: &'a [StatusCode],
        idle: Option<Duration>,
    ) -> impl Future<Output = Result<Got, Error>> + Send + 'a {
        let sent = within_read_timeout(idle, http.execute(request));
        async move {
            let mut resp = sent.await?.map_err(|e| {
                let off = e.url().is_some_and(|u| !same_origin(u, sent_to.borrow()));
                Error::transport(e).with_elsewhere(off)
            })?;
            redact::mark_response_secrets(resp.headers_mut());
            let status = resp.status();
            if status.is_success() || allow.contains(&status) {
                if stream {
                    return Ok(Got::Streaming(resp));
                }
                let headers = std::mem::take(resp.headers_mut());
                let version = resp.version();
                // Keep the call's URL (no copy) unless a redirect changed it.
                let url = (resp.url() != sent_to.borrow()).then(|| resp.url().clone());
                let body = read_body(resp, self.inner.max_response_bytes, idle).await?;
                return Ok(Got::Buffered {
                    status,
                    version,
                    headers,
                    body,
                    url,
                });
            }
            // What another origin a redirect led to did is not held against
            // the endpoint (see `Error::is_from_elsewhere`).
            let off = !same_origin(resp.url(), sent_to.borrow());
            let headers = std::mem::take(resp.headers_mut());
            let retry_after = headers
                .get(RETRY_AFTER)
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            // Keep a bounded prefix for `body_text` and `body_json`; a broken
            // body does not hide the status.
            let body = read_prefix(resp, self.inner.max_error_body_bytes, idle).await;
            Err(
                Error::from_response(status, headers, Bytes::from(body), retry_after)
                    .with_elsewhere(off),
            )
        }
    }
}

/// The call's `http.client.request` span, with the request's fields (none
/// for a call that could not be built).
fn call_span(call: &Result<Call, Error>) -> tracing::Span {
    let Ok(call) = call else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        target: "resilient_http",
        "http.client.request",
        otel.kind = crate::otel::CALL_SPAN_KIND,
        http.request.method = %call.request.method(),
        url.full = Empty,
        server.address = Empty,
        server.port = Empty,
        http.response.status_code = Empty,
        http.request.resend_count = Empty,
        error.type = Empty,
        otel.status_code = Empty,
        limit.wait_ms = Empty,
        hedge.sent = Empty,
        hedge.won = Empty,
        coalesced = Empty,
        served_by = Empty,
        cache = Empty,
    );
    if !span.is_disabled() && call.plan.routed.is_none() {
        redact::record_target(&span, call.request.url());
    }
    span
}

/// A call whose pipeline is built at its first poll (a client with a
/// response cache).
type Deferred<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>;

/// What a failed attempt (started at `started`) says about its endpoint,
/// by the rules [`CircuitBreakerConfig`](crate::CircuitBreakerConfig) gives
/// ("A failed attempt is ...").
fn verdict(err: &Error, started: Instant) -> Verdict {
    if err.is_from_elsewhere() {
        // The endpoint answered, with the redirect.
        Verdict::Success
    } else if err.reason() == ErrorReason::Unprocessed {
        Verdict::Neutral
    } else if err.timeout_phase() == Some(TimeoutPhase::Total) {
        Verdict::Cut { started }
    } else {
        Verdict::of(err.kind())
    }
}

/// The layer that refused a retry at admission, if it is one that cuts
/// retries short (an open breaker, the rate limit).
fn cut_by(refusal: &Error) -> Option<CutBy> {
    if refusal.is_circuit_open() {
        Some(CutBy::CircuitOpen)
    } else if refusal.is_rate_limited() {
        Some(CutBy::RateLimit)
    } else {
        None
    }
}

/// What an attempt's outcome says about the dependency's capacity, for the
/// adaptive concurrency limit: its time when answered, a drop on a timeout,
/// a 503 or a 429, nothing otherwise. The caller's own deadline (a total
/// timeout) is a drop only when the attempt had waited at least twice the
/// `typical` answer time: a call with a short `timeout`, or one that queued
/// for a slot, would otherwise cut the limit for all, while a dependency that
/// hangs must still cut it when every caller's deadline is short.
fn capacity_signal(
    outcome: &Result<Got, Error>,
    took: Duration,
    typical: Option<Duration>,
) -> Option<Signal> {
    match outcome {
        Ok(_) => Some(Signal::Rtt(took)),
        // Another origin's (a redirect target's) says nothing of this one.
        Err(err) if err.is_from_elsewhere() => None,
        Err(err) if err.is_timeout() => {
            let in_a_hurry = err.timeout_phase() == Some(TimeoutPhase::Total)
                && typical.is_some_and(|t| took < t.saturating_mul(2));
            (!in_a_hurry).then_some(Signal::Drop(took))
        }
        Err(err) if overloaded(err) => Some(Signal::Drop(took)),
        Err(_) => None,
    }
}

/// A 429 or a 503: the server says it is past its capacity.
fn overloaded(err: &Error) -> bool {
    matches!(
        err.status(),
        Some(StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
    )
}

/// Reports a failed attempt.
fn attempt_failed(attempt: u32, err: &Error) {
    tracing::debug!(
        target: "resilient_http",
        attempt,
        error.type = &*err.type_name(),
        "attempt failed"
    );
}
