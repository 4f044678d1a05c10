//! Header values from user input: conversions that report a `Config` error
//! instead of failing later, with credential-like values marked sensitive so
//! `HeaderValue`'s own `Debug` never prints them.

use std::fmt;

use reqwest::header::{HeaderName, HeaderValue};

use crate::error::{BoxError, Error};
use crate::redact;

/// Converts a header name and value, marking credential-like values sensitive.
pub(crate) fn header_pair<K, V>(name: K, value: V) -> Result<(HeaderName, HeaderValue), Error>
where
    K: TryInto<HeaderName>,
    K::Error: Into<BoxError>,
    V: TryInto<HeaderValue>,
    V::Error: Into<BoxError>,
{
    let name: HeaderName = name
        .try_into()
        .map_err(|e| Error::config_from("invalid header name", e))?;
    let mut value: HeaderValue = value
        .try_into()
        .map_err(|e| Error::config_from("invalid header value", e))?;
    redact::mark_sensitive(&name, &mut value);
    Ok((name, value))
}

/// `Bearer <token>`, marked sensitive.
pub(crate) fn bearer(token: &dyn fmt::Display) -> Result<HeaderValue, Error> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| Error::config_from("invalid bearer token", e))?;
    value.set_sensitive(true);
    Ok(value)
}
