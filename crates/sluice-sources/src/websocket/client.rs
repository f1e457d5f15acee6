//! The WebSocket client, behind a small trait so the library under it (yawc today) can be
//! swapped without touching the connection logic.

use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue};
use url::Url;

/// What to connect to and how.
pub(crate) struct WsTarget {
    pub url: Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Offer permessage-deflate.
    pub compression: bool,
    /// The largest message the client reads; a bigger one fails the connection.
    pub max_message_bytes: usize,
}

/// One received frame (fragments are already joined).
#[derive(Debug)]
pub(crate) enum WsIncoming {
    Text(Bytes),
    Binary(Bytes),
    Ping,
    Pong,
    Close { code: Option<u16>, reason: String },
}

/// One frame to send.
#[derive(Debug)]
pub(crate) enum WsOutgoing {
    Text(String),
    Ping(Bytes),
    /// A normal closure (1000).
    Close,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// A message larger than the client's limit.
    #[error("message larger than the read limit")]
    TooLarge,
    /// The connection ended without a close frame.
    #[error("connection lost without a close frame")]
    Lost,
    #[error("{0}")]
    Other(String),
}

/// An open WebSocket connection.
pub(crate) trait WsConnection: Send {
    /// The next frame. Cancel-safe: a frame is never lost by dropping the poll.
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

/// The socket read buffer; received payloads share its memory until they are dropped.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The yawc client (permessage-deflate, rustls).
pub(crate) struct YawcConnector;

type YawcSocket = yawc::WebSocket<yawc::MaybeTlsStream<tokio::net::TcpStream>>;

struct YawcConnection {
    ws: YawcSocket,
}

impl WsConnector for YawcConnector {
    fn connect(&self, target: WsTarget) -> BoxFuture<'static, Result<Box<dyn WsConnection>, WsError>> {
        Box::pin(async move {
            // yawc's limits are exclusive.
            let limit = target.max_message_bytes.saturating_add(1);
            // An explicit read buffer capacity matters: with yawc's default buffer, once frame
            // payloads are kept (they are: they become events) the buffer regrows to only what
            // the next read needs, and reading degrades to a few bytes per syscall.
            let mut options = yawc::Options::default()
                .with_no_delay()
                .with_max_payload_read(limit)
                .with_max_read_buffer(limit)
                .with_read_buffer_capacity(READ_BUFFER_BYTES);
            options =
                if target.compression { options.with_balanced_compression() } else { options.without_compression() };
            let mut request = yawc::HttpRequestBuilder::new();
            for (name, value) in target.headers {
                request = request.header(name, value);
            }
            let ws = yawc::WebSocket::connect(target.url)
                .with_options(options)
                .with_request(request)
                .await
                .map_err(map_error)?;
            Ok(Box::new(YawcConnection { ws }) as Box<dyn WsConnection>)
        })
    }
}

fn map_error(e: yawc::WebSocketError) -> WsError {
    match e {
        yawc::WebSocketError::FrameTooLarge => WsError::TooLarge,
        yawc::WebSocketError::ConnectionClosed => WsError::Lost,
        yawc::WebSocketError::IoError(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            WsError::Lost
        }
        other => WsError::Other(other.to_string()),
    }
}

impl WsConnection for YawcConnection {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<WsIncoming, WsError>> {
        let frame = match self.ws.poll_next_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(map_error(e))),
            Poll::Ready(Ok(frame)) => frame,
        };
        let incoming = match frame.opcode() {
            yawc::OpCode::Text => WsIncoming::Text(frame.into_payload()),
            yawc::OpCode::Binary => WsIncoming::Binary(frame.into_payload()),
            yawc::OpCode::Ping => WsIncoming::Ping,
            yawc::OpCode::Pong => WsIncoming::Pong,
            yawc::OpCode::Close => {
                let code = frame.close_code().map(u16::from);
                let reason = frame.close_reason().ok().flatten().unwrap_or("").to_owned();
                WsIncoming::Close { code, reason }
            }
            // Fragments are joined by yawc; a stray continuation is a protocol error there.
            yawc::OpCode::Continuation => {
                return Poll::Ready(Err(WsError::Other("unexpected continuation frame".into())));
            }
        };
        Poll::Ready(Ok(incoming))
    }

    fn send(&mut self, frame: WsOutgoing) -> BoxFuture<'_, Result<(), WsError>> {
        let frame = match frame {
            WsOutgoing::Text(text) => yawc::Frame::text(text),
            WsOutgoing::Ping(payload) => yawc::Frame::ping(payload),
            WsOutgoing::Close => yawc::Frame::close(yawc::close::CloseCode::Normal, b""),
        };
        Box::pin(async move { self.ws.send(frame).await.map_err(map_error) })
    }
}
