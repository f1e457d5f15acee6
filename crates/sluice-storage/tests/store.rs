//! Behaviour of the public `Store` API.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use sluice_storage::{Appended, Durability, StorageError, Store};

fn payload(shard: u32, i: usize) -> Vec<u8> {
    let len = (i * 37 + shard as usize * 11) % 180;
    (0..len).map(|j| (i + j) as u8).collect()
}

#[test]
fn round_trip_across_shards_and_segment_rollovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 400, Durability::Fsync);
    create_stream(&store, STREAM, TAG, 3);
    let rt = rt();
    let mut expected: HashMap<u32, Vec<(String, Vec<u8>)>> = HashMap::new();
    let mut i = 0usize;
    for batch in 0..25 {
        let mut recs = Vec::new();
        for _ in 0..(1 + batch % 7) {
            let shard = (i % 3) as u32;
            recs.push(rec(shard, &format!("pk-{i}"), &payload(shard, i)));
            i += 1;
        }
        let acks = rt.block_on(store.append(STREAM, TAG, recs.clone())).unwrap();
        assert_eq!(acks.len(), recs.len());
        for (r, a) in recs.iter().zip(&acks) {
            let v = expected.entry(r.shard).or_default();
            v.push((r.partition_key.clone(), r.data.to_vec()));
            assert_eq!(a.ordinal, v.len() as u64, "ordinals are gap-free from 1");
        }
    }
    for shard in 0..3 {
        let want = &expected[&shard];
        for batch in [1, 3, 1000] {
            let got = read_all(&store, STREAM, TAG, shard, batch);
            assert_eq!(got.len(), want.len());
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(g.ordinal, k as u64 + 1);
                assert_eq!((&g.partition_key, &g.data), (&w.0, &w.1));
            }
            let arrivals: Vec<u64> = got.iter().map(|r| r.arrival_ms).collect();
            assert!(arrivals.windows(2).all(|w| w[0] <= w[1]), "arrival non-decreasing");
        }
        let pos = store.shard_position(STREAM, TAG, shard).unwrap();
        assert_eq!((pos.first_ordinal, pos.next_ordinal, pos.closed), (1, want.len() as u64 + 1, false));
        // Reads starting in the middle of every position.
        for from in 1..=want.len() as u64 {
            let b = store.read(STREAM, TAG, shard, from, 2, usize::MAX).unwrap();
            assert_eq!(b.records[0].ordinal, from);
            assert_eq!(b.next_ordinal, b.records.last().unwrap().ordinal + 1);
        }
        let segs = segments(&shard_dir(dir.path(), STREAM, TAG, shard));
        assert!(segs.len() > 3, "tiny segments roll over ({} segments)", segs.len());
    }
}

#[test]
fn read_limits_and_edges() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20, Durability::Os);
    create_stream(&store, STREAM, TAG, 1);
    let empty = store.read(STREAM, TAG, 0, 0, 10, 1000).unwrap();
    assert!(empty.records.is_empty());
    assert_eq!((empty.next_ordinal, empty.tip.first_ordinal, empty.tip.next_ordinal), (1, 1, 1));
    assert_eq!(empty.tip.last_arrival_ms, None);
    let recs: Vec<_> = (0..10).map(|i| rec(0, "k", &[i as u8; 100])).collect();
    common::rt().block_on(store.append(STREAM, TAG, recs)).unwrap();
    // Byte budget: key (1) + data (100) per record.
    let b = store.read(STREAM, TAG, 0, 0, 100, 250).unwrap();
    assert_eq!(b.records.len(), 2);
    assert_eq!(b.next_ordinal, 3);
    // Always at least one record.
    let b = store.read(STREAM, TAG, 0, 5, 100, 1).unwrap();
    assert_eq!(b.records.len(), 1);
    assert_eq!(b.records[0].ordinal, 5);
    // Past the tip.
    let b = store.read(STREAM, TAG, 0, 11, 100, 1000).unwrap();
    assert!(b.records.is_empty());
    assert_eq!(b.next_ordinal, 11);
    assert_eq!(b.tip.next_ordinal, 11);
    assert!(matches!(store.read("nope", TAG, 0, 1, 1, 1), Err(StorageError::NoSuchStream)));
    assert!(matches!(store.read(STREAM, TAG + 1, 0, 1, 1, 1), Err(StorageError::NoSuchStream)));
    assert!(matches!(store.read(STREAM, TAG, 7, 1, 1, 1), Err(StorageError::NoSuchShard)));
    let e = common::rt().block_on(store.append("nope", TAG, vec![rec(0, "k", b"x")]));
    assert!(matches!(e, Err(StorageError::NoSuchStream)));
}

#[test]
fn concurrent_appends_are_all_acked_and_readable_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 64 << 10, Durability::Fsync);
    create_stream(&store, STREAM, TAG, 4);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    const TASKS: usize = 16;
    const CALLS: usize = 25;
    const PER_CALL: usize = 40;
    let acks: Vec<Vec<(u32, usize, Appended)>> = rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let mut out = Vec::new();
                let mut seq = 0usize;
                for _ in 0..CALLS {
                    let recs: Vec<_> = (0..PER_CALL)
                        .map(|k| {
                            let shard = ((t + k) % 4) as u32;
                            let data = format!("{t}:{}", seq + k).into_bytes();
                            rec(shard, &format!("t{t}"), &data)
                        })
                        .collect();
                    let shards: Vec<u32> = recs.iter().map(|r| r.shard).collect();
                    let a = store.append(STREAM, TAG, recs).await.unwrap();
                    for (k, (s, a)) in shards.into_iter().zip(a).enumerate() {
                        out.push((s, seq + k, a));
                    }
                    seq += PER_CALL;
                }
                out
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.push(h.await.unwrap());
        }
        all
    });
    let total: usize = acks.iter().map(Vec::len).sum();
    assert_eq!(total, TASKS * CALLS * PER_CALL);
    let mut per_shard: HashMap<u32, Vec<u64>> = HashMap::new();
    for task in &acks {
        for &(s, _, a) in task {
            per_shard.entry(s).or_default().push(a.ordinal);
        }
    }
    for shard in 0..4u32 {
        let mut ords = per_shard.remove(&shard).unwrap_or_default();
        ords.sort_unstable();
        let n = ords.len() as u64;
        assert_eq!(ords, (1..=n).collect::<Vec<_>>(), "shard {shard} ordinals unique and gap-free");
        let got = read_all(&store, STREAM, TAG, shard, 333);
        assert_eq!(got.len() as u64, n);
        // Each task's records appear in its own submission order.
        let mut last_seq: HashMap<usize, usize> = HashMap::new();
        for r in &got {
            let s = String::from_utf8(r.data.clone()).unwrap();
            let (t, seq) = s.split_once(':').unwrap();
            let (t, seq): (usize, usize) = (t.parse().unwrap(), seq.parse().unwrap());
            if let Some(prev) = last_seq.insert(t, seq) {
                assert!(prev < seq, "task {t} order kept in shard {shard}");
            }
            assert_eq!(r.partition_key, format!("t{t}"));
        }
    }
    // Acks match what is stored.
    for task in &acks {
        for &(s, seq, a) in task.iter().step_by(97) {
            let b = store.read(STREAM, TAG, s, a.ordinal, 1, usize::MAX).unwrap();
            assert_eq!(b.records[0].ordinal, a.ordinal);
            assert_eq!(b.records[0].arrival_ms, a.arrival_ms);
            assert!(String::from_utf8_lossy(&b.records[0].data).ends_with(&format!(":{seq}")));
        }
    }
}

#[test]
fn reopen_keeps_everything_and_ordinals_continue() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let before = {
        let store = open(dir.path(), 500, Durability::Fsync);
        create_stream(&store, STREAM, TAG, 2);
        for i in 0..30 {
            let recs = vec![rec(0, "a", &payload(0, i)), rec(1, "b", &payload(1, i)), rec(0, "c", b"")];
            rt.block_on(store.append(STREAM, TAG, recs)).unwrap();
        }
        (read_all(&store, STREAM, TAG, 0, 1000), read_all(&store, STREAM, TAG, 1, 1000))
    };
    let store = open(dir.path(), 500, Durability::Fsync);
    assert_eq!(read_all(&store, STREAM, TAG, 0, 7), before.0);
    assert_eq!(read_all(&store, STREAM, TAG, 1, 7), before.1);
    let last_arrival = before.0.last().unwrap().arrival_ms;
    let a = rt.block_on(store.append(STREAM, TAG, vec![rec(0, "z", b"after")])).unwrap();
    assert_eq!(a[0].ordinal, before.0.len() as u64 + 1);
    assert!(a[0].arrival_ms >= last_arrival);
    drop(store);
    // A second reopen goes through the sidecar indexes of sealed segments.
    let store = open(dir.path(), 500, Durability::Fsync);
    let all = read_all(&store, STREAM, TAG, 0, 1000);
    assert_eq!(all.len(), before.0.len() + 1);
    assert_eq!(&all[..before.0.len()], &before.0[..]);
    assert_eq!(all.last().unwrap().data, b"after");
    assert!(store.catalog().streams.contains_key(STREAM));
}

fn write_some(dir: &std::path::Path, n: usize) -> Vec<sluice_storage::StoredRecord> {
    let store = open(dir, 1 << 20, Durability::Os);
    create_stream(&store, STREAM, TAG, 1);
    let rt = rt();
    for i in 0..n {
        rt.block_on(store.append(STREAM, TAG, vec![rec(0, &format!("k{i}"), &payload(0, i + 3))])).unwrap();
    }
    read_all(&store, STREAM, TAG, 0, 1000)
}

#[test]
fn a_cut_tail_after_a_clean_shutdown_is_counted_and_its_ordinal_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let before = write_some(dir.path(), 20);
    let seg = segments(&shard_dir(dir.path(), STREAM, TAG, 0)).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let store = open(dir.path(), 1 << 20, Durability::Os);
    let after = read_all(&store, STREAM, TAG, 0, 1000);
    assert_eq!(after, before[..19]);
    // The store was shut down cleanly, so the cut record had been acknowledged: it is counted
    // as lost and its ordinal is not handed out again.
    assert_eq!(store.damage().corrupt_records, 1);
    let a = common::rt().block_on(store.append(STREAM, TAG, vec![rec(0, "new", b"new")])).unwrap();
    assert_eq!(a[0].ordinal, 21);
    let all = read_all(&store, STREAM, TAG, 0, 1000);
    assert_eq!(all.len(), 20);
    assert_eq!(all[19].data, b"new");
}

#[test]
fn garbage_after_the_last_record_is_truncated_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let before = write_some(dir.path(), 12);
    let seg = segments(&shard_dir(dir.path(), STREAM, TAG, 0)).pop().unwrap();
    let clean_len = std::fs::metadata(&seg).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        // A plausible frame header with a bad checksum, then junk.
        f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4]).unwrap();
        f.write_all(&[0xAB; 77]).unwrap();
    }
    let store = open(dir.path(), 1 << 20, Durability::Os);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), clean_len);
    assert_eq!(read_all(&store, STREAM, TAG, 0, 1000), before);
    let a = common::rt().block_on(store.append(STREAM, TAG, vec![rec(0, "new", b"new")])).unwrap();
    assert_eq!(a[0].ordinal, 13);
    drop(store);
    let store = open(dir.path(), 1 << 20, Durability::Os);
    assert_eq!(read_all(&store, STREAM, TAG, 0, 1000).len(), 13);
}

#[test]
fn closed_shard_rejects_appends_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20, Durability::Fsync);
    create_stream(&store, STREAM, TAG, 2);
    let rt = rt();
    rt.block_on(store.append(STREAM, TAG, vec![rec(0, "a", b"1"), rec(1, "b", b"2")])).unwrap();
    let mut rx = store.watch(STREAM, TAG, 1).unwrap();
    rx.borrow_and_update();
    store
        .mutate_catalog(|c| {
            let s = c.streams.get_mut(STREAM).unwrap();
            s.shards[1].closed_ms = Some(5);
            Ok::<_, StorageError>(())
        })
        .unwrap();
    assert!(rx.has_changed().unwrap(), "closing pokes watchers");
    assert!(store.shard_position(STREAM, TAG, 1).unwrap().closed);
    let e = rt.block_on(store.append(STREAM, TAG, vec![rec(1, "b", b"x")]));
    assert!(matches!(e, Err(StorageError::ShardClosed { shard: 1 })), "{e:?}");
    let e = rt.block_on(store.append(STREAM, TAG, vec![rec(0, "a", b"y"), rec(1, "b", b"x")]));
    assert!(matches!(e, Err(StorageError::ShardClosed { shard: 1 })));
    let e = rt.block_on(store.append(STREAM, TAG, vec![rec(0, "a", b"y"), rec(9, "b", b"x")]));
    assert!(matches!(e, Err(StorageError::ShardClosed { shard: 9 })));
    assert_eq!(store.shard_position(STREAM, TAG, 0).unwrap().next_ordinal, 2, "nothing of a failed call lands");
    assert_eq!(store.shard_position(STREAM, TAG, 1).unwrap().next_ordinal, 2);
    // The closed shard stays readable, and stays closed after reopen.
    assert_eq!(read_all(&store, STREAM, TAG, 1, 10).len(), 1);
    drop(store);
    let store = open(dir.path(), 1 << 20, Durability::Fsync);
    let pos = store.shard_position(STREAM, TAG, 1).unwrap();
    assert!(pos.closed);
    assert_eq!(pos.next_ordinal, 2);
    let e = rt.block_on(store.append(STREAM, TAG, vec![rec(1, "b", b"x")]));
    assert!(matches!(e, Err(StorageError::ShardClosed { shard: 1 })));
    rt.block_on(store.append(STREAM, TAG, vec![rec(0, "a", b"ok")])).unwrap();
}

#[test]
fn seek_timestamp_finds_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 8 << 10, Durability::Os);
    create_stream(&store, STREAM, TAG, 1);
    let rt = rt();
    let mut acks = Vec::new();
    for b in 0..6 {
        let recs: Vec<_> = (0..250).map(|i| rec(0, "k", &payload(0, i + b))).collect();
        acks.extend(rt.block_on(store.append(STREAM, TAG, recs)).unwrap());
        std::thread::sleep(Duration::from_millis(15));
    }
    let next = acks.len() as u64 + 1;
    let expect = |ts: u64| acks.iter().find(|a| a.arrival_ms >= ts).map_or(next, |a| a.ordinal);
    let mut probes = vec![0, 1, u64::MAX];
    for a in acks.iter().step_by(50) {
        probes.extend([a.arrival_ms - 1, a.arrival_ms, a.arrival_ms + 1]);
    }
    for ts in probes {
        assert_eq!(store.seek_timestamp(STREAM, TAG, 0, ts).unwrap(), expect(ts), "ts {ts}");
    }
    assert_eq!(store.seek_timestamp(STREAM, TAG, 0, 0).unwrap(), 1);
    // Empty shard.
    create_stream(&store, "other", 1, 1);
    assert_eq!(store.seek_timestamp("other", 1, 0, 5).unwrap(), 1);
}

#[test]
fn retention_trims_old_segments_but_keeps_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1000, Durability::Os);
    create_stream(&store, STREAM, TAG, 1);
    let rt = rt();
    let mut n = 0u64;
    for i in 0..40 {
        n += rt.block_on(store.append(STREAM, TAG, vec![rec(0, "k", &payload(0, i + 20))])).unwrap().len() as u64;
    }
    let sd = shard_dir(dir.path(), STREAM, TAG, 0);
    let before = segments(&sd).len();
    assert!(before > 2);
    // Nothing is old yet.
    assert_eq!(store.enforce_retention(sluice_now()).unwrap(), 0);
    let later = sluice_now() + 25 * 3_600_000;
    let removed = store.enforce_retention(later).unwrap();
    assert_eq!(removed as usize, before - 1);
    assert_eq!(segments(&sd).len(), 1);
    let pos = store.shard_position(STREAM, TAG, 0).unwrap();
    assert!(pos.first_ordinal > 1 && pos.first_ordinal < pos.next_ordinal);
    assert_eq!(pos.next_ordinal, n + 1);
    // Reads from before the retained range start at the first retained record.
    let b = store.read(STREAM, TAG, 0, 1, 1000, usize::MAX).unwrap();
    assert_eq!(b.records[0].ordinal, pos.first_ordinal);
    assert_eq!(b.records.last().unwrap().ordinal, n);
    assert_eq!(store.seek_timestamp(STREAM, TAG, 0, 0).unwrap(), pos.first_ordinal);
    let a = rt.block_on(store.append(STREAM, TAG, vec![rec(0, "k", b"more")])).unwrap();
    assert_eq!(a[0].ordinal, n + 1);
    drop(store);
    let store = open(dir.path(), 1000, Durability::Os);
    let pos2 = store.shard_position(STREAM, TAG, 0).unwrap();
    assert_eq!((pos2.first_ordinal, pos2.next_ordinal), (pos.first_ordinal, n + 2));
    // Even the only segment (active) survives.
    assert_eq!(store.enforce_retention(later + 1_000_000_000).unwrap(), 0);
}

fn sluice_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn second_open_of_the_same_dir_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20, Durability::Os);
    match Store::open(config(dir.path(), 1 << 20, Durability::Os)) {
        Err(StorageError::Locked(p)) => assert!(p.ends_with("LOCK")),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(store);
    let _again = open(dir.path(), 1 << 20, Durability::Os);
}

#[test]
fn catalog_mutations_persist_and_failed_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let secret;
    {
        let store = open(dir.path(), 1 << 20, Durability::Fsync);
        secret = store.secret();
        assert_ne!(secret, [0u8; 32]);
        create_stream(&store, STREAM, TAG, 2);
        store
            .mutate_catalog(|c| {
                c.streams.get_mut(STREAM).unwrap().tags.insert("team".into(), "blue".into());
                Ok::<_, StorageError>(())
            })
            .unwrap();
        let r: Result<(), StorageError> = store.mutate_catalog(|c| {
            c.streams.clear();
            Err(StorageError::Corrupt("nope".into()))
        });
        assert!(r.is_err());
        assert!(store.catalog().streams.contains_key(STREAM));
        let n = store.mutate_catalog(|c| Ok::<_, StorageError>(c.streams.len())).unwrap();
        assert_eq!(n, 1);
        common::rt().block_on(store.append(STREAM, TAG, vec![rec(1, "k", b"v")])).unwrap();
    }
    let store = open(dir.path(), 1 << 20, Durability::Fsync);
    assert_eq!(store.secret(), secret);
    let cat = store.catalog();
    let s = &cat.streams[STREAM];
    assert_eq!((s.tag, s.shards.len(), s.tags.get("team").map(String::as_str)), (TAG, 2, Some("blue")));
    assert_eq!(store.shard_position(STREAM, TAG, 1).unwrap().next_ordinal, 2);

    // Add a shard (split-like), then delete the stream.
    store
        .mutate_catalog(|c| {
            let s = c.streams.get_mut(STREAM).unwrap();
            let mut child = s.shards[0].clone();
            child.index = 2;
            child.parent = Some(0);
            s.shards.push(child);
            s.next_shard_index = 3;
            Ok::<_, StorageError>(())
        })
        .unwrap();
    common::rt().block_on(store.append(STREAM, TAG, vec![rec(2, "k", b"child")])).unwrap();
    let stream_dir = dir.path().join("streams").join(format!("{STREAM}.{TAG:08x}"));
    assert!(stream_dir.join("000000000002").is_dir());
    store
        .mutate_catalog(|c| {
            c.streams.remove(STREAM);
            Ok::<_, StorageError>(())
        })
        .unwrap();
    assert!(!stream_dir.exists(), "deleted stream's data is removed");
    assert!(matches!(store.shard_position(STREAM, TAG, 0), Err(StorageError::NoSuchStream)));
    // Same name, new incarnation: empty.
    create_stream(&store, STREAM, TAG + 1, 1);
    assert_eq!(store.shard_position(STREAM, TAG + 1, 0).unwrap().next_ordinal, 1);
    drop(store);
    let store = open(dir.path(), 1 << 20, Durability::Fsync);
    assert_eq!(store.catalog().streams[STREAM].tag, TAG + 1);
    assert!(!stream_dir.exists());
}

#[test]
fn watch_reports_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20, Durability::Os);
    create_stream(&store, STREAM, TAG, 1);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rx = store.watch(STREAM, TAG, 0).unwrap();
    assert_eq!(*rx.borrow_and_update(), 1);
    let s2 = store.clone();
    rt.block_on(async move {
        let waiter = tokio::spawn(async move {
            rx.changed().await.unwrap();
            *rx.borrow_and_update()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        s2.append(STREAM, TAG, vec![rec(0, "k", b"a"), rec(0, "k", b"b")]).await.unwrap();
        let v = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(v, 3);
    });
}

#[test]
fn shutdown_drains_and_refuses_new_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20, Durability::Fsync);
    create_stream(&store, STREAM, TAG, 1);
    let rt = rt();
    rt.block_on(store.append(STREAM, TAG, vec![rec(0, "k", b"a")])).unwrap();
    store.shutdown();
    let e = rt.block_on(store.append(STREAM, TAG, vec![rec(0, "k", b"b")]));
    assert!(matches!(e, Err(StorageError::ShuttingDown)));
    assert_eq!(read_all(&store, STREAM, TAG, 0, 10).len(), 1);
    store.shutdown();
}

#[test]
fn store_is_shareable_and_append_future_is_send() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Store>();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20, Durability::Os);
    create_stream(&store, STREAM, TAG, 1);
    let fut = store.append(STREAM, TAG, vec![rec(0, "k", b"v")]);
    send(&fut);
    drop(fut);
}

#[test]
fn trim_below_deletes_only_whole_sealed_segments_below_the_ordinal() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1000, Durability::Os);
    create_stream(&store, STREAM, TAG, 1);
    let rt = rt();
    for i in 0..60 {
        rt.block_on(store.append(STREAM, TAG, vec![rec(0, "k", &[i as u8; 100])])).unwrap();
    }
    let sd = shard_dir(dir.path(), STREAM, TAG, 0);
    let firsts: Vec<u64> =
        segments(&sd).iter().map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap()).collect();
    assert!(firsts.len() > 3, "{firsts:?}");
    // Nothing below the first segment's end: nothing goes.
    let t = store.trim_below(STREAM, TAG, 0, firsts[1] - 1).unwrap();
    assert_eq!((t.segments, t.records, t.first_ordinal), (0, 0, 1));
    // Exactly up to the second segment's last record: the first two go.
    let t = store.trim_below(STREAM, TAG, 0, firsts[2]).unwrap();
    assert_eq!((t.segments, t.records, t.first_ordinal), (2, firsts[2] - 1, firsts[2]));
    assert_eq!(segments(&sd).len(), firsts.len() - 2);
    let b = store.read(STREAM, TAG, 0, 1, 1000, usize::MAX).unwrap();
    assert_eq!(b.records[0].ordinal, firsts[2], "reads before the kept range start at its first record");
    assert_eq!(b.records.len() as u64, 60 - (firsts[2] - 1));
    // Past everything: the newest (active) segment always stays.
    let t = store.trim_below(STREAM, TAG, 0, u64::MAX).unwrap();
    assert_eq!(t.first_ordinal, *firsts.last().unwrap());
    assert_eq!(segments(&sd).len(), 1);
    let a = rt.block_on(store.append(STREAM, TAG, vec![rec(0, "k", b"more")])).unwrap();
    assert_eq!(a[0].ordinal, 61, "ordinals continue");
    drop(store);
    let store = open(dir.path(), 1000, Durability::Os);
    let pos = store.shard_position(STREAM, TAG, 0).unwrap();
    assert_eq!((pos.first_ordinal, pos.next_ordinal), (*firsts.last().unwrap(), 62), "the trim is durable");
    assert!(matches!(store.trim_below("nope", TAG, 0, 5), Err(StorageError::NoSuchStream)));
}

#[test]
fn trim_older_than_works_per_shard_without_the_retention_thread() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1000, Durability::Os);
    cfg.retention_thread = false;
    let store = Store::open(cfg).unwrap();
    create_stream(&store, STREAM, TAG, 2);
    let rt = rt();
    for i in 0..40 {
        rt.block_on(store.append(STREAM, TAG, vec![rec(0, "k", &[i as u8; 100]), rec(1, "k", b"x")])).unwrap();
    }
    let sd = shard_dir(dir.path(), STREAM, TAG, 0);
    let before = segments(&sd).len();
    assert_eq!(store.trim_older_than(STREAM, TAG, 0, 0).unwrap().segments, 0, "nothing is that old");
    let t = store.trim_older_than(STREAM, TAG, 0, sluice_now() + 1000).unwrap();
    assert_eq!(t.segments as usize, before - 1);
    assert_eq!(t.records, t.first_ordinal - 1);
    assert_eq!(store.shard_position(STREAM, TAG, 1).unwrap().first_ordinal, 1, "the other shard is untouched");
}
