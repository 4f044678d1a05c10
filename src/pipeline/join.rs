//! Before the loop: a call that may share its request joins an identical
//! call in flight, or starts one that others may join (see
//! [`crate::coalesce`]).

use std::sync::Arc;

use tokio::time::Instant;

use super::{Buffer, Call};
use crate::client::ApiClient;
use crate::coalesce::Key;
use crate::error::Error;
use crate::response::ApiResponse;
use crate::timeout::TimeoutPhase;

impl ApiClient {
    /// Joins the shared call of `key`, or starts it, and waits for its
    /// answer within this call's own deadline.
    ///
    /// A shared call runs the pipeline under the longer of its first
    /// caller's deadline and the client's `total_timeout`, so that no
    /// caller's shorter deadline fails the others; a caller whose deadline
    /// is shorter stops waiting at its own, with a `Total` timeout (0
    /// attempts: the request goes on for the others).
    pub(super) async fn coalesced(
        self,
        key: Key,
        mut call: Call,
        span: tracing::Span,
    ) -> Result<ApiResponse, Error> {
        let started = Instant::now();
        let total = self.inner.total_timeout;
        let own = call.timeout.unwrap_or(total);
        let Some(coalescer) = &self.inner.coalescer else {
            return self.run::<Buffer>(Ok(call), span).await;
        };
        let method = call.request.method().clone();
        // A routed call's URL is a placeholder: not worth naming.
        let url = (call.plan.routed.is_none()).then(|| call.request.url().clone());
        let (shared, joined) = coalescer.join(key, |leave| {
            call.timeout = Some(own.max(total));
            let run = self.clone().run::<Buffer>(Ok(call), span.clone());
            Box::pin(async move {
                let _leave = leave;
                run.await.map_err(Arc::new)
            })
        });
        if joined {
            self.inner.stats.coalesced(&method);
            if !span.is_disabled() {
                span.record("coalesced", true);
            }
            tracing::debug!(
                target: "resilient_http",
                parent: &span,
                "joined an identical call in flight"
            );
        }
        // The first caller needs no timer of its own unless its deadline is
        // the shorter one.
        let until = started.checked_add(own).filter(|_| joined || own < total);
        let answer = match until {
            Some(until) => tokio::time::timeout_at(until, shared)
                .await
                .unwrap_or_else(|_| {
                    let err = Error::timeout(TimeoutPhase::Total);
                    Err(Arc::new(err.with_call(
                        &method,
                        url.as_ref(),
                        0,
                        started.elapsed(),
                    )))
                }),
            None => shared.await,
        };
        // The last holder takes the error itself; the others a copy.
        let answer = answer.map_err(|err| Arc::try_unwrap(err).unwrap_or_else(|err| err.share()));
        if joined && !span.is_disabled() {
            // The rest is in the shared call's span (its first caller's).
            match &answer {
                Ok(resp) => {
                    span.record("http.response.status_code", i64::from(resp.status.as_u16()));
                }
                Err(err) => {
                    span.record("error.type", &*err.type_name());
                }
            }
        }
        answer
    }
}
