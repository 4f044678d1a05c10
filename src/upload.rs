//! Streamed request bodies with a bounded replay buffer
//! ([`RequestBuilder::body_stream`](crate::RequestBuilder::body_stream)).
//!
//! The source stream is shared by the call's attempts. Each attempt's body
//! first replays the chunks recorded so far, then goes on pulling from the
//! source, recording each chunk as the transport takes it, as long as the
//! recording fits the buffer. Past it, the recording is dropped: the bytes
//! already sent cannot be sent again, so the attempt cannot be retried, and
//! memory stays bounded by the buffer (plus the chunk in flight).
//!
//! A body never ends short: one that cannot send every byte pulled so far
//! (the recording was dropped, or the source failed, while another
//! attempt's body read it) fails instead of ending, so a server never takes
//! a truncated upload for a whole one.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;

use crate::error::BoxError;

/// The source stream's `poll_next`, its error boxed.
type Source = Box<dyn FnMut(&mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> + Send>;

/// The request body of a call made with `body_stream`, shared by its attempts.
#[derive(Clone)]
pub(crate) struct Upload {
    shared: Arc<Mutex<Shared>>,
    capacity: usize,
}

impl fmt::Debug for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.lock();
        f.debug_struct("Upload")
            .field("replay_buffer_bytes", &self.capacity)
            .field("recorded", &shared.recorded_len)
            .field("pulled", &shared.pulled)
            .field("overflowed", &shared.overflowed)
            .finish_non_exhaustive()
    }
}

struct Shared {
    /// `None` once it ended or failed.
    source: Option<Source>,
    /// Every chunk pulled so far, while they fit the buffer.
    recorded: Vec<Bytes>,
    recorded_len: usize,
    /// Bytes pulled from the source in all.
    pulled: u64,
    /// More was pulled than the buffer holds: `recorded` is incomplete.
    overflowed: bool,
    /// The source yielded an error.
    failed: bool,
    /// The attempt whose body may read; older bodies are cut off.
    epoch: u64,
}

/// Why an attempt's body cannot be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoReplay {
    /// More than the buffer (its size) was sent.
    Overflowed(usize),
    /// The source stream failed.
    SourceFailed,
}

impl Upload {
    pub(crate) fn new<S, E>(source: S, capacity: usize) -> Self
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let mut source = Box::pin(source);
        let source: Source = Box::new(move |cx| {
            source
                .as_mut()
                .poll_next(cx)
                .map(|item| item.map(|r| r.map_err(Into::into)))
        });
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(source),
                recorded: Vec::new(),
                recorded_len: 0,
                pulled: 0,
                overflowed: false,
                failed: false,
                epoch: 0,
            })),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic in the source's `poll_next` leaves nothing half-updated here.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The body of the next attempt: the recorded chunks, then the rest of
    /// the source. Any earlier attempt's body stops reading.
    pub(crate) fn body(&self) -> reqwest::Body {
        reqwest::Body::wrap_stream(self.replay())
    }

    fn replay(&self) -> Replay {
        let epoch = {
            let mut shared = self.lock();
            shared.epoch += 1;
            shared.epoch
        };
        Replay {
            upload: self.clone(),
            epoch,
            next: 0,
            sent: 0,
        }
    }

    /// Cuts off the current attempt's body (it failed): a transport still
    /// writing it pulls no more from the source.
    pub(crate) fn cut_off(&self) {
        self.lock().epoch += 1;
    }

    /// Whether an attempt can be made again with the whole body.
    pub(crate) fn replayable(&self) -> Result<(), NoReplay> {
        let shared = self.lock();
        if shared.failed {
            Err(NoReplay::SourceFailed)
        } else if shared.overflowed {
            Err(NoReplay::Overflowed(self.capacity))
        } else {
            Ok(())
        }
    }
}

/// One attempt's body.
struct Replay {
    upload: Upload,
    epoch: u64,
    /// The next recorded chunk to send.
    next: usize,
    /// Bytes this body yielded.
    sent: u64,
}

impl Stream for Replay {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let capacity = self.upload.capacity;
        let upload = self.upload.clone();
        let mut shared = upload.lock();
        if shared.epoch != self.epoch {
            return Poll::Ready(Some(Err(
                "a later attempt took over the request body".into()
            )));
        }
        if let Some(chunk) = shared.recorded.get(self.next) {
            let chunk = chunk.clone();
            self.next += 1;
            self.sent = self.sent.saturating_add(chunk.len() as u64);
            return Poll::Ready(Some(Ok(chunk)));
        }
        // Past the recording, this body goes on only if it sent every byte
        // pulled so far: never a short body that ends as if whole.
        if self.sent != shared.pulled {
            return Poll::Ready(Some(Err(
                "the request body outgrew its replay buffer while another attempt sent it".into(),
            )));
        }
        let Some(source) = shared.source.as_mut() else {
            if shared.failed {
                return Poll::Ready(Some(Err(
                    "the request body stream failed during an earlier attempt".into(),
                )));
            }
            return Poll::Ready(None);
        };
        match source(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                shared.source = None;
                shared.failed = true;
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(Some(Ok(chunk))) => {
                shared.pulled = shared.pulled.saturating_add(chunk.len() as u64);
                self.sent = shared.pulled;
                let fits = shared
                    .recorded_len
                    .checked_add(chunk.len())
                    .is_some_and(|len| len <= capacity);
                if !shared.overflowed && fits {
                    shared.recorded_len += chunk.len();
                    shared.recorded.push(chunk.clone());
                    self.next = shared.recorded.len();
                } else if !shared.overflowed {
                    shared.overflowed = true;
                    shared.recorded = Vec::new();
                    shared.recorded_len = 0;
                }
                Poll::Ready(Some(Ok(chunk)))
            }
        }
    }
}

/// A request body: bytes (sent as they are on every attempt) or a stream
/// with its replay buffer.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    Bytes(Bytes),
    Stream(Upload),
}

impl Payload {
    /// The body of an attempt.
    pub(crate) fn body(&self) -> reqwest::Body {
        match self {
            Self::Bytes(bytes) => reqwest::Body::from(bytes.clone()),
            Self::Stream(upload) => upload.body(),
        }
    }

    /// Whether an attempt can be made again with the whole body.
    pub(crate) fn replayable(&self) -> Result<(), NoReplay> {
        match self {
            Self::Bytes(_) => Ok(()),
            Self::Stream(upload) => upload.replayable(),
        }
    }

    /// Stops a failed attempt's body from reading on (a stream's).
    pub(crate) fn cut_off(&self) {
        if let Self::Stream(upload) = self {
            upload.cut_off();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static str]) -> Upload {
        let items: Vec<Result<Bytes, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p.as_bytes())))
            .collect();
        Upload::new(Iter(items.into_iter()), 8)
    }

    struct Iter<I>(I);

    impl<I: Iterator + Unpin> Stream for Iter<I> {
        type Item = I::Item;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
            Poll::Ready(self.0.next())
        }
    }

    fn pull(body: &mut Replay) -> Option<Result<Bytes, BoxError>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(body).poll_next(&mut cx) {
            Poll::Ready(item) => item,
            Poll::Pending => panic!("the test source is never pending"),
        }
    }

    fn text(item: Option<Result<Bytes, BoxError>>) -> String {
        String::from_utf8(item.unwrap().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn a_retry_replays_the_recording_then_goes_on_with_the_source() {
        let upload = chunks(&["ab", "cd", "ef", "gh"]);
        let mut first = upload.replay();
        assert_eq!(text(pull(&mut first)), "ab");
        assert_eq!(text(pull(&mut first)), "cd");
        assert_eq!(upload.replayable(), Ok(()));
        let mut second = upload.replay();
        // The first attempt's body is cut off.
        assert!(pull(&mut first).unwrap().is_err());
        let all: Vec<_> = std::iter::from_fn(|| pull(&mut second).map(|c| c.unwrap())).collect();
        assert_eq!(all.concat(), b"abcdefgh");
        // A third attempt replays it all from the buffer.
        let mut third = upload.replay();
        let all: Vec<_> = std::iter::from_fn(|| pull(&mut third).map(|c| c.unwrap())).collect();
        assert_eq!(all.concat(), b"abcdefgh");
    }

    #[test]
    fn past_the_buffer_the_recording_is_dropped_and_no_replay_is_possible() {
        let upload = chunks(&["1234", "5678", "9"]);
        let mut first = upload.replay();
        for _ in 0..3 {
            pull(&mut first).unwrap().unwrap();
        }
        assert!(pull(&mut first).is_none());
        assert_eq!(upload.replayable(), Err(NoReplay::Overflowed(8)));
        let shared = upload.lock();
        assert!(shared.recorded.is_empty());
        assert_eq!(shared.pulled, 9);
    }

    #[test]
    fn a_body_that_missed_bytes_fails_instead_of_ending_short() {
        // The recording was dropped while the first attempt's body read on
        // (a transport writing it after a quick 503).
        let upload = chunks(&["1234", "5678", "9"]);
        let mut first = upload.replay();
        assert_eq!(text(pull(&mut first)), "1234");
        assert_eq!(upload.replayable(), Ok(()));
        assert_eq!(text(pull(&mut first)), "5678");
        assert_eq!(text(pull(&mut first)), "9");
        let mut second = upload.replay();
        assert!(pull(&mut second).unwrap().is_err(), "an empty body");

        // The source failed while the first attempt's body read on.
        let items: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("disk gone")),
        ];
        let upload = Upload::new(Iter(items.into_iter()), 8);
        let mut first = upload.replay();
        assert_eq!(text(pull(&mut first)), "ab");
        assert!(pull(&mut first).unwrap().is_err());
        let mut second = upload.replay();
        assert_eq!(text(pull(&mut second)), "ab");
        assert!(pull(&mut second).unwrap().is_err(), "a short body");
    }

    #[test]
    fn a_cut_off_body_reads_no_more_of_the_source() {
        let upload = chunks(&["ab", "cd"]);
        let mut first = upload.replay();
        assert_eq!(text(pull(&mut first)), "ab");
        upload.cut_off();
        assert!(pull(&mut first).unwrap().is_err());
        assert_eq!(upload.lock().pulled, 2);
    }

    #[test]
    fn a_failed_source_is_not_replayable() {
        let items: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"a")),
            Err(std::io::Error::other("disk gone")),
        ];
        let upload = Upload::new(Iter(items.into_iter()), 8);
        let mut body = upload.replay();
        assert!(pull(&mut body).unwrap().is_ok());
        assert!(pull(&mut body).unwrap().is_err());
        assert_eq!(upload.replayable(), Err(NoReplay::SourceFailed));
    }
}
