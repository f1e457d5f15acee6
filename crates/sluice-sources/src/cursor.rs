//! Cursors: reading one out of a JSON message (a JSON pointer, RFC 6901) and deciding whether a
//! message with a given cursor is new, a duplicate, or arrives after a gap.
//!
//! Extraction uses [`sluice_core::json_pointer`], which validates the message as JSON and finds
//! the cursor without building a value tree.

use std::collections::{HashSet, VecDeque};

pub(crate) use sluice_core::json_pointer::{JsonError, Pointer};

/// The cursor at `pointer` in a message: a string as is, a number as its JSON text; `None` when
/// the path does not exist or leads to null, a boolean, an object or an array. Errors when the
/// payload is not one valid JSON document.
pub(crate) fn extract(pointer: &Pointer, payload: &[u8]) -> Result<Option<String>, JsonError> {
    Ok(pointer.find(payload)?.and_then(|found| found.scalar_text().map(str::to_owned)))
}

/// What [`CursorOrder::check`] decided about a message's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not seen before; forward it.
    New,
    /// At or below the last forwarded integer cursor, or an exact repeat of a recent
    /// non-integer cursor.
    Duplicate,
}

/// How many recent non-integer cursors are remembered for exact-match de-duplication.
const RECENT_CAPACITY: usize = 4096;

/// The order of forwarded cursors (used without `dedup`): integer cursors must increase;
/// other cursors are compared against a bounded set of recent ones. Gaps are not its
/// business (see `gaps`).
#[derive(Debug)]
pub(crate) struct CursorOrder {
    /// Integer cursors are ordered (false: `resume.cursor_type = "string"`, all opaque).
    integers: bool,
    last_int: Option<i128>,
    recent: VecDeque<String>,
    recent_set: HashSet<String>,
}

impl CursorOrder {
    /// Starts after `resume` (the spool's last cursor), if any; `integers`: integer cursors
    /// are ordered.
    pub(crate) fn new(resume: Option<&str>, integers: bool) -> CursorOrder {
        let mut order = CursorOrder { integers, last_int: None, recent: VecDeque::new(), recent_set: HashSet::new() };
        if let Some(cursor) = resume {
            order.check(cursor);
        }
        order
    }

    /// Decides about `cursor` and, unless it is a duplicate, records it as the latest.
    /// Every cursor is opaque from now on (compared by exact match only).
    pub(crate) fn opaque(&mut self) {
        self.integers = false;
    }

    pub(crate) fn check(&mut self, cursor: &str) -> Verdict {
        match parse_int(cursor).filter(|_| self.integers) {
            Some(value) => match self.last_int {
                Some(last) if value <= last => Verdict::Duplicate,
                _ => {
                    self.last_int = Some(value);
                    Verdict::New
                }
            },
            None => {
                if self.recent_set.contains(cursor) {
                    Verdict::Duplicate
                } else {
                    self.remember(cursor);
                    Verdict::New
                }
            }
        }
    }

    fn remember(&mut self, cursor: &str) {
        if self.recent.len() >= RECENT_CAPACITY
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_set.remove(&old);
        }
        self.recent.push_back(cursor.to_owned());
        self.recent_set.insert(cursor.to_owned());
    }
}

/// A cursor's integer value, when it is one (optional sign, ASCII digits, fits in i128).
pub(crate) fn parse_int(cursor: &str) -> Option<i128> {
    let (negative, digits) = match cursor.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, cursor),
    };
    if digits.is_empty() || digits.len() > 38 {
        return None;
    }
    // At most 38 digits: below 10^38 < i128::MAX, so no overflow. Runs for every message,
    // several times, so it avoids the general parser.
    let mut value: i128 = 0;
    for b in digits.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i128::from(b - b'0');
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(pointer: &str, doc: &str) -> Result<Option<String>, JsonError> {
        super::extract(&Pointer::parse(pointer).expect("pointer"), doc.as_bytes())
    }

    #[test]
    fn pointers_find_scalars_anywhere() {
        assert_eq!(extract("/seq", r#"{"a":[1,{"b":2}],"seq":42}"#).unwrap(), Some("42".into()));
        assert_eq!(extract("/seq", r#"{"seq":"abc"}"#).unwrap(), Some("abc".into()));
        assert_eq!(extract("/data/1/id", r#"{"data":[{"id":1},{"id":-7}]}"#).unwrap(), Some("-7".into()));
        assert_eq!(extract("/a~1b/~0c", r#"{"a/b":{"~c":"x"}}"#).unwrap(), Some("x".into()));
        assert_eq!(extract("", "17").unwrap(), Some("17".into()));
        assert_eq!(extract("/seq", r#"{"seq":1.5}"#).unwrap(), Some("1.5".into()));
        assert_eq!(extract("/seq", r#"{"seq":"\u00e9"}"#).unwrap(), Some("é".into()));
    }

    #[test]
    fn missing_or_non_scalar_cursors_are_none() {
        assert_eq!(extract("/seq", r#"{"type":"subscribed"}"#).unwrap(), None);
        assert_eq!(extract("/seq", r#"{"seq":null}"#).unwrap(), None);
        assert_eq!(extract("/seq", r#"{"seq":{"n":1}}"#).unwrap(), None);
        assert_eq!(extract("/seq/0", r#"{"seq":[]}"#).unwrap(), None);
        assert_eq!(extract("/seq", r#"[1,2]"#).unwrap(), None);
        assert_eq!(extract("/seq", r#""text""#).unwrap(), None);
    }

    #[test]
    fn invalid_json_is_an_error() {
        assert!(extract("/seq", "not json").is_err());
        assert!(extract("/seq", r#"{"seq":1"#).is_err());
        assert!(extract("/seq", r#"{"seq":1} trailing"#).is_err());
        assert!(extract("/seq", r#"{"a":[1,}"#).is_err());
        assert!(extract("/seq", "").is_err());
    }

    #[test]
    fn integer_cursors_must_increase() {
        let mut order = CursorOrder::new(Some("10"), true);
        assert_eq!(order.check("9"), Verdict::Duplicate);
        assert_eq!(order.check("10"), Verdict::Duplicate);
        assert_eq!(order.check("11"), Verdict::New);
        assert_eq!(order.check("15"), Verdict::New);
        assert_eq!(order.check("12"), Verdict::Duplicate);
        assert_eq!(order.check("16"), Verdict::New);
    }

    #[test]
    fn other_cursors_dedupe_by_exact_match() {
        let mut order = CursorOrder::new(Some("a"), true);
        assert_eq!(order.check("a"), Verdict::Duplicate);
        assert_eq!(order.check("b"), Verdict::New);
        assert_eq!(order.check("b"), Verdict::Duplicate);
        for i in 0..RECENT_CAPACITY {
            assert_eq!(order.check(&format!("k{i}")), Verdict::New);
        }
        // "a" and "b" have been forgotten by now.
        assert_eq!(order.check("a"), Verdict::New);
        assert_eq!(order.recent.len(), RECENT_CAPACITY);
    }

    #[test]
    fn parse_int_accepts_only_plain_integers() {
        assert_eq!(parse_int("007"), Some(7));
        assert_eq!(parse_int("-3"), Some(-3));
        assert_eq!(parse_int("+3"), None);
        assert_eq!(parse_int("1e3"), None);
        assert_eq!(parse_int(""), None);
        assert_eq!(parse_int("-"), None);
        assert_eq!(parse_int("--3"), None);
        assert_eq!(parse_int("3 "), None);
        let max = "9".repeat(38);
        assert_eq!(parse_int(&max), max.parse().ok());
        assert_eq!(parse_int(&format!("-{max}")), format!("-{max}").parse().ok());
        assert_eq!(parse_int(&"9".repeat(39)), None);
        assert_eq!(parse_int("170141183460469231731687303715884105727"), None, "39 digits");
    }
}
