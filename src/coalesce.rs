//! Request coalescing: identical GET and HEAD calls in flight share one run
//! of the pipeline, a *shared call* (see
//! [`ApiClientBuilder::coalesce_requests`](crate::ApiClientBuilder::coalesce_requests)).
//!
//! A shared call is a [`Shared`] future: every caller waiting for it holds
//! a clone and any of them drives it, so the caller that started it may
//! give up without failing the others; it ends (and its request is
//! cancelled) when the last one gives up. Calls are told apart by a keyed hash of
//! everything that shapes their answer, credentials included: no secret is
//! kept, and no one guessing the hash keys can make two calls collide.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::{FutureExt as _, Shared, WeakShared};
use reqwest::Method;

use crate::error::Error;
use crate::pipeline::{Call, HedgeChoice};
use crate::response::ApiResponse;

/// What a shared call answers each caller (an error is copied for each:
/// see [`Error::share`]).
pub(crate) type Answer = Result<ApiResponse, Arc<Error>>;

/// The run of the pipeline a shared call drives.
pub(crate) type Run = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// A shared call, as each of its callers holds it.
pub(crate) type SharedCall = Shared<Run>;

/// The shared calls in flight, by key: each with its number, to tell it
/// from a later one of the same key.
type Pending = HashMap<Key, (u64, WeakShared<Run>)>;

/// Which calls may share one: a 128-bit keyed hash of their identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key(u64, u64);

/// The shared calls of one client.
pub(crate) struct Coalescer {
    in_flight: Arc<Mutex<Pending>>,
    /// The number of the next shared call.
    next: AtomicU64,
    /// Two independent random keys: 128 bits of hash.
    keys: (RandomState, RandomState),
}

impl fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

impl Coalescer {
    pub(crate) fn new() -> Self {
        Self {
            in_flight: Arc::default(),
            next: AtomicU64::new(0),
            keys: (RandomState::new(), RandomState::new()),
        }
    }

    /// The key of a call that may be shared, or `None`: only a GET or
    /// HEAD without a body, with the client's retry policy and no hedging
    /// of its own, may.
    pub(crate) fn key(&self, call: &Call) -> Option<Key> {
        let request = &call.request;
        let shareable = matches!(*request.method(), Method::GET | Method::HEAD)
            && call.body.is_none()
            && request.body().is_none()
            && call.plan.retry.is_none()
            && !matches!(call.plan.hedging, HedgeChoice::Call(_));
        if !shareable {
            return None;
        }
        let (mut a, mut b) = (self.keys.0.build_hasher(), self.keys.1.build_hasher());
        identity(call, &mut a);
        identity(call, &mut b);
        Some(Key(a.finish(), b.finish()))
    }

    /// The shared call of `key`: the one in flight, joined (`true`), or
    /// one `start` makes (`false`), given what removes it from the calls in
    /// flight when it ends.
    pub(crate) fn join(&self, key: Key, start: impl FnOnce(Leave) -> Run) -> (SharedCall, bool) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // (No shared call is dropped under the lock: dropping the last
        // clone removes it, which takes the lock.)
        if let Some(call) = in_flight.get(&key).and_then(|(_, weak)| weak.upgrade()) {
            return (call, true);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let leave = Leave {
            in_flight: Arc::clone(&self.in_flight),
            key,
            id,
        };
        let call = start(leave).shared();
        if let Some(weak) = call.downgrade() {
            in_flight.insert(key, (id, weak));
        }
        (call, false)
    }
}

/// Removes a shared call from the calls in flight when its run ends,
/// answered or dropped, so that a later call starts one of its own.
pub(crate) struct Leave {
    in_flight: Arc<Mutex<Pending>>,
    key: Key,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if in_flight
            .get(&self.key)
            .is_some_and(|(id, _)| *id == self.id)
        {
            in_flight.remove(&self.key);
        }
    }
}

/// Feeds what shapes a call's answer to `h`: method, URL, version, every
/// header (credentials included: hashed, never kept), and the options that
/// change what the answer is (allowed statuses, idempotency, the client's
/// token, hedging, path escapes, the use of the response cache).
fn identity(call: &Call, h: &mut impl Hasher) {
    let request = &call.request;
    request.method().hash(h);
    request.url().as_str().hash(h);
    request.version().hash(h);
    request.headers().len().hash(h);
    for (name, value) in request.headers() {
        name.hash(h);
        value.as_bytes().hash(h);
    }
    let plan = &call.plan;
    plan.allow.hash(h);
    plan.idempotent.hash(h);
    plan.use_token.hash(h);
    matches!(plan.hedging, HedgeChoice::Off).hash(h);
    plan.routed.as_ref().map(|r| r.allow_escape).hash(h);
    // A call that must not be answered from the cache never shares the
    // answer of one that may be.
    #[cfg(feature = "cache")]
    plan.cache.hash(h);
}
