//! Typed item streams over `send_stream()`: newline-delimited JSON and the
//! items of a top-level JSON array, fed at hostile chunk boundaries, cut,
//! stalled, oversized and malformed; and the heap they hold while a large
//! array streams through.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::System;
use std::time::Duration;

use resilient_http::{ApiClient, Error, ErrorKind, ErrorReason};
use serde::Deserialize;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::io::AsyncWriteExt as _;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[derive(Debug, Deserialize, PartialEq)]
struct Row {
    id: u64,
    name: String,
}

const CHUNKED_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";

/// Writes `data` as one HTTP/1.1 chunk and flushes it.
async fn write_chunk(stream: &mut tokio::net::TcpStream, data: &[u8]) -> std::io::Result<()> {
    stream
        .write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    stream.write_all(data).await?;
    stream.write_all(b"\r\n").await?;
    stream.flush().await
}

/// How a [`chunked_server`] ends its body after the pieces.
#[derive(Clone, Copy)]
enum End {
    /// The terminal chunk: a complete body.
    Complete,
    /// Closes the connection without the terminal chunk.
    Cut,
    /// Holds the connection open and sends nothing more.
    Stall,
}

/// A server that answers every request with `pieces`, one HTTP chunk each.
async fn chunked_server(pieces: Vec<Vec<u8>>, end: End) -> String {
    let pieces = std::sync::Arc::new(pieces);
    common::raw_server(move |mut stream| {
        let pieces = std::sync::Arc::clone(&pieces);
        async move {
            if stream.write_all(CHUNKED_HEAD).await.is_err() {
                return;
            }
            for piece in pieces.iter() {
                if write_chunk(&mut stream, piece).await.is_err() {
                    return;
                }
            }
            match end {
                End::Complete => {
                    let _ = stream.write_all(b"0\r\n\r\n").await;
                    common::until_peer_closes(stream).await;
                }
                End::Cut => drop(stream),
                End::Stall => common::until_peer_closes(stream).await,
            }
        }
    })
    .await
}

fn bytes_each(body: &[u8]) -> Vec<Vec<u8>> {
    body.iter().map(|b| vec![*b]).collect()
}

fn client(uri: &str) -> ApiClient {
    common::fast_builder(uri).build().unwrap()
}

async fn collect_array<T: serde::de::DeserializeOwned>(uri: &str) -> (Vec<T>, Option<Error>) {
    let mut items = client(uri)
        .get("export")
        .send_stream()
        .await
        .unwrap()
        .json_array::<T>();
    drain(&mut items).await
}

async fn drain<S, T>(items: &mut S) -> (Vec<T>, Option<Error>)
where
    S: futures_core::Stream<Item = Result<T, Error>> + Unpin,
{
    let mut got = Vec::new();
    loop {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut *items).poll_next(cx)).await {
            None => return (got, None),
            Some(Ok(item)) => got.push(item),
            Some(Err(e)) => {
                // After an error the stream ends.
                let after =
                    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *items).poll_next(cx)).await;
                assert!(after.is_none(), "the stream ends after an error");
                return (got, Some(e));
            }
        }
    }
}

/// A body that tries every trap of the scanner: nesting, strings with
/// brackets, commas, quotes and backslashes, scalars, an empty array.
const HOSTILE: &str = r#" [ {"a":[1,[2,{"b":"]"}]],"s":"x,\"]}{[\\"} ,
  "str,]\\\"" ,-12.5e3,true ,null, [] ,{},[[]],"\u005d" ,{"k":"\\"}
] "#;

fn hostile_values() -> Vec<serde_json::Value> {
    serde_json::from_str(HOSTILE).unwrap()
}

#[tokio::test]
async fn ndjson_lines_are_items_blank_lines_skipped_crlf_accepted() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string(
            "{\"id\":1,\"name\":\"a\"}\n\n  \r\n{\"id\":2,\"name\":\"b\\n\"}\r\n{\"id\":3,\"name\":\"c\"}",
        ))
        .mount(&server)
        .await;
    let mut rows = common::client_for(&server)
        .get("export.ndjson")
        .send_stream()
        .await
        .unwrap()
        .json_lines::<Row>();
    let mut ids = Vec::new();
    while let Some(row) = rows.next_item().await {
        ids.push(row.unwrap().id);
    }
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(rows.items_read(), 3);
}

#[tokio::test]
async fn ndjson_split_at_every_byte() {
    let body =
        b"{\"id\":1,\"name\":\"a\\n\"}\r\n\n{\"id\":2,\"name\":\"\"}\n{\"id\":3,\"name\":\"z\"}\n";
    let uri = chunked_server(bytes_each(body), End::Complete).await;
    let mut rows = client(&uri)
        .get("x")
        .send_stream()
        .await
        .unwrap()
        .json_lines::<Row>();
    let (got, err) = drain(&mut rows).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(got[0].name, "a\n");
}

#[tokio::test]
async fn array_items_with_one_byte_per_chunk() {
    let uri = chunked_server(bytes_each(HOSTILE.as_bytes()), End::Complete).await;
    let (got, err) = collect_array::<serde_json::Value>(&uri).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, hostile_values());
}

#[tokio::test]
async fn array_items_split_in_two_at_every_position() {
    let body = HOSTILE.as_bytes();
    for cut in 0..=body.len() {
        let pieces = vec![body[..cut].to_vec(), body[cut..].to_vec()]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        let uri = chunked_server(pieces, End::Complete).await;
        let (got, err) = collect_array::<serde_json::Value>(&uri).await;
        assert!(err.is_none(), "cut at {cut}: {err:?}");
        assert_eq!(got, hostile_values(), "cut at {cut}");
    }
}

#[tokio::test]
async fn an_empty_array_has_no_items() {
    for body in ["[]", " [ \n ] \n", "[\n]"] {
        let uri = chunked_server(bytes_each(body.as_bytes()), End::Complete).await;
        let (got, err) = collect_array::<serde_json::Value>(&uri).await;
        assert!(err.is_none(), "{body:?}: {err:?}");
        assert!(got.is_empty());
    }
}

#[tokio::test]
async fn a_cut_between_items_delivers_the_items_before_then_a_classified_error() {
    let uri = chunked_server(
        vec![br#"[{"id":1,"name":"a"},{"id":2,"name":"b"}"#.to_vec()],
        End::Cut,
    )
    .await;
    let (got, err) = collect_array::<Row>(&uri).await;
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
    let err = err.expect("the cut is an error");
    assert_eq!(err.kind(), ErrorKind::Retryable, "{err}");
    assert_eq!(err.reason(), ErrorReason::Truncated, "{err}");
}

#[tokio::test]
async fn a_cut_mid_item_delivers_the_items_before_then_a_classified_error() {
    let uri = chunked_server(
        vec![
            br#"{"id":1,"name":"a"}"#.to_vec(),
            b"\n{\"id\":2,\"na".to_vec(),
        ],
        End::Cut,
    )
    .await;
    let mut rows = client(&uri)
        .get("x")
        .send_stream()
        .await
        .unwrap()
        .json_lines::<Row>();
    let (got, err) = drain(&mut rows).await;
    assert_eq!(got.len(), 1);
    let err = err.expect("the cut is an error");
    assert_eq!(err.reason(), ErrorReason::Truncated, "{err}");
}

#[tokio::test]
async fn a_complete_body_that_ends_mid_item_is_a_decode_error_naming_index_and_offset() {
    // The transport saw a complete body; the array did not close.
    let uri = chunked_server(
        vec![br#"[{"id":1,"name":"a"}, {"id":2,"#.to_vec()],
        End::Complete,
    )
    .await;
    let (got, err) = collect_array::<Row>(&uri).await;
    assert_eq!(got.len(), 1);
    let err = err.expect("an unfinished array is an error");
    assert_eq!(err.kind(), ErrorKind::Decode);
    let text = err.to_string();
    assert!(text.contains("item 1 at byte 22"), "{text}");
}

#[tokio::test]
async fn an_item_over_the_limit_is_a_decode_error() {
    let big = format!(r#"{{"id":2,"name":"{}"}}"#, "x".repeat(300));
    let body = format!(r#"[{{"id":1,"name":"a"}},{big}]"#);
    // Whole, and one byte at a time (the limit is met before the item ends).
    for pieces in [vec![body.clone().into_bytes()], bytes_each(body.as_bytes())] {
        let uri = chunked_server(pieces, End::Complete).await;
        let mut rows = client(&uri)
            .get("x")
            .send_stream()
            .await
            .unwrap()
            .json_array::<Row>()
            .max_item_bytes(100);
        let (got, err) = drain(&mut rows).await;
        assert_eq!(got.len(), 1);
        let err = err.expect("over the limit");
        assert_eq!(err.kind(), ErrorKind::Decode);
        let text = err.to_string();
        assert!(text.contains("item 1 at byte 21"), "{text}");
        assert!(text.contains("100-byte limit"), "{text}");
        assert!(!text.contains("xxx"), "no body text: {text}");
    }
}

#[tokio::test]
async fn the_default_item_limit_is_max_response_bytes() {
    let body = format!("{{\"id\":1,\"name\":\"{}\"}}\n", "y".repeat(500));
    let uri = chunked_server(vec![body.into_bytes()], End::Complete).await;
    let client = common::fast_builder(&uri)
        .max_response_bytes(200)
        .build()
        .unwrap();
    let mut rows = client
        .get("x")
        .send_stream()
        .await
        .unwrap()
        .json_lines::<Row>();
    let (got, err) = drain(&mut rows).await;
    assert!(got.is_empty());
    let err = err.expect("over the limit");
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(err.to_string().contains("item 0 at byte 0"), "{err}");
}

#[tokio::test]
async fn a_syntax_error_names_the_item_index_and_offset_not_the_body() {
    let body = br#"[{"id":1,"name":"a"},{"id":2,"name":"b"},{"id":3,"name":secret}]"#;
    let uri = chunked_server(vec![body.to_vec()], End::Complete).await;
    let (got, err) = collect_array::<Row>(&uri).await;
    assert_eq!(got.len(), 2);
    let err = err.expect("a syntax error");
    assert_eq!(err.kind(), ErrorKind::Decode);
    let text = err.to_string();
    assert!(text.contains("item 2 at byte 41"), "{text}");
    assert!(!text.contains("secret"), "no body text: {text}");

    // A type error, too (serde's own message would quote the value).
    let body = b"{\"id\":1,\"name\":\"a\"}\n{\"id\":\"secret\",\"name\":\"b\"}\n";
    let uri = chunked_server(vec![body.to_vec()], End::Complete).await;
    let mut rows = client(&uri)
        .get("x")
        .send_stream()
        .await
        .unwrap()
        .json_lines::<Row>();
    let (got, err) = drain(&mut rows).await;
    assert_eq!(got.len(), 1);
    let text = err.expect("a type error").to_string();
    assert!(text.contains("item 1 at byte 20"), "{text}");
    assert!(!text.contains("secret"), "no body text: {text}");
}

#[tokio::test]
async fn framing_errors_are_decode_errors() {
    for (body, needle) in [
        (&br#"{"id":1}"#[..], "item 0 at byte 0"),
        (&br"[1,,2]"[..], "item 1 at byte 3"),
        (&br"[1 2]"[..], "item 1 at byte 3"),
        (&br"[1] x"[..], "item 1 at byte 4"),
        (&br"[1"[..], "item 0 at byte 1"),
    ] {
        let uri = chunked_server(vec![body.to_vec()], End::Complete).await;
        let (_, err) = collect_array::<u32>(&uri).await;
        let err = err.expect("a framing error");
        assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
        assert!(err.to_string().contains(needle), "{body:?}: {err}");
    }
}

#[tokio::test]
async fn a_stalled_stream_hits_read_timeout() {
    let uri = chunked_server(vec![br#"[{"id":1,"name":"a"},"#.to_vec()], End::Stall).await;
    let client = common::fast_builder(&uri)
        .read_timeout(Duration::from_millis(200))
        .total_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut rows = client
        .get("x")
        .send_stream()
        .await
        .unwrap()
        .json_array::<Row>();
    let (got, err) = drain(&mut rows).await;
    assert_eq!(got.len(), 1);
    let err = err.expect("the stall is an error");
    assert!(err.is_timeout(), "{err:?}");
}

#[tokio::test]
async fn a_reader_slower_than_the_body_still_stops_at_the_total_deadline() {
    // The body is always ready (200 pieces sent at once); the reader takes
    // 20 ms a piece, so without the deadline it would read for 4 s.
    let piece = br#"{"id":1,"name":"a"},"#.to_vec();
    let uri = chunked_server(vec![piece; 200], End::Complete).await;
    let started = std::time::Instant::now();
    let mut body = client(&uri)
        .get("x")
        .timeout(Duration::from_millis(300))
        .send_stream()
        .await
        .unwrap();
    let mut pieces = 0;
    let err = loop {
        match body.chunk().await {
            Ok(Some(_)) => pieces += 1,
            Ok(None) => panic!("read all {pieces} pieces past the deadline"),
            Err(err) => break err,
        }
        // A slow consumer, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(err.is_timeout(), "{err:?}");
    assert!(pieces < 200, "{pieces}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_read_timeout_of_duration_max_means_no_idle_limit() {
    let uri = chunked_server(bytes_each(br#"[{"id":1,"name":"a"}]"#), End::Complete).await;
    let client = common::fast_builder(&uri)
        .read_timeout(Duration::MAX)
        .build()
        .unwrap();
    let mut rows = client
        .get("x")
        .send_stream()
        .await
        .unwrap()
        .json_array::<Row>();
    let (got, err) = drain(&mut rows).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        got,
        vec![Row {
            id: 1,
            name: "a".into()
        }]
    );
}

// ------------------------------------------------------------ memory

/// Live heap bytes of the whole process (allocated minus freed).
fn live_heap() -> usize {
    let stats = GLOBAL.stats();
    stats
        .bytes_allocated
        .saturating_sub(stats.bytes_deallocated)
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

/// A server streaming a top-level array of `total` bytes of ~1 KiB records,
/// generated chunk by chunk (never whole).
async fn large_array_server(total: usize) -> String {
    common::raw_server(move |mut stream| async move {
        if stream.write_all(CHUNKED_HEAD).await.is_err() {
            return;
        }
        let mut chunk = String::from("[");
        let mut sent = 0;
        let mut id = 0;
        while sent < total {
            if id > 0 {
                chunk.push(',');
            }
            chunk.push_str(&record(id));
            id += 1;
            if chunk.len() >= 64 * 1024 {
                sent += chunk.len();
                if write_chunk(&mut stream, chunk.as_bytes()).await.is_err() {
                    return;
                }
                chunk.clear();
            }
        }
        chunk.push(']');
        let _ = write_chunk(&mut stream, chunk.as_bytes()).await;
        let _ = stream.write_all(b"0\r\n\r\n").await;
        common::until_peer_closes(stream).await;
    })
    .await
}

#[derive(Deserialize)]
struct Record {
    id: u64,
    #[allow(dead_code)]
    name: String,
    payload: String,
}

#[tokio::test]
async fn a_large_array_streams_in_memory_bounded_by_the_item() {
    // 32 MiB in a debug test; the 200 MB figure is measured by
    // `cargo run --release --example stream_memory`.
    const TOTAL: usize = 32 << 20;
    const BUDGET: usize = 16 << 20;
    let uri = large_array_server(TOTAL).await;
    let client = common::fast_builder(&uri)
        .total_timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let baseline = live_heap();
    let mut peak = baseline;
    let mut records = client
        .get("export")
        .send_stream()
        .await
        .unwrap()
        .json_array::<Record>();
    let mut count = 0u64;
    let mut bytes = 0usize;
    while let Some(record) = records.next_item().await {
        let record = record.unwrap();
        assert_eq!(record.id, count);
        bytes += record.payload.len();
        count += 1;
        peak = peak.max(live_heap());
    }
    assert!(bytes >= TOTAL * 9 / 10, "read {bytes} payload bytes");
    let above = peak.saturating_sub(baseline);
    assert!(
        above < BUDGET,
        "peak heap {} KiB above the baseline over {count} items",
        above / 1024
    );
}

// ------------------------------------------------------------ server-sent events

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
/// As [`SSE_HEAD`], for a connection that is not kept open after the body.
const SSE_HEAD_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
    transfer-encoding: chunked\r\nconnection: close\r\n\r\n";

/// An answer with no body that closes its connection.
async fn answer_status(stream: &mut tokio::net::TcpStream, status: &str) {
    let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.flush().await;
}

/// An event stream request's heads, as the server saw them, in order.
type Heads = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

fn heads() -> Heads {
    Heads::default()
}

/// A raw server (see `common::raw_server_with_head`) that records every
/// request head it gets, and those heads.
async fn logged_server<F, Fut>(script: F) -> (String, Heads)
where
    F: Fn(usize, String, tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let seen = heads();
    let log = std::sync::Arc::clone(&seen);
    let uri = common::raw_server_with_head(move |n, head, stream| {
        log.lock().unwrap().push(head.clone());
        script(n, head, stream)
    })
    .await;
    (uri, seen)
}

fn last_event_ids(heads: &Heads) -> Vec<Option<String>> {
    heads
        .lock()
        .unwrap()
        .iter()
        .map(|h| common::head_value(h, "last-event-id").map(str::to_owned))
        .collect()
}

/// A client that reconnects at once (1 ms backoff, no budget to run out).
fn sse_client(uri: &str) -> ApiClient {
    common::fast_builder(uri)
        .retry(common::fast_retry(3))
        .build()
        .unwrap()
}

async fn collect_events(
    events: &mut resilient_http::EventStream,
) -> (Vec<resilient_http::SseEvent>, Option<Error>) {
    drain(events).await
}

#[tokio::test]
async fn sse_a_server_that_drops_every_3_events_is_resumed_with_last_event_id() {
    const TOTAL: usize = 10;
    let (uri, seen) = logged_server(move |_, head, mut stream| {
        async move {
            let resume = common::head_value(&head, "last-event-id")
                .map_or(0, |id| id.parse::<usize>().unwrap() + 1);
            if resume >= TOTAL {
                answer_status(&mut stream, "204 No Content").await;
                return;
            }
            if stream.write_all(SSE_HEAD).await.is_err() {
                return;
            }
            for i in resume..(resume + 3).min(TOTAL) {
                // Each event split in two chunks, the second with the
                // start of a half event that the drop cuts.
                let event = format!("id: {i}\nevent: tick\ndata: event {i}\n");
                if write_chunk(&mut stream, event.as_bytes()).await.is_err() {
                    return;
                }
                if write_chunk(&mut stream, b"\n").await.is_err() {
                    return;
                }
            }
            let _ = write_chunk(&mut stream, b"id: 99\ndata: never dispatch").await;
            drop(stream); // no terminal chunk: the connection drops
        }
    })
    .await;
    let mut events = sse_client(&uri).get("events").send_events().await.unwrap();
    let (got, err) = collect_events(&mut events).await;
    assert!(err.is_none(), "{err:?}");
    let data: Vec<_> = got.iter().map(resilient_http::SseEvent::data).collect();
    let expected: Vec<_> = (0..TOTAL).map(|i| format!("event {i}")).collect();
    assert_eq!(data, expected, "every event once, in order");
    assert!(got.iter().all(|e| e.event_type() == "tick"));
    // The first request has no Last-Event-ID; each reconnect names the last
    // event delivered (never the cut one), and the last gets a 204.
    let ids = last_event_ids(&seen);
    let want = [None, Some("2"), Some("5"), Some("8"), Some("9")];
    assert_eq!(ids, want.map(|id| id.map(str::to_owned)));
    let first = &seen.lock().unwrap()[0];
    assert_eq!(
        common::head_value(first, "accept"),
        Some("text/event-stream")
    );
    assert_eq!(common::head_value(first, "cache-control"), Some("no-cache"));
    assert_eq!(events.reconnects(), 4);
    assert_eq!(events.events_read(), TOTAL as u64);
}

#[tokio::test]
async fn sse_a_stalled_stream_hits_read_timeout_then_reconnects() {
    let (uri, seen) = logged_server(move |n, _, mut stream| {
        async move {
            match n {
                0 => {
                    let _ = stream.write_all(SSE_HEAD).await;
                    let _ = write_chunk(&mut stream, b"id: 1\ndata: before\n\n").await;
                    common::until_peer_closes(stream).await; // stalls
                }
                1 => {
                    let _ = stream.write_all(SSE_HEAD).await;
                    let _ = write_chunk(&mut stream, b"id: 2\ndata: after\n\n").await;
                    drop(stream);
                }
                _ => answer_status(&mut stream, "204 No Content").await,
            }
        }
    })
    .await;
    let client = common::fast_builder(&uri)
        .retry(common::fast_retry(3))
        .read_timeout(Duration::from_millis(300))
        // Longer than the stall: the event stream ignores it.
        .total_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let mut events = client.get("events").send_events().await.unwrap();
    let (got, err) = collect_events(&mut events).await;
    assert!(err.is_none(), "{err:?}");
    let data: Vec<_> = got.iter().map(resilient_http::SseEvent::data).collect();
    assert_eq!(data, ["before", "after"]);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let ids = last_event_ids(&seen);
    assert_eq!(ids[1].as_deref(), Some("1"));
    assert_eq!(ids[2].as_deref(), Some("2"));
}

#[tokio::test]
async fn sse_the_servers_retry_delay_is_honoured() {
    let ended = std::sync::Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    let gap = std::sync::Arc::new(std::sync::Mutex::new(None::<Duration>));
    let (ended2, gap2) = (std::sync::Arc::clone(&ended), std::sync::Arc::clone(&gap));
    let uri = common::raw_server_with_head(move |n, _, mut stream| {
        let (ended, gap) = (std::sync::Arc::clone(&ended2), std::sync::Arc::clone(&gap2));
        async move {
            if n == 0 {
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
                    transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                let _ = stream.write_all(head).await;
                let _ = write_chunk(&mut stream, b"retry: 400\nid: a\ndata: x\n\n").await;
                *ended.lock().unwrap() = Some(std::time::Instant::now());
                // A clean end of the body: the stream reconnects all the same.
                let _ = stream.write_all(b"0\r\n\r\n").await;
                drop(stream);
            } else {
                let at = ended.lock().unwrap().expect("the first answer ended");
                *gap.lock().unwrap() = Some(at.elapsed());
                answer_status(&mut stream, "204 No Content").await;
            }
        }
    })
    .await;
    // The policy alone would reconnect after 1 ms.
    let mut events = sse_client(&uri).get("events").send_events().await.unwrap();
    let first = events.next_event().await.unwrap().unwrap();
    assert_eq!(first.retry(), Some(Duration::from_millis(400)));
    assert_eq!(first.id(), Some("a"));
    assert!(events.next_event().await.is_none(), "the 204 ends it");
    let gap = gap.lock().unwrap().expect("the client reconnected");
    assert!(
        gap >= Duration::from_millis(400),
        "reconnected after {gap:?}"
    );
    assert!(gap < Duration::from_secs(5), "reconnected after {gap:?}");
}

#[tokio::test]
async fn sse_the_callers_last_event_id_is_kept_until_an_event_sets_another() {
    callers_last_event_id_is_kept("1000", Some("1000")).await;
}

#[tokio::test]
async fn sse_a_callers_non_ascii_last_event_id_is_kept_too() {
    // Not a `str` to `HeaderValue::to_str`, yet a valid header value.
    callers_last_event_id_is_kept("é-7", None).await;
}

/// A stream resumed from the caller's `id` (which `last_event_id` reports
/// as `reported`) that reconnects first without an event, then after one.
async fn callers_last_event_id_is_kept(id: &str, reported: Option<&str>) {
    let (uri, seen) = logged_server(move |n, _, mut stream| {
        async move {
            match n {
                // Heartbeats only, then the connection drops.
                0 => {
                    let _ = stream.write_all(SSE_HEAD).await;
                    let _ = write_chunk(&mut stream, b": ping\n\n").await;
                    drop(stream);
                }
                1 => {
                    let _ = stream.write_all(SSE_HEAD).await;
                    let _ = write_chunk(&mut stream, b"id: 1001\ndata: next\n\n").await;
                    drop(stream);
                }
                _ => answer_status(&mut stream, "204 No Content").await,
            }
        }
    })
    .await;
    let mut events = sse_client(&uri)
        .get("events")
        .header("Last-Event-ID", id)
        .send_events()
        .await
        .unwrap();
    assert_eq!(events.last_event_id(), reported);
    let (got, err) = collect_events(&mut events).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), 1);
    let ids = last_event_ids(&seen);
    let want = [Some(id), Some(id), Some("1001")];
    assert_eq!(ids, want.map(|id| id.map(str::to_owned)));
}

#[tokio::test]
async fn sse_a_retry_of_zero_backs_off_when_reconnects_bring_no_event() {
    const EMPTY: usize = 4;
    let uri = common::raw_server_with_head(move |n, _, mut stream| async move {
        if n < EMPTY {
            // A clean, empty stream that asks for an immediate reconnect.
            let _ = stream.write_all(SSE_HEAD_CLOSE).await;
            let _ = write_chunk(&mut stream, b"retry: 0\n\n").await;
            let _ = stream.write_all(b"0\r\n\r\n").await;
        } else {
            answer_status(&mut stream, "204 No Content").await;
        }
    })
    .await;
    let policy = resilient_http::RetryPolicy::exponential()
        .max_attempts(3)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(100))
        .jitter(false);
    let client = common::fast_builder(&uri).retry(policy).build().unwrap();
    let started = std::time::Instant::now();
    let mut events = client.get("events").send_events().await.unwrap();
    let (got, err) = collect_events(&mut events).await;
    assert!(err.is_none(), "{err:?}");
    assert!(got.is_empty());
    assert_eq!(events.reconnects(), EMPTY as u64);
    // The first reconnect at once (the server's delay), each later one
    // after the 100 ms backoff: at least 300 ms in all.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn sse_a_204_is_an_empty_stream() {
    let uri = common::raw_server(|mut stream| async move {
        answer_status(&mut stream, "204 No Content").await;
    })
    .await;
    let mut events = sse_client(&uri).get("events").send_events().await.unwrap();
    assert!(events.next_event().await.is_none());
    assert_eq!(events.reconnects(), 0);
}

#[tokio::test]
async fn sse_a_non_retryable_status_on_reconnect_ends_the_stream_with_it() {
    let (uri, _) = one_event_then("404 Not Found").await;
    let mut events = sse_client(&uri).get("events").send_events().await.unwrap();
    let (got, err) = collect_events(&mut events).await;
    assert_eq!(got.len(), 1);
    let err = err.expect("the 404 ends the stream");
    assert_eq!(err.status(), Some(resilient_http::StatusCode::NOT_FOUND));
    assert_eq!(err.attempts(), 1, "a 404 is not retried");
}

#[tokio::test]
async fn sse_a_non_retryable_status_first_is_the_calls_error() {
    let uri = common::raw_server(|mut stream| async move {
        answer_status(&mut stream, "401 Unauthorized").await;
    })
    .await;
    let err = sse_client(&uri)
        .get("events")
        .send_events()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Client);
}

#[tokio::test]
async fn sse_max_attempts_failed_reconnects_end_the_stream_with_the_last_error() {
    let (uri, connections) = one_event_then("503 Service Unavailable").await;
    let mut events = sse_client(&uri).get("events").send_events().await.unwrap();
    let (got, err) = collect_events(&mut events).await;
    assert_eq!(got.len(), 1);
    let err = err.expect("the failed reconnects end the stream");
    assert_eq!(
        err.status(),
        Some(resilient_http::StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(err.attempts(), 3, "{err}");
    // The first connection, then the reconnect's 3 attempts.
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 4);
}

#[tokio::test]
async fn sse_a_reconnect_that_succeeds_starts_the_attempt_count_again() {
    // Each reconnect fails twice (503) before it gets through: 4 failures
    // in all, more than max_attempts (3), but never 3 in a row.
    let (uri, seen) = logged_server(move |n, _, mut stream| {
        async move {
            match n {
                0 | 3 | 6 => {
                    let _ = stream.write_all(SSE_HEAD_CLOSE).await;
                    let event = format!("id: {n}\ndata: from connection {n}\n\n");
                    let _ = write_chunk(&mut stream, event.as_bytes()).await;
                    if n == 6 {
                        // A clean end this time (the stream reconnects all the same).
                        let _ = stream.write_all(b"0\r\n\r\n").await;
                    }
                }
                1 | 2 | 4 | 5 => answer_status(&mut stream, "503 Service Unavailable").await,
                _ => answer_status(&mut stream, "204 No Content").await,
            }
        }
    })
    .await;
    let mut events = sse_client(&uri).get("events").send_events().await.unwrap();
    let (got, err) = collect_events(&mut events).await;
    assert!(err.is_none(), "{err:?}");
    let data: Vec<_> = got.iter().map(resilient_http::SseEvent::data).collect();
    assert_eq!(
        data,
        [
            "from connection 0",
            "from connection 3",
            "from connection 6"
        ]
    );
    // Every attempt of a reconnect names the last event.
    let ids = last_event_ids(&seen);
    let want = [
        None,
        Some("0"),
        Some("0"),
        Some("0"),
        Some("3"),
        Some("3"),
        Some("3"),
        Some("6"),
    ];
    assert_eq!(ids, want.map(|id| id.map(str::to_owned)));
}

#[tokio::test]
async fn sse_a_post_is_not_sent_again_after_a_drop() {
    let uri = common::raw_server(|mut stream| async move {
        let _ = stream.write_all(SSE_HEAD).await;
        let _ = write_chunk(&mut stream, b"data: one\n\n").await;
        drop(stream);
    })
    .await;
    let mut events = sse_client(&uri)
        .post("completions")
        .send_events()
        .await
        .unwrap();
    let (got, err) = collect_events(&mut events).await;
    assert_eq!(got.len(), 1);
    assert_eq!(err.expect("the drop").reason(), ErrorReason::Truncated);
    assert_eq!(events.reconnects(), 0);
}

#[tokio::test]
async fn sse_an_oversized_event_is_a_decode_error_without_its_data() {
    let uri = common::raw_server(|mut stream| async move {
        let _ = stream.write_all(SSE_HEAD).await;
        for _ in 0..64 {
            if write_chunk(&mut stream, b"data: secret-secret-secret\n")
                .await
                .is_err()
            {
                return;
            }
        }
        common::until_peer_closes(stream).await;
    })
    .await;
    let client = common::fast_builder(&uri)
        .max_response_bytes(256)
        .build()
        .unwrap();
    let mut events = client.get("events").send_events().await.unwrap();
    let (got, err) = collect_events(&mut events).await;
    assert!(got.is_empty());
    let err = err.expect("over the limit");
    assert_eq!(err.kind(), ErrorKind::Decode);
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("256-byte limit"), "{shown}");
    assert!(!shown.contains("secret"), "{shown}");
}

#[tokio::test]
async fn sse_a_response_that_is_not_an_event_stream_is_a_decode_error() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string("data: x\n\n"))
        .mount(&server)
        .await;
    let err = common::client_for(&server)
        .get("events")
        .send_events()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(err.to_string().contains("text/event-stream"), "{err}");
}

#[tokio::test]
async fn sse_a_call_timeout_bounds_the_whole_stream() {
    // An endless trickle of events; the call's own timeout ends it.
    let uri = common::raw_server(|mut stream| async move {
        let _ = stream.write_all(SSE_HEAD).await;
        for i in 0..200 {
            let event = format!("id: {i}\ndata: {i}\n\n");
            if write_chunk(&mut stream, event.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut events = sse_client(&uri)
        .get("events")
        .timeout(Duration::from_millis(300))
        .send_events()
        .await
        .unwrap();
    let (got, err) = collect_events(&mut events).await;
    assert!(!got.is_empty() && got.len() < 200, "{}", got.len());
    let err = err.expect("the deadline");
    assert_eq!(
        err.timeout_phase(),
        Some(resilient_http::TimeoutPhase::Total)
    );
}

/// An event server whose first connection gives one event and drops; every
/// later one answers `later` (a status line). Counts connections.
async fn one_event_then(
    later: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    first_then(b"id: 1\ndata: one\n\n", later).await
}

/// As [`one_event_then`], the first connection writing `first`.
async fn first_then(
    first: &'static [u8],
    later: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&connections);
    let uri = common::raw_server_with_head(move |n, _, mut stream| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            if n == 0 {
                let _ = stream.write_all(SSE_HEAD).await;
                let _ = write_chunk(&mut stream, first).await;
                drop(stream);
            } else {
                answer_status(&mut stream, later).await;
            }
        }
    })
    .await;
    (uri, connections)
}

#[tokio::test]
async fn sse_a_reconnect_takes_a_retry_from_the_budget() {
    let (uri, connections) = one_event_then("204 No Content").await;
    let client = common::fast_builder(&uri)
        .retry(
            common::fast_retry(3).budget(resilient_http::RetryBudget::ratio(0.0).min_per_second(0)),
        )
        .build()
        .unwrap();
    let mut events = client.get("events").send_events().await.unwrap();
    let (got, err) = collect_events(&mut events).await;
    assert_eq!(got.len(), 1);
    let err = err.expect("the drop, not retried");
    assert_eq!(err.reason(), ErrorReason::Truncated);
    assert!(err.to_string().contains("retry budget exhausted"), "{err}");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sse_a_reconnect_goes_through_the_circuit_breaker() {
    let (uri, connections) = one_event_then("503 Service Unavailable").await;
    let client = common::fast_builder(&uri)
        .retry(common::fast_retry(3))
        .circuit_breaker(
            resilient_http::CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .open_duration(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    let mut events = client.get("events").send_events().await.unwrap();
    let (got, err) = collect_events(&mut events).await;
    assert_eq!(got.len(), 1);
    // The reconnect's 503 opened the breaker, which cut its retries.
    let err = err.expect("the reconnect failed");
    assert_eq!(
        err.status(),
        Some(resilient_http::StatusCode::SERVICE_UNAVAILABLE)
    );
    assert!(err.to_string().contains("circuit opened"), "{err}");
    assert_eq!(client.circuit_state(), resilient_http::CircuitState::Open);
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn sse_a_huge_retry_is_capped_at_max_retry_after() {
    let (uri, connections) = first_then(b"retry: 86400000\ndata: one\n\n", "204 No Content").await;
    let client = common::fast_builder(&uri)
        .retry(common::fast_retry(3).max_retry_after(Duration::from_millis(200)))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let mut events = client.get("events").send_events().await.unwrap();
    let (got, err) = collect_events(&mut events).await;
    assert_eq!(got.len(), 1);
    assert!(err.is_none(), "{err:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn sse_and_upload_types_are_send() {
    fn send<T: Send + 'static>(_: &T) {}
    fn stream<T: Send + Unpin + futures_core::Stream>() {}
    let client = ApiClient::new("http://127.0.0.1:9/").unwrap();
    send(&client.get("events").send_events());
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(resilient_http::Bytes::new())]);
    send(&client.put("upload").body_stream(body, 16).send());
    stream::<resilient_http::EventStream>();
}

// ------------------------------------------------------------ streamed request bodies

/// A source of `count` chunks of `size` bytes (chunk `i` filled with the
/// letter `a + i % 26`), each after `delay`; counts the chunks it yielded.
struct Source {
    next: usize,
    count: usize,
    size: usize,
    delay: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    yielded: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Fail instead of yielding this chunk.
    fail_at: Option<usize>,
}

impl Source {
    fn new(count: usize, size: usize, delay: Duration) -> Self {
        Self {
            next: 0,
            count,
            size,
            delay,
            sleep: None,
            yielded: std::sync::Arc::default(),
            fail_at: None,
        }
    }

    fn expected(&self) -> Vec<u8> {
        (0..self.count)
            .flat_map(|i| chunk_of(i, self.size))
            .collect()
    }
}

fn chunk_of(i: usize, size: usize) -> Vec<u8> {
    vec![b'a' + u8::try_from(i % 26).unwrap(); size]
}

impl futures_core::Stream for Source {
    type Item = Result<resilient_http::Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future as _;
        if self.next == self.count {
            return std::task::Poll::Ready(None);
        }
        if !self.delay.is_zero() {
            let delay = self.delay;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
            self.sleep = None;
        }
        let i = self.next;
        self.next += 1;
        if self.fail_at == Some(i) {
            return std::task::Poll::Ready(Some(Err(std::io::Error::other("disk gone"))));
        }
        self.yielded
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::task::Poll::Ready(Some(Ok(chunk_of(i, self.size).into())))
    }
}

#[tokio::test]
async fn upload_within_the_buffer_is_retried_and_the_server_sees_it_whole_twice() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(common::Sequence::statuses(&[503, 200]))
        .mount(&server)
        .await;
    let source = Source::new(16, 1024, Duration::from_millis(1));
    let expected = source.expected();
    let yielded = std::sync::Arc::clone(&source.yielded);
    let client = common::fast_builder(&server.uri())
        .retry(common::fast_retry(3))
        .build()
        .unwrap();
    let resp = client
        .put("upload")
        .body_stream(source, 64 * 1024)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.attempts(), 2);
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.body, expected, "the whole body, each time");
    }
    // The source was read once; the retry replayed the buffer.
    assert_eq!(yielded.load(std::sync::atomic::Ordering::SeqCst), 16);
}

#[tokio::test]
async fn upload_a_drop_mid_body_replays_the_buffer_then_goes_on_with_the_source() {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let log = std::sync::Arc::clone(&bodies);
    let uri = common::raw_server_with_head(move |n, _, mut stream| {
        let log = std::sync::Arc::clone(&log);
        async move {
            if n == 0 {
                // Take the first chunk of the body, then drop the connection.
                use tokio::io::AsyncReadExt as _;
                let mut some = [0u8; 512];
                let _ = stream.read_exact(&mut some).await;
                return;
            }
            let Some(body) = common::read_chunked_body(&mut stream, 1 << 20).await else {
                return;
            };
            log.lock().unwrap().push(body);
            answer_status(&mut stream, "200 OK").await;
        }
    })
    .await;
    // 8 chunks of 4 KiB, 10 ms apart: the drop comes mid-body.
    let source = Source::new(8, 4096, Duration::from_millis(10));
    let expected = source.expected();
    let yielded = std::sync::Arc::clone(&source.yielded);
    let client = common::fast_builder(&uri)
        .retry(common::fast_retry(3))
        .build()
        .unwrap();
    let resp = client
        .put("upload")
        .body_stream(source, 64 * 1024)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.attempts(), 2);
    let bodies = bodies.lock().unwrap();
    assert_eq!(bodies.len(), 1);
    assert_eq!(
        bodies[0], expected,
        "replayed, then continued: no gap, no repeat"
    );
    assert_eq!(yielded.load(std::sync::atomic::Ordering::SeqCst), 8);
}

#[tokio::test]
async fn upload_larger_than_the_buffer_is_not_retried_and_the_error_says_why() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let client = common::fast_builder(&server.uri())
        .retry(common::fast_retry(3))
        .build()
        .unwrap();
    let err = client
        .put("upload")
        .body_stream(Source::new(16, 1024, Duration::ZERO), 4096)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.status(),
        Some(resilient_http::StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(err.attempts(), 1);
    let text = err.to_string();
    assert!(
        text.contains(
            "3 attempts allowed, 1 made: the request body streamed past its 4096-byte replay buffer"
        ),
        "{text}"
    );
    assert_eq!(common::received(&server).await, 1);
}

#[tokio::test]
async fn upload_a_failing_source_fails_the_call_without_a_retry() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let client = common::fast_builder(&server.uri())
        .retry(common::fast_retry(3))
        .build()
        .unwrap();
    let mut source = Source::new(8, 1024, Duration::from_millis(1));
    source.fail_at = Some(3);
    let err = client
        .put("upload")
        .body_stream(source, 64 * 1024)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 1, "{err}");
    assert!(
        err.to_string().contains("the request body stream failed"),
        "{err}"
    );
    assert!(
        common::source_chain(&err)
            .iter()
            .any(|e| e.contains("disk gone")),
        "{:?}",
        common::source_chain(&err)
    );
}

#[tokio::test]
async fn upload_a_failing_source_is_not_held_against_the_endpoint() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let client = common::fast_builder(&server.uri())
        .retry(common::fast_retry(3))
        .circuit_breaker(
            resilient_http::CircuitBreakerConfig::default()
                .consecutive_failures(3)
                .open_duration(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    // Callers whose own upload sources fail: nothing the endpoint did.
    for _ in 0..5 {
        let mut source = Source::new(8, 1024, Duration::from_millis(1));
        source.fail_at = Some(3);
        let err = client
            .put("upload")
            .body_stream(source, 64 * 1024)
            .send()
            .await
            .unwrap_err();
        assert!(!err.is_circuit_open(), "{err}");
    }
    assert_eq!(client.circuit_state(), resilient_http::CircuitState::Closed);
}

#[tokio::test]
async fn upload_a_post_without_a_key_is_not_retried_even_within_the_buffer() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(common::Sequence::statuses(&[503, 200]))
        .mount(&server)
        .await;
    let client = common::fast_builder(&server.uri())
        .retry(common::fast_retry(3))
        .build()
        .unwrap();
    let err = client
        .post("upload")
        .body_stream(Source::new(4, 1024, Duration::ZERO), 64 * 1024)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 1);
    assert!(!err.to_string().contains("replay buffer"), "{err}");
    // With a key it is.
    let resp = client
        .post("upload")
        .idempotency_key("up-1")
        .body_stream(Source::new(4, 1024, Duration::ZERO), 64 * 1024)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
