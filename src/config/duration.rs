//! Durations written as text in configuration files: `"2s"`, `"150ms"`,
//! `"1.5s"`, `"1m 30s"`, parsed and written by `humantime`.
//!
//! A duration is one or more spans of a number and a unit (`h`, `m`, `s`,
//! `ms`, `us`, `ns`, or their long forms such as `sec` or `hours`); a
//! fraction is allowed (`"1.5s"`) as long as the result is a whole number of
//! nanoseconds. Durations are written back as spans (`"2s"`, `"1s 500ms"`),
//! so text -> duration -> text is exact.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// What the accepted forms are, for error messages.
const EXPECTED: &str = "a number and a unit, such as \"2s\", \"150ms\", \"1.5s\", \"1m 30s\" \
                        or \"500us\" (units: h, m, s, ms, us, ns)";

/// Why a text is not a duration.
#[derive(Debug)]
pub(crate) struct InvalidDuration {
    text: String,
    source: humantime::DurationError,
}

impl fmt::Display for InvalidDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?}: {}; expected {EXPECTED}",
            self.text, self.source
        )
    }
}

impl std::error::Error for InvalidDuration {}

/// Parses `"2s"`, `"150ms"`, `"1.5s"`, ... (see the module docs).
pub(crate) fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    humantime::parse_duration(text).map_err(|source| InvalidDuration {
        text: text.to_owned(),
        source,
    })
}

/// Writes `duration` as humantime spans (`"2s"`, `"1s 500ms"`).
pub(crate) fn format(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a duration: {EXPECTED}")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).map_err(E::custom)
    }
}

/// `#[serde(with = "duration::option")]` for an `Option<Duration>` field.
pub(crate) mod option {
    use super::{Deserializer, Duration, DurationVisitor, Serializer, Visitor, de, fmt, format};

    #[allow(clippy::ref_option)] // serde's `with` passes `&Option<T>`
    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_str(&format(*d)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        deserializer.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            DurationVisitor.expecting(f)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(DurationVisitor).map(Some)
        }

        // Formats without an option type (TOML) hand the value over directly.
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            DurationVisitor.visit_str(text).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_documented_forms_parse() {
        for (text, want) in [
            ("2s", Duration::from_secs(2)),
            ("150ms", ms(150)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("500us", Duration::from_micros(500)),
            ("7ns", Duration::from_nanos(7)),
            ("0s", Duration::ZERO),
            ("1.5s", ms(1500)),
            ("1m 30s", Duration::from_secs(90)),
        ] {
            assert_eq!(parse(text).ok(), Some(want), "{text}");
        }
    }

    #[test]
    fn malformed_text_is_rejected_with_the_text_and_the_forms() {
        for text in ["", "10", "-1s", "5S", "1.5ns", "s"] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.contains(&format!("{text:?}")), "{msg}");
            assert!(msg.contains("\"150ms\""), "{msg}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_is_exact(secs in 0u64..1_000_000_000_000, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse(&format(d)).ok(), Some(d));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,24}") {
            let _ = parse(&text);
        }
    }
}
