//! Server-sent events (`text/event-stream`): the parser of the WHATWG event
//! stream format, and [`EventStream`], which reconnects by itself.
//!
//! The parser works on bytes: line ends (CR, LF, CRLF) are ASCII and never
//! part of a UTF-8 sequence, so a line is cut first and decoded (lossily, as
//! the spec asks) once complete. It holds one partial line and the event being
//! built, each bounded by a limit (the client's `max_response_bytes` unless
//! set), so a hostile stream cannot make it grow without end.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use reqwest::StatusCode;
use reqwest::header::{HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::client::ApiClient;
use crate::error::{CutBy, Error};
use crate::pipeline::{Call, Streamed};
use crate::response::ApiStream;
use crate::retry::{Decision, RetryPolicy, Withdrawal};

/// The header a reconnect names the last event seen in.
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The UTF-8 byte order mark, skipped at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One event of a `text/event-stream` response, from
/// [`RequestBuilder::send_events`](crate::RequestBuilder::send_events).
///
/// `Debug` shows the event's type, id and the length of its data, not the
/// data itself.
///
/// # Examples
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::any())
/// #     .respond_with(wiremock::ResponseTemplate::new(200)
/// #         .set_body_raw("id: 7\nevent: price\ndata: {\"eur\":3}\nretry: 1500\n\n", "text/event-stream"))
/// #     .mount(&server).await;
/// use std::time::Duration;
///
/// let client = resilient_http::ApiClient::new(server.uri())?;
/// let mut events = client.get("prices").send_events().await?;
/// let event = events.next_event().await.expect("one event")?;
/// assert_eq!(event.id(), Some("7"));
/// assert_eq!(event.event_type(), "price");
/// assert_eq!(event.data(), r#"{"eur":3}"#);
/// assert_eq!(event.retry(), Some(Duration::from_millis(1500)));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
    retry: Option<Duration>,
}

impl fmt::Debug for SseEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseEvent")
            .field("event", &self.event)
            .field("id", &self.id)
            .field("data_len", &self.data.len())
            .field("retry", &self.retry)
            .finish()
    }
}

impl SseEvent {
    /// The last event ID as of this event (its `Last-Event-ID` on a
    /// reconnect): the value of the latest `id` field, in this event or an
    /// earlier one of the stream, as the spec defines it. `None` before any
    /// `id`, or after an empty `id` reset it.
    #[must_use]
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The event's type: its `event` field, or `"message"` without one.
    #[must_use]
    pub fn event_type(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    /// The event's data: its `data` lines joined by `\n`.
    #[must_use]
    pub fn data(&self) -> &str {
        &self.data
    }

    /// The data, consuming the event.
    #[must_use]
    pub fn into_data(self) -> String {
        self.data
    }

    /// The reconnection delay a `retry` field of this event set, if one did.
    #[must_use]
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }
}

/// The event stream parser: bytes in, events out.
// Independent facts of the parse (line ends, the BOM, where the ID came
// from), not a state in disguise.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub(crate) struct Parser {
    buf: Vec<u8>,
    /// The bytes before it are spent.
    pos: usize,
    /// Scanning for a line end resumes here (`pos <= scan`).
    scan: usize,
    /// The last line ended with a CR at the end of the bytes seen: a LF
    /// first in the next ones belongs to that line end.
    after_cr: bool,
    /// This connection's stream was checked for a byte order mark.
    bom_done: bool,
    /// The data buffer: each `data` value followed by a LF.
    data: String,
    /// The event type buffer.
    event: Option<String>,
    /// The last event ID buffer (set by `id` fields as they come).
    id: String,
    /// The last event ID string: the buffer as of the last dispatch.
    last_id: String,
    /// An `id` field set the buffer since the last dispatch.
    id_field: bool,
    /// The stream itself has set the last event ID (a dispatch after an
    /// `id` field), not only the caller's.
    id_from_stream: bool,
    /// A `retry` field of the event being built.
    retry: Option<Duration>,
    /// The reconnection time: the latest `retry` field of the stream.
    reconnect: Option<Duration>,
    /// The largest line, and the largest data of one event, in bytes.
    limit: usize,
}

impl Parser {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            scan: 0,
            after_cr: false,
            bom_done: false,
            data: String::new(),
            event: None,
            id: String::new(),
            last_id: String::new(),
            id_field: false,
            id_from_stream: false,
            retry: None,
            reconnect: None,
            limit,
        }
    }

    /// Appends bytes of the stream.
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.scan -= self.pos;
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// A new connection: what was pending (a partial line or event) is
    /// dropped, as at the end of a stream; the last event ID and the
    /// reconnection time stay.
    pub(crate) fn reset_connection(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
        self.scan = 0;
        self.after_cr = false;
        self.bom_done = false;
        self.data = String::new();
        self.event = None;
        self.id.clone_from(&self.last_id);
        self.id_field = false;
        self.retry = None;
    }

    /// Starts from the caller's last event ID (the `Last-Event-ID` the
    /// request was sent with), as if an event had set it.
    pub(crate) fn resume_from(&mut self, id: &str) {
        id.clone_into(&mut self.id);
        id.clone_into(&mut self.last_id);
    }

    /// Whether the stream has set the last event ID (else it is the
    /// caller's, or none).
    pub(crate) fn id_from_stream(&self) -> bool {
        self.id_from_stream
    }

    /// The last event ID string, empty for none.
    pub(crate) fn last_id(&self) -> &str {
        &self.last_id
    }

    /// The reconnection time the server set, if it did.
    pub(crate) fn reconnect_time(&self) -> Option<Duration> {
        self.reconnect
    }

    /// The next event the bytes fed so far complete, if any.
    ///
    /// # Errors
    ///
    /// A `Decode` error for a line or an event's data over the limit.
    pub(crate) fn next_event(&mut self) -> Result<Option<SseEvent>, Error> {
        loop {
            if !self.bom_done {
                let avail = &self.buf[self.pos..];
                let n = avail.len().min(BOM.len());
                if avail[..n] != BOM[..n] {
                    self.bom_done = true;
                } else if n == BOM.len() {
                    self.pos += n;
                    self.scan = self.pos;
                    self.bom_done = true;
                } else {
                    return Ok(None);
                }
            }
            if self.after_cr && self.pos < self.buf.len() {
                self.after_cr = false;
                if self.buf[self.pos] == b'\n' {
                    self.pos += 1;
                    self.scan = self.scan.max(self.pos);
                }
            }
            let found = self.buf[self.scan..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r');
            let Some(at) = found else {
                self.scan = self.buf.len();
                if self.buf.len() - self.pos > self.limit {
                    return Err(self.over_limit("a line"));
                }
                return Ok(None);
            };
            let end = self.scan + at;
            let mut next = end + 1;
            if self.buf[end] == b'\r' {
                match self.buf.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let (start, len) = (self.pos, end - self.pos);
            self.pos = next;
            self.scan = next;
            if len > self.limit {
                return Err(self.over_limit("a line"));
            }
            // Moved out and back (no copy) so the line can be borrowed while
            // the buffers change.
            let buf = std::mem::take(&mut self.buf);
            let outcome = self.line(&buf[start..start + len]);
            self.buf = buf;
            if let Some(event) = outcome? {
                return Ok(Some(event));
            }
        }
    }

    fn over_limit(&mut self, what: &str) -> Error {
        self.buf = Vec::new();
        self.pos = 0;
        self.scan = 0;
        self.data = String::new();
        Error::decode(
            format!(
                "{what} of the event stream is over the {}-byte limit",
                self.limit
            ),
            None,
        )
    }

    /// Interprets one line; an event when it is a blank line that ends one.
    fn line(&mut self, line: &[u8]) -> Result<Option<SseEvent>, Error> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None); // a comment
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
                if self.data.len() > self.limit {
                    return Err(self.over_limit("an event's data"));
                }
            }
            b"id" if !value.contains(&0) => {
                self.id = String::from_utf8_lossy(value).into_owned();
                self.id_field = true;
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // All digits: only an overflow fails, and is ignored.
                if let Some(ms) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    let delay = Duration::from_millis(ms);
                    self.retry = Some(delay);
                    self.reconnect = Some(delay);
                }
            }
            _ => {} // an unknown field is ignored
        }
        Ok(None)
    }

    /// A blank line: the event built so far, unless it has no data.
    fn dispatch(&mut self) -> Option<SseEvent> {
        self.last_id.clone_from(&self.id);
        self.id_from_stream |= std::mem::take(&mut self.id_field);
        let retry = self.retry.take();
        let event = self.event.take();
        if self.data.is_empty() {
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the LF after the last line
        Some(SseEvent {
            id: (!self.last_id.is_empty()).then(|| self.last_id.clone()),
            event: event.filter(|e| !e.is_empty()),
            data,
            retry,
        })
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<ApiStream, Error>> + Send>>;

enum State {
    /// Boxed: the stream is read far more often than it reconnects.
    Reading(Box<ApiStream>),
    Connecting(Connecting),
    Done,
}

/// What follows the end of a connection.
enum Next {
    /// A reconnect is under way.
    Reconnect,
    /// The stream ends, with this error if any.
    End(Option<Error>),
}

/// A [`Stream`] of `Result<`[`SseEvent`]`>` that reconnects by itself, from
/// [`RequestBuilder::send_events`](crate::RequestBuilder::send_events); or
/// read it with [`next_event`](Self::next_event).
///
/// When the connection drops or a read times out mid-stream, or the server
/// ends the response, the stream sends the request again with
/// `Last-Event-ID` (the last event ID seen), after the server's `retry`
/// delay (capped at the policy's
/// [`max_retry_after`](crate::RetryPolicy::max_retry_after), 60 s by default)
/// or else the retry policy's backoff, growing while reconnects deliver no
/// event. The reconnect is a call like any
/// other: the same circuit breaker, server pushback pause, rate and
/// concurrency limits, endpoint choice, hooks and token, and its own attempts
/// under the retry policy. An event is delivered once: a partial event at the
/// drop is discarded, and the server resumes after the last ID.
///
/// The stream ends (`None`, or an error and then `None`):
/// - when a reconnect fails: its attempts ran out (`max_attempts` failed
///   attempts in a row; a reconnect that succeeds starts the count again),
///   the breaker or the retry budget refused it, or the server answered a
///   status that is not retried;
/// - when the server answers `204 No Content`, or a `Content-Type` other than
///   `text/event-stream`;
/// - at the call's own [`timeout`](crate::RequestBuilder::timeout), when one
///   is set (by default an event stream has no total deadline:
///   `read_timeout` is its idle limit);
/// - for a line or an event larger than the limit
///   ([`max_event_bytes`](Self::max_event_bytes));
/// - at the first drop when the call may not be sent again: a method that is
///   not idempotent (without an idempotency key), or `max_attempts(1)`.
///
/// A failed connection takes a retry from the client's retry budget; a
/// response the server ended cleanly does not. With `max_concurrency`, the
/// open connection holds a permit.
///
/// # Examples
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::header("accept", "text/event-stream"))
/// #     .respond_with(wiremock::ResponseTemplate::new(200)
/// #         .set_body_raw(": hello\n\ndata: a\ndata: b\n\nevent: done\ndata:\n\n", "text/event-stream"))
/// #     .up_to_n_times(1)
/// #     .mount(&server).await;
/// # wiremock::Mock::given(wiremock::matchers::any())
/// #     .respond_with(wiremock::ResponseTemplate::new(204))
/// #     .mount(&server).await;
/// let client = resilient_http::ApiClient::new(server.uri())?;
/// let mut events = client.get("feed").send_events().await?;
/// let mut seen = Vec::new();
/// while let Some(event) = events.next_event().await {
///     let event = event?;
///     seen.push(format!("{}:{}", event.event_type(), event.data()));
/// }
/// // After the first response ended, the reconnect got a 204: the end.
/// assert_eq!(seen, ["message:a\nb", "done:"]);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub struct EventStream {
    client: ApiClient,
    /// The call to send again on a reconnect; `None` when it may not be.
    template: Option<Call>,
    policy: RetryPolicy,
    /// The call's own total deadline, if it has one.
    end: Option<Instant>,
    state: State,
    parser: Parser,
    /// The `Last-Event-ID` a reconnect sends: the last event ID that could be
    /// written as a header value.
    resume: Option<HeaderValue>,
    /// Reconnects in a row without an event (the backoff's step).
    idle: u32,
    delivered: u64,
    reconnects: u64,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Reading(_) => "reading",
            State::Connecting(_) => "connecting",
            State::Done => "done",
        };
        f.debug_struct("EventStream")
            .field("state", &state)
            .field("delivered", &self.delivered)
            .field("reconnects", &self.reconnects)
            .field("max_event_bytes", &self.parser.limit)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// Sends `call` (an event stream request) and opens the stream.
    pub(crate) async fn open(client: ApiClient, call: Result<Call, Error>) -> Result<Self, Error> {
        let mut call = call?;
        let headers = call.request.headers_mut();
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        headers
            .entry(reqwest::header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-cache"));
        let end = call.timeout.and_then(|t| Instant::now().checked_add(t));
        // No total deadline unless the call set one.
        call.timeout = Some(call.timeout.unwrap_or(Duration::MAX));
        let policy = call
            .plan
            .retry
            .as_deref()
            .unwrap_or(&client.inner.retry)
            .clone();
        let template = if call.plan.idempotent && policy.max_attempts > 1 {
            call.try_clone()
        } else {
            None
        };
        let limit = client.inner.max_response_bytes;
        // A caller resuming a stream: its ID is the last one until an event
        // sets another.
        let resume = call.request.headers().get(LAST_EVENT_ID).cloned();
        let mut parser = Parser::new(limit);
        if let Some(id) = resume.as_ref().and_then(|id| id.to_str().ok()) {
            parser.resume_from(id);
        }
        let first = client.clone().execute::<Streamed>(Ok(call)).await?;
        let state = match check(first)? {
            Some(body) => State::Reading(Box::new(body)),
            None => State::Done,
        };
        Ok(Self {
            client,
            template,
            policy,
            end,
            state,
            parser,
            resume,
            idle: 0,
            delivered: 0,
            reconnects: 0,
        })
    }

    /// Sets the largest line, and the largest data of one event, in bytes
    /// (default: the client's `max_response_bytes`). A larger one ends the
    /// stream with an [`ErrorKind::Decode`](crate::ErrorKind::Decode) error;
    /// this also bounds the memory the stream holds.
    #[must_use]
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.parser.limit = bytes;
        self
    }

    /// Events delivered so far.
    #[must_use]
    pub fn events_read(&self) -> u64 {
        self.delivered
    }

    /// Reconnects made so far (each one a call through the pipeline).
    #[must_use]
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The last event ID the stream saw (sent as `Last-Event-ID` on a
    /// reconnect), if any.
    #[must_use]
    pub fn last_event_id(&self) -> Option<&str> {
        Some(self.parser.last_id()).filter(|id| !id.is_empty())
    }

    /// The next event, or `None` at the end of the stream; for users without
    /// `futures-util`'s `StreamExt::next`.
    ///
    /// # Errors
    ///
    /// The error that ended the stream (see [`EventStream`] for when that
    /// happens); after it the stream yields `None`. Its message never
    /// includes event data.
    pub async fn next_event(&mut self) -> Option<Result<SseEvent, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The connection ended (`err`: how, if it failed): reconnect, or end.
    fn connection_ended(&mut self, err: Option<Error>) -> Next {
        self.parser.reset_connection();
        let Some(template) = &self.template else {
            return Next::End(err);
        };
        let now = Instant::now();
        let remaining = self
            .end
            .map_or(Duration::MAX, |end| end.saturating_duration_since(now));
        let retry = self
            .parser
            .reconnect_time()
            .map(|delay| delay.min(self.policy.max_retry_after));
        let backoff = || {
            let step = usize::try_from(self.idle).unwrap_or(usize::MAX);
            let scheduled = self
                .policy
                .schedule()
                .nth(step)
                .unwrap_or(self.policy.max_backoff);
            self.policy.jittered(scheduled)
        };
        // The server's delay, but no shorter than the backoff once
        // reconnects bring no event (a `retry: 0` and a server that closes
        // at once would otherwise reconnect in a tight loop).
        let delay = match retry {
            Some(retry) if self.idle > 0 => retry.max(backoff()),
            Some(retry) => retry,
            None => backoff(),
        };
        let Some(mut call) = template.try_clone() else {
            return Next::End(err);
        };
        if let Some(err) = err {
            // The policy decides on the failure as on a failed attempt (its
            // kind, the deadline), the budget on whether to spend a retry.
            if let Decision::Stop(_) = self.policy.decide(&err, 1, true, delay, remaining) {
                return Next::End(Some(err));
            }
            if let Some(budget) = &self.client.inner.budget {
                let Some(withdrawal) = budget.try_withdraw(now) else {
                    let err = err.with_cut(self.policy.max_attempts, CutBy::Budget);
                    return Next::End(Some(err));
                };
                Withdrawal::spend(withdrawal);
            }
        } else if delay >= remaining {
            return Next::End(None);
        }
        // An ID that cannot be a header value keeps the last one that could;
        // an empty one (an `id` field with no value) clears it. Until the
        // stream sets one, the caller's stays, as sent (it may not be UTF-8).
        if self.parser.id_from_stream() {
            let last = self.parser.last_id();
            if last.is_empty() {
                self.resume = None;
            } else if let Ok(id) = HeaderValue::from_str(last) {
                self.resume = Some(id);
            }
        }
        let headers = call.request.headers_mut();
        match &self.resume {
            Some(id) => {
                headers.insert(LAST_EVENT_ID, id.clone());
            }
            None => {
                headers.remove(LAST_EVENT_ID);
            }
        }
        if let Some(retry) = retry {
            // The server's delay also spaces the reconnect's own attempts.
            let policy = self
                .policy
                .clone()
                .initial_backoff(retry)
                .max_backoff(retry.max(self.policy.max_backoff))
                .jitter(false);
            call.plan.retry = Some(Box::new(policy));
        }
        self.idle = self.idle.saturating_add(1);
        self.reconnects += 1;
        tracing::debug!(
            target: "resilient_http::sse",
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            reconnects = self.reconnects,
            "event stream reconnecting"
        );
        let client = self.client.clone();
        let end = self.end;
        self.state = State::Connecting(Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let left = end.map_or(Duration::MAX, |end| {
                end.saturating_duration_since(Instant::now())
            });
            call.timeout = Some(left);
            client.execute::<Streamed>(Ok(call)).await
        }));
        Next::Reconnect
    }
}

/// An answer that opens an event stream: `None` for a 204 (the server has
/// no stream: the end); a `Decode` error for a `Content-Type` that is not
/// `text/event-stream` (one without a `Content-Type` is read).
fn check(body: ApiStream) -> Result<Option<ApiStream>, Error> {
    if body.status() == StatusCode::NO_CONTENT {
        return Ok(None);
    }
    let mime_ok = body
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_none_or(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .eq_ignore_ascii_case("text/event-stream")
            })
        });
    if mime_ok {
        Ok(Some(body))
    } else {
        let err = Error::decode("the response is not text/event-stream", None)
            .with_decoded_status(body.status());
        Err(body.fail(err))
    }
}

impl Stream for EventStream {
    type Item = Result<SseEvent, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let ended = match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Reading(body) => {
                    match this.parser.next_event() {
                        Ok(Some(event)) => {
                            this.idle = 0;
                            this.delivered += 1;
                            return Poll::Ready(Some(Ok(event)));
                        }
                        Ok(None) => {}
                        Err(err) => {
                            let err = body.fail(err);
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(err)));
                        }
                    }
                    match Pin::new(&mut **body).poll_next(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(Ok(chunk))) => {
                            this.parser.feed(&chunk);
                            continue;
                        }
                        Poll::Ready(None) => this.connection_ended(None),
                        Poll::Ready(Some(Err(err))) => this.connection_ended(Some(err)),
                    }
                }
                State::Connecting(connecting) => match connecting.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(body)) => match check(body) {
                        Ok(Some(body)) => {
                            this.state = State::Reading(Box::new(body));
                            continue;
                        }
                        Ok(None) => Next::End(None),
                        Err(err) => Next::End(Some(err)),
                    },
                    Poll::Ready(Err(err)) => Next::End(Some(err)),
                },
            };
            match ended {
                Next::Reconnect => {}
                Next::End(err) => {
                    this.state = State::Done;
                    return Poll::Ready(err.map(Err));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            id: id.map(str::to_owned),
            event: event.map(str::to_owned),
            data: data.to_owned(),
            retry: None,
        }
    }

    /// Every event `input` gives, fed in pieces of `step` bytes.
    fn parse_in(input: &[u8], step: usize, limit: usize) -> Result<Vec<SseEvent>, Error> {
        let mut parser = Parser::new(limit);
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            parser.feed(piece);
            while let Some(event) = parser.next_event()? {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// As `parse_in`, checking that every split gives the same events.
    fn parse(input: &str) -> Vec<SseEvent> {
        let whole = parse_in(input.as_bytes(), input.len(), 1 << 20).unwrap();
        for step in 1..=8 {
            assert_eq!(
                parse_in(input.as_bytes(), step, 1 << 20).unwrap(),
                whole,
                "split every {step} bytes"
            );
        }
        whole
    }

    #[test]
    fn data_lines_are_joined_by_lf() {
        assert_eq!(
            parse("data: a\ndata:b\ndata:  c\n\n"),
            [event(None, None, "a\nb\n c")]
        );
    }

    #[test]
    fn cr_lf_and_crlf_all_end_lines() {
        let expected = [event(None, None, "1\n2"), event(None, None, "3")];
        assert_eq!(parse("data:1\rdata:2\r\rdata:3\r\n\r\n"), expected);
        assert_eq!(parse("data:1\ndata:2\n\ndata:3\n\n"), expected);
        assert_eq!(parse("data:1\r\ndata:2\r\n\r\ndata:3\r\n\r\n"), expected);
        // Mixed, and a CR then LF split across chunks (parse tries all splits).
        assert_eq!(parse("data:1\r\ndata:2\n\rdata:3\r\r"), expected);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        assert_eq!(
            parse(": keep-alive\n\n:x\nfoo: bar\ndata: a\nDATA: b\n\n"),
            [event(None, None, "a")]
        );
    }

    #[test]
    fn a_field_without_colon_has_an_empty_value() {
        // `data` alone appends an empty line: an event with empty data.
        assert_eq!(parse("data\n\n"), [event(None, None, "")]);
        assert_eq!(parse("data\ndata\n\n"), [event(None, None, "\n")]);
        // Only one space after the colon is dropped.
        assert_eq!(parse("data:  x \n\n"), [event(None, None, " x ")]);
    }

    #[test]
    fn a_block_without_data_dispatches_nothing() {
        assert_eq!(parse("event: ping\n\nid: 1\n\n\n\n"), []);
        // The type does not carry over to the next event.
        assert_eq!(
            parse("event: ping\n\ndata: x\n\n"),
            [event(None, None, "x")]
        );
    }

    #[test]
    fn the_event_type_defaults_to_message() {
        let events = parse("event: add\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n");
        let types: Vec<_> = events.iter().map(SseEvent::event_type).collect();
        assert_eq!(types, ["add", "message", "message"]);
    }

    #[test]
    fn the_last_event_id_carries_over_until_reset() {
        let events = parse("id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 2\n\ndata: d\n\n");
        let ids: Vec<_> = events.iter().map(SseEvent::id).collect();
        assert_eq!(ids, [Some("1"), Some("1"), None, Some("2")]);
    }

    #[test]
    fn an_id_with_nul_is_ignored() {
        let events = parse("id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n");
        let ids: Vec<_> = events.iter().map(SseEvent::id).collect();
        assert_eq!(ids, [Some("1"), Some("1")]);
    }

    #[test]
    fn retry_takes_only_digits() {
        let mut parser = Parser::new(1024);
        parser.feed(b"retry: 250\ndata: a\n\nretry: 1x\ndata: b\n\nretry: -5\nretry:\nretry: 99999999999999999999999\ndata: c\n\n");
        let a = parser.next_event().unwrap().unwrap();
        assert_eq!(a.retry(), Some(Duration::from_millis(250)));
        let b = parser.next_event().unwrap().unwrap();
        assert_eq!(b.retry(), None);
        let c = parser.next_event().unwrap().unwrap();
        assert_eq!(c.retry(), None);
        assert_eq!(parser.reconnect_time(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn a_bom_is_skipped_at_the_start_only() {
        assert_eq!(
            parse("\u{feff}data: a\n\n\u{feff}data: b\n\n"),
            [event(None, None, "a")]
        );
        // Split across chunks: parse tries every split of the three bytes.
        assert_eq!(parse("\u{feff}\u{feff}data: x\n\n"), []);
    }

    #[test]
    fn a_trailing_incomplete_event_is_not_dispatched() {
        let mut parser = Parser::new(1024);
        parser.feed(b"data: a\n\ndata: b\n");
        assert_eq!(parser.next_event().unwrap(), Some(event(None, None, "a")));
        assert_eq!(parser.next_event().unwrap(), None);
        // The connection ends: what was pending is dropped.
        parser.reset_connection();
        parser.feed(b"data: c\n\n");
        assert_eq!(parser.next_event().unwrap(), Some(event(None, None, "c")));
    }

    #[test]
    fn a_reconnect_keeps_the_dispatched_id_only() {
        let mut parser = Parser::new(1024);
        parser.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n");
        assert_eq!(parser.next_event().unwrap().unwrap().id(), Some("1"));
        assert_eq!(parser.next_event().unwrap(), None);
        parser.reset_connection();
        assert_eq!(parser.last_id(), "1");
        parser.feed(b"data: c\n\n");
        assert_eq!(parser.next_event().unwrap().unwrap().id(), Some("1"));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_an_error() {
        assert_eq!(
            parse_in(b"data: a\xffb\n\n", 1, 64).unwrap(),
            [event(None, None, "a\u{fffd}b")]
        );
        // A multi-byte character split across chunks stays whole.
        assert_eq!(parse("data: é€😀\n\n"), [event(None, None, "é€😀")]);
    }

    #[test]
    fn a_line_over_the_limit_is_a_decode_error_without_the_data() {
        let long = format!("data: {}\n\n", "secret".repeat(20));
        for step in [1, 7, long.len()] {
            let err = parse_in(long.as_bytes(), step, 64).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Decode);
            let shown = format!("{err} {err:?}");
            assert!(shown.contains("64-byte limit"), "{shown}");
            assert!(!shown.contains("secret"), "{shown}");
        }
    }

    #[test]
    fn an_event_over_the_limit_is_a_decode_error() {
        let many = "data: 0123456789\n".repeat(10);
        let err = parse_in(many.as_bytes(), 5, 64).unwrap_err();
        assert!(err.to_string().contains("an event's data"), "{err}");
        assert!(!err.to_string().contains("0123"), "{err}");
    }

    #[test]
    fn the_buffer_stays_bounded_over_a_long_stream() {
        let mut parser = Parser::new(256);
        let mut seen = 0;
        for i in 0..10_000 {
            parser.feed(format!("id: {i}\ndata: {i}\n\n").as_bytes());
            while let Some(event) = parser.next_event().unwrap() {
                assert_eq!(event.data(), seen.to_string());
                seen += 1;
            }
            assert!(parser.buf.len() < 64, "{}", parser.buf.len());
        }
        assert_eq!(seen, 10_000);
    }

    #[test]
    fn debug_shows_no_data() {
        let shown = format!("{:?}", event(Some("9"), None, "secret"));
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("data_len: 6"), "{shown}");
    }
}
