//! The one duration grammar of sluice, for config files and command-line flags alike.
//!
//! Humantime forms (`"30s"`, `"250ms"`, `"1m 30s"`, `"1h"`, `"1.5s"`, `"2 min"`) plus a bare
//! number, read as seconds (`"10"`, `"0.5"`), which the benchmark and simulator flags took.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses a duration; the error is one sentence naming the text and showing valid forms.
pub fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let invalid = || format!("invalid duration {text:?}: write e.g. \"30s\", \"250ms\" or \"1m 30s\"");
    if trimmed.is_empty() {
        return Err(invalid());
    }
    // Checked by hand because `f64::from_str` also takes "inf", "NaN" and "-1".
    if trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds: f64 = trimmed.parse().map_err(|_| invalid())?;
        return Duration::try_from_secs_f64(seconds).map_err(|_| invalid());
    }
    humantime::parse_duration(trimmed).map_err(|_| invalid())
}

/// Deserializes a duration string (`#[serde(with = "sluice_core::duration")]`).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// Deserializes an optional duration string; pair with `#[serde(default)]` so an absent
/// field is `None`.
pub fn deserialize_opt<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        Some(text) => parse(&text).map(Some).map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn humantime_forms() {
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("1m 30s"), Duration::from_secs(90));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("2min"), Duration::from_secs(120));
        assert_eq!(ok("3m"), Duration::from_secs(180));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("2 s"), Duration::from_secs(2));
        assert_eq!(ok("10us"), Duration::from_micros(10));
        assert_eq!(ok("1day"), Duration::from_secs(86_400));
        assert_eq!(ok("  20s "), Duration::from_secs(20));
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(ok("10"), Duration::from_secs(10));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0.25"), Duration::from_millis(250));
    }

    #[test]
    fn rejects_with_a_clear_sentence() {
        for bad in ["", "  ", "soon", "s", "-1s", "-1", "inf", "NaN", "1.2.3", "2 parsecs", "10 s x", "."] {
            let err = parse(bad).expect_err(bad);
            assert!(err.starts_with("invalid duration "), "{err}");
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("\"1m 30s\""), "{err}");
        }
        assert_eq!(parse("soon").unwrap_err(), r#"invalid duration "soon": write e.g. "30s", "250ms" or "1m 30s""#);
        assert!(parse("99999999999999999999999h").is_err());
    }

    #[derive(Deserialize)]
    struct Config {
        #[serde(with = "super")]
        every: Duration,
        #[serde(default, deserialize_with = "super::deserialize_opt")]
        timeout: Option<Duration>,
    }

    #[test]
    fn serde_fields() {
        let c: Config = serde_json::from_str(r#"{"every":"1m 30s","timeout":"250ms"}"#).unwrap();
        assert_eq!(c.every, Duration::from_secs(90));
        assert_eq!(c.timeout, Some(Duration::from_millis(250)));
        let c: Config = serde_json::from_str(r#"{"every":"5s"}"#).unwrap();
        assert_eq!(c.timeout, None);
        let c: Config = serde_json::from_str(r#"{"every":"5s","timeout":null}"#).unwrap();
        assert_eq!(c.timeout, None);
        let err = serde_json::from_str::<Config>(r#"{"every":"soon"}"#).err().unwrap().to_string();
        assert!(err.contains(r#"invalid duration "soon""#), "{err}");
        let err = serde_json::from_str::<Config>(r#"{"every":"1s","timeout":"later"}"#).err().unwrap().to_string();
        assert!(err.contains(r#"invalid duration "later""#), "{err}");
    }
}
