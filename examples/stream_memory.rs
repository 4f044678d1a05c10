//! Streams a large JSON array of ~1 KiB records from a local server and
//! reports the peak heap above the baseline and the decode throughput, then
//! the same body buffered and decoded whole with `serde_json::from_slice`.
//!
//! ```text
//! cargo run --release --example stream_memory            # 200 MB
//! cargo run --release --example stream_memory -- 50      # 50 MB
//! ```
// Figures for a report: float division of byte counts is fine here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss
)]

use std::alloc::System;
use std::time::{Duration, Instant};

use resilient_http::ApiClient;
use serde::Deserialize;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes of the whole process (allocated minus freed).
fn live_heap() -> usize {
    let stats = GLOBAL.stats();
    stats
        .bytes_allocated
        .saturating_sub(stats.bytes_deallocated)
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Record {
    id: u64,
    name: String,
    payload: String,
}

/// One record of about 1 KiB.
fn record(id: u64) -> String {
    let name = format!("record-{id}");
    let pad = 1000 - name.len();
    format!(
        r#"{{"id":{id},"name":"{name}","payload":"{}"}}"#,
        "p".repeat(pad)
    )
}

/// Serves a chunked top-level array of about `total` bytes on 127.0.0.1,
/// generated 64 KiB at a time.
async fn server(total: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let mut chunk = String::from("[");
                let mut sent = 0;
                let mut id = 0;
                loop {
                    if id > 0 {
                        chunk.push(',');
                    }
                    chunk.push_str(&record(id));
                    id += 1;
                    let last = sent + chunk.len() >= total;
                    if last {
                        chunk.push(']');
                    }
                    if chunk.len() >= 64 * 1024 || last {
                        sent += chunk.len();
                        let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                        if stream.write_all(framed.as_bytes()).await.is_err() {
                            return;
                        }
                        chunk.clear();
                    }
                    if last {
                        break;
                    }
                }
                let _ = stream.write_all(b"0\r\n\r\n").await;
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    format!("http://{addr}/")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> resilient_http::Result<()> {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let total = mb * 1_000_000;
    let uri = server(total).await;
    let client = ApiClient::builder()
        .base_url(&uri)
        .total_timeout(Duration::from_secs(600))
        .max_response_bytes(total + (1 << 20))
        .build()?;

    // Streamed: one record at a time.
    let baseline = live_heap();
    let mut peak = baseline;
    let started = Instant::now();
    let mut records = client
        .get("export")
        .send_stream()
        .await?
        .json_array::<Record>();
    let mut count = 0u64;
    while let Some(record) = records.next_item().await {
        let record = record?;
        assert_eq!(record.id, count);
        count += 1;
        peak = peak.max(live_heap());
    }
    drop(records);
    let streamed = started.elapsed();
    println!(
        "json_array: {count} records, {mb} MB in {streamed:.2?} ({:.0} MB/s), peak heap {:.2} MiB above the baseline",
        mb as f64 / streamed.as_secs_f64(),
        peak.saturating_sub(baseline) as f64 / f64::from(1 << 20)
    );

    // Buffered: the whole body, then serde_json::from_slice over it.
    let baseline = live_heap();
    let started = Instant::now();
    let body = client.get("export").send().await?.into_bytes();
    let read = started.elapsed();
    let decode_started = Instant::now();
    let all: Vec<Record> = serde_json::from_slice(&body).expect("valid JSON");
    let decoded = decode_started.elapsed();
    let held = live_heap().saturating_sub(baseline);
    let buffered = started.elapsed();
    println!(
        "buffered + from_slice: {} records in {buffered:.2?} ({:.0} MB/s; read {read:.2?}, decode {decoded:.2?} = {:.0} MB/s), heap held {:.0} MiB",
        all.len(),
        mb as f64 / buffered.as_secs_f64(),
        mb as f64 / decoded.as_secs_f64(),
        held as f64 / f64::from(1 << 20)
    );
    Ok(())
}
