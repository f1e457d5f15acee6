//! Reaching the function: a pool of long-lived processes speaking JSON lines, or an HTTP
//! endpoint. Either way one call is one invocation, bounded by `timeout` and `concurrency`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

/// Extra time a freshly started process has for its first answer (Lambda's init phase limit).
pub const INIT_ALLOWANCE: Duration = Duration::from_secs(10);

/// Longest answer line read from a process (a runaway handler must not exhaust memory).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Why an invocation failed (all of them are Lambda "function errors").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionError {
    /// The function raised: `{"error": …}` from a process, or a non-2xx HTTP status.
    Raised(String),
    /// No answer within `timeout`.
    Timeout,
    /// The process exited or could not be started, or the endpoint could not be reached.
    Crashed(String),
    /// An answer that is not the protocol's.
    Invalid(String),
}

impl FunctionError {
    /// A metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            FunctionError::Raised(_) => "raised",
            FunctionError::Timeout => "timeout",
            FunctionError::Crashed(_) => "crashed",
            FunctionError::Invalid(_) => "invalid_response",
        }
    }
}

impl std::fmt::Display for FunctionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FunctionError::Raised(m) => write!(f, "the function raised: {m}"),
            FunctionError::Timeout => write!(f, "the function timed out"),
            FunctionError::Crashed(m) => write!(f, "the function crashed: {m}"),
            FunctionError::Invalid(m) => write!(f, "invalid answer: {m}"),
        }
    }
}

/// A function to invoke.
pub enum Function {
    /// Long-lived child processes.
    Processes(ProcessPool),
    /// An HTTP endpoint.
    Http {
        /// Shared client (`timeout` set on it).
        client: reqwest::Client,
        /// Where events are POSTed.
        url: String,
        /// `concurrency`.
        permits: Semaphore,
    },
}

impl Function {
    /// Invokes with one event (serialized JSON, no newline) and returns the function's result.
    pub async fn invoke(&self, event: Vec<u8>, timeout: Duration) -> Result<Value, FunctionError> {
        match self {
            Function::Processes(pool) => pool.invoke(event, timeout).await,
            Function::Http { client, url, permits } => {
                let _permit = permits.acquire().await.map_err(|e| FunctionError::Crashed(e.to_string()))?;
                let call = async {
                    let resp = client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(event)
                        .send()
                        .await
                        .map_err(|e| {
                            if e.is_timeout() { FunctionError::Timeout } else { FunctionError::Crashed(e.to_string()) }
                        })?;
                    let status = resp.status();
                    let body = resp.bytes().await.map_err(|e| FunctionError::Crashed(e.to_string()))?;
                    if !status.is_success() {
                        let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
                        return Err(FunctionError::Raised(format!("HTTP {status}: {text}")));
                    }
                    if body.iter().all(u8::is_ascii_whitespace) {
                        return Ok(Value::Null);
                    }
                    serde_json::from_slice(&body).map_err(|e| FunctionError::Invalid(format!("not JSON: {e}")))
                };
                tokio::time::timeout(timeout, call).await.unwrap_or(Err(FunctionError::Timeout))
            }
        }
    }
}

/// A started handler process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

/// Up to `concurrency` long-lived processes of `command`, started on demand. A process that
/// crashes, times out or breaks the protocol is killed and replaced by a fresh one on the next
/// invocation that needs it.
pub struct ProcessPool {
    sink: String,
    command: Vec<String>,
    working_dir: Option<PathBuf>,
    permits: Semaphore,
    idle: Mutex<Vec<Worker>>,
}

impl ProcessPool {
    /// A pool for `command` (program and arguments).
    pub fn new(sink: &str, command: Vec<String>, working_dir: Option<PathBuf>, concurrency: usize) -> ProcessPool {
        ProcessPool {
            sink: sink.to_owned(),
            command,
            working_dir,
            permits: Semaphore::new(concurrency),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn spawn(&self) -> Result<Worker, FunctionError> {
        let (program, args) =
            self.command.split_first().ok_or_else(|| FunctionError::Crashed("empty command".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        if let Some(dir) = &self.working_dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|e| FunctionError::Crashed(format!("cannot start {program:?}: {e}")))?;
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(FunctionError::Crashed("no pipes to the process".into()));
        };
        metrics::counter!("sluice_handler_processes_started_total", "sink" => self.sink.clone()).increment(1);
        tracing::info!(sink = %self.sink, pid, command = ?self.command, "started a handler process");
        // The handler's stderr is its log: forward it line by line.
        let sink = self.sink.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(sink = %sink, pid, "handler: {line}");
            }
        });
        Ok(Worker { child, stdin, stdout: BufReader::new(stdout), pid })
    }

    async fn invoke(&self, event: Vec<u8>, timeout: Duration) -> Result<Value, FunctionError> {
        let _permit = self.permits.acquire().await.map_err(|e| FunctionError::Crashed(e.to_string()))?;
        let reused = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        // A fresh process answers its first event only after starting up (imports, models):
        // like Lambda's init phase, that is not the function's time.
        let (mut worker, limit) = match reused {
            Some(w) => (w, timeout),
            None => (self.spawn()?, timeout + INIT_ALLOWANCE),
        };
        let result =
            tokio::time::timeout(limit, exchange(&mut worker, event)).await.unwrap_or(Err(FunctionError::Timeout));
        match &result {
            // A raised error is an answer: the process is healthy and stays.
            Ok(_) | Err(FunctionError::Raised(_)) => self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(worker),
            Err(e) => {
                tracing::warn!(sink = %self.sink, pid = worker.pid, error = %e, "replacing the handler process");
                let _ = worker.child.start_kill();
                // Reap it off the invocation's path.
                tokio::spawn(async move {
                    let _ = worker.child.wait().await;
                });
            }
        }
        result
    }

    /// Stops every idle process (closing stdin lets a well-behaved handler exit by itself).
    pub async fn shutdown(&self) {
        let workers: Vec<Worker> = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        for mut w in workers {
            drop(w.stdin);
            if tokio::time::timeout(Duration::from_secs(2), w.child.wait()).await.is_err() {
                let _ = w.child.kill().await;
            }
        }
    }
}

/// Writes one request line and reads one answer line.
async fn exchange(worker: &mut Worker, mut event: Vec<u8>) -> Result<Value, FunctionError> {
    event.push(b'\n');
    let crashed = |e: std::io::Error| FunctionError::Crashed(e.to_string());
    worker.stdin.write_all(&event).await.map_err(crashed)?;
    worker.stdin.flush().await.map_err(crashed)?;
    let mut line = Vec::new();
    let mut limited = (&mut worker.stdout).take(MAX_ANSWER_BYTES as u64);
    let n = limited.read_until(b'\n', &mut line).await.map_err(crashed)?;
    if n == 0 {
        let status =
            worker.child.try_wait().ok().flatten().map(|s| s.to_string()).unwrap_or_else(|| "closed stdout".into());
        return Err(FunctionError::Crashed(format!("exited ({status}) without answering")));
    }
    if line.last() != Some(&b'\n') {
        return Err(FunctionError::Invalid(format!("answer line longer than {MAX_ANSWER_BYTES} bytes or cut")));
    }
    read_envelope(&line)
}

/// Reads the protocol's answer: `{"result": …}` or `{"error": …}`.
pub fn read_envelope(line: &[u8]) -> Result<Value, FunctionError> {
    let v: Value = serde_json::from_slice(line).map_err(|e| FunctionError::Invalid(format!("not a JSON line: {e}")))?;
    let Value::Object(mut o) = v else { return Err(FunctionError::Invalid("not a JSON object".into())) };
    if let Some(err) = o.remove("error") {
        let text = match &err {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return Err(FunctionError::Raised(text));
    }
    match o.remove("result") {
        Some(r) => Ok(r),
        None => Err(FunctionError::Invalid("neither `result` nor `error`".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes() {
        assert_eq!(read_envelope(b"{\"result\":{\"a\":1}}\n"), Ok(serde_json::json!({"a": 1})));
        assert_eq!(read_envelope(b"{\"result\":null}"), Ok(Value::Null));
        assert!(
            matches!(read_envelope(b"{\"error\":{\"errorMessage\":\"boom\"}}"), Err(FunctionError::Raised(m)) if m.contains("boom"))
        );
        assert!(matches!(read_envelope(b"hello"), Err(FunctionError::Invalid(_))));
        assert!(matches!(read_envelope(b"{}"), Err(FunctionError::Invalid(_))));
    }
}
