//! The HTTP layer: one place for protocol concerns.
//!
//! Every operation is `POST /` with `X-Amz-Target: Kinesis_20131202.<Op>`. This module checks
//! the content type, target, signature headers and body size, decodes the body (JSON or CBOR)
//! into one value tree, dispatches, and writes the answer or the error envelope in the same
//! format with an `x-amzn-RequestId`. `GET /health` and `GET /metrics` serve operations.
//! [`serve`] runs a router on a listener with bounded header reads (HTTP/1.1 and HTTP/2).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;
use metrics::{counter, histogram};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::ApiError;
use crate::input::Fields;
use crate::obj;
use crate::ops;
use crate::state::{Ctx, Shared};
use crate::subscribe;
use crate::value::{self, Format};

const TARGET_PREFIX: &str = "Kinesis_20131202.";

/// How long a request header may take to arrive by default (also how long an idle keep-alive
/// connection is kept).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Timeouts at the HTTP edge.
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    /// A request's header must arrive completely within this, or the connection is closed.
    /// hyper starts the same timer when an HTTP/1.1 keep-alive connection goes idle, so an idle
    /// connection is closed after this long without a new request. HTTP/2 connections are
    /// pinged at this interval and closed when a ping goes unanswered for 20 s.
    pub header_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions { header_timeout: DEFAULT_HEADER_TIMEOUT }
    }
}

/// Serves `router` on `listener` (HTTP/1.1 and HTTP/2) until `stop` turns true; then stops
/// accepting, closes idle connections and waits for the open ones to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    opts: HttpOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        tokio::spawn(serve_connection(stream, router.clone(), opts, graceful.watcher()));
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Returns once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One connection, with hyper's header-read timeout (which needs a timer) and HTTP/2 pings.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    opts: HttpOptions,
    watcher: hyper_util::server::graceful::Watcher,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let seen = Arc::new(AtomicBool::new(false));
    let service = hyper_util::service::TowerToHyperService::new(Seen { router, seen: seen.clone() });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(opts.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(opts.header_timeout)
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
    tokio::pin!(conn);
    // hyper's header timer starts once the protocol is known; the first bytes (up to the
    // length of the HTTP/2 preface) are read by hyper-util's protocol detection, which has no
    // timer. So a connection that has not delivered one request by the timeout is closed too.
    tokio::select! {
        r = &mut conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = tokio::time::sleep(opts.header_timeout) => {}
    }
    if !seen.load(Ordering::Acquire) {
        tracing::debug!(timeout_ms = opts.header_timeout.as_millis() as u64, "no request header in time; closing");
        return;
    }
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The router, noting that a connection delivered a request.
#[derive(Clone)]
struct Seen {
    router: Router,
    seen: Arc<AtomicBool>,
}

impl tower_service::Service<Request<hyper::body::Incoming>> for Seen {
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower_service::Service::<Request<Body>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        self.seen.store(true, Ordering::Release);
        tower_service::Service::call(&mut self.router, req.map(Body::new))
    }
}

/// Builds the router: the API on `POST` (any path), `/health` and `/metrics` on `GET`.
pub fn router(state: Shared, metrics: Option<PrometheusHandle>) -> Router {
    router_with(state, metrics, None)
}

/// [`router`], also answering `DynamoDB_20120810.*` targets from `dynamodb` when given.
pub fn router_with(
    state: Shared,
    metrics: Option<PrometheusHandle>,
    dynamodb: Option<Arc<sluice_dynamodb::Db>>,
) -> Router {
    let metrics = Arc::new(metrics);
    Router::new()
        .route("/health", get(health))
        .route(
            "/metrics",
            get(move |State(st): State<Shared>| {
                let m = metrics.clone();
                async move {
                    metrics::gauge!("sluice_open_iterators").set(st.open_iterators(sluice_core::now_ms()) as f64);
                    metrics::gauge!("sluice_storage_write_failing").set(if st.store.write_failure().is_some() {
                        1.0
                    } else {
                        0.0
                    });
                    match m.as_ref() {
                        Some(h) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response(),
                        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
                    }
                }
            }),
        )
        .fallback(move |st: State<Shared>, req: Request<Body>| {
            let db = dynamodb.clone();
            async move {
                match db {
                    Some(db) if is_dynamodb(req.headers()) => dynamodb_api(st.0, db, req).await,
                    _ => api(st, req).await,
                }
            }
        })
        .with_state(state)
}

/// Whether a request targets the DynamoDB API.
fn is_dynamodb(headers: &HeaderMap) -> bool {
    headers.get("x-amz-target").is_some_and(|v| v.as_bytes().starts_with(sluice_dynamodb::TARGET_PREFIX.as_bytes()))
}

/// A DynamoDB request: the same edge checks as Kinesis (body limit, signature headers and,
/// when configured, SigV4 verification), then [`sluice_dynamodb::Db::handle`] off the reactor.
async fn dynamodb_api(st: Shared, db: Arc<sluice_dynamodb::Db>, req: Request<Body>) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    let op = target.strip_prefix(sluice_dynamodb::TARGET_PREFIX).unwrap_or("").to_owned();
    let label = match sluice_dynamodb::KNOWN_OPS.iter().find(|k| **k == op) {
        Some(k) => format!("DynamoDB.{k}"),
        None => "DynamoDB.unknown".to_owned(),
    };
    let result = dynamodb_handle(&st, db, &parts, body, op).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind,
    };
    counter!("sluice_requests_total", "operation" => label.clone(), "outcome" => outcome).increment(1);
    histogram!("sluice_request_duration_seconds", "operation" => label.clone()).record(started.elapsed().as_secs_f64());
    let (status, body) = match result {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(operation = %label, error = %e, "request failed");
            } else {
                tracing::debug!(operation = %label, error = %e, "request refused");
            }
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, e.body().to_string().into_bytes())
        }
    };
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(sluice_dynamodb::CONTENT_TYPE));
    with_request_id(r)
}

fn dynamo_err(e: ApiError) -> sluice_dynamodb::DynamoError {
    sluice_dynamodb::DynamoError { status: e.status, kind: e.kind, message: e.message, item: None }
}

async fn dynamodb_handle(
    st: &Shared,
    db: Arc<sluice_dynamodb::Db>,
    parts: &axum::http::request::Parts,
    body: Body,
    op: String,
) -> Result<Vec<u8>, sluice_dynamodb::DynamoError> {
    if parts.method != Method::POST {
        return Err(sluice_dynamodb::DynamoError::unknown_operation(format!("Unsupported method {}", parts.method)));
    }
    let limit = st.config.max_body_bytes;
    let too_large = || dynamo_err(ApiError::too_large(format!("Request body is larger than {limit} bytes.")));
    if declared_length(&parts.headers).is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    if !sluice_dynamodb::KNOWN_OPS.contains(&op.as_str()) {
        return Err(sluice_dynamodb::DynamoError::unknown_operation(format!(
            "Unknown operation {}{op}",
            sluice_dynamodb::TARGET_PREFIX
        )));
    }
    let region = check_auth(&parts.headers, parts.uri.query()).map_err(dynamo_err)?;
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(sluice_dynamodb::DynamoError::serialization(format!("Could not read the request body: {e}")));
        }
    };
    if let Some(creds) = &st.config.credentials {
        if parts.uri.query().is_some_and(|q| q.contains("X-Amz-Algorithm=")) {
            return Err(dynamo_err(ApiError::invalid_signature(
                "Presigned (query-string) requests are not accepted; sign the Authorization header.",
            )));
        }
        crate::sigv4::verify(creds, parts, &bytes, sluice_core::now_ms()).map_err(dynamo_err)?;
    }
    let ctx = sluice_dynamodb::Ctx {
        region: region.unwrap_or_else(|| st.config.default_region.clone()),
        now_ms: sluice_core::now_ms(),
    };
    let out = tokio::task::spawn_blocking(move || db.handle(&op, &bytes, &ctx))
        .await
        .map_err(|e| sluice_dynamodb::DynamoError::internal(format!("The request handler failed: {e}")))??;
    serde_json::to_vec(&out).map_err(|e| sluice_dynamodb::DynamoError::internal(e.to_string()))
}

/// `/health`: 503 with the reasons while the store cannot write (a full disk, an I/O error:
/// until an append succeeds again), else 200; `{"status", "reasons", "streams"}` either way.
async fn health(State(st): State<Shared>) -> Response {
    let (code, body) = health_body(&st);
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn health_body(st: &Shared) -> (StatusCode, serde_json::Value) {
    let failure = st.store.write_failure();
    metrics::gauge!("sluice_storage_write_failing").set(if failure.is_some() { 1.0 } else { 0.0 });
    let streams = st.store.catalog().streams.len();
    match failure {
        None => (StatusCode::OK, serde_json::json!({"status": "ok", "reasons": [], "streams": streams})),
        Some(detail) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "status": "unavailable",
                "reasons": [{"reason": "store_write_failed", "detail": format!("appends fail: {detail}")}],
                "streams": streams,
            }),
        ),
    }
}

fn format_of(headers: &HeaderMap) -> Option<Format> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match ct.as_str() {
        "application/x-amz-json-1.1" | "application/x-amz-json-1.0" | "application/json" => Some(Format::Json),
        "application/x-amz-cbor-1.1" | "application/cbor" => Some(Format::Cbor),
        _ => None,
    }
}

/// Checks that SigV4 headers are present and well formed (as kinesalite and the service do
/// before looking at the signature), and returns the region of the credential scope.
fn check_auth(headers: &HeaderMap, query: Option<&str>) -> Result<Option<String>, ApiError> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let query_auth = query.is_some_and(|q| q.contains("X-Amz-Algorithm="));
    match (auth, query_auth) {
        (Some(_), true) => Err(ApiError::invalid_signature(
            "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header.",
        )),
        (None, true) => {
            // Query-string (presigned) authentication: every part must be there.
            let q = query.unwrap_or("");
            let has = |p: &str| q.split('&').any(|kv| kv.split_once('=').is_some_and(|(k, v)| k == p && !v.is_empty()));
            let missing: Vec<String> =
                ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-SignedHeaders", "X-Amz-Date"]
                    .iter()
                    .filter(|p| !has(p))
                    .map(|p| format!("AWS query-string parameters must include '{p}'."))
                    .collect();
            if missing.is_empty() {
                Ok(None)
            } else {
                Err(ApiError::incomplete_signature(format!(
                    "{} Re-examine the query-string parameters.",
                    missing.join(" ")
                )))
            }
        }
        (None, false) => Err(ApiError::missing_auth("Missing Authentication Token")),
        (Some(a), false) => {
            let mut missing = Vec::new();
            let cred = a.split_once("Credential=").map(|(_, rest)| rest.split([',', ' ']).next().unwrap_or(""));
            if cred.is_none_or(str::is_empty) {
                missing.push("Credential");
            }
            if !a.contains("Signature=") {
                missing.push("Signature");
            }
            if !a.contains("SignedHeaders=") {
                missing.push("SignedHeaders");
            }
            if !headers.contains_key("x-amz-date") && !headers.contains_key(header::DATE) {
                missing.push("X-Amz-Date");
            }
            if !missing.is_empty() {
                let list: Vec<String> =
                    missing.iter().map(|m| format!("Authorization header requires '{m}' parameter.")).collect();
                return Err(ApiError::incomplete_signature(format!("{} Authorization={a}", list.join(" "))));
            }
            // Credential=AKID/DATE/REGION/SERVICE/aws4_request
            Ok(cred.and_then(|c| c.split('/').nth(2)).filter(|r| !r.is_empty()).map(str::to_owned))
        }
    }
}

fn error_response(format: Format, e: &ApiError) -> Response {
    // The service's deserializer answers with `Message`; everything else with `message`.
    let key = if e.kind == "SerializationException" { "Message" } else { "message" };
    let body = obj![("__type", e.kind), (key, e.message.clone())].encode(format);
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    h.insert("x-amzn-ErrorType", HeaderValue::from_static(e.kind));
    r
}

fn with_request_id(mut r: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        r.headers_mut().insert("x-amzn-RequestId", v);
    }
    r
}

/// What the service adds to every answer: a request id, an `x-amz-id-2` (not on a CORS
/// preflight), and for a browser (a request with `Origin`) the CORS headers.
fn with_ids(r: Response, cors: bool, preflight: bool) -> Response {
    use base64::Engine;
    let mut r = with_request_id(r);
    let h = r.headers_mut();
    if !preflight {
        let id2: [u8; 72] = std::array::from_fn(|_| rand::random::<u8>());
        if let Ok(v) = HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(id2)) {
            h.insert("x-amz-id-2", v);
        }
    }
    if cors {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        if !preflight {
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(
                    "x-amzn-RequestId,x-amzn-ErrorType,x-amz-request-id,x-amz-id-2,x-amzn-ErrorMessage,Date",
                ),
            );
        }
    }
    r
}

/// A CORS preflight (`OPTIONS` with `Origin`): what the browser asked for is allowed, for two
/// days, with an empty 200.
fn preflight(headers: &HeaderMap) -> Response {
    let mut r = (StatusCode::OK, "").into_response();
    let h = r.headers_mut();
    if let Some(v) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
    }
    if let Some(v) = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v.clone());
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("172800"));
    r
}

async fn api(State(st): State<Shared>, req: Request<Body>) -> Response {
    let cors = req.headers().contains_key(header::ORIGIN);
    if cors && req.method() == Method::OPTIONS {
        return with_ids(preflight(req.headers()), true, true);
    }
    with_ids(api_inner(st, req).await, cors, false)
}

async fn api_inner(st: Shared, req: Request<Body>) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        // The service answers any other method before it looks at anything else.
        counter!("sluice_requests_total", "operation" => "unknown", "outcome" => "AccessDeniedException").increment(1);
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "application/xml")],
            "<AccessDeniedException>\n  <Message>Unable to determine service/operation name to be authorized</Message>\n</AccessDeniedException>\n",
        )
            .into_response();
    }
    let Some(format) = format_of(&parts.headers) else {
        // The service answers an unknown content type like an unknown resource.
        let r = (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "application/xml")], "<UnknownOperationException/>\n");
        counter!("sluice_requests_total", "operation" => "unknown", "outcome" => "UnknownOperationException")
            .increment(1);
        return r.into_response();
    };
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    let op = target.strip_prefix(TARGET_PREFIX).unwrap_or("").to_owned();
    let op_label: &'static str = KNOWN_OPS.iter().find(|k| **k == op).copied().unwrap_or("unknown");
    let result = handle(&st, &parts, body, format, &op).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind,
    };
    counter!("sluice_requests_total", "operation" => op_label, "outcome" => outcome).increment(1);
    histogram!("sluice_request_duration_seconds", "operation" => op_label).record(started.elapsed().as_secs_f64());
    match result {
        Ok(r) => r,
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(operation = op_label, error = %e, "request failed");
            } else {
                tracing::debug!(operation = op_label, error = %e, "request refused");
            }
            error_response(format, &e)
        }
    }
}

/// Every operation sluice answers.
pub const KNOWN_OPS: [&str; 29] = [
    "CreateStream",
    "DeleteStream",
    "DescribeStream",
    "DescribeStreamSummary",
    "ListStreams",
    "IncreaseStreamRetentionPeriod",
    "DecreaseStreamRetentionPeriod",
    "AddTagsToStream",
    "ListTagsForStream",
    "RemoveTagsFromStream",
    "EnableEnhancedMonitoring",
    "DisableEnhancedMonitoring",
    "StartStreamEncryption",
    "StopStreamEncryption",
    "DescribeLimits",
    "UpdateStreamMode",
    "ListShards",
    "SplitShard",
    "MergeShards",
    "UpdateShardCount",
    "PutRecord",
    "PutRecords",
    "GetShardIterator",
    "GetRecords",
    "RegisterStreamConsumer",
    "DescribeStreamConsumer",
    "ListStreamConsumers",
    "DeregisterStreamConsumer",
    "SubscribeToShard",
];

async fn handle(
    st: &Shared,
    parts: &axum::http::request::Parts,
    body: Body,
    format: Format,
    op: &str,
) -> Result<Response, ApiError> {
    let limit = st.config.max_body_bytes;
    // A declared length over the limit is refused before any of the body is read.
    if declared_length(&parts.headers).is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(format!("Request body is larger than {limit} bytes.")));
    }
    let known = KNOWN_OPS.contains(&op);
    let unknown = || {
        let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
        ApiError::unknown_operation(if target.is_empty() {
            "Missing X-Amz-Target header".to_owned()
        } else {
            format!("Unknown operation {target}")
        })
    };
    // AWS's order: the body (empty, unparsable), then the operation, then authentication.
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::too_large(format!("Request body is larger than {limit} bytes.")));
        }
        Err(e) => return Err(ApiError::serialization(format!("Could not read the request body: {e}"))),
    };
    if bytes.is_empty() {
        if !known {
            return Err(unknown());
        }
        return Err(ApiError::serialization("The request body is empty; expected a structure."));
    }
    if op == "PutRecords" && format == Format::Json && st.config.credentials.is_none() {
        // The usual request takes the fast path; anything unusual falls through to the
        // general path below, which answers it in AWS's order.
        if let Ok(region) = check_auth(&parts.headers, parts.uri.query()) {
            let ctx = Ctx {
                format,
                region: region.clone().unwrap_or_else(|| st.config.default_region.clone()),
                now_ms: sluice_core::now_ms(),
            };
            if let Some(result) = ops::records::put_records_fast(st, &ctx, &bytes).await {
                let mut r = (StatusCode::OK, raw_body(result?)).into_response();
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
                return Ok(r);
            }
        }
    }
    let value = value::decode(format, &bytes)
        .map_err(|e| ApiError::serialization(format!("Could not parse the request: {e}")))?;
    if !known {
        return Err(unknown());
    }
    let region = check_auth(&parts.headers, parts.uri.query())?;
    if let Some(creds) = &st.config.credentials {
        if parts.uri.query().is_some_and(|q| q.contains("X-Amz-Algorithm=")) {
            return Err(ApiError::invalid_signature(
                "Presigned (query-string) requests are not accepted; sign the Authorization header.",
            ));
        }
        crate::sigv4::verify(creds, parts, &bytes, sluice_core::now_ms())?;
    }
    // Types first, as the service's deserializer: before any constraint or semantic check.
    crate::shapes::check(op, &value)?;
    let fields = Fields::new(&value, format, "request")?;
    let ctx = Ctx {
        format,
        region: region.unwrap_or_else(|| st.config.default_region.clone()),
        now_ms: sluice_core::now_ms(),
    };
    if op == "SubscribeToShard" {
        let rx = subscribe::start(st, &ctx, fields)?;
        let mut r = Response::new(subscribe::body(rx));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/vnd.amazon.eventstream"));
        return Ok(r);
    }
    let out = ops::dispatch(st, &ctx, op, fields).await?;
    let body = match out {
        value::Out::Null => Vec::new(),
        other => raw_body_in(other, format),
    };
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    Ok(r)
}

/// The request's `Content-Length`, when it declares a valid one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn raw_body(out: value::Out) -> Vec<u8> {
    raw_body_in(out, Format::Json)
}

fn raw_body_in(out: value::Out, format: Format) -> Vec<u8> {
    match out {
        value::Out::RawJson(raw) => raw,
        other => other.encode(format),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_header_checks() {
        let mut h = HeaderMap::new();
        assert_eq!(check_auth(&h, None).map_err(|e| e.kind), Err("MissingAuthenticationTokenException"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=AK/20260101/eu-west-1/kinesis/aws4_request, SignedHeaders=host, Signature=00"));
        assert_eq!(check_auth(&h, None).map_err(|e| e.kind), Err("IncompleteSignatureException"));
        h.insert("x-amz-date", HeaderValue::from_static("20260101T000000Z"));
        assert_eq!(check_auth(&h, None), Ok(Some("eu-west-1".into())));
        assert_eq!(check_auth(&h, Some("X-Amz-Algorithm=x")).map_err(|e| e.kind), Err("InvalidSignatureException"));
    }
}
