//! [`DnsResolver`]: the instances of a service from DNS, one endpoint per
//! address (a headless service), through `hickory-resolver`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use crate::balance::Endpoint;
use crate::discovery::{ResolveError, ResolveFuture, Resolver};

/// Finds the instances of a service in DNS: one [`Endpoint`] per address
/// (a headless service, a round-robin name), re-read every
/// [`resolver_refresh`](crate::ApiClientBuilder::resolver_refresh), or when
/// the records' TTL runs out if that is sooner (at most once a second; see
/// [`Resolver::valid_for`]). Each resolution asks the DNS server: no answer
/// is cached between two. Needs the cargo feature `dns`.
///
/// - [`new(name, port)`](Self::new) reads the A and AAAA records of `name`:
///   every address is an endpoint on `port`, weight 1.
/// - [`srv(name)`](Self::srv) reads the SRV records of `name`
///   (`_http._tcp.orders.internal`): each record's target is resolved to its
///   addresses, each an endpoint on the record's port. The record's weight
///   (0 counts as 1) is split across its target's addresses (at least 1
///   each), so a target's share of the calls is its record's weight, however
///   many addresses it has. Only the records of the lowest priority are
///   used; the others are backups, in priority order (RFC 2782): the next
///   priority's records are used when no target of the ones before has an
///   address.
///
/// Every endpoint's URL names the service, not its address:
/// `http://orders.internal:8080/` for `new("orders.internal", 8080)`, and for
/// SRV the name without its leading `_service._proto` labels
/// (`http://orders.internal:<port>/`). So the `Host` header, TLS SNI and the
/// certificate check use the service's name, while each endpoint connects to
/// its own address ([`Endpoint::address`]) through a connection pool of its
/// own. Through a [`proxy`](crate::ApiClientBuilder::proxy), the proxy
/// resolves the name itself.
///
/// The lookups go to the system's DNS servers (`/etc/resolv.conf`), or to
/// the one given with [`nameserver`](Self::nameserver). As with every
/// resolver, a failed lookup (timeout, `SERVFAIL`, no such name) or an answer
/// without an address keeps the endpoints the client has.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use resilient_http::{ApiClient, DnsResolver};
///
/// let client = ApiClient::builder()
///     .resolver(DnsResolver::new("orders.internal", 8080))
///     .resolver_refresh(Duration::from_secs(10))
///     .build()?;
/// // client.get("users/42") goes to http://orders.internal:8080/users/42,
/// // at one of the addresses the name resolves to.
/// # Ok::<(), resilient_http::Error>(())
/// ```
pub struct DnsResolver {
    records: Records,
    https: bool,
    base_path: String,
    nameserver: Option<SocketAddr>,
    /// Built on the first lookup (the system's configuration is read then).
    resolver: Mutex<Option<TokioResolver>>,
    /// How long the last answer stays valid (its shortest TTL).
    valid_for: Mutex<Option<Duration>>,
}

/// Which records name the instances.
#[derive(Debug, Clone)]
enum Records {
    /// A and AAAA records of `name`, every address on `port`.
    Address { name: String, port: u16 },
    /// SRV records of `name`.
    Srv { name: String },
}

impl fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsResolver")
            .field("records", &self.records)
            .field("https", &self.https)
            .field("base_path", &self.base_path)
            .field("nameserver", &self.nameserver)
            .finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// Endpoints at every address (A and AAAA records) of `name`, on `port`:
    /// `http://name:port/` reaching each address.
    pub fn new(name: impl Into<String>, port: u16) -> Self {
        Self::of(Records::Address {
            name: name.into(),
            port,
        })
    }

    /// Endpoints from the SRV records of `name`
    /// (`_http._tcp.orders.internal`): port and weight from each record,
    /// addresses from its target. See [`DnsResolver`] for the URLs.
    ///
    /// The weight of a record is its target's: split across the target's
    /// addresses (as evenly as integers allow, at least 1 each). Only the
    /// lowest priority is used while one of its targets has an address;
    /// when none has, the next priority's records are (RFC 2782 order), and
    /// so on. Records of a priority with addresses hide every higher one,
    /// even if their endpoints fail: backups take over only from the DNS.
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::{ApiClient, DnsResolver};
    ///
    /// let client = ApiClient::builder()
    ///     .resolver(DnsResolver::srv("_http._tcp.orders.internal"))
    ///     .build()?;
    /// # Ok::<(), resilient_http::Error>(())
    /// ```
    pub fn srv(name: impl Into<String>) -> Self {
        Self::of(Records::Srv { name: name.into() })
    }

    fn of(records: Records) -> Self {
        Self {
            records,
            https: false,
            base_path: "/".to_owned(),
            nameserver: None,
            resolver: Mutex::new(None),
            valid_for: Mutex::new(None),
        }
    }

    /// Asks the DNS server at `address` (over UDP, and over TCP for an answer
    /// too long for UDP) instead of the system's. The host names of the
    /// system's hosts file are not used then.
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::DnsResolver;
    ///
    /// let resolver = DnsResolver::new("orders.internal", 8080).nameserver("127.0.0.1:5353".parse()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn nameserver(mut self, address: SocketAddr) -> Self {
        self.nameserver = Some(address);
        self
    }

    /// Endpoints on `https://` instead of `http://`: the certificate must
    /// carry the service's name (see [`DnsResolver`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::{ApiClient, DnsResolver};
    ///
    /// // https://orders.internal:8443/, one endpoint per address
    /// let client = ApiClient::builder()
    ///     .resolver(DnsResolver::new("orders.internal", 8443).https())
    ///     .build()?;
    /// # Ok::<(), resilient_http::Error>(())
    /// ```
    #[must_use]
    pub fn https(mut self) -> Self {
        self.https = true;
        self
    }

    /// The path of every endpoint's base URL (default `/`), which request
    /// paths are joined onto.
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::DnsResolver;
    ///
    /// // http://orders.internal:8080/api/
    /// let resolver = DnsResolver::new("orders.internal", 8080).base_path("/api/");
    /// ```
    #[must_use]
    pub fn base_path(mut self, path: impl Into<String>) -> Self {
        self.base_path = crate::path::rooted(path);
        self
    }

    /// The hickory resolver, built on first use.
    fn resolver(&self) -> Result<TokioResolver, ResolveError> {
        let mut slot = self.resolver.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(resolver) = &*slot {
            return Ok(resolver.clone());
        }
        let provider = TokioRuntimeProvider::default();
        let mut builder = match self.nameserver {
            Some(at) => {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = at.port();
                        c
                    })
                    .collect();
                let server = NameServerConfig::new(at.ip(), true, connections);
                let mut builder = TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    provider,
                );
                builder.options_mut().use_hosts_file = ResolveHosts::Never;
                builder
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
        };
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let resolver = builder.build()?;
        *slot = Some(resolver.clone());
        Ok(resolver)
    }

    async fn lookup(&self) -> Result<Vec<Endpoint>, ResolveError> {
        let resolver = self.resolver()?;
        // Every resolution asks the server: the TTL decides when the next
        // one comes, not whether it is answered from a cache.
        resolver.clear_cache();
        let (endpoints, valid_until) = match &self.records {
            Records::Address { name, port } => {
                let ips = resolver.lookup_ip(name.as_str()).await?;
                let url = self.url_of(name, *port);
                let endpoints = ips
                    .iter()
                    .map(|ip| Endpoint::new(url.as_str()).address(SocketAddr::new(ip, *port)))
                    .collect();
                (endpoints, ips.valid_until())
            }
            Records::Srv { name } => self.srv_lookup(&resolver, name).await?,
        };
        let valid_for = valid_until.saturating_duration_since(Instant::now());
        *self
            .valid_for
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(valid_for);
        Ok(endpoints)
    }

    /// The endpoints of the SRV records of `name`, and when the answer (or
    /// the first of its targets' answers) expires.
    async fn srv_lookup(
        &self,
        resolver: &TokioResolver,
        name: &str,
    ) -> Result<(Vec<Endpoint>, Instant), ResolveError> {
        let answer = resolver.srv_lookup(name).await?;
        let mut valid_until = answer.valid_until();
        let records: Vec<_> = answer
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) if !srv.target.is_root() => Some(srv),
                _ => None,
            })
            .collect();
        let host = service_host(name);
        let mut priorities: Vec<u16> = records.iter().map(|srv| srv.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let mut endpoints = Vec::new();
        // The lowest priority with an address (RFC 2782): the others are
        // backups, used when every target of the ones before has none.
        for priority in priorities {
            for srv in records.iter().filter(|srv| srv.priority == priority) {
                let ips = match resolver.lookup_ip(srv.target.clone()).await {
                    Ok(ips) => ips,
                    // A target without addresses (an instance gone) is skipped;
                    // any other failure keeps the client's list.
                    Err(e) if e.is_no_records_found() => {
                        tracing::debug!(
                            target: "resilient_http::discovery",
                            target_name = %srv.target,
                            "skipping an SRV target without addresses"
                        );
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                valid_until = valid_until.min(ips.valid_until());
                let url = self.url_of(host, srv.port);
                // In address order: DNS servers shuffle answers, and the
                // split's remainder must not move from one address to
                // another between refreshes (a changed weight is a new
                // endpoint, its breaker and pool lost).
                let mut ips: Vec<_> = ips.iter().collect();
                ips.sort_unstable();
                let weights = split_weight(srv.weight, ips.len());
                endpoints.extend(ips.into_iter().zip(weights).map(|(ip, weight)| {
                    Endpoint::new(url.as_str())
                        .weight(weight)
                        .address(SocketAddr::new(ip, srv.port))
                }));
            }
            if !endpoints.is_empty() {
                break;
            }
        }
        Ok((endpoints, valid_until))
    }

    /// The base URL of the endpoints on `port`.
    fn url_of(&self, host: &str, port: u16) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let host = host.trim_end_matches('.');
        format!("{scheme}://{host}:{port}{}", self.base_path)
    }
}

/// The weights of a target's `n` addresses: its SRV record's `weight` (0
/// counts as 1) split as evenly as integers allow, the first ones taking the
/// remainder, at least 1 each. So the target's share is its record's weight
/// (more only when it has more addresses than weight).
fn split_weight(weight: u16, n: usize) -> impl Iterator<Item = u32> {
    let weight = u32::from(weight.max(1));
    // More addresses than u32::MAX: each gets at least 1 anyway.
    let n32 = u32::try_from(n).unwrap_or(u32::MAX).max(1);
    let (each, rest) = (weight / n32, weight % n32);
    (0..n).map(move |k| {
        let extra = u32::from(u32::try_from(k).unwrap_or(u32::MAX) < rest);
        (each + extra).max(1)
    })
}

/// The service's name in an SRV name: without its leading `_service` and
/// `_proto` labels (`_http._tcp.orders.internal` gives `orders.internal`).
fn service_host(srv_name: &str) -> &str {
    let mut rest = srv_name;
    while let Some(tail) = rest.strip_prefix('_').and_then(|r| r.split_once('.')) {
        rest = tail.1;
    }
    rest
}

impl Resolver for DnsResolver {
    fn resolve(&self) -> ResolveFuture<'_> {
        Box::pin(self.lookup())
    }

    fn valid_for(&self) -> Option<Duration> {
        *self
            .valid_for
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_srv_name_gives_the_service_name_without_its_underscore_labels() {
        assert_eq!(
            service_host("_http._tcp.orders.internal"),
            "orders.internal"
        );
        assert_eq!(
            service_host("_http._tcp.orders.internal."),
            "orders.internal."
        );
        assert_eq!(service_host("orders.internal"), "orders.internal");
        assert_eq!(service_host("_lonely"), "_lonely");
    }

    #[test]
    fn a_records_weight_is_split_across_its_targets_addresses() {
        let split = |w, n| split_weight(w, n).collect::<Vec<_>>();
        assert_eq!(split(10, 3), [4, 3, 3]);
        assert_eq!(split(6, 2), [3, 3]);
        assert_eq!(split(5, 1), [5]);
        // At least 1 each, and 0 counts as 1.
        assert_eq!(split(1, 3), [1, 1, 1]);
        assert_eq!(split(0, 2), [1, 1]);
        assert_eq!(split(u16::MAX, 2), [32768, 32767]);
        assert!(split(7, 0).is_empty());
    }

    #[test]
    fn endpoint_urls_name_the_service_with_scheme_port_and_path() {
        let r = DnsResolver::new("orders.test", 8080);
        assert_eq!(r.url_of("orders.test.", 8080), "http://orders.test:8080/");
        let r = DnsResolver::srv("_http._tcp.orders.test")
            .https()
            .base_path("api/");
        assert_eq!(
            r.url_of("orders.test", 9443),
            "https://orders.test:9443/api/"
        );
    }
}
