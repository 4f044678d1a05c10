//! Origins: parsing a base URL, telling whether two URLs share an origin, and
//! the key endpoints (and their circuit breakers) are known by.
//!
//! An origin is (scheme, host, port), as browsers define it: credentials given
//! for one origin never go to another, and one circuit breaker serves one
//! origin.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;
use url::Url;

use crate::error::Error;

/// Parses a base URL (`what` names the option in errors): `http` or `https`
/// with a host, and no query or fragment (joining a path drops them, so they
/// would be lost on every request but one). A missing trailing `/` is added,
/// so relative paths are joined under the base path rather than replacing its
/// last segment.
pub(crate) fn parse_base(raw: &str, what: &'static str) -> Result<Url, Error> {
    let mut url =
        Url::parse(raw).map_err(|e| Error::config(format!("invalid {what}")).with_source(e))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::config(format!(
            "{what} must be an http or https URL"
        )));
    }
    if url.scheme() == "https" && !crate::tls::HAS_TLS {
        return Err(Error::config(format!(
            "{what} is https, but this build has no TLS: enable the feature rustls, \
             rustls-ring or native-tls"
        )));
    }
    if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
        return Err(Error::config(format!("{what} must have a host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::config(format!(
            "{what} must not have a query or a fragment, which request paths would drop: \
             set a query on each request with RequestBuilder::query"
        )));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Whether two URLs share an origin (scheme, host, port): credentials given
/// for one may go to the other.
pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    // Compared in place: this runs per request (default headers, the path
    // rules, redirects), so it must not allocate.
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The origin of a URL: (scheme, host, port), the port made explicit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    scheme: Box<str>,
    host: Box<str>,
    port: u16,
}

impl Origin {
    pub(crate) fn of(url: &Url) -> Self {
        Self {
            scheme: url.scheme().into(),
            host: url.host_str().unwrap_or_default().into(),
            port: url.port_or_known_default().unwrap_or(0),
        }
    }

    /// Whether `url` has this origin.
    pub(crate) fn matches(&self, url: &Url) -> bool {
        *self.scheme == *url.scheme()
            && *self.host == *url.host_str().unwrap_or_default()
            && self.port == url.port_or_known_default().unwrap_or(0)
    }
}

/// `scheme://host:port`: the name breakers, logs and metrics use.
impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Origins remembered besides the base URL's, per [`PerOrigin`]: calls to
/// absolute URLs can name any host; this bounds what they can make a client
/// keep.
pub(crate) const MAX_ORIGINS: usize = 1024;

/// Per-origin state a [`PerOrigin`] may forget, once no call holds it.
pub(crate) trait Forgettable {
    /// Whether forgetting it now loses nothing (a closed breaker, a pause
    /// that is over).
    fn idle(&self, now: Instant) -> bool;
}

/// One piece of state per origin for a client (its breakers, its pushback
/// pauses): the base URL's apart, reached without a lock; any other created
/// on first use and remembered up to [`MAX_ORIGINS`].
#[derive(Debug)]
pub(crate) struct PerOrigin<T> {
    base: Option<(Origin, Arc<T>)>,
    others: Mutex<HashMap<Origin, Arc<T>>>,
}

impl<T: Forgettable> PerOrigin<T> {
    /// The base URL's state is made at once, by `make`.
    pub(crate) fn new(base: Option<&Url>, make: impl FnOnce(&Origin) -> T) -> Self {
        let base = base.map(|url| {
            let key = Origin::of(url);
            let value = Arc::new(make(&key));
            (key, value)
        });
        Self {
            base,
            others: Mutex::new(HashMap::new()),
        }
    }

    /// The base URL's state.
    pub(crate) fn base(&self) -> Option<&T> {
        self.base.as_ref().map(|(_, v)| &**v)
    }

    /// The state of `url`'s origin, made by `make` on first use. Past the
    /// bound, idle entries no call holds are forgotten; if none is, an
    /// eighth of those no call holds (open breakers, running pauses) are, so
    /// that a new origin is remembered too and the next ones do not scan
    /// again; if every entry is held, the call gets a fresh state that is
    /// not remembered.
    pub(crate) fn get(&self, url: &Url, make: impl FnOnce(&Origin) -> T) -> Arc<T> {
        if let Some((key, value)) = &self.base
            && key.matches(url)
        {
            return Arc::clone(value);
        }
        let key = Origin::of(url);
        let mut others = self.others.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = others.get(&key) {
            return Arc::clone(value);
        }
        if others.len() >= MAX_ORIGINS {
            let now = Instant::now();
            others.retain(|_, v| Arc::strong_count(v) > 1 || !v.idle(now));
        }
        if others.len() >= MAX_ORIGINS {
            // In the map's order: arbitrary.
            let mut forget = MAX_ORIGINS / 8;
            others.retain(|_, v| {
                let keep = forget == 0 || Arc::strong_count(v) > 1;
                if !keep {
                    forget -= 1;
                }
                keep
            });
        }
        let value = Arc::new(make(&key));
        if others.len() < MAX_ORIGINS {
            others.insert(key, Arc::clone(&value));
        }
        value
    }

    /// Origins remembered besides the base URL's.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.others.lock().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "_tls"))]
    #[test]
    fn an_https_url_without_tls_is_a_config_error_that_names_the_features() {
        let err = parse_base("https://a.example/api/", "endpoint").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Config);
        let text = err.to_string();
        assert!(
            text.contains("endpoint is https") && text.contains("rustls"),
            "{text}"
        );
        assert!(parse_base("http://a.example/api/", "endpoint").is_ok());
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let base = url("http://a.example/api/");
        assert!(same_origin(&base, &url("http://a.example:80/other")));
        assert!(!same_origin(&base, &url("https://a.example/api/")));
        assert!(!same_origin(&base, &url("http://b.example/api/")));
        assert!(!same_origin(&base, &url("http://a.example:8080/api/")));
        assert_eq!(Origin::of(&base).to_string(), "http://a.example:80");
    }

    #[test]
    fn a_base_gets_its_trailing_slash() {
        let base = parse_base("http://a.example/api", "base_url").unwrap();
        assert_eq!(base.as_str(), "http://a.example/api/");
        assert!(parse_base("ftp://a.example/", "base_url").is_err());
        assert!(parse_base("mailto:x@a.example", "base_url").is_err());
    }

    #[test]
    fn a_base_with_a_query_or_fragment_is_refused() {
        for raw in [
            "http://a.example/api/?k=1",
            "http://a.example/api?k=1",
            "http://a.example/api/?",
            "http://a.example/api/#frag",
            "http://a.example/api#",
        ] {
            let err = parse_base(raw, "base_url").unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Config, "{raw:?}");
        }
    }
}
