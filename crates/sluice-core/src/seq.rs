//! Sequence numbers: 56-digit decimal strings, as real Kinesis issues.
//!
//! A sequence number is built from fixed-width decimal fields, so that formatting and parsing
//! are cheap and numbers compare the same as strings and as integers:
//!
//! | digits | field |
//! |--------|-------|
//! | 2      | `49` (real numbers start the same way) |
//! | 10     | stream tag (one incarnation of a stream name) |
//! | 10     | shard index |
//! | 20     | ordinal of the record within its shard (1, 2, 3, …; 0 = the shard's start) |
//! | 13     | arrival time, epoch ms |
//! | 1      | Luhn check digit over the 55 digits before it |
//!
//! Within a shard, numbers strictly increase with the ordinal (tag and shard are fixed and come
//! first); across a stream they are unique (the shard differs); and a number can be checked
//! against the stream and shard it is used with. Clients must treat them as opaque, and this
//! layout may change between releases.

use std::fmt;

/// The ordinal that the ending sequence number of a closed shard carries: above every record.
pub const END_ORDINAL: u64 = i64::MAX as u64;

/// Largest arrival time that fits the 13-digit field (year 2286).
const MAX_ARRIVAL_MS: u64 = 9_999_999_999_999;

/// The fields a sequence number carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SequenceNumber {
    /// Stream incarnation tag.
    pub stream_tag: u32,
    /// Shard index.
    pub shard: u32,
    /// Position of the record in its shard (0 = the shard's start).
    pub ordinal: u64,
    /// Arrival time, epoch milliseconds (clamped to 13 digits).
    pub arrival_ms: u64,
}

/// Why a sequence number string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceNumberError {
    /// Not a decimal of the right shape.
    #[error("not a sequence number issued by this server")]
    Malformed,
    /// The check digit does not match.
    #[error("sequence number check digit mismatch")]
    BadCheck,
}

fn put_digits(out: &mut [u8], mut v: u64) {
    // Two digits per division: this runs for every record of every GetRecords answer.
    const PAIRS: &[u8; 200] = b"00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";
    let mut i = out.len();
    while i >= 2 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        out[i - 2] = PAIRS[pair];
        out[i - 1] = PAIRS[pair + 1];
        i -= 2;
    }
    if i == 1 {
        out[0] = b'0' + (v % 10) as u8;
    }
}

fn luhn(digits: &[u8]) -> u8 {
    // Doubling every second digit from the right catches every single-digit change and most
    // swaps of neighbours. DOUBLED[d] is 2d with its digits summed.
    const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let v = usize::from(d - b'0');
        sum += if i % 2 == 0 { DOUBLED[v] } else { v as u32 };
    }
    b'0' + ((10 - sum % 10) % 10) as u8
}

fn field(s: &[u8]) -> u64 {
    s.iter().fold(0u64, |acc, d| acc.wrapping_mul(10).wrapping_add(u64::from(d - b'0')))
}

impl SequenceNumber {
    /// The 56 ASCII digits.
    pub fn to_digits(&self) -> [u8; 56] {
        let mut b = [b'0'; 56];
        b[0] = b'4';
        b[1] = b'9';
        put_digits(&mut b[2..12], u64::from(self.stream_tag));
        put_digits(&mut b[12..22], u64::from(self.shard));
        put_digits(&mut b[22..42], self.ordinal);
        put_digits(&mut b[42..55], self.arrival_ms.min(MAX_ARRIVAL_MS));
        b[55] = luhn(&b[..55]);
        b
    }

    /// Appends the decimal form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_digits());
    }

    /// Parses a decimal sequence number string.
    pub fn parse(s: &str) -> Result<SequenceNumber, SequenceNumberError> {
        let b = s.as_bytes();
        if b.len() != 56 || !b.iter().all(u8::is_ascii_digit) || &b[..2] != b"49" {
            return Err(SequenceNumberError::Malformed);
        }
        let (tag, shard, ordinal) = (field(&b[2..12]), field(&b[12..22]), &b[22..42]);
        if tag > u64::from(u32::MAX) || shard > u64::from(u32::MAX) || ordinal > b"18446744073709551615".as_slice() {
            return Err(SequenceNumberError::Malformed);
        }
        if luhn(&b[..55]) != b[55] {
            return Err(SequenceNumberError::BadCheck);
        }
        Ok(SequenceNumber {
            stream_tag: tag as u32,
            shard: shard as u32,
            ordinal: field(ordinal),
            arrival_ms: field(&b[42..55]),
        })
    }
}

/// Formats many sequence numbers of one shard quickly: the stream and shard digits (and their
/// share of the check digit) are computed once, and the arrival-time digits are reused while
/// consecutive records share an arrival millisecond. Output is identical to
/// [`SequenceNumber::to_digits`].
pub struct SequenceWriter {
    digits: [u8; 56],
    prefix_sum: u32,
    arrival: Option<(u64, u32)>,
}

/// Luhn contribution of `digits` placed at `start` within the 55 checked digits.
fn luhn_part(digits: &[u8], start: usize) -> u32 {
    const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
    let mut sum = 0;
    for (k, d) in digits.iter().enumerate() {
        let v = usize::from(d - b'0');
        // Position from the right among 55 digits: 54 - index; even positions are doubled.
        sum += if (54 - (start + k)).is_multiple_of(2) { DOUBLED[v] } else { v as u32 };
    }
    sum
}

impl SequenceWriter {
    /// A writer for one shard of one stream incarnation.
    pub fn new(stream_tag: u32, shard: u32) -> SequenceWriter {
        let mut digits = [b'0'; 56];
        digits[0] = b'4';
        digits[1] = b'9';
        put_digits(&mut digits[2..12], u64::from(stream_tag));
        put_digits(&mut digits[12..22], u64::from(shard));
        let prefix_sum = luhn_part(&digits[..22], 0);
        SequenceWriter { digits, prefix_sum, arrival: None }
    }

    /// Appends the sequence number of the record at `ordinal`, arrived at `arrival_ms`.
    pub fn write(&mut self, ordinal: u64, arrival_ms: u64, out: &mut Vec<u8>) {
        let arrival_ms = arrival_ms.min(MAX_ARRIVAL_MS);
        let arrival_sum = match self.arrival {
            Some((ms, sum)) if ms == arrival_ms => sum,
            _ => {
                put_digits(&mut self.digits[42..55], arrival_ms);
                let sum = luhn_part(&self.digits[42..55], 42);
                self.arrival = Some((arrival_ms, sum));
                sum
            }
        };
        put_digits(&mut self.digits[22..42], ordinal);
        let sum = self.prefix_sum + arrival_sum + luhn_part(&self.digits[22..42], 22);
        self.digits[55] = b'0' + ((10 - sum % 10) % 10) as u8;
        out.extend_from_slice(&self.digits);
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.to_digits();
        // The digits are ASCII by construction.
        f.write_str(std::str::from_utf8(&d).map_err(|_| fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shape() {
        let s = SequenceNumber { stream_tag: 7, shard: 3, ordinal: 42, arrival_ms: 1_700_000_000_000 }.to_string();
        assert_eq!(s.len(), 56);
        assert!(s.starts_with(&format!("49{:010}{:010}{:020}{:013}", 7, 3, 42, 1_700_000_000_000u64)));
        let max = SequenceNumber { stream_tag: u32::MAX, shard: u32::MAX, ordinal: u64::MAX, arrival_ms: u64::MAX };
        assert_eq!(SequenceNumber::parse(&max.to_string()).map(|m| m.ordinal), Ok(u64::MAX));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(SequenceNumber::parse("123"), Err(SequenceNumberError::Malformed));
        assert_eq!(SequenceNumber::parse(&"9".repeat(56)), Err(SequenceNumberError::Malformed));
        assert!(SequenceNumber::parse(&format!("49{}", "9".repeat(54))).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(tag in any::<u32>(), shard in any::<u32>(), ordinal in any::<u64>(), arrival in 0u64..=MAX_ARRIVAL_MS) {
            let n = SequenceNumber { stream_tag: tag, shard, ordinal, arrival_ms: arrival };
            let s = n.to_string();
            prop_assert_eq!(s.len(), 56);
            prop_assert_eq!(SequenceNumber::parse(&s), Ok(n));
        }

        #[test]
        fn any_single_digit_change_is_detected(ordinal in any::<u64>(), pos in 2usize..56, delta in 1u8..10) {
            let s = SequenceNumber { stream_tag: 9, shard: 2, ordinal, arrival_ms: 1_700_000_000_000 }.to_string().into_bytes();
            let mut t = s.clone();
            t[pos] = b'0' + (t[pos] - b'0' + delta) % 10;
            let t = String::from_utf8(t).unwrap_or_default();
            prop_assert!(SequenceNumber::parse(&t).is_err() || t.as_bytes() == s.as_slice());
        }

        #[test]
        fn writer_matches_to_digits(tag in any::<u32>(), shard in any::<u32>(), recs in proptest::collection::vec((any::<u64>(), 0u64..3), 1..20)) {
            let mut w = SequenceWriter::new(tag, shard);
            let mut arrival = 1_700_000_000_000u64;
            for (ordinal, step) in recs {
                arrival += step;
                let mut out = Vec::new();
                w.write(ordinal, arrival, &mut out);
                let n = SequenceNumber { stream_tag: tag, shard, ordinal, arrival_ms: arrival };
                let want = n.to_digits();
                prop_assert_eq!(out.as_slice(), want.as_slice());
            }
        }

        #[test]
        fn order_follows_ordinal_within_a_shard(tag in any::<u32>(), shard in any::<u32>(), a in any::<u64>(), b in any::<u64>(), ta in 0u64..=MAX_ARRIVAL_MS, tb in 0u64..=MAX_ARRIVAL_MS) {
            prop_assume!(a != b);
            let x = SequenceNumber { stream_tag: tag, shard, ordinal: a, arrival_ms: ta }.to_string();
            let y = SequenceNumber { stream_tag: tag, shard, ordinal: b, arrival_ms: tb }.to_string();
            prop_assert_eq!(a < b, x < y);
        }
    }
}
