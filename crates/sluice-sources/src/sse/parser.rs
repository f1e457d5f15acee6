//! A streaming `text/event-stream` parser (the WHATWG HTML "event stream interpretation")
//! that never buffers an event over the limit: an event whose data grows past it is read and
//! discarded up to its blank line, and reported with its real size and its first bytes.

use bytes::{Bytes, BytesMut};

use crate::supervisor::admission::KEPT_PREFIX;

/// What the parser found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// A dispatched event with data. `id` is this event's own non-empty `id:` field.
    Event { data: Bytes, id: Option<String>, event: Option<String> },
    /// An event whose data is over the limit: its size and the first bytes of its data.
    Oversized { size: u64, prefix: Bytes, id: Option<String>, event: Option<String> },
    /// A `retry:` field (milliseconds).
    Retry(u64),
}

pub(crate) struct Parser {
    limit: usize,
    /// The line being read (once over `line_cap`, only its beginning).
    line: BytesMut,
    line_size: u64,
    /// The last line ended with `\r`: a `\n` right after belongs to it.
    after_cr: bool,
    data: BytesMut,
    data_size: u64,
    has_data: bool,
    id: Option<String>,
    event: Option<String>,
}

impl Parser {
    pub(crate) fn new(limit: usize) -> Parser {
        Parser {
            limit,
            line: BytesMut::new(),
            line_size: 0,
            after_cr: false,
            data: BytesMut::new(),
            data_size: 0,
            has_data: false,
            id: None,
            event: None,
        }
    }

    /// The longest line kept whole: a data line of `limit` bytes and its field name.
    fn line_cap(&self) -> usize {
        self.limit.saturating_add(16)
    }

    /// Adds a chunk of the body; what it completes goes to `out`.
    pub(crate) fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Item>) {
        while !chunk.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if chunk[0] == b'\n' {
                    chunk = &chunk[1..];
                    continue;
                }
            }
            match memchr::memchr2(b'\n', b'\r', chunk) {
                Some(i) => {
                    self.extend_line(&chunk[..i]);
                    self.after_cr = chunk[i] == b'\r';
                    chunk = &chunk[i + 1..];
                    self.end_line(out);
                }
                None => {
                    self.extend_line(chunk);
                    break;
                }
            }
        }
    }

    fn extend_line(&mut self, bytes: &[u8]) {
        self.line_size += bytes.len() as u64;
        let cap = if self.line_size > self.line_cap() as u64 { KEPT_PREFIX + 16 } else { self.line_cap() };
        if self.line.len() > cap {
            self.line.truncate(cap);
        }
        let room = cap.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn end_line(&mut self, out: &mut Vec<Item>) {
        let line = self.line.split();
        let size = std::mem::take(&mut self.line_size);
        if size == 0 {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value, value_size) = match memchr::memchr(b':', &line) {
            Some(i) => {
                let skip = if line.get(i + 1) == Some(&b' ') { i + 2 } else { i + 1 };
                (&line[..i], &line[skip.min(line.len())..], size.saturating_sub(skip as u64))
            }
            None => (&line[..], &line[line.len()..], 0),
        };
        let over = size > self.line_cap() as u64;
        match field {
            b"data" => {
                self.has_data = true;
                self.add_data(value, value_size);
                self.add_data(b"\n", 1);
            }
            _ if over => {
                tracing::debug!(bytes = size, "an over-long SSE line that is not `data` was skipped");
            }
            b"id" => {
                let id = String::from_utf8_lossy(value);
                if !id.contains('\0') {
                    self.id = Some(id.into_owned());
                }
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"retry" => {
                if !value.is_empty()
                    && value.iter().all(u8::is_ascii_digit)
                    && let Ok(ms) = std::str::from_utf8(value).unwrap_or("").parse()
                {
                    out.push(Item::Retry(ms));
                }
            }
            _ => {}
        }
    }

    /// Adds data bytes (`bytes` may be only the beginning of `size` bytes).
    fn add_data(&mut self, bytes: &[u8], size: u64) {
        self.data_size += size;
        let cap = if self.data_size > self.limit as u64 + 1 { KEPT_PREFIX } else { self.limit + 1 };
        if self.data.len() > cap {
            self.data.truncate(cap);
        }
        let room = cap.saturating_sub(self.data.len());
        self.data.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn dispatch(&mut self, out: &mut Vec<Item>) {
        let id = self.id.take().filter(|id| !id.is_empty());
        let event = self.event.take().filter(|e| !e.is_empty());
        let mut data = self.data.split();
        let size = std::mem::take(&mut self.data_size);
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        // The data without its last newline.
        let size = size.saturating_sub(1);
        if size > self.limit as u64 {
            data.truncate(KEPT_PREFIX.min(size as usize));
            out.push(Item::Oversized { size, prefix: data.freeze(), id, event });
        } else {
            data.truncate(size as usize);
            out.push(Item::Event { data: data.freeze(), id, event });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(limit: usize, chunks: &[&[u8]]) -> Vec<Item> {
        let mut p = Parser::new(limit);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out);
        }
        out
    }

    fn ev(data: &str, id: Option<&str>, event: Option<&str>) -> Item {
        Item::Event {
            data: Bytes::copy_from_slice(data.as_bytes()),
            id: id.map(str::to_owned),
            event: event.map(str::to_owned),
        }
    }

    #[test]
    fn events_fields_and_line_endings() {
        let text = b": hi\r\nid: 1\r\nevent: tick\r\ndata: a\r\ndata:b\r\n\r\nretry: 500\n\ndata: c\r\rdata\n\n";
        let want = vec![ev("a\nb", Some("1"), Some("tick")), Item::Retry(500), ev("c", None, None), ev("", None, None)];
        assert_eq!(parse(100, &[text]), want);
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(parse(100, &bytes), want);
        // No data, no event; an unfinished event at the end is not dispatched.
        assert_eq!(parse(100, &[b"id: 3\n\nevent: x\n\ndata: y"]), vec![]);
    }

    #[test]
    fn an_event_over_the_limit_is_skipped_with_its_size_and_beginning() {
        let big = "x".repeat(3 * KEPT_PREFIX);
        let text = format!("id: 7\ndata: {{\"seq\":7,\"pad\":\"{big}\"}}\n\ndata: small\n\n");
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(1000).collect();
        let out = parse(1000, &chunks);
        assert_eq!(out.len(), 2);
        let Item::Oversized { size, prefix, id, .. } = &out[0] else { panic!("{out:?}") };
        assert_eq!(*size, (big.len() + 18) as u64);
        assert_eq!(prefix.len(), KEPT_PREFIX);
        assert!(prefix.starts_with(b"{\"seq\":7,"));
        assert_eq!(id.as_deref(), Some("7"));
        assert_eq!(out[1], ev("small", None, None));
        // Many lines, each under the limit, adding up to more than it.
        let text = "data: 0123456789\n".repeat(20) + "\n";
        let out = parse(100, &[text.as_bytes()]);
        assert!(matches!(&out[0], Item::Oversized { size: 219, .. }), "{out:?}");
        // Exactly at the limit is fine.
        assert_eq!(parse(3, &[b"data: abc\n\n"]), vec![ev("abc", None, None)]);
    }
}
