//! TLS settings: the roots trusted, the client's own certificate (mTLS), the
//! lowest protocol version, and the name a server's certificate must carry.
//!
//! The settings are gathered by the builder and applied to the transport once,
//! in `build()`: PEM is parsed there, and a bad one is a `Config` error.
//! Certificates and keys are read once; a rotated certificate takes effect in a
//! client built after the rotation (no reload in place yet).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
#[cfg(feature = "_rustls")]
use std::sync::Arc;

#[cfg(feature = "_rustls")]
use rustls::pki_types::pem::PemObject as _;
#[cfg(feature = "_rustls")]
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use serde::{Deserialize, Serialize};
use url::{Host, Url};

use crate::balance::Parsed;
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
#[cfg_attr(not(feature = "_tls"), allow(dead_code))]
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
    /// Whether any TLS option was set.
    #[cfg(not(feature = "_tls"))]
    fn is_set(&self) -> bool {
        !self.roots.is_empty()
            || self.built_in_roots.is_some()
            || self.identity.is_some()
            || self.min_version.is_some()
            || self.accept_invalid_certs
    }

    /// The PEM root certificates given, parsed; a bad or empty PEM is a
    /// `Config` error.
    #[cfg(feature = "_rustls")]
    fn root_certificates(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        let mut roots = Vec::new();
        for pem in &self.roots {
            let before = roots.len();
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots.push(cert.map_err(|e| {
                    Error::config_from("tls_root_certificate_pem is not a valid PEM certificate", e)
                })?);
            }
            if roots.len() == before {
                return Err(Error::config(
                    "tls_root_certificate_pem holds no PEM certificate",
                ));
            }
        }
        if self.built_in_roots == Some(false) && roots.is_empty() {
            return Err(Error::config(
                "tls_built_in_roots(false) needs a tls_root_certificate_pem to trust",
            ));
        }
        Ok(roots)
    }

    #[cfg(feature = "_tls")]
    fn warn_if_unverified(&self) {
        if self.accept_invalid_certs {
            tracing::warn!(
                target: "resilient_http::tls",
                "TLS certificate verification is OFF (tls_danger_accept_invalid_certs): \
                 traffic can be read and changed by anyone on the path"
            );
        }
    }

    /// Applies the settings to the transport's builder, through the TLS
    /// stack the features chose (see the crate docs, "TLS stacks").
    /// `http2_only` is prior-knowledge HTTP/2: ALPN then offers `h2` alone.
    #[cfg(feature = "_rustls")]
    pub(crate) fn apply(
        &self,
        b: reqwest::ClientBuilder,
        http2_only: bool,
    ) -> Result<reqwest::ClientBuilder, Error> {
        Ok(b.tls_backend_preconfigured(self.rustls_config(http2_only)?))
    }

    /// The rustls configuration, with the crypto provider of the feature
    /// chosen, never the process-wide default: another rustls user in the
    /// same binary can neither break it nor be broken by it.
    #[cfg(feature = "_rustls")]
    fn rustls_config(&self, http2_only: bool) -> Result<rustls::ClientConfig, Error> {
        use rustls::client::WebPkiServerVerifier;

        let provider = crypto_provider();
        let roots = self.root_certificates()?;
        let versions: &[&'static rustls::SupportedProtocolVersion] = match self.min_version {
            Some(TlsVersion::V1_3) => &[&rustls::version::TLS13],
            Some(TlsVersion::V1_2) | None => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| Error::config_from("the TLS provider refused the TLS versions", e))?;
        self.warn_if_unverified();
        let builder = if self.accept_invalid_certs {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else if self.built_in_roots == Some(false) {
            let mut store = rustls::RootCertStore::empty();
            for cert in roots {
                store.add(cert).map_err(|e| {
                    Error::config_from("tls_root_certificate_pem is not a usable root", e)
                })?;
            }
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .map_err(|e| Error::config_from("could not build the TLS verifier", e))?;
            builder.with_webpki_verifier(verifier)
        } else {
            let verifier = platform_verifier(roots, provider)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        };
        let mut config = match &self.identity {
            Some(id) => {
                let (chain, key) = id.parse()?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::config_from(Identity::INVALID, e))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = if http2_only {
            vec![b"h2".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        Ok(config)
    }

    /// Applies the settings through the platform's TLS library.
    #[cfg(all(feature = "native-tls", not(feature = "_rustls")))]
    pub(crate) fn apply(
        &self,
        mut b: reqwest::ClientBuilder,
        _http2_only: bool,
    ) -> Result<reqwest::ClientBuilder, Error> {
        b = b.tls_backend_native();
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
            // The platform library wants the key as PKCS#8.
            let identity = reqwest::Identity::from_pkcs8_pem(&id.cert_chain, &id.key)
                .map_err(|e| Error::config_from(Identity::INVALID, e))?;
            b = b.identity(identity);
        }
        if let Some(v) = self.min_version {
            b = b.tls_version_min(match v {
                TlsVersion::V1_2 => reqwest::tls::Version::TLS_1_2,
                TlsVersion::V1_3 => reqwest::tls::Version::TLS_1_3,
            });
        }
        self.warn_if_unverified();
        Ok(b.tls_danger_accept_invalid_certs(self.accept_invalid_certs))
    }

    /// Without a TLS feature there is nothing to apply; a TLS option set
    /// anyway is a `Config` error rather than silently ignored.
    #[cfg(not(feature = "_tls"))]
    pub(crate) fn apply(
        &self,
        b: reqwest::ClientBuilder,
        _http2_only: bool,
    ) -> Result<reqwest::ClientBuilder, Error> {
        if self.is_set() {
            return Err(Error::config(NO_TLS));
        }
        Ok(b)
    }
}

/// The message of a TLS option set in a build without TLS.
#[cfg(not(feature = "_tls"))]
const NO_TLS: &str = "a TLS option is set, but this build has no TLS: enable the feature rustls, rustls-ring \
     or native-tls";

/// Whether this build can call `https` URLs.
pub(crate) const HAS_TLS: bool = cfg!(feature = "_tls");

#[cfg(feature = "_tls")]
impl Identity {
    const INVALID: &'static str =
        "tls_identity_pem needs a PEM certificate chain and a PEM private key";

    /// The chain and the key, parsed. The error never shows the key.
    #[cfg(feature = "_rustls")]
    fn parse(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
        let chain = CertificateDer::pem_slice_iter(&self.cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::config_from(Self::INVALID, e))?;
        if chain.is_empty() {
            return Err(Error::config(Self::INVALID));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|_| {
            // The PEM error is not kept: it is about the key's text.
            Error::config(Self::INVALID)
        })?;
        Ok((chain, key))
    }
}

/// The crypto provider of the rustls feature chosen: aws-lc-rs when
/// `rustls` is on, else ring.
#[cfg(feature = "_rustls")]
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[cfg(feature = "rustls")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(not(feature = "rustls"))]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

/// The platform's trust (roots, and revocation where the platform checks
/// it), plus the roots given. The roots given are checked now (a bad one is a
/// `Config` error from `build()`); the platform's are loaded at the first
/// handshake (see [`PlatformVerifier`]).
#[cfg(feature = "_rustls")]
fn platform_verifier(
    roots: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<PlatformVerifier, Error> {
    #[cfg(not(any(all(unix, not(target_os = "android")), target_os = "windows")))]
    if !roots.is_empty() {
        return Err(Error::config(
            "tls_root_certificate_pem next to the built-in roots is not supported on \
             this platform: add tls_built_in_roots(false)",
        ));
    }
    let mut check = rustls::RootCertStore::empty();
    for cert in &roots {
        check
            .add(cert.clone())
            .map_err(|e| Error::config_from("tls_root_certificate_pem is not a usable root", e))?;
    }
    Ok(PlatformVerifier {
        roots,
        provider,
        verifier: std::sync::OnceLock::new(),
    })
}

/// The platform verifier, made at the first TLS handshake rather than in
/// `build()`: it reads and parses every certificate of the system's store
/// (milliseconds), which a client that never calls `https`, or one built per
/// tenant, should not pay up front. A store that cannot be loaded fails the
/// handshake.
#[cfg(feature = "_rustls")]
#[derive(Debug)]
struct PlatformVerifier {
    roots: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: std::sync::OnceLock<Result<rustls_platform_verifier::Verifier, rustls::Error>>,
}

#[cfg(feature = "_rustls")]
impl PlatformVerifier {
    fn get(&self) -> Result<&rustls_platform_verifier::Verifier, rustls::Error> {
        self.verifier
            .get_or_init(|| {
                let provider = Arc::clone(&self.provider);
                if self.roots.is_empty() {
                    return rustls_platform_verifier::Verifier::new(provider);
                }
                #[cfg(any(all(unix, not(target_os = "android")), target_os = "windows"))]
                return rustls_platform_verifier::Verifier::new_with_extra_roots(
                    self.roots.iter().cloned(),
                    provider,
                );
                // Refused by `platform_verifier` on the other platforms.
                #[cfg(not(any(all(unix, not(target_os = "android")), target_os = "windows")))]
                return rustls_platform_verifier::Verifier::new(provider);
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

#[cfg(feature = "_rustls")]
impl rustls::client::danger::ServerCertVerifier for PlatformVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.get()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.get()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.get()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        // What the verifier would say, without loading the store for it.
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `tls_danger_accept_invalid_certs`: any certificate is taken, but the
/// handshake's signatures are still checked with the provider.
#[cfg(feature = "_rustls")]
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

#[cfg(feature = "_rustls")]
impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `name`, checked to be a DNS name for `tls_server_name`.
fn dns_name(name: &str) -> Result<&str, Error> {
    match Host::parse(name) {
        Ok(Host::Domain(_)) => Ok(name),
        _ => Err(Error::config("tls_server_name must be a DNS name")),
    }
}

/// The host of `url` when it is an IP address.
fn ip_host(url: &Url) -> Option<IpAddr> {
    match url.host() {
        Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// Rewrites the host of `base` (an IP address) to `name` and returns the
/// address to connect to, so that Host and SNI carry the name and the
/// certificate is checked against it, while the connection goes to the
/// address (port 0: the transport keeps the URL's port).
pub(crate) fn server_name_override(name: &str, base: &mut Url) -> Result<SocketAddr, Error> {
    let name = dns_name(name)?;
    let Some(ip) = ip_host(base) else {
        return Err(Error::config(
            "tls_server_name needs the host of base_url and endpoints to be an IP address",
        ));
    };
    base.set_host(Some(name))
        .map_err(|e| Error::config_from("tls_server_name is not a valid host", e))?;
    Ok(SocketAddr::new(ip, 0))
}

/// The same for an endpoint called by IP address: its host becomes `name`
/// and it reaches the address it named through its own transport (see
/// [`Endpoint::address`](crate::Endpoint::address)), so endpoints may be at
/// different addresses. `Ok(false)` leaves an endpoint whose host is not an
/// IP address, or that already names its address, as it is.
pub(crate) fn server_name_for_endpoint(name: &str, ep: &mut Parsed) -> Result<bool, Error> {
    let name = dns_name(name)?;
    let (Some(ip), None) = (ip_host(&ep.url), ep.address) else {
        return Ok(false);
    };
    let port = ep.url.port_or_known_default().unwrap_or(0);
    ep.url
        .set_host(Some(name))
        .map_err(|e| Error::config_from("tls_server_name is not a valid host", e))?;
    ep.address = Some(SocketAddr::new(ip, port));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_replaces_an_ip_host_and_keeps_the_port() {
        let mut a = Url::parse("https://10.0.0.7:8443/api/").unwrap();
        let addr = server_name_override("orders.internal", &mut a).unwrap();
        assert_eq!(addr, "10.0.0.7:0".parse().unwrap());
        assert_eq!(a.as_str(), "https://orders.internal:8443/api/");
    }

    #[test]
    fn each_endpoint_called_by_ip_keeps_its_own_address_under_the_name() {
        let ep = |url: &str| Parsed {
            url: Url::parse(url).unwrap(),
            weight: 1,
            address: None,
        };
        let (mut a, mut b) = (ep("https://10.0.0.7:8443/"), ep("https://10.0.0.8/"));
        assert!(server_name_for_endpoint("orders.internal", &mut a).unwrap());
        assert!(server_name_for_endpoint("orders.internal", &mut b).unwrap());
        assert_eq!(
            (a.url.as_str(), a.address),
            (
                "https://orders.internal:8443/",
                Some("10.0.0.7:8443".parse().unwrap())
            )
        );
        assert_eq!(b.address, Some("10.0.0.8:443".parse().unwrap()));
        let mut named = ep("https://orders.internal/");
        assert!(!server_name_for_endpoint("x.internal", &mut named).unwrap());
        assert_eq!(named.url.as_str(), "https://orders.internal/");
    }

    #[test]
    fn the_server_name_override_refuses_what_it_cannot_honour() {
        let mut name = Url::parse("https://orders.internal/").unwrap();
        assert!(server_name_override("x.internal", &mut name).is_err());
        let mut ip = Url::parse("https://10.0.0.7/").unwrap();
        assert!(server_name_override("10.0.0.9", &mut ip).is_err());
        let mut ep = Parsed {
            url: ip,
            weight: 1,
            address: None,
        };
        assert!(server_name_for_endpoint("not a name!", &mut ep).is_err());
    }

    #[cfg(not(feature = "_tls"))]
    #[test]
    fn a_tls_option_without_tls_is_a_config_error() {
        let set = TlsSettings {
            min_version: Some(TlsVersion::V1_3),
            ..TlsSettings::default()
        };
        let err = set.apply(reqwest::Client::builder(), false).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Config);
        assert!(err.to_string().contains("no TLS"), "{err}");
        assert!(
            TlsSettings::default()
                .apply(reqwest::Client::builder(), false)
                .is_ok()
        );
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
