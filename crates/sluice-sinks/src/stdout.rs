//! The stdout sink: one NDJSON line per record on standard output (see the crate's line
//! format: JSON payloads as they are, anything else as `{"payload_base64": …}`). Records are
//! written in batches and acknowledged once the batch is flushed.

use std::path::Path;

use serde::Deserialize;
use sluice_flow::{Ack, BoxFuture, FlowError, Sink, SinkContext};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most records written per flush.
const BATCH: usize = 4096;

/// Writes records to standard output.
///
/// ```toml
/// [sinks.console]
/// type = "stdout"
/// inputs = ["telemetry"]
/// metadata = false
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// Write each record as an object with its origin, `received_ms` and the payload as
    /// `data` (see the file sink). Default false.
    #[serde(default)]
    pub metadata: bool,
}

/// Builds the sink.
pub fn build(name: &str, config: StdoutConfig, _data_dir: &Path) -> Result<Box<dyn Sink>, FlowError> {
    Ok(Box::new(StdoutSink { name: name.to_owned(), out: Box::new(tokio::io::stdout()), metadata: config.metadata }))
}

/// The same sink writing to any writer (tests, embedding).
pub fn to_writer(name: &str, out: impl AsyncWrite + Send + Unpin + 'static) -> Box<dyn Sink> {
    Box::new(StdoutSink { name: name.to_owned(), out: Box::new(out), metadata: false })
}

struct StdoutSink {
    name: String,
    out: Box<dyn AsyncWrite + Send + Unpin>,
    metadata: bool,
}

impl Sink for StdoutSink {
    fn run(self: Box<Self>, ctx: SinkContext) -> BoxFuture<Result<(), FlowError>> {
        Box::pin(run(*self, ctx))
    }
}

async fn run(sink: StdoutSink, ctx: SinkContext) -> Result<(), FlowError> {
    let StdoutSink { name, mut out, metadata } = sink;
    let SinkContext { mut records, acks, shutdown, .. } = ctx;
    let stop = crate::file::stopped(shutdown);
    tokio::pin!(stop);
    let mut batch = Vec::with_capacity(BATCH);
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            n = records.recv_many(&mut batch, BATCH) => if n == 0 { return Ok(()) },
        }
        buf.clear();
        for r in &batch {
            crate::line::encode_record(r, metadata, &mut buf);
        }
        let written = async {
            out.write_all(&buf).await?;
            out.flush().await
        }
        .await;
        if let Err(e) = written {
            return Err(FlowError::Fatal { component: name, message: format!("writing to stdout: {e}") });
        }
        let _ = acks.send(Ack::Delivered(batch.drain(..).map(|r| r.id).collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_flow::{DeadLetters, Record};
    use tokio::io::AsyncReadExt;
    use tokio::sync::{mpsc, watch};

    #[tokio::test]
    async fn writes_lines_and_acks_after_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (w, mut r) = tokio::io::duplex(1 << 20);
        let sink = to_writer("out", w);
        let (tx, rx) = mpsc::channel(16);
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let (_stop_tx, stop_rx) = watch::channel(false);
        let ctx = SinkContext {
            name: "out".into(),
            records: rx,
            acks: ack_tx,
            dead_letters: DeadLetters::new(dir.path(), "out"),
            shutdown: stop_rx,
            output: None,
        };
        let task = tokio::spawn(sink.run(ctx));
        for (id, p) in [(1, &b"{\"a\":1}"[..]), (2, b"text")] {
            tx.send(Record { id, payload: Bytes::from_static(p), received_ms: 0, origin: None }).await.expect("send");
        }
        drop(tx);
        task.await.expect("join").expect("run");
        let mut acked = Vec::new();
        while let Ok(Ack::Delivered(ids)) = ack_rx.try_recv() {
            acked.extend(ids);
        }
        assert_eq!(acked, vec![1, 2]);
        let mut text = String::new();
        r.read_to_string(&mut text).await.expect("read");
        assert_eq!(text, "{\"a\":1}\n{\"payload_base64\":\"dGV4dA==\"}\n");
    }

    #[test]
    fn config_refuses_options() {
        assert!(toml::from_str::<StdoutConfig>("").is_ok());
        assert!(toml::from_str::<StdoutConfig>("pretty = true").is_err());
    }
}
