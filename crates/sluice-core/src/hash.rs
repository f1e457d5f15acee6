//! Hash keys and hash-key ranges: how a partition key picks a shard.
//!
//! Kinesis routes a record by `MD5(UTF-8(partition key))` read as a big-endian unsigned 128-bit
//! integer (or by an explicit hash key), to the open shard whose inclusive range holds it.

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// The largest hash key, 2^128 − 1.
pub const MAX_HASH_KEY: u128 = u128::MAX;

/// The hash key of a partition key: MD5 of its UTF-8 bytes as a big-endian u128.
pub fn partition_key_hash(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    u128::from_be_bytes(digest.into())
}

/// Why an explicit hash key string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HashKeyError {
    /// Not `0|([1-9]\d{0,38})`.
    #[error("hash key must be a decimal integer without leading zeros")]
    Syntax,
    /// Above 2^128 − 1.
    #[error("hash key is greater than 2^128 - 1")]
    OutOfRange,
}

/// Parses an `ExplicitHashKey` / `StartingHashKey`: `0|([1-9]\d{0,38})`, at most 2^128 − 1.
pub fn parse_hash_key(s: &str) -> Result<u128, HashKeyError> {
    let bytes = s.as_bytes();
    let well_formed = !bytes.is_empty()
        && bytes.len() <= 39
        && bytes.iter().all(u8::is_ascii_digit)
        && (bytes[0] != b'0' || bytes.len() == 1);
    if !well_formed {
        return Err(HashKeyError::Syntax);
    }
    s.parse::<u128>().map_err(|_| HashKeyError::OutOfRange)
}

/// An inclusive range of hash keys owned by one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HashKeyRange {
    /// First hash key in the range.
    #[serde(with = "u128_string")]
    pub start: u128,
    /// Last hash key in the range (inclusive).
    #[serde(with = "u128_string")]
    pub end: u128,
}

impl HashKeyRange {
    /// The whole key space.
    pub const FULL: HashKeyRange = HashKeyRange { start: 0, end: MAX_HASH_KEY };

    /// Whether `key` falls inside the range.
    pub fn contains(&self, key: u128) -> bool {
        self.start <= key && key <= self.end
    }

    /// Splits at `new_start`, which must satisfy `start + 1 < new_start < end` (SplitShard's rule);
    /// returns `[start, new_start − 1]` and `[new_start, end]`.
    pub fn split_at(&self, new_start: u128) -> Option<(HashKeyRange, HashKeyRange)> {
        let valid = self.start.checked_add(1).is_some_and(|s1| s1 < new_start) && new_start < self.end;
        valid.then(|| {
            (HashKeyRange { start: self.start, end: new_start - 1 }, HashKeyRange { start: new_start, end: self.end })
        })
    }

    /// Joins two ranges if they are adjacent (in either order); MergeShards' rule.
    pub fn merge(&self, other: &HashKeyRange) -> Option<HashKeyRange> {
        if self.end.checked_add(1) == Some(other.start) {
            Some(HashKeyRange { start: self.start, end: other.end })
        } else if other.end.checked_add(1) == Some(self.start) {
            Some(HashKeyRange { start: other.start, end: self.end })
        } else {
            None
        }
    }

    /// `n` (≥ 1) equal ranges covering the key space: step = ⌊2^128 / n⌋, the last range ending at
    /// 2^128 − 1 (the layout real Kinesis and kinesalite give a new stream).
    pub fn uniform(n: u32) -> Vec<HashKeyRange> {
        if n <= 1 {
            return vec![HashKeyRange::FULL];
        }
        // ⌊2^128 / n⌋ without overflowing: ⌊(2^128 − 1) / n⌋, plus one if n divides 2^128 exactly.
        let step = MAX_HASH_KEY / n as u128 + u128::from((MAX_HASH_KEY % n as u128) == n as u128 - 1);
        (0..n)
            .map(|i| {
                let start = step * i as u128;
                let end = if i + 1 == n { MAX_HASH_KEY } else { step * (i as u128 + 1) - 1 };
                HashKeyRange { start, end }
            })
            .collect()
    }

    /// Number of keys in the range minus one (so the full space fits in a u128).
    pub fn width_minus_one(&self) -> u128 {
        self.end - self.start
    }
}

/// Serde helper: u128 as a decimal string (JSON numbers lose precision in many readers).
pub mod u128_string {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the value as a decimal string.
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Reads a decimal string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn md5_of_a_matches_reference() {
        assert_eq!(partition_key_hash("a"), 16955237001963240173058271559858726497);
    }

    #[test]
    fn two_shards_split_at_2_pow_127() {
        let r = HashKeyRange::uniform(2);
        assert_eq!(r[0], HashKeyRange { start: 0, end: (1u128 << 127) - 1 });
        assert_eq!(r[1], HashKeyRange { start: 1u128 << 127, end: MAX_HASH_KEY });
    }

    #[test]
    fn hash_key_syntax() {
        assert_eq!(parse_hash_key("0"), Ok(0));
        assert_eq!(parse_hash_key(&MAX_HASH_KEY.to_string()), Ok(MAX_HASH_KEY));
        assert_eq!(parse_hash_key("340282366920938463463374607431768211456"), Err(HashKeyError::OutOfRange));
        assert_eq!(parse_hash_key("01"), Err(HashKeyError::Syntax));
        assert_eq!(parse_hash_key(""), Err(HashKeyError::Syntax));
        assert_eq!(parse_hash_key("-1"), Err(HashKeyError::Syntax));
        assert_eq!(parse_hash_key("1000000000000000000000000000000000000000"), Err(HashKeyError::Syntax));
    }

    proptest! {
        #[test]
        fn uniform_ranges_tile_the_key_space(n in 1u32..2000) {
            let r = HashKeyRange::uniform(n);
            prop_assert_eq!(r.len(), n as usize);
            prop_assert_eq!(r[0].start, 0);
            prop_assert_eq!(r[r.len() - 1].end, MAX_HASH_KEY);
            for w in r.windows(2) {
                prop_assert_eq!(w[0].end + 1, w[1].start);
                prop_assert!(w[0].start <= w[0].end);
            }
        }

        #[test]
        fn split_then_merge_is_identity(start in any::<u128>(), len in 3u128..u128::MAX, at in any::<u128>()) {
            let end = start.saturating_add(len);
            let range = HashKeyRange { start, end };
            match range.split_at(at) {
                Some((a, b)) => {
                    prop_assert!(a.end + 1 == b.start && a.start == start && b.end == end);
                    prop_assert!(a.start < a.end || a.start + 1 < at);
                    prop_assert_eq!(a.merge(&b), Some(range));
                    prop_assert_eq!(b.merge(&a), Some(range));
                    prop_assert!(a.contains(at - 1) && b.contains(at) && !a.contains(at));
                }
                None => prop_assert!(at <= start.saturating_add(1) || at >= end),
            }
        }

        #[test]
        fn every_key_routes_to_exactly_one_uniform_shard(n in 1u32..64, key in any::<u128>()) {
            let r = HashKeyRange::uniform(n);
            prop_assert_eq!(r.iter().filter(|x| x.contains(key)).count(), 1);
        }
    }
}
