//! The `sluice` command: wires the crates together and parses the command line.
//!
//! `sluice run` runs a pipeline file (feeds → spool → sinks), `sluice validate` checks one,
//! `sluice serve` runs the embedded Kinesis-compatible stream on its own, `sluice bench`
//! drives load at any Kinesis-compatible endpoint, and `sluice top` watches a running one.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sluice_kinesis_api::{ApiConfig, Server};
use sluice_storage::{Durability, Store, StoreConfig};
use tracing_subscriber::EnvFilter;

// The server allocates and frees many small buffers per request; mimalloc does that far
// cheaper than glibc's malloc on this workload.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (v2 and v3); the Rust bindings name
/// no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS after 1 s instead of mimalloc's 10 ms: at full speed the
/// pipeline's buffers were returned and faulted in again (zeroed huge pages, 8 % of the CPU of
/// a kinesis source). Idle memory is still returned.
fn tune_allocator() {
    // SAFETY: sets a process-wide option by its documented index; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
}

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Outbound feeds into Kinesis-compatible streams, and the embedded stream itself"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline file: keep the sources' connections alive, spool, deliver to the sinks.
    Run(RunArgs),
    /// The main job on the embedded default: a simulated bike-race feed over WebSocket, through
    /// a pipeline with cursor resume, into the embedded stream (served for other tools), with
    /// live counts.
    Demo(DemoArgs),
    /// Check a pipeline file (syntax, inputs, every component's options) without running it.
    Validate {
        /// The pipeline file.
        file: PathBuf,
    },
    /// Serve the embedded, durable, Kinesis-compatible stream.
    Serve(ServeArgs),
    /// Serve a live demo feed over WebSocket, SSE and NDJSON (resume, cuts, stalls on request).
    Simulate(sluice_simulate::SimulateArgs),
    /// Drive PutRecords/GetRecords load at a Kinesis-compatible endpoint and print a table.
    Bench(sluice_bench::BenchArgs),
    /// Live view of a running `sluice run` or `sluice serve` (rates, connections, lag), read from
    /// its /metrics; plain lines when stdout is not a terminal.
    Top(sluice_top::TopArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The pipeline file (TOML).
    file: PathBuf,
    /// Seconds between status lines on stderr (0: none).
    #[arg(long, default_value_t = 10)]
    status_secs: u64,
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// Where the spool, cursors and the embedded stream live. The simulated feed restarts at
    /// seq 1 on every run, so the demo resets its spool and cursors; the stream keeps its data.
    #[arg(long, default_value = "./sluice-demo-data")]
    data_dir: PathBuf,
    /// Address of the embedded stream (read it with the AWS CLI or any SDK).
    #[arg(long, default_value = "127.0.0.1:4567")]
    stream_listen: SocketAddr,
    /// Racers in the simulated feed (each sends once per second).
    #[arg(long, default_value_t = 1000)]
    racers: u32,
    /// Cut the feed connection this often (shows reconnect + resume), e.g. `5s`; `0s` never.
    #[arg(long, default_value = "7s")]
    cut_every: String,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// The leaderboard's tumbling window (the handler sink's `tumbling_window`), e.g. `10s`.
    #[arg(long, default_value = "10s")]
    window: String,
    /// How often the archive writes an object (the s3 sink's `buffer_interval`), e.g. `10s`.
    #[arg(long, default_value = "10s")]
    archive_every: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    /// Answer a put only after its records are fsynced (group commit).
    Fsync,
    /// Answer after the write reaches the OS (survives a process crash, not a power cut).
    Os,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:4567", env = "SLUICE_LISTEN")]
    listen: SocketAddr,
    /// Where streams are stored.
    #[arg(long, default_value = "./sluice-data", env = "SLUICE_DATA_DIR")]
    data_dir: PathBuf,
    /// When a put is acknowledged.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Fsync)]
    durability: DurabilityArg,
    /// Emulate per-shard limits: 1 MiB/s and 1,000 records/s writes, 5 calls/s and 2 MiB/s reads.
    #[arg(long)]
    enforce_limits: bool,
    /// How long CREATING/UPDATING/DELETING last, in ms (0: instant).
    #[arg(long, default_value_t = 0)]
    transition_ms: u64,
    /// Account id used in ARNs.
    #[arg(long, default_value = "000000000000")]
    account_id: String,
    /// Region used in ARNs when a request's signature names none.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Most open shards across all streams.
    #[arg(long, default_value_t = 10_000)]
    shard_limit: u32,
    /// Segment file size in MiB before a new one starts.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 16)]
    max_body_mib: usize,
    /// Lifetime of one SubscribeToShard subscription, seconds.
    #[arg(long, default_value_t = 300)]
    subscription_secs: u64,
    /// A request header must arrive within this many seconds, or the connection is closed;
    /// an idle keep-alive connection is closed after as long without a new request.
    #[arg(long, default_value_t = 30.0)]
    header_timeout_secs: f64,
    /// Verify every request's SigV4 signature against the keys in SLUICE_CREDENTIALS
    /// (`AKID:SECRET[,AKID:SECRET…]`); unknown keys and bad signatures are refused.
    #[arg(long)]
    verify_signatures: bool,
    /// Seconds between status lines on stderr (0: none).
    #[arg(long, default_value_t = 30)]
    status_secs: u64,
    /// Check the whole data directory instead of serving (every frame's checksums, records
    /// missing between segments, the catalog and its backup), print a report and exit: status
    /// 0 if all is intact, 1 if anything is damaged. Changes nothing.
    #[arg(long)]
    verify: bool,
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: logs piped to files or collectors stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line (with its causes), never a backtrace: these are user-facing errors.
            eprintln!("sluice: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Demo(args) => runtime.block_on(demo(args)),
        Command::Simulate(args) => runtime.block_on(sluice_simulate::run(args)),
        Command::Validate { file } => validate(&file),
        Command::Bench(args) => runtime.block_on(async {
            sluice_bench::run_and_print(args).await?;
            Ok(())
        }),
        Command::Top(args) => Ok(runtime.block_on(sluice_top::run(args))?),
    }
}

/// `sluice serve --verify`: the report, and an error (exit status 1) if anything is damaged.
fn verify_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if !dir.exists() {
        anyhow::bail!("{} does not exist", dir.display());
    }
    let started = std::time::Instant::now();
    let report = sluice_storage::verify(dir).with_context(|| format!("verifying {}", dir.display()))?;
    println!(
        "sluice verify: {}: {} shard(s), {} segment(s), {} intact record(s), checked in {} ms",
        dir.display(),
        report.shards,
        report.segments,
        report.records,
        started.elapsed().as_millis()
    );
    for p in &report.catalog_problems {
        println!("  catalog: {p}");
    }
    for d in &report.damaged {
        let ranges: Vec<String> = d.ranges.iter().map(|(s, e)| format!("{s}..{e}")).collect();
        println!(
            "  {}: {}; {} record(s) lost{}",
            d.path.display(),
            d.what,
            d.records_lost,
            if ranges.is_empty() { String::new() } else { format!("; bytes {}", ranges.join(", ")) }
        );
    }
    if report.is_clean() {
        println!("sluice verify: OK, nothing damaged");
        return Ok(());
    }
    anyhow::bail!(
        "damage found: {} segment(s), {} record(s) lost, {} catalog problem(s); `sluice serve` keeps every intact record, copies the damaged bytes to {}/quarantine/ and reports them",
        report.damaged.len(),
        report.records_lost(),
        report.catalog_problems.len(),
        dir.display()
    )
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.verify {
        let dir = args.data_dir.clone();
        return tokio::task::spawn_blocking(move || verify_data_dir(&dir)).await.context("verifying")?;
    }
    let mut store_config = StoreConfig::new(args.data_dir.clone());
    store_config.durability = match args.durability {
        DurabilityArg::Fsync => Durability::Fsync,
        DurabilityArg::Os => Durability::Os,
    };
    store_config.segment_bytes = args.segment_mib.max(1) * 1024 * 1024;
    // Before the store opens, so that what recovery counts reaches /metrics.
    let metrics = sluice_kinesis_api::install_metrics();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .context("opening the store")?
        .with_context(|| format!("opening the data directory {}", args.data_dir.display()))?;
    let credentials = if args.verify_signatures {
        let spec = std::env::var("SLUICE_CREDENTIALS")
            .context("--verify-signatures needs SLUICE_CREDENTIALS=AKID:SECRET[,AKID:SECRET…] in the environment")?;
        Some(
            sluice_kinesis_api::sigv4::Credentials::parse(&spec)
                .map_err(|e| anyhow::anyhow!("SLUICE_CREDENTIALS: {e}"))?,
        )
    } else {
        None
    };
    let config = ApiConfig {
        credentials,
        enforce_limits: args.enforce_limits,
        transition_ms: args.transition_ms,
        max_body_bytes: args.max_body_mib * 1024 * 1024,
        account_id: args.account_id,
        default_region: args.region,
        subscription_ms: args.subscription_secs * 1000,
        shard_limit: args.shard_limit,
        header_timeout: Duration::try_from_secs_f64(args.header_timeout_secs)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--header-timeout-secs: expected a positive number of seconds")?,
    };
    // The DynamoDB API (lease tables) on the same port, its tables under DATA_DIR/dynamodb.
    let mut db_config = sluice_dynamodb::DbConfig::new(args.data_dir.join("dynamodb"));
    db_config.fsync = matches!(args.durability, DurabilityArg::Fsync);
    db_config.account_id = config.account_id.clone();
    let dynamodb = tokio::task::spawn_blocking(move || sluice_dynamodb::Db::open(db_config))
        .await
        .context("opening the dynamodb tables")?
        .context("opening the dynamodb tables")?;
    let server =
        Server::start_with_dynamodb(store.clone(), config, args.listen, metrics, Some(std::sync::Arc::new(dynamodb)))
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
    // Tests and scripts read this line to learn the bound port.
    println!("sluice: listening on http://{}", server.local_addr);
    std::io::stdout().flush().ok();
    tracing::info!(
        listen = %server.local_addr,
        data_dir = %args.data_dir.display(),
        durability = ?args.durability,
        enforce_limits = args.enforce_limits,
        "sluice serve ready"
    );
    let status = (args.status_secs > 0).then(|| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(args.status_secs));
            tick.tick().await;
            loop {
                tick.tick().await;
                let cat = store.catalog();
                let shards: usize = cat.streams.values().map(|s| s.open_shards().count()).sum();
                let d = store.damage();
                if d.damaged_ranges > 0 {
                    tracing::warn!(
                        streams = cat.streams.len(),
                        open_shards = shards,
                        corrupt_records = d.corrupt_records,
                        quarantined_bytes = d.quarantined_bytes,
                        last = d.last.as_deref().unwrap_or(""),
                        "status: damage was found and contained"
                    );
                } else {
                    tracing::info!(streams = cat.streams.len(), open_shards = shards, "status");
                }
            }
        })
    });
    shutdown_signal().await;
    tracing::info!("shutting down");
    if let Some(s) = status {
        s.abort();
    }
    server.shutdown().await.context("stopping the server")?;
    tokio::task::spawn_blocking(move || store.shutdown()).await.ok();
    tracing::info!("stopped");
    Ok(())
}

/// Shards of the demo's stream; a leaderboard window is complete once all of them closed it.
const DEMO_SHARDS: usize = 4;

/// The demo's leaderboard handler (`examples/leaderboard.py`), written into the data directory
/// at start so that the demo runs from any working directory.
const LEADERBOARD_PY: &str = include_str!("../../../examples/leaderboard.py");

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let cut = sluice_core::duration::parse(&args.cut_every).map_err(|e| anyhow::anyhow!("--cut-every: {e}"))?;
    // Checked here so that a bad value is a one-line error, not a pipeline config error.
    for (flag, value) in [("--window", &args.window), ("--archive-every", &args.archive_every)] {
        sluice_core::duration::parse(value).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    }
    let sim_cfg = sluice_simulate::SimConfig {
        racers: args.racers,
        cut_every: (!cut.is_zero()).then_some(cut),
        cut_mode: sluice_simulate::CutMode::Mixed,
        ..Default::default()
    };
    // The simulated feed starts again at seq 1 on every run, so the demo's cursor and spool from
    // an earlier run would point past it: start them afresh (the stream keeps its records).
    for sub in ["spool", "state", "dead-letter"] {
        let dir = args.data_dir.join(sub);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("resetting {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_path = std::path::absolute(&args.data_dir).context("resolving --data-dir")?;
    let board_path = data_path.join("leaderboard.json");
    let lake_path = data_path.join("lake");
    let python = python3_version();
    let board = match &python {
        Some(_) => {
            let script = data_path.join("leaderboard.py");
            std::fs::write(&script, LEADERBOARD_PY).with_context(|| format!("writing {}", script.display()))?;
            Some(leaderboard_toml(&script, &board_path, &args.window)?)
        }
        None => None,
    };
    let sim = sluice_simulate::Simulator::start(sim_cfg, "127.0.0.1:0".parse()?)
        .await
        .context("starting the simulated feed")?;
    let ws = sim.ws_url();
    let data_dir = args.data_dir.display().to_string().replace('\\', "/");
    // The same file a user would write; `sluice validate` accepts it too.
    let text = format!(
        r#"
data_dir = "{data_dir}"
[api]
listen = "127.0.0.1:0"
[embedded]
listen = "{stream}"

[sources.race]
type = "websocket"
url = "{ws}?after=0"
idle_timeout = "5s"
[sources.race.resume]
cursor = "/seq"
url = "{ws}?after={{cursor}}"

[sinks.stream]
type = "kinesis"
inputs = ["race"]
stream_name = "race"
partition_key = "/racer"
shards = {DEMO_SHARDS}

# The raw feed archived as Firehose would: gzip objects under lake/YYYY/MM/DD/HH/.
[sinks.lake]
type = "s3"
inputs = ["race"]
url = "lake"
compression = "gzip"
buffer_interval = {archive_every}
{board}"#,
        stream = args.stream_listen,
        archive_every = toml_string(&args.archive_every)?,
        board = board.as_deref().unwrap_or(""),
    );
    let cfg = sluice_pipeline::PipelineConfig::parse("demo pipeline", &text, &|k| std::env::var(k).ok())?;
    let metrics = sluice_kinesis_api::install_metrics();
    let pipeline = sluice_pipeline::Pipeline::start(cfg, metrics).await?;
    let stream = pipeline.embedded_addr().map(|a| format!("http://{a}")).unwrap_or_default();
    println!("sluice demo: feed {ws} -> spool {} -> stream \"race\" at {stream}", args.data_dir.display());
    println!("sluice demo: raw feed archived as gzip objects under {}/YYYY/MM/DD/HH/", lake_path.display());
    match &python {
        Some(version) => println!(
            "sluice demo: stream -> leaderboard handler ({version}, {} windows): top 10 by average power in {}",
            args.window,
            board_path.display()
        ),
        None => println!("sluice demo: python3 not found: running without the leaderboard"),
    }
    println!("sluice demo: metrics and health on http://{}; Ctrl-C stops", pipeline.ops_addr());
    println!(
        "sluice demo: read it with e.g. AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x aws --region us-east-1 --endpoint-url {stream} kinesis describe-stream-summary --stream-name race"
    );
    std::io::stdout().flush().ok();
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut shown_window = String::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                let s = pipeline.status();
                let src = s.sources.get("race").cloned().unwrap_or_default();
                let sink = s.sinks.get("stream").cloned().unwrap_or_default();
                let stats = sim.stats();
                println!(
                    "t={:>4}s  feed generated {:>8}  spooled {:>8} (cursor {})  delivered {:>8}  dead-lettered {}  feed cuts {}  lake objects {}",
                    started.elapsed().as_secs(),
                    sim.generated(),
                    src.spooled,
                    src.cursor.as_deref().unwrap_or("-"),
                    sink.delivered,
                    sink.dead_lettered,
                    stats.cuts(),
                    count_objects(&lake_path),
                );
                if python.is_some()
                    && let Some(w) = newest_complete_window(&board_path, DEMO_SHARDS)
                    && w.start != shown_window
                {
                    println!("{}", w.line(5));
                    shown_window = w.start;
                }
                std::io::stdout().flush().ok();
                if args.seconds > 0 && started.elapsed().as_secs() >= args.seconds {
                    break;
                }
            }
        }
    }
    pipeline.shutdown().await;
    sim.shutdown().await;
    Ok(())
}

/// `python3 --version`'s answer, or `None` when there is no working `python3`.
fn python3_version() -> Option<String> {
    let out = std::process::Command::new("python3").arg("--version").output().ok()?;
    // Python before 3.4 printed its version on stderr.
    let text = if out.stdout.is_empty() { &out.stderr } else { &out.stdout };
    out.status.success().then(|| String::from_utf8_lossy(text).trim().to_string())
}

/// A TOML string literal (JSON's escapes are valid TOML basic-string escapes).
fn toml_string(s: &str) -> anyhow::Result<String> {
    Ok(serde_json::to_string(s)?)
}

/// The leaderboard's part of the demo pipeline: the demo's own stream, read back through a
/// `kinesis` source into a tumbling-window `handler` sink running `script`.
fn leaderboard_toml(script: &std::path::Path, board: &std::path::Path, window: &str) -> anyhow::Result<String> {
    // This run's records only: the stream keeps earlier runs' records, which would otherwise all
    // be replayed through the handler on a first run. A later run resumes from its checkpoint.
    let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let command = [
        toml_string("python3")?,
        toml_string(&script.display().to_string())?,
        toml_string(&board.display().to_string())?,
        toml_string(&DEMO_SHARDS.to_string())?,
    ]
    .join(", ");
    Ok(format!(
        r#"
# The leaderboard: the stream read back (sharing shards through a lease table, as the KCL does)
# into a Lambda-style handler with tumbling windows.
[sources.board]
type = "kinesis"
stream_name = "race"
application = "leaderboard"
starting_position = {{ at_timestamp = {since} }}
idle_between_reads = "200ms"

[sinks.leaderboard]
type = "handler"
inputs = ["board"]
command = [{command}]
batch_size = 1000
tumbling_window = {window}
concurrency = {DEMO_SHARDS}
timeout = "10s"
"#,
        since = toml_string(&since)?,
        window = toml_string(window)?,
    ))
}

/// Objects the archive holds (its staging files, `<object>#<n>`, are not counted).
fn count_objects(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_objects(&e.path()),
            Ok(t) if t.is_file() && !e.file_name().to_string_lossy().contains('#') => 1,
            _ => 0,
        })
        .sum()
}

/// One window of `leaderboard.json` (see `examples/leaderboard.py`).
struct BoardWindow {
    start: String,
    end: String,
    reports: u64,
    top: Vec<(String, f64)>,
}

impl BoardWindow {
    /// One status line with the first `n` places.
    fn line(&self, n: usize) -> String {
        // "2026-12-06T19:02:10Z" -> "19:02:10"
        let clock = |t: &str| t.get(11..19).unwrap_or(t).to_string();
        let places: Vec<String> =
            self.top.iter().take(n).enumerate().map(|(i, (r, p))| format!("{}. {r} {p:.1} W", i + 1)).collect();
        format!(
            "leaderboard {}-{} UTC ({} reports), average power: {}",
            clock(&self.start),
            clock(&self.end),
            self.reports,
            places.join("  ")
        )
    }
}

/// The newest window every one of `shards` shards has closed, if the file holds one. The file
/// is replaced atomically, so a read never sees half of it; anything unreadable is skipped.
fn newest_complete_window(path: &std::path::Path, shards: usize) -> Option<BoardWindow> {
    let text = std::fs::read(path).ok()?;
    let board: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let w = board
        .get("windows")?
        .as_array()?
        .iter()
        .rev()
        .find(|w| w.get("shards").and_then(|s| s.as_array()).is_some_and(|s| s.len() >= shards))?;
    let text_of = |k: &str| w.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let top = w
        .get("top")?
        .as_array()?
        .iter()
        .filter_map(|p| Some((p.get("racer")?.as_str()?.to_string(), p.get("avg_power")?.as_f64()?)))
        .collect();
    Some(BoardWindow {
        start: text_of("start")?,
        end: text_of("end")?,
        reports: w.get("reports").and_then(|v| v.as_u64()).unwrap_or(0),
        top,
    })
}

fn validate(file: &std::path::Path) -> anyhow::Result<()> {
    let cfg = sluice_pipeline::PipelineConfig::load(file)?;
    sluice_pipeline::validate(&cfg)?;
    println!(
        "{}: ok ({} source{}, {} sink{})",
        file.display(),
        cfg.sources.len(),
        if cfg.sources.len() == 1 { "" } else { "s" },
        cfg.sinks.len(),
        if cfg.sinks.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = sluice_pipeline::PipelineConfig::load(&args.file)?;
    let metrics = sluice_kinesis_api::install_metrics();
    let pipeline = sluice_pipeline::Pipeline::start(cfg, metrics).await?;
    // Scripts and tests read these lines to learn the bound ports.
    println!("sluice: metrics on http://{}", pipeline.ops_addr());
    if let Some(addr) = pipeline.embedded_addr() {
        println!("sluice: embedded stream on http://{addr}");
    }
    std::io::stdout().flush().ok();
    let mut tick = tokio::time::interval(Duration::from_secs(args.status_secs.max(1)));
    tick.tick().await;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick(), if args.status_secs > 0 => {
                let s = pipeline.status();
                for (name, src) in &s.sources {
                    tracing::info!(source = %name, spooled = src.spooled, cursor = src.cursor.as_deref().unwrap_or("-"), "status");
                }
                for (name, sink) in &s.sinks {
                    tracing::info!(sink = %name, delivered = sink.delivered, dead_lettered = sink.dead_lettered, watermarks = ?sink.watermarks, "status");
                }
            }
        }
    }
    tracing::info!("shutting down");
    pipeline.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
