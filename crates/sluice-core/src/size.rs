//! The one byte-size grammar of sluice's config files: an integer number of bytes (`1048576`)
//! or a string with a unit, binary (`"5MiB"`, `"512 KiB"`, `"1GiB"`) or decimal (`"5MB"`,
//! `"100kB"`), case-insensitive; `"B"` and a bare number in a string are bytes.

use serde::{Deserialize, Deserializer};

/// Parses a size; the error is one sentence naming the text and showing valid forms.
pub fn parse(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size {text:?}: write bytes as an integer, or e.g. \"5MiB\", \"512KiB\", \"1GB\"");
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    if number.is_empty() {
        return Err(invalid());
    }
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(invalid()),
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(scale).ok_or_else(invalid);
    }
    // A fraction (`"1.5MiB"`) must still come to whole bytes within range.
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes.round() as u64)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Bytes(u64),
    Text(String),
}

/// Deserializes a size given as an integer or a string (`#[serde(deserialize_with =
/// "sluice_core::size::deserialize")]`).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    match Raw::deserialize(deserializer)
        .map_err(|_| serde::de::Error::custom("expected a size: bytes as an integer, or a string such as \"5MiB\""))?
    {
        Raw::Bytes(n) => Ok(n),
        Raw::Text(text) => parse(&text).map_err(serde::de::Error::custom),
    }
}

/// As [`deserialize`], for a `usize` field.
pub fn deserialize_usize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let n = deserialize(deserializer)?;
    usize::try_from(n).map_err(|_| serde::de::Error::custom(format!("size {n} is too large for this machine")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_binary_and_decimal() {
        assert_eq!(parse("5MiB"), Ok(5 << 20));
        assert_eq!(parse(" 512 kib "), Ok(512 << 10));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("5MB"), Ok(5_000_000));
        assert_eq!(parse("100kB"), Ok(100_000));
        assert_eq!(parse("1.5MiB"), Ok(1_572_864));
        assert_eq!(parse("42"), Ok(42));
        assert_eq!(parse("42B"), Ok(42));
    }

    #[test]
    fn nonsense_is_refused_with_the_text() {
        for bad in ["", "MiB", "5 parsecs", "-1", "1e3", "99999999999GiB", "1.2.3MiB"] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn deserializes_integers_and_strings() {
        #[derive(Deserialize)]
        struct C {
            #[serde(deserialize_with = "deserialize")]
            size: u64,
        }
        let c: C = toml::from_str("size = 1024").expect("int");
        assert_eq!(c.size, 1024);
        let c: C = toml::from_str("size = \"2MiB\"").expect("string");
        assert_eq!(c.size, 2 << 20);
        let e = toml::from_str::<C>("size = \"2 lightyears\"").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("invalid size"), "{e}");
        let e = toml::from_str::<C>("size = true").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("expected a size"), "{e}");
    }
}
