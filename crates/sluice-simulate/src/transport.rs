//! The three ways a message leaves the simulator: WebSocket text frames, Server-Sent Events and NDJSON
//! lines. Each transport buffers what it is given and writes it out on `flush`, so a session can hand it
//! a whole batch for one write; each knows how to end a connection properly (`close`) and improperly
//! (`abort`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{self, CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::feed::Msg;

/// The connection is gone (peer closed, write failed).
#[derive(Debug)]
pub(crate) struct Gone;

/// Something the client told us.
pub(crate) enum Inbound {
    /// `{"type":"subscribe","after":SEQ}`; `None` means "start from live now".
    Subscribe(Option<u64>),
    /// `{"type":"ping"}`, to be answered with `{"type":"pong"}`.
    Ping,
    /// The client went away or broke the protocol.
    Closed,
    /// Anything else; ignored.
    Other,
}

/// Why a connection is being ended by the simulator.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CloseReason {
    Cut,
    Lagged,
    Shutdown,
}

impl CloseReason {
    fn frame(self) -> CloseFrame {
        let (code, reason) = match self {
            CloseReason::Cut => (ws::close_code::AWAY, "simulated cut"),
            CloseReason::Lagged => (ws::close_code::AGAIN, "lagged behind live; resume with ?after=SEQ"),
            CloseReason::Shutdown => (ws::close_code::AWAY, "simulator shutting down"),
        };
        CloseFrame { code, reason: Utf8Bytes::from_static(reason) }
    }
}

/// How long a proper close may take before the connection is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Bytes an HTTP transport collects before it writes a chunk without being asked to flush.
const HTTP_CHUNK: usize = 32 * 1024;

pub(crate) enum Transport {
    Ws(Box<WebSocket>),
    Http(HttpBody),
}

impl Transport {
    pub(crate) fn is_websocket(&self) -> bool {
        matches!(self, Transport::Ws(_))
    }

    pub(crate) async fn message(&mut self, msg: &Msg) -> Result<(), Gone> {
        match self {
            Transport::Ws(ws) => {
                let text = Utf8Bytes::try_from(msg.json.clone()).map_err(|_| Gone)?;
                ws.feed(Message::Text(text)).await.map_err(|_| Gone)
            }
            Transport::Http(body) => {
                match body.format {
                    HttpFormat::Sse => {
                        body.buf.put_slice(b"id: ");
                        body.buf.put_slice(msg.seq.to_string().as_bytes());
                        body.buf.put_slice(b"\ndata: ");
                        body.buf.put_slice(&msg.json);
                        body.buf.put_slice(b"\n\n");
                    }
                    HttpFormat::Ndjson => {
                        body.buf.put_slice(&msg.json);
                        body.buf.put_u8(b'\n');
                    }
                }
                body.write_if_full().await
            }
        }
    }

    /// A frame that is not JSON. In SSE it carries no `id:`, so `Last-Event-ID` stays a real seq.
    pub(crate) async fn garbage(&mut self, text: &str) -> Result<(), Gone> {
        match self {
            Transport::Ws(ws) => ws.feed(Message::Text(text.into())).await.map_err(|_| Gone),
            Transport::Http(body) => {
                match body.format {
                    HttpFormat::Sse => {
                        body.buf.put_slice(b"data: ");
                        body.buf.put_slice(text.as_bytes());
                        body.buf.put_slice(b"\n\n");
                    }
                    HttpFormat::Ndjson => {
                        body.buf.put_slice(text.as_bytes());
                        body.buf.put_u8(b'\n');
                    }
                }
                body.write_if_full().await
            }
        }
    }

    /// The answer to an application-level `{"type":"ping"}` (WebSocket only).
    pub(crate) async fn pong(&mut self) -> Result<(), Gone> {
        match self {
            Transport::Ws(ws) => {
                ws.send(Message::Text(Utf8Bytes::from_static(r#"{"type":"pong"}"#))).await.map_err(|_| Gone)
            }
            Transport::Http(_) => Ok(()),
        }
    }

    pub(crate) async fn flush(&mut self) -> Result<(), Gone> {
        match self {
            Transport::Ws(ws) => ws.flush().await.map_err(|_| Gone),
            Transport::Http(body) => body.write().await,
        }
    }

    /// Waits for the client to say something. Cancel-safe.
    pub(crate) async fn inbound(&mut self) -> Inbound {
        match self {
            Transport::Ws(ws) => match ws.next().await {
                Some(Ok(Message::Text(text))) => parse_control(text.as_str()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Inbound::Closed,
                // Protocol pings are answered by the WebSocket layer itself.
                Some(Ok(_)) => Inbound::Other,
            },
            Transport::Http(body) => {
                body.tx.closed().await;
                Inbound::Closed
            }
        }
    }

    /// Ends the connection properly: a close frame (then waits briefly for the client's), or the end of
    /// the HTTP body after what is buffered.
    pub(crate) async fn close(self, reason: CloseReason) {
        match self {
            Transport::Ws(mut ws) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    if ws.send(Message::Close(Some(reason.frame()))).await.is_ok() {
                        // Read until the client's close frame completes the handshake.
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                })
                .await;
            }
            Transport::Http(mut body) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, body.write()).await;
            }
        }
    }

    /// Ends the connection improperly: no close frame, no final chunk; unsent buffered data is lost.
    pub(crate) fn abort(self) {
        match self {
            // Dropping the socket closes the TCP connection without a close frame.
            Transport::Ws(ws) => drop(ws),
            Transport::Http(mut body) => {
                if let Some(abort) = body.abort.take() {
                    let _ = abort.send(());
                }
            }
        }
    }
}

fn parse_control(text: &str) -> Inbound {
    #[derive(serde::Deserialize)]
    struct Control {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        after: Option<u64>,
    }
    match serde_json::from_str::<Control>(text) {
        Ok(c) if c.kind == "subscribe" => Inbound::Subscribe(c.after),
        Ok(c) if c.kind == "ping" => Inbound::Ping,
        _ => Inbound::Other,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HttpFormat {
    Sse,
    Ndjson,
}

/// The writing half of a streamed HTTP response body.
pub(crate) struct HttpBody {
    format: HttpFormat,
    buf: BytesMut,
    tx: mpsc::Sender<Bytes>,
    abort: Option<oneshot::Sender<()>>,
}

impl HttpBody {
    /// A body writer and the response body it feeds.
    pub(crate) fn new(format: HttpFormat) -> (HttpBody, Body) {
        let (tx, rx) = mpsc::channel(4);
        let (abort_tx, abort_rx) = oneshot::channel();
        let mut buf = BytesMut::with_capacity(HTTP_CHUNK * 2);
        if format == HttpFormat::Sse {
            // A comment first, so clients see the stream open before the first event.
            buf.put_slice(b": sluice simulate\n\n");
        }
        let stream = BodyStream { rx, abort: Some(abort_rx), done: false };
        let body = HttpBody { format, buf, tx, abort: Some(abort_tx) };
        (body, Body::from_stream(stream))
    }

    async fn write_if_full(&mut self) -> Result<(), Gone> {
        if self.buf.len() >= HTTP_CHUNK { self.write().await } else { Ok(()) }
    }

    async fn write(&mut self) -> Result<(), Gone> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        if self.buf.capacity() < HTTP_CHUNK {
            self.buf.reserve(HTTP_CHUNK * 2);
        }
        self.tx.send(chunk).await.map_err(|_| Gone)
    }
}

/// The response body: chunks from the session, or an error on abort, which makes the HTTP server drop the
/// connection without finishing the body.
struct BodyStream {
    rx: mpsc::Receiver<Bytes>,
    abort: Option<oneshot::Receiver<()>>,
    done: bool,
}

impl Stream for BodyStream {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(abort) = self.abort.as_mut() {
            match Pin::new(abort).poll(cx) {
                Poll::Ready(Ok(())) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(io::Error::other("simulated abort"))));
                }
                // The session ended without aborting: just drain what it wrote.
                Poll::Ready(Err(_)) => self.abort = None,
                Poll::Pending => {}
            }
        }
        self.rx.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}
