//! Shard identifiers: `shardId-` followed by a 12-digit zero-padded index.

use std::fmt;

/// A shard's index within its stream. Indices only grow; children take the next free ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

impl ShardId {
    /// Parses a shard id leniently, as Kinesis does: `shardId-000000000007`, `shardId-7` and `7`
    /// all name shard 7 (the text after the first `-` must be an integer in 0..2^31).
    pub fn parse(s: &str) -> Option<ShardId> {
        let digits = match s.split_once('-') {
            Some((_, rest)) => rest,
            None => s,
        };
        if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        (n < (1 << 31)).then_some(ShardId(n as u32))
    }
}

impl ShardId {
    /// Appends `shardId-` and the 12-digit index to `out` (the hot paths' formatter).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.text());
    }

    /// `shardId-` and 12 digits (a u32 never needs more), without the formatting machinery.
    fn text(&self) -> [u8; 20] {
        let mut text = *b"shardId-000000000000";
        let mut v = self.0;
        for slot in text[8..].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        text
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text();
        f.pad(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(ShardId(7).to_string(), "shardId-000000000007");
        let mut v = Vec::new();
        ShardId(1234567).write_to(&mut v);
        assert_eq!(v, b"shardId-000001234567");
        assert_eq!(ShardId::parse("shardId-000000000007"), Some(ShardId(7)));
        assert_eq!(ShardId::parse("shardId-7"), Some(ShardId(7)));
        assert_eq!(ShardId::parse("7"), Some(ShardId(7)));
        assert_eq!(ShardId::parse("shardId-"), None);
        assert_eq!(ShardId::parse("shardId-x"), None);
        assert_eq!(ShardId::parse("shardId-2147483648"), None);
    }
}
