//! Damage to a data directory costs only the damaged records: each case damages real files
//! after a clean shutdown (or in a crash image), reopens, and checks that every record outside
//! the damaged bytes is read back in order from the start, that the records lost equal what
//! the store reports, that the quarantine holds the damaged bytes, and that new records get
//! ordinals above every one handed out before.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use sluice_storage::{Durability, Store, StoredRecord};

/// Small segments, so a few hundred records span many of them.
const SEG: u64 = 4096;

/// One frame of a segment file, parsed with the documented format (32-byte segment header;
/// frames `magic u32 | body_len u32 | ordinal u64 | body_crc u32 | head_crc u32 | body`).
#[derive(Debug, Clone, Copy)]
struct Frame {
    offset: u64,
    len: u64,
    ordinal: u64,
}

fn frames(path: &Path) -> Vec<Frame> {
    let b = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut p = 32usize;
    while p + 24 <= b.len() {
        let body = u32::from_le_bytes(b[p + 4..p + 8].try_into().unwrap()) as usize;
        let ordinal = u64::from_le_bytes(b[p + 8..p + 16].try_into().unwrap());
        out.push(Frame { offset: p as u64, len: (24 + body) as u64, ordinal });
        p += 24 + body;
    }
    assert_eq!(p, b.len(), "{} parses to its end", path.display());
    out
}

fn payload(i: usize) -> Vec<u8> {
    format!("record-{i:05}-").bytes().cycle().take(60 + i % 90).collect()
}

/// Writes `n` records to one shard in small batches, shuts down cleanly, returns what was read.
fn fill(dir: &Path, n: usize) -> Vec<StoredRecord> {
    fill_with(dir, n, SEG)
}

fn fill_with(dir: &Path, n: usize, segment_bytes: u64) -> Vec<StoredRecord> {
    let store = open(dir, segment_bytes, Durability::Fsync);
    create_stream(&store, STREAM, TAG, 1);
    let rt = rt();
    for chunk in (0..n).collect::<Vec<_>>().chunks(7) {
        let recs = chunk.iter().map(|&i| rec(0, &format!("k{i}"), &payload(i))).collect();
        rt.block_on(store.append(STREAM, TAG, recs)).unwrap();
    }
    let all = read_all(&store, STREAM, TAG, 0, 50);
    assert_eq!(all.len(), n);
    all
}

fn shard(dir: &Path) -> PathBuf {
    shard_dir(dir, STREAM, TAG, 0)
}

fn quarantine(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let q = dir.join("quarantine");
    let Ok(rd) = std::fs::read_dir(&q) else { return Vec::new() };
    let mut v: Vec<(String, Vec<u8>)> = rd
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

fn wait_verified(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.damage().verified {
        assert!(Instant::now() < deadline, "background check did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The invariants every damage case must keep.
fn check(store: &Store, before: &[StoredRecord], lost: &BTreeSet<u64>) {
    wait_verified(store);
    let expected: Vec<StoredRecord> = before.iter().filter(|r| !lost.contains(&r.ordinal)).cloned().collect();
    let after = read_all(store, STREAM, TAG, 0, 37);
    assert_eq!(after.len(), expected.len(), "records kept");
    assert_eq!(after, expected, "every intact record, in order");
    let d = store.damage();
    assert_eq!(d.corrupt_records, lost.len() as u64, "records lost == reported: {d:?}");
    // Ordinals never go backwards.
    let max_before = before.last().map_or(0, |r| r.ordinal);
    let a = rt().block_on(store.append(STREAM, TAG, vec![rec(0, "new", b"new")])).unwrap();
    assert!(a[0].ordinal > max_before, "new ordinal {} above {max_before}", a[0].ordinal);
    let last = read_all(store, STREAM, TAG, 0, 1000).pop().unwrap();
    assert_eq!((last.ordinal, last.data.as_slice()), (a[0].ordinal, &b"new"[..]));
}

fn flip(path: &Path, at: u64, n: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = vec![0u8; n];
    f.read_exact_at(&mut b, at).unwrap();
    for x in &mut b {
        *x ^= 0xA5;
    }
    f.write_all_at(&b, at).unwrap();
}

fn overlapping(fr: &[Frame], start: u64, end: u64) -> BTreeSet<u64> {
    fr.iter().filter(|f| f.offset < end && f.offset + f.len > start).map(|f| f.ordinal).collect()
}

#[test]
fn a_sealed_segment_cut_short_keeps_every_later_segment() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 400);
    let segs = segments(&shard(dir.path()));
    assert!(segs.len() > 8, "{} segments", segs.len());
    let victim = &segs[3];
    let fr = frames(victim);
    let len = std::fs::metadata(victim).unwrap().len();
    let new_len = len - 200;
    std::fs::OpenOptions::new().write(true).open(victim).unwrap().set_len(new_len).unwrap();
    let lost = overlapping(&fr, new_len, len);
    assert!(!lost.is_empty());

    let store = open(dir.path(), SEG, Durability::Fsync);
    for s in &segs {
        assert!(s.exists(), "{} kept", s.display());
    }
    check(&store, &before, &lost);
    // The partial frame left in the file is in the quarantine.
    let partial_from = fr.iter().find(|f| f.offset + f.len > new_len).unwrap().offset;
    let q = quarantine(dir.path());
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].1.len() as u64, new_len - partial_from);
    assert_eq!(store.damage().quarantined_bytes, new_len - partial_from);
    drop(store);

    // Nothing is reported twice.
    let store = open(dir.path(), SEG, Durability::Fsync);
    wait_verified(&store);
    assert_eq!(store.damage().corrupt_records, 0);
}

#[test]
fn flipped_bytes_in_the_active_segment_cost_one_record() {
    let dir = tempfile::tempdir().unwrap();
    // One big active segment, as after a short run with default-size segments.
    let before = fill_with(dir.path(), 300, 1 << 20);
    let segs = segments(&shard(dir.path()));
    let active = segs.last().unwrap();
    let fr = frames(active);
    assert!(fr.len() >= 8, "{} frames in the active segment", fr.len());
    let target = fr[fr.len() / 4];
    flip(active, target.offset + 30, 4);
    let damaged =
        std::fs::read(active).unwrap()[target.offset as usize..(target.offset + target.len) as usize].to_vec();

    let store = open(dir.path(), 1 << 20, Durability::Fsync);
    check(&store, &before, &BTreeSet::from([target.ordinal]));
    let q = quarantine(dir.path());
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].1, damaged, "the quarantine holds exactly the damaged frame");
    assert!(q[0].0.contains(&active.file_name().unwrap().to_string_lossy().to_string()));
}

#[test]
fn flipped_bytes_in_a_sealed_segment_are_skipped_by_readers_and_found_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 400);
    let segs = segments(&shard(dir.path()));
    let victim = &segs[2];
    assert!(victim.with_extension("idx").exists(), "sealed segments have a sidecar");
    let fr = frames(victim);
    // 16 bytes across the boundary of two frames.
    let boundary = fr[5].offset;
    flip(victim, boundary - 8, 16);
    let lost = overlapping(&fr, boundary - 8, boundary + 8);
    assert_eq!(lost.len(), 2);

    let store = open(dir.path(), SEG, Durability::Fsync);
    // Read at once, perhaps before the background check: readers skip the damage.
    let early = read_all(&store, STREAM, TAG, 0, 1000);
    assert_eq!(early.len(), before.len() - 2);
    check(&store, &before, &lost);
    assert_eq!(quarantine(dir.path()).len(), 1);
}

#[test]
fn a_deleted_middle_segment_costs_exactly_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 400);
    let segs = segments(&shard(dir.path()));
    let victim = &segs[segs.len() / 2];
    let lost: BTreeSet<u64> = frames(victim).iter().map(|f| f.ordinal).collect();
    std::fs::remove_file(victim).unwrap();
    std::fs::remove_file(victim.with_extension("idx")).unwrap();

    let store = open(dir.path(), SEG, Durability::Fsync);
    check(&store, &before, &lost);
    drop(store);
    let store = open(dir.path(), SEG, Durability::Fsync);
    wait_verified(&store);
    assert_eq!(store.damage().corrupt_records, 0, "reported once, not at every start");
}

#[test]
fn the_newest_segment_deleted_after_a_clean_shutdown_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 300);
    let segs = segments(&shard(dir.path()));
    let victim = segs.last().unwrap();
    let lost: BTreeSet<u64> = frames(victim).iter().map(|f| f.ordinal).collect();
    std::fs::remove_file(victim).unwrap();
    let store = open(dir.path(), SEG, Durability::Fsync);
    check(&store, &before, &lost);
}

#[test]
fn a_damaged_catalog_is_restored_from_its_backup() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill(dir.path(), 100);
    let cat = dir.path().join("catalog.json");
    let good = std::fs::read(&cat).unwrap();
    // One changed digit keeps the JSON valid: only the checksum can tell.
    let text = String::from_utf8(good.clone()).unwrap();
    let changed = text.replacen("\"retention_hours\": 24", "\"retention_hours\": 25", 1);
    assert_ne!(changed, text);
    std::fs::write(&cat, changed).unwrap();
    let store = open(dir.path(), SEG, Durability::Fsync);
    assert_eq!(store.catalog().streams[STREAM].retention_hours, 24);
    check(&store, &before, &BTreeSet::new());
    assert!(quarantine(dir.path()).iter().any(|(n, _)| n.starts_with("catalog.json")));
    drop(store);

    // Both copies damaged: refuse to start, change nothing.
    std::fs::write(&cat, b"{ not json").unwrap();
    std::fs::write(dir.path().join("catalog.bak.json"), b"\0\0\0").unwrap();
    let err = Store::open(config(dir.path(), SEG, Durability::Fsync)).unwrap_err().to_string();
    assert!(err.contains("catalog.json") && err.contains("catalog.bak.json"), "{err}");
    assert_eq!(std::fs::read(&cat).unwrap(), b"{ not json");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn after_a_crash_that_damaged_the_end_ordinals_skip_past_every_one_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SEG, Durability::Fsync);
    create_stream(&store, STREAM, TAG, 1);
    let rt = rt();
    for i in 0..120 {
        rt.block_on(store.append(STREAM, TAG, vec![rec(0, "k", &payload(i))])).unwrap();
    }
    let before = read_all(&store, STREAM, TAG, 0, 1000);
    // A crash image: the files as they are while the store runs.
    let clean = tempfile::tempdir().unwrap();
    let damaged = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), clean.path());
    copy_dir(dir.path(), damaged.path());
    drop(store);

    // Crash without damage: nothing lost, ordinals simply continue.
    let s = open(clean.path(), SEG, Durability::Fsync);
    assert_eq!(read_all(&s, STREAM, TAG, 0, 1000), before);
    let a = rt.block_on(s.append(STREAM, TAG, vec![rec(0, "n", b"n")])).unwrap();
    assert_eq!(a[0].ordinal, 121);
    drop(s);

    // Crash, then the last record's bytes damaged: it is lost, and since it may have been
    // acknowledged its ordinal (and every reserved one) is never handed out again.
    let newest = segments(&shard(damaged.path())).pop().unwrap();
    let last = *frames(&newest).last().unwrap();
    flip(&newest, last.offset + 30, 4);
    let s = open(damaged.path(), SEG, Durability::Fsync);
    check(&s, &before, &BTreeSet::from([last.ordinal]));
    let a = rt.block_on(s.append(STREAM, TAG, vec![rec(0, "n", b"n")])).unwrap();
    assert!(a[0].ordinal > 120 + 1000, "ordinal {} skips the reservation", a[0].ordinal);
    drop(s);
    // And the skip survives another restart.
    let s = open(damaged.path(), SEG, Durability::Fsync);
    let all = read_all(&s, STREAM, TAG, 0, 1000);
    assert!(all.windows(2).all(|w| w[0].ordinal < w[1].ordinal));
    assert_eq!(all.last().unwrap().ordinal, a[0].ordinal);
    assert_eq!(s.read_last(STREAM, TAG, 0).unwrap().as_ref(), all.last());
}

#[test]
fn version_1_segments_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SEG, Durability::Fsync);
    create_stream(&store, STREAM, TAG, 1);
    drop(store);
    let sd = shard(dir.path());
    for p in segments(&sd) {
        std::fs::remove_file(p).unwrap();
    }
    let _ = std::fs::remove_file(sd.join("HWM"));
    // A version 1 segment: `SLCSEG01 | first u64`, frames `len | crc | ordinal | arrival | pk_len | pk | data`.
    let mut b = b"SLCSEG01".to_vec();
    b.extend_from_slice(&1u64.to_le_bytes());
    for i in 1..=5u64 {
        let mut body = Vec::new();
        body.extend_from_slice(&i.to_le_bytes());
        body.extend_from_slice(&(1000 + i).to_le_bytes());
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(b"pk");
        body.extend_from_slice(format!("v1-{i}").as_bytes());
        b.extend_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(&crc32(&body).to_le_bytes());
        b.extend_from_slice(&body);
    }
    std::fs::write(sd.join(format!("{:020}.seg", 1)), b).unwrap();
    let store = open(dir.path(), SEG, Durability::Fsync);
    let all = read_all(&store, STREAM, TAG, 0, 100);
    assert_eq!(
        all.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
        (1..=5).map(|i| format!("v1-{i}").into_bytes()).collect::<Vec<_>>()
    );
    assert_eq!(all[4].arrival_ms, 1005);
    let a = rt().block_on(store.append(STREAM, TAG, vec![rec(0, "n", b"n")])).unwrap();
    assert_eq!(a[0].ordinal, 6);
}

fn crc32(b: &[u8]) -> u32 {
    // Bitwise CRC-32 (IEEE), independent of the crate under test.
    let mut crc = 0xFFFF_FFFFu32;
    for &x in b {
        crc ^= u32::from(x);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn verify_reports_damage_without_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 300);
    let r = sluice_storage::verify(dir.path()).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.records, 300);
    let segs = segments(&shard(dir.path()));
    let fr = frames(&segs[1]);
    flip(&segs[1], fr[2].offset + 40, 3);
    let bytes = std::fs::read(&segs[1]).unwrap();
    let r = sluice_storage::verify(dir.path()).unwrap();
    assert!(!r.is_clean());
    assert_eq!(r.records_lost(), 1, "{r:?}");
    assert_eq!(r.damaged[0].path, segs[1]);
    assert_eq!(std::fs::read(&segs[1]).unwrap(), bytes, "verify changes nothing");
}

#[derive(Debug, Clone)]
enum Damage {
    /// Flip `len` bytes at a fraction of the segment.
    Flip { at: f64, len: usize },
    /// Cut this many bytes off the end.
    Cut { bytes: u64 },
    /// Delete the segment (never the first: nothing before it could tell).
    Delete,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (0.0f64..1.0, 1usize..40).prop_map(|(at, len)| Damage::Flip { at, len }),
        2 => (1u64..600).prop_map(|bytes| Damage::Cut { bytes }),
        1 => Just(Damage::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_damage_costs_only_the_damaged_records(
        n in 150usize..350,
        picks in proptest::collection::vec((any::<prop::sample::Index>(), damage()), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let before = fill(dir.path(), n);
        let segs = segments(&shard(dir.path()));
        let mut lost = BTreeSet::new();
        let mut used = BTreeSet::new();
        for (idx, d) in picks {
            let i = idx.index(segs.len());
            if !used.insert(i) {
                continue;
            }
            let path = &segs[i];
            let fr = frames(path);
            let len = std::fs::metadata(path).unwrap().len();
            match d {
                Damage::Flip { at, len: n } => {
                    let start = ((len as f64 * at) as u64).min(len - 1);
                    let n = (n as u64).min(len - start);
                    flip(path, start, n as usize);
                    lost.extend(overlapping(&fr, start, start + n));
                }
                Damage::Cut { bytes } => {
                    let new_len = len.saturating_sub(bytes).max(32);
                    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(new_len).unwrap();
                    lost.extend(overlapping(&fr, new_len, len));
                }
                Damage::Delete if i > 0 => {
                    std::fs::remove_file(path).unwrap();
                    let _ = std::fs::remove_file(path.with_extension("idx"));
                    lost.extend(fr.iter().map(|f| f.ordinal));
                }
                Damage::Delete => {}
            }
        }
        let store = open(dir.path(), SEG, Durability::Fsync);
        check(&store, &before, &lost);
        let q: u64 = quarantine(dir.path()).iter().map(|(_, b)| b.len() as u64).sum();
        prop_assert_eq!(q, store.damage().quarantined_bytes);
    }
}
