//! `sluice top` against the real `sluice serve` binary, with stdout piped (plain lines).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use common::{ServerProcess, sdk_client};

fn top(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("top")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sluice top")
}

/// The cells of the plain-output row whose first cell is `first`.
fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_shows_operations_and_record_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path(), &[]);
    let client = sdk_client(&server.url).await;
    client.create_stream().stream_name("top").shard_count(2).send().await.expect("create");
    for batch in 0..3 {
        let entries = (0..4)
            .map(|i| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{batch}-{i}"))
                    .data(Blob::new(format!("record {batch}/{i}").into_bytes()))
                    .build()
                    .expect("entry")
            })
            .collect::<Vec<_>>();
        let out = client.put_records().stream_name("top").set_records(Some(entries)).send().await.expect("put");
        assert_eq!(out.failed_record_count(), Some(0));
    }

    let addr = server.url.trim_start_matches("http://").to_owned();
    let out = tokio::task::spawn_blocking(move || top(&["--once", "--interval", "200ms", &addr])).await.expect("join");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert!(out.status.success(), "status {:?}, stderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains('\x1b'), "escape codes in plain output:\n{stdout}");

    let heading = stdout.lines().next().expect("heading");
    assert!(heading.ends_with(&format!("{}/metrics", server.url)), "{heading}");
    assert_eq!(row(&stdout, "OPERATION"), ["OPERATION", "REQ/S", "TOTAL", "ERRORS", "AVG", "MS"]);
    // Columns: name, req/s, total, errors, avg ms. Nothing happened between the two scrapes.
    let put = row(&stdout, "PutRecords");
    assert_eq!(put[1..4], ["0.0", "3", "0"], "{stdout}");
    let create = row(&stdout, "CreateStream");
    assert_eq!(create[2..4], ["1", "0"], "{stdout}");
    // Stream: name, put rec/s, put, read rec/s, read, throttled.
    let stream = row(&stdout, "top");
    assert_eq!(stream[1..3], ["0.0", "12"], "{stdout}");
}

#[test]
fn once_fails_when_the_target_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let out = top(&["--once", "--interval", "10ms", &format!("127.0.0.1:{port}")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot reach http://127.0.0.1:{port}/metrics")), "{stderr}");
    let out = top(&["--once", "--interval", "soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"invalid duration "soon""#));
}

#[test]
fn piped_watch_prints_timestamped_blocks_and_reports_an_unreachable_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path(), &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["top", "--interval", "100ms", &server.url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sluice top");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut headings = 0;
    // The server has served nothing yet but /metrics itself: the first blocks may be empty.
    while headings < 2 {
        let line = lines.next().expect("sluice top stopped").expect("read");
        assert!(!line.contains('\x1b'), "{line}");
        if line.ends_with(&format!("{}/metrics", server.url)) {
            headings += 1;
        }
        assert!(Instant::now() < deadline, "no blocks in time");
    }
    // Once the target is gone, each interval says so and the watch goes on.
    server.kill9();
    let unreachable = loop {
        let line = lines.next().expect("sluice top stopped").expect("read");
        if line.contains("cannot reach") {
            break line;
        }
        assert!(Instant::now() < deadline, "no error line in time");
    };
    assert!(unreachable.contains("retrying every 100ms"), "{unreachable}");
    assert_eq!(child.try_wait().expect("try_wait"), None, "top must keep running");
    child.kill().expect("kill");
    child.wait().expect("wait");
}
