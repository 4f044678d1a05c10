//! Request paths: how the path given to a request becomes its URL, and
//! [`Segments`], a path built from untrusted parts.
//!
//! A request path is resolved against the base URL (or, for a client with
//! endpoints, against each endpoint's URL) under these rules, checked before
//! anything is sent:
//!
//! | path | result |
//! |---|---|
//! | `users/42`, `users?page=2`, `users/a%2Fb`, `""` | joined under the base path (RFC 3986) |
//! | `/health` (one leading `/`) | replaces the base path, same origin: an explicit choice |
//! | `http://host/x` (`scheme://...`) | that URL: an explicit choice |
//! | a `..` segment, also written `%2e%2e`, `.%2e`... (`../admin`, `a/../b`) | `Config` error |
//! | a `.` segment after the first (`orders/.`, `a/%2e/b`) | `Config` error |
//! | `//host/x` (also with `\`) | `Config` error: another origin |
//! | a `\` before the query | `Config` error: the URL parser reads it as `/` |
//! | `name:rest` without `//` (`http:foo`, `users:search`) | `Config` error: read as a URL scheme; write `./users:search` |
//! | a `#` (in a path that is not a full URL) | `Config` error, always: the fragment is never sent and the rest would be dropped |
//! | an ASCII control character (tab, newline, NUL...) anywhere, or a leading or trailing space | `Config` error, always: the URL parser would drop it silently |
//!
//! The `..`, `.`, `//`, `\` and scheme rules keep a path from leaving the base
//! path; they are lifted by `allow_path_escape(true)` on the client builder or
//! on one request, which restores the plain RFC 3986 join (on an endpoint,
//! within its origin: below). Whatever the rules
//! let through is checked once more after the join: the URL must have the
//! base's origin and, for a path without a leading `/`, start with the base's
//! path.
//!
//! On an endpoint ([`join_on_endpoint`]) the origin check holds even with
//! `allow_path_escape`: the client's token and credential-like default
//! headers go to its endpoints, so a path that would take them to another
//! origin (`//host/x`, `https:host/x` from an `http` endpoint) is refused;
//! `..` may still climb within the endpoint's origin.
//!
//! A `?` starts the query, so a path may carry one (`users?page=2`). Text from
//! outside (an id, a name) belongs in [`Segments`], which percent-encodes
//! `/`, `?`, `#`, `%` and every other character outside RFC 3986's unreserved
//! set, or in [`RequestBuilder::query`](crate::RequestBuilder::query).
//!
//! Error messages name the rule that refused a path, never the path itself,
//! which may hold an id or a token.

use std::borrow::Cow;
use std::fmt;

use url::Url;

use crate::error::Error;

/// What an invalid [`Segments`] stands for: no path starting with a NUL is
/// ever joined (it is a control character), so the marker cannot be sent.
const INVALID: &str = "\0resilient-http: invalid Segments: ";

/// A relative request path built from segments, each one percent-encoded, so
/// that text from outside stays inside its segment.
///
/// Every byte outside RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`)
/// is percent-encoded: `/`, `?`, `#`, `%`, `\`, spaces, control characters and
/// non-ASCII text cannot change the path's structure, add a query or drop the
/// rest. A segment that is empty, `.` or `..` would turn `orders/{id}` into a
/// call on the collection or above it: it makes the `Segments` invalid, and a
/// request for it fails at `send()` with
/// [`ErrorKind::Config`](crate::ErrorKind::Config), before anything is sent.
///
/// `Segments` is `AsRef<str>`, so it goes wherever a path does:
/// `client.get(Segments::new(["orders", id]))`, on a client with a `base_url`
/// or with endpoints. The path is relative (it has no leading `/`), so it is
/// joined under the base path; see the [path rules](crate::ApiClient::request).
///
/// # Examples
///
/// ```
/// # async fn run() -> resilient_http::Result<()> {
/// # let server = wiremock::MockServer::start().await;
/// # wiremock::Mock::given(wiremock::matchers::path("/v1/orders/..%2Fadmin"))
/// #     .respond_with(wiremock::ResponseTemplate::new(404))
/// #     .expect(1)
/// #     .mount(&server).await;
/// use resilient_http::{ApiClient, ErrorKind, Segments};
///
/// let client = ApiClient::builder().base_url(format!("{}/v1/", server.uri())).build()?;
///
/// // Untrusted text stays one segment: this asks for the order "../admin".
/// let id = "../admin";
/// let path = Segments::new(["orders", id]);
/// assert_eq!(path.as_str(), "orders/..%2Fadmin");
/// let err = client.delete(path).send().await.unwrap_err();
/// assert_eq!(err.status(), Some(resilient_http::StatusCode::NOT_FOUND));
///
/// // An empty id would be a call on the whole collection: refused, nothing sent.
/// let err = client.delete(Segments::new(["orders", ""])).send().await.unwrap_err();
/// assert_eq!((err.kind(), err.attempts()), (ErrorKind::Config, 0));
///
/// // Segments can be added one by one, numbers too.
/// let path = Segments::new(["orders"]).push(42.to_string()).push("items").trailing_slash();
/// assert_eq!(path.as_str(), "orders/42/items/");
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Segments {
    /// The encoded path, or [`INVALID`] and the reason.
    path: String,
    /// Segments pushed so far.
    count: usize,
}

impl Segments {
    /// A path of `segments`, in order, each percent-encoded. No segments is
    /// the empty path: the base URL itself.
    pub fn new<I>(segments: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        segments.into_iter().fold(Self::default(), Self::push)
    }

    /// Appends one segment, percent-encoded. An empty, `.` or `..` segment
    /// makes the path invalid (see [`is_valid`](Self::is_valid)).
    #[must_use]
    pub fn push(mut self, segment: impl AsRef<str>) -> Self {
        let segment = segment.as_ref();
        self.count += 1;
        if !self.is_valid() {
            return self;
        }
        let what = match segment {
            "" => Some("empty"),
            "." => Some("`.`"),
            ".." => Some("`..`"),
            _ => None,
        };
        if let Some(what) = what {
            self.path = format!("{INVALID}segment {} is {what}\0", self.count);
            return self;
        }
        if !self.path.is_empty() && !self.path.ends_with('/') {
            self.path.push('/');
        }
        encode_into(&mut self.path, segment);
        self
    }

    /// Ends the path built so far with `/` (`orders/42/`), for services whose
    /// resources end with one. A later [`push`](Self::push) adds its segment
    /// after it. Does nothing to an empty path, which already stands for the
    /// base URL (whose path ends with `/`).
    #[must_use]
    pub fn trailing_slash(mut self) -> Self {
        if self.is_valid() && !self.path.is_empty() && !self.path.ends_with('/') {
            self.path.push('/');
        }
        self
    }

    /// Whether every segment was accepted (none empty, `.` or `..`).
    #[must_use]
    pub fn is_valid(&self) -> bool {
        !self.path.starts_with(INVALID)
    }

    /// The encoded path (`orders/..%2Fadmin`). For an invalid `Segments` it
    /// is a marker that starts with a NUL character, which every request
    /// refuses with an error that names the segment.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.path
    }
}

impl AsRef<str> for Segments {
    fn as_ref(&self) -> &str {
        &self.path
    }
}

impl<S: AsRef<str>> FromIterator<S> for Segments {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Self::new(iter)
    }
}

impl fmt::Debug for Segments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match invalid_reason(&self.path) {
            Some(reason) => write!(f, "Segments(invalid: {reason})"),
            None => f.debug_tuple("Segments").field(&self.path).finish(),
        }
    }
}

/// Appends `segment` with every byte outside RFC 3986's unreserved set
/// percent-encoded.
fn encode_into(out: &mut String, segment: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in segment.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// The reason an invalid [`Segments`] gave, if `path` starts with its marker
/// (only the marker's own text, never what may follow it).
fn invalid_reason(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(INVALID)?;
    Some(
        rest.split('\0')
            .next()
            .filter(|r| r.len() <= 40 && r.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
            .unwrap_or("a segment is empty, `.` or `..`"),
    )
}

/// Why a request path was refused. Each one is a rule of the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// An invalid [`Segments`], with its reason.
    Segments(String),
    /// An ASCII control character, or a leading or trailing space.
    Control,
    /// A `#` in a path that is not a full URL.
    Fragment,
    /// `name:` without `//`, which the URL parser reads as a scheme.
    Scheme,
    /// `//host`, `\\host`: another origin.
    SchemeRelative,
    /// A `\` before the query.
    Backslash,
    /// A `..` segment, literal or percent-encoded.
    DotDot,
    /// A `.` segment after the first, literal or percent-encoded.
    Dot,
    /// The joined URL leaves the base's origin or path.
    Outside,
    /// The joined URL leaves an endpoint's origin, which no opt-in allows.
    OtherOrigin,
    /// The URL parser refused it.
    Invalid(url::ParseError),
}

impl Refusal {
    fn message(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::Segments(reason) => return Cow::Owned(format!("invalid Segments: {reason}")),
            Self::Control => {
                "request path has a control character (tab, newline...) or a leading or \
                 trailing space, which the URL parser would silently drop"
            }
            Self::Fragment => {
                "request path has a '#': the fragment is never sent and the rest of the path \
                 would be dropped (percent-encode it as %23, or use Segments)"
            }
            Self::Scheme => {
                "request path starts with `name:`, which is read as a URL scheme: write a full \
                 `scheme://` URL, or `./name:...` for a segment with a colon"
            }
            Self::SchemeRelative => {
                "request path starts with `//`, which leaves the base URL's origin \
                 (opt in with allow_path_escape)"
            }
            Self::Backslash => {
                "request path has a '\\', which the URL parser reads as '/' \
                 (percent-encode it as %5C, or use Segments)"
            }
            Self::DotDot => {
                "request path has a `..` segment (perhaps percent-encoded), which can climb \
                 above the base URL's path (use Segments for untrusted text, or opt in with \
                 allow_path_escape)"
            }
            Self::Dot => {
                "request path has a `.` segment (perhaps percent-encoded) after the first \
                 (use Segments for untrusted text, or opt in with allow_path_escape)"
            }
            Self::Outside => {
                "request path resolves outside the base URL's path \
                 (opt in with allow_path_escape)"
            }
            Self::OtherOrigin => {
                "request path leaves the endpoint's origin, which allow_path_escape never \
                 allows on a client with endpoints (call a full `scheme://` URL instead)"
            }
            Self::Invalid(_) => "invalid request URL",
        })
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.message();
        match refusal {
            Refusal::Invalid(e) => Error::config(message).with_source(e),
            _ => Error::config(message),
        }
    }
}

/// The URL for `path` on `base` (whose path ends with `/`), under the rules of
/// the module docs; `allow_escape` lifts the rules that keep the path under
/// the base path.
///
/// # Errors
///
/// `Config`, naming the rule that refused the path.
pub(crate) fn join(base: &Url, path: &str, allow_escape: bool) -> Result<Url, Error> {
    resolve(base, path, allow_escape).map_err(Error::from)
}

/// The URL for `path` on an endpoint's URL `base`: [`join`], and the joined
/// URL must keep `base`'s origin even when `allow_escape` lifts the other
/// rules, since a routed call carries the client's credentials.
///
/// # Errors
///
/// `Config`, naming the rule that refused the path.
pub(crate) fn join_on_endpoint(base: &Url, path: &str, allow_escape: bool) -> Result<Url, Error> {
    resolve_on_endpoint(base, path, allow_escape).map_err(Error::from)
}

/// [`join_on_endpoint`] with the reason for a refusal.
fn resolve_on_endpoint(base: &Url, path: &str, allow_escape: bool) -> Result<Url, Refusal> {
    let url = resolve(base, path, allow_escape)?;
    if crate::origin::same_origin(&url, base) {
        Ok(url)
    } else {
        Err(Refusal::OtherOrigin)
    }
}

/// `path` as an absolute URL, for a client without a base URL.
///
/// # Errors
///
/// `Config` for text the URL parser would change silently or cannot parse.
pub(crate) fn absolute(path: &str) -> Result<Url, Error> {
    check_text(path)?;
    Url::parse(path).map_err(|e| Refusal::Invalid(e).into())
}

/// `path` with a leading `/`: the base path a resolver puts after the
/// addresses it finds.
#[cfg(any(feature = "etcd", feature = "dns"))]
pub(crate) fn rooted(path: impl Into<String>) -> String {
    let mut path = path.into();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    path
}

/// Whether `path` is a full URL (`scheme://...`), which goes where it says.
pub(crate) fn is_absolute(path: &str) -> bool {
    scheme_len(path).is_some_and(|n| path[n + 1..].starts_with("//"))
}

/// [`join`] with the reason for a refusal.
pub(crate) fn resolve(base: &Url, path: &str, allow_escape: bool) -> Result<Url, Refusal> {
    check_text(path)?;
    if is_absolute(path) {
        return Url::parse(path).map_err(Refusal::Invalid);
    }
    if path.contains('#') {
        return Err(Refusal::Fragment);
    }
    if allow_escape {
        return base.join(path).map_err(Refusal::Invalid);
    }
    let end = path.find('?').unwrap_or(path.len());
    let part = &path[..end];
    check_relative(part)?;
    if let Some(url) = plain_join(base, part, path.get(end + 1..)) {
        return Ok(url);
    }
    let url = base.join(path).map_err(Refusal::Invalid)?;
    let inside = crate::origin::same_origin(&url, base)
        && (part.starts_with('/') || url.path().starts_with(base.path()));
    if inside {
        Ok(url)
    } else {
        Err(Refusal::Outside)
    }
}

/// The join of a plain reference (a path, and a query, made of characters
/// the URL parser keeps as they are) that [`check_relative`] let through,
/// without the general parser: `base`'s path (or none, for a path from the
/// root) followed by `part`, then the query. This runs for nearly every
/// call; what it declines goes through `Url::join`, and both give the same
/// URL (a property test checks it).
fn plain_join(base: &Url, part: &str, query: Option<&str>) -> Option<Url> {
    // Unreserved characters, sub-delimiters, `:`, `@` and `/`; no `%` (an
    // escape the parser would check) and, in a query, no `'` (escaped there
    // for http and https).
    fn plain(b: u8) -> bool {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            )
    }
    let plain_query = |q: &str| q.bytes().all(|b| plain(b) || b == b'?');
    // (Appending is `Url::join` only on a base whose path ends with `/`,
    // as every client's does.)
    if base.query().is_some()
        || base.fragment().is_some()
        || !base.path().ends_with('/')
        || !part.bytes().all(|b| plain(b) || b == b'\'')
        || !query.is_none_or(plain_query)
    {
        return None;
    }
    let mut url = base.clone();
    if part.starts_with('/') {
        url.set_path(part);
    } else if !part.is_empty() {
        let mut joined = String::with_capacity(base.path().len() + part.len());
        joined.push_str(base.path());
        joined.push_str(part);
        url.set_path(&joined);
    }
    url.set_query(query);
    Some(url)
}

/// The rules for the text itself: the marker of an invalid [`Segments`],
/// control characters and outer spaces.
fn check_text(path: &str) -> Result<(), Refusal> {
    if let Some(reason) = invalid_reason(path) {
        return Err(Refusal::Segments(reason.to_owned()));
    }
    if path.bytes().any(|b| b.is_ascii_control()) || path.starts_with(' ') || path.ends_with(' ') {
        return Err(Refusal::Control);
    }
    Ok(())
}

/// The rules for the path part (before any `?`) of a relative reference.
fn check_relative(part: &str) -> Result<(), Refusal> {
    let slash = |b: u8| b == b'/' || b == b'\\';
    if let [a, b, ..] = part.as_bytes()
        && slash(*a)
        && slash(*b)
    {
        return Err(Refusal::SchemeRelative);
    }
    if scheme_len(part).is_some() {
        return Err(Refusal::Scheme);
    }
    if part.contains('\\') {
        return Err(Refusal::Backslash);
    }
    for (i, segment) in part.split('/').enumerate() {
        match dots(segment) {
            2 => return Err(Refusal::DotDot),
            // `./name:x` is how RFC 3986 writes a first segment with a colon.
            1 if !(i == 0 && segment == ".") => return Err(Refusal::Dot),
            _ => {}
        }
    }
    Ok(())
}

/// 1 for a segment the URL parser treats as `.`, 2 for `..`, else 0: a dot
/// is `.` or `%2e` in either case.
fn dots(segment: &str) -> usize {
    let mut rest = segment.as_bytes();
    let mut n = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return 0;
        }
        n += 1;
        if n > 2 {
            return 0;
        }
    }
    n
}

/// The length of a leading URL scheme (`ALPHA *( ALPHA / DIGIT / + / - / . )`)
/// followed by `:`, if `text` has one.
fn scheme_len(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    if !bytes.first()?.is_ascii_alphabetic() {
        return None;
    }
    let n = bytes
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))?;
    (bytes[n] == b':').then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://h:8080/v1/").unwrap()
    }

    fn to(path: &str) -> Result<String, Refusal> {
        resolve(&base(), path, false).map(String::from)
    }

    #[test]
    fn relative_paths_join_under_the_base_path() {
        for (path, url) in [
            ("orders/42", "http://h:8080/v1/orders/42"),
            ("users?page=2", "http://h:8080/v1/users?page=2"),
            ("users/?a=../b", "http://h:8080/v1/users/?a=../b"),
            ("", "http://h:8080/v1/"),
            ("?q=1", "http://h:8080/v1/?q=1"),
            ("a b/é", "http://h:8080/v1/a%20b/%C3%A9"),
            ("a/..%2Fb", "http://h:8080/v1/a/..%2Fb"),
            ("a/...", "http://h:8080/v1/a/..."),
            ("a/.b/..c", "http://h:8080/v1/a/.b/..c"),
            ("./users:search", "http://h:8080/v1/users:search"),
            ("1a:b", "http://h:8080/v1/1a:b"),
            ("a//b", "http://h:8080/v1/a//b"),
            ("/health", "http://h:8080/health"),
            ("http://other/x", "http://other/x"),
            ("HTTP://other/x", "http://other/x"),
        ] {
            assert_eq!(to(path).as_deref(), Ok(url), "{path:?}");
        }
    }

    #[test]
    fn paths_that_leave_the_base_path_are_refused() {
        use Refusal::*;
        for (path, why) in [
            ("../admin", DotDot),
            ("orders/../../admin", DotDot),
            ("a/../b", DotDot),
            ("..", DotDot),
            ("orders/..", DotDot),
            ("%2e%2e/%2E%2E/admin", DotDot),
            ("orders/.%2e/x", DotDot),
            ("%2e./x", DotDot),
            ("/../admin", DotDot),
            ("orders/.", Dot),
            ("a/%2e/b", Dot),
            ("%2e/b", Dot),
            ("/./x", Dot),
            ("//evil.example/x", SchemeRelative),
            ("\\\\evil.example/x", SchemeRelative),
            ("/\\evil.example/x", SchemeRelative),
            ("a\\..\\b", Backslash),
            ("http:foo", Scheme),
            ("http:\\\\evil.example", Scheme),
            ("https:evil.example", Scheme),
            ("users:search", Scheme),
            ("a#b", Fragment),
            ("a?x#y", Fragment),
            ("a\tb", Control),
            ("a\nb", Control),
            ("a\r\n", Control),
            ("a\0", Control),
            ("a\u{7f}", Control),
            (" //evil.example", Control),
            ("users ", Control),
            ("http://h/\t", Control),
        ] {
            assert_eq!(to(path), Err(why), "{path:?}");
        }
    }

    #[test]
    fn opting_in_restores_the_plain_join_but_not_silent_changes() {
        let base = base();
        for path in [
            "../admin",
            "%2e%2e/%2e%2e/admin",
            "//evil.example/",
            "a\\..\\b",
            "http:foo",
        ] {
            let got = resolve(&base, path, true).unwrap();
            assert_eq!(got, base.join(path).unwrap(), "{path:?}");
        }
        assert_eq!(resolve(&base, "a#b", true), Err(Refusal::Fragment));
        assert_eq!(resolve(&base, "a\tb", true), Err(Refusal::Control));
    }

    #[test]
    fn on_an_endpoint_no_opt_in_leaves_its_origin() {
        let base = base();
        for path in ["../admin", "http:foo", "/root", "a\\..\\b"] {
            let url = resolve_on_endpoint(&base, path, true);
            assert_eq!(url, Ok(base.join(path).unwrap()), "{path:?}");
        }
        for path in [
            "//evil.example/x",
            "\\\\evil.example/x",
            "https:evil.example/x",
            "http://evil.example/x",
            "//h:8081/x",
        ] {
            let refused = resolve_on_endpoint(&base, path, true);
            assert_eq!(refused, Err(Refusal::OtherOrigin), "{path:?}");
        }
        let err = join_on_endpoint(&base, "//evil.example/x", true).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Config);
    }

    #[test]
    fn dots_are_counted_in_every_spelling() {
        for (segment, n) in [
            (".", 1),
            ("%2e", 1),
            ("%2E", 1),
            ("..", 2),
            (".%2e", 2),
            ("%2E.", 2),
            ("%2e%2E", 2),
            ("...", 0),
            ("", 0),
            ("%2", 0),
            ("%2f", 0),
            (".a", 0),
            ("%2e%2e%2e", 0),
        ] {
            assert_eq!(dots(segment), n, "{segment:?}");
        }
    }

    #[test]
    fn segments_encode_everything_outside_unreserved() {
        let s = Segments::new(["a/b", "a?x=1", "a#b", "%2e%2e", "日本", "A-z_0.9~", "a b\\"]);
        assert_eq!(
            s.as_str(),
            "a%2Fb/a%3Fx%3D1/a%23b/%252e%252e/%E6%97%A5%E6%9C%AC/A-z_0.9~/a%20b%5C"
        );
        assert!(s.is_valid());
        assert_eq!(Segments::new(["..."]).as_str(), "...");
        assert_eq!(Segments::new(Vec::<String>::new()).as_str(), "");
        assert_eq!(Segments::default().trailing_slash().as_str(), "");
        let s: Segments = ["a", "b"].into_iter().collect();
        assert_eq!(s.trailing_slash().push("c").as_str(), "a/b/c");
    }

    #[test]
    fn invalid_segments_name_the_segment_and_never_join() {
        for (parts, reason) in [
            (vec!["orders", ""], "segment 2 is empty"),
            (vec![".", "x"], "segment 1 is `.`"),
            (vec!["a", "b", ".."], "segment 3 is `..`"),
        ] {
            let s = Segments::new(&parts).push("more");
            assert!(!s.is_valid());
            assert_eq!(format!("{s:?}"), format!("Segments(invalid: {reason})"));
            for allow in [false, true] {
                assert_eq!(
                    resolve(&base(), s.as_str(), allow),
                    Err(Refusal::Segments(reason.to_owned()))
                );
                let later = format!("{}?secret=1", s.as_str());
                assert_eq!(
                    resolve(&base(), &later, allow),
                    Err(Refusal::Segments(reason.to_owned()))
                );
            }
        }
        assert_eq!(
            invalid_reason(&format!("{INVALID}{}", "x".repeat(100))),
            Some("a segment is empty, `.` or `..`")
        );
    }

    /// Paths from fragments that trip URL parsers.
    fn hostile_paths() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let fragment = prop_oneof![
            4 => prop::sample::select(vec![
                "", ".", "..", "/", "//", "\\", "%2e", "%2E", "%2f", "%", "?", "#", ":", "a:",
                "http:", "http://", "HTTP://", "//h", " ", "\t", "é", "a", "users", "@", "[::1]",
                "=", "&", "'", "~", "+", "!$()*,;", "a.b", "?k=v&x", "%41",
            ])
            .prop_map(str::to_owned),
            1 => "\\PC{0,4}",
        ];
        prop::collection::vec(fragment, 0..8).prop_map(|parts| parts.concat())
    }

    #[test]
    fn the_rules_only_refuse_they_never_change_a_url() {
        use proptest::test_runner::{Config, TestRunner};
        let bases = [
            "http://h:8080/",
            "http://h:8080/v1/",
            "https://u:p@h/a/b/",
            "http://h/v1/?k=v",
            "http://h/v1",
        ]
        .map(|b| Url::parse(b).unwrap());
        let mut runner = TestRunner::new(Config {
            cases: 4096,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&(0..bases.len(), hostile_paths()), |(i, path)| {
            let base = &bases[i];
            let lenient = resolve(base, &path, true);
            if let Ok(url) = resolve(base, &path, false) {
                proptest::prop_assert_eq!(Ok(&url), lenient.as_ref());
                if !is_absolute(&path) {
                    proptest::prop_assert_eq!(url.origin(), base.origin());
                    if !path.starts_with('/') {
                        proptest::prop_assert!(url.path().starts_with(base.path()), "{}", url);
                    }
                    proptest::prop_assert_eq!(url.fragment(), None);
                }
            }
            if let Ok(url) = &lenient {
                // Opting in restores the plain join exactly.
                proptest::prop_assert_eq!(Some(url.clone()), base.join(&path).ok());
            }
            Ok(())
        });
        if let Err(failure) = result {
            panic!("{failure}");
        }
    }

    #[test]
    fn refusals_never_quote_the_path() {
        let secret = "s3cr3t";
        for path in [
            format!("../{secret}"),
            format!("//{secret}/"),
            format!("a#{secret}"),
            format!("{secret}\t"),
            format!("{secret}:x"),
        ] {
            let err = join(&base(), &path, false).unwrap_err();
            assert!(!err.to_string().contains(secret), "{err}");
            assert!(!format!("{err:?}").contains(secret), "{err:?}");
        }
    }
}
