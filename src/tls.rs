//! TLS settings: the roots trusted, the client's own certificate (mTLS), the
//! lowest protocol version, and the name a server's certificate must carry.
//!
//! The settings are gathered by the builder and applied to the transport once,
//! in `build()`: PEM is parsed there, and a bad one is a `Config` error.
//! Certificates and keys are read once; a rotated certificate takes effect in a
//! client built after the rotation (no reload in place yet).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use url::{Host, Url};

use crate::error::Error;

/// The lowest TLS version a client accepts (see
/// [`ApiClientBuilder::tls_min_version`](crate::ApiClientBuilder::tls_min_version)).
///
/// In configuration files it is written `"1.2"` or `"1.3"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3): the default.
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

impl TlsVersion {
    fn transport(self) -> reqwest::tls::Version {
        match self {
            Self::V1_2 => reqwest::tls::Version::TLS_1_2,
            Self::V1_3 => reqwest::tls::Version::TLS_1_3,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V1_2 => "TLS 1.2",
            Self::V1_3 => "TLS 1.3",
        })
    }
}

/// The TLS options of a builder, as given (PEM is checked in `build()`).
#[derive(Clone, Default)]
pub(crate) struct TlsSettings {
    pub(crate) roots: Vec<Vec<u8>>,
    pub(crate) built_in_roots: Option<bool>,
    pub(crate) identity: Option<Identity>,
    pub(crate) min_version: Option<TlsVersion>,
    pub(crate) server_name: Option<String>,
    pub(crate) accept_invalid_certs: bool,
}

/// A client certificate chain and its private key, in PEM.
#[derive(Clone)]
pub(crate) struct Identity {
    pub(crate) cert_chain: Vec<u8>,
    pub(crate) key: Vec<u8>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key is never shown; the rest is not secret.
        f.debug_struct("Tls")
            .field("root_certificates", &self.roots.len())
            .field("built_in_roots", &self.built_in_roots.unwrap_or(true))
            .field("identity", &self.identity.is_some())
            .field("min_version", &self.min_version)
            .field("server_name", &self.server_name)
            .field("accept_invalid_certs", &self.accept_invalid_certs)
            .finish()
    }
}

impl TlsSettings {
    /// Applies the settings to the transport's builder.
    pub(crate) fn apply(
        &self,
        mut b: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, Error> {
        let mut roots = Vec::new();
        for pem in &self.roots {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                Error::config_from("tls_root_certificate_pem is not a valid PEM certificate", e)
            })?;
            if certs.is_empty() {
                return Err(Error::config(
                    "tls_root_certificate_pem holds no PEM certificate",
                ));
            }
            roots.extend(certs);
        }
        if self.built_in_roots == Some(false) {
            if roots.is_empty() {
                return Err(Error::config(
                    "tls_built_in_roots(false) needs a tls_root_certificate_pem to trust",
                ));
            }
            b = b.tls_certs_only(roots);
        } else if !roots.is_empty() {
            b = b.tls_certs_merge(roots);
        }
        if let Some(id) = &self.identity {
            let mut pem = id.cert_chain.clone();
            pem.push(b'\n');
            pem.extend_from_slice(&id.key);
            // reqwest's message says what is missing, never the key itself.
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::config_from(
                    "tls_identity_pem needs a PEM certificate chain and a PEM private key",
                    e,
                )
            })?;
            b = b.identity(identity);
        }
        if let Some(v) = self.min_version {
            b = b.tls_version_min(v.transport());
        }
        if self.accept_invalid_certs {
            tracing::warn!(
                target: "resilient_http::tls",
                "TLS certificate verification is OFF (tls_danger_accept_invalid_certs): \
                 traffic can be read and changed by anyone on the path"
            );
            b = b.tls_danger_accept_invalid_certs(true);
        }
        Ok(b)
    }
}

/// Rewrites the host of `urls` (an IP address) to `name` and returns the
/// address to connect to, so that Host and SNI carry the name and the
/// certificate is checked against it, while the connection goes to the
/// address. All the URLs must share one address (the port may differ).
pub(crate) fn server_name_override(name: &str, urls: &mut [&mut Url]) -> Result<SocketAddr, Error> {
    let Ok(Host::Domain(name)) = Host::parse(name) else {
        return Err(Error::config("tls_server_name must be a DNS name"));
    };
    if urls.is_empty() {
        return Err(Error::config(
            "tls_server_name needs a base_url or endpoints whose host is an IP address",
        ));
    }
    let mut address: Option<IpAddr> = None;
    for url in urls.iter_mut() {
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => {
                return Err(Error::config(
                    "tls_server_name needs the host of base_url and endpoints to be an IP address",
                ));
            }
        };
        if address.is_some_and(|a| a != ip) {
            return Err(Error::config(
                "tls_server_name with endpoints at different addresses is not supported yet",
            ));
        }
        address = Some(ip);
        url.set_host(Some(&name))
            .map_err(|e| Error::config_from("tls_server_name is not a valid host", e))?;
    }
    // Port 0: the transport keeps each URL's own port.
    Ok(SocketAddr::new(
        address.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_replaces_an_ip_host_and_keeps_the_port() {
        let mut a = Url::parse("https://10.0.0.7:8443/api/").unwrap();
        let mut b = Url::parse("https://10.0.0.7:9443/api/").unwrap();
        let addr = server_name_override("orders.internal", &mut [&mut a, &mut b]).unwrap();
        assert_eq!(addr, "10.0.0.7:0".parse().unwrap());
        assert_eq!(a.as_str(), "https://orders.internal:8443/api/");
        assert_eq!(b.as_str(), "https://orders.internal:9443/api/");
    }

    #[test]
    fn the_server_name_override_refuses_what_it_cannot_honour() {
        let mut name = Url::parse("https://orders.internal/").unwrap();
        assert!(server_name_override("x.internal", &mut [&mut name]).is_err());
        let mut a = Url::parse("https://10.0.0.7/").unwrap();
        let mut b = Url::parse("https://10.0.0.8/").unwrap();
        assert!(server_name_override("x.internal", &mut [&mut a, &mut b]).is_err());
        let mut ip = Url::parse("https://10.0.0.7/").unwrap();
        assert!(server_name_override("10.0.0.9", &mut [&mut ip]).is_err());
        assert!(server_name_override("x.internal", &mut []).is_err());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let tls = TlsSettings {
            identity: Some(Identity {
                cert_chain: b"CERT".to_vec(),
                key: b"-----BEGIN PRIVATE KEY-----SECRET".to_vec(),
            }),
            ..TlsSettings::default()
        };
        let debug = format!("{tls:?}");
        assert!(
            !debug.contains("SECRET") && debug.contains("identity: true"),
            "{debug}"
        );
    }
}
