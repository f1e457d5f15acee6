//! The HTTP side: one loopback port serving `/ws`, `/sse`, `/ndjson`, `/health` and `/stats`, and the
//! [`Simulator`] handle that starts the generator and the server and stops both.
//!
//! Handlers only decode the request (query string, `Last-Event-ID`), subscribe to the feed and hand the
//! connection to a session; everything after that lives in `session`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ConnOptions, SimConfig};
use crate::feed::{self, Feed};
use crate::session;
use crate::stats::SimStats;
use crate::transport::{HttpBody, HttpFormat, Transport};

/// What every handler and session shares.
pub(crate) struct Shared {
    pub feed: Arc<Feed>,
    pub cfg: SimConfig,
    /// Turns true once, when the simulator stops.
    pub shutdown: watch::Receiver<bool>,
    /// Cuts made in `mixed` mode so far; even ones close, odd ones abort.
    pub mixed_cuts: AtomicU64,
}

impl Shared {
    fn stats(&self) -> SimStats {
        let oldest = self.feed.history().oldest().unwrap_or(0);
        self.feed.counters.snapshot(oldest)
    }
}

/// A running simulator: the generator plus the server on one loopback port.
///
/// Dropping it stops generation and closes the feed connections; [`Simulator::shutdown`] also waits for
/// that to finish.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    generator: Option<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
}

/// How long [`Simulator::shutdown`] waits for connections to close before it drops them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl Simulator {
    /// Binds `listen` (a loopback address; port 0 picks a free one) and starts generating and serving.
    pub async fn start(cfg: SimConfig, listen: SocketAddr) -> io::Result<Simulator> {
        cfg.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if !listen.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the simulator only listens on loopback addresses, not {}", listen.ip()),
            ));
        }
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (stop, shutdown) = watch::channel(false);
        let feed = Arc::new(Feed::new(cfg.history));
        let generator = tokio::spawn(feed::generate(Arc::clone(&feed), cfg.generator(), shutdown.clone()));
        let shared = Arc::new(Shared { feed, cfg, shutdown: shutdown.clone(), mixed_cuts: AtomicU64::new(0) });
        let app = router(Arc::clone(&shared));
        let listener = listener.tap_io(|tcp| {
            // Live messages are small and latency matters more than packet count.
            let _ = tcp.set_nodelay(true);
        });
        let mut stopped = shutdown;
        let server = tokio::spawn(async move {
            let graceful = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(graceful).await {
                tracing::warn!(%error, "simulator server stopped");
            }
        });
        Ok(Simulator { addr, shared, stop, generator: Some(generator), server: Some(server) })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Messages generated so far (equal to the newest `seq`).
    pub fn generated(&self) -> u64 {
        self.shared.feed.counters.generated()
    }

    /// All counters, as `GET /stats` serves them.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// `ws://ADDR/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://ADDR/sse`
    pub fn sse_url(&self) -> String {
        format!("http://{}/sse", self.addr)
    }

    /// `http://ADDR/ndjson`
    pub fn ndjson_url(&self) -> String {
        format!("http://{}/ndjson", self.addr)
    }

    /// Stops generating, closes every feed connection (close frame / end of body) and stops serving.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(generator) = self.generator.take() {
            let _ = generator.await;
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.shared.feed.counters.clients() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout_at(deadline, &mut server).await.is_err()
        {
            server.abort();
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ws", get(ws_feed))
        .route("/sse", get(sse_feed))
        .route("/ndjson", get(ndjson_feed))
        .route("/health", get(|| async { "ok\n" }))
        .route("/stats", get(stats))
        .with_state(shared)
}

async fn ws_feed(State(shared): State<Arc<Shared>>, uri: Uri, upgrade: WebSocketUpgrade) -> Response {
    let opts = match ConnOptions::from_query(&shared.cfg, uri.query()) {
        Ok(opts) => opts,
        Err(message) => return bad_request(message),
    };
    let rx = shared.feed.subscribe();
    upgrade.on_upgrade(move |ws| session::run(shared, Transport::Ws(Box::new(ws)), opts, rx))
}

async fn sse_feed(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let mut opts = match ConnOptions::from_query(&shared.cfg, uri.query()) {
        Ok(opts) => opts,
        Err(message) => return bad_request(message),
    };
    // A reconnecting EventSource repeats its original URL and adds the newer Last-Event-ID: it wins.
    let last_event_id =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if last_event_id.is_some() {
        opts.after = last_event_id;
    }
    stream(shared, opts, HttpFormat::Sse)
}

async fn ndjson_feed(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    match ConnOptions::from_query(&shared.cfg, uri.query()) {
        Ok(opts) => stream(shared, opts, HttpFormat::Ndjson),
        Err(message) => bad_request(message),
    }
}

fn stream(shared: Arc<Shared>, opts: ConnOptions, format: HttpFormat) -> Response {
    let rx = shared.feed.subscribe();
    let (writer, body) = HttpBody::new(format);
    tokio::spawn(session::run(shared, Transport::Http(writer), opts, rx));
    let content_type = match format {
        HttpFormat::Sse => "text/event-stream",
        HttpFormat::Ndjson => "application/x-ndjson",
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    match serde_json::to_vec(&shared.stats()) {
        Ok(json) => {
            let mut response = Response::new(Body::from(json));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message + "\n").into_response()
}
