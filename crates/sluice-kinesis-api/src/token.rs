//! Signed, expiring pagination tokens (ListShards / ListStreams `NextToken`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Pagination tokens expire after 300 s.
pub const NEXT_TOKEN_TTL_MS: u64 = 300_000;

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not issued by this server, or altered.
    Invalid,
    /// Older than 300 s.
    Expired,
}

/// Signs `payload` (with its issue time) into an opaque string.
pub fn sign(secret: &[u8], kind: &str, payload: &str, now_ms: u64) -> String {
    let body = format!("{kind}\n{now_ms}\n{payload}");
    let mut out = body.clone().into_bytes();
    out.extend_from_slice(&mac(secret, body.as_bytes()));
    URL_SAFE_NO_PAD.encode(out)
}

/// Verifies a token of `kind`; returns its payload.
pub fn verify(secret: &[u8], kind: &str, token: &str, now_ms: u64) -> Result<String, TokenError> {
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Invalid)?;
    if raw.len() < 16 {
        return Err(TokenError::Invalid);
    }
    let (body, tag) = raw.split_at(raw.len() - 16);
    if mac(secret, body) != tag {
        return Err(TokenError::Invalid);
    }
    let body = std::str::from_utf8(body).map_err(|_| TokenError::Invalid)?;
    let mut parts = body.splitn(3, '\n');
    let (Some(k), Some(ts), Some(payload)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Invalid);
    };
    if k != kind {
        return Err(TokenError::Invalid);
    }
    let issued: u64 = ts.parse().map_err(|_| TokenError::Invalid)?;
    if now_ms.saturating_sub(issued) > NEXT_TOKEN_TTL_MS {
        return Err(TokenError::Expired);
    }
    Ok(payload.to_owned())
}

fn mac(secret: &[u8], body: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret) {
        m.update(body);
        out.copy_from_slice(&m.finalize().into_bytes()[..16]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_tamper_expiry() {
        let t = sign(b"k", "shards", "s\n3", 1000);
        assert_eq!(verify(b"k", "shards", &t, 2000), Ok("s\n3".into()));
        assert_eq!(verify(b"k", "streams", &t, 2000), Err(TokenError::Invalid));
        assert_eq!(verify(b"x", "shards", &t, 2000), Err(TokenError::Invalid));
        assert_eq!(verify(b"k", "shards", &t, 1000 + NEXT_TOKEN_TTL_MS + 1), Err(TokenError::Expired));
        assert_eq!(verify(b"k", "shards", "zz", 0), Err(TokenError::Invalid));
    }
}
