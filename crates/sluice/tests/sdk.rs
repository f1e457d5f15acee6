//! The AWS SDK for Rust against the real `sluice serve` binary: put, get, subscribe,
//! resharding, and durability across restarts.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    PutRecordsRequestEntry, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use common::{ServerProcess, sdk_client, sdk_client_with};

async fn read_all(client: &aws_sdk_kinesis::Client, stream: &str, shard: &str) -> Vec<(String, Vec<u8>, String)> {
    let mut it = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("iterator")
        .shard_iterator
        .expect("iterator value");
    let mut out = Vec::new();
    loop {
        let page = client.get_records().shard_iterator(&it).limit(1000).send().await.expect("get records");
        let n = page.records().len();
        for r in page.records() {
            out.push((
                r.sequence_number().to_owned(),
                r.data().as_ref().to_vec(),
                r.partition_key().unwrap_or_default().to_owned(),
            ));
        }
        match page.next_shard_iterator {
            Some(next) if n > 0 => it = next,
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_and_sequence_order_with_the_rust_sdk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path(), &[]);
    let client = sdk_client(&server.url).await;
    client.create_stream().stream_name("orders").shard_count(3).send().await.expect("create");

    let single = client
        .put_record()
        .stream_name("orders")
        .partition_key("a")
        .data(Blob::new(b"first".to_vec()))
        .send()
        .await
        .expect("put record");
    // MD5("a") is below 2^128/3, so shard 0.
    assert_eq!(single.shard_id(), "shardId-000000000000");
    assert_eq!(single.sequence_number().len(), 56);

    let entries: Vec<PutRecordsRequestEntry> = (0..300)
        .map(|i| {
            PutRecordsRequestEntry::builder()
                .partition_key(format!("key-{}", i % 17))
                .data(Blob::new(format!("record-{i}").into_bytes()))
                .build()
                .expect("entry")
        })
        .collect();
    let put = client.put_records().stream_name("orders").set_records(Some(entries)).send().await.expect("put records");
    assert_eq!(put.failed_record_count(), Some(0));
    assert_eq!(put.records().len(), 300);

    let mut expected: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (i, r) in put.records().iter().enumerate() {
        expected
            .entry(r.shard_id().expect("shard").to_owned())
            .or_default()
            .push((r.sequence_number().expect("seq").to_owned(), format!("record-{i}")));
    }
    let mut total = 0;
    for (shard, want) in &expected {
        let got = read_all(&client, "orders", shard).await;
        let got: Vec<(String, String)> = got
            .into_iter()
            .filter(|(_, d, _)| d != b"first")
            .map(|(s, d, _)| (s, String::from_utf8(d).expect("utf8")))
            .collect();
        assert_eq!(&got, want, "shard {shard} holds exactly what was acknowledged, in order");
        let seqs: Vec<u128> = got.iter().map(|(s, _)| s[20..].parse::<u128>().expect("digits")).collect();
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "sequence numbers increase within {shard}: {seqs:?}");
        total += got.len();
    }
    assert_eq!(total, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_shard_streams_records_with_the_rust_sdk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path(), &[]);
    let client = sdk_client(&server.url).await;
    client.create_stream().stream_name("fanout").shard_count(1).send().await.expect("create");
    let arn = client
        .describe_stream_summary()
        .stream_name("fanout")
        .send()
        .await
        .expect("summary")
        .stream_description_summary
        .expect("summary body")
        .stream_arn
        .clone();
    let consumer = client
        .register_stream_consumer()
        .stream_arn(&arn)
        .consumer_name("reader")
        .send()
        .await
        .expect("register")
        .consumer
        .expect("consumer");
    for i in 0..5 {
        client
            .put_record()
            .stream_name("fanout")
            .partition_key("k")
            .data(Blob::new(format!("before-{i}").into_bytes()))
            .send()
            .await
            .expect("put");
    }
    let out = client
        .subscribe_to_shard()
        .consumer_arn(consumer.consumer_arn())
        .shard_id("shardId-000000000000")
        .starting_position(StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon).build().expect("pos"))
        .send()
        .await
        .expect("subscribe");
    let mut events = out.event_stream;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for i in 0..5 {
                client
                    .put_record()
                    .stream_name("fanout")
                    .partition_key("k")
                    .data(Blob::new(format!("after-{i}").into_bytes()))
                    .send()
                    .await
                    .expect("put");
            }
        })
    };
    let mut seen = Vec::new();
    let mut continuation = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 10 && tokio::time::Instant::now() < deadline {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("event in time")
            .expect("event ok");
        match ev {
            Some(SubscribeToShardEventStream::SubscribeToShardEvent(e)) => {
                for r in e.records() {
                    seen.push(String::from_utf8(r.data().as_ref().to_vec()).expect("utf8"));
                }
                continuation = Some(e.continuation_sequence_number().to_owned());
            }
            Some(_) => {}
            None => break,
        }
    }
    writer.await.expect("writer");
    let want: Vec<String> = (0..5).map(|i| format!("before-{i}")).chain((0..5).map(|i| format!("after-{i}"))).collect();
    assert_eq!(seen, want);
    assert!(continuation.is_some_and(|c| c.len() == 56));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path(), &["--durability", "fsync"]);
    let client = sdk_client(&server.url).await;
    client.create_stream().stream_name("durable").shard_count(2).send().await.expect("create");
    let mut acked: Vec<(String, String, Vec<u8>)> = Vec::new();
    for batch in 0..20 {
        let entries: Vec<PutRecordsRequestEntry> = (0..50)
            .map(|i| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("pk-{i}"))
                    .data(Blob::new(format!("{batch}:{i}").into_bytes()))
                    .build()
                    .expect("entry")
            })
            .collect();
        let put = client.put_records().stream_name("durable").set_records(Some(entries)).send().await.expect("put");
        for (i, r) in put.records().iter().enumerate() {
            acked.push((
                r.shard_id().expect("shard").to_owned(),
                r.sequence_number().expect("seq").to_owned(),
                format!("{batch}:{i}").into_bytes(),
            ));
        }
    }
    server.kill9();
    let server = ServerProcess::start(dir.path(), &[]);
    let client = sdk_client(&server.url).await;
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let got: Vec<(String, Vec<u8>)> =
            read_all(&client, "durable", shard).await.into_iter().map(|(s, d, _)| (s, d)).collect();
        let want: Vec<(String, Vec<u8>)> =
            acked.iter().filter(|(s, _, _)| s == shard).map(|(_, q, d)| (q.clone(), d.clone())).collect();
        assert_eq!(got, want, "{shard} after SIGKILL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_verified_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with_env(
        dir.path(),
        &["--verify-signatures"],
        &[("SLUICE_CREDENTIALS", "AKIDGOOD:right-secret")],
    );
    let good = sdk_client_with(&server.url, "AKIDGOOD", "right-secret");
    good.create_stream().stream_name("signed").shard_count(1).send().await.expect("correctly signed request");
    good.put_record()
        .stream_name("signed")
        .partition_key("k")
        .data(Blob::new(vec![0u8; 4096]))
        .send()
        .await
        .expect("signed put with a body");

    let wrong_secret = sdk_client_with(&server.url, "AKIDGOOD", "wrong-secret");
    let err = wrong_secret.list_streams().send().await.expect_err("bad signature must be refused");
    assert_eq!(
        err.as_service_error().and_then(|e| aws_sdk_kinesis::error::ProvideErrorMetadata::code(e)),
        Some("InvalidSignatureException")
    );

    let unknown = sdk_client_with(&server.url, "AKIDUNKNOWN", "right-secret");
    let err = unknown.list_streams().send().await.expect_err("unknown key must be refused");
    assert_eq!(
        err.as_service_error().and_then(|e| aws_sdk_kinesis::error::ProvideErrorMetadata::code(e)),
        Some("UnrecognizedClientException")
    );
}
