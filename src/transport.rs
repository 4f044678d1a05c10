//! The transport: how a client's `reqwest::Client`s are built.
//!
//! A client has one pooled `reqwest::Client`, plus one per endpoint that names
//! the address to reach its host at ([`Endpoint::address`](crate::Endpoint::address)):
//! such endpoints share a host name (and so one URL) but must reach different
//! addresses, while `Host` and TLS SNI keep the name. Each of those clients is
//! built with the same settings plus that one address for the host.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::HeaderValue;

use crate::error::Error;
use crate::proxy::ProxySettings;
use crate::redirect;
use crate::timeout::NEVER;
use crate::tls::TlsSettings;

/// The settings every `reqwest::Client` of one client is built with.
#[derive(Debug, Clone, Default)]
pub(crate) struct Transport {
    pub(crate) connect_timeout: Duration,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) max_redirects: usize,
    pub(crate) pool_max_idle_per_host: Option<usize>,
    pub(crate) pool_idle_timeout: Duration,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) http2_prior_knowledge: bool,
    /// Host names pinned to addresses, instead of asking DNS.
    pub(crate) resolve: Vec<(String, Vec<SocketAddr>)>,
    pub(crate) tls: TlsSettings,
    pub(crate) proxy: ProxySettings,
}

impl Transport {
    /// A `reqwest::Client` with these settings, with `host` reaching `address`
    /// when one is given (it takes precedence over `resolve`).
    pub(crate) fn client(&self, pin: Option<(&str, SocketAddr)>) -> Result<reqwest::Client, Error> {
        let user_agent = self.user_agent.clone().unwrap_or_else(|| {
            HeaderValue::from_static(concat!("resilient-http/", env!("CARGO_PKG_VERSION")))
        });
        let mut b = reqwest::Client::builder()
            // Capped at "about never": the transport adds them to instants,
            // which a configured `u64::MAX` seconds would overflow.
            .connect_timeout(self.connect_timeout.min(NEVER))
            .user_agent(user_agent)
            // The original URL's query may hold credentials.
            .referer(false)
            .redirect(redirect::policy(self.max_redirects))
            // Attempts are ours to count and decide; reqwest must not add its
            // own. With no retry allowed it also keeps no copy of each request
            // for one (its default policy clones every request's headers).
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .tcp_nodelay(true);
        if let Some(n) = self.pool_max_idle_per_host {
            b = b.pool_max_idle_per_host(n);
        }
        b = b.pool_idle_timeout(self.pool_idle_timeout.min(NEVER));
        if let Some(t) = self.tcp_keepalive {
            b = b.tcp_keepalive(t.min(NEVER));
        }
        if self.http2_prior_knowledge {
            b = b.http2_prior_knowledge();
        }
        // Names pinned to loopback addresses are loopback: never proxied.
        let mut direct = Vec::new();
        for (host, addresses) in &self.resolve {
            b = b.resolve_to_addrs(host, addresses);
            if !addresses.is_empty() && addresses.iter().all(|a| a.ip().is_loopback()) {
                direct.push(host.as_str());
            }
        }
        if let Some((host, address)) = pin {
            b = b.resolve(host, address);
            if address.ip().is_loopback() {
                direct.push(host);
            }
        }
        b = self.tls.apply(b, self.http2_prior_knowledge)?;
        b = self.proxy.apply(b, &direct)?;
        b.build()
            .map_err(|e| Error::config_from("could not build the HTTP transport", e))
    }
}
