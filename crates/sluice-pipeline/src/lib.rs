//! Runs pipeline files (`sluice run`, `sluice validate`).
//!
//! A file is parsed and checked ([`config`]), each component is built by its own crate through
//! the [`registry`], and the [`runtime`] wires sources → [`spool`] → sinks. When a `kinesis`
//! sink names no `endpoint`, the embedded Kinesis-compatible stream is started in the same
//! process (on `[embedded] listen`, 127.0.0.1:4567 by default) so that other tools can read it,
//! and the sink writes to it in-process ([`embedded`]).
//! `/metrics` and `/health` are served on `[api] listen`; `/health` answers 503 while any
//! source has an alarm raised (its own, such as `silence`, or the pipeline's `spool_blocked`
//! and `source_paused`), a sink is failing (`sink_failing`), or the spool's or the embedded
//! stream's store cannot write (`spool_write_failed`, `store_write_failed`).

pub mod config;
pub mod direct;
pub mod embedded;
pub mod embedded_reader;
pub mod registry;
pub mod runtime;
pub mod spool;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use sluice_storage::Durability;

pub use config::{ConfigError, PipelineConfig};

/// Why a pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be used.
    #[error("data directory: {0}")]
    Storage(#[from] sluice_storage::StorageError),
    /// The embedded stream's lease tables could not be opened.
    #[error("lease tables: {0}")]
    Tables(#[from] sluice_dynamodb::OpenError),
    /// A listener could not be bound.
    #[error("{what} on {addr}: {source}")]
    Listen {
        /// Which listener.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

fn durability(s: &str) -> Durability {
    if s == "os" { Durability::Os } else { Durability::Fsync }
}

/// Checks a file completely (syntax, graph, every component's options) without running it.
pub fn validate(cfg: &PipelineConfig) -> Result<(), ConfigError> {
    for c in &cfg.sources {
        let placeholder = registry::Embedded { url: "http://127.0.0.1:4567".into(), api: None };
        registry::build_source(cfg, c, Some(&placeholder))?;
    }
    let probe = tempdir_like(&cfg.data_dir);
    for c in &cfg.sinks {
        let embedded = registry::Embedded { url: "http://127.0.0.1:4567".into(), api: None };
        registry::build_sink(cfg, c, &probe, Some(&embedded))?;
    }
    Ok(())
}

/// The sources written straight into the embedded stream ([`direct`]): per source, the first
/// `kinesis` sink in the file that reads it and writes to the embedded stream in-process
/// without `aggregate` (other sinks of the source read its spool as before).
fn direct_routes(
    cfg: &PipelineConfig,
    store: &sluice_storage::Store,
    api: &sluice_kinesis_api::LocalApi,
    url: &str,
) -> Vec<runtime::DirectRoute> {
    let mut routes = Vec::new();
    for source in &cfg.sources {
        let target = cfg
            .sinks
            .iter()
            .filter(|k| k.kind == "kinesis" && registry::wants_embedded(k) && k.inputs.contains(&source.name))
            .find_map(|k| {
                let mut options = k.options.clone();
                options.insert("endpoint".into(), toml::Value::String(url.to_owned()));
                // The sink was built from the same table, so this parses; if not, no route.
                let config: sluice_sinks::kinesis::KinesisConfig = toml::Value::Table(options).try_into().ok()?;
                direct::DirectTarget::new(&k.name, store.clone(), api.clone(), config)
            });
        if let Some(target) = target {
            routes.push(runtime::DirectRoute { source: source.name.clone(), target });
        }
    }
    routes
}

fn tempdir_like(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join(".validate")
}

/// A running pipeline with its servers.
pub struct Pipeline {
    running: runtime::Running,
    embedded: Option<(sluice_kinesis_api::Server, sluice_storage::Store)>,
    ops_addr: SocketAddr,
    ops_stop: tokio::sync::watch::Sender<bool>,
}

impl Pipeline {
    /// Starts everything a file describes.
    pub async fn start(cfg: PipelineConfig, metrics: Option<PrometheusHandle>) -> Result<Pipeline, PipelineError> {
        let data_dir = cfg.data_dir.clone();
        let wanted = cfg.sinks.iter().any(registry::wants_embedded) || cfg.sources.iter().any(registry::wants_embedded);
        let embedded = if wanted {
            let mut store_cfg = sluice_storage::StoreConfig::new(data_dir.join("stream"));
            store_cfg.durability = durability(&cfg.embedded.durability);
            store_cfg.linger = cfg.embedded.linger;
            let store = sluice_storage::Store::open(store_cfg)?;
            // The embedded stream also answers the DynamoDB API, so that `kinesis` sources
            // (here or in other processes) keep their KCL lease tables beside it.
            let mut db_cfg = sluice_dynamodb::DbConfig::new(data_dir.join("dynamodb"));
            db_cfg.fsync = durability(&cfg.embedded.durability) == Durability::Fsync;
            let db = sluice_dynamodb::Db::open(db_cfg)?;
            let server = sluice_kinesis_api::Server::start_with_dynamodb(
                store.clone(),
                Default::default(),
                cfg.embedded.listen,
                metrics.clone(),
                Some(Arc::new(db)),
            )
            .await
            .map_err(|source| PipelineError::Listen {
                what: "embedded stream",
                addr: cfg.embedded.listen,
                source,
            })?;
            Some((server, store))
        } else {
            None
        };
        let reach = embedded
            .as_ref()
            .map(|(s, _)| registry::Embedded { url: format!("http://{}", s.local_addr), api: Some(s.local()) });
        let mut sources = Vec::new();
        for c in &cfg.sources {
            sources.push((c.name.clone(), registry::build_source(&cfg, c, reach.as_ref())?));
        }
        let mut sinks = Vec::new();
        for c in &cfg.sinks {
            let sink = registry::build_sink(&cfg, c, &data_dir, reach.as_ref())?;
            sinks.push(runtime::SinkSpec { name: c.name.clone(), inputs: c.inputs.clone(), sink });
        }
        let opts = runtime::RuntimeOptions {
            data_dir: data_dir.clone(),
            spool: spool::SpoolOptions {
                durability: durability(&cfg.spool.durability),
                segment_bytes: cfg.spool.segment_bytes,
                linger: cfg.spool.linger,
            },
            spool_max_age: cfg.spool.max_age,
            sink_failing_after: cfg.api.sink_failing_after,
        };
        let direct = match &embedded {
            Some((server, store)) => {
                direct_routes(&cfg, store, &server.local(), &format!("http://{}", server.local_addr))
            }
            None => Vec::new(),
        };
        let running = runtime::start_with(&opts, sources, sinks, direct)?;
        let (ops_stop, ops_rx) = tokio::sync::watch::channel(false);
        let health = Health {
            status: running.status.clone(),
            reports: running.reports.clone(),
            alarms: running.alarms.clone(),
            sink_alarms: running.sink_alarms.clone(),
            stores: Arc::new(store_watches(&running, embedded.as_ref().map(|(_, st)| st.clone()))),
            gauges: Arc::new(Mutex::new(BTreeSet::new())),
        };
        let ops_addr = serve_ops(cfg.api.listen, health, metrics, ops_rx).await?;
        Ok(Pipeline { running, embedded, ops_addr, ops_stop })
    }

    /// Where `/metrics` and `/health` are served.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// The embedded stream's address, when it runs.
    pub fn embedded_addr(&self) -> Option<SocketAddr> {
        self.embedded.as_ref().map(|(s, _)| s.local_addr)
    }

    /// Live counters.
    pub fn status(&self) -> runtime::Status {
        self.running.status()
    }

    /// Stops sources, drains to the spool, stops sinks, saves watermarks, stops the servers.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
        let _ = self.ops_stop.send(true);
        if let Some((server, store)) = self.embedded {
            let _ = server.shutdown().await;
            let _ = tokio::task::spawn_blocking(move || store.shutdown()).await;
        }
    }
}

/// Alarm of the `spool` component while the spool's store cannot write.
pub const SPOOL_WRITE_FAILED: &str = "spool_write_failed";
/// Alarm of the `embedded` component while the embedded stream's store cannot write.
pub const STORE_WRITE_FAILED: &str = "store_write_failed";

/// The stores whose write failures `/health` reports: the spool's, and the embedded
/// stream's when it runs.
fn store_watches(running: &runtime::Running, embedded: Option<sluice_storage::Store>) -> Vec<StoreWatch> {
    let spool = running.spool();
    let mut out = vec![StoreWatch {
        component: "spool",
        alarm: SPOOL_WRITE_FAILED,
        failure: Box::new(move || spool.write_failure()),
        since_ms: Mutex::new(None),
    }];
    if let Some(store) = embedded {
        out.push(StoreWatch {
            component: "embedded",
            alarm: STORE_WRITE_FAILED,
            failure: Box::new(move || store.write_failure()),
            since_ms: Mutex::new(None),
        });
    }
    out
}

/// A store whose write failures `/health` reports.
struct StoreWatch {
    component: &'static str,
    alarm: &'static str,
    /// Why its writes fail, while they do.
    failure: Box<dyn Fn() -> Option<String> + Send + Sync>,
    /// When the failure was first seen (epoch ms), while it lasts.
    since_ms: Mutex<Option<u64>>,
}

/// What `/health` reads.
#[derive(Clone)]
struct Health {
    status: runtime::SharedStatus,
    reports: runtime::Reports,
    alarms: runtime::AlarmBoards,
    sink_alarms: runtime::AlarmBoards,
    stores: Arc<Vec<StoreWatch>>,
    /// The `sluice_pipeline_alarm` series set to 1 (so that they go back to 0 when cleared).
    gauges: Arc<Mutex<BTreeSet<(String, String)>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every raised alarm: the sources', the sinks', and the stores' write failures.
fn all_alarms(h: &Health) -> Vec<runtime::RaisedAlarm> {
    let mut alarms = runtime::raised_alarms(&h.alarms);
    alarms.extend(runtime::raised_alarms(&h.sink_alarms));
    for w in h.stores.iter() {
        let failure = (w.failure)();
        let mut since = lock(&w.since_ms);
        match failure {
            Some(detail) => {
                let since_ms = *since.get_or_insert_with(sluice_flow::now_ms);
                alarms.push(runtime::RaisedAlarm {
                    component: w.component.to_owned(),
                    alarm: w.alarm.to_owned(),
                    since_ms,
                    detail: format!("writes fail: {detail}"),
                });
            }
            None => *since = None,
        }
    }
    alarms
}

/// `/health`: 503 with `"status": "alarm"` while any component has an alarm raised (see the
/// crate doc), else 200 with `"status": "ok"`; `reasons` (`component: alarm`), the raised
/// alarms with their details, and the live counters either way. Also sets the health gauges
/// (`sluice_pipeline_healthy`, `sluice_pipeline_alarm{component, alarm}`).
fn health_response(h: &Health) -> (axum::http::StatusCode, serde_json::Value) {
    let snapshot = runtime::status_snapshot(&h.status, &h.reports);
    let alarms = all_alarms(h);
    let healthy = alarms.is_empty();
    let code = if healthy { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    let status = if healthy { "ok" } else { "alarm" };
    let reasons: Vec<String> = alarms.iter().map(|a| format!("{}: {}", a.component, a.alarm)).collect();
    metrics::gauge!("sluice_pipeline_healthy").set(if healthy { 1.0 } else { 0.0 });
    let raised: BTreeSet<(String, String)> = alarms.iter().map(|a| (a.component.clone(), a.alarm.clone())).collect();
    let mut set = lock(&h.gauges);
    for (component, alarm) in set.difference(&raised) {
        metrics::gauge!("sluice_pipeline_alarm", "component" => component.clone(), "alarm" => alarm.clone()).set(0.0);
    }
    for (component, alarm) in &raised {
        metrics::gauge!("sluice_pipeline_alarm", "component" => component.clone(), "alarm" => alarm.clone()).set(1.0);
    }
    *set = raised;
    (code, serde_json::json!({"status": status, "reasons": reasons, "alarms": alarms, "pipeline": snapshot}))
}

async fn serve_ops(
    listen: SocketAddr,
    health: Health,
    metrics: Option<PrometheusHandle>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<SocketAddr, PipelineError> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|source| PipelineError::Listen {
        what: "metrics and health",
        addr: listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| PipelineError::Listen {
        what: "metrics and health",
        addr: listen,
        source,
    })?;
    let app = Router::new()
        .route(
            "/health",
            get(|State(h): State<Health>| async move {
                let (code, body) = health_response(&h);
                (code, [(axum::http::header::CONTENT_TYPE, "application/json")], body.to_string())
            }),
        )
        .route(
            "/metrics",
            get(move |State(h): State<Health>| {
                let m = metrics.clone();
                async move {
                    // The health gauges are current at every scrape.
                    let _ = health_response(&h);
                    match m {
                        Some(h) => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render())
                            .into_response(),
                        None => (axum::http::StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
                    }
                }
            }),
        )
        .with_state(health);
    let http = sluice_kinesis_api::server::HttpOptions::default();
    tokio::spawn(sluice_kinesis_api::server::serve(listener, app, http, stop));
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_503_with_every_raised_alarm_and_200_without() {
        let a = sluice_flow::Alarms::default();
        let b = sluice_flow::Alarms::default();
        let sink = sluice_flow::Alarms::default();
        let failing = Arc::new(Mutex::new(None::<String>));
        let f = failing.clone();
        let h = Health {
            status: Default::default(),
            reports: Default::default(),
            alarms: Arc::new(vec![("feed".into(), a.clone()), ("other".into(), b.clone())]),
            sink_alarms: Arc::new(vec![("out".into(), sink.clone())]),
            stores: Arc::new(vec![StoreWatch {
                component: "spool",
                alarm: SPOOL_WRITE_FAILED,
                failure: Box::new(move || lock(&f).clone()),
                since_ms: Mutex::new(None),
            }]),
            gauges: Default::default(),
        };
        let (code, body) = health_response(&h);
        assert_eq!((code.as_u16(), body["status"].as_str()), (200, Some("ok")));
        assert_eq!(body["alarms"], serde_json::json!([]));
        assert!(body["pipeline"]["sources"].is_object(), "the status snapshot stays under `pipeline`");
        a.raise("spool_blocked", "spool cannot write: no space");
        b.raise("silence", "nothing for 30s");
        let (code, body) = health_response(&h);
        assert_eq!((code.as_u16(), body["status"].as_str()), (503, Some("alarm")));
        let listed: Vec<(&str, &str)> = body["alarms"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| Some((x["component"].as_str()?, x["alarm"].as_str()?))).collect())
            .unwrap_or_default();
        assert_eq!(listed, vec![("feed", "spool_blocked"), ("other", "silence")]);
        assert_eq!(body["alarms"][0]["detail"], "spool cannot write: no space");
        assert!(body["alarms"][0]["since_ms"].as_u64().is_some_and(|t| t > 0));
        assert_eq!(body["reasons"], serde_json::json!(["feed: spool_blocked", "other: silence"]));
        a.clear("spool_blocked");
        b.clear("silence");
        assert_eq!(health_response(&h).0.as_u16(), 200);
        // A failing sink and a spool that cannot write are reasons too, by any alarm name.
        sink.raise(runtime::SINK_FAILING, "no record acknowledged for 61 s");
        a.raise("cursor_stuck", "the cursor has not moved");
        *lock(&failing) = Some("No space left on device".into());
        let (code, body) = health_response(&h);
        assert_eq!(code.as_u16(), 503);
        assert_eq!(
            body["reasons"],
            serde_json::json!(["feed: cursor_stuck", "out: sink_failing", "spool: spool_write_failed"])
        );
        assert!(body["alarms"][2]["detail"].as_str().is_some_and(|d| d.contains("No space left")), "{body}");
        sink.clear(runtime::SINK_FAILING);
        a.clear("cursor_stuck");
        *lock(&failing) = None;
        let (code, body) = health_response(&h);
        assert_eq!((code.as_u16(), body["reasons"].clone()), (200, serde_json::json!([])));
    }
}
