//! The failure-mix server of the `scenarios` bench, and the client's CPU time.
//!
//! [`ScenarioServer`] is a keep-alive HTTP/1.1 server on 127.0.0.1, on its own
//! OS thread with a `current_thread` runtime (so it never shares the clients'
//! executor, and its CPU time can be told apart from theirs). Every request
//! is a *hit*, numbered from 0 since the last [`ScenarioServer::set`]; the
//! current [`Behavior`] decides the answer from the hit number, the time, or
//! the requests in service. Random-looking behaviours are seeded: hit `n`
//! fails iff `splitmix64(seed ^ n)` falls below the rate, so every client
//! meets the same pattern in hit order (a retry is a new hit).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::BODY;

/// How the server answers, until the next [`ScenarioServer::set`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Behavior {
    /// 200 to everything.
    Healthy,
    /// 503 to everything.
    Outage,
    /// 503 to hit `n` iff `unit(seed, n) < fail`, else 200.
    Flaky { fail: f64, seed: u64 },
    /// 200 to everything; hit `n` waits `delay` first iff `unit(seed, n) < slow`.
    Brownout {
        slow: f64,
        delay: Duration,
        seed: u64,
    },
    /// 503 before `healthy_at`, 200 from then on.
    Recovery { healthy_at: Instant },
    /// The first hit gets 429 with `Retry-After: retry_after` (whole
    /// seconds); every other hit 200. Hits that arrive within `retry_after`
    /// of the 429 are counted ([`Counts::during_pause`]).
    Pushback { retry_after: Duration },
    /// At most `capacity` requests in service at once, each for `service`;
    /// a request beyond that gets 503 at once.
    Overload { capacity: usize, service: Duration },
    /// At most `capacity` requests in service at once, each for `service`;
    /// up to `queue` more wait in line for a slot; a request beyond that
    /// gets 503 at once.
    Queue {
        capacity: usize,
        queue: usize,
        service: Duration,
    },
    /// 200 to everything after `base`; hit `n` waits `delay` instead iff
    /// `unit(seed, n) < slow` (a slow tail).
    Tail {
        slow: f64,
        base: Duration,
        delay: Duration,
        seed: u64,
    },
}

/// What the server saw since the last [`ScenarioServer::set`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Requests received.
    pub(crate) hits: u64,
    /// Requests answered with a non-2xx status.
    pub(crate) failed: u64,
    /// Requests that arrived within the `Retry-After` of a `Pushback` 429
    /// (the 429 itself not included).
    pub(crate) during_pause: u64,
}

#[derive(Debug)]
struct Active {
    behavior: Behavior,
    /// The service slots of `Overload` and `Queue`.
    slots: Arc<Semaphore>,
    /// The places (in service or in line) of `Queue`.
    places: Arc<Semaphore>,
    /// The end of a `Pushback` pause, once the 429 is sent.
    pause_until: Option<Instant>,
}

#[derive(Debug)]
struct Shared {
    active: Mutex<Active>,
    hits: AtomicU64,
    failed: AtomicU64,
    during_pause: AtomicU64,
}

/// The server; it lives until the process exits.
#[derive(Debug, Clone)]
pub(crate) struct ScenarioServer {
    addr: SocketAddr,
    /// The server thread's id (Linux), to leave its CPU time out of the client's.
    tid: Option<String>,
    shared: Arc<Shared>,
}

impl ScenarioServer {
    /// Starts the server, [`Behavior::Healthy`].
    pub(crate) fn start() -> Self {
        let shared = Arc::new(Shared {
            active: Mutex::new(Active {
                behavior: Behavior::Healthy,
                slots: Arc::new(Semaphore::new(0)),
                places: Arc::new(Semaphore::new(0)),
                pause_until: None,
            }),
            hits: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            during_pause: AtomicU64::new(0),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let state = Arc::clone(&shared);
        std::thread::spawn(move || {
            let tid = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send((listener.local_addr().expect("addr"), tid))
                    .expect("send addr");
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
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
        });
        let (addr, tid) = rx.recv().expect("server address");
        Self { addr, tid, shared }
    }

    /// The base URL, `http://127.0.0.1:port/`.
    pub(crate) fn base(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Switches the behaviour and resets the hit numbers and counts.
    pub(crate) fn set(&self, behavior: Behavior) {
        let mut active = self
            .shared
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (capacity, places) = match behavior {
            Behavior::Overload { capacity, .. } => (capacity, 0),
            Behavior::Queue {
                capacity, queue, ..
            } => (capacity, capacity + queue),
            _ => (0, 0),
        };
        *active = Active {
            behavior,
            slots: Arc::new(Semaphore::new(capacity)),
            places: Arc::new(Semaphore::new(places)),
            pause_until: None,
        };
        self.shared.hits.store(0, Ordering::SeqCst);
        self.shared.failed.store(0, Ordering::SeqCst);
        self.shared.during_pause.store(0, Ordering::SeqCst);
    }

    /// What the server saw since the last [`set`](Self::set).
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            hits: self.shared.hits.load(Ordering::SeqCst),
            failed: self.shared.failed.load(Ordering::SeqCst),
            during_pause: self.shared.during_pause.load(Ordering::SeqCst),
        }
    }

    /// CPU time of every live thread of the process but the server's, or
    /// `None` where `/proc/self/task/*/schedstat` cannot be read.
    pub(crate) fn client_cpu(&self) -> Option<Duration> {
        let mut total = 0u64;
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let task = task.ok()?;
            if self
                .tid
                .as_deref()
                .is_some_and(|tid| task.file_name().to_str() == Some(tid))
            {
                continue;
            }
            // A thread that ended meanwhile has no file left: skip it.
            let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(Duration::from_nanos(total))
    }
}

/// `splitmix64`: a well-mixed 64-bit hash.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether hit `n` is among the share `p` picked by `seed`.
pub(crate) fn picked(seed: u64, n: u64, p: f64) -> bool {
    #[allow(clippy::cast_precision_loss)]
    let unit = (splitmix64(seed ^ n) >> 11) as f64 / (1u64 << 53) as f64;
    unit < p
}

fn respond(shared: &Shared, status: StatusCode) -> Response<Full<Bytes>> {
    if !status.is_success() {
        shared.failed.fetch_add(1, Ordering::Relaxed);
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn answer(shared: &Shared) -> Response<Full<Bytes>> {
    let n = shared.hits.fetch_add(1, Ordering::SeqCst);
    let now = Instant::now();
    let (behavior, slots, places, pause_until) = {
        let mut active = shared.active.lock().unwrap_or_else(PoisonError::into_inner);
        if let Behavior::Pushback { retry_after } = active.behavior
            && n == 0
        {
            active.pause_until = Some(now + retry_after);
        }
        (
            active.behavior,
            Arc::clone(&active.slots),
            Arc::clone(&active.places),
            active.pause_until,
        )
    };
    match behavior {
        Behavior::Healthy => respond(shared, StatusCode::OK),
        Behavior::Outage => respond(shared, StatusCode::SERVICE_UNAVAILABLE),
        Behavior::Flaky { fail, seed } => {
            if picked(seed, n, fail) {
                respond(shared, StatusCode::SERVICE_UNAVAILABLE)
            } else {
                respond(shared, StatusCode::OK)
            }
        }
        Behavior::Brownout { slow, delay, seed } => {
            if picked(seed, n, slow) {
                tokio::time::sleep(delay).await;
            }
            respond(shared, StatusCode::OK)
        }
        Behavior::Recovery { healthy_at } => {
            if now < healthy_at {
                respond(shared, StatusCode::SERVICE_UNAVAILABLE)
            } else {
                respond(shared, StatusCode::OK)
            }
        }
        Behavior::Pushback { retry_after } => {
            if n == 0 {
                let mut resp = respond(shared, StatusCode::TOO_MANY_REQUESTS);
                resp.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from(retry_after.as_secs()),
                );
                return resp;
            }
            if pause_until.is_some_and(|until| now < until) {
                shared.during_pause.fetch_add(1, Ordering::Relaxed);
            }
            respond(shared, StatusCode::OK)
        }
        Behavior::Tail {
            slow,
            base,
            delay,
            seed,
        } => {
            let wait = if picked(seed, n, slow) { delay } else { base };
            tokio::time::sleep(wait).await;
            respond(shared, StatusCode::OK)
        }
        Behavior::Queue { service, .. } => {
            let Ok(_place) = places.try_acquire_owned() else {
                return respond(shared, StatusCode::SERVICE_UNAVAILABLE);
            };
            let Ok(_slot) = slots.acquire_owned().await else {
                return respond(shared, StatusCode::SERVICE_UNAVAILABLE);
            };
            tokio::time::sleep(service).await;
            respond(shared, StatusCode::OK)
        }
        Behavior::Overload { service, .. } => match slots.try_acquire_owned() {
            Ok(slot) => {
                tokio::time::sleep(service).await;
                drop(slot);
                respond(shared, StatusCode::OK)
            }
            Err(_) => respond(shared, StatusCode::SERVICE_UNAVAILABLE),
        },
    }
}
