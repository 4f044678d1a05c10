//! The header rules the cache applies itself: which fields are stored
//! (RFC 9111 section 3.1), how a `304` updates them (section 3.2), and the
//! view of them `http-cache-semantics` reads (its own copies keep one line
//! per field name, so the cache never serves them).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{
    AGE, CACHE_CONTROL, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, DATE, EXPIRES,
    HeaderMap, HeaderName, HeaderValue, PRAGMA, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE, VARY,
};

/// Header fields that concern one connection (RFC 9110 section 7.6.1),
/// besides those `Connection` lists: never stored (RFC 9111 section 3.1).
const HOP_BY_HOP: [HeaderName; 10] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-authentication-info"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Header fields of a `304` that do not update the stored response (RFC
/// 9111 section 3.2), besides those of one connection: they describe the
/// body the 304 did not send, or, for `Age`, the 304 itself.
const NOT_UPDATED: [HeaderName; 4] = [CONTENT_LENGTH, CONTENT_ENCODING, CONTENT_RANGE, AGE];

/// A stored response's headers updated by a 304's (RFC 9111 section 3.2):
/// each field the 304 has replaces every line of that field, except those
/// that describe the body or its transfer (`Content-Length`...), `Age`,
/// and those of one connection. (The policy's own merge keeps one line per
/// field: a `Vary` or `Cache-Control` in two lines would lose one.)
pub(super) fn updated(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut headers = stored.clone();
    headers.remove(AGE);
    let fresh = without_hop_by_hop(not_modified);
    for name in fresh.keys() {
        if NOT_UPDATED.contains(name) {
            continue;
        }
        headers.remove(name);
        for value in fresh.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// How far before its `Date` a response's `Expires` is, when it has no
/// `max-age` (which `Expires` then yields to): a negative lifetime, stale
/// that long already when it was sent. Zero otherwise, or when either date
/// does not parse.
pub(super) fn expired_before_sent(headers: &HeaderMap) -> Duration {
    let max_age = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|directive| directive.split('=').next())
        .any(|name| name.trim().eq_ignore_ascii_case("max-age"));
    let date = |name| {
        let value = headers.get(name)?.to_str().ok()?;
        httpdate::parse_http_date(value).ok()
    };
    match (max_age, date(EXPIRES), date(DATE)) {
        (false, Some(expires), Some(sent)) => sent.duration_since(expires).unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

/// Whether a request says `Pragma: no-cache` (RFC 9111 section 5.4).
pub(super) fn pragma_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|directive| directive.trim().eq_ignore_ascii_case("no-cache"))
}

/// `headers` without those of one connection: the `HOP_BY_HOP` fields and
/// those `Connection` lists.
pub(super) fn without_hop_by_hop(headers: &HeaderMap) -> HeaderMap {
    let listed: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !HOP_BY_HOP.contains(name) && !listed.iter().any(|l| l == name.as_str()) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// Headers as the policy reads them: the lines of each list field it reads
/// (`Cache-Control`, `Pragma`, `Vary`) joined into one, since it reads
/// some of them by their first line only.
pub(super) fn policy_view(mut headers: HeaderMap) -> HeaderMap {
    for name in [CACHE_CONTROL, PRAGMA, VARY] {
        if headers.get_all(&name).iter().nth(1).is_none() {
            continue;
        }
        let lines: Vec<&[u8]> = headers
            .get_all(&name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if let Ok(joined) = HeaderValue::from_bytes(&lines.join(&b", "[..])) {
            headers.insert(name, joined);
        }
    }
    headers
}

/// A response as the policy reads it (see [`policy_view`]). An `Age`
/// beyond `u32::MAX` seconds (136 years) is cut to that: the policy adds
/// durations to it.
pub(super) fn response_parts(
    status: StatusCode,
    headers: HeaderMap,
) -> Option<http::response::Parts> {
    let mut headers = policy_view(headers);
    let age = headers
        .get(AGE)
        .map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()));
    match age {
        Some(None) => drop(headers.remove(AGE)),
        Some(Some(age)) if age > u64::from(u32::MAX) => {
            headers.insert(AGE, HeaderValue::from(u32::MAX));
        }
        _ => {}
    }
    let (mut parts, ()) = http::Response::builder()
        .status(status)
        .body(())
        .ok()?
        .into_parts();
    parts.headers = headers;
    Some(parts)
}

/// The header names a response varies on, sorted; `None` for `Vary: *`.
pub(super) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    let listed = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty());
    for name in listed {
        if name == "*" {
            return None;
        }
        if let Ok(name) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
            names.push(name);
        }
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for &(name, value) in lines {
            h.append(name, HeaderValue::from_static(value));
        }
        h
    }

    fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn a_304_replaces_every_line_of_its_fields_and_keeps_the_others_whole() {
        let stored = headers(&[
            ("vary", "Accept"),
            ("vary", "Accept-Language"),
            ("cache-control", "must-revalidate"),
            ("cache-control", "max-age=60"),
            ("link", "</a>"),
            ("link", "</b>"),
            ("content-length", "5"),
            ("age", "100"),
        ]);
        let not_modified = headers(&[
            ("cache-control", "max-age=120"),
            ("content-length", "0"),
            ("age", "3"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("x-new", "1"),
        ]);

        let h = updated(&stored, &not_modified);

        assert_eq!(values(&h, "vary"), ["Accept", "Accept-Language"]);
        assert_eq!(values(&h, "link"), ["</a>", "</b>"]);
        assert_eq!(values(&h, "cache-control"), ["max-age=120"]);
        assert_eq!(values(&h, "content-length"), ["5"]);
        assert_eq!(values(&h, "x-new"), ["1"]);
        for gone in ["age", "connection", "x-hop"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn the_policy_reads_every_line_of_a_list_field() {
        let h = policy_view(headers(&[
            ("cache-control", "must-revalidate"),
            ("cache-control", "max-age=60"),
            ("vary", "Accept"),
            ("vary", "Accept-Language"),
            ("link", "</a>"),
            ("link", "</b>"),
        ]));

        assert_eq!(values(&h, "cache-control"), ["must-revalidate, max-age=60"]);
        assert_eq!(values(&h, "vary"), ["Accept, Accept-Language"]);
        assert_eq!(values(&h, "link").len(), 2);
    }
}
