//! A real full disk: the store's data directory on a tiny tmpfs. A failing append leaves no
//! partial bytes behind, acknowledged records stay readable, and once there is space again
//! appends continue with the next ordinal. Needs root (mount); skipped, with a message,
//! where mounting is not allowed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sluice_storage::{Durability, StorageError};

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
    _holder: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let holder = tempfile::tempdir().expect("tempdir");
        let dir = holder.path().join("fs");
        std::fs::create_dir(&dir).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some(Tmpfs { dir, _holder: holder })
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "remount: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn segment_bytes_on_disk(dir: &Path) -> u64 {
    segments(dir).iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum()
}

#[test]
fn a_full_disk_fails_the_append_whole_and_the_store_recovers() {
    let Some(fs) = Tmpfs::mount("256k") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the full-disk test did not run");
        return;
    };
    let data = fs.dir.join("store");
    let store = open(&data, 16 << 10, Durability::Fsync);
    create_stream(&store, STREAM, TAG, 1);
    let sd = shard_dir(&data, STREAM, TAG, 0);
    let rt = rt();
    let batch = |i: u64| (0..4).map(|j| rec(0, &format!("k{i}"), &[(i * 4 + j) as u8; 900])).collect::<Vec<_>>();

    let mut acked = 0u64;
    let mut bytes_ok = 0u64;
    let err = loop {
        assert!(acked < 10_000, "the 256 KiB file system never filled up");
        match rt.block_on(store.append(STREAM, TAG, batch(acked / 4))) {
            Ok(a) => {
                assert_eq!(a[0].ordinal, acked + 1);
                acked += a.len() as u64;
                bytes_ok = segment_bytes_on_disk(&sd);
            }
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&err, StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull),
        "ENOSPC expected, got {err:?}"
    );
    assert!(acked > 8, "some appends succeeded before the disk filled ({acked})");
    assert_eq!(segment_bytes_on_disk(&sd), bytes_ok, "the failed group's partial bytes were truncated");
    assert_eq!(store.shard_position(STREAM, TAG, 0).unwrap().next_ordinal, acked + 1);
    // Still full: fails again, changes nothing.
    assert!(rt.block_on(store.append(STREAM, TAG, batch(9_999))).is_err());
    assert_eq!(segment_bytes_on_disk(&sd), bytes_ok);
    let kept = read_all(&store, STREAM, TAG, 0, 100);
    assert_eq!(kept.len() as u64, acked, "every acknowledged record is readable");

    fs.resize("4m");
    let a = rt.block_on(store.append(STREAM, TAG, batch(10_000))).expect("append after space returned");
    assert_eq!(a[0].ordinal, acked + 1, "ordinals continue without a gap");
    let total = acked + 4;
    drop(store);
    let store = open(&data, 16 << 10, Durability::Fsync);
    let all = read_all(&store, STREAM, TAG, 0, 100);
    assert_eq!(all.len() as u64, total);
    assert!(all.iter().enumerate().all(|(i, r)| r.ordinal == i as u64 + 1));
    assert_eq!(&all[..acked as usize], &kept[..]);
    drop(store);
}
