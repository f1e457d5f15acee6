//! The file sink: records as NDJSON lines in rotating files, optionally gzip-compressed.
//!
//! **Format.** One line per record: a payload that is UTF-8 JSON is written as it is (line
//! breaks between tokens become spaces), anything else as `{"payload_base64":"…"}`.
//!
//! **Files.** `<path>/<prefix>-<YYYYMMDD>T<HHMMSS>Z-<n>.ndjson` (`.ndjson.gz` with gzip), named
//! after the UTC time the file was opened. While a file is being written it carries an extra
//! `.part` suffix; it is renamed to its final name when it reaches `max_bytes` or `max_age`
//! (checked also while idle) or when the sink stops, so readers can pick up every file
//! without `.part`. No empty files are written.
//!
//! **Durability.** Records are written in batches (whatever has arrived while the previous
//! batch was being written); each batch is written, then fsynced, and only then acknowledged.
//! With gzip each batch is one complete gzip member (concatenated members are one valid gzip
//! file for `gzip -d`, `zcat`, Python's `gzip`, …), so a file is readable up to its last
//! acknowledged record at any time. After a crash, leftover `.part` files of this prefix are
//! cut back to their last complete line or member and renamed on the next start; records that
//! were cut were never acknowledged and are written again from the spool.
//!
//! A write or fsync error (disk full …) closes the file at its last good length and retries
//! the batch in a new file with backoff, forever; nothing is acknowledged meanwhile.
//!
//! **Exactly once across a kill.** After each batch is durable, the sink records in
//! `<path>/.<prefix>.written` (replaced atomically) the file it wrote, that file's length, and
//! per input the newest record id it holds. On start, the file named there is cut back to that
//! length, `.part` files opened after it are removed (nothing in them was acknowledged), and
//! records the pipeline hands over again whose ids are not above the recorded ones are
//! acknowledged without being written a second time (counted in
//! `sluice_file_sink_skipped_total`). So a record written before a `kill -9` but not yet
//! acknowledged is not duplicated. (After a power cut, the mark may lag the files: records may
//! then repeat, never go missing.)

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice_flow::{Ack, BoxFuture, FlowError, Sink, SinkContext};
use tokio::sync::watch;

/// Most records per write batch.
const BATCH: usize = 10_000;

/// Writes records to rotating NDJSON files.
///
/// ```toml
/// [sinks.archive]
/// type = "file"
/// inputs = ["telemetry"]
/// path = "archive"
/// compression = "gzip"
/// max_bytes = 104857600
/// max_age = "1h"
/// metadata = false
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Directory the files go to (created if missing). A relative path is taken relative to
    /// the pipeline's data directory.
    pub path: PathBuf,
    /// Start of every file name. Default: the sink's name.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `"none"` (default) or `"gzip"`.
    #[serde(default)]
    pub compression: FileCompression,
    /// Start a new file once the current one holds this many bytes (as stored, so compressed
    /// bytes with gzip). Default 134217728 (128 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Start a new file once the current one is this old, e.g. `"15m"`. Default `"1h"`.
    #[serde(default = "default_max_age", with = "sluice_core::duration")]
    pub max_age: Duration,
    /// Write each record as an object with its origin (stream, shard, sequence number, ...,
    /// when a `kinesis` source read it), `received_ms` and the payload as `data`. Default false.
    #[serde(default)]
    pub metadata: bool,
}

/// Compression of the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileCompression {
    /// Plain `.ndjson`.
    #[default]
    None,
    /// `.ndjson.gz`, one gzip member per written batch.
    Gzip,
}

fn default_max_bytes() -> u64 {
    128 * 1024 * 1024
}
fn default_max_age() -> Duration {
    Duration::from_secs(3600)
}

/// Checks the config and builds the sink.
pub fn build(name: &str, config: FileConfig, data_dir: &Path) -> Result<Box<dyn Sink>, FlowError> {
    let prefix = config.prefix.clone().unwrap_or_else(|| name.to_owned());
    if prefix.is_empty() || prefix.contains(['/', '\\']) || prefix.starts_with('.') {
        return Err(crate::config_error(
            name,
            format!("`prefix` {prefix:?} must be a plain, non-hidden file name part"),
        ));
    }
    if config.max_bytes == 0 || config.max_age.is_zero() {
        return Err(crate::config_error(name, "`max_bytes` and `max_age` must be above zero"));
    }
    let dir = if config.path.is_absolute() { config.path.clone() } else { data_dir.join(&config.path) };
    let writer = Writer {
        dir,
        prefix,
        gzip: config.compression == FileCompression::Gzip,
        max_bytes: config.max_bytes,
        max_age: config.max_age,
        current: None,
        seq: 0,
        marks: Default::default(),
    };
    Ok(Box::new(FileSink { name: name.to_owned(), writer, metadata: config.metadata }))
}

struct FileSink {
    name: String,
    writer: Writer,
    metadata: bool,
}

impl Sink for FileSink {
    fn run(self: Box<Self>, ctx: SinkContext) -> BoxFuture<Result<(), FlowError>> {
        Box::pin(run(*self, ctx))
    }
}

/// Resolves when the pipeline stops (never, if the pipeline dropped its side).
pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs blocking file work off the async threads, handing the writer there and back.
async fn blocking<T: Send + 'static>(
    name: &str,
    writer: Writer,
    f: impl FnOnce(&mut Writer) -> T + Send + 'static,
) -> Result<(Writer, T), FlowError> {
    tokio::task::spawn_blocking(move || {
        let mut w = writer;
        let out = f(&mut w);
        (w, out)
    })
    .await
    .map_err(|e| FlowError::Fatal { component: name.to_owned(), message: format!("file writer failed: {e}") })
}

async fn run(sink: FileSink, ctx: SinkContext) -> Result<(), FlowError> {
    let FileSink { name, writer, metadata } = sink;
    let SinkContext { mut records, acks, shutdown, .. } = ctx;
    let stop = stopped(shutdown);
    tokio::pin!(stop);

    let (mut writer, recovered) = blocking(&name, writer, |w| w.recover()).await?;
    match recovered {
        Ok(0) => {}
        Ok(n) => tracing::info!(sink = %name, files = n, "finished files left open by an earlier run"),
        Err(e) => tracing::warn!(sink = %name, error = %e, "could not finish files left by an earlier run"),
    }

    let mut batch = Vec::with_capacity(1024);
    let mut buf = Vec::new();
    'run: loop {
        let rotate_at = writer.rotate_at().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = &mut stop => break 'run,
            n = records.recv_many(&mut batch, BATCH) => if n == 0 { break 'run },
            _ = sleep_until(rotate_at), if rotate_at.is_some() => {
                let (w, closed) = blocking(&name, writer, |w| w.close()).await?;
                writer = w;
                if let Err(e) = closed {
                    tracing::warn!(sink = %name, error = %e, "could not finish a file");
                }
                continue 'run;
            }
        }
        // Records written before a restart (handed over again: their acknowledgement was
        // lost with the process) are acknowledged, not written twice.
        let (seen, fresh): (Vec<_>, Vec<_>) = batch.drain(..).partition(|r| writer.has(r.id));
        if !seen.is_empty() {
            metrics::counter!("sluice_file_sink_skipped_total", "sink" => name.clone()).increment(seen.len() as u64);
            let _ = acks.send(Ack::Delivered(seen.iter().map(|r| r.id).collect()));
        }
        batch = fresh;
        if batch.is_empty() {
            continue 'run;
        }
        buf.clear();
        for r in &batch {
            crate::line::encode_record(r, metadata, &mut buf);
        }
        let ids: Vec<u64> = batch.iter().map(|r| r.id).collect();
        let mut failures = 0u32;
        loop {
            let data = std::mem::take(&mut buf);
            let batch_ids = ids.clone();
            let (w, (data, result)) = blocking(&name, writer, move |w| {
                let r = w.write_batch(&data, &batch_ids);
                (data, r)
            })
            .await?;
            writer = w;
            buf = data;
            match result {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_millis(100 * 2u64.pow(failures.min(8))).min(Duration::from_secs(30));
                    tracing::error!(sink = %name, dir = %writer.dir.display(), error = %e, retry_in = ?wait, "could not write records; retrying");
                    tokio::select! {
                        _ = &mut stop => break 'run,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        let _ = acks.send(Ack::Delivered(batch.drain(..).map(|r| r.id).collect()));
    }
    let (_, closed) = blocking(&name, writer, |w| w.close()).await?;
    if let Err(e) = closed {
        tracing::warn!(sink = %name, error = %e, "could not finish the last file");
    }
    Ok(())
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The file being written.
struct OpenFile {
    file: File,
    part: PathBuf,
    done: PathBuf,
    len: u64,
    opened: Instant,
}

/// Owns the directory's files of one prefix. All methods block.
struct Writer {
    dir: PathBuf,
    prefix: String,
    gzip: bool,
    max_bytes: u64,
    max_age: Duration,
    current: Option<OpenFile>,
    seq: u64,
    /// Per input (the id's bits above [`INPUT_SHIFT`]), the newest record id written.
    marks: std::collections::BTreeMap<u64, u64>,
}

const PART: &str = ".part";
/// A record id's input index sits above these bits (the ordinal below).
const INPUT_SHIFT: u32 = 48;

/// What `.<prefix>.written` holds.
#[derive(Debug, Default, serde::Serialize, Deserialize)]
struct Progress {
    /// The file last written (its final name; `.part` while open).
    file: String,
    /// Its length after the last acknowledged batch.
    len: u64,
    /// Input index -> newest record id written.
    marks: std::collections::BTreeMap<u64, u64>,
}

impl Writer {
    fn extension(&self) -> &'static str {
        if self.gzip { ".ndjson.gz" } else { ".ndjson" }
    }

    /// When the open file is due for rotation by age.
    fn rotate_at(&self) -> Option<Instant> {
        self.current.as_ref().map(|f| f.opened + self.max_age)
    }

    fn progress_path(&self) -> PathBuf {
        self.dir.join(format!(".{}.written", self.prefix))
    }

    /// Records the open file's durable length and the newest ids written (replaced atomically;
    /// a process kill cannot leave half of it).
    fn save_progress(&self) -> std::io::Result<()> {
        let Some(f) = self.current.as_ref() else { return Ok(()) };
        let file = f.done.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let p = Progress { file, len: f.len, marks: self.marks.clone() };
        let tmp = with_suffix(&self.progress_path(), ".tmp");
        std::fs::write(&tmp, serde_json::to_vec(&p).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, self.progress_path())
    }

    /// Whether a record with this id is already in the files (written before a restart).
    fn has(&self, id: u64) -> bool {
        self.marks.get(&(id >> INPUT_SHIFT)).is_some_and(|&m| id <= m)
    }

    /// Appends one batch of lines (holding the records `ids`) and fsyncs; rotates before if
    /// due and after if full.
    fn write_batch(&mut self, lines: &[u8], ids: &[u64]) -> std::io::Result<()> {
        if self.rotate_at().is_some_and(|t| Instant::now() >= t) {
            self.close()?;
        }
        if self.current.is_none() {
            self.current = Some(self.open()?);
        }
        let bytes = if self.gzip {
            let mut enc =
                flate2::write::GzEncoder::new(Vec::with_capacity(lines.len() / 4 + 64), flate2::Compression::default());
            enc.write_all(lines)?;
            enc.finish()?
        } else {
            lines.to_vec()
        };
        let Some(f) = self.current.as_mut() else { return Err(std::io::Error::other("no open file")) };
        let good = f.len;
        let written = f.file.write_all(&bytes).and_then(|()| f.file.sync_data());
        match written {
            Ok(()) => {
                f.len += bytes.len() as u64;
                for &id in ids {
                    let m = self.marks.entry(id >> INPUT_SHIFT).or_insert(0);
                    *m = (*m).max(id);
                }
                self.save_progress()?;
                if self.current.as_ref().is_some_and(|f| f.len >= self.max_bytes) {
                    self.close()?;
                }
                Ok(())
            }
            Err(e) => {
                // Keep only what was durably written, and never write to this file again.
                let _ = f.file.set_len(good).and_then(|()| f.file.sync_all());
                let _ = self.close();
                Err(e)
            }
        }
    }

    fn open(&mut self) -> std::io::Result<OpenFile> {
        std::fs::create_dir_all(&self.dir)?;
        let stamp = utc_stamp(sluice_flow::now_ms());
        loop {
            self.seq += 1;
            let done = self.dir.join(format!("{}-{stamp}-{:06}{}", self.prefix, self.seq, self.extension()));
            let part = with_suffix(&done, PART);
            if done.exists() {
                continue;
            }
            match OpenOptions::new().create_new(true).append(true).open(&part) {
                Ok(file) => {
                    sync_dir(&self.dir)?;
                    return Ok(OpenFile { file, part, done, len: 0, opened: Instant::now() });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Finishes the open file: renamed to its final name, or removed if empty.
    fn close(&mut self) -> std::io::Result<()> {
        let Some(f) = self.current.take() else { return Ok(()) };
        drop(f.file);
        if f.len == 0 {
            std::fs::remove_file(&f.part)?;
        } else {
            std::fs::rename(&f.part, &f.done)?;
        }
        sync_dir(&self.dir)
    }

    /// Finishes `.part` files of this prefix left by a crash: cut back to the last complete
    /// line (or gzip member), then renamed. Returns how many were finished.
    fn recover(&mut self) -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let progress: Option<Progress> =
            std::fs::read(self.progress_path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(p) = &progress {
            self.marks = p.marks.clone();
        }
        let mut finished = 0;
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let Some(stem) = name.strip_suffix(PART) else { continue };
            if let Some(p) = &progress {
                // The file of the last acknowledged batch is cut back to it; a `.part` opened
                // after it holds nothing acknowledged (its records come again).
                if stem == p.file {
                    let f = OpenOptions::new().write(true).open(&path)?;
                    if f.metadata()?.len() > p.len {
                        f.set_len(p.len)?;
                        f.sync_all()?;
                    }
                } else if stem.strip_prefix(&self.prefix).is_some() && stem > p.file.as_str() {
                    std::fs::remove_file(&path)?;
                    finished += 1;
                    continue;
                }
            }
            let Some(rest) = stem.strip_prefix(&self.prefix).and_then(|r| r.strip_prefix('-')) else { continue };
            // rest = YYYYMMDDTHHMMSSZ-NNNNNN.ndjson[.gz]: refuse other prefixes that merely
            // start with ours.
            let gzip = rest.ends_with(".ndjson.gz");
            if !(rest.len() > 17
                && rest.as_bytes()[8] == b'T'
                && rest.as_bytes()[15] == b'Z'
                && rest.as_bytes()[16] == b'-')
            {
                continue;
            }
            let data = std::fs::read(&path)?;
            let good = if gzip {
                complete_gzip_prefix(&data)
            } else {
                data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
            };
            if good == 0 {
                std::fs::remove_file(&path)?;
            } else {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good as u64)?;
                f.sync_all()?;
                std::fs::rename(&path, self.dir.join(stem))?;
            }
            finished += 1;
        }
        if finished > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(finished)
    }
}

/// Length of the leading complete gzip members of `data`.
fn complete_gzip_prefix(data: &[u8]) -> usize {
    let mut rest = data;
    let mut good = 0;
    while !rest.is_empty() {
        let mut member = flate2::bufread::GzDecoder::new(rest);
        if std::io::copy(&mut member, &mut std::io::sink()).is_err() {
            break;
        }
        let after = member.into_inner();
        let used = rest.len() - after.len();
        if used == 0 {
            break;
        }
        good += used;
        rest = after;
    }
    good
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `YYYYMMDDTHHMMSSZ` for epoch milliseconds.
fn utc_stamp(ms: u64) -> String {
    crate::time::utc(ms).format("%Y%m%dT%H%M%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_709_210_096_000), "20240229T123456Z");
        assert_eq!(utc_stamp(951_825_600_000), "20000229T120000Z");
    }

    fn writer(dir: &Path) -> Writer {
        Writer {
            dir: dir.to_path_buf(),
            prefix: "out".into(),
            gzip: false,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
            current: None,
            seq: 0,
            marks: Default::default(),
        }
    }

    fn lines(dir: &Path) -> String {
        let mut names: Vec<PathBuf> =
            std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
        names.sort();
        names
            .iter()
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("out-")))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    #[test]
    fn a_restart_neither_repeats_nor_loses_what_was_written_before_a_kill() {
        let tmp = tempfile::tempdir().expect("tmp");
        let input1 = 1u64 << INPUT_SHIFT;
        let mut w = writer(tmp.path());
        w.write_batch(b"a\n", &[1, input1 + 7]).expect("write");
        w.write_batch(b"b\n", &[2]).expect("write");
        // Killed after the next batch reached the file but before its progress mark: its lines
        // go, so the records (handed over again) are written once.
        let part = w.current.as_ref().map(|f| f.part.clone()).expect("open file");
        std::fs::OpenOptions::new().append(true).open(&part).and_then(|mut f| f.write_all(b"c\n")).expect("append");
        // And a file opened after it, killed before any mark named it.
        let later = tmp.path().join("out-99991231T235959Z-000001.ndjson.part");
        std::fs::write(&later, b"d\n").expect("later");
        drop(w);

        let mut w = writer(tmp.path());
        assert_eq!(w.recover().expect("recover"), 2);
        assert_eq!(lines(tmp.path()), "a\nb\n");
        assert!(w.has(1) && w.has(2) && w.has(input1 + 7) && w.has(input1 + 3));
        assert!(!w.has(3) && !w.has(input1 + 8) && !w.has((2 << INPUT_SHIFT) + 1));
        w.write_batch(b"c\n", &[3]).expect("write");
        w.close().expect("close");
        assert_eq!(lines(tmp.path()), "a\nb\nc\n");
    }

    #[test]
    fn gzip_prefix_stops_at_a_torn_member() {
        let member = |text: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(text).expect("write");
            e.finish().expect("finish")
        };
        let a = member(b"{\"a\":1}\n");
        let b = member(b"{\"b\":2}\n");
        let mut data = [a.clone(), b.clone()].concat();
        assert_eq!(complete_gzip_prefix(&data), data.len());
        data.truncate(a.len() + b.len() - 3);
        assert_eq!(complete_gzip_prefix(&data), a.len());
        assert_eq!(complete_gzip_prefix(b"garbage"), 0);
    }

    #[test]
    fn config_from_toml() {
        let c: FileConfig =
            toml::from_str("path = \"/tmp/x\"\ncompression = \"gzip\"\nmax_age = \"15m\"\n").expect("parse");
        assert_eq!(c.compression, FileCompression::Gzip);
        assert_eq!(c.max_age, Duration::from_secs(900));
        assert_eq!(c.max_bytes, 128 * 1024 * 1024);
        assert!(toml::from_str::<FileConfig>("path = \"/tmp/x\"\nrotate = 1\n").is_err());
    }
}
