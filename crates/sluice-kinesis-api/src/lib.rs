//! The Kinesis Data Streams API over the sluice storage engine.
//!
//! Requests enter through [`server::router`] (HTTP/1.1 and HTTP/2, JSON and CBOR), are decoded
//! into one value tree ([`value`]), checked against the model's constraints ([`input`]), and
//! handled by one function per operation ([`ops`], [`subscribe`]) that reads or changes the
//! [`sluice_storage::Store`]. It is not a client and does no resharding on its own.

pub mod error;
pub mod input;
pub mod limits;
pub mod local;
pub mod ops;
pub mod server;
pub mod shapes;
pub mod sigv4;
pub mod state;
pub mod subscribe;
pub mod token;
pub mod value;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sluice_storage::Store;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use local::{LocalApi, LocalRecord, LocalRecords};
pub use ops::records::{PutEntry, PutOutcome};
pub use state::{ApiConfig, AppState};

/// Installs the global Prometheus recorder; returns its handle for `/metrics`.
pub fn install_metrics() -> Option<PrometheusHandle> {
    let buckets = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .ok()?
        .install_recorder()
        .ok()
}

/// A running API server.
pub struct Server {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    state: Arc<AppState>,
}

impl Server {
    /// Binds and starts serving in the background.
    pub async fn start(
        store: Store,
        config: ApiConfig,
        listen: SocketAddr,
        metrics: Option<PrometheusHandle>,
    ) -> std::io::Result<Server> {
        Server::start_with_dynamodb(store, config, listen, metrics, None).await
    }

    /// [`Server::start`], also answering the DynamoDB API (`DynamoDB_20120810.*` targets) on
    /// the same port from `dynamodb` when given.
    pub async fn start_with_dynamodb(
        store: Store,
        config: ApiConfig,
        listen: SocketAddr,
        metrics: Option<PrometheusHandle>,
        dynamodb: Option<Arc<sluice_dynamodb::Db>>,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let state = Arc::new(AppState {
            secret: store.secret(),
            limits: limits::Limits::new(config.enforce_limits),
            store,
            config,
            subscriptions: Mutex::new(Default::default()),
            iterator_activity: Mutex::new(Default::default()),
            shutdown: rx.clone(),
        });
        spawn_settler(state.clone(), rx.clone());
        let app = server::router_with(state.clone(), metrics, dynamodb);
        let http = server::HttpOptions { header_timeout: state.config.header_timeout };
        let task = tokio::spawn(server::serve(listener, app, http, rx));
        Ok(Server { local_addr, shutdown: tx, task, state })
    }

    /// In-process access to the same stream, for a producer in this process.
    pub fn local(&self) -> LocalApi {
        LocalApi::new(self.state.clone())
    }

    /// Stops accepting, ends subscriptions, and waits for in-flight requests.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Settles transitional states in the persisted catalog (CREATING/UPDATING → ACTIVE, removes
/// DELETING streams and consumers) once their time has come, so that restarts see them settled.
fn spawn_settler(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if state.config.transition_ms == 0 {
        return;
    }
    tokio::spawn(async move {
        let period = std::time::Duration::from_millis(state.config.transition_ms.clamp(50, 1000) / 2);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.changed() => return,
            }
            let now = sluice_core::now_ms();
            let cat = state.store.catalog();
            let due = cat.streams.values().any(|m| {
                m.status != sluice_storage::StreamStatus::Active && now >= m.status_until_ms
                    || m.consumers.iter().any(|c| c.status != "ACTIVE" && now >= c.status_until_ms)
            });
            if !due {
                continue;
            }
            let r = state.store.mutate_catalog(|cat| {
                cat.streams
                    .retain(|_, m| !(m.status == sluice_storage::StreamStatus::Deleting && now >= m.status_until_ms));
                for m in cat.streams.values_mut() {
                    if m.status != sluice_storage::StreamStatus::Deleting && now >= m.status_until_ms {
                        m.status = sluice_storage::StreamStatus::Active;
                    }
                    m.consumers.retain(|c| !(c.status == "DELETING" && now >= c.status_until_ms));
                    for c in m.consumers.iter_mut().filter(|c| c.status == "CREATING" && now >= c.status_until_ms) {
                        c.status = "ACTIVE".into();
                    }
                }
                Ok::<(), ApiError>(())
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not settle stream states");
            }
        }
    });
}
