//! The store: data-directory lifecycle (lock, secret, catalog, recovery), catalog mutation and
//! reconciliation with the shard logs, and the public read/append entry points.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::catalog::Catalog;
use crate::commit::{Queue, Request, SYNC_HELPERS, SyncPool};
use crate::error::{StorageError, at};
use crate::repair::{DamageCtx, DamageStats};
use crate::shard_log::{ShardLog, sync_dir};
use crate::sync::{lock, read, write};
use crate::{
    AppendPart, AppendRecord, Appended, Durability, ReadBatch, ShardPosition, StoreConfig, StoredRecord, Trimmed,
};

pub(crate) const CATALOG_FILE: &str = "catalog.json";
/// An identical copy of the catalog, used if `catalog.json` is damaged.
pub(crate) const CATALOG_BACKUP_FILE: &str = "catalog.bak.json";
const SECRET_FILE: &str = "secret.key";
const LOCK_FILE: &str = "LOCK";
pub(crate) const STREAMS_DIR: &str = "streams";
/// Copies of damaged bytes, kept for inspection.
pub(crate) const QUARANTINE_DIR: &str = "quarantine";
/// How often the retention thread runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// The shard logs of one stream incarnation.
#[derive(Debug)]
pub(crate) struct StreamLogs {
    pub tag: u32,
    pub dir: PathBuf,
    /// Set (under the commit gate) when the stream is removed from the catalog.
    pub deleted: AtomicBool,
    pub shards: HashMap<u32, Arc<ShardLog>>,
}

type LogMap = HashMap<String, Arc<StreamLogs>>;

/// State shared by handles and background threads.
pub(crate) struct Shared {
    pub cfg: StoreConfig,
    secret: [u8; 32],
    /// Held (flock) for the lifetime of the store.
    _lock: File,
    catalog: RwLock<Arc<Catalog>>,
    /// Serialises `mutate_catalog`.
    mutation: Mutex<()>,
    /// Held by the writer for a whole group; by `mutate_catalog` to close shards / drop streams.
    pub commit_gate: Mutex<()>,
    logs: RwLock<Arc<LogMap>>,
    pub queue: Queue,
    /// Runs a group's fdatasyncs concurrently.
    pub sync_pool: SyncPool,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    /// Set while the last group commit failed (e.g. a full disk); cleared by the next success.
    pub write_failing: AtomicBool,
    /// Why the last group commit failed, while `write_failing`.
    pub write_failure: Mutex<Option<String>>,
    /// Damage found since open (recovery, the background check, reads).
    damage: Arc<DamageStats>,
    /// Set once the background check of sealed segments has finished.
    verified: AtomicBool,
    /// When `write_failure` last probed the disk.
    last_probe: Mutex<Option<std::time::Instant>>,
    /// Per source, the cursor committed with its newest appended records.
    pub cursors: Mutex<HashMap<String, String>>,
    /// The write-ahead journal (the commit thread writes it; checkpoints rotate it).
    pub journal: Mutex<crate::journal::Journal>,
}

/// The last handle's drop shuts the store down.
struct Handle {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Handle {
    fn shutdown(&self) {
        self.shared.queue.close();
        *lock(&self.shared.stop) = true;
        self.shared.stop_cv.notify_all();
        let threads = std::mem::take(&mut *lock(&self.threads));
        let mut threads = threads.into_iter();
        // The commit thread first: it drains pending appends and may still need the fsync pool.
        if let Some(commit) = threads.next()
            && commit.join().is_err()
        {
            tracing::error!("the commit thread panicked");
        }
        self.shared.sync_pool.stop();
        // Every append is drained: record the exact high-water marks of a clean shutdown.
        for s in read(&self.shared.logs).values() {
            for log in s.shards.values() {
                log.mark_clean();
            }
        }
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a storage thread panicked");
            }
        }
    }
}

/// The storage engine. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct Store {
    h: Arc<Handle>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("data_dir", &self.h.shared.cfg.data_dir).finish_non_exhaustive()
    }
}

fn stream_dir_name(name: &str, tag: u32) -> String {
    format!("{name}.{tag:08x}")
}

fn shard_dir_name(index: u32) -> String {
    format!("{index:012}")
}

fn load_or_create_secret(data_dir: &Path) -> Result<[u8; 32], StorageError> {
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read(&path) {
        Ok(b) => {
            return <[u8; 32]>::try_from(b.as_slice())
                .map_err(|_| StorageError::Corrupt(format!("{} is not 32 bytes long", path.display())));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::io(&path, e)),
    }
    let mut secret = [0u8; 32];
    let urandom = Path::new("/dev/urandom");
    File::open(urandom).and_then(|mut f| f.read_exact(&mut secret)).map_err(at(urandom))?;
    write_atomically(data_dir, &path, &secret)?;
    Ok(secret)
}

/// Writes `bytes` to `path` atomically and durably: temporary file, fsync, rename, fsync dir.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(at(&tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(at(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(at(path))?;
    sync_dir(dir)
}

/// The catalog's JSON with its checksum: `{"crc32": N, "catalog": {...}}`, where the crc covers
/// the compact, key-sorted serialization of `catalog` (so it survives pretty-printing).
fn encode_catalog(cat: &Catalog) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(cat)?;
    let crc = crc32fast::hash(&serde_json::to_vec(&value)?);
    serde_json::to_vec_pretty(&serde_json::json!({ "crc32": crc, "catalog": value }))
}

/// Parses a catalog file: the checksummed form, or the plain form older versions wrote.
fn decode_catalog(bytes: &[u8]) -> Result<Catalog, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let (inner, crc) = match (value.get("catalog"), value.get("crc32")) {
        (Some(inner), Some(crc)) => (inner.clone(), Some(crc.as_u64().ok_or("crc32 is not a number")?)),
        _ => (value, None),
    };
    if let Some(crc) = crc {
        let actual = crc32fast::hash(&serde_json::to_vec(&inner).map_err(|e| e.to_string())?);
        if u64::from(actual) != crc {
            return Err(format!("checksum mismatch (stored {crc}, computed {actual})"));
        }
    }
    serde_json::from_value(inner).map_err(|e| e.to_string())
}

/// Persists the catalog twice, backup first, each atomically: a damaged `catalog.json` is
/// then replaced by an identical backup.
fn persist_catalog(data_dir: &Path, cat: &Catalog) -> Result<(), StorageError> {
    let path = data_dir.join(CATALOG_FILE);
    let bytes = encode_catalog(cat).map_err(|e| StorageError::io(&path, std::io::Error::other(e)))?;
    write_atomically(data_dir, &data_dir.join(CATALOG_BACKUP_FILE), &bytes)?;
    write_atomically(data_dir, &path, &bytes)
}

/// Each catalog file and what is wrong with it (`None`: fine or absent).
pub(crate) fn check_catalog_files(data_dir: &Path) -> Vec<(&'static str, Option<String>)> {
    [CATALOG_FILE, CATALOG_BACKUP_FILE]
        .into_iter()
        .map(|name| {
            let problem = match std::fs::read(data_dir.join(name)) {
                Ok(b) => decode_catalog(&b).err(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => Some(e.to_string()),
            };
            (name, problem)
        })
        .collect()
}

fn read_catalog(path: &Path) -> Result<Option<Catalog>, String> {
    match std::fs::read(path) {
        Ok(b) => decode_catalog(&b).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn load_catalog(data_dir: &Path, streams_dir: &Path) -> Result<Catalog, StorageError> {
    let path = data_dir.join(CATALOG_FILE);
    let backup = data_dir.join(CATALOG_BACKUP_FILE);
    let main = read_catalog(&path);
    if let Ok(Some(cat)) = main {
        if !matches!(read_catalog(&backup), Ok(Some(_))) {
            persist_catalog(data_dir, &cat)?;
        }
        return Ok(cat);
    }
    match (main, read_catalog(&backup)) {
        (Err(why), Ok(Some(cat))) => {
            // Keep the damaged file for inspection, then restore it from the backup.
            let qdir = data_dir.join(QUARANTINE_DIR);
            std::fs::create_dir_all(&qdir).map_err(at(&qdir))?;
            let copy = qdir.join(format!("catalog.json.{}", crate::now_ms()));
            std::fs::copy(&path, &copy).map_err(at(&copy))?;
            tracing::error!(file = %path.display(), error = %why, quarantine = %copy.display(),
                "the catalog is damaged; restored it from its backup");
            metrics::counter!("sluice_storage_catalog_restored_total").increment(1);
            persist_catalog(data_dir, &cat)?;
            Ok(cat)
        }
        (Err(why), backup_state) => Err(StorageError::Corrupt(format!(
            "{} is damaged ({why}) and its backup {} is {}; refusing to start (nothing was changed)",
            path.display(),
            backup.display(),
            match backup_state {
                Err(b) => format!("damaged too ({b})"),
                _ => "missing".into(),
            }
        ))),
        (Ok(_), Ok(Some(cat))) => {
            tracing::error!(file = %path.display(), "the catalog is missing; restored it from its backup");
            metrics::counter!("sluice_storage_catalog_restored_total").increment(1);
            persist_catalog(data_dir, &cat)?;
            Ok(cat)
        }
        (Ok(_), _) => {
            let has_data = std::fs::read_dir(streams_dir).map_err(at(streams_dir))?.next().is_some();
            if has_data {
                return Err(StorageError::Corrupt(format!(
                    "{} is missing but {} holds stream data; refusing to start",
                    path.display(),
                    streams_dir.display()
                )));
            }
            let cat = Catalog::default();
            persist_catalog(data_dir, &cat)?;
            Ok(cat)
        }
    }
}

/// Writes, fsyncs and removes a 64 KiB file: can the data directory take writes?
fn probe_write(data_dir: &Path) -> std::io::Result<()> {
    let path = data_dir.join(".write-probe");
    let r = File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; 64 * 1024])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    r
}

/// Where a shard's damage is quarantined and counted.
fn damage_ctx(data_dir: &Path, stream: &str, tag: u32, index: u32, stats: &Arc<DamageStats>) -> DamageCtx {
    DamageCtx::new(
        data_dir.join(QUARANTINE_DIR),
        format!("{}-{}", stream_dir_name(stream, tag), shard_dir_name(index)),
        stats.clone(),
    )
}

fn remove_dir(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove directory"),
    }
}

impl Shared {
    fn streams_dir(&self) -> PathBuf {
        self.cfg.data_dir.join(STREAMS_DIR)
    }

    fn stream_logs(&self, stream: &str, tag: u32) -> Result<Arc<StreamLogs>, StorageError> {
        read(&self.logs).get(stream).filter(|s| s.tag == tag).cloned().ok_or(StorageError::NoSuchStream)
    }

    fn shard_log(&self, stream: &str, tag: u32, shard: u32) -> Result<Arc<ShardLog>, StorageError> {
        let logs = read(&self.logs);
        let s = logs.get(stream).filter(|s| s.tag == tag).ok_or(StorageError::NoSuchStream)?;
        s.shards.get(&shard).cloned().ok_or(StorageError::NoSuchShard)
    }

    fn enforce_retention(&self, now_ms: u64) -> u64 {
        let cat = read(&self.catalog).clone();
        let logs = read(&self.logs).clone();
        let mut removed = 0;
        for (name, meta) in &cat.streams {
            let Some(s) = logs.get(name).filter(|s| s.tag == meta.tag) else { continue };
            let cutoff = now_ms.saturating_sub(u64::from(meta.retention_hours) * 3_600_000);
            for log in s.shards.values() {
                removed += log.trim(cutoff).segments;
            }
        }
        if removed > 0 {
            metrics::counter!("sluice_storage_segments_trimmed_total").increment(removed);
            tracing::info!(segments = removed, "retention removed expired segments");
        }
        removed
    }

    fn stopping(&self) -> bool {
        *lock(&self.stop)
    }

    /// Verifies every sealed segment that open trusted from its sidecar, so damage is found and
    /// reported before a reader meets it.
    fn run_verification(self: Arc<Self>) {
        let logs = read(&self.logs).clone();
        let started = std::time::Instant::now();
        let mut segments = 0;
        'all: for s in logs.values() {
            for log in s.shards.values() {
                if self.stopping() {
                    break 'all;
                }
                segments += log.verify_sealed(&|| self.stopping());
            }
        }
        if segments > 0 {
            tracing::info!(
                segments,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "background check of sealed segments done"
            );
        }
        self.verified.store(true, Ordering::Release);
    }

    fn run_retention(self: Arc<Self>) {
        loop {
            {
                let stop = lock(&self.stop);
                let (stop, _) = self
                    .stop_cv
                    .wait_timeout_while(stop, RETENTION_INTERVAL, |s| !*s)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *stop {
                    return;
                }
            }
            self.enforce_retention(crate::now_ms());
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store in `cfg.data_dir`: takes the directory lock, loads
    /// the catalog, recovers every shard log (truncating torn tails) and starts the group-commit
    /// and retention threads.
    pub fn open(cfg: StoreConfig) -> Result<Store, StorageError> {
        let data_dir = cfg.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(at(&data_dir))?;
        let lock_path = data_dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(at(&lock_path))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StorageError::Locked(lock_path)),
            Err(std::fs::TryLockError::Error(e)) => return Err(StorageError::io(&lock_path, e)),
        }
        let secret = load_or_create_secret(&data_dir)?;
        let streams_dir = data_dir.join(STREAMS_DIR);
        std::fs::create_dir_all(&streams_dir).map_err(at(&streams_dir))?;
        let catalog = load_catalog(&data_dir, &streams_dir)?;
        let damage = Arc::new(DamageStats::default());

        // The journal first: it completes segment writes an unclean stop cut short.
        let journal_damage = DamageCtx::new(data_dir.join(QUARANTINE_DIR), "journal".into(), damage.clone());
        let recovered = crate::journal::recover(&data_dir, &journal_damage)?;
        let mut logs = LogMap::new();
        let mut truncated = 0u64;
        let mut wanted: HashMap<String, Vec<String>> = HashMap::new();
        for (name, meta) in &catalog.streams {
            let dir_name = stream_dir_name(name, meta.tag);
            let dir = streams_dir.join(&dir_name);
            let mut shards = HashMap::new();
            for sm in &meta.shards {
                let ctx = damage_ctx(&data_dir, name, meta.tag, sm.index, &damage);
                let r = ShardLog::open(dir.join(shard_dir_name(sm.index)), sm.index, !sm.is_open(), ctx)?;
                truncated += r.truncated_bytes;
                shards.insert(sm.index, Arc::new(r.log));
            }
            wanted.insert(dir_name, meta.shards.iter().map(|s| shard_dir_name(s.index)).collect());
            logs.insert(
                name.clone(),
                Arc::new(StreamLogs { tag: meta.tag, dir, deleted: AtomicBool::new(false), shards }),
            );
        }
        // Directories the catalog no longer knows: leftovers of deletions interrupted by a crash.
        for entry in std::fs::read_dir(&streams_dir).map_err(at(&streams_dir))? {
            let entry = entry.map_err(at(&streams_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match wanted.get(&name) {
                None => {
                    tracing::warn!(dir = %entry.path().display(), "removing stream directory unknown to the catalog");
                    remove_dir(&entry.path());
                }
                Some(shards) => {
                    for sub in std::fs::read_dir(entry.path()).map_err(at(&entry.path()))? {
                        let sub = sub.map_err(at(&entry.path()))?;
                        if !shards.iter().any(|s| sub.file_name().to_str() == Some(s.as_str())) {
                            tracing::warn!(dir = %sub.path().display(), "removing shard directory unknown to the catalog");
                            remove_dir(&sub.path());
                        }
                    }
                }
            }
        }
        if truncated > 0 {
            metrics::counter!("sluice_storage_truncated_bytes_total").increment(truncated);
            tracing::warn!(bytes = truncated, "recovery discarded torn or unacknowledged data");
        }
        let journal = crate::journal::open_after(&data_dir, recovered, cfg.durability == Durability::Fsync)?;

        let shared = Arc::new(Shared {
            cfg,
            secret,
            _lock: lock_file,
            catalog: RwLock::new(Arc::new(catalog)),
            mutation: Mutex::new(()),
            commit_gate: Mutex::new(()),
            logs: RwLock::new(Arc::new(logs)),
            queue: Queue::new(),
            sync_pool: SyncPool::new(),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            write_failing: AtomicBool::new(false),
            write_failure: Mutex::new(None),
            damage,
            verified: AtomicBool::new(false),
            last_probe: Mutex::new(None),
            cursors: Mutex::new(journal.cursors.clone()),
            journal: Mutex::new(journal),
        });
        let mut threads = Vec::new();
        let w = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("sluice-commit".into())
                .spawn(move || crate::commit::run_writer(w))
                .map_err(at(&data_dir))?,
        );
        let handle = Handle { shared: shared.clone(), threads: Mutex::new(threads) };
        // On error, dropping `handle` stops what was started.
        {
            let v = shared.clone();
            let t = std::thread::Builder::new()
                .name("sluice-verify".into())
                .spawn(move || v.run_verification())
                .map_err(at(&data_dir))?;
            lock(&handle.threads).push(t);
        }
        if shared.cfg.retention_thread {
            let r = shared.clone();
            let t = std::thread::Builder::new()
                .name("sluice-retention".into())
                .spawn(move || r.run_retention())
                .map_err(at(&data_dir))?;
            lock(&handle.threads).push(t);
        }
        if shared.cfg.durability == Durability::Fsync {
            for i in 0..SYNC_HELPERS {
                let p = shared.clone();
                let t = std::thread::Builder::new()
                    .name(format!("sluice-fsync-{i}"))
                    .spawn(move || p.sync_pool.work())
                    .map_err(at(&data_dir))?;
                lock(&handle.threads).push(t);
            }
        }
        tracing::info!(data_dir = %data_dir.display(), "store opened");
        Ok(Store { h: Arc::new(handle) })
    }

    fn shared(&self) -> &Shared {
        &self.h.shared
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.shared().cfg
    }

    /// 32 random bytes created once and kept in `data_dir/secret.key` (for signing iterators so
    /// they survive restarts).
    pub fn secret(&self) -> [u8; 32] {
        self.shared().secret
    }

    /// Cheap snapshot of the catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        read(&self.shared().catalog).clone()
    }

    /// Serialised catalog mutation: clones the catalog, applies `f`, reconciles the shard logs
    /// (creates logs for new shards; closes shards whose `closed_ms` became set before
    /// persisting, so no append lands after this returns; deletes the data of removed streams
    /// and shards), persists atomically and publishes. If `f` (or persisting) fails nothing
    /// changes.
    pub fn mutate_catalog<T, E: From<StorageError>>(
        &self,
        f: impl FnOnce(&mut Catalog) -> Result<T, E>,
    ) -> Result<T, E> {
        let sh = self.shared();
        let _serial = lock(&sh.mutation);
        let old = read(&sh.catalog).clone();
        let mut cat = (*old).clone();
        let out = f(&mut cat)?;

        let old_logs = read(&sh.logs).clone();
        let streams_dir = sh.streams_dir();
        let mut new_logs = LogMap::new();
        let mut created: Vec<PathBuf> = Vec::new();
        // Shards to flip (closed flag), with the flag they had before.
        let mut flips: Vec<(Arc<ShardLog>, bool)> = Vec::new();
        let mut dropped_streams: Vec<Arc<StreamLogs>> = Vec::new();
        let mut dropped_shards: Vec<Arc<ShardLog>> = Vec::new();

        let result: Result<(), StorageError> = (|| {
            for (name, meta) in &cat.streams {
                let existing = old_logs.get(name).filter(|s| s.tag == meta.tag);
                let dir = streams_dir.join(stream_dir_name(name, meta.tag));
                let mut shards = HashMap::new();
                let mut changed = existing.is_none();
                for sm in &meta.shards {
                    match existing.and_then(|s| s.shards.get(&sm.index)) {
                        Some(log) => {
                            if log.is_closed() == sm.is_open() {
                                flips.push((log.clone(), log.is_closed()));
                            }
                            shards.insert(sm.index, log.clone());
                        }
                        None => {
                            let shard_dir = dir.join(shard_dir_name(sm.index));
                            // Anything there is a leftover of an attempt that never committed.
                            remove_dir(&shard_dir);
                            created.push(shard_dir.clone());
                            let ctx = damage_ctx(&sh.cfg.data_dir, name, meta.tag, sm.index, &sh.damage);
                            let r = ShardLog::open(shard_dir, sm.index, !sm.is_open(), ctx)?;
                            shards.insert(sm.index, Arc::new(r.log));
                            changed = true;
                        }
                    }
                }
                if let Some(ex) = existing {
                    for (idx, log) in &ex.shards {
                        if !shards.contains_key(idx) {
                            dropped_shards.push(log.clone());
                            changed = true;
                        }
                    }
                }
                let logs = match existing {
                    Some(ex) if !changed => ex.clone(),
                    _ => Arc::new(StreamLogs { tag: meta.tag, dir, deleted: AtomicBool::new(false), shards }),
                };
                new_logs.insert(name.clone(), logs);
            }
            for (name, s) in old_logs.iter() {
                if new_logs.get(name).map(|n| n.tag) != Some(s.tag) {
                    dropped_streams.push(s.clone());
                }
            }
            if !created.is_empty() {
                // Make the new directories durable before the catalog names them.
                let mut dirs: Vec<&Path> = created.iter().filter_map(|p| p.parent()).collect();
                dirs.dedup();
                for d in dirs {
                    sync_dir(d)?;
                }
                sync_dir(&streams_dir)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            for d in &created {
                remove_dir(d);
            }
            return Err(e.into());
        }

        // Dropped shards (and every shard of dropped streams) close too, so in-flight appends
        // holding the old logs are refused.
        for log in dropped_shards.iter().chain(dropped_streams.iter().flat_map(|s| s.shards.values())) {
            if !log.is_closed() {
                flips.push((log.clone(), false));
            }
        }
        let needs_gate = !flips.is_empty() || !dropped_streams.is_empty();
        let gate = needs_gate.then(|| lock(&sh.commit_gate));
        for (log, was) in &flips {
            log.set_closed(!was);
        }
        for s in &dropped_streams {
            s.deleted.store(true, Ordering::Release);
        }
        if let Err(e) = persist_catalog(&sh.cfg.data_dir, &cat) {
            for (log, was) in &flips {
                log.set_closed(*was);
            }
            for s in &dropped_streams {
                s.deleted.store(false, Ordering::Release);
            }
            drop(gate);
            for d in &created {
                remove_dir(d);
            }
            return Err(e.into());
        }
        *write(&sh.logs) = Arc::new(new_logs);
        *write(&sh.catalog) = Arc::new(cat);
        drop(gate);

        for s in &dropped_streams {
            remove_dir(&s.dir);
        }
        for log in &dropped_shards {
            remove_dir(&log.dir);
        }
        Ok(out)
    }

    /// Appends `records` (each to its `shard`) with group commit; answers, per record in
    /// request order, the ordinal and arrival time once the records are durable (or written,
    /// with [`crate::Durability::Os`]) and visible. All or nothing per call: a closed or unknown
    /// target shard gives [`StorageError::ShardClosed`] and appends nothing.
    pub async fn append(
        &self,
        stream: &str,
        tag: u32,
        records: Vec<AppendRecord>,
    ) -> Result<Vec<Appended>, StorageError> {
        let logs = self.shared().stream_logs(stream, tag)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.shared().queue.push(Request { parts: vec![(logs, records)], cursors: Vec::new(), reply })?;
        let mut parts = rx.await.unwrap_or(Err(StorageError::ShuttingDown))?;
        Ok(parts.pop().unwrap_or_default())
    }

    /// Appends records to one or more streams and commits the sources' cursors with them, in
    /// one group: after any crash, either all of it is durable or none of it, so a source that
    /// resumes from [`Store::committed_cursor`] neither loses nor repeats an event. Returns,
    /// per part, where its records landed. Refused as a whole if any record targets a closed
    /// or unknown shard.
    pub async fn append_committed(
        &self,
        parts: Vec<AppendPart>,
        cursors: Vec<(String, String)>,
    ) -> Result<Vec<Vec<Appended>>, StorageError> {
        let mut resolved = Vec::with_capacity(parts.len());
        for p in parts {
            resolved.push((self.shared().stream_logs(&p.stream, p.tag)?, p.records));
        }
        if resolved.iter().all(|(_, r)| r.is_empty()) && cursors.is_empty() {
            return Ok(resolved.iter().map(|_| Vec::new()).collect());
        }
        let (reply, rx) = oneshot::channel();
        self.shared().queue.push(Request { parts: resolved, cursors, reply })?;
        rx.await.unwrap_or(Err(StorageError::ShuttingDown))
    }

    /// The cursor of `source` committed by the last [`Store::append_committed`] naming it.
    pub fn committed_cursor(&self, source: &str) -> Option<String> {
        lock(&self.shared().cursors).get(source).cloned()
    }

    /// Reads committed records from `from_ordinal` (clamped up to the first retained ordinal):
    /// at most `max_records`, and about `max_bytes` of key + data (always at least one record if
    /// any is available). Never waits for the writer.
    pub fn read(
        &self,
        stream: &str,
        tag: u32,
        shard: u32,
        from_ordinal: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, StorageError> {
        self.shared().shard_log(stream, tag, shard)?.read(from_ordinal, max_records, max_bytes)
    }

    /// The shard's newest record, if it holds any (ordinals may skip after damage or an
    /// unclean shutdown, so this is not always the record at `next_ordinal - 1`).
    pub fn read_last(&self, stream: &str, tag: u32, shard: u32) -> Result<Option<StoredRecord>, StorageError> {
        self.shared().shard_log(stream, tag, shard)?.read_last()
    }

    /// The shard's retained range and tip.
    pub fn shard_position(&self, stream: &str, tag: u32, shard: u32) -> Result<ShardPosition, StorageError> {
        Ok(self.shared().shard_log(stream, tag, shard)?.position())
    }

    /// Ordinal of the first committed record with `arrival_ms >= ts_ms` (`next_ordinal` if
    /// none); a time before the first retained record gives the first retained ordinal.
    pub fn seek_timestamp(&self, stream: &str, tag: u32, shard: u32, ts_ms: u64) -> Result<u64, StorageError> {
        self.shared().shard_log(stream, tag, shard)?.seek_timestamp(ts_ms)
    }

    /// A watch of the shard's `next_ordinal`, updated after every commit touching the shard
    /// (and poked without a value change when the shard closes). The sender is dropped, closing
    /// the channel, once the stream or shard is removed and no reader holds it.
    pub fn watch(&self, stream: &str, tag: u32, shard: u32) -> Result<watch::Receiver<u64>, StorageError> {
        Ok(self.shared().shard_log(stream, tag, shard)?.subscribe())
    }

    /// Deletes whole segments whose newest record is older than the stream's retention
    /// (never a shard's newest segment); returns how many were removed.
    pub fn enforce_retention(&self, now_ms: u64) -> Result<u64, StorageError> {
        Ok(self.shared().enforce_retention(now_ms))
    }

    /// Deletes the shard's whole segments whose last ordinal is below `ordinal` (everything in
    /// them is no longer needed), never its newest segment, whatever the stream's retention.
    pub fn trim_below(&self, stream: &str, tag: u32, shard: u32, ordinal: u64) -> Result<Trimmed, StorageError> {
        Ok(self.shared().shard_log(stream, tag, shard)?.trim_below(ordinal))
    }

    /// Deletes the shard's whole segments whose newest record arrived before `cutoff_ms`,
    /// never its newest segment (retention of one shard, on demand).
    pub fn trim_older_than(&self, stream: &str, tag: u32, shard: u32, cutoff_ms: u64) -> Result<Trimmed, StorageError> {
        Ok(self.shared().shard_log(stream, tag, shard)?.trim(cutoff_ms))
    }

    /// Why appends are failing, while the last group commit failed (a full disk, an I/O
    /// error); `None` once a commit succeeds again. For health checks.
    ///
    /// While failing, this also probes (at most once a second) whether a small write and fsync
    /// in the data directory succeed again, so that health recovers when space returns even if
    /// nobody appends meanwhile (the next append sets the failure again if it still fails).
    pub fn write_failure(&self) -> Option<String> {
        let sh = self.shared();
        if !sh.write_failing.load(Ordering::Acquire) {
            return None;
        }
        let mut last = lock(&sh.last_probe);
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(std::time::Instant::now());
            if probe_write(&sh.cfg.data_dir).is_ok() {
                sh.write_failing.store(false, Ordering::Release);
                tracing::info!("the data directory takes writes again");
                return None;
            }
        }
        lock(&sh.write_failure).clone()
    }

    /// Damage found since the store was opened: by recovery, by the background check of sealed
    /// segments, or by reads.
    pub fn damage(&self) -> crate::DamageSummary {
        let d = &self.shared().damage;
        crate::DamageSummary {
            corrupt_records: d.corrupt_records.load(Ordering::Relaxed),
            quarantined_bytes: d.quarantined_bytes.load(Ordering::Relaxed),
            damaged_ranges: d.ranges.load(Ordering::Relaxed),
            last: lock(&d.last).clone(),
            verified: self.shared().verified.load(Ordering::Acquire),
        }
    }

    /// Stops the background threads after draining pending appends; later appends get
    /// [`StorageError::ShuttingDown`]. Reads keep working. Also happens when the last handle is
    /// dropped.
    pub fn shutdown(&self) {
        self.h.shutdown();
    }
}
