//! Measures the two streaming directions added beside the item streams:
//! reading server-sent events (`send_events`) and sending a streamed request
//! body (`body_stream`), each over `MB` megabytes on 127.0.0.1, reporting
//! throughput and the peak heap above the baseline.
//!
//! ```text
//! cargo run --release --example event_upload_memory            # 200 MB each
//! cargo run --release --example event_upload_memory -- 50      # 50 MB each
//! ```
// Figures for a report: float division of byte counts is fine here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss
)]

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use resilient_http::{ApiClient, Bytes};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes of the whole process (allocated minus freed).
fn live_heap() -> usize {
    let stats = GLOBAL.stats();
    stats
        .bytes_allocated
        .saturating_sub(stats.bytes_deallocated)
}

/// Sampled by the body stream as the transport pulls each chunk.
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn sample() {
    PEAK.fetch_max(live_heap(), Ordering::Relaxed);
}

/// One event of about 1 KiB.
fn event(id: u64) -> String {
    format!("id: {id}\ndata: {}\n\n", "e".repeat(1000))
}

/// GET: a chunked event stream of about `total` bytes, generated 64 KiB at a
/// time, then a clean end. PUT: drains a chunked body and answers its size.
async fn server(total: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut reader = BufReader::new(&mut stream);
                let mut head = String::new();
                while !head.ends_with("\r\n\r\n") {
                    if reader.read_line(&mut head).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                if head.starts_with("PUT") {
                    let mut size = 0usize;
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).await.unwrap();
                        let len = usize::from_str_radix(line.trim(), 16).unwrap();
                        let mut chunk = vec![0u8; len + 2];
                        reader.read_exact(&mut chunk).await.unwrap();
                        if len == 0 {
                            break;
                        }
                        size += len;
                    }
                    let body = size.to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    return;
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                          transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                    )
                    .await;
                let mut chunk = String::new();
                let mut sent = 0;
                let mut id = 0;
                while sent < total {
                    chunk.push_str(&event(id));
                    id += 1;
                    if chunk.len() >= 64 * 1024 {
                        sent += chunk.len();
                        let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                        if stream.write_all(framed.as_bytes()).await.is_err() {
                            return;
                        }
                        chunk.clear();
                    }
                }
                // A last event that tells the client to stop.
                let framed = format!(
                    "{:x}\r\n{chunk}event: end\ndata: .\n\n\r\n",
                    chunk.len() + 20
                );
                let _ = stream.write_all(framed.as_bytes()).await;
                let _ = stream.write_all(b"0\r\n\r\n").await;
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
        .read_timeout(Duration::from_secs(30))
        .total_timeout(Duration::from_secs(600))
        .build()?;

    // Server-sent events, one at a time.
    let baseline = live_heap();
    let mut peak = baseline;
    let started = Instant::now();
    let mut events = client.get("events").send_events().await?;
    let (mut count, mut bytes) = (0u64, 0usize);
    while let Some(event) = events.next_event().await {
        let event = event?;
        if event.event_type() == "end" {
            break;
        }
        assert_eq!(event.id(), Some(count.to_string().as_str()));
        bytes += event.data().len();
        count += 1;
        peak = peak.max(live_heap());
    }
    drop(events);
    let elapsed = started.elapsed();
    println!(
        "send_events: {count} events, {:.0} MB of data in {elapsed:.2?} ({:.0} MB/s, {:.0}k events/s), peak heap {:.2} MiB above the baseline",
        bytes as f64 / 1e6,
        mb as f64 / elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64() / 1000.0,
        peak.saturating_sub(baseline) as f64 / f64::from(1 << 20)
    );

    // A streamed upload through a 1 MiB replay buffer, 64 KiB chunks made
    // as they are pulled.
    // The event stream's connection task ends (and frees its read buffer)
    // on its own time: let it, or the baseline counts memory freed later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let chunks = total.div_ceil(chunk.len());
    let baseline = live_heap();
    PEAK.store(baseline, Ordering::Relaxed);
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let source = futures_util::stream::iter((0..chunks).map(move |_| {
        sample();
        counter.fetch_add(1, Ordering::Relaxed);
        // A fresh copy each time, as a reader filling buffers would make.
        Ok::<_, std::io::Error>(Bytes::copy_from_slice(&chunk))
    }));
    let started = Instant::now();
    let resp = client
        .put("upload")
        .body_stream(source, 1 << 20)
        .send()
        .await?;
    let elapsed = started.elapsed();
    sample();
    let stored: usize = resp.text()?.parse().unwrap_or(0);
    assert_eq!(stored, chunks * 64 * 1024);
    println!(
        "body_stream: {:.0} MB in {} chunks in {elapsed:.2?} ({:.0} MB/s), peak heap {:.2} MiB above the baseline (replay buffer 1 MiB)",
        stored as f64 / 1e6,
        pulled.load(Ordering::Relaxed),
        stored as f64 / 1e6 / elapsed.as_secs_f64(),
        PEAK.load(Ordering::Relaxed).saturating_sub(baseline) as f64 / f64::from(1 << 20)
    );
    Ok(())
}
