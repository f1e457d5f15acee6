//! The built-in feed simulator behind `sluice simulate`: a loopback server that streams a bike-race
//! telemetry feed over WebSocket, Server-Sent Events and NDJSON, with resume cursors and injected faults.
//!
//! It exists for demos, tests and benchmarks of sluice's sources. It is deliberately not a general mock
//! server: one feed, one message shape, one port, loopback only.
//!
//! # The feed
//!
//! By default 1,000 racers each report once per second (1,000 msgs/s in total), round-robin:
//!
//! ```text
//! {"seq":123,"racer":"r0042","team":"t17","ts":1795320000123,"cadence":87,"power":251,"heart_rate":142,"speed_kph":38.4,"gradient_pct":-1.5,"lap":3}
//! ```
//!
//! `seq` is global, starts at 1 and has no gaps: it is the resume cursor. The last `--history` messages
//! are kept, so a client can reconnect with `?after=SEQ` (or SSE's `Last-Event-ID`, or on WebSocket a
//! `{"type":"subscribe","after":SEQ}` sent within the first second) and get exactly the messages after
//! it, replayed from history and then live. Without a cursor a client starts from live.
//!
//! # Endpoints
//!
//! | path | what |
//! |---|---|
//! | `GET /ws` | WebSocket, one JSON text frame per message; `{"type":"ping"}` is answered with `{"type":"pong"}` |
//! | `GET /sse` | `text/event-stream`, `id: <seq>` + `data: <json>` per event |
//! | `GET /ndjson` | a never-ending chunked body, one JSON per line |
//! | `GET /health` | 200 `ok` |
//! | `GET /stats` | the counters of [`SimStats`] as JSON |
//!
//! # Faults
//!
//! `--cut-every`, `--cut-mode`, `--stall-every`/`--stall-for` and `--garbage-every` apply to every
//! connection; a connection can override them with `?cut_after_ms=&cut_mode=&stall_every_ms=&stall_for_ms=
//! &garbage_every=` (0 turns a fault off), so parallel tests need not share settings. Garbage frames are
//! inserted, not substituted: the JSON messages around them keep their gap-free `seq`.
//!
//! # Efficiency
//!
//! Messages are formatted by hand into shared chunks and broadcast once as [`bytes::Bytes`]; each client
//! only clones references. A client that falls a whole broadcast ring (65,536 messages) behind live is
//! cut with a close frame ("lagged") and can resume from history. With `--fast` the generator runs as
//! fast as the slowest connected client reads (and pauses while nobody is connected).

mod config;
mod feed;
mod server;
mod session;
mod stats;
mod transport;

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

pub use config::{CutMode, SimConfig, SimulateArgs};
pub use server::Simulator;
pub use stats::SimStats;

/// How often `run` prints its status line.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Runs `sluice simulate`: serves until Ctrl-C or SIGTERM.
///
/// Prints `sluice simulate: serving on http://ADDR (ws: /ws, sse: /sse)` on stdout once listening, then
/// a status line on stderr every few seconds.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    cfg.validate().map_err(anyhow::Error::msg)?;
    let sim = Simulator::start(cfg, args.listen)
        .await
        .with_context(|| format!("sluice simulate cannot serve on {}", args.listen))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "sluice simulate: serving on http://{} (ws: /ws, sse: /sse)", sim.local_addr())?;
        stdout.flush()?;
    }

    let stop = stop_signal();
    tokio::pin!(stop);
    let mut status = tokio::time::interval_at(tokio::time::Instant::now() + STATUS_EVERY, STATUS_EVERY);
    let mut last = sim.stats();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = status.tick() => {
                let now = sim.stats();
                eprintln!("{}", status_line(&now, &last, STATUS_EVERY));
                last = now;
            }
        }
    }
    let stats = sim.stats();
    sim.shutdown().await;
    eprintln!(
        "sluice simulate: stopped after {} messages ({} sent to {} connections)",
        stats.generated, stats.messages_sent, stats.connections
    );
    Ok(())
}

fn status_line(now: &SimStats, last: &SimStats, period: Duration) -> String {
    let rate = (now.generated - last.generated) as f64 / period.as_secs_f64();
    let mut line = format!(
        "sluice simulate: generated {} ({rate:.0}/s), clients {}, cuts {}, stalls {}",
        now.generated,
        now.clients,
        now.cuts(),
        now.stalls
    );
    for (name, n) in [("garbage frames", now.garbage_frames), ("lagged", now.lagged), ("resume gaps", now.resume_gaps)]
    {
        if n > 0 {
            line.push_str(&format!(", {name} {n}"));
        }
    }
    line
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
