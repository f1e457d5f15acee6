//! Logging: connects and disconnects are logged with their cause, and no secret (header
//! values, subscribe messages, the URL's query) ever reaches a log line. Alone in its own test
//! binary, because it installs the global tracing subscriber.

mod common;

use std::time::Duration;

use common::{PyServer, assert_sequence, metrics_recorder, start};

const WITHIN: Duration = Duration::from_secs(30);

fn source(name: &str, toml_text: &str) -> Box<dyn sluice_flow::Source> {
    common::build("websocket", name, toml_text)
}

#[tokio::test]
async fn headers_are_sent_and_secrets_never_logged() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber in this test binary");
    let (_m, _g) = metrics_recorder();
    let server = PyServer::start(&["--total", "30", "--cut-every", "10", "--cut-mode", "alternate"]).await;
    let config = format!(
        r#"
url = "{}"
backoff_initial = "10ms"
headers = {{ Authorization = "Bearer s3cret-token" }}
subscribe = ['{{"op":"auth","key":"s3cret-key"}}']
resume = {{ cursor = "/seq", url = "{}" }}
"#,
        server.url("/feed?token=s3cret-query"),
        server.url("/feed?token=s3cret-query&after={cursor}")
    );
    let table: toml::Table = toml::from_str(&config).expect("config");
    let (common, own): (toml::Table, toml::Table) =
        table.into_iter().partition(|(k, _)| sluice_sources::config::COMMON_FIELDS.contains(&k.as_str()));
    let config_debug = format!(
        "{:?} {:?}",
        toml::Value::Table(common).try_into::<sluice_sources::CommonConfig>().expect("common"),
        toml::Value::Table(own).try_into::<sluice_sources::WebSocketConfig>().expect("own")
    );
    assert!(!config_debug.contains("s3cret"), "{config_debug}");
    let mut run = start("secrets", source("secrets", &config), None, 64);
    assert_sequence(&run.take(30, WITHIN).await, 1, 30);
    run.stop().await;
    assert!(server.events("connect").iter().all(|c| c["auth"] == "Bearer s3cret-token"));
    let logs = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    assert!(logs.contains("connected") && logs.contains("disconnected"), "{logs}");
    assert!(logs.contains("cause=\"closed\"") && logs.contains("cause=\"error\""), "{logs}");
    assert!(!logs.contains("s3cret"), "a secret was logged:\n{logs}");
}
