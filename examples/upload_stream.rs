//! A streamed upload with a bounded replay buffer: a stub server on
//! 127.0.0.1 drops the first upload midway; the client replays what it had
//! sent from its 1 MiB buffer and goes on with the rest of the stream, and
//! the server gets the whole body once. Then an upload larger than its
//! buffer meets a 503: it is not retried, and the error says why.
//!
//! Run with `cargo run --example upload_stream`. It needs no network, and
//! exits non-zero unless both outcomes are the ones shown.

#![allow(clippy::print_stdout)] // an example prints what it does

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use resilient_http::{ApiClient, Bytes, RetryPolicy, StatusCode};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The chunks of a body: `count` chunks of 16 KiB, produced one at a time
/// (as a file or a generator would), a little apart.
fn chunks(count: usize) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::iter(0..count).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let letter = b'a' + u8::try_from(i % 26).unwrap_or(0);
        Ok(Bytes::from(vec![letter; 16 * 1024]))
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/", listener.local_addr()?);
    let connections = Arc::new(AtomicUsize::new(0));
    tokio::spawn(serve(listener, Arc::clone(&connections)));

    let client = ApiClient::builder()
        .base_url(&base)
        .retry(
            RetryPolicy::exponential()
                .max_attempts(3)
                .initial_backoff(Duration::from_millis(10)),
        )
        .build()?;

    // 1. 256 KiB through a 1 MiB replay buffer: the drop is survivable.
    let resp = client
        .put("files/report.bin")
        .body_stream(chunks(16), 1 << 20)
        .send()
        .await?;
    println!(
        "upload 1: {} after {} attempts; the server stored {}",
        resp.status(),
        resp.attempts(),
        resp.text()?
    );
    if resp.attempts() != 2 || resp.text()? != "262144 bytes" {
        return Err("expected the second attempt to deliver the whole body".into());
    }

    // 2. 4 MiB through a 256 KiB buffer, answered 503: not retried.
    let outcome = client
        .put("files/busy.bin")
        .body_stream(chunks(256), 256 * 1024)
        .send()
        .await;
    let Err(err) = outcome else {
        return Err("expected the server's 503".into());
    };
    println!("upload 2: {err}");
    let said_why = err
        .to_string()
        .contains("streamed past its 262144-byte replay buffer");
    if err.status() != Some(StatusCode::SERVICE_UNAVAILABLE) || err.attempts() != 1 || !said_why {
        return Err("expected one attempt and an error naming the replay buffer".into());
    }
    println!(
        "the server saw {} connections",
        connections.load(Ordering::SeqCst)
    );
    Ok(())
}

/// The stub: the first connection is dropped after 20 KiB of body; uploads
/// to `busy` get a 503 once their body is read; others a 200 naming the size.
async fn serve(listener: TcpListener, connections: Arc<AtomicUsize>) {
    for _ in 0..16 {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let n = connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _ = answer(stream, n).await;
        });
    }
}

async fn answer(mut stream: TcpStream, n: usize) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut stream);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") && head.len() < 64 * 1024 {
        if reader.read_line(&mut head).await? == 0 {
            return Ok(());
        }
    }
    if n == 0 {
        let mut some = vec![0u8; 20 * 1024];
        reader.read_exact(&mut some).await?;
        return Ok(()); // dropped midway
    }
    let mut size = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let len = usize::from_str_radix(line.trim(), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        let mut chunk = vec![0u8; len + 2];
        reader.read_exact(&mut chunk).await?;
        if len == 0 {
            break;
        }
        size += len;
    }
    let answer = if head.starts_with("PUT /files/busy") {
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            .to_owned()
    } else {
        let body = format!("{size} bytes");
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    stream.write_all(answer.as_bytes()).await?;
    stream.flush().await
}
