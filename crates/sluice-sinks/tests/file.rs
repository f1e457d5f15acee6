//! The file sink: rotation, gzip, line format, recovery of files left open by a crash.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use sluice_sinks::file::{self, FileCompression, FileConfig};

fn config(dir: &Path) -> FileConfig {
    FileConfig {
        path: dir.to_path_buf(),
        prefix: Some("feed".into()),
        compression: FileCompression::None,
        max_bytes: 128 * 1024 * 1024,
        max_age: Duration::from_secs(3600),
        metadata: false,
    }
}

/// The sink's files (not its hidden progress mark, `.<prefix>.written`).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    v.sort();
    v
}

fn lines(path: &Path) -> Vec<String> {
    let f = std::fs::File::open(path).expect("open");
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    reader.lines().map(|l| l.expect("line")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_by_size_and_gzip_files_read_back_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    let mut cfg = config(&out_dir);
    cfg.compression = FileCompression::Gzip;
    cfg.max_bytes = 2048;
    let sink = file::build("archive", cfg, dir.path()).expect("build");
    let mut h = Harness::start("archive", sink, dir.path());
    let n = 1000u64;
    for round in 0..50 {
        for i in round * 20..(round + 1) * 20 {
            h.send(i, telemetry(i, "r", 0)).await;
        }
        h.wait_acked(((round + 1) * 20) as usize, Duration::from_secs(10)).await;
    }
    let out = h.finish(Duration::from_secs(10)).await;
    out.assert_all_acked_once(n);

    let names = files(&out_dir);
    assert!(names.len() > 5, "rotated into several files: {names:?}");
    let mut all = Vec::new();
    for p in &names {
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(name.starts_with("feed-") && name.ends_with(".ndjson.gz"), "{name}");
        all.extend(lines(p));
    }
    let want: Vec<String> = (0..n).map(|i| telemetry(i, "r", 0)).collect();
    assert_eq!(all, want, "every record once, in order, across the rotated files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_by_age_even_when_idle_and_encodes_non_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.max_age = Duration::from_millis(200);
    let sink = file::build("aged", cfg, dir.path()).expect("build");
    let mut h = Harness::start("aged", sink, dir.path());
    h.send(0, "{\n  \"pretty\": true\n}").await;
    h.send(1, "plain text").await;
    h.wait_acked(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let done = files(dir.path());
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(done[0].to_string_lossy().ends_with(".ndjson"), "finished while idle: {done:?}");
    assert_eq!(
        lines(&done[0]),
        vec!["{   \"pretty\": true }".to_owned(), "{\"payload_base64\":\"cGxhaW4gdGV4dA==\"}".to_owned()]
    );
    h.send(2, "[1,2]").await;
    let out = h.finish(Duration::from_secs(10)).await;
    out.assert_all_acked_once(3);
    let done = files(dir.path());
    assert_eq!(done.len(), 2);
    assert_eq!(lines(&done[1]), vec!["[1,2]".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_left_open_by_a_crash_are_cut_to_complete_lines_and_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let torn = dir.path().join("feed-20260101T000000Z-000001.ndjson.part");
    std::fs::write(&torn, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").expect("write");
    let other = dir.path().join("feed-other-20260101T000000Z-000001.ndjson.part");
    std::fs::write(&other, b"{\"x\":1}\n{\"y").expect("write");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, b"{\"g\":1}\n").expect("gz");
    let mut member = gz.finish().expect("gz");
    let whole = member.len();
    member.extend_from_slice(&member.clone()[..whole - 5]);
    let torn_gz = dir.path().join("feed-20260101T000000Z-000002.ndjson.gz.part");
    std::fs::write(&torn_gz, &member).expect("write");

    let sink = file::build("crashy", config(dir.path()), dir.path()).expect("build");
    let h = Harness::start("crashy", sink, dir.path());
    h.finish(Duration::from_secs(10)).await.assert_all_acked_once(0);
    let fixed = dir.path().join("feed-20260101T000000Z-000001.ndjson");
    assert_eq!(std::fs::read(&fixed).expect("renamed"), b"{\"a\":1}\n{\"b\":2}\n");
    let fixed_gz = dir.path().join("feed-20260101T000000Z-000002.ndjson.gz");
    assert_eq!(lines(&fixed_gz), vec!["{\"g\":1}".to_owned()]);
    assert!(other.exists(), "another prefix's file is left alone");
}

#[test]
fn relative_paths_are_under_the_data_dir_and_bad_prefixes_are_refused() {
    let table: toml::Table = toml::from_str("path = \"out\"\nprefix = \"../x\"\n").expect("toml");
    assert!(sluice_sinks::build("file", "f", table, &sluice_sinks::BuildEnv::new(Path::new("/tmp"))).is_err());
    let table: toml::Table =
        toml::from_str("path = \"out\"\nmax_age = \"1m\"\ncompression = \"gzip\"\n").expect("toml");
    assert!(sluice_sinks::build("file", "f", table, &sluice_sinks::BuildEnv::new(Path::new("/tmp"))).is_ok());
}
