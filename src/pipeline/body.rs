//! Body I/O of an attempt: reading a bounded body, the prefix of an error
//! body, and what a retry needs to send the same request again.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::Either;
use reqwest::Method;
use url::Url;

use super::CallContext;
use crate::error::Error;
use crate::timeout::TimeoutPhase;
use crate::upload::{NoReplay, Payload};

/// What a retry needs, besides method and URL, to rebuild the request.
pub(super) struct Replay {
    pub(super) headers: Option<reqwest::header::HeaderMap>,
    pub(super) body: Option<Payload>,
    pub(super) version: reqwest::Version,
}

impl Replay {
    /// The request for the next attempt: the original one the first time
    /// (moved to the context's URL when `retarget`), then rebuilt.
    pub(super) fn next(
        &self,
        original: &mut Option<reqwest::Request>,
        ctx: &CallContext<'_>,
        retarget: bool,
    ) -> reqwest::Request {
        match original.take() {
            Some(mut request) => {
                if retarget {
                    request.url_mut().clone_from(&ctx.url);
                }
                request
            }
            None => self.rebuild(&ctx.method, &ctx.url),
        }
    }

    /// Whether the body can be sent again whole (a streamed one may have
    /// outgrown its replay buffer, or failed).
    pub(super) fn replayable(&self) -> Result<(), NoReplay> {
        self.body.as_ref().map_or(Ok(()), Payload::replayable)
    }

    /// Stops the failed attempt's streamed body from reading on.
    pub(super) fn cut_off(&self) {
        if let Some(body) = &self.body {
            body.cut_off();
        }
    }

    /// Whether the body is a stream (read once, from its replay buffer on a
    /// retry): such a call is never hedged.
    pub(super) fn streamed(&self) -> bool {
        matches!(self.body, Some(Payload::Stream(_)))
    }

    pub(super) fn rebuild(&self, method: &Method, url: &Url) -> reqwest::Request {
        let mut request = reqwest::Request::new(method.clone(), url.clone());
        if let Some(headers) = &self.headers {
            request.headers_mut().clone_from(headers);
        }
        *request.body_mut() = self.body.as_ref().map(Payload::body);
        *request.version_mut() = self.version;
        request
    }
}

/// Waits for `read` (the headers, or the next piece of a body) at most
/// `idle`: past it, a `Timeout(Read)` error. `None` when the attempt's own
/// limit is no longer than `read_timeout`, so that it bounds every read
/// already (the defaults): no timer of its own then.
///
/// A plain function returning a future (as `redirect::guarded`), so that
/// `read` is held once.
pub(super) fn within_read_timeout<F: Future>(
    idle: Option<Duration>,
    read: F,
) -> impl Future<Output = Result<F::Output, Error>> {
    match idle {
        Some(limit) => Either::Left(
            tokio::time::timeout(limit, read)
                .map(|timed| timed.map_err(|_| Error::timeout(TimeoutPhase::Read))),
        ),
        None => Either::Right(read.map(Ok)),
    }
}

/// The next piece of a body, within the read timeout.
async fn next_chunk(
    resp: &mut reqwest::Response,
    idle: Option<Duration>,
) -> Result<Option<Bytes>, Error> {
    within_read_timeout(idle, resp.chunk())
        .await?
        .map_err(Error::transport_mid_body)
}

/// Reads the whole body, failing with `Decode` past `limit` bytes.
///
/// A plain function returning an `async` block, which reads `resp` in place
/// (an `async fn` would keep its argument beside its own copy).
#[allow(clippy::manual_async_fn)]
pub(super) fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
    idle: Option<Duration>,
) -> impl Future<Output = Result<Bytes, Error>> + Send {
    async move {
        // Read before the first chunk: afterwards the transport's hint is what is
        // left to come, not the whole body.
        let length = resp.content_length();
        if length.is_some_and(|len| len > limit as u64) {
            return Err(Error::too_large(limit));
        }
        let Some(first) = next_chunk(&mut resp, idle).await? else {
            return Ok(Bytes::new());
        };
        if first.len() > limit {
            return Err(Error::too_large(limit));
        }
        let Some(second) = next_chunk(&mut resp, idle).await? else {
            return Ok(first);
        };
        let both = first.len().saturating_add(second.len());
        if both > limit {
            return Err(Error::too_large(limit));
        }
        let hint = length.map_or(0, |n| usize::try_from(n).unwrap_or(limit));
        // `both <= limit`, so the bounds are ordered.
        let mut buf = BytesMut::with_capacity(hint.clamp(both, limit));
        buf.extend_from_slice(&first);
        let mut next = Some(second);
        while let Some(chunk) = next {
            if buf.len() + chunk.len() > limit {
                return Err(Error::too_large(limit));
            }
            buf.extend_from_slice(&chunk);
            next = next_chunk(&mut resp, idle).await?;
        }
        Ok(buf.freeze())
    }
}

/// Reads up to `cap` bytes of an error body, ignoring read failures.
#[allow(clippy::manual_async_fn)] // as `read_body`
pub(super) fn read_prefix(
    mut resp: reqwest::Response,
    cap: usize,
    idle: Option<Duration>,
) -> impl Future<Output = Vec<u8>> + Send {
    async move {
        let mut buf = Vec::new();
        while buf.len() < cap {
            match next_chunk(&mut resp, idle).await {
                Ok(Some(chunk)) => {
                    let take = chunk.len().min(cap - buf.len());
                    buf.extend_from_slice(&chunk[..take]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        buf
    }
}
