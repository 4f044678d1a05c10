//! After the loop: what answers a call that failed, instead of its error.

use crate::client::ApiClient;
use crate::error::Error;
use crate::fallback::Fallback;
use crate::response::ApiResponse;

/// What may answer a failed call: its fallback, with what reports it.
pub(super) struct Degrade {
    pub(super) fallback: Fallback,
    pub(super) client: ApiClient,
    pub(super) span: tracing::Span,
}

impl Degrade {
    /// The fallback's answer to the call's final error, for the kinds it
    /// names; else the error. The answer is marked synthetic, with the
    /// call's method, URL and elapsed time, and 0 attempts.
    pub(super) fn recover(self, err: Error) -> Result<ApiResponse, Error> {
        let Some(mut resp) = self.fallback.answer(&err) else {
            return Err(err);
        };
        resp.synthetic = true;
        resp.attempts = 0;
        resp.hedged = false;
        // (A fallback may hand back a copy of an earlier cached answer.)
        #[cfg(feature = "cache")]
        {
            resp.stale = false;
        }
        if let Some(method) = err.method() {
            resp.method = method.clone();
        }
        if let Some(url) = err.url() {
            resp.url = url.clone();
        }
        resp.elapsed = err.elapsed().unwrap_or_default();
        self.client.inner.stats.fallback(&resp.method, err.kind());
        let span = &self.span;
        if !span.is_disabled() {
            span.record("served_by", "fallback");
        }
        tracing::debug!(
            target: "resilient_http",
            parent: span,
            kind = err.kind().as_str(),
            status = resp.status.as_u16(),
            "a fallback answered the failed call"
        );
        Ok(resp)
    }
}
