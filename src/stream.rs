//! Typed item streams over an [`ApiStream`]: newline-delimited JSON
//! ([`JsonLines`]) and the items of a top-level JSON array ([`JsonArray`]).
//!
//! Both cut the body into items with a small incremental scanner and decode
//! each item with `serde_json::from_slice` as soon as its last byte arrives.
//! The buffer holds at most one partial item plus the rest of the last chunk,
//! so memory is bounded by the largest item (and the item limit), not the body.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::response::ApiStream;

impl ApiStream {
    /// The body as newline-delimited JSON (NDJSON, JSON Lines): a [`Stream`]
    /// of one `T` per line.
    ///
    /// Blank lines are skipped, `\r\n` line ends are accepted, and a last line
    /// without a newline is an item. Each line may be at most the client's
    /// `max_response_bytes` long (change it with [`JsonLines::max_item_bytes`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(200)
    /// #         .set_body_string("{\"id\":1}\n\n{\"id\":2}\r\n"))
    /// #     .mount(&server).await;
    /// #[derive(serde::Deserialize)]
    /// struct Row { id: u64 }
    ///
    /// let client = resilient_http::ApiClient::new(server.uri())?;
    /// let mut rows = client.get("export.ndjson").send_stream().await?.json_lines::<Row>();
    /// let mut ids = Vec::new();
    /// while let Some(row) = rows.next_item().await {
    ///     ids.push(row?.id);
    /// }
    /// assert_eq!(ids, [1, 2]);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[must_use]
    pub fn json_lines<T: DeserializeOwned>(self) -> JsonLines<T> {
        JsonLines {
            items: Items::new(self, Scanner::Lines),
            _item: PhantomData,
        }
    }

    /// The items of a body that is one top-level JSON array (`[{..},{..},..]`),
    /// decoded one by one as they arrive, without holding the array.
    ///
    /// Each item may be at most the client's `max_response_bytes` long
    /// (change it with [`JsonArray::max_item_bytes`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(200)
    /// #         .set_body_string(r#"[{"id":1,"tags":["a]"]}, {"id":2,"tags":[]}]"#))
    /// #     .mount(&server).await;
    /// #[derive(serde::Deserialize)]
    /// struct Row { id: u64, tags: Vec<String> }
    ///
    /// let client = resilient_http::ApiClient::new(server.uri())?;
    /// let mut rows = client.get("export.json").send_stream().await?.json_array::<Row>();
    /// let mut ids = Vec::new();
    /// while let Some(row) = rows.next_item().await {
    ///     ids.push(row?.id);
    /// }
    /// assert_eq!(ids, [1, 2]);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[must_use]
    pub fn json_array<T: DeserializeOwned>(self) -> JsonArray<T> {
        JsonArray {
            items: Items::new(self, Scanner::Array(ArrayState::Open)),
            _item: PhantomData,
        }
    }
}

macro_rules! item_stream {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name<T> {
            items: Items,
            _item: PhantomData<fn() -> T>,
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("items", &self.items.index)
                    .field("offset", &self.items.base)
                    .field("max_item_bytes", &self.items.limit)
                    .finish_non_exhaustive()
            }
        }

        impl<T: DeserializeOwned> $name<T> {
            /// Sets the largest item accepted, in bytes (default: the client's
            /// `max_response_bytes`). A larger item ends the stream with an
            /// [`ErrorKind::Decode`](crate::ErrorKind::Decode) error; this also
            /// bounds the memory the stream holds.
            #[must_use]
            pub fn max_item_bytes(mut self, bytes: usize) -> Self {
                self.items.limit = bytes;
                self
            }

            /// Items yielded so far (the index of the next one).
            #[must_use]
            pub fn items_read(&self) -> u64 {
                self.items.index
            }

            /// The next item, or `None` at the end of the body; for users
            /// without `futures-util`'s `StreamExt::next`.
            ///
            /// # Errors
            ///
            /// The item is `Err` for a transport failure or timeout while
            /// reading (classified as by [`ApiStream::chunk`]), or an
            /// [`ErrorKind::Decode`](crate::ErrorKind::Decode) error for an item
            /// over the limit, a syntax error or a body that ends mid-item; its
            /// message names the item's index and byte offset. After an error
            /// the stream ends.
            pub async fn next_item(&mut self) -> Option<Result<T, Error>> {
                std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
            }
        }

        impl<T: DeserializeOwned> Stream for $name<T> {
            type Item = Result<T, Error>;

            fn poll_next(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Self::Item>> {
                self.items.poll_item(cx, decode::<T>)
            }
        }
    };
}

item_stream! {
    /// A [`Stream`] of `Result<T>` items of a newline-delimited JSON body,
    /// from [`ApiStream::json_lines`]; or read it with
    /// [`next_item`](Self::next_item).
    ///
    /// The stream holds one partial line at most (bounded by
    /// [`max_item_bytes`](Self::max_item_bytes)). Nothing is retried once the
    /// headers have arrived; an error ends the stream.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(200).set_body_string("1\n2\n3\n"))
    /// #     .mount(&server).await;
    /// let client = resilient_http::ApiClient::new(server.uri())?;
    /// let mut numbers: resilient_http::JsonLines<u32> = client
    ///     .get("numbers")
    ///     .send_stream()
    ///     .await?
    ///     .json_lines()
    ///     .max_item_bytes(64);
    /// let mut sum = 0;
    /// while let Some(n) = numbers.next_item().await {
    ///     sum += n?;
    /// }
    /// assert_eq!(sum, 6);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    JsonLines
}

item_stream! {
    /// A [`Stream`] of `Result<T>` items of a top-level JSON array, from
    /// [`ApiStream::json_array`]; or read it with [`next_item`](Self::next_item).
    ///
    /// The array is never held whole: each element is found by an incremental
    /// scanner (strings, escapes and nesting understood) and decoded on its
    /// own, so the stream holds one partial element at most (bounded by
    /// [`max_item_bytes`](Self::max_item_bytes)). A body that is not an array,
    /// or has anything but whitespace after its closing `]`, is a
    /// [`ErrorKind::Decode`](crate::ErrorKind::Decode) error. Nothing is
    /// retried once the headers have arrived; an error ends the stream.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(200).set_body_string(r#"["a", "b,]\"", "c"]"#))
    /// #     .mount(&server).await;
    /// let client = resilient_http::ApiClient::new(server.uri())?;
    /// let mut names: resilient_http::JsonArray<String> =
    ///     client.get("names").send_stream().await?.json_array();
    /// let mut all = Vec::new();
    /// while let Some(name) = names.next_item().await {
    ///     all.push(name?);
    /// }
    /// assert_eq!(all, ["a", "b,]\"", "c"]);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    JsonArray
}

/// Decodes one item; the error says what kind and where within the item,
/// never serde's wording (which can quote the body; it stays in `source()`).
fn decode<T: DeserializeOwned>(bytes: &[u8], index: u64, offset: u64) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "type",
            serde_json::error::Category::Eof => "end of input",
        };
        Error::decode(
            format!(
                "item {index} at byte {offset} is not the expected JSON \
                 ({what} error at line {} column {} of the item)",
                e.line(),
                e.column()
            ),
            Some(Box::new(e)),
        )
    })
}

/// Where the array scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayState {
    /// Before the opening `[`.
    Open,
    /// After `[`: an element or `]`.
    First,
    /// After `,`: an element.
    Next,
    /// Inside an element that began at buffer position `start`.
    Element {
        start: usize,
        depth: u32,
        in_string: bool,
        escaped: bool,
        /// A number, `true`, `false` or `null`: ends at a delimiter.
        scalar: bool,
    },
    /// After an element: `,` or `]`.
    After,
    /// After the closing `]`: only whitespace may follow.
    Closed,
}

/// How the body is cut into items.
#[derive(Debug)]
enum Scanner {
    /// Newline-delimited.
    Lines,
    Array(ArrayState),
}

/// One step of the scanner over the buffer.
enum Step {
    /// An item's bytes (buffer positions); `next` is where scanning resumes.
    Item { range: Range<usize>, next: usize },
    /// More bytes are needed; the bytes before `keep` can be dropped.
    More { keep: usize },
    /// The body is complete (the array closed; for lines, at end of body).
    End,
    /// Not the expected framing, at buffer position `at`.
    Syntax { at: usize, what: &'static str },
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl Scanner {
    /// Scans `buf[pos..]`, the item (if any) having begun at `head`; `eof`
    /// when no more bytes will come.
    fn step(&mut self, buf: &[u8], head: usize, pos: usize, eof: bool) -> Step {
        match self {
            Self::Lines => {
                if let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
                    let end = pos + nl;
                    Step::Item {
                        range: trim(buf, head, end),
                        next: end + 1,
                    }
                } else if eof {
                    let range = trim(buf, head, buf.len());
                    if range.is_empty() {
                        Step::End
                    } else {
                        Step::Item {
                            range,
                            next: buf.len(),
                        }
                    }
                } else {
                    Step::More { keep: head }
                }
            }
            Self::Array(state) => scan_array(state, buf, pos, eof),
        }
    }

    /// Buffer position where the current (partial) item began, if inside one.
    fn item_start(&self, from: usize) -> Option<usize> {
        match self {
            Self::Lines => Some(from),
            Self::Array(ArrayState::Element { start, .. }) => Some(*start),
            Self::Array(_) => None,
        }
    }

    /// Buffer positions move down by `n` (the buffer's front was dropped).
    fn shift(&mut self, n: usize) {
        if let Self::Array(ArrayState::Element { start, .. }) = self {
            *start -= n;
        }
    }
}

/// `buf[from..end]` without surrounding whitespace (a `\r` before `\n`).
fn trim(buf: &[u8], from: usize, end: usize) -> Range<usize> {
    let mut start = from;
    let mut stop = end;
    while start < stop && is_space(buf[start]) {
        start += 1;
    }
    while stop > start && is_space(buf[stop - 1]) {
        stop -= 1;
    }
    start..stop
}

fn scan_array(state: &mut ArrayState, buf: &[u8], pos: usize, eof: bool) -> Step {
    let mut i = pos;
    while i < buf.len() {
        let b = buf[i];
        match state {
            ArrayState::Open => {
                if b == b'[' {
                    *state = ArrayState::First;
                } else if !is_space(b) {
                    return Step::Syntax {
                        at: i,
                        what: "the body is not a JSON array",
                    };
                }
            }
            ArrayState::First | ArrayState::Next => {
                if b == b']' && *state == ArrayState::First {
                    *state = ArrayState::Closed;
                } else if !is_space(b) {
                    if matches!(b, b',' | b']' | b':' | b'}') {
                        return Step::Syntax {
                            at: i,
                            what: "an element was expected",
                        };
                    }
                    *state = ArrayState::Element {
                        start: i,
                        depth: u32::from(matches!(b, b'[' | b'{')),
                        in_string: b == b'"',
                        escaped: false,
                        scalar: !matches!(b, b'[' | b'{' | b'"'),
                    };
                }
            }
            ArrayState::Element { .. } => {
                if let Some(step) = scan_element(state, buf, i) {
                    return step;
                }
            }
            ArrayState::After => {
                if b == b',' {
                    *state = ArrayState::Next;
                } else if b == b']' {
                    *state = ArrayState::Closed;
                } else if !is_space(b) {
                    return Step::Syntax {
                        at: i,
                        what: "`,` or `]` was expected after an element",
                    };
                }
            }
            ArrayState::Closed => {
                if !is_space(b) {
                    return Step::Syntax {
                        at: i,
                        what: "data after the end of the array",
                    };
                }
            }
        }
        i += 1;
    }
    match *state {
        ArrayState::Closed if eof => Step::End,
        ArrayState::Element { start, .. } => {
            if eof {
                Step::Syntax {
                    at: start,
                    what: "the body ended mid-item",
                }
            } else {
                Step::More { keep: start }
            }
        }
        _ if eof => Step::Syntax {
            at: buf.len(),
            what: "the body ended before the array closed",
        },
        _ => Step::More { keep: buf.len() },
    }
}

/// One byte `buf[i]` of an element; `Some` when the element ends with it.
fn scan_element(state: &mut ArrayState, buf: &[u8], i: usize) -> Option<Step> {
    let b = buf[i];
    let ArrayState::Element {
        start,
        depth,
        in_string,
        escaped,
        scalar,
    } = state
    else {
        return None;
    };
    let start = *start;
    if *scalar {
        if is_space(b) || b == b',' || b == b']' {
            *state = ArrayState::After;
            return Some(Step::Item {
                range: start..i,
                next: i,
            });
        }
    } else if *in_string {
        if *escaped {
            *escaped = false;
        } else if b == b'\\' {
            *escaped = true;
        } else if b == b'"' {
            *in_string = false;
            if *depth == 0 {
                *state = ArrayState::After;
                return Some(Step::Item {
                    range: start..i + 1,
                    next: i + 1,
                });
            }
        }
    } else {
        match b {
            b'"' => *in_string = true,
            b'[' | b'{' => *depth = depth.saturating_add(1),
            b']' | b'}' => {
                *depth = depth.saturating_sub(1);
                if *depth == 0 {
                    *state = ArrayState::After;
                    return Some(Step::Item {
                        range: start..i + 1,
                        next: i + 1,
                    });
                }
            }
            _ => {}
        }
    }
    None
}

/// The framing machinery shared by both item streams, independent of `T`.
struct Items {
    /// `None` once the stream ended (the connection and permit go back).
    body: Option<ApiStream>,
    scanner: Scanner,
    buf: Vec<u8>,
    /// Buffer position of the first byte still needed; the bytes before it are spent.
    head: usize,
    /// Buffer position where scanning resumes (the bytes before it were scanned).
    pos: usize,
    /// Body offset of `buf[0]`.
    base: u64,
    /// Items yielded so far.
    index: u64,
    limit: usize,
    eof: bool,
}

impl Items {
    fn new(body: ApiStream, scanner: Scanner) -> Self {
        let limit = body.item_limit;
        Self {
            body: Some(body),
            scanner,
            buf: Vec::new(),
            head: 0,
            pos: 0,
            base: 0,
            index: 0,
            limit,
            eof: false,
        }
    }

    fn offset(&self, at: usize) -> u64 {
        self.base.saturating_add(at as u64)
    }

    /// Ends the stream with a `Decode` error naming the item and offset.
    fn fail(&mut self, err: Error) -> Error {
        self.buf = Vec::new();
        match self.body.take() {
            Some(body) => body.fail(err),
            None => err,
        }
    }

    fn framing_error(&mut self, at: usize, what: &str) -> Error {
        let detail = format!("item {} at byte {}: {what}", self.index, self.offset(at));
        self.fail(Error::decode(detail, None))
    }

    fn poll_item<T>(
        &mut self,
        cx: &mut Context<'_>,
        decode: fn(&[u8], u64, u64) -> Result<T, Error>,
    ) -> Poll<Option<Result<T, Error>>> {
        loop {
            if self.body.is_none() {
                return Poll::Ready(None);
            }
            match self.scanner.step(&self.buf, self.head, self.pos, self.eof) {
                Step::Item { range, next } => {
                    self.head = next;
                    self.pos = next;
                    if range.is_empty() {
                        continue; // a blank line
                    }
                    let at = range.start;
                    if range.len() > self.limit {
                        return Poll::Ready(Some(Err(self.over_limit(at))));
                    }
                    let index = self.index;
                    self.index += 1;
                    return Poll::Ready(Some(
                        match decode(&self.buf[range], index, self.offset(at)) {
                            Ok(item) => Ok(item),
                            Err(e) => Err(self.fail(e)),
                        },
                    ));
                }
                Step::End => {
                    self.buf = Vec::new();
                    self.body = None;
                    return Poll::Ready(None);
                }
                Step::Syntax { at, what } => {
                    return Poll::Ready(Some(Err(self.framing_error(at, what))));
                }
                Step::More { keep } => {
                    self.head = keep;
                    self.pos = self.buf.len();
                    if let Some(start) = self.scanner.item_start(self.head)
                        && self.buf.len() - start > self.limit
                    {
                        return Poll::Ready(Some(Err(self.over_limit(start))));
                    }
                }
            }
            // Read more.
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(body).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.eof = true,
                Poll::Ready(Some(Err(e))) => {
                    self.buf = Vec::new();
                    self.body = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    // Drop the spent front, then append.
                    if self.head > 0 {
                        self.buf.drain(..self.head);
                        self.scanner.shift(self.head);
                        self.base = self.offset(self.head);
                        self.pos -= self.head;
                        self.head = 0;
                    }
                    self.buf.extend_from_slice(&chunk);
                }
            }
        }
    }

    fn over_limit(&mut self, at: usize) -> Error {
        let limit = self.limit;
        self.framing_error(at, &format!("the item is over the {limit}-byte limit"))
    }
}
