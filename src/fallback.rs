//! Fallbacks: an answer of the program's own for a call that failed because
//! its dependency is unavailable (see
//! [`ApiClientBuilder::fallback`](crate::ApiClientBuilder::fallback)).

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, ErrorReason};
use crate::response::ApiResponse;

/// The function a fallback calls with the call's final error.
type Answer = dyn Fn(&Error) -> Option<ApiResponse> + Send + Sync;

/// A fallback: the kinds of error it answers, and its function.
#[derive(Clone)]
pub(crate) struct Fallback {
    kinds: Kinds,
    /// The default kinds: a `Rejected` error only when the dependency is
    /// unavailable (an open breaker, a pause, a limit, no endpoint), not a
    /// token or signer failure (a bug or a setup to see).
    unavailable_only: bool,
    answer: Arc<Answer>,
}

impl fmt::Debug for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("kinds", &self.kinds)
            .finish_non_exhaustive()
    }
}

impl Fallback {
    /// A fallback for the errors that mean the dependency is unavailable:
    /// `Retryable`, `Server`, and `Rejected` by a breaker, a pause, a limit
    /// or for want of an endpoint.
    pub(crate) fn new<F>(answer: F) -> Self
    where
        F: Fn(&Error) -> Option<ApiResponse> + Send + Sync + 'static,
    {
        Self {
            unavailable_only: true,
            ..Self::on(
                [ErrorKind::Retryable, ErrorKind::Server, ErrorKind::Rejected],
                answer,
            )
        }
    }

    /// A fallback for the errors of `kinds` only.
    pub(crate) fn on<K, F>(kinds: K, answer: F) -> Self
    where
        K: IntoIterator<Item = ErrorKind>,
        F: Fn(&Error) -> Option<ApiResponse> + Send + Sync + 'static,
    {
        Self {
            kinds: kinds.into_iter().collect(),
            unavailable_only: false,
            answer: Arc::new(answer),
        }
    }

    /// The fallback's answer to `err`: `None` for a kind it was not given,
    /// or when its function declines.
    pub(crate) fn answer(&self, err: &Error) -> Option<ApiResponse> {
        let local = self.unavailable_only
            && matches!(err.reason(), ErrorReason::Auth | ErrorReason::Signer);
        if self.kinds.contains(err.kind()) && !local {
            (self.answer)(err)
        } else {
            None
        }
    }
}

/// A call's fallback: the client's, none, or its own.
#[derive(Debug, Clone, Default)]
pub(crate) enum FallbackChoice {
    /// The client's ([`crate::ApiClientBuilder::fallback`]).
    #[default]
    Client,
    /// None for this call.
    Off,
    /// This call's own.
    Call(Fallback),
}

impl FallbackChoice {
    /// The fallback that applies to a call, given the client's.
    pub(crate) fn resolve(self, client: Option<&Fallback>) -> Option<Fallback> {
        match self {
            Self::Client => client.cloned(),
            Self::Off => None,
            Self::Call(own) => Some(own),
        }
    }
}

/// A set of error kinds, one bit each.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
struct Kinds(u32);

impl Kinds {
    fn bit(kind: ErrorKind) -> u32 {
        1 << (kind as u8)
    }

    fn contains(self, kind: ErrorKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }
}

impl FromIterator<ErrorKind> for Kinds {
    fn from_iter<I: IntoIterator<Item = ErrorKind>>(kinds: I) -> Self {
        Self(kinds.into_iter().fold(0, |set, k| set | Self::bit(k)))
    }
}

impl fmt::Debug for Kinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = [
            ErrorKind::Retryable,
            ErrorKind::Server,
            ErrorKind::Client,
            ErrorKind::Rejected,
            ErrorKind::Decode,
            ErrorKind::Config,
        ];
        f.debug_set()
            .entries(all.iter().filter(|k| self.contains(**k)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn status(code: u16) -> Error {
        Error::from_status(
            StatusCode::from_u16(code).unwrap(),
            reqwest::header::HeaderMap::new(),
            b"",
            None,
        )
    }

    fn served(fallback: &Fallback, err: &Error) -> bool {
        fallback.answer(err).is_some()
    }

    #[test]
    fn the_default_kinds_are_those_of_an_unavailable_dependency() {
        let fallback = Fallback::new(|_| Some(ApiResponse::synthetic(StatusCode::OK, "")));
        assert!(served(&fallback, &status(503)), "Retryable");
        assert!(served(&fallback, &status(500)), "Server");
        assert!(served(&fallback, &Error::circuit_open(None)), "Rejected");
        assert!(!served(&fallback, &status(404)), "Client");
        assert!(!served(&fallback, &Error::config("bad")), "Config");
        assert!(!served(&fallback, &Error::decode("bad", None)), "Decode");
        // Rejected, but by the client's own setup: a failure to see.
        assert!(!served(&fallback, &Error::signer("no key")), "Signer");
        assert!(!served(&fallback, &Error::auth("no token")), "Auth");
    }

    #[test]
    fn named_kinds_replace_the_default_ones() {
        let fallback = Fallback::on([ErrorKind::Client], |_| {
            Some(ApiResponse::synthetic(StatusCode::OK, ""))
        });
        assert!(served(&fallback, &status(404)));
        assert!(!served(&fallback, &status(503)));
        assert_eq!(format!("{fallback:?}"), "Fallback { kinds: {Client}, .. }");
    }

    #[test]
    fn a_function_that_declines_serves_nothing() {
        let fallback = Fallback::new(|_| None);
        assert!(!served(&fallback, &status(503)));
    }
}
