//! Sequence numbers: 56-digit decimal strings, as real Kinesis issues.
//!
//! A sequence number is a 192-bit integer printed in decimal. Bit 185 is always set and nothing
//! above it, so every number has exactly 56 digits and numbers compare the same as strings and
//! as integers. Below that bit, most significant first:
//!
//! | bits | field |
//! |------|-------|
//! | 32   | stream tag (one incarnation of a stream name) |
//! | 32   | shard index |
//! | 64   | ordinal of the record within its shard (1, 2, 3, …; 0 = the shard's start) |
//! | 42   | arrival time, epoch ms |
//! | 15   | check bits over the fields above |
//!
//! So within a shard, numbers strictly increase with the ordinal; across a stream they are unique
//! (the shard index differs); and a number can be checked against the stream and shard it is
//! used with. Clients must treat them as opaque, and this layout may change between releases.

use std::fmt;

/// The ordinal that the ending sequence number of a closed shard carries: above every record.
pub const END_ORDINAL: u64 = i64::MAX as u64;

/// The fields a sequence number carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SequenceNumber {
    /// Stream incarnation tag.
    pub stream_tag: u32,
    /// Shard index.
    pub shard: u32,
    /// Position of the record in its shard (0 = the shard's start).
    pub ordinal: u64,
    /// Arrival time, epoch milliseconds (only the low 42 bits are kept).
    pub arrival_ms: u64,
}

const ARRIVAL_BITS: u32 = 42;
const CHECK_BITS: u32 = 15;
const ARRIVAL_MASK: u64 = (1 << ARRIVAL_BITS) - 1;

/// Why a sequence number string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceNumberError {
    /// Not a decimal of the right size.
    #[error("not a sequence number issued by this server")]
    Malformed,
    /// The check bits do not match.
    #[error("sequence number checksum mismatch")]
    BadCheck,
}

/// A 192-bit unsigned integer as three u64 limbs, least significant first.
type U192 = [u64; 3];

fn check_bits(tag: u32, shard: u32, ordinal: u64, arrival: u64) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(&tag.to_be_bytes());
    h.update(&shard.to_be_bytes());
    h.update(&ordinal.to_be_bytes());
    h.update(&arrival.to_be_bytes());
    u64::from(h.finalize()) & ((1 << CHECK_BITS) - 1)
}

impl SequenceNumber {
    fn to_u192(self) -> U192 {
        let arrival = self.arrival_ms & ARRIVAL_MASK;
        let check = check_bits(self.stream_tag, self.shard, self.ordinal, arrival);
        // low 57 bits: arrival(42) | check(15); then ordinal(64) | shard(32) | tag(32) | marker.
        let low57 = (arrival << CHECK_BITS) | check;
        let l0 = low57 | (self.ordinal << 57);
        let l1 = (self.ordinal >> 7) | (u64::from(self.shard) << 57);
        let l2 = (u64::from(self.shard) >> 7) | (u64::from(self.stream_tag) << 25) | (1u64 << 57);
        [l0, l1, l2]
    }

    fn from_u192(v: U192) -> Result<SequenceNumber, SequenceNumberError> {
        if v[2] >> 57 != 1 {
            return Err(SequenceNumberError::Malformed);
        }
        let check = v[0] & ((1 << CHECK_BITS) - 1);
        let arrival = (v[0] >> CHECK_BITS) & ARRIVAL_MASK;
        let ordinal = (v[0] >> 57) | (v[1] << 7);
        let shard = ((v[1] >> 57) | ((v[2] & ((1 << 25) - 1)) << 7)) as u32;
        let stream_tag = ((v[2] >> 25) & 0xffff_ffff) as u32;
        if check != check_bits(stream_tag, shard, ordinal, arrival) {
            return Err(SequenceNumberError::BadCheck);
        }
        Ok(SequenceNumber { stream_tag, shard, ordinal, arrival_ms: arrival })
    }

    /// Parses a decimal sequence number string.
    pub fn parse(s: &str) -> Result<SequenceNumber, SequenceNumberError> {
        if s.len() != 56 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SequenceNumberError::Malformed);
        }
        let mut v: U192 = [0; 3];
        for chunk in s.as_bytes().chunks(19) {
            let mut part = 0u64;
            for &b in chunk {
                part = part * 10 + u64::from(b - b'0');
            }
            let mul = 10u64.pow(chunk.len() as u32);
            // v = v * mul + part
            let mut carry = u128::from(part);
            for limb in v.iter_mut() {
                let x = u128::from(*limb) * u128::from(mul) + carry;
                *limb = x as u64;
                carry = x >> 64;
            }
            if carry != 0 {
                return Err(SequenceNumberError::Malformed);
            }
        }
        SequenceNumber::from_u192(v)
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = self.to_u192();
        // Repeated division by 10^19 yields base-10^19 digits, least significant first.
        const BASE: u64 = 10_000_000_000_000_000_000;
        let mut parts = [0u64; 3];
        for part in parts.iter_mut() {
            let mut rem = 0u128;
            for limb in v.iter_mut().rev() {
                let cur = (rem << 64) | u128::from(*limb);
                *limb = (cur / u128::from(BASE)) as u64;
                rem = cur % u128::from(BASE);
            }
            *part = rem as u64;
        }
        // 56 digits = 18 + 19 + 19.
        write!(f, "{:018}{:019}{:019}", parts[2], parts[1], parts[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_value_has_56_digits() {
        let s = SequenceNumber { stream_tag: 0, shard: 0, ordinal: 0, arrival_ms: 0 }.to_string();
        assert_eq!(s.len(), 56);
        // 2^185 plus the check bits of all-zero fields.
        assert_eq!(&s[..50], &"49039857307708443467467104868809893875799651909875269632"[..50]);
        let max = SequenceNumber { stream_tag: u32::MAX, shard: u32::MAX, ordinal: u64::MAX, arrival_ms: ARRIVAL_MASK };
        assert_eq!(max.to_string().len(), 56);
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(SequenceNumber::parse("123"), Err(SequenceNumberError::Malformed));
        let good = SequenceNumber { stream_tag: 9, shard: 3, ordinal: 77, arrival_ms: 1_700_000_000_000 }.to_string();
        let mut bad = good.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'9' { b'8' } else { bad[last] + 1 };
        assert!(SequenceNumber::parse(std::str::from_utf8(&bad).unwrap_or_default()).is_err());
        let too_big = "9".repeat(56);
        assert!(SequenceNumber::parse(&too_big).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(tag in any::<u32>(), shard in any::<u32>(), ordinal in any::<u64>(), arrival in 0u64..(1 << 42)) {
            let n = SequenceNumber { stream_tag: tag, shard, ordinal, arrival_ms: arrival };
            let s = n.to_string();
            prop_assert_eq!(s.len(), 56);
            prop_assert_eq!(SequenceNumber::parse(&s), Ok(n));
        }

        #[test]
        fn order_follows_ordinal_within_a_shard(tag in any::<u32>(), shard in any::<u32>(), a in any::<u64>(), b in any::<u64>(), ta in 0u64..(1 << 42), tb in 0u64..(1 << 42)) {
            prop_assume!(a != b);
            let x = SequenceNumber { stream_tag: tag, shard, ordinal: a, arrival_ms: ta }.to_string();
            let y = SequenceNumber { stream_tag: tag, shard, ordinal: b, arrival_ms: tb }.to_string();
            prop_assert_eq!(a < b, x < y);
        }
    }
}
