//! Durations written as text in configuration files: `"2s"`, `"150ms"`, `"1.5s"`.
//!
//! A duration is a non-negative decimal number immediately followed by a unit:
//! `h`, `m`, `s`, `ms`, `us` (or `µs`) or `ns`, with no space and no sign.
//! A fraction is allowed (`"1.5s"`, `"0.25m"`) as long as the result is a whole
//! number of nanoseconds. A duration is written back in the largest unit that
//! keeps it a whole number (`2000 ms` as `"2s"`, `1500 ms` as `"1500ms"`), so
//! text -> duration -> text is exact.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Units, largest first, with their length in nanoseconds.
const UNITS: [(&str, u128); 6] = [
    ("h", 3_600 * NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("s", NANOS_PER_SEC),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// What the accepted forms are, for error messages.
const EXPECTED: &str = "a number and a unit with no space, such as \"2s\", \"150ms\", \
                        \"1.5s\", \"1m\", \"1h\" or \"500us\" (units: h, m, s, ms, us, ns)";

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidDuration {
    text: String,
    reason: &'static str,
}

impl fmt::Display for InvalidDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?}: {}; expected {EXPECTED}",
            self.text, self.reason
        )
    }
}

impl std::error::Error for InvalidDuration {}

/// Parses `"2s"`, `"150ms"`, `"1.5s"`, ... (see the module docs).
pub(crate) fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    let invalid = |reason| InvalidDuration {
        text: text.to_owned(),
        reason,
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(invalid(if text.is_empty() {
            "it is empty"
        } else {
            "it does not start with a digit"
        }));
    }
    let unit_nanos = match unit {
        "" => return Err(invalid("the unit is missing")),
        "µs" => 1_000,
        _ => UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, nanos)| *nanos)
            .ok_or_else(|| invalid("unknown unit"))?,
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    if whole.is_empty() || fraction.is_some_and(|f| f.is_empty() || f.contains('.')) {
        return Err(invalid("the number is malformed"));
    }
    // Digits only, so the one way to fail is overflow.
    let whole: u128 = whole.parse().map_err(|_| invalid("it is too large"))?;
    let mut nanos = whole
        .checked_mul(unit_nanos)
        .ok_or_else(|| invalid("it is too large"))?;
    let fraction = fraction.map_or("", |f| f.trim_end_matches('0'));
    if !fraction.is_empty() {
        // With trailing zeros gone, no fraction longer than 13 digits is a
        // whole number of nanoseconds even in hours; 18 keeps the arithmetic
        // below within u128.
        let digits = u32::try_from(fraction.len()).unwrap_or(u32::MAX);
        if digits > 18 {
            return Err(invalid("it is finer than a nanosecond"));
        }
        let scale = 10u128.pow(digits);
        let part: u128 = fraction
            .parse()
            .map_err(|_| invalid("the number is malformed"))?;
        let scaled = part * unit_nanos;
        if !scaled.is_multiple_of(scale) {
            return Err(invalid("it is finer than a nanosecond"));
        }
        nanos = nanos
            .checked_add(scaled / scale)
            .ok_or_else(|| invalid("it is too large"))?;
    }
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| invalid("it is too large"))?;
    // Below one second's worth of nanoseconds, so it fits.
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Ok(Duration::new(secs, subsec))
}

/// Writes `duration` in the largest unit that keeps it a whole number.
pub(crate) fn format(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let (unit, size) = UNITS
        .iter()
        .find(|(_, size)| nanos.is_multiple_of(*size))
        .copied()
        .unwrap_or(("ns", 1));
    format!("{}{unit}", nanos / size)
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
    fn every_unit_parses() {
        for (text, want) in [
            ("2s", Duration::from_secs(2)),
            ("150ms", ms(150)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("500us", Duration::from_micros(500)),
            ("500µs", Duration::from_micros(500)),
            ("7ns", Duration::from_nanos(7)),
            ("0s", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("007s", Duration::from_secs(7)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn fractions_parse_when_they_are_whole_nanoseconds() {
        for (text, want) in [
            ("1.5s", ms(1500)),
            ("0.25m", Duration::from_secs(15)),
            ("1.5h", Duration::from_secs(5400)),
            ("2.000s", Duration::from_secs(2)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("1.5us", Duration::from_nanos(1500)),
            ("0.0000000000000000000000s", Duration::ZERO),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
        for text in ["1.5ns", "0.0000000001s", "0.1234567890123456789s"] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.reason, "it is finer than a nanosecond", "{text}");
        }
    }

    #[test]
    fn malformed_text_is_rejected_with_a_reason() {
        for (text, reason) in [
            ("", "it is empty"),
            ("10", "the unit is missing"),
            ("1.5", "the unit is missing"),
            ("5 s", "unknown unit"),
            (" 5s", "it does not start with a digit"),
            ("5s ", "unknown unit"),
            ("-1s", "it does not start with a digit"),
            ("+1s", "it does not start with a digit"),
            ("s", "it does not start with a digit"),
            ("5sec", "unknown unit"),
            ("5S", "unknown unit"),
            ("1h30m", "unknown unit"),
            ("1.s", "the number is malformed"),
            (".5s", "the number is malformed"),
            ("1.2.3s", "the number is malformed"),
            ("1..2s", "the number is malformed"),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.reason, reason, "{text:?}");
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        let max_secs = u64::MAX.to_string();
        assert_eq!(
            parse(&format!("{max_secs}s")),
            Ok(Duration::from_secs(u64::MAX))
        );
        for text in [
            format!("{max_secs}0s"),
            format!("{max_secs}h"),
            "340282366920938463463374607431768211456ns".to_owned(), // u128::MAX + 1
            "99999999999999999999999999999999999999999h".to_owned(),
            format!("{max_secs}.9999999999s"),
        ] {
            let reason = parse(&text).unwrap_err().reason;
            assert!(
                reason == "it is too large" || reason == "it is finer than a nanosecond",
                "{text}: {reason}"
            );
        }
        assert_eq!(
            parse(&format!("{max_secs}.1s")),
            Ok(Duration::new(u64::MAX, 100_000_000))
        );
        assert_eq!(
            parse("18446744073709551616s").unwrap_err().reason, // u64::MAX + 1
            "it is too large"
        );
    }

    #[test]
    fn the_message_quotes_the_text_and_lists_the_forms() {
        let msg = parse("2 seconds").unwrap_err().to_string();
        assert!(msg.contains("\"2 seconds\""), "{msg}");
        assert!(msg.contains("\"150ms\"") && msg.contains("units: h, m, s, ms, us, ns"));
    }

    #[test]
    fn formatting_picks_the_largest_whole_unit() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (ms(150), "150ms"),
            (ms(2000), "2s"),
            (ms(1500), "1500ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_micros(500), "500us"),
            (Duration::from_nanos(1_000_000_001), "1000000001ns"),
        ] {
            assert_eq!(format(d), want);
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_is_exact(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,24}") {
            let _ = parse(&text);
        }
    }
}
