//! AWS Signature Version 4 verification (`--verify-signatures`).
//!
//! Rebuilds the canonical request from what arrived (method, path, query, the signed headers,
//! the SHA-256 of the body), derives the signing key from the configured secret for the
//! request's access key, and compares signatures in constant time. Requests older or newer
//! than 15 minutes are refused, as the service does.

use std::collections::HashMap;

use axum::http::request::Parts;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Access key id → secret access key.
#[derive(Clone, Default)]
pub struct Credentials {
    keys: HashMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    // Secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_keys", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

impl Credentials {
    /// Parses `AKID:SECRET[,AKID:SECRET…]`.
    pub fn parse(spec: &str) -> Result<Credentials, String> {
        let mut keys = HashMap::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, secret) =
                pair.split_once(':').ok_or_else(|| "expected AKID:SECRET pairs separated by commas".to_owned())?;
            if id.is_empty() || secret.is_empty() {
                return Err("access key id and secret must not be empty".into());
            }
            keys.insert(id.to_owned(), secret.to_owned());
        }
        if keys.is_empty() {
            return Err("no credentials given".into());
        }
        Ok(Credentials { keys })
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn field<'a>(auth: &'a str, name: &str) -> Option<&'a str> {
    let start = auth.find(name)? + name.len();
    let rest = &auth[start..];
    Some(rest.split([',', ' ']).next().unwrap_or("").trim())
}

/// Parses `YYYYMMDDTHHMMSSZ` to epoch seconds.
fn parse_amz_date(s: &str) -> Option<i64> {
    if s.len() != 16 || &s[8..9] != "T" || !s.ends_with('Z') {
        return None;
    }
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (n(0, 4)?, n(4, 6)?, n(6, 8)?, n(9, 11)?, n(11, 13)?, n(13, 15)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// Verifies the request's header signature against `creds`.
pub fn verify(creds: &Credentials, parts: &Parts, body: &[u8], now_ms: u64) -> Result<(), ApiError> {
    let headers = &parts.headers;
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::missing_auth("Missing Authentication Token"));
    };
    if !auth.starts_with("AWS4-HMAC-SHA256 ") {
        return Err(ApiError::incomplete_signature("Unsupported signature algorithm; use AWS4-HMAC-SHA256."));
    }
    let (Some(credential), Some(signed), Some(signature)) =
        (field(auth, "Credential="), field(auth, "SignedHeaders="), field(auth, "Signature="))
    else {
        return Err(ApiError::incomplete_signature(
            "The Authorization header is missing Credential, SignedHeaders or Signature.",
        ));
    };
    let scope_parts: Vec<&str> = credential.splitn(5, '/').collect();
    let [akid, date, region, service, terminator] = scope_parts[..] else {
        return Err(ApiError::incomplete_signature(format!("Malformed credential scope {credential}")));
    };
    if terminator != "aws4_request" {
        return Err(ApiError::incomplete_signature(format!("Malformed credential scope {credential}")));
    }
    let Some(secret) = creds.keys.get(akid) else {
        return Err(ApiError::unrecognized_client("The security token included in the request is invalid."));
    };
    let amz_date = headers.get("x-amz-date").and_then(|v| v.to_str().ok()).ok_or_else(|| {
        ApiError::incomplete_signature(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    })?;
    let when = parse_amz_date(amz_date)
        .ok_or_else(|| ApiError::incomplete_signature(format!("Malformed X-Amz-Date {amz_date}")))?;
    let skew = (now_ms as i64 / 1000 - when).abs();
    if skew > 15 * 60 {
        return Err(ApiError::invalid_signature(format!(
            "Signature expired: {amz_date} is now more than 15 minutes away from the server's time."
        )));
    }
    if !amz_date.starts_with(date) {
        return Err(ApiError::invalid_signature("The credential scope date does not match X-Amz-Date."));
    }
    let mut canonical_headers = String::new();
    for name in signed.split(';') {
        let value = if name == "host" {
            headers
                .get("host")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .or_else(|| parts.uri.authority().map(|a| a.to_string()))
                .unwrap_or_default()
        } else {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join(",")
        };
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(value.trim());
        canonical_headers.push('\n');
    }
    let mut query: Vec<(String, String)> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(&percent_decode(k), true), uri_encode(&percent_decode(v), true))
        })
        .collect();
    query.sort();
    let canonical_query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let payload_hash = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .filter(|v| *v != "UNSIGNED-PAYLOAD")
        .map(str::to_owned)
        .unwrap_or_else(|| hex(&Sha256::digest(body)));
    let path = parts.uri.path();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        parts.method.as_str(),
        uri_encode(&uri_encode(path, false), false),
        canonical_query.join("&"),
        canonical_headers,
        signed,
        payload_hash
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign =
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical_request.as_bytes())));
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let expected = hex(&hmac(&key, string_to_sign.as_bytes()));
    let matches = expected.len() == signature.len()
        && expected.bytes().zip(signature.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if matches {
        Ok(())
    } else {
        Err(ApiError::invalid_signature(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "get-vanilla" example of the AWS SigV4 test suite (credentials and values published
    /// by AWS for exactly this purpose).
    #[test]
    fn aws_sigv4_suite_get_vanilla() {
        let req = axum::http::Request::builder()
            .method("GET")
            .uri("/")
            .header("host", "example.amazonaws.com")
            .header("x-amz-date", "20150830T123600Z")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            )
            .body(())
            .unwrap_or_default();
        let (parts, ()) = req.into_parts();
        let creds = Credentials::parse("AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").unwrap_or_default();
        let now = 1_440_938_160_000; // 2015-08-30T12:36:00Z
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(verify(&creds, &parts, b"", now), Ok(()));
        let wrong = Credentials::parse("AKIDEXAMPLE:other").unwrap_or_default();
        assert_eq!(verify(&wrong, &parts, b"", now).map_err(|e| e.kind), Err("InvalidSignatureException"));
        let unknown = Credentials::parse("SOMEONEELSE:x").unwrap_or_default();
        assert_eq!(verify(&unknown, &parts, b"", now).map_err(|e| e.kind), Err("UnrecognizedClientException"));
        assert_eq!(verify(&creds, &parts, b"", now + 3_600_000).map_err(|e| e.kind), Err("InvalidSignatureException"));
    }

    #[test]
    fn credential_specs() {
        assert!(Credentials::parse("a:b,c:d").is_ok());
        assert!(Credentials::parse("nocolon").is_err());
        assert!(Credentials::parse("").is_err());
        assert!(!format!("{:?}", Credentials::parse("a:topsecret").unwrap_or_default()).contains("topsecret"));
    }
}
