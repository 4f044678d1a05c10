//! The response cache's part in the call (feature `cache`): asked before the
//! loop (a fresh entry ends the call with no I/O), told what the attempt
//! got, and asked again after the loop for a stale entry (stale-if-error).
//! The rules are [`crate::cache`]'s.

use reqwest::StatusCode;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{Buffer, Call, CallContext, Finish, Got};
use crate::cache::{Answer, Lookup, Outcome, Pending, RefreshClaim, Store};
use crate::client::ApiClient;
use crate::error::Error;

/// How a call uses the client's cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) enum CacheUse {
    /// Answered from it when it can be, stored in it when it may be.
    #[default]
    Ask,
    /// Neither (`RequestBuilder::no_cache`).
    Bypass,
    /// A background refresh: never answered stale.
    Refresh,
}

/// What the cache says before the loop (boxed answers: it is kept in the
/// call's state, which calls without a cache should not pay for).
pub(super) enum Before {
    /// The call does not use the cache.
    Bypass,
    /// The cache answers: the call ends here.
    Answer(Box<(Got, Outcome)>),
    /// The call goes out; its end is told to the cache.
    Fetch(Box<Pending>),
}

impl ApiClient {
    /// Before the loop: asks the cache about `call`. A revalidation adds the
    /// entry's validators to the request and takes a 304 as an answer; a
    /// stale-while-revalidate answer starts the entry's background refresh
    /// when this call claimed it.
    pub(super) fn ask_cache<F: Finish>(
        &self,
        store: &Store,
        call: &mut Call,
        span: &tracing::Span,
    ) -> Before {
        if F::STREAM || call.body.is_some() || call.plan.cache == CacheUse::Bypass {
            return Before::Bypass;
        }
        let refresh = call.plan.cache == CacheUse::Refresh;
        match store.lookup(&call.request, call.plan.use_token, refresh) {
            Lookup::Bypass => Before::Bypass,
            Lookup::Hit(answer) => Before::Answer(Box::new((got(answer), Outcome::Hit))),
            Lookup::StaleWhileRevalidate(answer, claim) => {
                if let (Some(claim), Some(mut again)) = (claim, call.try_clone()) {
                    again.plan.cache = CacheUse::Refresh;
                    self.refresh(again, claim, span);
                }
                Before::Answer(Box::new((got(answer), Outcome::Stale)))
            }
            Lookup::Fetch(pending, conditional) => {
                if !conditional.is_empty() {
                    call.request.headers_mut().extend(conditional);
                    if !call.plan.allow.contains(&StatusCode::NOT_MODIFIED) {
                        let mut allow = std::mem::take(&mut call.plan.allow).into_vec();
                        allow.push(StatusCode::NOT_MODIFIED);
                        call.plan.allow = allow.into_boxed_slice();
                    }
                }
                Before::Fetch(Box::new(pending))
            }
        }
    }

    /// Runs a background refresh of an entry on a task of its own, in a
    /// span that follows from the caller's (the one exception to spans on
    /// the caller's task). Without a runtime, nothing is refreshed.
    fn refresh(&self, call: Call, claim: RefreshClaim, caller: &tracing::Span) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let span = tracing::info_span!(
            target: "resilient_http",
            parent: None,
            "http.client.cache.refresh"
        );
        span.follows_from(caller);
        let refreshed = span.in_scope(|| self.clone().execute::<Buffer>(Ok(call)));
        runtime.spawn(
            async move {
                // Released when the refresh ends, however it ends.
                let _claim = claim;
                // The outcome is the cache's and the refresh's span's.
                let _ = refreshed.await;
            }
            .instrument(span),
        );
    }

    /// The attempt got an answer: the cache stores it, or answers a 304
    /// with the entry it refreshed.
    pub(super) fn tell_cache(
        store: &Store,
        pending: &Pending,
        got: Got,
        ctx: &CallContext<'_>,
    ) -> Got {
        let Got::Buffered {
            status,
            version,
            headers,
            body,
            url,
        } = got
        else {
            return got;
        };
        let redirected = url.is_some();
        let answer = Answer {
            status,
            version,
            headers,
            body,
            url: url.unwrap_or_else(|| ctx.url.clone()),
        };
        let (answer, outcome) = store.complete(pending, answer, redirected);
        record(store, outcome, ctx);
        self::got(answer)
    }

    /// After the loop: a stale entry that may answer the failed call
    /// (stale-if-error), recorded as such; `None` (a miss) otherwise.
    pub(super) fn rescue(
        store: &Store,
        pending: &Pending,
        err: &Error,
        ctx: &CallContext<'_>,
    ) -> Option<Got> {
        let Some(answer) = store.rescue(pending, err) else {
            record(store, Outcome::Miss, ctx);
            return None;
        };
        if !ctx.span.is_disabled() {
            ctx.span.record("cache", Outcome::Stale.as_str());
        }
        tracing::warn!(
            target: "resilient_http",
            kind = err.kind().as_str(),
            error = %err,
            "call failed; answered with a stale cached response"
        );
        Some(got(answer))
    }

    /// Ends a call the cache answered (`outcome`) after `attempts`.
    pub(super) fn answered<F: Finish>(
        store: &Store,
        got: Got,
        outcome: Outcome,
        mut ctx: CallContext<'_>,
        attempts: u32,
    ) -> Result<F::Output, Error> {
        record(store, outcome, &ctx);
        ctx.stale = outcome == Outcome::Stale;
        let now = Instant::now();
        let status = got.status();
        // A routed call's URL is a placeholder until an endpoint is chosen:
        // the entry's own URL names the server.
        let server = match &got {
            Got::Buffered { url: Some(url), .. } => url.host_str(),
            _ if ctx.placeholder => None,
            _ => ctx.url.host_str(),
        };
        ctx.active
            .end(Ok(status), ctx.deadline.elapsed_at(now), server);
        if !ctx.span.is_disabled() {
            ctx.span
                .record("http.response.status_code", i64::from(status.as_u16()));
        }
        tracing::debug!(target: "resilient_http", attempts, "answered from the cache");
        let elapsed = ctx.deadline.elapsed_at(now);
        F::finish(got, attempts, elapsed, ctx, None)
    }
}

/// Counts what answered the call, and says so in its span (`served_by =
/// "cache"` when an entry answered without the server: fresh, or stale).
fn record(store: &Store, outcome: Outcome, ctx: &CallContext<'_>) {
    store.record(outcome);
    if !ctx.span.is_disabled() {
        ctx.span.record("cache", outcome.as_str());
        if matches!(outcome, Outcome::Hit | Outcome::Stale) {
            ctx.span.record("served_by", "cache");
        }
    }
}

fn got(answer: Answer) -> Got {
    Got::Buffered {
        status: answer.status,
        version: answer.version,
        headers: answer.headers,
        body: answer.body,
        url: Some(answer.url),
    }
}
