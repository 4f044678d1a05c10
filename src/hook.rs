//! Request hooks: code run on every attempt, just before it is sent, to add
//! cross-cutting headers (request ids, W3C `traceparent`, tenant headers);
//! and the request signer, an async hook that runs last and sees the body.

use std::fmt;
use std::pin::Pin;

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use crate::error::BoxError;

/// What a [`RequestHook`] sees of an attempt: method, URL (after the endpoint
/// was chosen), attempt number, and headers it may change.
pub struct HookRequest<'a> {
    request: &'a mut reqwest::Request,
    attempt: u32,
}

impl fmt::Debug for HookRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookRequest")
            .field("method", self.request.method())
            .field("url", &crate::redact::url(self.request.url()))
            .field("attempt", &self.attempt)
            .field("body_len", &self.body().map(<[u8]>::len))
            .finish_non_exhaustive()
    }
}

impl<'a> HookRequest<'a> {
    pub(crate) fn new(request: &'a mut reqwest::Request, attempt: u32) -> Self {
        Self { request, attempt }
    }

    /// The request method.
    #[must_use]
    pub fn method(&self) -> &Method {
        self.request.method()
    }

    /// The URL this attempt goes to.
    #[must_use]
    pub fn url(&self) -> &Url {
        self.request.url()
    }

    /// The attempt number, from 1.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The request headers.
    #[must_use]
    pub fn headers(&self) -> &HeaderMap {
        self.request.headers()
    }

    /// The request headers, to change. A credential added here is protected
    /// like any other: redacted, and not forwarded on a cross-origin redirect.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        self.request.headers_mut()
    }

    /// Sets a header, replacing any value it had. Mark a secret value
    /// sensitive (`HeaderValue::set_sensitive`) to keep it out of `Debug`.
    pub fn set_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.request.headers_mut().insert(name, value);
    }

    /// The body bytes that will be sent (`None` for a request without a
    /// body); the same bytes on every attempt.
    #[must_use]
    pub fn body(&self) -> Option<&[u8]> {
        self.request.body().and_then(reqwest::Body::as_bytes)
    }
}

/// Code run on every attempt of every call, just before it is sent (after the
/// token, if any, is set). Hooks run in the order they were registered, on the
/// caller's task, so task-locals and the current tracing span are in reach.
///
/// Closures `Fn(&mut HookRequest<'_>)` implement it.
///
/// # Examples
///
/// Propagating the request id of the request being served:
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::header("x-request-id", "req-7"))
/// #     .respond_with(wiremock::ResponseTemplate::new(200))
/// #     .mount(&server).await;
/// use resilient_http::{ApiClient, HeaderValue, HookRequest};
///
/// tokio::task_local! {
///     // Set by the service for each request it serves.
///     static REQUEST_ID: String;
/// }
///
/// let client = ApiClient::builder()
///     .base_url(server.uri())
///     .request_hook(|req: &mut HookRequest<'_>| {
///         if let Ok(Ok(id)) = REQUEST_ID.try_with(|id| HeaderValue::from_str(id)) {
///             req.set_header("x-request-id".parse().unwrap(), id);
///         }
///     })
///     .build()?;
///
/// let resp = REQUEST_ID
///     .scope("req-7".to_owned(), client.get("orders/1").send())
///     .await?;
/// assert_eq!(resp.status(), 200);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub trait RequestHook: Send + Sync + 'static {
    /// Called once per attempt, before it is sent.
    fn on_request(&self, request: &mut HookRequest<'_>);
}

impl<F> RequestHook for F
where
    F: Fn(&mut HookRequest<'_>) + Send + Sync + 'static,
{
    fn on_request(&self, request: &mut HookRequest<'_>) {
        self(request);
    }
}

/// What a [`RequestSigner`] sees of an attempt: the same view as a request
/// hook's, [`HookRequest`] (method, URL, attempt, headers it may change, and
/// the body through [`HookRequest::body`]), run after the token and the
/// synchronous hooks, so its headers are those that will be sent.
pub type SignRequest<'a> = HookRequest<'a>;

/// The future a [`RequestSigner`] returns.
pub type SignFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// An async hook run on every attempt, last before it is sent: after the
/// token and the synchronous [`RequestHook`]s, so it sees every header and
/// the body, for request signing (HMAC, AWS `SigV4`-like schemes) with keys it
/// may fetch asynchronously.
///
/// It runs on the caller's task, within the call's deadline (a signer still
/// running when the deadline passes ends the call with a `Total` timeout).
/// An error ends the call with [`ErrorKind::Rejected`](crate::ErrorKind::Rejected)
/// and [`ErrorReason::Signer`](crate::ErrorReason::Signer): nothing was sent,
/// and it is not retried. The error's message is part of that error's
/// `Display`: keep key material out of it. Closures `Fn(&mut SignRequest<'_>) -> SignFuture<'_>`
/// implement it.
///
/// # Examples
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::header("x-signature", "POST /orders 9"))
/// #     .respond_with(wiremock::ResponseTemplate::new(201))
/// #     .expect(1)
/// #     .mount(&server).await;
/// use resilient_http::{ApiClient, HeaderValue, RequestSigner, SignFuture, SignRequest};
///
/// struct Signer; // holds a key in real code
///
/// impl RequestSigner for Signer {
///     fn sign<'a>(&'a self, req: &'a mut SignRequest<'_>) -> SignFuture<'a> {
///         Box::pin(async move {
///             // A real signer hashes these with its key (fetched here if need be).
///             let text = format!(
///                 "{} {} {}",
///                 req.method(),
///                 req.url().path(),
///                 req.body().map_or(0, <[u8]>::len)
///             );
///             let mut value = HeaderValue::from_str(&text)?;
///             value.set_sensitive(true);
///             req.set_header("x-signature".parse()?, value);
///             Ok::<(), resilient_http::BoxError>(())
///         })
///     }
/// }
///
/// let client = ApiClient::builder().base_url(server.uri()).signer(Signer).build()?;
/// client.post("orders").body("{\"sku\":7}").send().await?;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub trait RequestSigner: Send + Sync + 'static {
    /// Signs one attempt's request; called once per attempt.
    ///
    /// # Errors
    ///
    /// Any error: the call ends, rejected, and nothing is sent.
    fn sign<'a>(&'a self, request: &'a mut SignRequest<'_>) -> SignFuture<'a>;
}

impl<F> RequestSigner for F
where
    F: for<'a, 'b> Fn(&'a mut SignRequest<'b>) -> SignFuture<'a> + Send + Sync + 'static,
{
    fn sign<'a>(&'a self, request: &'a mut SignRequest<'_>) -> SignFuture<'a> {
        self(request)
    }
}
