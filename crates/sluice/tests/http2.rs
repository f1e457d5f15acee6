//! SubscribeToShard over HTTP/2 (prior-knowledge h2c, as SDKs speak it to plain-HTTP endpoints)
//! and over HTTP/1.1, read frame by frame with sluice-core's event-stream decoder.

mod common;

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use bytes::{Bytes, BytesMut};
use common::{ServerProcess, sdk_client};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_core::eventstream::decode_frame;

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000";

async fn subscribe_frames(
    url: &str,
    consumer_arn: &str,
    http2: bool,
    want_records: usize,
) -> Vec<(String, serde_json::Value)> {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(http2);
    let client: Client<_, Full<Bytes>> = builder.build_http();
    let body = serde_json::json!({
        "ConsumerARN": consumer_arn,
        "ShardId": "shardId-000000000000",
        "StartingPosition": {"Type": "TRIM_HORIZON"}
    });
    let req = hyper::Request::post(url)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "Kinesis_20131202.SubscribeToShard")
        .header("x-amz-date", "20260101T000000Z")
        .header("authorization", AUTH)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = client.request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), if http2 { hyper::Version::HTTP_2 } else { hyper::Version::HTTP_11 });
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/vnd.amazon.eventstream")
    );
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut records = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while records < want_records {
        let frame = tokio::time::timeout_at(deadline, body.frame()).await.expect("frames in time");
        let Some(Ok(frame)) = frame else { break };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
        while let Ok((f, used)) = decode_frame(&buf) {
            let _ = buf.split_to(used);
            let kind = f.header_str(":event-type").unwrap_or("").to_owned();
            let payload: serde_json::Value = serde_json::from_slice(&f.payload).expect("json payload");
            records += payload["Records"].as_array().map_or(0, Vec::len);
            frames.push((kind, payload));
        }
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_shard_over_http2_and_http1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path(), &[]);
    let sdk = sdk_client(&server.url).await;
    sdk.create_stream().stream_name("h2").shard_count(1).send().await.expect("create");
    let arn = sdk
        .describe_stream_summary()
        .stream_name("h2")
        .send()
        .await
        .expect("summary")
        .stream_description_summary
        .expect("body")
        .stream_arn;
    for i in 0..3 {
        sdk.put_record().stream_name("h2").partition_key("k").data(Blob::new(vec![i; 10])).send().await.expect("put");
    }
    for (consumer, http2) in [("over-h2", true), ("over-h1", false)] {
        let c = sdk
            .register_stream_consumer()
            .stream_arn(&arn)
            .consumer_name(consumer)
            .send()
            .await
            .expect("register")
            .consumer
            .expect("consumer");
        let frames = subscribe_frames(&server.url, c.consumer_arn(), http2, 3).await;
        assert_eq!(frames.first().map(|f| f.0.as_str()), Some("initial-response"), "initial-response comes first");
        let events: Vec<&serde_json::Value> =
            frames.iter().filter(|f| f.0 == "SubscribeToShardEvent").map(|f| &f.1).collect();
        let data: Vec<String> = events
            .iter()
            .flat_map(|e| e["Records"].as_array().cloned().unwrap_or_default())
            .map(|r| r["Data"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(data, vec!["AAAAAAAAAAAAAA==", "AQEBAQEBAQEBAQ==", "AgICAgICAgICAg=="], "{consumer}");
        assert!(events.iter().all(|e| e["ContinuationSequenceNumber"].as_str().is_some_and(|s| s.len() == 56)));
    }
}
