//! The write-ahead journal: records and the sources' cursors survive an unclean stop together,
//! one fdatasync covers a group, damage in the journal costs only what it hit.
//!
//! An unclean stop is simulated by copying the data directory of a running store (what the
//! page cache holds is what a killed process leaves), then editing the copy the way a kill at
//! another moment would have left it.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use sluice_storage::{AppendPart, Durability, Store};

const SHARDS: u32 = 4;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

fn group(i: u32, per_shard: u32) -> Vec<AppendPart> {
    let records = (0..SHARDS)
        .flat_map(|s| {
            (0..per_shard).map(move |k| rec(s, &format!("g{i}-{k}"), format!("group {i} shard {s} #{k}").as_bytes()))
        })
        .collect();
    vec![AppendPart { stream: STREAM.into(), tag: TAG, records }]
}

fn append_groups(store: &Store, range: std::ops::Range<u32>, per_shard: u32) {
    let rt = rt();
    for i in range {
        let cursors = vec![("feed".to_string(), format!("c{i}"))];
        rt.block_on(store.append_committed(group(i, per_shard), cursors)).expect("append");
    }
}

fn newest_segment(dir: &Path, shard: u32) -> PathBuf {
    segments(&shard_dir(dir, STREAM, TAG, shard)).pop().expect("a segment")
}

fn journal_file(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .expect("journal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert_eq!(v.len(), 1, "one journal generation at a time: {v:?}");
    v.pop().expect("journal")
}

fn total_records(store: &Store) -> usize {
    (0..SHARDS).map(|s| read_all(store, STREAM, TAG, s, 1000).len()).sum()
}

#[test]
fn a_kill_between_the_journal_and_the_segments_keeps_records_and_cursor_together() {
    let tmp = tempfile::tempdir().expect("tmp");
    let live = tmp.path().join("live");
    let store = open(&live, 64 << 20, Durability::Fsync);
    create_stream(&store, STREAM, TAG, SHARDS);
    append_groups(&store, 0..19, 25);
    let lengths: Vec<u64> =
        (0..SHARDS).map(|s| std::fs::metadata(newest_segment(&live, s)).expect("meta").len()).collect();
    append_groups(&store, 19..20, 25);
    let image = tmp.path().join("image");
    copy_dir(&live, &image);
    // As if killed after the journal write of group 19 and before its segment writes: on
    // two shards nothing, on one a write cut in the middle.
    for s in 0..3 {
        let seg = newest_segment(&image, s);
        let f = std::fs::OpenOptions::new().write(true).open(&seg).expect("open");
        let cut = if s == 2 { lengths[s as usize] + 100 } else { lengths[s as usize] };
        f.set_len(cut).expect("cut");
    }
    let reopened = open(&image, 64 << 20, Durability::Fsync);
    assert_eq!(reopened.committed_cursor("feed").as_deref(), Some("c19"));
    assert_eq!(total_records(&reopened), 20 * 25 * SHARDS as usize, "the journal completed the cut writes");
    let last = read_all(&reopened, STREAM, TAG, 0, 1000).pop().expect("records");
    assert_eq!(last.data, b"group 19 shard 0 #24");
    assert_eq!(reopened.damage().corrupt_records, 0);
    // The recovered store appends on, and its cursor survives a clean restart.
    append_groups(&reopened, 20..21, 1);
    drop(reopened);
    let again = open(&image, 64 << 20, Durability::Fsync);
    assert_eq!(again.committed_cursor("feed").as_deref(), Some("c20"));
    assert_eq!(total_records(&again), 20 * 25 * SHARDS as usize + SHARDS as usize);
    drop(store);
}

#[test]
fn a_clean_stop_leaves_a_snapshot_only_and_cursors_of_several_sources() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open(tmp.path(), 64 << 20, Durability::Fsync);
    create_stream(&store, STREAM, TAG, SHARDS);
    let rt = rt();
    for (i, source) in ["a", "b", "a"].iter().enumerate() {
        let cursors = vec![(source.to_string(), format!("{source}{i}"))];
        rt.block_on(store.append_committed(group(i as u32, 3), cursors)).expect("append");
    }
    // A call with a cursor and no records still commits the cursor.
    rt.block_on(store.append_committed(vec![], vec![("c".into(), "only".into())])).expect("cursor only");
    assert_eq!(store.committed_cursor("a").as_deref(), Some("a2"));
    store.shutdown();
    drop(store);
    let journal = journal_file(tmp.path());
    assert!(std::fs::metadata(&journal).expect("meta").len() < 200, "only the snapshot is left");
    let store = open(tmp.path(), 64 << 20, Durability::Fsync);
    assert_eq!(store.committed_cursor("a").as_deref(), Some("a2"));
    assert_eq!(store.committed_cursor("b").as_deref(), Some("b1"));
    assert_eq!(store.committed_cursor("c").as_deref(), Some("only"));
    assert_eq!(store.committed_cursor("nobody"), None);
    assert_eq!(total_records(&store), 3 * 3 * SHARDS as usize);
}

#[test]
fn damage_in_the_journal_is_quarantined_and_costs_only_its_cursor() {
    let tmp = tempfile::tempdir().expect("tmp");
    let live = tmp.path().join("live");
    let store = open(&live, 64 << 20, Durability::Fsync);
    create_stream(&store, STREAM, TAG, SHARDS);
    append_groups(&store, 0..10, 5);
    let before_last = std::fs::metadata(journal_file(&live)).expect("meta").len();
    append_groups(&store, 10..11, 5);

    // A flipped byte in an older record: its cursor is superseded anyway, nothing is lost.
    let middle = tmp.path().join("middle");
    copy_dir(&live, &middle);
    let j = journal_file(&middle);
    flip(&j, before_last / 2);
    let s = open(&middle, 64 << 20, Durability::Fsync);
    assert_eq!(s.committed_cursor("feed").as_deref(), Some("c10"));
    assert_eq!(total_records(&s), 11 * 5 * SHARDS as usize);
    let d = s.damage();
    assert!(d.quarantined_bytes > 0 && d.damaged_ranges == 1, "{d:?}");
    assert!(quarantined(&middle).iter().any(|n| n.contains("journal")), "{:?}", quarantined(&middle));
    drop(s);

    // A flipped byte in the newest record: the cursor goes back one group (the source may
    // repeat those events; it loses none), every record is still there.
    let newest = tmp.path().join("newest");
    copy_dir(&live, &newest);
    flip(&journal_file(&newest), before_last + 40);
    let s = open(&newest, 64 << 20, Durability::Fsync);
    assert_eq!(s.committed_cursor("feed").as_deref(), Some("c9"));
    assert_eq!(total_records(&s), 11 * 5 * SHARDS as usize);
    assert_eq!(s.damage().damaged_ranges, 1);
    drop(store);
}

#[test]
fn a_full_journal_is_checkpointed_into_a_new_generation() {
    let tmp = tempfile::tempdir().expect("tmp");
    let live = tmp.path().join("live");
    let store = open(&live, 8 << 20, Durability::Fsync);
    create_stream(&store, STREAM, TAG, SHARDS);
    let rt = rt();
    let big = vec![7u8; 256 * 1024];
    // 72 groups of 1 MiB: past the 64 MiB checkpoint size once.
    for i in 0..72u32 {
        let records = (0..SHARDS).map(|s| rec(s, &format!("k{i}"), &big)).collect();
        let parts = vec![AppendPart { stream: STREAM.into(), tag: TAG, records }];
        rt.block_on(store.append_committed(parts, vec![("feed".into(), format!("c{i}"))])).expect("append");
    }
    let j = journal_file(&live);
    let len = std::fs::metadata(&j).expect("meta").len();
    assert!(len < 16 << 20, "the journal was rotated: {len} bytes");
    assert_ne!(j.file_name().and_then(|n| n.to_str()), Some("00000000000000000001.wal"));
    let image = tmp.path().join("image");
    copy_dir(&live, &image);
    let s = open(&image, 8 << 20, Durability::Fsync);
    assert_eq!(s.committed_cursor("feed").as_deref(), Some("c71"));
    assert_eq!(total_records(&s), 72 * SHARDS as usize);
    drop(store);
}

fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read");
    b[0] ^= 0x5a;
    f.write_all_at(&b, at).expect("write");
}

fn quarantined(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("quarantine"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}
