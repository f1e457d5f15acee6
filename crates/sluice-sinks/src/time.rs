//! UTC times of epoch milliseconds, as the sinks name files, objects and events.

use chrono::{DateTime, Utc};

/// The UTC time of `ms` (epoch milliseconds; out of range: the epoch).
pub fn utc(ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.
pub fn iso8601(ms: u64, millis: bool) -> String {
    let format = if millis { "%Y-%m-%dT%H:%M:%S%.3fZ" } else { "%Y-%m-%dT%H:%M:%SZ" };
    utc(ms).format(format).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times() {
        assert_eq!(iso8601(1_709_210_096_789, true), "2024-02-29T12:34:56.789Z");
        assert_eq!(iso8601(1_709_210_096_789, false), "2024-02-29T12:34:56Z");
        assert_eq!(iso8601(0, true), "1970-01-01T00:00:00.000Z");
    }
}
