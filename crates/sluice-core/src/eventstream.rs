//! The AWS event-stream framing used by SubscribeToShard (`application/vnd.amazon.eventstream`).
//!
//! A frame is: total length (u32 BE), headers length (u32 BE), CRC-32 of those 8 bytes,
//! headers, payload, CRC-32 of everything before it. Headers are `name_len u8, name, type u8,
//! value`; sluice writes string (7) values only and reads all types.

/// A header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Type 0 / 1.
    Bool(bool),
    /// Types 2–5, widened.
    Int(i64),
    /// Type 6.
    Bytes(Vec<u8>),
    /// Type 7.
    String(String),
    /// Type 8, epoch ms.
    Timestamp(i64),
    /// Type 9.
    Uuid([u8; 16]),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Headers in wire order.
    pub headers: Vec<(String, HeaderValue)>,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The string value of a header, if present and a string.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }
}

/// Encodes a frame whose headers are all strings.
pub fn encode_frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let headers_len: usize = headers.iter().map(|(n, v)| 1 + n.len() + 1 + 2 + v.len()).sum();
    let total = 12 + headers_len + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(headers_len as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    for (name, value) in headers {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(7);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the frame announces.
    #[error("incomplete frame")]
    Incomplete,
    /// A length or header is inconsistent.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A CRC does not match.
    #[error("frame checksum mismatch")]
    Checksum,
}

/// Decodes one frame from the front of `buf`; returns it and the bytes consumed.
pub fn decode_frame(buf: &[u8]) -> Result<(Frame, usize), FrameError> {
    if buf.len() < 12 {
        return Err(FrameError::Incomplete);
    }
    let be32 = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    let total = be32(&buf[0..4]) as usize;
    let headers_len = be32(&buf[4..8]) as usize;
    if be32(&buf[8..12]) != crc32fast::hash(&buf[0..8]) {
        return Err(FrameError::Checksum);
    }
    if total < 16 || headers_len > total - 16 {
        return Err(FrameError::Malformed("lengths"));
    }
    if buf.len() < total {
        return Err(FrameError::Incomplete);
    }
    if be32(&buf[total - 4..total]) != crc32fast::hash(&buf[..total - 4]) {
        return Err(FrameError::Checksum);
    }
    let mut headers = Vec::new();
    let hbuf = &buf[12..12 + headers_len];
    let mut p = 0;
    let need = |p: usize, n: usize| if p + n <= hbuf.len() { Ok(()) } else { Err(FrameError::Malformed("header")) };
    while p < hbuf.len() {
        need(p, 1)?;
        let nl = hbuf[p] as usize;
        p += 1;
        need(p, nl + 1)?;
        let name = String::from_utf8(hbuf[p..p + nl].to_vec()).map_err(|_| FrameError::Malformed("name"))?;
        p += nl;
        let ty = hbuf[p];
        p += 1;
        let int = |n: usize, p: &mut usize| -> Result<i64, FrameError> {
            need(*p, n)?;
            let mut v: i64 = if hbuf[*p] & 0x80 != 0 { -1 } else { 0 };
            for &b in &hbuf[*p..*p + n] {
                v = (v << 8) | i64::from(b);
            }
            *p += n;
            Ok(v)
        };
        let value = match ty {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Int(int(1, &mut p)?),
            3 => HeaderValue::Int(int(2, &mut p)?),
            4 => HeaderValue::Int(int(4, &mut p)?),
            5 => HeaderValue::Int(int(8, &mut p)?),
            8 => HeaderValue::Timestamp(int(8, &mut p)?),
            6 | 7 => {
                need(p, 2)?;
                let l = u16::from_be_bytes([hbuf[p], hbuf[p + 1]]) as usize;
                p += 2;
                need(p, l)?;
                let v = hbuf[p..p + l].to_vec();
                p += l;
                if ty == 6 {
                    HeaderValue::Bytes(v)
                } else {
                    HeaderValue::String(String::from_utf8(v).map_err(|_| FrameError::Malformed("string"))?)
                }
            }
            9 => {
                need(p, 16)?;
                let mut u = [0u8; 16];
                u.copy_from_slice(&hbuf[p..p + 16]);
                p += 16;
                HeaderValue::Uuid(u)
            }
            _ => return Err(FrameError::Malformed("header type")),
        };
        headers.push((name, value));
    }
    let payload = buf[12 + headers_len..total - 4].to_vec();
    Ok((Frame { headers, payload }, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let f = encode_frame(&[(":message-type", "event"), (":event-type", "initial-response")], b"{}");
        let (d, n) = decode_frame(&f).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, f.len());
        assert_eq!(d.header_str(":event-type"), Some("initial-response"));
        assert_eq!(d.payload, b"{}");
        let mut bad = f.clone();
        bad[20] ^= 1;
        assert_eq!(decode_frame(&bad), Err(FrameError::Checksum));
        assert_eq!(decode_frame(&f[..f.len() - 1]), Err(FrameError::Incomplete));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_frame(&bytes);
        }
    }
}
