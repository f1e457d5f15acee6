//! Test helpers: a metrics recorder, the Python feed server, raw loopback HTTP/WebSocket
//! servers, and a harness that runs a source with the pipeline's side of `SourceContext`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use serde_json::Value;
use sluice_flow::{DeadLetters, Event, FlowError, Source, SourceContext};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------- metrics

/// Counts and gauges by `name{label=value,…}` (labels sorted). Install with [`metrics_recorder`].
#[derive(Clone, Default)]
pub struct TestRecorder {
    slots: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
}

fn key_text(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

impl TestRecorder {
    fn slot(&self, key: &Key) -> Arc<AtomicU64> {
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let text = key_text(key.name(), &labels);
        self.slots.lock().unwrap().entry(text).or_default().clone()
    }

    fn read(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.slots.lock().unwrap().get(&key_text(name, labels)).map(|a| a.load(Ordering::SeqCst))
    }

    /// The sum of a counter over every series of `source` (any other labels, e.g. `reason`).
    pub fn total(&self, name: &str, source: &str) -> u64 {
        let prefix = format!("{name}{{");
        let label = format!("source={source}");
        self.slots
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && k[prefix.len()..k.len() - 1].split(',').any(|l| l == label))
            .map(|(_, v)| v.load(Ordering::SeqCst))
            .sum()
    }

    /// A counter's value (0 when never registered).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.read(name, labels).unwrap_or(0)
    }

    /// A gauge's value (0 when never registered).
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.read(name, labels).map(f64::from_bits).unwrap_or(0.0)
    }

    /// Every registered series starting with `prefix`, for failure messages.
    pub fn dump(&self, prefix: &str) -> String {
        let slots = self.slots.lock().unwrap();
        let mut lines: Vec<String> = slots
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| format!("{k} = {}", v.load(Ordering::SeqCst)))
            .collect();
        lines.sort();
        lines.join("\n")
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Installs a recorder for this thread (tests run on a current-thread runtime, so the source's
/// tasks report here too).
pub fn metrics_recorder() -> (TestRecorder, metrics::LocalRecorderGuard<'static>) {
    let recorder: &'static TestRecorder = Box::leak(Box::new(TestRecorder::default()));
    let guard = metrics::set_default_local_recorder(recorder);
    (recorder.clone(), guard)
}

// ---------------------------------------------------------------- building

/// Builds a source of `kind` from a TOML table's text, as a pipeline file would.
pub fn build(kind: &str, name: &str, toml_text: &str) -> Box<dyn Source> {
    try_build(kind, name, toml_text).unwrap_or_else(|e| panic!("build: {e}\n{toml_text}"))
}

/// Like [`build`], returning the error text.
pub fn try_build(kind: &str, name: &str, toml_text: &str) -> Result<Box<dyn Source>, String> {
    let table: toml::Table = toml::from_str(toml_text).map_err(|e| format!("toml: {e}"))?;
    sluice_sources::build_from(name, kind, &table).map_err(|e| match e.field {
        Some(f) => format!("{f}: {}", e.message),
        None => e.message,
    })
}

// ---------------------------------------------------------------- harness

/// A running source with the pipeline's end of its context.
pub struct Run {
    pub events: mpsc::Receiver<Event>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), FlowError>>>,
    pub dir: tempfile::TempDir,
    pub name: String,
}

pub fn start(name: &str, source: Box<dyn Source>, resume_cursor: Option<&str>, capacity: usize) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = mpsc::channel(capacity);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ctx = SourceContext {
        name: name.to_owned(),
        resume_cursor: resume_cursor.map(str::to_owned),
        events: tx,
        dead_letters: DeadLetters::new(dir.path(), name),
        shutdown: shutdown_rx,
        alarms: sluice_flow::Alarms::default(),
        history: None,
        spooled: None,
        delivered: None,
        report: Default::default(),
    };
    let task = tokio::spawn(source.run(ctx));
    Run { events: rx, shutdown: shutdown_tx, task: Some(task), dir, name: name.to_owned() }
}

impl Run {
    /// The next `n` events; panics if they do not all come within `within`.
    pub async fn take(&mut self, n: usize, within: Duration) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + within;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => out.push(e),
                Ok(None) => panic!("{}: the source ended after {} of {n} events", self.name, out.len()),
                Err(_) => panic!(
                    "{}: only {} of {n} events within {within:?}; last: {:?}",
                    self.name,
                    out.len(),
                    out.last().map(|e| String::from_utf8_lossy(&e.payload).into_owned())
                ),
            }
        }
        out
    }

    /// Events until `n` arrived or none came for `quiet` (for diagnostics on failure).
    pub async fn collect(&mut self, n: usize, quiet: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(quiet, self.events.recv()).await {
                Ok(Some(e)) => out.push(e),
                _ => break,
            }
        }
        out
    }

    /// Asserts that nothing more arrives for `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) {
        if let Ok(Some(e)) = tokio::time::timeout(quiet, self.events.recv()).await {
            panic!("{}: unexpected event {:?}", self.name, String::from_utf8_lossy(&e.payload));
        }
    }

    /// Signals shutdown and returns how long the source took to stop.
    pub async fn stop(&mut self) -> Duration {
        let started = std::time::Instant::now();
        let _ = self.shutdown.send(true);
        let task = self.task.take().expect("running");
        let result =
            tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops within 5 s").expect("no panic");
        result.expect("source ended cleanly");
        started.elapsed()
    }

    pub fn dead_letters(&self) -> Vec<Value> {
        let path: PathBuf = self.dir.path().join(format!("{}.ndjson", self.name));
        match std::fs::read_to_string(&path) {
            Ok(text) => text.lines().map(|l| serde_json::from_str(l).expect("dead letter JSON")).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The `seq` of a `{"seq": N, …}` event.
pub fn seq(e: &Event) -> i64 {
    let v: Value = serde_json::from_slice(&e.payload).expect("event is JSON");
    v["seq"].as_i64().expect("seq")
}

/// Asserts events carry seq `from..=to` exactly once, in order.
pub fn assert_sequence(events: &[Event], from: i64, to: i64) {
    let seqs: Vec<i64> = events.iter().map(seq).collect();
    let expected: Vec<i64> = (from..=to).collect();
    if seqs != expected {
        let first_bad = seqs.iter().zip(&expected).position(|(a, b)| a != b);
        panic!(
            "sequence differs (len {} vs {}), first difference at {first_bad:?}: {:?}",
            seqs.len(),
            expected.len(),
            &seqs[first_bad.unwrap_or(0).saturating_sub(3)..seqs.len().min(first_bad.unwrap_or(0) + 5)]
        );
    }
}

// ---------------------------------------------------------------- the Python feed server

pub struct PyServer {
    child: tokio::process::Child,
    pub port: u16,
    log: Arc<Mutex<Vec<Value>>>,
}

fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if venv.exists() { venv } else { PathBuf::from("python3") }
}

impl PyServer {
    /// Starts `tests/feed_server.py` with `args` on a free loopback port.
    pub async fn start(args: &[&str]) -> PyServer {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/feed_server.py");
        let mut child = tokio::process::Command::new(python())
            .arg("-u")
            .arg(&script)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (tests need `websockets`: .venv/bin/pip install -r tests/python/requirements.txt)");
        let stdout = child.stdout.take().expect("stdout");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut port_tx = Some(port_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                if v["ev"] == "listening"
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(v["port"].as_u64().unwrap_or(0) as u16);
                }
                sink.lock().unwrap().push(v);
            }
        });
        let port = tokio::time::timeout(Duration::from_secs(20), port_rx)
            .await
            .expect("feed server starts (is `websockets` installed in .venv?)")
            .expect("feed server reports its port");
        PyServer { child, port, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Logged events of kind `ev`.
    pub fn events(&self, ev: &str) -> Vec<Value> {
        self.log.lock().unwrap().iter().filter(|v| v["ev"] == ev).cloned().collect()
    }

    /// Waits until at least `count` events of kind `ev` were logged.
    pub async fn wait_for(&self, ev: &str, count: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let found = self.events(ev);
            if found.len() >= count {
                return found;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("only {} {ev:?} events within {within:?}: {:?}", found.len(), self.log.lock().unwrap());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

// ---------------------------------------------------------------- raw loopback servers

/// An HTTP request as a raw test server sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// A query parameter.
    pub fn query(&self, name: &str) -> Option<String> {
        let (_, query) = self.path.split_once('?')?;
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
    }
}

/// Reads one request head (and a Content-Length body).
pub async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let mut headers = HashMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let mut body = vec![0u8; headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0)];
    stream.read_exact(&mut body).await.ok()?;
    Some(Request { method, path, headers, body })
}

/// A loopback server that hands each connection (numbered from 1) to `handler`.
pub async fn serve<F, Fut>(handler: F) -> (u16, JoinHandle<()>)
where
    F: Fn(u64, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        let mut n = 0;
        while let Ok((stream, _)) = listener.accept().await {
            n += 1;
            tokio::spawn(handler(n, stream));
        }
    });
    (port, task)
}

/// Writes one HTTP/1.1 chunk.
pub async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out).await
}

/// Answers a WebSocket upgrade (no extensions) and returns the request.
pub async fn accept_websocket(stream: &mut TcpStream) -> Option<Request> {
    use base64::Engine;
    use sha1::Digest;
    let req = read_request(stream).await?;
    let key = req.header("sec-websocket-key")?.to_owned();
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await.ok()?;
    Some(req)
}

/// An unmasked server frame.
pub fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
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
