//! [`OAuth2ClientCredentials`]: a [`TokenProvider`] for the OAuth 2.0 client
//! credentials grant. It sits above the client: it fetches tokens through an
//! [`ApiClient`] like any user would.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::HeaderValue;
use serde::Deserialize;

use crate::auth::{Token, TokenFuture, TokenProvider};
use crate::client::ApiClient;
use crate::error::BoxError;

/// OAuth 2.0 client credentials grant (RFC 6749 section 4.4): tokens for a
/// service acting on its own behalf, from the authorization server's token
/// endpoint.
///
/// Each fetch POSTs `grant_type=client_credentials` (and `scope`, if set) as a
/// form, authenticating the client with HTTP Basic (section 2.3.1) or, with
/// [`credentials_in_body`](Self::credentials_in_body), with `client_id` and
/// `client_secret` form fields. The answer's `access_token` and `expires_in`
/// make the [`Token`]. `expires_in` is read leniently: an integer, a numeric
/// string (`"3599"`, as Azure AD v1 sends it) or a float (truncated) are
/// seconds; without it, or with anything else there, the token has no set
/// lifetime and is used until a `401` refuses it.
///
/// The token endpoint is called through a client of its own (its settings
/// are under [`new`](Self::new)), or through one you configure, with
/// [`client`](Self::client). The secret never appears in `Debug`, errors or
/// logs.
///
/// # Examples
///
/// ```
/// use resilient_http::{ApiClient, OAuth2ClientCredentials};
///
/// let client = ApiClient::builder()
///     .base_url("https://orders.internal/api/")
///     .token_provider(
///         OAuth2ClientCredentials::new("https://auth.internal/oauth2/token", "orders-svc", "s3cr3t")
///             .scope("orders.read orders.write"),
///     )
///     .build()?;
/// # Ok::<(), resilient_http::Error>(())
/// ```
pub struct OAuth2ClientCredentials {
    token_url: String,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    params: Vec<(String, String)>,
    in_body: bool,
    client: Result<ApiClient, String>,
}

impl fmt::Debug for OAuth2ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2ClientCredentials")
            .field("token_url", &crate::redact::raw_url(&self.token_url))
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl OAuth2ClientCredentials {
    /// A provider for `client_id` and `client_secret` at `token_url`.
    ///
    /// The token endpoint is called through a client of its own: 5 s per
    /// attempt, 15 s in all, retried on transient failures, with the
    /// platform's TLS roots, no client certificate and the environment's
    /// proxies. It shares none of the settings of the
    /// client the tokens are for (its `tls_root_certificate_pem`,
    /// `tls_identity_pem`, `proxy`...). For a token endpoint behind a private
    /// CA, asking for a client certificate, or reached through a proxy of
    /// your own, build an [`ApiClient`] with those settings and pass it with
    /// [`client`](Self::client).
    pub fn new(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        let client = ApiClient::builder()
            .attempt_timeout(Duration::from_secs(5))
            .total_timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| e.to_string());
        Self {
            token_url: token_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            scope: None,
            params: Vec::new(),
            in_body: false,
            client,
        }
    }

    /// Fetches tokens through `client` instead of a client of its own: for
    /// your own timeouts, retries or TLS settings. The token URL is used as
    /// given (an absolute URL needs no base URL).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use resilient_http::{ApiClient, OAuth2ClientCredentials};
    ///
    /// let auth_client = ApiClient::builder()
    ///     .total_timeout(Duration::from_secs(5))
    ///     .build()?;
    /// let provider = OAuth2ClientCredentials::new("https://auth.internal/token", "id", "secret")
    ///     .client(auth_client);
    /// # Ok::<(), resilient_http::Error>(())
    /// ```
    #[must_use]
    pub fn client(mut self, client: ApiClient) -> Self {
        self.client = Ok(client);
        self
    }

    /// The scope to ask for (space-separated scopes).
    #[must_use]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Another form field for the token request (`audience`, `resource`...).
    #[must_use]
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Sends `client_id` and `client_secret` as form fields instead of HTTP
    /// Basic authentication, for servers that only accept that.
    #[must_use]
    pub fn credentials_in_body(mut self) -> Self {
        self.in_body = true;
        self
    }

    /// The token request's form body.
    fn form(&self) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        for (name, value) in &self.params {
            form.append_pair(name, value);
        }
        if self.in_body {
            form.append_pair("client_id", &self.client_id);
            form.append_pair("client_secret", &self.client_secret);
        }
        form.finish()
    }

    async fn fetch(&self) -> Result<Token, BoxError> {
        let client = self.client.as_ref().map_err(String::clone)?;
        let mut request = client
            .post(&self.token_url)
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            // A token request changes nothing the client cares about.
            .idempotent(true);
        if !self.in_body {
            // RFC 6749 2.3.1: both form-urlencoded, then joined by ':'.
            let encode =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!(
                "{}:{}",
                encode(&self.client_id),
                encode(&self.client_secret)
            );
            let mut value = HeaderValue::try_from(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
            ))?;
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let resp = match request.body(self.form()).send().await {
            Ok(resp) => resp,
            Err(err) => {
                let detail = err
                    .body_text()
                    .and_then(|b| serde_json::from_str::<TokenError>(b).ok())
                    .map(|e| e.error);
                return Err(match detail {
                    // The server's error code (RFC 6749 5.2), never its description.
                    Some(code) => format!("token endpoint refused the request: {code}").into(),
                    None => Box::new(err),
                });
            }
        };
        let body: TokenResponse = resp
            .json()
            .map_err(|_| "token endpoint answer is not a token response")?;
        if !body.token_type.eq_ignore_ascii_case("bearer") {
            return Err(format!("token type {:?} is not bearer", body.token_type).into());
        }
        let mut token = Token::new(body.access_token);
        if let Some(secs) = body.expires_in {
            token = token.expires_in(Duration::from_secs(secs));
        }
        Ok(token)
    }
}

impl TokenProvider for OAuth2ClientCredentials {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(self.fetch())
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    #[serde(default, deserialize_with = "lenient_seconds")]
    expires_in: Option<u64>,
}

/// `expires_in` as servers really send it: RFC 6749 says an integer, but
/// some (Azure AD v1, some gateways) send a string (`"3599"`) or a float.
#[derive(Deserialize)]
#[serde(untagged)]
enum Seconds {
    Whole(u64),
    Fraction(f64),
    Text(String),
    Other(serde::de::IgnoredAny),
}

/// Reads `expires_in` leniently: an integer, a numeric string, or a finite,
/// non-negative float (truncated) are seconds; anything else (a negative
/// number, `null`, `"soon"`) counts as absent, rather than failing the fetch.
fn lenient_seconds<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    // Truncation is the point; `as` saturates past u64::MAX, and the sign
    // and non-finite values are screened first.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn whole(secs: f64) -> Option<u64> {
        (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
    }
    Ok(match Option::<Seconds>::deserialize(deserializer)? {
        Some(Seconds::Whole(secs)) => Some(secs),
        Some(Seconds::Fraction(secs)) => whole(secs),
        Some(Seconds::Text(text)) => {
            let text = text.trim();
            text.parse::<u64>()
                .ok()
                .or_else(|| text.parse::<f64>().ok().and_then(whole))
        }
        Some(Seconds::Other(_)) | None => None,
    })
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
}
