//! JSON pointers (RFC 6901) evaluated on raw message bytes, for cursors and partition keys.
//!
//! [`Pointer::find`] checks that the input is exactly one JSON document (RFC 8259: structure,
//! literals, number syntax, string escapes, no raw control characters, valid UTF-8) and, in the
//! same single pass, notes where the pointer's target lies. Nothing is allocated unless the
//! found string has escapes. This runs for every provider message and every record, so it is a
//! small hand-written scanner rather than a walk with a general JSON library (which costs
//! several times more here); its verdicts are checked against `serde_json` by property tests.

use std::borrow::Cow;
use std::fmt;

/// Deepest nesting accepted (the same limit as `serde_json`).
const MAX_DEPTH: usize = 128;

/// Why a document is not valid JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset where the problem was found.
    pub offset: usize,
    /// What was wrong.
    pub message: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

impl std::error::Error for JsonError {}

/// A parsed JSON pointer (`""` is the whole document, `/seq`, `/data/0/id`, `/a~1b` …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    tokens: Vec<String>,
}

/// The value found at a pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'a> {
    /// A string, unescaped.
    Str(Cow<'a, str>),
    /// A number, as its JSON text.
    Number(&'a str),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An object or array, as its JSON text (whitespace as in the input).
    Composite(&'a str),
}

impl Found<'_> {
    /// A string's content or a number's text; `None` for anything else (what a cursor may be).
    pub fn scalar_text(&self) -> Option<&str> {
        match self {
            Found::Str(s) => Some(s),
            Found::Number(n) => Some(n),
            _ => None,
        }
    }
}

impl Pointer {
    /// Parses RFC 6901 syntax.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer { text: String::new(), tokens: Vec::new() });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("a JSON pointer starts with '/' (e.g. \"/seq\"), found {text:?}"));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => {
                            return Err(format!(
                                "invalid escape in JSON pointer {text:?} ('~' must be followed by 0 or 1)"
                            ));
                        }
                    }
                } else {
                    token.push(c);
                }
            }
            tokens.push(token);
        }
        Ok(Pointer { text: text.to_owned(), tokens })
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at the pointer, or `None` when the path does not exist. Errors when `doc` is
    /// not exactly one valid JSON document.
    pub fn find<'a>(&self, doc: &'a [u8]) -> Result<Option<Found<'a>>, JsonError> {
        if let Err(e) = std::str::from_utf8(doc) {
            return Err(JsonError { offset: e.valid_up_to(), message: "invalid UTF-8" });
        }
        self.scan(doc, false)
    }

    /// Like [`Pointer::find`], but stops as soon as the target is found: the document is
    /// only checked up to there. For uses where a broken remainder does not matter (a
    /// partition key), and where the target usually comes early, this is much cheaper.
    pub fn find_early<'a>(&self, doc: &'a [u8]) -> Result<Option<Found<'a>>, JsonError> {
        self.scan(doc, true)
    }

    fn scan<'a>(&self, doc: &'a [u8], early: bool) -> Result<Option<Found<'a>>, JsonError> {
        let mut sc = Scanner { doc, pos: 0, path: &self.tokens, found: None, early };
        sc.ws();
        sc.value(0, Some(0))?;
        if !sc.stopped() {
            sc.ws();
            if sc.pos != doc.len() {
                return sc.fail("trailing characters after the JSON value");
            }
        }
        match sc.found {
            None => Ok(None),
            Some((start, end)) => classify(&doc[start..end]).map(Some),
        }
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What the raw text of a (valid) JSON value is.
fn classify(raw: &[u8]) -> Result<Found<'_>, JsonError> {
    let text = std::str::from_utf8(raw).map_err(|_| JsonError { offset: 0, message: "invalid UTF-8" })?;
    Ok(match raw.first() {
        Some(b'"') => {
            let inner = &text[1..text.len() - 1];
            if inner.contains('\\') {
                Found::Str(Cow::Owned(unescape(inner)))
            } else {
                Found::Str(Cow::Borrowed(inner))
            }
        }
        Some(b'n') => Found::Null,
        Some(b't') => Found::Bool(true),
        Some(b'f') => Found::Bool(false),
        Some(b'{' | b'[') => Found::Composite(text),
        _ => Found::Number(text),
    })
}

/// The content of a string whose escapes the scanner has already checked.
fn unescape(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('u') => {
                let unit = hex4(&mut chars);
                if (0xD800..0xDC00).contains(&unit) {
                    // A high surrogate: a low one must follow (checked by the scanner).
                    let mut ahead = chars.clone();
                    if let (Some('\\'), Some('u')) = (ahead.next(), ahead.next()) {
                        let low = hex4(&mut ahead);
                        if (0xDC00..0xE000).contains(&low) {
                            chars = ahead;
                            let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                            out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                            continue;
                        }
                    }
                    out.push('\u{fffd}');
                } else {
                    out.push(char::from_u32(unit).unwrap_or('\u{fffd}'));
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn hex4(chars: &mut std::str::Chars<'_>) -> u32 {
    (0..4).fold(0, |acc, _| acc * 16 + chars.next().and_then(|c| c.to_digit(16)).unwrap_or(0))
}

/// One pass over a document: validates it and records the span of the pointer's target.
struct Scanner<'d, 'p> {
    doc: &'d [u8],
    pos: usize,
    path: &'p [String],
    /// Byte span of the target, once found.
    found: Option<(usize, usize)>,
    /// Stop at the target.
    early: bool,
}

impl Scanner<'_, '_> {
    fn stopped(&self) -> bool {
        self.early && self.found.is_some()
    }

    fn fail<T>(&self, message: &'static str) -> Result<T, JsonError> {
        Err(JsonError { offset: self.pos, message })
    }

    fn peek(&self) -> Option<u8> {
        self.doc.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// One value at `depth`; `on_path` is how many pointer tokens led here (None: off the path).
    fn value(&mut self, depth: usize, on_path: Option<usize>) -> Result<(), JsonError> {
        let start = self.pos;
        let target = on_path == Some(self.path.len());
        let inner = on_path.filter(|&n| n < self.path.len());
        match self.peek() {
            Some(b'{') => self.object(depth + 1, inner)?,
            Some(b'[') => self.array(depth + 1, inner)?,
            Some(b'"') => {
                self.string()?;
            }
            Some(b't') => self.literal(b"true")?,
            Some(b'f') => self.literal(b"false")?,
            Some(b'n') => self.literal(b"null")?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(_) => return self.fail("expected a JSON value"),
            None => return self.fail("unexpected end of input"),
        }
        if target && self.found.is_none() {
            self.found = Some((start, self.pos));
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.doc[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            self.fail("invalid literal")
        }
    }

    fn digits(&mut self) -> usize {
        let from = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - from
    }

    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.fail("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.fail("invalid number: no digit after '.'");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.fail("invalid number: no digit in the exponent");
            }
        }
        Ok(())
    }

    /// A string; returns the span of its content (without quotes) and whether it has escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), JsonError> {
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        loop {
            let rest = &self.doc[self.pos..];
            let Some(i) = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20) else {
                self.pos = self.doc.len();
                return self.fail("unterminated string");
            };
            self.pos += i;
            match self.doc[self.pos] {
                b'"' => {
                    let end = self.pos;
                    self.pos += 1;
                    return Ok((start, end, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                _ => return self.fail("control character in string"),
            }
        }
    }

    fn escape(&mut self) -> Result<(), JsonError> {
        self.pos += 1;
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'u') => {
                self.pos += 1;
                let unit = self.hex()?;
                if (0xD800..0xDC00).contains(&unit) {
                    if self.doc[self.pos..].starts_with(b"\\u") {
                        self.pos += 2;
                        let low = self.hex()?;
                        if (0xDC00..0xE000).contains(&low) {
                            return Ok(());
                        }
                    }
                    return self.fail("unpaired surrogate in \\u escape");
                }
                if (0xDC00..0xE000).contains(&unit) {
                    return self.fail("unpaired surrogate in \\u escape");
                }
                Ok(())
            }
            _ => self.fail("invalid escape"),
        }
    }

    fn hex(&mut self) -> Result<u32, JsonError> {
        let Some(digits) = self.doc.get(self.pos..self.pos + 4) else {
            return self.fail("invalid \\u escape");
        };
        let mut v = 0;
        for &d in digits {
            let Some(x) = (d as char).to_digit(16) else {
                return self.fail("invalid \\u escape");
            };
            v = v * 16 + x;
        }
        self.pos += 4;
        Ok(v)
    }

    fn object(&mut self, depth: usize, on_path: Option<usize>) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return self.fail("nested too deeply");
        }
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.fail("expected a string key");
            }
            let (start, end, escaped) = self.string()?;
            let next = on_path.filter(|&n| self.found.is_none() && self.key_is(start, end, escaped, &self.path[n]));
            self.ws();
            if self.peek() != Some(b':') {
                return self.fail("expected ':'");
            }
            self.pos += 1;
            self.ws();
            self.value(depth, next.map(|n| n + 1))?;
            if self.stopped() {
                return Ok(());
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.fail("expected ',' or '}'"),
            }
        }
    }

    fn key_is(&self, start: usize, end: usize, escaped: bool, token: &str) -> bool {
        let raw = &self.doc[start..end];
        if !escaped {
            return raw == token.as_bytes();
        }
        std::str::from_utf8(raw).is_ok_and(|k| unescape(k) == token)
    }

    fn array(&mut self, depth: usize, on_path: Option<usize>) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return self.fail("nested too deeply");
        }
        let wanted = on_path.and_then(|n| Some((array_index(&self.path[n])?, n)));
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        let mut index = 0usize;
        loop {
            let here = wanted.filter(|&(w, _)| w == index).map(|(_, n)| n + 1);
            self.value(depth, here)?;
            if self.stopped() {
                return Ok(());
            }
            index += 1;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.fail("expected ',' or ']'"),
            }
        }
    }
}

/// An array index token: `0` or digits without a leading zero (RFC 6901 §4).
fn array_index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(pointer: &str, doc: &str) -> Result<Option<Found<'static>>, JsonError> {
        let doc: &'static str = Box::leak(doc.to_owned().into_boxed_str());
        Pointer::parse(pointer).expect("pointer").find(doc.as_bytes())
    }

    fn scalar(pointer: &str, doc: &str) -> Option<String> {
        find(pointer, doc).expect("valid").and_then(|f| f.scalar_text().map(str::to_owned))
    }

    #[test]
    fn pointers_find_values_anywhere() {
        assert_eq!(scalar("/seq", r#"{"a":[1,{"b":2}],"seq":42}"#), Some("42".into()));
        assert_eq!(scalar("/seq", r#"{"seq":"abc"}"#), Some("abc".into()));
        assert_eq!(scalar("/data/1/id", r#"{"data":[{"id":1},{"id":-7}]}"#), Some("-7".into()));
        assert_eq!(scalar("/a~1b/~0c", r#"{"a/b":{"~c":"x"}}"#), Some("x".into()));
        assert_eq!(scalar("", "17"), Some("17".into()));
        assert_eq!(scalar("/seq", r#"{"seq":1.5e3}"#), Some("1.5e3".into()));
        assert_eq!(scalar("/seq", r#"{"seq":"\u00e9\n"}"#), Some("é\n".into()));
        assert_eq!(scalar("/seq", r#"{"seq":"\ud83d\ude00\/\"\\"}"#), Some("😀/\"\\".into()));
        assert_eq!(scalar("/k\u{e9}", r#"{"k\u00e9":"v"}"#), Some("v".into()));
        assert_eq!(scalar("/s\"q", r#"{"s\"q":1}"#), Some("1".into()));
        assert_eq!(find("/o", r#"{"o": {"a": [1, 2]} }"#).expect("valid"), Some(Found::Composite(r#"{"a": [1, 2]}"#)));
        assert_eq!(find("/n", r#"{"n":null}"#).expect("valid"), Some(Found::Null));
        assert_eq!(find("/b", r#"{"b":false}"#).expect("valid"), Some(Found::Bool(false)));
        assert_eq!(find("", r#" "x" "#).expect("valid"), Some(Found::Str(Cow::Borrowed("x"))));
    }

    #[test]
    fn early_search_stops_at_the_target() {
        let p = Pointer::parse("/racer").expect("p");
        let doc = br#"{"racer":"r1","rest":[1,2,"#;
        assert!(p.find(doc).is_err());
        assert_eq!(p.find_early(doc).expect("found before the break"), Some(Found::Str(Cow::Borrowed("r1"))));
        assert!(p.find_early(br#"{"a":[1,}"#).is_err(), "a break before the target still counts");
        assert_eq!(p.find_early(br#"{"a":1}"#).expect("valid"), None);
        assert_eq!(p.find_early(br#"{"racer":{"x":[1]},"b":"#).expect("found"), Some(Found::Composite(r#"{"x":[1]}"#)));
    }

    #[test]
    fn the_first_of_duplicate_keys_wins() {
        assert_eq!(scalar("/k", r#"{"k":1,"k":2}"#), Some("1".into()));
    }

    #[test]
    fn missing_paths_are_none() {
        assert_eq!(find("/seq", r#"{"type":"subscribed"}"#).expect("valid"), None);
        assert_eq!(find("/seq/0", r#"{"seq":[]}"#).expect("valid"), None);
        assert_eq!(find("/seq", r#"[1,2]"#).expect("valid"), None);
        assert_eq!(find("/01", r#"[1,2]"#).expect("valid"), None);
        assert_eq!(find("/1", r#"[1,2]"#).expect("valid"), Some(Found::Number("2")));
        assert_eq!(find("/seq", r#""text""#).expect("valid"), None);
        assert_eq!(find("/a/b", r#"{"a":3}"#).expect("valid"), None);
    }

    #[test]
    fn invalid_json_is_an_error() {
        for doc in [
            "not json",
            r#"{"seq":1"#,
            r#"{"seq":1} trailing"#,
            r#"{"a":[1,}"#,
            "",
            "{\"seq\":\"\\x\"}",
            r#"{"seq":01}"#,
            r#"{"seq":1.}"#,
            r#"{"seq":-}"#,
            r#"{"seq":tru}"#,
            r#"{"seq":"\ud800"}"#,
            "{\"seq\":\"a\tb\"}",
            r#"{"seq" 1}"#,
            r#"{seq:1}"#,
        ] {
            assert!(find("/seq", doc).is_err(), "{doc:?}");
        }
        let err = Pointer::parse("/seq").expect("p").find(b"{\"a\":\"\xff\",\"seq\":1}").expect_err("invalid UTF-8");
        assert_eq!(err.offset, 6);
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(find("/0", &deep).is_err(), "nesting is bounded");
    }

    #[test]
    fn pointer_syntax_is_checked() {
        assert!(Pointer::parse("seq").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        assert!(Pointer::parse("/a~").is_err());
        assert_eq!(Pointer::parse("/a~1b").expect("p").to_string(), "/a~1b");
    }

    #[test]
    fn agrees_with_serde_json_value_pointer() {
        let docs =
            [r#"{"racer":17,"seq":9,"m":{"x":[1,"two",{"y":null}]},"s":"a\u0041"}"#, r#"[{"a":1},{"a":2.5},"z"]"#];
        let pointers = ["/racer", "/seq", "/m/x/1", "/m/x/2/y", "/m/x/3", "/s", "/0/a", "/1/a", "/2", "/nope"];
        for doc in docs {
            let value: serde_json::Value = serde_json::from_str(doc).expect("json");
            for p in pointers {
                let ours = find(p, doc).expect("valid");
                let theirs = value.pointer(p);
                match (ours, theirs) {
                    (None, None) => {}
                    (Some(Found::Str(a)), Some(serde_json::Value::String(b))) => assert_eq!(&a, b),
                    (Some(Found::Number(a)), Some(serde_json::Value::Number(b))) => assert_eq!(a, b.to_string()),
                    (Some(Found::Null), Some(serde_json::Value::Null)) => {}
                    (Some(Found::Composite(a)), Some(b)) => {
                        assert_eq!(serde_json::from_str::<serde_json::Value>(a).expect("json"), *b)
                    }
                    (a, b) => panic!("{p} in {doc}: {a:?} vs {b:?}"),
                }
            }
        }
    }

    mod agreement {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        const KEYS: [&str; 6] = ["a", "b", "a/b", "~x", "é", "q\"\n"];

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                // Eighths print and parse back exactly (serde_json's default float parsing does
                // not round-trip every f64).
                (-8_000_000i64..8_000_000).prop_map(|k| Value::from(k as f64 / 8.0)),
                "[a-z\\x00-\\x1f\"\\\\é😀]{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::vec((prop::sample::select(KEYS.to_vec()), inner), 0..4)
                        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
                ]
            })
        }

        fn pointer() -> impl Strategy<Value = String> {
            let token = prop_oneof![
                prop::sample::select(KEYS.to_vec()).prop_map(|k| k.replace('~', "~0").replace('/', "~1")),
                (0usize..3).prop_map(|i| i.to_string()),
            ];
            prop::collection::vec(token, 0..4).prop_map(|t| t.iter().map(|t| format!("/{t}")).collect())
        }

        fn same(found: Option<Found<'_>>, expected: Option<&Value>) -> bool {
            match (found, expected) {
                (None, None) => true,
                (Some(Found::Str(a)), Some(Value::String(b))) => a == b.as_str(),
                (Some(Found::Null), Some(Value::Null)) => true,
                (Some(Found::Bool(a)), Some(Value::Bool(b))) => a == *b,
                (Some(Found::Number(t) | Found::Composite(t)), Some(b)) => {
                    serde_json::from_str::<Value>(t).ok().as_ref() == Some(b)
                }
                _ => false,
            }
        }

        proptest! {
            #[test]
            fn finds_what_serde_json_finds(v in value(), p in pointer(), pretty in any::<bool>()) {
                let doc = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.expect("json");
                let ptr = Pointer::parse(&p).expect("pointer");
                let found = ptr.find(doc.as_bytes()).expect("valid JSON");
                prop_assert!(same(found.clone(), v.pointer(&p)), "{p} in {doc}: {found:?} vs {:?}", v.pointer(&p));
                prop_assert_eq!(ptr.find_early(doc.as_bytes()).expect("valid JSON"), found);
            }

            #[test]
            fn rejects_what_serde_json_rejects(
                v in value(),
                cut in any::<prop::sample::Index>(),
                byte in prop::sample::select(b"{}[]:,\"\\ 0-.eu1ntf".to_vec()),
                how in 0u8..3,
            ) {
                let mut doc = serde_json::to_vec(&v).expect("json");
                let at = cut.index(doc.len() + 1);
                match how {
                    0 => doc.truncate(at),
                    1 => doc.insert(at, byte),
                    _ => if at < doc.len() { doc.remove(at); },
                }
                let theirs = serde_json::from_slice::<Value>(&doc);
                let ours = Pointer::parse("/a").expect("pointer").find(&doc);
                let out_of_range = theirs.as_ref().err().is_some_and(|e| e.to_string().contains("out of range"));
                if !out_of_range {
                    prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?}: ours {:?}, serde_json {:?}", String::from_utf8_lossy(&doc), ours, theirs);
                }
            }
        }
    }
}
