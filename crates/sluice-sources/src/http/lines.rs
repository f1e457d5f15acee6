//! Splits a byte stream into lines without copying lines that lie within one chunk. A line
//! longer than the limit is not buffered: its first bytes are kept for the dead-letter file and
//! the rest is skipped up to the next newline, so the stream recovers by itself.

use bytes::{Bytes, BytesMut};

/// How much of an over-long line is kept for the dead-letter file.
const KEPT_PREFIX: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// One line without its `\n` / `\r\n`.
    Data(Bytes),
    /// A line of `size` bytes over the limit; `prefix` is its beginning.
    Oversized { size: usize, prefix: Bytes },
}

pub(crate) struct LineSplitter {
    limit: usize,
    partial: BytesMut,
    /// While skipping an over-long line: its size so far and its kept beginning.
    skipping: Option<(usize, Bytes)>,
}

impl LineSplitter {
    pub(crate) fn new(limit: usize) -> LineSplitter {
        LineSplitter { limit, partial: BytesMut::new(), skipping: None }
    }

    /// Adds a chunk; complete lines are appended to `out` (empty lines are skipped).
    pub(crate) fn push(&mut self, chunk: Bytes, out: &mut Vec<Line>) {
        let mut start = 0;
        for newline in memchr::memchr_iter(b'\n', &chunk) {
            let piece = chunk.slice(start..newline);
            start = newline + 1;
            if let Some((size, prefix)) = self.skipping.take() {
                out.push(Line::Oversized { size: size + piece.len(), prefix });
            } else if self.partial.is_empty() {
                emit(piece, out);
            } else if self.partial.len() + piece.len() > self.limit {
                let size = self.partial.len() + piece.len();
                self.keep(&piece);
                let prefix = self.take_prefix();
                out.push(Line::Oversized { size, prefix });
            } else {
                self.partial.extend_from_slice(&piece);
                let line = self.partial.split().freeze();
                emit(line, out);
            }
        }
        let rest = &chunk[start..];
        if rest.is_empty() {
            return;
        }
        if let Some((size, _)) = self.skipping.as_mut() {
            *size += rest.len();
        } else if self.partial.len() + rest.len() > self.limit {
            let size = self.partial.len() + rest.len();
            self.keep(rest);
            let prefix = self.take_prefix();
            self.skipping = Some((size, prefix));
        } else {
            self.partial.extend_from_slice(rest);
        }
    }

    /// The end of the stream: a last line without a newline is still a line.
    pub(crate) fn finish(&mut self, out: &mut Vec<Line>) {
        if let Some((size, prefix)) = self.skipping.take() {
            out.push(Line::Oversized { size, prefix });
        } else if !self.partial.is_empty() {
            let line = self.partial.split().freeze();
            emit(line, out);
        }
    }

    /// Adds to the partial line only what fits in the kept prefix.
    fn keep(&mut self, bytes: &[u8]) {
        let room = KEPT_PREFIX.saturating_sub(self.partial.len());
        self.partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn take_prefix(&mut self) -> Bytes {
        self.partial.truncate(KEPT_PREFIX);
        let prefix = self.partial.split().freeze();
        self.partial = BytesMut::new();
        prefix
    }
}

fn emit(mut line: Bytes, out: &mut Vec<Line>) {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    if !line.is_empty() {
        out.push(Line::Data(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(limit: usize, chunks: &[&[u8]]) -> Vec<Line> {
        let mut s = LineSplitter::new(limit);
        let mut out = Vec::new();
        for c in chunks {
            s.push(Bytes::copy_from_slice(c), &mut out);
        }
        s.finish(&mut out);
        out
    }

    fn data(text: &str) -> Line {
        Line::Data(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn lines_across_chunks() {
        assert_eq!(split(100, &[b"a\nb", b"c\r\n\nd", b"\n", b"e"]), vec![data("a"), data("bc"), data("d"), data("e")]);
        assert_eq!(split(100, &[b"\n\r\n"]), vec![]);
    }

    #[test]
    fn long_lines_are_skipped_and_reported() {
        let out = split(4, &[b"ok\n0123", b"456789\nnext\n"]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], data("ok"));
        assert_eq!(out[1], Line::Oversized { size: 10, prefix: Bytes::from_static(b"0123456789") });
        assert_eq!(out[2], data("next"));
        // Within one chunk a long line is passed on whole (the caller applies its own limit).
        assert_eq!(split(4, &[b"0123456789\nx\n"]), vec![data("0123456789"), data("x")]);
        // A long line split across chunks and ending the stream.
        let out = split(4, &[b"01", b"2345", b"67"]);
        assert_eq!(out, vec![Line::Oversized { size: 8, prefix: Bytes::from_static(b"012345") }]);
    }
}
