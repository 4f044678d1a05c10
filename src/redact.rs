//! Keeping secrets out of `Display`, `Debug` and tracing fields.
//!
//! URLs lose their password and the values of query parameters whose names look
//! like credentials; header values whose names look like credentials are marked
//! sensitive, so `HeaderValue`'s own `Debug` prints `Sensitive`.

use std::borrow::Cow;

use reqwest::header::{HeaderName, HeaderValue};
use url::Url;

/// What a redacted value is replaced with.
pub(crate) const REDACTED: &str = "REDACTED";

/// Whether a header or query parameter name looks like it carries a credential.
pub(crate) fn is_sensitive_name(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "sig",
        "code",
        "key",
        "auth",
        "pass",
        "pwd",
        "jwt",
    ];
    const PARTS: &[&str] = &[
        "api-key",
        "api_key",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "session",
        "credential",
        "signature",
        "private",
        // AWS's AWSAccessKeyId (a presigned URL's key id).
        "accesskey",
        // OAuth's client_assertion, SAML's assertion: bearer credentials.
        "assertion",
        "hmac",
    ];
    // Header names are lowercase already: allocate only for other input.
    let lower: Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    };
    let lower = &*lower;
    EXACT.contains(&lower)
        || PARTS.iter().any(|part| lower.contains(part))
        // x-auth-key, ocp-apim-subscription-key, x-functions-key, x-access-key...
        || (lower.ends_with("key") && lower != "idempotency-key")
        || lower.contains("auth")
}

/// Marks a response's `Set-Cookie` values sensitive, so `HeaderValue`'s own
/// `Debug` (of `ApiResponse::headers()`, say) never prints a session cookie.
/// One lookup per response: the only credential a server sends in headers.
pub(crate) fn mark_response_secrets(headers: &mut reqwest::header::HeaderMap) {
    use reqwest::header::{Entry, SET_COOKIE};
    if let Entry::Occupied(mut cookies) = headers.entry(SET_COOKIE) {
        for value in cookies.iter_mut() {
            value.set_sensitive(true);
        }
    }
}

/// Marks `value` sensitive when `name` looks like a credential header.
pub(crate) fn mark_sensitive(name: &HeaderName, value: &mut HeaderValue) {
    if is_sensitive_name(name.as_str()) {
        value.set_sensitive(true);
    }
}

/// URL text as given by the user, for `Debug`: redacted like [`url`], and not
/// shown at all when it does not parse (it may still hold a password).
pub(crate) fn raw_url(raw: &str) -> String {
    Url::parse(raw).map_or_else(|_| "(not a valid URL)".to_owned(), |u| url(&u).to_string())
}

/// Records where a request goes in its span (the call's or an attempt's):
/// `url.full`, redacted, `server.address` and `server.port`.
pub(crate) fn record_target(span: &tracing::Span, target: &Url) {
    span.record("url.full", tracing::field::display(url(target)));
    span.record("server.address", target.host_str().unwrap_or_default());
    span.record(
        "server.port",
        i64::from(target.port_or_known_default().unwrap_or(0)),
    );
}

/// A copy of `url` that is safe to print: no password, no fragment,
/// credential-looking query values replaced by `REDACTED`. Borrows when
/// there is nothing to hide.
pub(crate) fn url(url: &Url) -> Cow<'_, Url> {
    let secret_query = url.query_pairs().any(|(name, _)| is_sensitive_name(&name));
    // A user name without a password is often the credential itself (an API
    // key given as the URL's user).
    let lone_user = url.password().is_none() && !url.username().is_empty();
    // A fragment is never sent, and OAuth's implicit flow puts tokens in it.
    let fragment = url.fragment().is_some();
    if url.password().is_none() && !lone_user && !secret_query && !fragment {
        return Cow::Borrowed(url);
    }
    let mut clean = url.clone();
    clean.set_fragment(None);
    // Both fail only for URLs that cannot have credentials (no host), which
    // have none.
    let _ = clean.set_password(None);
    if lone_user {
        let _ = clean.set_username(REDACTED);
    }
    if secret_query {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_sensitive_name(&name) {
                    REDACTED.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        clean.query_pairs_mut().clear().extend_pairs(pairs);
    }
    Cow::Owned(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_names_are_recognized() {
        for name in [
            "Authorization",
            "x-api-key",
            "X-Auth-Token",
            "api_key",
            "access_token",
            "Cookie",
            "client_secret",
            "AWSAccessKeyId",
            "X-Auth-Key",
            "Ocp-Apim-Subscription-Key",
            "x-functions-key",
            "x-access-key",
        ] {
            assert!(is_sensitive_name(name), "{name}");
        }
        for name in [
            "accept",
            "page",
            "x-request-id",
            "content-type",
            "idempotency-key",
        ] {
            assert!(!is_sensitive_name(name), "{name}");
        }
    }

    #[test]
    fn urls_lose_password_and_secret_query_values() {
        let raw = Url::parse("https://bob:hunter2@example.com/a?page=2&api_key=s3cr3t").unwrap();
        let clean = url(&raw).into_owned();
        let text = clean.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("page=2"), "{text}");
        assert_eq!(clean.username(), "bob");
    }

    #[test]
    fn set_cookie_values_in_a_response_are_never_printed() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.append("set-cookie", HeaderValue::from_static("session=s3cr3t"));
        headers.append("set-cookie", HeaderValue::from_static("other=t0k"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        mark_response_secrets(&mut headers);
        let shown = format!("{headers:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("t0k"),
            "{shown}"
        );
        assert!(shown.contains("text/plain"), "{shown}");
    }

    #[test]
    fn fragments_and_assertions_are_never_printed() {
        let raw = Url::parse(
            "https://h.example/cb?page=2&jwt=S1&client_assertion=S2&x-hmac=S3#access_token=S4",
        )
        .unwrap();
        let text = url(&raw).to_string();
        for secret in ["S1", "S2", "S3", "S4"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("page=2"), "{text}");
    }

    #[test]
    fn clean_urls_are_borrowed() {
        let raw = Url::parse("http://127.0.0.1:8080/api/users?page=2").unwrap();
        assert!(matches!(url(&raw), Cow::Borrowed(_)));
    }
}
