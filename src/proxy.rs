//! Proxies: which calls go through one, and which never do.
//!
//! The whole policy, in order:
//! 1. [`no_proxy()`](crate::ApiClientBuilder::no_proxy): no proxy at all,
//!    the environment ignored.
//! 2. [`proxy(url)`](crate::ApiClientBuilder::proxy): every call through that
//!    proxy (HTTPS through a `CONNECT` tunnel), the environment ignored.
//! 3. Otherwise the environment, as curl reads it: `HTTPS_PROXY` for https
//!    URLs, `HTTP_PROXY` for http URLs (ignored when `REQUEST_METHOD` is set,
//!    as in a CGI script), `ALL_PROXY` for both, lowercase names too, and
//!    `NO_PROXY`.
//!
//! Calls to loopback (`localhost`, `127.0.0.0/8`, `::1`) never go through a
//! proxy, whichever way it was set: a proxy cannot reach the caller's own
//! loopback, and a sidecar or a test server there must not be sent elsewhere
//! by surprise. The [`proxy_bypass`](crate::ApiClientBuilder::proxy_bypass)
//! rules and `NO_PROXY` add to that list.
//!
//! Credentials in the proxy URL (`http://user:password@proxy:3128`) are sent
//! as `Proxy-Authorization` to the proxy only, and never shown: `Debug` of the
//! builder shows the URL without its password, and errors do not carry it.

use std::fmt;

use url::Url;

use crate::error::Error;
use crate::redact;

/// Destinations that never go through a proxy.
const LOOPBACK: &str = "localhost,127.0.0.0/8,::1";

/// The proxy options of a builder, as given (the URL is checked in `build()`).
#[derive(Clone, Default)]
pub(crate) struct ProxySettings {
    pub(crate) url: Option<String>,
    pub(crate) bypass: Vec<String>,
    pub(crate) off: bool,
}

impl fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.url.as_deref().map(shown))
            .field("bypass", &self.bypass)
            .field("off", &self.off)
            .finish()
    }
}

impl ProxySettings {
    /// Applies the policy to the transport's builder: reqwest's own reading of
    /// the environment is always off, and replaced by ours (with the loopback
    /// exception). `direct`: host names the transport pins to loopback
    /// addresses (`tls_server_name` on `https://127.0.0.1`), which are
    /// loopback too.
    pub(crate) fn apply(
        &self,
        b: reqwest::ClientBuilder,
        direct: &[&str],
    ) -> Result<reqwest::ClientBuilder, Error> {
        let mut b = b.no_proxy();
        if self.off {
            if self.url.is_some() {
                return Err(Error::config("set either proxy or no_proxy, not both"));
            }
            return Ok(b);
        }
        let mut rules = vec![LOOPBACK.to_owned()];
        rules.extend(direct.iter().map(|&name| name.to_owned()));
        rules.extend(self.bypass.iter().cloned());
        // `*` bypasses everything: no proxy (reqwest's rules match `*`
        // against names only, not IP addresses).
        let everything = |list: &str| list.split(',').any(|rule| rule.trim() == "*");
        if self.bypass.iter().any(|rule| everything(rule)) {
            return Ok(b);
        }
        if let Some(raw) = &self.url {
            let url = parse("proxy", raw)?;
            return Ok(b.proxy(with_rules(reqwest::Proxy::all(url), &rules)?));
        }
        let env = Environment::read();
        if let Some(no) = env.no_proxy {
            if everything(&no) {
                return Ok(b);
            }
            rules.push(no);
        }
        if let Some(raw) = env.https {
            let url = parse("HTTPS_PROXY", &raw)?;
            b = b.proxy(with_rules(reqwest::Proxy::https(url), &rules)?);
        }
        if let Some(raw) = env.http {
            let url = parse("HTTP_PROXY", &raw)?;
            b = b.proxy(with_rules(reqwest::Proxy::http(url), &rules)?);
        }
        if let Some(raw) = env.all {
            let url = parse("ALL_PROXY", &raw)?;
            b = b.proxy(with_rules(reqwest::Proxy::all(url), &rules)?);
        }
        Ok(b)
    }
}

/// A proxy URL as `Debug` shows it: without its password.
pub(crate) fn shown(raw: &str) -> String {
    parse("proxy", raw).map_or_else(
        |_| "(not a valid URL)".to_owned(),
        |u| redact::url(&u).to_string(),
    )
}

/// Parses a proxy URL; the error never quotes it (it may hold a password).
fn parse(what: &'static str, raw: &str) -> Result<Url, Error> {
    // As curl does, a bare `host:port` means an http proxy.
    let parsed = if raw.contains("://") {
        Url::parse(raw)
    } else {
        Url::parse(&format!("http://{raw}"))
    };
    let url = parsed
        .ok()
        .filter(Url::has_host)
        .ok_or_else(|| Error::config(format!("{what} is not a valid URL")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::config(format!(
            "{what} must be an http:// or https:// URL"
        )));
    }
    Ok(url)
}

fn with_rules(
    proxy: reqwest::Result<reqwest::Proxy>,
    rules: &[String],
) -> Result<reqwest::Proxy, Error> {
    // reqwest's error would quote the URL: say only what failed.
    let proxy = proxy.map_err(|_| Error::config("the proxy URL is not usable"))?;
    Ok(proxy.no_proxy(reqwest::NoProxy::from_string(&rules.join(","))))
}

/// The proxy variables of the environment, read once when a client is built.
struct Environment {
    https: Option<String>,
    http: Option<String>,
    all: Option<String>,
    no_proxy: Option<String>,
}

impl Environment {
    fn read() -> Self {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        };
        let cgi = std::env::var_os("REQUEST_METHOD").is_some();
        Self {
            https: var(&["HTTPS_PROXY", "https_proxy"]),
            // httpoxy: in a CGI script HTTP_PROXY comes from a request header.
            http: if cgi {
                var(&["http_proxy"])
            } else {
                var(&["HTTP_PROXY", "http_proxy"])
            },
            all: var(&["ALL_PROXY", "all_proxy"]),
            no_proxy: var(&["NO_PROXY", "no_proxy"]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_host_and_port_is_an_http_proxy() {
        let url = parse("proxy", "proxy.internal:3128").unwrap();
        assert_eq!(url.as_str(), "http://proxy.internal:3128/");
    }

    #[test]
    fn a_bad_proxy_url_is_refused_without_quoting_it() {
        for raw in ["socks5://u:hunter2@p:1080", "http://u:hunter2@[::1"] {
            let err = parse("proxy", raw).unwrap_err();
            assert!(!err.to_string().contains("hunter2"), "{err}");
            assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let settings = ProxySettings {
            url: Some("http://user:hunter2@proxy.internal:3128".into()),
            ..ProxySettings::default()
        };
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("proxy.internal"),
            "{debug}"
        );
        let bare = ProxySettings {
            url: Some("user:hunter2@proxy.internal:3128".into()),
            ..ProxySettings::default()
        };
        assert!(!format!("{bare:?}").contains("hunter2"), "{bare:?}");
    }
}
