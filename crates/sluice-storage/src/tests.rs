//! White-box tests: write failures (simulated full disk) roll back cleanly.

use std::path::{Path, PathBuf};

use sluice_core::hash::HashKeyRange;

use crate::faults::{self, Fault};
use crate::*;

fn meta(shards: u32) -> StreamMeta {
    StreamMeta::new("s".into(), 1, 0, vec![HashKeyRange::FULL; shards as usize])
}

fn setup(dir: &Path, segment_bytes: u64) -> Store {
    let store = Store::open(StoreConfig {
        data_dir: dir.to_path_buf(),
        durability: Durability::Fsync,
        segment_bytes,
        retention_thread: true,
        linger: std::time::Duration::ZERO,
    })
    .expect("open");
    store
        .mutate_catalog(|c| {
            c.streams.insert("s".into(), meta(2));
            Ok::<_, StorageError>(())
        })
        .expect("create");
    store
}

fn shard_dir(dir: &Path, shard: u32) -> PathBuf {
    dir.join("streams").join("s.00000001").join(format!("{shard:012}"))
}

fn recs(shard: u32, n: usize, tag: u8) -> Vec<AppendRecord> {
    (0..n).map(|i| AppendRecord { shard, partition_key: format!("k{i}"), data: vec![tag; 50 + i].into() }).collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt")
}

fn all(store: &Store, shard: u32) -> Vec<StoredRecord> {
    store.read("s", 1, shard, 0, usize::MAX, usize::MAX).expect("read").records
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

#[test]
fn failed_writes_roll_back_and_the_store_stays_usable() {
    for fault in [Fault::BeforeWrite, Fault::AfterWrite] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let store = setup(dir, 700);
        let rt = rt();
        rt.block_on(store.append("s", 1, recs(0, 5, 1))).expect("append");
        rt.block_on(store.append("s", 1, recs(1, 3, 1))).expect("append");
        let before0 = all(&store, 0);
        let bytes0 = dir_bytes(&shard_dir(dir, 0));
        let segs0 = std::fs::read_dir(shard_dir(dir, 0)).expect("dir").count();

        faults::inject(&shard_dir(dir, 0), fault);
        // A call touching a failing shard and a healthy one: all of it fails.
        let mut mixed = recs(1, 2, 2);
        mixed.extend(recs(0, 30, 2)); // enough to roll over segments
        let e = rt.block_on(store.append("s", 1, mixed));
        assert!(
            matches!(&e, Err(StorageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::StorageFull),
            "{e:?}"
        );
        assert_eq!(all(&store, 0), before0);
        assert_eq!(all(&store, 1).len(), 3, "healthy shard of the failed group rolled back too");
        assert_eq!(dir_bytes(&shard_dir(dir, 0)), bytes0, "failed bytes truncated");
        assert_eq!(std::fs::read_dir(shard_dir(dir, 0)).expect("dir").count(), segs0, "new segments removed");
        assert_eq!(store.shard_position("s", 1, 0).expect("pos").next_ordinal, 6);
        faults::clear(&shard_dir(dir, 0));

        let a = rt.block_on(store.append("s", 1, recs(0, 30, 3))).expect("append after recovery");
        assert_eq!(a[0].ordinal, 6, "ordinals continue without a gap");
        assert_eq!(a[29].ordinal, 35);
        let b = rt.block_on(store.append("s", 1, recs(1, 1, 3))).expect("append");
        assert_eq!(b[0].ordinal, 4);
        let got = all(&store, 0);
        assert_eq!(got.len(), 35);
        assert!(got[5..].iter().all(|r| r.data[0] == 3));
        drop(store);
        let store = Store::open(StoreConfig {
            data_dir: dir.to_path_buf(),
            durability: Durability::Fsync,
            segment_bytes: 700,
            retention_thread: true,
            linger: std::time::Duration::ZERO,
        })
        .expect("reopen");
        assert_eq!(all(&store, 0), got);
        assert_eq!(all(&store, 1).len(), 4);
    }
}

#[test]
fn oversized_records_are_refused_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = setup(tmp.path(), 1 << 20);
    let mut r = recs(0, 2, 1);
    r.push(AppendRecord { shard: 1, partition_key: String::new(), data: vec![0; MAX_RECORD_BYTES + 1].into() });
    let e = rt().block_on(store.append("s", 1, r));
    assert!(matches!(e, Err(StorageError::RecordTooLarge { .. })));
    assert_eq!(store.shard_position("s", 1, 0).expect("pos").next_ordinal, 1);
}
