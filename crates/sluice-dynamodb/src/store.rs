//! The table engine: per table a checksummed append-only log of item puts and deletes,
//! replayed at start into an in-memory ordered map, and compacted into a snapshot (temporary
//! file, fsync, rename, fsync of the directory) when the log outgrows it.
//!
//! Layout under the root (`DATA_DIR/dynamodb/`): `tables/t-<name>/{meta.json, snapshot, log}`
//! and `quarantine/`. Every record is `magic, length, crc32(body), body` where the body is a
//! kind byte (put / delete) and the item (or key) in DynamoDB JSON. Replaying a put or delete
//! twice gives the same state, so a crash between writing a snapshot and emptying the log loses
//! nothing. A write is answered only after its record is fsynced; writers that arrive while an
//! fsync runs share the next one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::{DynamoError, Result};
use crate::value::{Item, Key, KeyPart, ScalarType, Value, item_from_json, item_to_json};

const MAGIC: [u8; 4] = *b"SLDB";
const HEADER: usize = 12;
/// Largest record body accepted when reading (items are at most 400 KB).
const MAX_RECORD: usize = 4 * 1024 * 1024;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
const TABLE_PREFIX: &str = "t-";

/// Errors opening the engine.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

fn at(path: &Path) -> impl Fn(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io { path: path.to_owned(), source }
}

fn io_err(e: std::io::Error) -> DynamoError {
    tracing::error!(error = %e, "dynamodb storage failure");
    DynamoError::internal(format!("Storage failure: {e}"))
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// Root directory (`DATA_DIR/dynamodb`).
    pub dir: PathBuf,
    /// Fsync every acknowledged write (else: answer once the write reached the OS).
    pub fsync: bool,
    /// Compact a table once its log is larger than this and than its snapshot.
    pub compact_bytes: u64,
    /// Account id used in ARNs.
    pub account_id: String,
}

impl DbConfig {
    /// Defaults for a root directory: fsync on, 8 MiB compaction threshold.
    pub fn new(dir: impl Into<PathBuf>) -> DbConfig {
        DbConfig { dir: dir.into(), fsync: true, compact_bytes: 8 * 1024 * 1024, account_id: "000000000000".into() }
    }
}

/// A key attribute: name and scalar type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAttr {
    /// Attribute name.
    pub name: String,
    /// Its type.
    pub ty: ScalarType,
}

/// A secondary index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexMeta {
    /// Index name.
    pub name: String,
    /// Partition key.
    pub hash: KeyAttr,
    /// Sort key.
    pub range: Option<KeyAttr>,
    /// `ALL`, `KEYS_ONLY` or `INCLUDE`.
    pub projection: String,
    /// Attributes projected by `INCLUDE`.
    pub non_key: Vec<String>,
    /// Provisioned read capacity (0 on demand).
    pub rcu: u64,
    /// Provisioned write capacity (0 on demand).
    pub wcu: u64,
    /// Whether this is a global (not local) secondary index.
    pub global: bool,
}

/// A table's definition, persisted in `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMeta {
    /// Table name.
    pub name: String,
    /// Partition key.
    pub hash: KeyAttr,
    /// Sort key.
    pub range: Option<KeyAttr>,
    /// `AttributeDefinitions` as given.
    pub attrs: Vec<KeyAttr>,
    /// Secondary indexes.
    pub indexes: Vec<IndexMeta>,
    /// `PROVISIONED` or `PAY_PER_REQUEST`.
    pub billing: String,
    /// Provisioned read capacity (0 on demand).
    pub rcu: u64,
    /// Provisioned write capacity (0 on demand).
    pub wcu: u64,
    /// Creation time, epoch ms.
    pub created_ms: u64,
    /// `TableId`.
    pub id: String,
    /// Tags given at creation.
    #[serde(default)]
    pub tags: Vec<(String, String)>,
    /// Whether deletion protection is on.
    #[serde(default)]
    pub deletion_protection: bool,
}

impl TableMeta {
    /// The primary key of `item` (which must hold well-typed key attributes).
    pub fn key_of(&self, item: &Item) -> Option<Key> {
        let h = KeyPart::of(item.get(&self.hash.name)?)?;
        let r = match &self.range {
            Some(r) => Some(KeyPart::of(item.get(&r.name)?)?),
            None => None,
        };
        Some((h, r))
    }

    /// The key attributes of `item` as an item.
    pub fn key_item(&self, key: &Key) -> Item {
        let mut m = Item::new();
        m.insert(self.hash.name.clone(), key.0.to_value());
        if let (Some(r), Some(v)) = (&self.range, &key.1) {
            m.insert(r.name.clone(), v.to_value());
        }
        m
    }
}

/// What recovery found and contained, across all tables since start.
#[derive(Debug, Default)]
pub struct Damage {
    /// Bytes of torn log tails cut.
    pub truncated_bytes: AtomicU64,
    /// Damaged ranges found (each copied to the quarantine).
    pub damaged_ranges: AtomicU64,
    /// Bytes copied to the quarantine.
    pub quarantined_bytes: AtomicU64,
}

/// A table's mutable state, behind its lock.
pub struct Inner {
    /// Definition.
    pub meta: TableMeta,
    /// Items by primary key.
    pub items: BTreeMap<Key, Item>,
    log: File,
    log_len: u64,
    snapshot_len: u64,
    dropped: bool,
    failed: Option<String>,
}

impl Inner {
    /// Refuses to serve a dropped table or one whose storage failed.
    pub fn check(&self) -> Result<()> {
        if self.dropped {
            return Err(DynamoError::no_table());
        }
        if let Some(f) = &self.failed {
            return Err(DynamoError::internal(format!("The table's storage failed ({f}); restart the server")));
        }
        Ok(())
    }
}

/// One table.
pub struct Table {
    dir: PathBuf,
    inner: Mutex<Inner>,
    written: AtomicU64,
    synced: Mutex<u64>,
    sync_file: File,
    fsync: bool,
    compact_bytes: u64,
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 1 + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(body);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// Length of the intact record at `pos`, if one starts there.
fn record_at(buf: &[u8], pos: usize) -> Option<usize> {
    let h = buf.get(pos..pos + HEADER)?;
    if h[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let body = buf.get(pos + HEADER..pos + HEADER + len)?;
    (crc32fast::hash(body) == crc).then_some(HEADER + len)
}

/// The result of scanning a file: intact records, damaged ranges, and where a torn tail starts.
struct Scan {
    records: Vec<(usize, usize)>,
    damaged: Vec<(usize, usize)>,
    tail: Option<usize>,
}

fn scan(buf: &[u8]) -> Scan {
    let mut s = Scan { records: Vec::new(), damaged: Vec::new(), tail: None };
    let mut pos = 0;
    while pos < buf.len() {
        if let Some(n) = record_at(buf, pos) {
            s.records.push((pos, n));
            pos += n;
            continue;
        }
        let mut q = pos + 1;
        let next = loop {
            match buf.get(q..).and_then(|rest| rest.windows(4).position(|w| w == MAGIC)) {
                Some(off) if record_at(buf, q + off).is_some() => break Some(q + off),
                Some(off) => q += off + 1,
                None => break None,
            }
        };
        match next {
            Some(m) => {
                s.damaged.push((pos, m));
                pos = m;
            }
            None => {
                s.tail = Some(pos);
                break;
            }
        }
    }
    s
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a file atomically: temporary file, fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

impl Table {
    /// Locks the table's state.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, g: &mut Inner, rec: &[u8]) -> Result<u64> {
        g.check()?;
        if let Err(e) = g.log.write_all(rec) {
            // Cut whatever part reached the file, so the log stays a sequence of whole records.
            if g.log.set_len(g.log_len).is_err() {
                g.failed = Some(e.to_string());
            }
            return Err(io_err(e));
        }
        g.log_len += rec.len() as u64;
        Ok(self.written.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Stores `item` under `key` (logged first); returns the ticket to wait for with
    /// [`Table::durable`].
    pub fn put(&self, g: &mut Inner, key: Key, item: Item) -> Result<u64> {
        let body = serde_json::to_vec(&item_to_json(&item)).map_err(|e| DynamoError::internal(e.to_string()))?;
        let seq = self.append(g, &frame(KIND_PUT, &body))?;
        g.items.insert(key, item);
        self.maybe_compact(g);
        Ok(seq)
    }

    /// Deletes the item under `key` (logged first); returns the ticket for [`Table::durable`].
    pub fn delete(&self, g: &mut Inner, key: &Key) -> Result<u64> {
        let body = serde_json::to_vec(&item_to_json(&g.meta.key_item(key)))
            .map_err(|e| DynamoError::internal(e.to_string()))?;
        let seq = self.append(g, &frame(KIND_DELETE, &body))?;
        g.items.remove(key);
        self.maybe_compact(g);
        Ok(seq)
    }

    /// The ticket covering everything written so far (for reads: wait until what they saw is
    /// durable).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Returns once the write with ticket `seq` is on disk; concurrent callers share an fsync.
    pub fn durable(&self, seq: u64) -> Result<()> {
        if !self.fsync {
            return Ok(());
        }
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced >= seq {
            return Ok(());
        }
        let target = self.written.load(Ordering::Acquire);
        if let Err(e) = self.sync_file.sync_data() {
            self.lock().failed = Some(format!("fsync failed: {e}"));
            return Err(io_err(e));
        }
        *synced = target;
        Ok(())
    }

    fn maybe_compact(&self, g: &mut Inner) {
        if g.log_len > self.compact_bytes.max(g.snapshot_len)
            && let Err(e) = self.compact(g)
        {
            // The log is intact and still authoritative; compaction is retried later.
            tracing::warn!(table = %g.meta.name, error = %e, "compaction failed");
        }
    }

    /// Writes every item to a fresh snapshot and empties the log.
    fn compact(&self, g: &mut Inner) -> std::io::Result<()> {
        let tmp = self.dir.join("snapshot.tmp");
        let mut w = BufWriter::new(File::create(&tmp)?);
        let mut len = 0u64;
        for item in g.items.values() {
            let body = serde_json::to_vec(&item_to_json(item)).map_err(std::io::Error::other)?;
            let rec = frame(KIND_PUT, &body);
            w.write_all(&rec)?;
            len += rec.len() as u64;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.dir.join("snapshot"))?;
        fsync_dir(&self.dir)?;
        // Everything is in the snapshot now; replaying the old log on top would change nothing.
        g.log.set_len(0)?;
        g.log.sync_all()?;
        g.log_len = 0;
        g.snapshot_len = len;
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        *synced = self.written.load(Ordering::Acquire);
        metrics::counter!("sluice_dynamodb_compactions_total").increment(1);
        Ok(())
    }
}

/// The table store.
pub struct Db {
    cfg: DbConfig,
    tables: RwLock<BTreeMap<String, Arc<Table>>>,
    damage: Arc<Damage>,
}

impl Db {
    /// Opens (creating if needed) the store under `cfg.dir`, replaying every table; damaged
    /// bytes are copied to the quarantine, counted and logged, a torn log tail is cut.
    pub fn open(cfg: DbConfig) -> std::result::Result<Db, OpenError> {
        let tables_dir = cfg.dir.join("tables");
        std::fs::create_dir_all(&tables_dir).map_err(at(&tables_dir))?;
        std::fs::create_dir_all(cfg.dir.join("quarantine")).map_err(at(&cfg.dir))?;
        let damage = Arc::new(Damage::default());
        let mut tables = BTreeMap::new();
        let started = std::time::Instant::now();
        let mut items = 0usize;
        for entry in std::fs::read_dir(&tables_dir).map_err(at(&tables_dir))? {
            let entry = entry.map_err(at(&tables_dir))?;
            let path = entry.path();
            let fname = entry.file_name().to_string_lossy().into_owned();
            if !fname.starts_with(TABLE_PREFIX) {
                // A table being created or deleted when the process stopped.
                if fname.starts_with('.') {
                    let _ = std::fs::remove_dir_all(&path);
                }
                continue;
            }
            match load_table(&cfg, &path, &damage)? {
                Some(t) => {
                    let name = t.lock().meta.name.clone();
                    items += t.lock().items.len();
                    tables.insert(name, Arc::new(t));
                }
                None => tracing::error!(dir = %path.display(), "dynamodb table without a readable meta.json; skipped"),
            }
        }
        if !tables.is_empty() {
            tracing::info!(
                tables = tables.len(),
                items,
                ms = started.elapsed().as_millis() as u64,
                "dynamodb tables loaded"
            );
        }
        Ok(Db { cfg, tables: RwLock::new(tables), damage })
    }

    /// Settings.
    pub fn config(&self) -> &DbConfig {
        &self.cfg
    }

    /// What recovery found.
    pub fn damage(&self) -> &Damage {
        &self.damage
    }

    /// The table named `name`.
    pub fn table(&self, name: &str) -> Result<Arc<Table>> {
        self.tables.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned().ok_or_else(DynamoError::no_table)
    }

    /// Names of all tables, sorted.
    pub fn names(&self) -> Vec<String> {
        self.tables.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Creates a table durably (its directory appears whole or not at all).
    pub fn create(&self, meta: TableMeta) -> Result<Arc<Table>> {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        if tables.contains_key(&meta.name) {
            return Err(DynamoError::in_use(format!("Table already exists: {}", meta.name)));
        }
        let root = self.cfg.dir.join("tables");
        let tmp = root.join(format!(".creating-{}", uuid::Uuid::new_v4()));
        let dir = root.join(format!("{TABLE_PREFIX}{}", meta.name));
        let made = (|| -> std::io::Result<()> {
            std::fs::create_dir(&tmp)?;
            let bytes = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
            write_atomic(&tmp.join("meta.json"), &bytes)?;
            File::create(tmp.join("log"))?.sync_all()?;
            fsync_dir(&tmp)?;
            std::fs::rename(&tmp, &dir)?;
            fsync_dir(&root)
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io_err(e));
        }
        let t = load_table(&self.cfg, &dir, &self.damage)
            .map_err(|e| DynamoError::internal(e.to_string()))?
            .ok_or_else(|| DynamoError::internal("the new table could not be read back"))?;
        let t = Arc::new(t);
        tables.insert(meta.name.clone(), t.clone());
        Ok(t)
    }

    /// Deletes a table durably; returns its last definition and item count.
    pub fn drop_table(&self, name: &str) -> Result<(TableMeta, usize)> {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        let t = tables
            .get(name)
            .cloned()
            .ok_or_else(|| DynamoError::not_found(format!("Requested resource not found: Table: {name} not found")))?;
        let mut g = t.lock();
        if g.meta.deletion_protection {
            return Err(DynamoError::validation(
                "Resource cannot be deleted as it is currently protected against deletion. Disable deletion protection first.",
            ));
        }
        let root = self.cfg.dir.join("tables");
        let gone = root.join(format!(".deleted-{}", uuid::Uuid::new_v4()));
        std::fs::rename(&t.dir, &gone).and_then(|()| fsync_dir(&root)).map_err(io_err)?;
        let _ = std::fs::remove_dir_all(&gone);
        g.dropped = true;
        tables.remove(name);
        Ok((g.meta.clone(), g.items.len()))
    }

    /// Persists a changed definition of a table.
    pub fn save_meta(&self, t: &Table, g: &mut Inner, meta: TableMeta) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| DynamoError::internal(e.to_string()))?;
        write_atomic(&t.dir.join("meta.json"), &bytes).map_err(io_err)?;
        g.meta = meta;
        Ok(())
    }
}

fn quarantine(cfg: &DbConfig, damage: &Damage, table: &str, file: &str, buf: &[u8], range: (usize, usize)) {
    let (s, e) = range;
    let qpath = cfg.dir.join("quarantine").join(format!("{table}-{file}-{s}-{e}.bin"));
    let r = std::fs::write(&qpath, &buf[s..e]);
    damage.damaged_ranges.fetch_add(1, Ordering::Relaxed);
    damage.quarantined_bytes.fetch_add((e - s) as u64, Ordering::Relaxed);
    metrics::counter!("sluice_dynamodb_damaged_ranges_total").increment(1);
    metrics::counter!("sluice_dynamodb_quarantined_bytes_total").increment((e - s) as u64);
    tracing::warn!(table, file, start = s, end = e, quarantine = %qpath.display(), copied = r.is_ok(),
        "damaged bytes in a dynamodb table file; the records in them are lost");
}

fn replay(meta: &TableMeta, buf: &[u8], recs: &[(usize, usize)], items: &mut BTreeMap<Key, Item>) -> usize {
    let mut bad = 0;
    for &(pos, n) in recs {
        let body = &buf[pos + HEADER..pos + n];
        let parsed = serde_json::from_slice(&body[1..]).ok().and_then(|j| item_from_json(&j).ok());
        let Some(item) = parsed else {
            bad += 1;
            continue;
        };
        let Some(key) = meta.key_of(&item) else {
            bad += 1;
            continue;
        };
        if body[0] == KIND_DELETE {
            items.remove(&key);
        } else {
            items.insert(key, item);
        }
    }
    bad
}

fn load_table(cfg: &DbConfig, dir: &Path, damage: &Damage) -> std::result::Result<Option<Table>, OpenError> {
    let meta_path = dir.join("meta.json");
    let meta: TableMeta = match std::fs::read(&meta_path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(m) => m,
        None => return Ok(None),
    };
    let mut items = BTreeMap::new();
    let mut rewrite = false;
    let snap_path = dir.join("snapshot");
    let mut snapshot_len = 0;
    if let Ok(buf) = std::fs::read(&snap_path) {
        let s = scan(&buf);
        for r in s.damaged.iter().copied().chain(s.tail.map(|t| (t, buf.len()))) {
            // A snapshot is fsynced before it is renamed into place: any damage is real damage.
            quarantine(cfg, damage, &meta.name, "snapshot", &buf, r);
            rewrite = true;
        }
        if replay(&meta, &buf, &s.records, &mut items) > 0 {
            rewrite = true;
        }
        snapshot_len = buf.len() as u64;
    }
    let log_path = dir.join("log");
    let buf = match std::fs::read(&log_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(OpenError::Io { path: log_path, source: e }),
    };
    let s = scan(&buf);
    for r in &s.damaged {
        quarantine(cfg, damage, &meta.name, "log", &buf, *r);
        rewrite = true;
    }
    if replay(&meta, &buf, &s.records, &mut items) > 0 {
        rewrite = true;
    }
    let mut log_len = buf.len() as u64;
    let log = OpenOptions::new().create(true).append(true).open(&log_path).map_err(at(&log_path))?;
    if let Some(t) = s.tail {
        // A torn tail: a write that was never acknowledged (acknowledged ones were fsynced).
        let cut = buf.len() - t;
        log.set_len(t as u64).and_then(|()| log.sync_all()).map_err(at(&log_path))?;
        log_len = t as u64;
        damage.truncated_bytes.fetch_add(cut as u64, Ordering::Relaxed);
        metrics::counter!("sluice_dynamodb_truncated_bytes_total").increment(cut as u64);
        tracing::warn!(table = %meta.name, bytes = cut, "cut a torn tail off a dynamodb table log");
    }
    let sync_file = log.try_clone().map_err(at(&log_path))?;
    let t = Table {
        dir: dir.to_owned(),
        inner: Mutex::new(Inner { meta, items, log, log_len, snapshot_len, dropped: false, failed: None }),
        written: AtomicU64::new(0),
        synced: Mutex::new(0),
        sync_file,
        fsync: cfg.fsync,
        compact_bytes: cfg.compact_bytes,
    };
    if rewrite {
        let mut g = t.lock();
        t.compact(&mut g).map_err(at(dir))?;
    }
    Ok(Some(t))
}

/// Whether `v` has the scalar type `ty`.
pub fn has_type(v: &Value, ty: ScalarType) -> bool {
    matches!((v, ty), (Value::S(_), ScalarType::S) | (Value::N(_), ScalarType::N) | (Value::B(_), ScalarType::B))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::number::Number;

    fn meta(name: &str) -> TableMeta {
        TableMeta {
            name: name.into(),
            hash: KeyAttr { name: "leaseKey".into(), ty: ScalarType::S },
            range: None,
            attrs: vec![KeyAttr { name: "leaseKey".into(), ty: ScalarType::S }],
            indexes: vec![],
            billing: "PAY_PER_REQUEST".into(),
            rcu: 0,
            wcu: 0,
            created_ms: 0,
            id: "x".into(),
            tags: vec![],
            deletion_protection: false,
        }
    }

    fn item(k: &str, n: u64) -> Item {
        let mut i = Item::new();
        i.insert("leaseKey".into(), Value::S(k.into()));
        i.insert("leaseCounter".into(), Value::N(Number::parse(&n.to_string()).unwrap()));
        i
    }

    fn put(t: &Table, k: &str, n: u64) {
        let mut g = t.lock();
        let it = item(k, n);
        let key = g.meta.key_of(&it).unwrap();
        let seq = t.put(&mut g, key, it).unwrap();
        drop(g);
        t.durable(seq).unwrap();
    }

    fn counter(db: &Db, table: &str, k: &str) -> Option<String> {
        let t = db.table(table).unwrap();
        let g = t.lock();
        let v = g.items.get(&(KeyPart::S(k.into()), None))?;
        Some(match &v["leaseCounter"] {
            Value::N(n) => n.to_string(),
            _ => unreachable!(),
        })
    }

    #[test]
    fn reopen_replays_puts_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DbConfig::new(dir.path());
        {
            let db = Db::open(cfg.clone()).unwrap();
            let t = db.create(meta("leases")).unwrap();
            for i in 0..50 {
                put(&t, &format!("k{i}"), i);
            }
            put(&t, "k1", 100);
            let mut g = t.lock();
            let seq = t.delete(&mut g, &(KeyPart::S("k2".into()), None)).unwrap();
            drop(g);
            t.durable(seq).unwrap();
            assert!(db.create(meta("leases")).is_err());
        }
        let db = Db::open(cfg.clone()).unwrap();
        assert_eq!(db.names(), vec!["leases".to_string()]);
        assert_eq!(counter(&db, "leases", "k1").as_deref(), Some("100"));
        assert_eq!(counter(&db, "leases", "k2"), None);
        assert_eq!(db.table("leases").unwrap().lock().items.len(), 49);
        db.drop_table("leases").unwrap();
        drop(db);
        let db = Db::open(cfg).unwrap();
        assert!(db.names().is_empty());
    }

    #[test]
    fn torn_tail_is_cut_and_writes_continue() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DbConfig::new(dir.path());
        {
            let db = Db::open(cfg.clone()).unwrap();
            let t = db.create(meta("t1")).unwrap();
            put(&t, "a", 1);
            put(&t, "b", 2);
        }
        let log = dir.path().join("tables/t-t1/log");
        let full = std::fs::read(&log).unwrap();
        // Half of a third record: a write that crashed before it was acknowledged.
        let extra = frame(KIND_PUT, br#"{"leaseKey":{"S":"c"},"leaseCounter":{"N":"3"}}"#);
        let mut torn = full.clone();
        torn.extend_from_slice(&extra[..extra.len() / 2]);
        std::fs::write(&log, &torn).unwrap();
        let db = Db::open(cfg.clone()).unwrap();
        assert_eq!(db.damage().truncated_bytes.load(Ordering::Relaxed), (extra.len() / 2) as u64);
        assert_eq!(std::fs::read(&log).unwrap(), full, "the torn tail is cut");
        assert_eq!(counter(&db, "t1", "b").as_deref(), Some("2"));
        assert_eq!(counter(&db, "t1", "c"), None);
        put(&db.table("t1").unwrap(), "d", 4);
        drop(db);
        let db = Db::open(cfg).unwrap();
        assert_eq!(counter(&db, "t1", "d").as_deref(), Some("4"));
        assert_eq!(db.damage().truncated_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn damaged_middle_record_is_quarantined_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DbConfig::new(dir.path());
        {
            let db = Db::open(cfg.clone()).unwrap();
            let t = db.create(meta("t1")).unwrap();
            for (i, k) in ["a", "b", "c"].iter().enumerate() {
                put(&t, k, i as u64);
            }
        }
        let log = dir.path().join("tables/t-t1/log");
        let mut buf = std::fs::read(&log).unwrap();
        let first = record_at(&buf, 0).unwrap();
        buf[first + HEADER + 5] ^= 0xff; // inside the body of "b"
        std::fs::write(&log, &buf).unwrap();
        let db = Db::open(cfg.clone()).unwrap();
        assert_eq!(db.damage().damaged_ranges.load(Ordering::Relaxed), 1);
        assert_eq!(counter(&db, "t1", "a").as_deref(), Some("0"));
        assert_eq!(counter(&db, "t1", "b"), None);
        assert_eq!(counter(&db, "t1", "c").as_deref(), Some("2"));
        assert_eq!(std::fs::read_dir(dir.path().join("quarantine")).unwrap().count(), 1);
        drop(db);
        // Rewritten at the first start: the second sees no damage.
        let db = Db::open(cfg).unwrap();
        assert_eq!(db.damage().damaged_ranges.load(Ordering::Relaxed), 0);
        assert_eq!(counter(&db, "t1", "c").as_deref(), Some("2"));
    }

    #[test]
    fn compaction_keeps_state_and_bounds_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = DbConfig::new(dir.path());
        cfg.compact_bytes = 4096;
        {
            let db = Db::open(cfg.clone()).unwrap();
            let t = db.create(meta("t1")).unwrap();
            for round in 0..40 {
                for k in 0..10 {
                    put(&t, &format!("k{k}"), round);
                }
            }
        }
        let log_len = std::fs::metadata(dir.path().join("tables/t-t1/log")).unwrap().len();
        assert!(log_len <= 4096 + 200, "log was compacted ({log_len} bytes)");
        assert!(dir.path().join("tables/t-t1/snapshot").exists());
        let db = Db::open(cfg).unwrap();
        for k in 0..10 {
            assert_eq!(counter(&db, "t1", &format!("k{k}")).as_deref(), Some("39"));
        }
    }
}
