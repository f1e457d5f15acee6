//! Durations in configs, written the humantime way: `"50ms"`, `"2s"`, `"1h 30m"`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Deserializes a humantime string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("invalid duration {text:?} ({e}); write e.g. \"50ms\", \"2s\", \"1h\""))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        #[serde(with = "super")]
        d: Duration,
    }

    #[test]
    fn parses_humantime() {
        let t: T = serde_json::from_str(r#"{"d":"50ms"}"#).expect("parse");
        assert_eq!(t.d, Duration::from_millis(50));
        let t: T = serde_json::from_str(r#"{"d":"1m 30s"}"#).expect("parse");
        assert_eq!(t.d, Duration::from_secs(90));
        assert!(serde_json::from_str::<T>(r#"{"d":"soon"}"#).is_err());
    }
}
