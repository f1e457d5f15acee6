//! A minimal Kinesis JSON-protocol client over one keep-alive HTTP/1.1 connection.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Kinesis operations the generator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    PutRecords,
    GetRecords,
    GetShardIterator,
    ListShards,
    DescribeStreamSummary,
    CreateStream,
}

impl Op {
    fn target(self) -> &'static str {
        match self {
            Op::PutRecords => "Kinesis_20131202.PutRecords",
            Op::GetRecords => "Kinesis_20131202.GetRecords",
            Op::GetShardIterator => "Kinesis_20131202.GetShardIterator",
            Op::ListShards => "Kinesis_20131202.ListShards",
            Op::DescribeStreamSummary => "Kinesis_20131202.DescribeStreamSummary",
            Op::CreateStream => "Kinesis_20131202.CreateStream",
        }
    }
}

/// Why a call did not produce a 2xx response body.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Connecting, writing or reading failed.
    Transport(String),
    /// No complete response within the request timeout.
    Timeout,
    /// The server answered with a non-2xx status.
    Status {
        status: u16,
        /// The Kinesis error type (`__type`), when the body carried one.
        kind: Option<String>,
        body: String,
    },
}

impl CallError {
    /// The Kinesis error type, e.g. `ResourceNotFoundException`, if known.
    pub(crate) fn kind(&self) -> Option<&str> {
        match self {
            CallError::Status { kind, .. } => kind.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "transport error: {e}"),
            CallError::Timeout => write!(f, "request timed out"),
            CallError::Status { status, kind, body } => match kind {
                Some(k) => write!(f, "HTTP {status} {k}: {body}"),
                None => write!(f, "HTTP {status}: {body}"),
            },
        }
    }
}

impl std::error::Error for CallError {}

/// Headers shared by every request of a run, built once.
#[derive(Clone)]
pub(crate) struct Headers {
    authorization: HeaderValue,
    amz_date: HeaderValue,
    content_type: HeaderValue,
}

impl Headers {
    /// Builds the fake-but-well-formed SigV4 headers for "now".
    pub(crate) fn new() -> Self {
        let (date, stamp) = amz_now();
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDBENCH/{date}/us-east-1/kinesis/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={}",
            "0".repeat(64)
        );
        Headers {
            authorization: HeaderValue::from_str(&auth)
                .unwrap_or_else(|_| HeaderValue::from_static("AWS4-HMAC-SHA256")),
            amz_date: HeaderValue::from_str(&stamp).unwrap_or_else(|_| HeaderValue::from_static("20260101T000000Z")),
            content_type: HeaderValue::from_static("application/x-amz-json-1.1"),
        }
    }
}

/// One benchmark client: its own connection pool holding a single keep-alive connection.
#[derive(Clone)]
pub(crate) struct Kinesis {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    headers: Headers,
    timeout: Duration,
}

static X_AMZ_TARGET: HeaderName = HeaderName::from_static("x-amz-target");
static X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");

impl Kinesis {
    /// A client with its own pool; sequential calls reuse one persistent connection.
    pub(crate) fn new(uri: Uri, headers: Headers, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(30)));
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Kinesis { client, uri, headers, timeout }
    }

    /// POSTs `body` as `op` and returns the whole 2xx response body.
    pub(crate) async fn call(&self, op: Op, body: Bytes) -> Result<Bytes, CallError> {
        match tokio::time::timeout(self.timeout, self.call_inner(op, body)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout),
        }
    }

    async fn call_inner(&self, op: Op, body: Bytes) -> Result<Bytes, CallError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .body(Full::new(body))
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, self.headers.content_type.clone());
        h.insert(AUTHORIZATION, self.headers.authorization.clone());
        h.insert(X_AMZ_DATE.clone(), self.headers.amz_date.clone());
        h.insert(X_AMZ_TARGET.clone(), HeaderValue::from_static(op.target()));
        let resp = self.client.request(req).await.map_err(|e| CallError::Transport(error_chain(&e)))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| CallError::Transport(error_chain(&e)))?.to_bytes();
        if status.is_success() { Ok(body) } else { Err(status_error(status.as_u16(), &body)) }
    }
}

fn status_error(status: u16, body: &[u8]) -> CallError {
    #[derive(serde::Deserialize)]
    struct ErrBody {
        #[serde(rename = "__type")]
        kind: Option<String>,
    }
    let kind = serde_json::from_slice::<ErrBody>(body)
        .ok()
        .and_then(|b| b.kind)
        // AWS sometimes sends "namespace#Type".
        .map(|k| k.rsplit('#').next().unwrap_or_default().to_string());
    let mut text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if body.len() > 300 {
        text.push('…');
    }
    CallError::Status { status, kind, body: text }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// (`YYYYMMDD`, `YYYYMMDDTHHMMSSZ`) for the current UTC time.
fn amz_now() -> (String, String) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let date = format!("{y:04}{m:02}{d:02}");
    let stamp = format!("{date}T{:02}{:02}{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60);
    (date, stamp)
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian, UTC).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn auth_header_shape() {
        let h = Headers::new();
        let auth = h.authorization.to_str().unwrap_or_default();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDBENCH/"));
        assert!(auth.ends_with(&"0".repeat(64)));
        assert_eq!(h.amz_date.len(), 16);
    }

    #[test]
    fn status_error_kind() {
        let e = status_error(400, br#"{"__type":"com.amazon#ResourceNotFoundException","message":"x"}"#);
        assert_eq!(e.kind(), Some("ResourceNotFoundException"));
        let e = status_error(500, b"garbage");
        assert_eq!(e.kind(), None);
    }
}
