//! DynamoDB numbers: arbitrary-precision decimals (up to 38 significant digits, magnitudes
//! 1E-130 to 9.99…E+125), compared numerically and added exactly.

use std::cmp::Ordering;
use std::fmt;

use crate::error::{DynamoError, Result};

/// Most significant digits a number may have.
pub const MAX_DIGITS: usize = 38;
const MAX_EXP: i32 = 126;
const MIN_EXP: i32 = -129;

/// A decimal number: `0.d₁d₂… × 10^exp`, negative when `neg`; zero has no digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Number {
    neg: bool,
    /// Significant digits (0–9), no leading or trailing zeros.
    digits: Vec<u8>,
    exp: i32,
}

impl Number {
    /// Zero.
    pub fn zero() -> Number {
        Number { neg: false, digits: Vec::new(), exp: 0 }
    }

    /// Parses a DynamoDB number string (`-1.5e3`, `007`, `.5`); checks precision and range.
    pub fn parse(s: &str) -> Result<Number> {
        let bad = || DynamoError::validation(format!("The parameter cannot be converted to a numeric value: {s}"));
        let b = s.as_bytes();
        let mut i = 0;
        let mut neg = false;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            neg = b[i] == b'-';
            i += 1;
        }
        let mut mantissa = Vec::new();
        let mut int_len: i64 = 0;
        let mut seen_point = false;
        let mut any = false;
        while i < b.len() {
            match b[i] {
                c @ b'0'..=b'9' => {
                    mantissa.push(c - b'0');
                    if !seen_point {
                        int_len += 1;
                    }
                    any = true;
                }
                b'.' if !seen_point => seen_point = true,
                _ => break,
            }
            i += 1;
        }
        if !any {
            return Err(bad());
        }
        let mut e: i64 = 0;
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            let rest = &s[i..];
            if rest.is_empty() || rest.len() > 12 {
                return Err(bad());
            }
            e = rest.parse::<i64>().map_err(|_| bad())?;
            i = b.len();
        }
        if i != b.len() {
            return Err(bad());
        }
        Number::from_parts(neg, mantissa, int_len + e)
    }

    /// Builds `0.mantissa × 10^exp` and normalizes it; checks precision and range.
    fn from_parts(neg: bool, mut mantissa: Vec<u8>, mut exp: i64) -> Result<Number> {
        let lead = mantissa.iter().take_while(|d| **d == 0).count();
        mantissa.drain(..lead);
        exp -= lead as i64;
        while mantissa.last() == Some(&0) {
            mantissa.pop();
        }
        if mantissa.is_empty() {
            return Ok(Number::zero());
        }
        if mantissa.len() > MAX_DIGITS {
            return Err(DynamoError::validation("Attempting to store more than 38 significant digits in a Number"));
        }
        if exp > MAX_EXP as i64 {
            return Err(DynamoError::validation(
                "Number overflow. Attempting to store a number with magnitude larger than supported range",
            ));
        }
        if exp < MIN_EXP as i64 {
            return Err(DynamoError::validation(
                "Number underflow. Attempting to store a number with magnitude smaller than supported range",
            ));
        }
        Ok(Number { neg, digits: mantissa, exp: exp as i32 })
    }

    /// Whether this is zero.
    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// `self + other`, exactly (an error if the result needs more than 38 digits).
    pub fn add(&self, other: &Number) -> Result<Number> {
        if self.is_zero() {
            return Ok(other.clone());
        }
        if other.is_zero() {
            return Ok(self.clone());
        }
        // Both as integers times 10^scale.
        let low = |n: &Number| n.exp as i64 - n.digits.len() as i64;
        let scale = low(self).min(low(other));
        let widen = |n: &Number| {
            let mut v = n.digits.clone();
            v.extend(std::iter::repeat_n(0u8, (low(n) - scale) as usize));
            v
        };
        let (a, b) = (widen(self), widen(other));
        let (neg, mag) = if self.neg == other.neg {
            (self.neg, add_mag(&a, &b))
        } else {
            match cmp_mag(&a, &b) {
                Ordering::Equal => return Ok(Number::zero()),
                Ordering::Greater => (self.neg, sub_mag(&a, &b)),
                Ordering::Less => (other.neg, sub_mag(&b, &a)),
            }
        };
        let exp = mag.len() as i64 + scale;
        Number::from_parts(neg, mag, exp)
    }

    /// `-self`.
    pub fn negate(&self) -> Number {
        if self.is_zero() {
            return self.clone();
        }
        Number { neg: !self.neg, ..self.clone() }
    }
}

fn strip(v: &[u8]) -> &[u8] {
    let lead = v.iter().take_while(|d| **d == 0).count();
    &v[lead..]
}

fn cmp_mag(a: &[u8], b: &[u8]) -> Ordering {
    let (a, b) = (strip(a), strip(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn add_mag(a: &[u8], b: &[u8]) -> Vec<u8> {
    let n = a.len().max(b.len());
    let mut out = vec![0u8; n + 1];
    let mut carry = 0u8;
    for i in 0..n {
        let da = if i < a.len() { a[a.len() - 1 - i] } else { 0 };
        let db = if i < b.len() { b[b.len() - 1 - i] } else { 0 };
        let s = da + db + carry;
        out[n - i] = s % 10;
        carry = s / 10;
    }
    out[0] = carry;
    out
}

/// `a - b` for `a > b` (magnitudes, most significant digit first).
fn sub_mag(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = a.to_vec();
    let mut borrow = 0i16;
    for i in 0..a.len() {
        let da = a[a.len() - 1 - i] as i16;
        let db = if i < b.len() { b[b.len() - 1 - i] as i16 } else { 0 };
        let mut d = da - db - borrow;
        borrow = 0;
        if d < 0 {
            d += 10;
            borrow = 1;
        }
        out[a.len() - 1 - i] = d as u8;
    }
    out
}

impl Ord for Number {
    fn cmp(&self, other: &Number) -> Ordering {
        let sign = |n: &Number| {
            if n.is_zero() {
                0
            } else if n.neg {
                -1
            } else {
                1
            }
        };
        let (sa, sb) = (sign(self), sign(other));
        if sa != sb || sa == 0 {
            return sa.cmp(&sb);
        }
        let mag = self.exp.cmp(&other.exp).then_with(|| self.digits.cmp(&other.digits));
        if sa < 0 { mag.reverse() } else { mag }
    }
}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Number) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Number {
    /// The canonical form DynamoDB answers: plain decimal, no exponent, no redundant zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0");
        }
        let mut s = String::with_capacity(self.digits.len() + 8);
        if self.neg {
            s.push('-');
        }
        let ds: String = self.digits.iter().map(|d| char::from(b'0' + d)).collect();
        let len = self.digits.len() as i32;
        if self.exp <= 0 {
            s.push_str("0.");
            s.extend(std::iter::repeat_n('0', (-self.exp) as usize));
            s.push_str(&ds);
        } else if self.exp >= len {
            s.push_str(&ds);
            s.extend(std::iter::repeat_n('0', (self.exp - len) as usize));
        } else {
            s.push_str(&ds[..self.exp as usize]);
            s.push('.');
            s.push_str(&ds[self.exp as usize..]);
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Number {
        Number::parse(s).unwrap()
    }

    #[test]
    fn canonical_forms() {
        for (input, out) in [
            ("0", "0"),
            ("-0", "0"),
            ("007", "7"),
            ("1.50", "1.5"),
            (".5", "0.5"),
            ("1e3", "1000"),
            ("-1.5E-3", "-0.0015"),
            ("123.456", "123.456"),
            ("99999999999999999999999999999999999999", "99999999999999999999999999999999999999"),
        ] {
            assert_eq!(n(input).to_string(), out, "{input}");
        }
        for bad in ["", "-", "1.2.3", "abc", "1e", "1e+", "0x10", " 1", "1 "] {
            assert!(Number::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Number::parse("123456789012345678901234567890123456789").is_err());
        assert!(Number::parse("1e126").is_err());
        assert!(Number::parse("1e-131").is_err());
        assert!(Number::parse("1e125").is_ok());
        assert!(Number::parse("1e-130").is_ok());
    }

    #[test]
    fn compares_numerically() {
        assert!(n("10") > n("9"));
        assert!(n("-10") < n("-9"));
        assert!(n("0.001") < n("0.01"));
        assert!(n("-1") < n("0"));
        assert_eq!(n("1.0").cmp(&n("1")), Ordering::Equal);
        assert!(n("10000000000000000000000000000000000001") > n("10000000000000000000000000000000000000"));
    }

    #[test]
    fn adds_exactly() {
        assert_eq!(n("1").add(&n("1")).unwrap().to_string(), "2");
        assert_eq!(n("0.1").add(&n("0.2")).unwrap().to_string(), "0.3");
        assert_eq!(n("5").add(&n("-7")).unwrap().to_string(), "-2");
        assert_eq!(n("-5").add(&n("5")).unwrap().to_string(), "0");
        assert_eq!(n("999").add(&n("1")).unwrap().to_string(), "1000");
        assert_eq!(n("1e20").add(&n("1")).unwrap().to_string(), "100000000000000000001");
        assert_eq!(n("1000").add(&n("-0.001")).unwrap().to_string(), "999.999");
        assert!(n("1e37").add(&n("1e-10")).is_err());
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_i128(a in -1_000_000_000_000i128..1_000_000_000_000, b in -1_000_000_000_000i128..1_000_000_000_000) {
            let (x, y) = (n(&a.to_string()), n(&b.to_string()));
            proptest::prop_assert_eq!(x.add(&y).unwrap().to_string(), (a + b).to_string());
            proptest::prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        }
    }
}
