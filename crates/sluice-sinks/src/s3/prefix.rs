//! Firehose's S3 key expressions, evaluated without I/O.
//!
//! A prefix is literal text with `!{namespace:value}` expressions:
//! - `!{timestamp:<pattern>}`: the arrival time of the oldest record in the object, UTC, with
//!   the Java `DateTimeFormatter` letters `yyyy`, `yy`, `MM`, `dd`, `HH`, `mm`, `ss` and
//!   literal punctuation (`'...'` quotes letters);
//! - `!{firehose:random-string}`: 11 random lowercase letters and digits;
//! - `!{firehose:error-output-type}`: only in `error_prefix`, e.g. `partitioning-failed`;
//! - `!{partitionKeyFromQuery:NAME}`: the value a `partition_keys` JSON pointer found in the
//!   record (dynamic partitioning).
//!
//! A prefix without a timestamp expression gets `!{timestamp:yyyy/MM/dd/HH/}` appended, as
//! Firehose does.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::time::utc;
use rand::Rng;

/// One piece of a parsed prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Time(Vec<TimePart>),
    Random,
    ErrorType,
    Key(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TimePart {
    Year4,
    Year2,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Text(String),
}

/// A parsed prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template is evaluated with.
pub struct Values<'a> {
    /// Arrival time of the oldest record of the object, epoch ms.
    pub oldest_ms: u64,
    /// Dynamic partition values by name.
    pub keys: &'a BTreeMap<String, String>,
    /// For the error prefix: what failed.
    pub error_type: Option<&'a str>,
}

impl Template {
    /// Parses `text`; `keys` are the names `partition_keys` defines, `error` whether this is
    /// the error prefix (which must name the error output type).
    pub fn parse(text: &str, keys: &BTreeMap<String, String>, error: bool) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("!{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let body_start = start + 2;
            let end = rest[body_start..].find('}').ok_or_else(|| format!("unclosed `!{{` in {text:?}"))? + body_start;
            let body = &rest[body_start..end];
            let (namespace, value) =
                body.split_once(':').ok_or_else(|| format!("expression `!{{{body}}}` needs `namespace:value`"))?;
            parts.push(match (namespace, value) {
                ("timestamp", pattern) => Part::Time(parse_time(pattern)?),
                ("firehose", "random-string") => Part::Random,
                ("firehose", "error-output-type") if error => Part::ErrorType,
                ("firehose", "error-output-type") => {
                    return Err("`!{firehose:error-output-type}` belongs in `error_prefix`, not `prefix`".into());
                }
                ("partitionKeyFromQuery", name) if keys.contains_key(name) => Part::Key(name.to_owned()),
                ("partitionKeyFromQuery", name) => {
                    return Err(format!("`!{{partitionKeyFromQuery:{name}}}` names no key of `partition_keys`"));
                }
                _ => {
                    return Err(format!(
                        "unknown expression `!{{{body}}}`: use timestamp:, firehose:random-string, \
                         firehose:error-output-type or partitionKeyFromQuery:"
                    ));
                }
            });
            rest = &rest[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if error && !parts.contains(&Part::ErrorType) {
            return Err("`error_prefix` must hold `!{firehose:error-output-type}`".into());
        }
        if !parts.iter().any(|p| matches!(p, Part::Time(_))) {
            parts.push(Part::Time(parse_time("yyyy/MM/dd/HH/")?));
        }
        Ok(Template { parts })
    }

    /// Whether the template uses dynamic partition keys.
    pub fn uses_keys(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Key(_)))
    }

    /// The evaluated prefix. Random strings are drawn anew on every call.
    pub fn eval(&self, v: &Values<'_>) -> String {
        let time = utc(v.oldest_ms);
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Time(pattern) => format_time(pattern, &time, &mut out),
                Part::Random => out.push_str(&random_string(11)),
                Part::ErrorType => out.push_str(v.error_type.unwrap_or("unknown")),
                Part::Key(name) => out.push_str(v.keys.get(name).map_or("", String::as_str)),
            }
        }
        out
    }
}

fn parse_time(pattern: &str) -> Result<Vec<TimePart>, String> {
    let mut parts = Vec::new();
    let mut chars = pattern.chars().peekable();
    let mut text = String::new();
    while let Some(c) = chars.next() {
        if c == '\'' {
            // Quoted literal; `''` is a quote.
            let mut quoted = String::new();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        quoted.push('\'');
                    }
                    Some('\'') => break,
                    Some(q) => quoted.push(q),
                    None => return Err(format!("unclosed quote in timestamp pattern {pattern:?}")),
                }
            }
            if quoted.is_empty() {
                text.push('\'');
            }
            text.push_str(&quoted);
            continue;
        }
        if !c.is_ascii_alphabetic() {
            text.push(c);
            continue;
        }
        let mut run = 1;
        while chars.peek() == Some(&c) {
            chars.next();
            run += 1;
        }
        let part = match (c, run) {
            ('y', 4) => TimePart::Year4,
            ('y', 2) => TimePart::Year2,
            ('M', 2) => TimePart::Month,
            ('d', 2) => TimePart::Day,
            ('H', 2) => TimePart::Hour,
            ('m', 2) => TimePart::Minute,
            ('s', 2) => TimePart::Second,
            _ => {
                return Err(format!(
                    "timestamp pattern {pattern:?}: `{}` is not supported (use yyyy, yy, MM, dd, HH, mm, ss)",
                    std::iter::repeat_n(c, run).collect::<String>()
                ));
            }
        };
        if !text.is_empty() {
            parts.push(TimePart::Text(std::mem::take(&mut text)));
        }
        parts.push(part);
    }
    if !text.is_empty() {
        parts.push(TimePart::Text(text));
    }
    Ok(parts)
}

fn format_time(pattern: &[TimePart], t: &DateTime<Utc>, out: &mut String) {
    use std::fmt::Write;
    for p in pattern {
        let _ = match p {
            TimePart::Year4 => write!(out, "{:04}", t.year()),
            TimePart::Year2 => write!(out, "{:02}", t.year().rem_euclid(100)),
            TimePart::Month => write!(out, "{:02}", t.month()),
            TimePart::Day => write!(out, "{:02}", t.day()),
            TimePart::Hour => write!(out, "{:02}", t.hour()),
            TimePart::Minute => write!(out, "{:02}", t.minute()),
            TimePart::Second => write!(out, "{:02}", t.second()),
            TimePart::Text(s) => {
                out.push_str(s);
                Ok(())
            }
        };
    }
}

fn random_string(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// Firehose's object name: `<name>-<version>-YYYY-MM-DD-HH-MM-SS-<uuid>`, the time being the
/// oldest record's arrival (UTC).
pub fn object_name(name: &str, version: u32, oldest_ms: u64) -> String {
    let t = utc(oldest_ms);
    let mut rng = rand::rng();
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40; // a version-4 UUID
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{name}-{version}-{}-{}-{}-{}-{}-{}",
        t.format("%Y-%m-%d-%H-%M-%S"),
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_765_043_106_789; // 2025-12-06T17:45:06.789Z

    fn eval(t: &Template, keys: &BTreeMap<String, String>, error: Option<&str>) -> String {
        t.eval(&Values { oldest_ms: T, keys, error_type: error })
    }

    #[test]
    fn default_and_custom_time_prefixes() {
        let none = BTreeMap::new();
        assert_eq!(eval(&Template::parse("", &none, false).expect("empty"), &none, None), "2025/12/06/17/");
        assert_eq!(eval(&Template::parse("lake/", &none, false).expect("plain"), &none, None), "lake/2025/12/06/17/");
        let t =
            Template::parse("y=!{timestamp:yyyy}/m=!{timestamp:MM}/d=!{timestamp:dd}/", &none, false).expect("hive");
        assert_eq!(eval(&t, &none, None), "y=2025/m=12/d=06/");
        let t = Template::parse("!{timestamp:yy-MM-dd'T'HH:mm:ss}/", &none, false).expect("quoted");
        assert_eq!(eval(&t, &none, None), "25-12-06T17:45:06/");
    }

    #[test]
    fn partition_keys_error_type_and_random() {
        let keys: BTreeMap<String, String> = [("racer".to_owned(), "/racer".to_owned())].into();
        let t = Template::parse("racers/!{partitionKeyFromQuery:racer}/", &keys, false).expect("dynamic");
        assert!(t.uses_keys());
        let values: BTreeMap<String, String> = [("racer".to_owned(), "r7".to_owned())].into();
        assert_eq!(eval(&t, &values, None), "racers/r7/2025/12/06/17/");
        let e = Template::parse("err/!{firehose:error-output-type}/", &keys, true).expect("error prefix");
        assert_eq!(eval(&e, &values, Some("partitioning-failed")), "err/partitioning-failed/2025/12/06/17/");
        let r = Template::parse("!{firehose:random-string}/", &keys, false).expect("random");
        let (a, b) = (eval(&r, &values, None), eval(&r, &values, None));
        assert_eq!(a.len(), "xxxxxxxxxxx/2025/12/06/17/".len());
        assert_ne!(a, b);
    }

    #[test]
    fn mistakes_are_named() {
        let none = BTreeMap::new();
        for (text, error, want) in [
            ("a/!{timestamp:yyyy", false, "unclosed"),
            ("!{partitionKeyFromQuery:x}/", false, "names no key"),
            ("!{timestamp:EEE}/", false, "`EEE` is not supported"),
            ("!{firehose:error-output-type}/", false, "belongs in `error_prefix`"),
            ("errors/", true, "must hold"),
            ("!{nope:x}/", false, "unknown expression"),
        ] {
            let e = Template::parse(text, &none, error).expect_err(text);
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn object_names_follow_firehose() {
        let n = object_name("archive", 1, T);
        let (head, uuid) = n.split_at("archive-1-2025-12-06-17-45-06-".len());
        assert_eq!(head, "archive-1-2025-12-06-17-45-06-");
        let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
        assert_eq!(groups, vec![8, 4, 4, 4, 12], "{uuid}");
        assert_ne!(object_name("archive", 1, T), n);
    }
}
