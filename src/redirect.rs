//! The redirect policy and the credential guard, in one place.
//!
//! - At most `max_redirects` redirects are followed (0: none; the 3xx is then
//!   the answer, a `Client` error). More, or a loop, is a `Client` error.
//! - Only `http` and `https` targets are followed, and never from `https` down
//!   to `http`; otherwise the 3xx itself comes back (a `Client` error).
//! - reqwest drops `Authorization`, `Cookie`, `Proxy-Authorization` and
//!   `WWW-Authenticate` on a redirect to another origin. A request carrying
//!   another credential header (`x-api-key`, ...) is not redirected to another
//!   origin at all: the pipeline runs such an attempt inside [`guarded`], and
//!   the policy then stops at the 3xx.
//! - A request with a body is not sent to another origin by a 307 or 308
//!   (the redirects that send the body again): its body may be a credential
//!   (a client secret sent as a form field) or data meant for its
//!   first server only. The 3xx comes back. A 301, 302 or 303 is followed as
//!   a GET without the body.
//! - No `Referer` is sent: the original URL's query may hold credentials.

use futures_util::future::Either;
use std::future::Future;

use reqwest::StatusCode;
use reqwest::header::{
    AUTHORIZATION, COOKIE, HeaderMap, HeaderName, PROXY_AUTHORIZATION, WWW_AUTHENTICATE,
};

use crate::origin;
use crate::redact;

tokio::task_local! {
    /// Set while an attempt that must not follow some redirects to another
    /// origin runs.
    static GUARD: Guard;
}

/// Which redirects to another origin an attempt must not follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guard {
    /// Its headers carry a credential reqwest would forward: none.
    Credentials,
    /// It has a body: none that sends the body again (307, 308).
    Body,
}

impl Guard {
    /// The guard for an attempt whose headers would leak a credential
    /// (`credentials`) and that has a body (`body`), if it needs one.
    pub(crate) fn of(credentials: bool, body: bool) -> Option<Self> {
        if credentials {
            Some(Self::Credentials)
        } else if body {
            Some(Self::Body)
        } else {
            None
        }
    }
}

/// The client's redirect policy, following at most `max_redirects`.
pub(crate) fn policy(max_redirects: usize) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if max_redirects == 0 {
            return attempt.stop();
        }
        // `previous()` holds the original URL and every redirect followed.
        if attempt.previous().len() > max_redirects {
            return attempt.error(TooManyRedirects(max_redirects));
        }
        if !matches!(attempt.url().scheme(), "http" | "https") {
            return attempt.stop();
        }
        // Never from https down to plain http: the 3xx comes back.
        let from_https = attempt
            .previous()
            .last()
            .is_some_and(|u| u.scheme() == "https");
        if from_https && attempt.url().scheme() == "http" {
            return attempt.stop();
        }
        if let Ok(guard) = GUARD.try_with(|guard| *guard) {
            let resends_body = matches!(
                attempt.status(),
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
            );
            // Credentials travel with every hop: compared with where the
            // request started. The body only through 307/308 hops, and a
            // 301/302/303 before dropped it: compared with this hop's origin.
            let (refused, from) = match guard {
                Guard::Credentials => (true, attempt.previous().first()),
                Guard::Body => (resends_body, attempt.previous().last()),
            };
            let same = from.is_none_or(|from| origin::same_origin(from, attempt.url()));
            if refused && !same {
                return attempt.stop();
            }
        }
        attempt.follow()
    })
}

/// Runs one attempt so that the policy refuses the redirects to another
/// origin that `guard` names.
///
/// A plain function, not an `async fn`: an `async fn` would keep `attempt`
/// twice in its state (the argument and the future it awaits).
pub(crate) fn guarded<F: Future>(
    guard: Option<Guard>,
    attempt: F,
) -> impl Future<Output = F::Output> {
    match guard {
        Some(guard) => Either::Left(GUARD.scope(guard, attempt)),
        None => Either::Right(attempt),
    }
}

/// Whether these headers carry a credential that a redirect to another origin
/// would forward (so such a redirect must not be followed).
pub(crate) fn would_leak(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| redact::is_sensitive_name(name.as_str()) && !dropped_by_reqwest(name))
}

/// Whether reqwest itself drops this header on a redirect to another origin.
fn dropped_by_reqwest(name: &HeaderName) -> bool {
    [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, WWW_AUTHENTICATE].contains(name)
}

#[derive(Debug, thiserror::Error)]
#[error("more than {0} redirects")]
struct TooManyRedirects(usize);

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn credential_headers_that_reqwest_keeps_would_leak() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert!(!would_leak(&headers), "reqwest drops Authorization itself");
        headers.insert("x-api-key", HeaderValue::from_static("k"));
        assert!(would_leak(&headers));
    }
}
