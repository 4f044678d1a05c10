//! A bounded fan-out of 100 calls under a rate limit and a concurrency limit,
//! printing the achieved rate and the peak number of requests in flight.
//!
//! Run with `cargo run --example limits`.

#![allow(clippy::print_stdout)] // an example prints what it does

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use resilient_http::{ApiClient, RateLimit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, peak) = slow_server(Duration::from_millis(40)).await?;
    let client = ApiClient::builder()
        .base_url(url)
        .rate_limit(RateLimit::per_second(200).burst(10))
        .max_concurrency(8)
        .build()?;

    let start = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..100 {
        let client = client.clone();
        calls.spawn(async move { client.get(format!("items/{i}")).send().await });
    }
    let mut ok = 0;
    while let Some(result) = calls.join_next().await {
        ok += usize::from(matches!(result, Ok(Ok(_))));
    }
    let elapsed = start.elapsed();

    println!("{ok}/100 calls succeeded in {} ms", elapsed.as_millis());
    println!(
        "achieved rate: {:.0} calls/s (limit 200/s, burst 10; 8 in flight x 40 ms also caps it at 200/s)",
        100.0 / elapsed.as_secs_f64()
    );
    println!(
        "peak in flight at the server: {} (max_concurrency 8)",
        peak.load(Ordering::SeqCst)
    );
    if ok != 100 || peak.load(Ordering::SeqCst) > 8 {
        return Err("expected 100 successes with at most 8 in flight".into());
    }
    Ok(())
}

/// A server on 127.0.0.1 that answers each request after `delay` and records
/// the peak number of requests in flight.
async fn slow_server(delay: Duration) -> std::io::Result<(String, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&peak);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (now, peak) = (Arc::clone(&now), Arc::clone(&seen));
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                loop {
                    // Read one request head, answer it, and keep the connection.
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    head.clear();
                    let inflight = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(inflight, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    if sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok((url, peak))
}
