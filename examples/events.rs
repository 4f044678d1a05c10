//! Server-sent events that survive dropped connections: a stub event server
//! on 127.0.0.1 drops the connection after every 3 events and resumes from
//! the `Last-Event-ID` each reconnect sends; after the last event it answers
//! `204 No Content`, which ends the stream.
//!
//! Run with `cargo run --example events`. It needs no network, and exits
//! non-zero unless every event arrived once, in order.

#![allow(clippy::print_stdout)] // an example prints what it does

use std::time::Duration;

use resilient_http::{ApiClient, RetryPolicy};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Events the server has to give.
const TOTAL: u64 = 10;
/// Events sent on one connection before it is dropped.
const PER_CONNECTION: u64 = 3;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(serve(listener));

    let client = ApiClient::builder()
        .base_url(&base)
        // The idle limit of the stream: a silent server is a dropped one.
        .read_timeout(Duration::from_secs(5))
        .retry(
            RetryPolicy::exponential()
                .max_attempts(3)
                .initial_backoff(Duration::from_millis(20)),
        )
        .build()?;

    let mut events = client.get("ticks").send_events().await?;
    let mut seen = Vec::new();
    while let Some(event) = events.next_event().await {
        let event = event?;
        println!(
            "event {:>2}  type={}  data={:?}",
            event.id().unwrap_or("-"),
            event.event_type(),
            event.data()
        );
        seen.push(event.into_data());
    }
    println!(
        "{} events over {} reconnects; the server ended the stream with a 204",
        events.events_read(),
        events.reconnects()
    );

    let expected: Vec<String> = (0..TOTAL).map(|i| format!("tick {i}")).collect();
    if seen != expected {
        return Err(format!("expected every event once, in order; got {seen:?}").into());
    }
    // 4 drops (after events 2, 5, 8 and 9), the last reconnect getting the 204.
    if events.reconnects() != 4 {
        return Err(format!("expected 4 reconnects, made {}", events.reconnects()).into());
    }
    Ok(())
}

/// The stub event server: one task per connection, at most 16 connections.
async fn serve(listener: TcpListener) {
    for _ in 0..16 {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let _ = answer(stream).await;
        });
    }
}

async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let resume = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("last-event-id"))
        .and_then(|(_, id)| id.trim().parse::<u64>().ok())
        .map_or(0, |id| id + 1);
    if resume >= TOTAL {
        stream
            .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
            .await?;
        return Ok(());
    }
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
              transfer-encoding: chunked\r\n\r\n",
        )
        .await?;
    // A comment first (a keep-alive, ignored), then the events.
    write_chunk(&mut stream, b": welcome\n\n").await?;
    for id in resume..(resume + PER_CONNECTION).min(TOTAL) {
        let event = format!("id: {id}\nevent: tick\ndata: tick {id}\n\n");
        write_chunk(&mut stream, event.as_bytes()).await?;
    }
    // Half an event, then the connection drops (no terminal chunk): the
    // client discards the half and reconnects with the last whole event's id.
    write_chunk(&mut stream, b"id: 999\ndata: half").await?;
    Ok(())
}

async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    stream
        .write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    stream.write_all(data).await?;
    stream.write_all(b"\r\n").await?;
    stream.flush().await
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        head.push(stream.read_u8().await?);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}
