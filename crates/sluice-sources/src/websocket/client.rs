//! The WebSocket client: the HTTP/1.1 upgrade through reqwest (TLS, proxies and timeouts as
//! for the other sources), then RFC 6455 framing and RFC 7692 permessage-deflate read here,
//! as a stream.
//!
//! Reading frames ourselves is what lets a message over the limit be skipped without
//! closing the connection: its bytes are read (and inflated, so the shared compression
//! context stays right) and thrown away as they arrive; only its first bytes are kept, for
//! the dead-letter file. Nothing bigger than the limit is ever buffered.
//!
//! Behind a small trait so the connection logic can be tested without a network.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use url::Url;

/// What to connect to and how.
pub(crate) struct WsTarget {
    pub url: Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Offer permessage-deflate.
    pub compression: bool,
    /// The largest message kept; a bigger one is read, discarded and reported as
    /// [`WsIncoming::Oversized`].
    pub max_message_bytes: usize,
}

/// One received message (fragments are joined) or control frame.
#[derive(Debug)]
pub(crate) enum WsIncoming {
    Text(Bytes),
    Binary(Bytes),
    /// A message over `max_message_bytes`: its real (uncompressed) size and its first bytes.
    Oversized {
        size: u64,
        prefix: Bytes,
    },
    /// A ping; the caller answers with a pong carrying the same payload.
    Ping(Bytes),
    Pong,
    Close {
        code: Option<u16>,
        reason: String,
    },
}

/// One frame to send.
#[derive(Debug)]
pub(crate) enum WsOutgoing {
    Text(String),
    Ping(Bytes),
    Pong(Bytes),
    /// A normal closure (1000).
    Close,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// The connection ended without a close frame.
    #[error("connection lost without a close frame")]
    Lost,
    #[error("{0}")]
    Other(String),
}

/// An open WebSocket connection.
pub(crate) trait WsConnection: Send {
    /// The next message or control frame. Cancel-safe: nothing is lost by dropping the poll.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<WsIncoming, WsError>>;
    /// Sends one frame and flushes it.
    fn send(&mut self, frame: WsOutgoing) -> BoxFuture<'_, Result<(), WsError>>;
}

impl dyn WsConnection + '_ {
    pub(crate) async fn recv(&mut self) -> Result<WsIncoming, WsError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

/// Opens connections.
pub(crate) trait WsConnector: Send + Sync {
    fn connect(&self, target: WsTarget) -> BoxFuture<'static, Result<Box<dyn WsConnection>, WsError>>;
}

/// How much of an oversized message is kept for the dead-letter file.
pub(crate) const KEPT_PREFIX: usize = 64 * 1024;
/// The socket read size.
const READ_CHUNK: usize = 64 * 1024;
/// Inflate output is produced in pieces of this size.
const INFLATE_CHUNK: usize = 64 * 1024;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Upgrades over a reqwest client (HTTP/1.1 only, no pooling: see `crate::http::client`).
pub(crate) struct ReqwestConnector {
    pub client: reqwest::Client,
}

impl WsConnector for ReqwestConnector {
    fn connect(&self, target: WsTarget) -> BoxFuture<'static, Result<Box<dyn WsConnection>, WsError>> {
        let client = self.client.clone();
        Box::pin(async move { upgrade(client, target).await })
    }
}

async fn upgrade(client: reqwest::Client, target: WsTarget) -> Result<Box<dyn WsConnection>, WsError> {
    use base64::Engine;
    use sha1::Digest;
    let mut url = target.url.clone();
    let scheme = match url.scheme() {
        "ws" => "http",
        "wss" => "https",
        other => return Err(WsError::Other(format!("not a WebSocket URL scheme: {other:?}"))),
    };
    url.set_scheme(scheme).map_err(|()| WsError::Other("cannot use the URL for HTTP".into()))?;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let mut request = client
        .get(url)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", &key);
    if target.compression {
        request = request.header("sec-websocket-extensions", "permessage-deflate; client_max_window_bits");
    }
    for (name, value) in target.headers {
        request = request.header(name, value);
    }
    let response = request.send().await.map_err(|e| WsError::Other(crate::http::describe(e)))?;
    let status = response.status();
    if status != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(WsError::Other(format!("the upgrade was answered with HTTP {status}, not 101")));
    }
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let accept = response.headers().get("sec-websocket-accept").and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.trim() != expected {
        return Err(WsError::Other("the server's Sec-WebSocket-Accept does not match the key".into()));
    }
    let extensions: Vec<String> = response
        .headers()
        .get_all("sec-websocket-extensions")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .collect();
    let deflate = match negotiated_deflate(&extensions) {
        Some(d) if target.compression => Some(d),
        Some(_) => return Err(WsError::Other("the server enabled permessage-deflate, which was not offered".into())),
        None => None,
    };
    let io = response.upgrade().await.map_err(|e| WsError::Other(crate::http::describe(e)))?;
    Ok(Box::new(Conn::new(io, target.max_message_bytes, deflate)))
}

/// What the server agreed to for permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deflate {
    /// The server starts every message with a fresh compression context.
    server_no_context_takeover: bool,
}

fn negotiated_deflate(headers: &[String]) -> Option<Deflate> {
    for header in headers {
        for extension in header.split(',') {
            let mut params = extension.split(';').map(str::trim);
            if params.next() != Some("permessage-deflate") {
                continue;
            }
            let server_no_context_takeover = params.any(|p| p == "server_no_context_takeover");
            return Some(Deflate { server_no_context_takeover });
        }
    }
    None
}

/// The frame being read.
#[derive(Debug)]
struct Frame {
    opcode: u8,
    fin: bool,
    mask: Option<[u8; 4]>,
    /// Payload bytes already consumed (for unmasking) and still to come.
    done: u64,
    remaining: u64,
}

/// The data message being assembled.
struct Message {
    binary: bool,
    compressed: bool,
    /// Its (uncompressed) size so far.
    size: u64,
    /// Its bytes (all of them up to the limit; once over, only the kept prefix).
    data: BytesMut,
    oversized: bool,
}

/// One open connection over any byte stream.
pub(crate) struct Conn<S> {
    io: S,
    buf: BytesMut,
    limit: usize,
    frame: Option<Frame>,
    message: Option<Message>,
    deflate: Option<Deflate>,
    inflater: flate2::Decompress,
    /// The peer ended a deflate stream (BFINAL): the next message starts a new one.
    inflate_ended: bool,
    scratch: Vec<u8>,
}

impl<S> Conn<S> {
    fn new(io: S, limit: usize, deflate: Option<Deflate>) -> Conn<S> {
        Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            limit,
            frame: None,
            message: None,
            deflate,
            inflater: flate2::Decompress::new(false),
            inflate_ended: false,
            scratch: Vec::new(),
        }
    }
}

fn protocol(message: impl Into<String>) -> WsError {
    WsError::Other(format!("protocol error: {}", message.into()))
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> Conn<S> {
    /// Handles what is buffered: `Some` when a message or control frame is complete.
    fn process(&mut self) -> Result<Option<WsIncoming>, WsError> {
        loop {
            if self.frame.is_none() {
                match self.header()? {
                    Some(frame) => self.frame = Some(frame),
                    None => return Ok(None),
                }
            }
            let Some(frame) = self.frame.as_mut() else { return Ok(None) };
            if frame.opcode >= 0x8 {
                // Control frames are at most 125 bytes: wait for the whole of it.
                let len = frame.remaining as usize;
                if self.buf.len() < len {
                    return Ok(None);
                }
                let mut payload = self.buf.split_to(len);
                if let Some(mask) = frame.mask {
                    unmask(&mut payload, mask, 0);
                }
                let opcode = frame.opcode;
                self.frame = None;
                return Ok(Some(match opcode {
                    0x8 => close(&payload),
                    0x9 => WsIncoming::Ping(payload.freeze()),
                    _ => WsIncoming::Pong,
                }));
            }
            // A data frame: the fast path takes a whole unfragmented, uncompressed message
            // straight out of the read buffer.
            let (fin, remaining) = (frame.fin, frame.remaining);
            if let Some(m) = self.message.as_ref()
                && m.size == 0
                && !m.compressed
                && fin
                && frame.mask.is_none()
                && remaining <= self.limit as u64
            {
                let len = remaining as usize;
                if self.buf.len() < len {
                    if self.buf.capacity() - self.buf.len() < len - self.buf.len() {
                        self.buf.reserve(len - self.buf.len());
                    }
                    return Ok(None);
                }
                let payload = self.buf.split_to(len).freeze();
                let binary = m.binary;
                self.frame = None;
                self.message = None;
                return Ok(Some(if binary { WsIncoming::Binary(payload) } else { WsIncoming::Text(payload) }));
            }
            let take = (self.buf.len() as u64).min(remaining) as usize;
            if take == 0 && remaining > 0 {
                return Ok(None);
            }
            let mut chunk = self.buf.split_to(take);
            let Some(frame) = self.frame.as_mut() else { return Ok(None) };
            if let Some(mask) = frame.mask {
                unmask(&mut chunk, mask, frame.done);
            }
            frame.done += take as u64;
            frame.remaining -= take as u64;
            let frame_done = frame.remaining == 0;
            self.consume(&chunk)?;
            if !frame_done {
                continue;
            }
            self.frame = None;
            if fin {
                return self.finish_message().map(Some);
            }
        }
    }

    /// Parses a frame header when enough bytes are buffered.
    fn header(&mut self) -> Result<Option<Frame>, WsError> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let masked = b1 & 0x80 != 0;
        let extra = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + extra + if masked { 4 } else { 0 };
        if self.buf.len() < header_len {
            return Ok(None);
        }
        let mut h = self.buf.split_to(header_len);
        h.advance(2);
        let len = match extra {
            2 => u64::from(h.get_u16()),
            8 => h.get_u64(),
            _ => u64::from(b1 & 0x7f),
        };
        let mask = masked.then(|| {
            let mut m = [0; 4];
            h.copy_to_slice(&mut m);
            m
        });
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 {
            return Err(protocol("reserved bits set"));
        }
        let opcode = b0 & 0x0f;
        match opcode {
            0x8..=0xa => {
                if !fin || len > 125 || rsv1 {
                    return Err(protocol("invalid control frame"));
                }
            }
            0x1 | 0x2 => {
                if self.message.is_some() {
                    return Err(protocol("a new message began before the previous one ended"));
                }
                if rsv1 && self.deflate.is_none() {
                    return Err(protocol("compressed frame without permessage-deflate"));
                }
                self.message = Some(Message {
                    binary: opcode == 0x2,
                    compressed: rsv1,
                    size: 0,
                    data: BytesMut::new(),
                    oversized: false,
                });
                if rsv1 && self.inflate_ended {
                    self.inflater.reset(false);
                    self.inflate_ended = false;
                }
            }
            0x0 => {
                if self.message.is_none() || rsv1 {
                    return Err(protocol("unexpected continuation frame"));
                }
            }
            other => return Err(protocol(format!("unknown opcode {other}"))),
        }
        Ok(Some(Frame { opcode, fin, mask, done: 0, remaining: len }))
    }

    /// Adds payload bytes of the current data message (inflating them if compressed).
    fn consume(&mut self, chunk: &[u8]) -> Result<(), WsError> {
        let compressed = self.message.as_ref().is_some_and(|m| m.compressed);
        if compressed {
            self.inflate(chunk)
        } else {
            self.append(chunk);
            Ok(())
        }
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<(), WsError> {
        if self.inflate_ended {
            // The rest of a stream the peer already ended carries nothing.
            return Ok(());
        }
        if self.scratch.len() < INFLATE_CHUNK {
            self.scratch.resize(INFLATE_CHUNK, 0);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = loop {
            let (in0, out0) = (self.inflater.total_in(), self.inflater.total_out());
            let status = match self.inflater.decompress(input, &mut scratch, flate2::FlushDecompress::Sync) {
                Ok(s) => s,
                Err(e) => break Err(protocol(format!("invalid compressed data: {e}"))),
            };
            let consumed = (self.inflater.total_in() - in0) as usize;
            let produced = (self.inflater.total_out() - out0) as usize;
            input = &input[consumed..];
            self.append(&scratch[..produced]);
            if status == flate2::Status::StreamEnd {
                self.inflate_ended = true;
                break Ok(());
            }
            if (input.is_empty() && produced < scratch.len()) || (consumed == 0 && produced == 0) {
                break Ok(());
            }
        };
        self.scratch = scratch;
        result
    }

    /// Adds uncompressed message bytes, keeping only the prefix once over the limit.
    fn append(&mut self, bytes: &[u8]) {
        let Some(m) = self.message.as_mut() else { return };
        m.size += bytes.len() as u64;
        if !m.oversized && m.size > self.limit as u64 {
            m.oversized = true;
            m.data.truncate(KEPT_PREFIX);
        }
        let cap = if m.oversized { KEPT_PREFIX } else { self.limit };
        let room = cap.saturating_sub(m.data.len());
        m.data.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn finish_message(&mut self) -> Result<WsIncoming, WsError> {
        if self.message.as_ref().is_some_and(|m| m.compressed) {
            self.inflate(&[0x00, 0x00, 0xff, 0xff])?;
            if self.deflate.is_some_and(|d| d.server_no_context_takeover) || self.inflate_ended {
                self.inflater.reset(false);
                self.inflate_ended = false;
            }
        }
        let Some(m) = self.message.take() else { return Err(protocol("no message to finish")) };
        let data = m.data.freeze();
        Ok(if m.oversized {
            WsIncoming::Oversized { size: m.size, prefix: data }
        } else if m.binary {
            WsIncoming::Binary(data)
        } else {
            WsIncoming::Text(data)
        })
    }
}

fn unmask(bytes: &mut [u8], mask: [u8; 4], offset: u64) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b ^= mask[((offset + i as u64) % 4) as usize];
    }
}

fn close(payload: &[u8]) -> WsIncoming {
    if payload.len() < 2 {
        return WsIncoming::Close { code: None, reason: String::new() };
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    WsIncoming::Close { code: Some(code), reason: String::from_utf8_lossy(&payload[2..]).into_owned() }
}

/// A masked client frame.
fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask, 0);
    out
}

fn io_error(e: std::io::Error) -> WsError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe => WsError::Lost,
        _ => WsError::Other(e.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> WsConnection for Conn<S> {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<WsIncoming, WsError>> {
        loop {
            if let Some(incoming) = self.process()? {
                return Poll::Ready(Ok(incoming));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let n =
                ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)).map_err(io_error)?;
            if n == 0 {
                return Poll::Ready(Err(WsError::Lost));
            }
        }
    }

    fn send(&mut self, frame: WsOutgoing) -> BoxFuture<'_, Result<(), WsError>> {
        let bytes = match frame {
            WsOutgoing::Text(text) => encode(0x1, text.as_bytes()),
            WsOutgoing::Ping(payload) => encode(0x9, &payload),
            WsOutgoing::Pong(payload) => encode(0xa, &payload),
            WsOutgoing::Close => encode(0x8, &1000u16.to_be_bytes()),
        };
        Box::pin(async move {
            self.io.write_all(&bytes).await.map_err(io_error)?;
            self.io.flush().await.map_err(io_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n < 65536 => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `wire` to a connection in `chunk`-byte reads; returns what it reports.
    async fn read_all(wire: Vec<u8>, chunk: usize, limit: usize, deflate: Option<Deflate>) -> Vec<WsIncoming> {
        let (mut tx, rx) = tokio::io::duplex(chunk.max(64));
        let writer = tokio::spawn(async move {
            for piece in wire.chunks(chunk) {
                if tx.write_all(piece).await.is_err() {
                    return;
                }
            }
        });
        let mut conn: Box<dyn WsConnection> = Box::new(Conn::new(rx, limit, deflate));
        let mut out = Vec::new();
        while let Ok(m) = conn.recv().await {
            out.push(m);
        }
        let _ = writer.await;
        out
    }

    fn texts(out: &[WsIncoming]) -> Vec<String> {
        out.iter()
            .map(|m| match m {
                WsIncoming::Text(b) => format!("text:{}", String::from_utf8_lossy(b)),
                WsIncoming::Binary(b) => format!("binary:{}", b.len()),
                WsIncoming::Oversized { size, prefix } => format!("oversized:{size}:{}", prefix.len()),
                WsIncoming::Ping(p) => format!("ping:{}", p.len()),
                WsIncoming::Pong => "pong".into(),
                WsIncoming::Close { code, .. } => format!("close:{code:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn messages_fragments_and_control_frames() {
        let mut wire = frame(0x81, b"one");
        wire.extend(frame(0x01, b"tw"));
        wire.extend(frame(0x89, b"p"));
        wire.extend(frame(0x80, b"o"));
        wire.extend(frame(0x82, &[0; 300]));
        wire.extend(frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        for chunk in [1, 3, 1000] {
            let out = read_all(wire.clone(), chunk, 1024, None).await;
            assert_eq!(texts(&out), ["text:one", "ping:1", "text:two", "binary:300", "close:Some(1000)"]);
        }
    }

    #[tokio::test]
    async fn an_oversized_message_is_skipped_as_it_streams_and_the_next_one_read() {
        let big = vec![b'x'; 3 * KEPT_PREFIX];
        let mut wire = frame(0x81, &big);
        // Fragmented too: over the limit only in its second fragment.
        wire.extend(frame(0x01, &big[..1000]));
        wire.extend(frame(0x80, &big));
        wire.extend(frame(0x81, b"after"));
        let out = read_all(wire, 4096, 2000, None).await;
        let size = big.len();
        assert_eq!(
            texts(&out),
            [
                format!("oversized:{size}:{KEPT_PREFIX}"),
                format!("oversized:{}:{KEPT_PREFIX}", size + 1000),
                "text:after".into()
            ]
        );
        if let WsIncoming::Oversized { prefix, .. } = &out[0] {
            assert!(prefix.iter().all(|&b| b == b'x'));
        }
    }

    #[tokio::test]
    async fn compressed_messages_keep_their_context_across_a_skipped_one() {
        // One deflate stream with context takeover across three messages, the middle one
        // inflating past the limit.
        let mut c = flate2::Compress::new(flate2::Compression::fast(), false);
        let mut wire = Vec::new();
        for (i, text) in
            [b"hello hello".to_vec(), vec![b'y'; 500_000], b"hello hello again".to_vec()].iter().enumerate()
        {
            let mut out = vec![0; text.len() + 1024];
            let before = c.total_out();
            c.compress(text, &mut out, flate2::FlushCompress::Sync).expect("compress");
            out.truncate((c.total_out() - before) as usize);
            assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "message {i}");
            out.truncate(out.len() - 4);
            wire.extend(frame(0xc1, &out));
        }
        let d = Some(Deflate { server_no_context_takeover: false });
        let out = read_all(wire, 1500, 1000, d).await;
        assert_eq!(
            texts(&out),
            ["text:hello hello".to_owned(), format!("oversized:500000:{KEPT_PREFIX}"), "text:hello hello again".into()]
        );
    }

    #[test]
    fn extensions_are_parsed() {
        assert_eq!(negotiated_deflate(&[]), None);
        assert_eq!(
            negotiated_deflate(&["permessage-deflate; server_no_context_takeover".into()]),
            Some(Deflate { server_no_context_takeover: true })
        );
        assert_eq!(
            negotiated_deflate(&["x-other, permessage-deflate; client_max_window_bits=15".into()]),
            Some(Deflate { server_no_context_takeover: false })
        );
    }

    #[test]
    fn client_frames_are_masked() {
        let f = encode(0x1, b"abc");
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1], 0x83);
        let mask = [f[2], f[3], f[4], f[5]];
        let mut p = f[6..].to_vec();
        unmask(&mut p, mask, 0);
        assert_eq!(p, b"abc");
    }
}
