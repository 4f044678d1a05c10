//! Request hooks: code run on every attempt, just before it is sent, to add
//! cross-cutting headers (request ids, W3C `traceparent`, tenant headers).

use std::fmt;

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

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

    /// Sets a header, replacing any value it had.
    pub fn set_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.request.headers_mut().insert(name, value);
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
