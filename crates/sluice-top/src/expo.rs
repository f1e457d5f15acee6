//! A lenient reader of the Prometheus text exposition format (version 0.0.4).
//!
//! Only what `sluice top` needs: sample lines with their labels and values. Comments, `# HELP`
//! and `# TYPE` lines are skipped; histogram and summary series (`_bucket`, `_sum`, `_count`)
//! come out as ordinary samples. A line that cannot be read is skipped and counted, so one odd
//! line never hides the rest of the page.

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name, with any `_bucket`/`_sum`/`_count` suffix kept.
    pub name: String,
    /// Labels in the order written; values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value; `NaN` and `±Inf` are kept as such.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The samples of one page, and how many non-comment lines could not be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// Samples in page order.
    pub samples: Vec<Sample>,
    /// Lines skipped because they were malformed.
    pub skipped: usize,
}

/// Parses a whole exposition page.
pub fn parse(text: &str) -> Page {
    let mut page = Page::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some(sample) => page.samples.push(sample),
            None => page.skipped += 1,
        }
    }
    page
}

/// Parses one sample line (already trimmed, not a comment).
pub fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    // The value must be separated from the name/labels; an optional timestamp may follow.
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample { name: name.to_owned(), labels, value })
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Reads `k="v",…}` and returns the labels and the text after the closing brace.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let key_end = text.find(|c: char| !is_name_char(c)).unwrap_or(text.len());
        let key = &text[..key_end];
        if key.is_empty() {
            return None;
        }
        text = text[key_end..].trim_start().strip_prefix('=')?.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let close = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        text = text[close + 1..].trim_start();
        if let Some(after) = text.strip_prefix(',') {
            text = after;
        } else if !text.starts_with('}') {
            return None;
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        // Rust's float parser would also take words like "infinity"; the format has none.
        _ if text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')) => {
            text.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Sample {
        parse_line(line).unwrap_or_else(|| panic!("could not parse {line:?}"))
    }

    #[test]
    fn plain_and_labelled_samples() {
        let s = one("sluice_open_iterators 3");
        assert_eq!((s.name.as_str(), s.labels.len(), s.value), ("sluice_open_iterators", 0, 3.0));
        let s = one(r#"sluice_requests_total{operation="PutRecords",outcome="ok"} 12"#);
        assert_eq!(s.label("operation"), Some("PutRecords"));
        assert_eq!(s.label("outcome"), Some("ok"));
        assert_eq!(s.label("missing"), None);
        assert_eq!(s.value, 12.0);
        let s = one(r#"x{a="1",} 1.5e3 1712345678000"#);
        assert_eq!((s.label("a"), s.value), (Some("1"), 1500.0));
        let s = one("x{} -2");
        assert_eq!((s.labels.len(), s.value), (0, -2.0));
        let s = one(r#"x{ a = "1" , b="2" }	7"#);
        assert_eq!((s.label("a"), s.label("b"), s.value), (Some("1"), Some("2"), 7.0));
    }

    #[test]
    fn escaped_label_values() {
        let s = one(r#"m{path="C:\\dir",msg="say \"hi\"\nbye",brace="}{,="} 1"#);
        assert_eq!(s.label("path"), Some(r"C:\dir"));
        assert_eq!(s.label("msg"), Some("say \"hi\"\nbye"));
        assert_eq!(s.label("brace"), Some("}{,="));
    }

    #[test]
    fn special_values() {
        assert!(one("a NaN").value.is_nan());
        assert_eq!(one("a +Inf").value, f64::INFINITY);
        assert_eq!(one("a -Inf").value, f64::NEG_INFINITY);
        assert_eq!(one(r#"h_bucket{le="+Inf"} 4"#).label("le"), Some("+Inf"));
    }

    #[test]
    fn malformed_lines_are_skipped_and_counted() {
        for bad in [
            "name",
            "name{a=\"1\"}",
            "name{a=\"1\"} one",
            "name{a=\"1} 2",
            "name{a=1} 2",
            "name{=\"1\"} 2",
            "name 1 2 3",
            "name 1 notatime",
            "name infinity",
            "9name 1",
            "{a=\"1\"} 2",
            "name{a=\"1\"}2",
        ] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
        let page = parse("# HELP a The a.\n# TYPE a counter\na 1\n\ngarbage here\n  b{x=\"y\"} 2  \n");
        assert_eq!(page.skipped, 1);
        assert_eq!(page.samples.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn histogram_lines_are_samples() {
        let page = parse(concat!(
            "# TYPE sluice_request_duration_seconds histogram\n",
            "sluice_request_duration_seconds_bucket{operation=\"PutRecords\",le=\"0.005\"} 2\n",
            "sluice_request_duration_seconds_bucket{operation=\"PutRecords\",le=\"+Inf\"} 3\n",
            "sluice_request_duration_seconds_sum{operation=\"PutRecords\"} 0.012\n",
            "sluice_request_duration_seconds_count{operation=\"PutRecords\"} 3\n",
        ));
        assert_eq!(page.skipped, 0);
        assert_eq!(page.samples.len(), 4);
        assert_eq!(page.samples[3].name, "sluice_request_duration_seconds_count");
        assert_eq!(page.samples[2].value, 0.012);
    }
}
