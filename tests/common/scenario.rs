//! A failure-mix server for `tests/scenarios.rs`: the seeded, countable
//! subset of the `scenarios` bench's server (benches/common/scenario.rs).
//!
//! [`ScenarioServer::start`] serves keep-alive HTTP/1.1 on `127.0.0.1:0` on
//! the test's runtime. Every request is a *hit*, numbered from 0; the
//! [`Behavior`] decides the answer from the hit number or the requests in
//! service, never from the clock (but for counting hits inside a pushback
//! pause). Dropping the server stops it accepting connections.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How the server answers.
#[derive(Debug, Clone, Copy)]
pub enum Behavior {
    /// 503 to everything.
    Outage,
    /// 200 to the first `healthy` hits, 503 to every later one.
    OutageAfter { healthy: u64 },
    /// 503 to hit `n` iff [`picked`]`(seed, n, fail)`, else 200.
    Flaky { fail: f64, seed: u64 },
    /// Hit 0 gets 429 with `Retry-After` (whole seconds), every other hit 200.
    /// A hit arriving before the 429 was sent plus `retry_after` minus
    /// `margin` counts in [`Counts::during_pause`].
    Pushback {
        retry_after: Duration,
        margin: Duration,
    },
    /// At most `capacity` requests in service at once, each held as `hold`
    /// says, then answered 200; a request beyond that gets 503 at once.
    Overload { capacity: usize, hold: Hold },
}

/// How long `Overload` keeps a request in service.
#[derive(Debug, Clone, Copy)]
pub enum Hold {
    /// Until [`ScenarioServer::open_gate`].
    Gate,
    /// For this long.
    For(Duration),
}

/// What the server saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests received.
    pub hits: u64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests answered otherwise (429, 503).
    pub failed: u64,
    /// `Pushback`: requests that arrived inside the pause (see [`Behavior::Pushback`]).
    pub during_pause: u64,
    /// `Overload`: the most requests in service at once.
    pub peak_in_service: u64,
}

#[derive(Debug)]
struct Shared {
    behavior: Behavior,
    slots: Arc<Semaphore>,
    gate: watch::Sender<bool>,
    pause_until: Mutex<Option<Instant>>,
    hits: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    during_pause: AtomicU64,
    in_service: AtomicUsize,
    peak: AtomicUsize,
}

/// The server; see the module docs.
#[derive(Debug)]
pub struct ScenarioServer {
    uri: String,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for ScenarioServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl ScenarioServer {
    /// Starts a server with `behavior` on the current runtime.
    pub async fn start(behavior: Behavior) -> Self {
        let capacity = match behavior {
            Behavior::Overload { capacity, .. } => capacity,
            _ => 0,
        };
        let shared = Arc::new(Shared {
            behavior,
            slots: Arc::new(Semaphore::new(capacity)),
            gate: watch::channel(false).0,
            pause_until: Mutex::new(None),
            hits: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            during_pause: AtomicU64::new(0),
            in_service: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let uri = format!("http://{}/", listener.local_addr().expect("address"));
        let state = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(&state).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            uri,
            shared,
            accept,
        }
    }

    /// The base URL, `http://127.0.0.1:port/`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// What the server saw so far.
    pub fn counts(&self) -> Counts {
        let s = &self.shared;
        Counts {
            hits: s.hits.load(Ordering::SeqCst),
            ok: s.ok.load(Ordering::SeqCst),
            failed: s.failed.load(Ordering::SeqCst),
            during_pause: s.during_pause.load(Ordering::SeqCst),
            peak_in_service: s.peak.load(Ordering::SeqCst) as u64,
        }
    }

    /// Lets every request held by [`Hold::Gate`] through, now and later.
    pub fn open_gate(&self) {
        self.shared.gate.send_replace(true);
    }
}

/// `splitmix64`: a well-mixed 64-bit hash.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether hit `n` is among the share `p` that `seed` picks.
pub fn picked(seed: u64, n: u64, p: f64) -> bool {
    #[allow(clippy::cast_precision_loss)]
    let unit = (splitmix64(seed ^ n) >> 11) as f64 / (1u64 << 53) as f64;
    unit < p
}

fn respond(shared: &Shared, status: StatusCode) -> Response<Full<Bytes>> {
    let counter = if status.is_success() {
        &shared.ok
    } else {
        &shared.failed
    };
    counter.fetch_add(1, Ordering::SeqCst);
    let mut resp = Response::new(Full::new(Bytes::from_static(br#"{"ok":true}"#)));
    *resp.status_mut() = status;
    resp
}

async fn answer(shared: &Shared) -> Response<Full<Bytes>> {
    let n = shared.hits.fetch_add(1, Ordering::SeqCst);
    match shared.behavior {
        Behavior::OutageAfter { healthy } if n < healthy => respond(shared, StatusCode::OK),
        Behavior::Outage | Behavior::OutageAfter { .. } => {
            respond(shared, StatusCode::SERVICE_UNAVAILABLE)
        }
        Behavior::Flaky { fail, seed } => {
            if picked(seed, n, fail) {
                respond(shared, StatusCode::SERVICE_UNAVAILABLE)
            } else {
                respond(shared, StatusCode::OK)
            }
        }
        Behavior::Pushback {
            retry_after,
            margin,
        } => {
            let now = Instant::now();
            let mut until = shared
                .pause_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if n == 0 {
                *until = Some(now + retry_after.saturating_sub(margin));
                drop(until);
                let mut resp = respond(shared, StatusCode::TOO_MANY_REQUESTS);
                resp.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from(retry_after.as_secs()),
                );
                return resp;
            }
            if until.is_some_and(|until| now < until) {
                shared.during_pause.fetch_add(1, Ordering::SeqCst);
            }
            drop(until);
            respond(shared, StatusCode::OK)
        }
        Behavior::Overload { hold, .. } => {
            let Ok(slot) = Arc::clone(&shared.slots).try_acquire_owned() else {
                return respond(shared, StatusCode::SERVICE_UNAVAILABLE);
            };
            let now = shared.in_service.fetch_add(1, Ordering::SeqCst) + 1;
            shared.peak.fetch_max(now, Ordering::SeqCst);
            match hold {
                Hold::Gate => {
                    let mut gate = shared.gate.subscribe();
                    let _ = gate.wait_for(|open| *open).await;
                }
                Hold::For(d) => tokio::time::sleep(d).await,
            }
            // Leave service before answering: the client sees the answer
            // only after the slot is free again.
            shared.in_service.fetch_sub(1, Ordering::SeqCst);
            drop(slot);
            respond(shared, StatusCode::OK)
        }
    }
}
