//! [`EtcdResolver`]: instances registered in etcd, read through etcd's v3 JSON
//! gateway (plain HTTP, so no gRPC stack).

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use crate::balance::Endpoint;
use crate::builder::ApiClientBuilder;
use crate::client::ApiClient;
use crate::discovery::{ResolveError, ResolveFuture, Resolver};
use crate::redact;

/// Reads the instances of a service from the keys under a prefix in etcd (v3),
/// through its JSON gateway: one `POST /v3/kv/range` per refresh (see
/// [`resolver_refresh`](crate::ApiClientBuilder::resolver_refresh)). Needs the
/// cargo feature `etcd`.
///
/// Each key under the prefix is one instance; its value is any of:
///
/// - a base URL: `http://10.0.0.7:8080/api/`;
/// - `host:port`: `10.0.0.7:8080`, made `http://10.0.0.7:8080` plus the
///   [`base_path`](Self::base_path);
/// - a JSON object with `"url"` (or `"addr"`/`"Addr"`, as above) and an
///   optional `"weight"`: `{"url": "http://10.0.0.7:8080/", "weight": 2}`.
///
/// Values that are none of these are skipped with a WARN. The lookups go
/// through a client of their own (2 s per attempt, 5 s in all, retried, with
/// the default TLS roots and proxies), or through one you configure, with
/// [`with_client`](Self::with_client): for an etcd behind a private CA or
/// asking for a client certificate. The `etcd` key of an
/// [`ApiClientConfig`](crate::ApiClientConfig) does that for you, from the
/// configuration's own TLS and proxy settings.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use resilient_http::{ApiClient, EtcdResolver};
///
/// // Registered with: etcdctl put /services/orders/a http://10.0.0.7:8080/api/
/// let client = ApiClient::builder()
///     .resolver(EtcdResolver::new("http://127.0.0.1:2379", "/services/orders/"))
///     .resolver_refresh(Duration::from_secs(10))
///     .build()?;
/// # Ok::<(), resilient_http::Error>(())
/// ```
pub struct EtcdResolver {
    client: Result<ApiClient, String>,
    prefix: String,
    base_path: String,
}

impl fmt::Debug for EtcdResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdResolver")
            .field(
                "etcd",
                &self
                    .client
                    .as_ref()
                    .ok()
                    .and_then(ApiClient::base_url)
                    .map(|url| redact::url(url).to_string()),
            )
            .field("prefix", &self.prefix)
            .field("base_path", &self.base_path)
            .finish()
    }
}

impl EtcdResolver {
    /// A resolver for the keys under `prefix` in the etcd at `etcd_url`
    /// (`http://host:2379`). An invalid URL is reported by every resolution.
    pub fn new(etcd_url: impl AsRef<str>, prefix: impl Into<String>) -> Self {
        Self::with_builder(Self::client_builder(etcd_url), prefix)
    }

    /// The settings of the client of its own: `etcd_url` as the base URL, 2 s
    /// per attempt, 5 s in all.
    pub(crate) fn client_builder(etcd_url: impl AsRef<str>) -> ApiClientBuilder {
        ApiClient::builder()
            .base_url(etcd_url)
            .attempt_timeout(Duration::from_secs(2))
            .total_timeout(Duration::from_secs(5))
    }

    /// A resolver reading through the client `builder` builds; a client that
    /// cannot be built is reported by every resolution, as by [`new`](Self::new).
    pub(crate) fn with_builder(builder: ApiClientBuilder, prefix: impl Into<String>) -> Self {
        Self {
            client: builder.build().map_err(|e| e.to_string()),
            prefix: prefix.into(),
            base_path: "/".to_owned(),
        }
    }

    /// A resolver that reads through `client`, whose base URL is the etcd
    /// gateway (`http://host:2379/`): for your own timeouts, retries, TLS
    /// settings or credentials.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use resilient_http::{ApiClient, EtcdResolver};
    ///
    /// let etcd = ApiClient::builder()
    ///     .base_url("http://127.0.0.1:2379/")
    ///     .total_timeout(Duration::from_secs(3))
    ///     .build()?;
    /// let resolver = EtcdResolver::with_client(etcd, "/services/orders/");
    /// # Ok::<(), resilient_http::Error>(())
    /// ```
    pub fn with_client(client: ApiClient, prefix: impl Into<String>) -> Self {
        Self {
            client: Ok(client),
            prefix: prefix.into(),
            base_path: "/".to_owned(),
        }
    }

    /// The path put after `host:port` values (default `/`); full URLs are
    /// used as they are.
    #[must_use]
    pub fn base_path(mut self, path: impl Into<String>) -> Self {
        self.base_path = crate::path::rooted(path);
        self
    }

    async fn lookup(&self) -> Result<Vec<Endpoint>, ResolveError> {
        let client = self.client.as_ref().map_err(String::clone)?;
        let key = self.prefix.as_bytes();
        let body = serde_json::json!({
            "key": BASE64.encode(key),
            "range_end": BASE64.encode(prefix_end(key)),
        });
        let resp: RangeResponse = client
            .post("v3/kv/range")
            .json(&body)
            // A range read changes nothing: safe to repeat.
            .idempotent(true)
            .send_json()
            .await?;
        let mut endpoints = Vec::with_capacity(resp.kvs.len());
        for kv in resp.kvs {
            let value = BASE64.decode(&kv.value).unwrap_or_default();
            if let Some(ep) = self.endpoint_of(&value) {
                endpoints.push(ep);
            } else {
                tracing::warn!(
                    target: "resilient_http::discovery",
                    key = %String::from_utf8_lossy(&BASE64.decode(&kv.key).unwrap_or_default()),
                    "skipping an etcd value that is not an endpoint"
                );
            }
        }
        Ok(endpoints)
    }

    /// The endpoint a registered value names, if it names one.
    fn endpoint_of(&self, value: &[u8]) -> Option<Endpoint> {
        let text = std::str::from_utf8(value).ok()?.trim();
        if text.starts_with('{') {
            let v: Registered = serde_json::from_str(text).ok()?;
            let url = v.url.or(v.addr)?;
            return Some(Endpoint::new(self.url_of(&url)).weight(v.weight.unwrap_or(1)));
        }
        (!text.is_empty()).then(|| Endpoint::new(self.url_of(text)))
    }

    fn url_of(&self, addr: &str) -> String {
        if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}{}", self.base_path)
        }
    }
}

impl Resolver for EtcdResolver {
    fn resolve(&self) -> ResolveFuture<'_> {
        Box::pin(self.lookup())
    }
}

/// The end of etcd's range for `prefix`: the prefix with its last byte
/// incremented (bytes of `0xff` dropped first); `[0]` means "to the end".
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct KeyValue {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct Registered {
    url: Option<String>,
    #[serde(alias = "Addr")]
    addr: Option<String>,
    weight: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/services/orders/"), b"/services/orders0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
    }

    #[test]
    fn registered_values_in_each_form_name_an_endpoint() {
        let r = EtcdResolver::new("http://127.0.0.1:2379", "/s/").base_path("api/");
        let ep = |v: &str| {
            r.endpoint_of(v.as_bytes())
                .map(|e| (e.url().to_owned(), e.get_weight()))
        };
        assert_eq!(ep("http://h:1/x/"), Some(("http://h:1/x/".into(), 1)));
        assert_eq!(
            ep("10.0.0.7:8080"),
            Some(("http://10.0.0.7:8080/api/".into(), 1))
        );
        assert_eq!(
            ep(r#"{"url": "http://h:2/", "weight": 3}"#),
            Some(("http://h:2/".into(), 3))
        );
        assert_eq!(
            ep(r#"{"Addr": "h:3"}"#),
            Some(("http://h:3/api/".into(), 1))
        );
        assert_eq!(ep(r#"{"weight": 3}"#), None);
        assert_eq!(ep(""), None);
    }
}
