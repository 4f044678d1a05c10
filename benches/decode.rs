//! Typed JSON decode of a whole body, for bodies of 1 KB, 100 KB and 10 MB (a
//! JSON array of order records decoded into serde-derived structs):
//!
//! - `api_get_json`: `ApiClient::get_json`, fetching from an in-process server;
//! - `reqwest_json`: reqwest's `Response::json`, from the same server;
//! - `api_response_json`: `ApiResponse::json` on a body already received (our
//!   decode alone, no I/O);
//! - `serde_json_from_slice`: `serde_json::from_slice` on the same bytes (the
//!   floor: plain serde, no I/O).
//!
//! Then the peak heap of one 10 MB call of `get_json`, reqwest's `json` and
//! `from_slice`, counted by a global allocator (`peak_alloc`: it grows a block
//! by allocating the new one and copying, so the old and new count together,
//! as with any allocator that cannot grow in place).
//!
//! `cargo bench --bench decode`; one size only: `cargo bench --bench decode -- 10MB`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

mod common;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Throughput, criterion_group, criterion_main};
use peak_alloc::PeakAlloc;
use resilient_http::ApiClient;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

/// Counts live heap bytes and keeps their high-water mark (process-wide: the
/// server thread's allocations count too, and are small beside the body).
#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer_id: u64,
    email: String,
    status: Status,
    created_at: String,
    currency: String,
    total_cents: i64,
    shipping: Address,
    items: Vec<LineItem>,
    tags: Vec<String>,
    note: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Pending,
    Paid,
    Shipped,
    Cancelled,
}

#[derive(Debug, Serialize, Deserialize)]
struct Address {
    street: String,
    city: String,
    postcode: String,
    country: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct LineItem {
    sku: String,
    name: String,
    quantity: u32,
    unit_price_cents: i64,
}

/// Order `i`: deterministic, varied lengths, about 500 bytes of JSON.
fn order(i: u64) -> Order {
    const CITIES: [&str; 4] = ["Lyon", "Rotterdam", "Porto", "Kraków"];
    const PRODUCTS: [&str; 5] = [
        "USB-C cable, 2 m",
        "Mechanical keyboard (ISO layout)",
        "Monitor arm",
        "Laptop stand, aluminium",
        "Noise-cancelling headphones",
    ];
    let items = (0..=i % 3)
        .map(|k| LineItem {
            sku: format!("SKU-{:06}", (i * 7 + k) % 1_000_000),
            name: PRODUCTS[usize::try_from((i + k) % 5).unwrap()].to_owned(),
            quantity: u32::try_from(1 + (i + k) % 4).unwrap(),
            unit_price_cents: i64::try_from(499 + (i * 31 + k * 17) % 20_000).unwrap(),
        })
        .collect::<Vec<_>>();
    Order {
        id: 1_000_000 + i,
        customer_id: 50_000 + i % 9_973,
        email: format!("customer.{}@example.com", i % 9_973),
        status: [
            Status::Pending,
            Status::Paid,
            Status::Shipped,
            Status::Cancelled,
        ]
        .into_iter()
        .nth(usize::try_from(i % 4).unwrap())
        .unwrap(),
        created_at: format!(
            "2026-{:02}-{:02}T{:02}:17:42Z",
            1 + i % 12,
            1 + i % 28,
            i % 24
        ),
        currency: "EUR".to_owned(),
        total_cents: items
            .iter()
            .map(|it| it.unit_price_cents * i64::from(it.quantity))
            .sum(),
        shipping: Address {
            street: format!("{} Rue de la République", 1 + i % 180),
            city: CITIES[usize::try_from(i % 4).unwrap()].to_owned(),
            postcode: format!("{:05}", 10_000 + i % 89_999),
            country: "FR".to_owned(),
        },
        items,
        tags: ["priority", "gift", "b2b"]
            .iter()
            .take(usize::try_from(i % 4).unwrap())
            .map(|t| (*t).to_owned())
            .collect(),
        note: i
            .is_multiple_of(5)
            .then(|| "Leave the parcel with the neighbour if nobody answers.".to_owned()),
    }
}

/// A JSON array of orders, as long as fits in `size` bytes (at least one).
fn body(size: usize) -> (Bytes, usize) {
    let mut out = b"[".to_vec();
    let mut count = 0;
    loop {
        let record = serde_json::to_vec(&order(count)).unwrap();
        if count > 0 && out.len() + record.len() + 2 > size {
            break;
        }
        if count > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&record);
        count += 1;
    }
    out.push(b']');
    (Bytes::from(out), usize::try_from(count).unwrap())
}

/// The bodies measured, by name. The same under `cargo test` (a debug
/// build, each bench once): the whole binary runs in about 4 s there.
const SIZES: [(&str, usize); 3] = [("1KB", 1_000), ("100KB", 100_000), ("10MB", 10_000_000)];

struct Subjects {
    api: ApiClient,
    raw: reqwest::Client,
    base: String,
}

impl Subjects {
    async fn get_json(&self, name: &str) -> Vec<Order> {
        self.api.get_json(format!("orders/{name}")).await.unwrap()
    }

    async fn reqwest_json(&self, name: &str) -> Vec<Order> {
        let resp = self
            .raw
            .get(format!("{}orders/{name}", self.base))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        resp.json().await.unwrap()
    }
}

fn runtime() -> Runtime {
    // As overhead.rs's multi_thread runtime: one worker, the server on its
    // own thread.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn decode(c: &mut criterion::Criterion) {
    let bodies: Vec<(&str, Bytes, usize)> = SIZES
        .into_iter()
        .map(|(name, size)| {
            let (bytes, count) = body(size);
            (name, bytes, count)
        })
        .collect();
    let addr = common::start_server_with(
        bodies
            .iter()
            .map(|(name, bytes, _)| (format!("/orders/{name}"), bytes.clone()))
            .collect(),
    );
    let base = format!("http://{addr}/");
    let rt = runtime();
    let subjects = rt.block_on(async {
        Subjects {
            // The default `max_response_bytes` (16 MiB) takes the 10 MB body.
            api: ApiClient::builder().base_url(&base).build().unwrap(),
            raw: common::reqwest_builder().tcp_nodelay(true).build().unwrap(),
            base: base.clone(),
        }
    });

    for (name, bytes, count) in &bodies {
        println!("decode/{name}: {} bytes, {count} records", bytes.len());
        // Every subject decodes the whole array (and opens its connection).
        rt.block_on(async {
            assert_eq!(subjects.get_json(name).await.len(), *count);
            assert_eq!(subjects.reqwest_json(name).await.len(), *count);
        });
        assert_eq!(
            serde_json::from_slice::<Vec<Order>>(bytes).unwrap().len(),
            *count
        );

        let mut group = c.benchmark_group(format!("decode/{name}"));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::from_parameter("api_get_json"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(subjects.get_json(name).await) });
        });
        group.bench_function(BenchmarkId::from_parameter("reqwest_json"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(subjects.reqwest_json(name).await) });
        });
        // Ours without the I/O: `ApiResponse::json` on a body already
        // received, beside `from_slice` on the same bytes.
        let received = rt.block_on(subjects.api.get(format!("orders/{name}")).send());
        let received = received.unwrap();
        group.bench_function(BenchmarkId::from_parameter("api_response_json"), |b| {
            b.iter(|| black_box(received.json::<Vec<Order>>().unwrap()));
        });
        drop(received);
        group.bench_function(BenchmarkId::from_parameter("serde_json_from_slice"), |b| {
            b.iter(|| black_box(serde_json::from_slice::<Vec<Order>>(black_box(bytes)).unwrap()));
        });
        group.finish();
    }

    // Peak heap of one call with the largest body, above what was live
    // before it (the server's copy of the body, the client's pool). For
    // `from_slice` the body it reads was already in memory, like the
    // server's; the two others receive theirs and hold it while decoding.
    let (name, bytes, _) = bodies.last().unwrap();
    println!(
        "decode/{name}: peak heap above the baseline, one call ({} bytes of body)",
        bytes.len()
    );
    let api = peak(|| rt.block_on(subjects.get_json(name)));
    let reqwest = peak(|| rt.block_on(subjects.reqwest_json(name)));
    let slice = peak(|| serde_json::from_slice::<Vec<Order>>(bytes).unwrap());
    for (subject, (peak, kept)) in [
        ("api_get_json", api),
        ("reqwest_json", reqwest),
        ("serde_json_from_slice", slice),
    ] {
        println!(
            "  {subject:<22} peak {:>7.2} MiB, of which the decoded value {:>6.2} MiB; peak / body {:.2}",
            mib(peak),
            mib(kept),
            mib(peak) / mib(bytes.len())
        );
    }
}

/// Bytes above the baseline: at the peak during `f`, and still held by its
/// result when it returns.
fn peak<T>(f: impl FnOnce() -> T) -> (usize, usize) {
    let baseline = HEAP.current_usage();
    HEAP.reset_peak_usage();
    let value = f();
    let kept = HEAP.current_usage().saturating_sub(baseline);
    let peak = HEAP.peak_usage().saturating_sub(baseline);
    drop(black_box(value));
    (peak, kept)
}

#[allow(clippy::cast_precision_loss)]
fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = decode
}
criterion_main!(benches);
