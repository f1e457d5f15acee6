//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sluice_core::hash::HashKeyRange;
use sluice_storage::{AppendRecord, Durability, StorageError, Store, StoreConfig, StreamMeta};

pub const STREAM: &str = "s1";
pub const TAG: u32 = 0xabcd;

pub fn config(dir: &Path, segment_bytes: u64, durability: Durability) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        durability,
        segment_bytes,
        retention_thread: true,
        linger: std::time::Duration::ZERO,
    }
}

pub fn stream_meta(name: &str, tag: u32, shards: u32) -> StreamMeta {
    StreamMeta::new(name.to_string(), tag, 0, vec![HashKeyRange::FULL; shards as usize])
}

pub fn create_stream(store: &Store, name: &str, tag: u32, shards: u32) {
    store
        .mutate_catalog(|c| {
            c.streams.insert(name.to_string(), stream_meta(name, tag, shards));
            Ok::<_, StorageError>(())
        })
        .expect("create stream");
}

pub fn open(dir: &Path, segment_bytes: u64, durability: Durability) -> Store {
    Store::open(config(dir, segment_bytes, durability)).expect("open store")
}

pub fn rec(shard: u32, pk: &str, data: &[u8]) -> AppendRecord {
    AppendRecord { shard, partition_key: pk.to_string(), data: bytes::Bytes::copy_from_slice(data) }
}

/// Reads everything retained in a shard, in small batches.
pub fn read_all(store: &Store, stream: &str, tag: u32, shard: u32, batch: usize) -> Vec<sluice_storage::StoredRecord> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let b = store.read(stream, tag, shard, from, batch, usize::MAX).expect("read");
        if b.records.is_empty() {
            assert_eq!(b.next_ordinal, b.tip.next_ordinal.max(from));
            return out;
        }
        assert!(b.records.len() <= batch);
        from = b.next_ordinal;
        out.extend(b.records);
    }
}

pub fn shard_dir(data_dir: &Path, stream: &str, tag: u32, shard: u32) -> PathBuf {
    data_dir.join("streams").join(format!("{stream}.{tag:08x}")).join(format!("{shard:012}"))
}

pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read shard dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}
