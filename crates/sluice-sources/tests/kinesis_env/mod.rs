//! A `sluice serve`-equivalent server in-process for the `kinesis` source's tests (on a free
//! loopback port, in a temp dir), with an SDK client on it.

#![allow(dead_code)]

use std::sync::Arc;

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use sluice_kinesis_api::{ApiConfig, Server};
use sluice_storage::{Store, StoreConfig};

/// A running server and a client on it; both go when it is dropped.
pub struct Env {
    /// Its data directory (the stream under `stream/`, lease tables under `dynamodb/`).
    pub dir: tempfile::TempDir,
    _server: Server,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// A Kinesis client on it.
    pub client: aws_sdk_kinesis::Client,
}

/// Starts a server with `config`; with `dynamodb`, it also answers the DynamoDB API.
pub async fn start(config: ApiConfig, dynamodb: bool) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(StoreConfig::new(dir.path().join("stream"))).expect("store");
    let db = dynamodb.then(|| {
        Arc::new(sluice_dynamodb::Db::open(sluice_dynamodb::DbConfig::new(dir.path().join("dynamodb"))).expect("db"))
    });
    let addr = "127.0.0.1:0".parse().expect("addr");
    let server = Server::start_with_dynamodb(store, config, addr, None, db).await.expect("server");
    let url = format!("http://{}", server.local_addr);
    let client = client(&url);
    Env { dir, _server: server, url, client }
}

/// A Kinesis client on `url` with test credentials.
pub fn client(url: &str) -> aws_sdk_kinesis::Client {
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(url)
        .build();
    aws_sdk_kinesis::Client::from_conf(conf)
}
