//! Shard iterators: opaque, tamper-evident tokens that expire.
//!
//! A token is base64 of `00 00 00 00 00 00 00 01` (so it begins `AAAAAAAAAAE`, as real ones
//! do), a version byte, the payload, and the first 16 bytes of an HMAC-SHA256 over everything
//! before it, keyed with the server's secret. Tokens survive restarts (the secret is persisted)
//! and carry no server-side state, so any number can be outstanding.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long an iterator is valid: 5 minutes.
pub const ITERATOR_TTL_MS: u64 = 300_000;

const PREFIX: [u8; 8] = [0, 0, 0, 0, 0, 0, 0, 1];
const VERSION: u8 = 1;
const MAC_LEN: usize = 16;

/// What an iterator points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIterator {
    /// Stream name.
    pub stream: String,
    /// Stream incarnation tag.
    pub stream_tag: u32,
    /// Shard index.
    pub shard: u32,
    /// Ordinal of the next record to return.
    pub position: u64,
    /// When the token was issued, epoch ms.
    pub issued_ms: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IteratorError {
    /// Not a token this server issued, or altered.
    #[error("invalid shard iterator")]
    Invalid,
    /// Older than five minutes.
    #[error("iterator expired")]
    Expired,
}

fn mac(secret: &[u8], body: &[u8]) -> [u8; MAC_LEN] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(body);
    let full = m.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

impl ShardIterator {
    /// Encodes and signs the token.
    pub fn encode(&self, secret: &[u8]) -> String {
        let name = self.stream.as_bytes();
        let mut body = Vec::with_capacity(PREFIX.len() + 26 + name.len() + MAC_LEN);
        body.extend_from_slice(&PREFIX);
        body.push(VERSION);
        body.extend_from_slice(&self.stream_tag.to_be_bytes());
        body.extend_from_slice(&self.shard.to_be_bytes());
        body.extend_from_slice(&self.position.to_be_bytes());
        body.extend_from_slice(&self.issued_ms.to_be_bytes());
        body.push(name.len().min(255) as u8);
        body.extend_from_slice(&name[..name.len().min(255)]);
        let tag = mac(secret, &body);
        body.extend_from_slice(&tag);
        STANDARD.encode(body)
    }

    /// Decodes and verifies a token; `now_ms` decides expiry.
    pub fn decode(token: &str, secret: &[u8], now_ms: u64) -> Result<ShardIterator, IteratorError> {
        let raw = STANDARD.decode(token).map_err(|_| IteratorError::Invalid)?;
        let fixed = PREFIX.len() + 1 + 4 + 4 + 8 + 8 + 1;
        if raw.len() < fixed + MAC_LEN || raw[..PREFIX.len()] != PREFIX || raw[PREFIX.len()] != VERSION {
            return Err(IteratorError::Invalid);
        }
        let (body, tag) = raw.split_at(raw.len() - MAC_LEN);
        // Constant-time comparison through the hmac crate.
        let mut m = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| IteratorError::Invalid)?;
        m.update(body);
        m.verify_truncated_left(tag).map_err(|_| IteratorError::Invalid)?;
        let mut p = PREFIX.len() + 1;
        let mut take = |n: usize| {
            let s = &body[p..p + n];
            p += n;
            s
        };
        let be4 = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
        let be8 = |s: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_be_bytes(a)
        };
        let stream_tag = be4(take(4));
        let shard = be4(take(4));
        let position = be8(take(8));
        let issued_ms = be8(take(8));
        let name_len = take(1)[0] as usize;
        if body.len() != fixed + name_len {
            return Err(IteratorError::Invalid);
        }
        let stream = String::from_utf8(body[fixed..].to_vec()).map_err(|_| IteratorError::Invalid)?;
        if now_ms.saturating_sub(issued_ms) > ITERATOR_TTL_MS {
            return Err(IteratorError::Expired);
        }
        Ok(ShardIterator { stream, stream_tag, shard, position, issued_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ShardIterator {
        ShardIterator {
            stream: "orders".into(),
            stream_tag: 42,
            shard: 3,
            position: 1000,
            issued_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trip_and_shape() {
        let t = sample().encode(b"k");
        assert!(t.starts_with("AAAAAAAAAAE"));
        assert!(t.len() <= 512);
        assert_eq!(ShardIterator::decode(&t, b"k", 1_700_000_000_000), Ok(sample()));
    }

    #[test]
    fn wrong_key_expired_and_garbage() {
        let t = sample().encode(b"k");
        assert_eq!(ShardIterator::decode(&t, b"other", 1_700_000_000_000), Err(IteratorError::Invalid));
        assert_eq!(ShardIterator::decode(&t, b"k", 1_700_000_300_001), Err(IteratorError::Expired));
        assert_eq!(ShardIterator::decode("garbage", b"k", 0), Err(IteratorError::Invalid));
        assert_eq!(ShardIterator::decode("", b"k", 0), Err(IteratorError::Invalid));
    }

    proptest! {
        #[test]
        fn any_single_byte_change_is_detected(idx in 0usize..64, delta in 1u8..255) {
            let t = sample().encode(b"secret");
            let mut raw = STANDARD.decode(&t).unwrap_or_default();
            let i = idx % raw.len();
            raw[i] = raw[i].wrapping_add(delta);
            let forged = STANDARD.encode(raw);
            prop_assert!(ShardIterator::decode(&forged, b"secret", 1_700_000_000_000).is_err());
        }

        #[test]
        fn decode_never_panics(s in ".{0,300}") {
            let _ = ShardIterator::decode(&s, b"k", 0);
        }
    }
}
