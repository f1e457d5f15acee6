//! `sluice top`: a live view of a running `sluice run` or `sluice serve`, read from its
//! Prometheus `/metrics` page.
//!
//! Two scrapes one interval apart turn counters into rates. On a terminal it draws a
//! full-screen table view (ratatui); piped, or with `--plain`, it prints a timestamped block of
//! aligned lines every interval. An unreachable target is reported and retried, never fatal,
//! except with `--once`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

pub mod expo;
pub mod fetch;
pub mod model;
pub mod render;
mod tui;

pub use fetch::Fetcher;
pub use model::{Scrape, View};

/// `sluice top` options.
#[derive(clap::Args, Debug, Clone)]
pub struct TopArgs {
    /// What to watch: `HOST:PORT` or a URL (`/metrics` is added when it has no path). `sluice
    /// run` serves its metrics on 127.0.0.1:9598, `sluice serve` on its listen address (4567).
    #[arg(default_value = "127.0.0.1:9598", value_name = "URL_OR_ADDR")]
    pub target: String,
    /// Time between scrapes, e.g. `1s`, `500ms`, `1m`.
    #[arg(long, default_value = "1s", value_parser = sluice_core::duration::parse)]
    pub interval: Duration,
    /// Print one snapshot (two scrapes `--interval` apart, so rates are known) and exit;
    /// exits non-zero if the target cannot be read.
    #[arg(long)]
    pub once: bool,
    /// Plain lines even on a terminal (the default when stdout is not one).
    #[arg(long)]
    pub plain: bool,
}

/// Why `sluice top` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// The target is not a usable address or URL.
    #[error("invalid target {target:?}: {reason}")]
    Target {
        /// As given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The metrics page could not be read.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The metrics URL.
        url: String,
        /// The most specific cause.
        reason: String,
    },
    /// `--interval 0`.
    #[error("--interval must be greater than zero")]
    ZeroInterval,
    /// The terminal could not be set up, drawn or read.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// Runs `sluice top` until the user quits (or after one snapshot with `--once`).
pub async fn run(args: TopArgs) -> Result<(), TopError> {
    if args.interval.is_zero() {
        return Err(TopError::ZeroInterval);
    }
    // A scrape slower than the interval would pile up; a very short one would fail on a
    // loaded machine.
    let timeout = args.interval.clamp(Duration::from_secs(2), Duration::from_secs(10));
    let fetcher = Fetcher::new(&args.target, timeout)?;
    if args.once {
        return once(&fetcher, args.interval).await;
    }
    if args.plain || !std::io::stdout().is_terminal() {
        return plain_loop(&fetcher, args.interval).await;
    }
    tui::run(fetcher, args.interval).await
}

fn heading(fetcher: &Fetcher) -> String {
    format!("{}  {}", humantime::format_rfc3339_seconds(SystemTime::now()), fetcher.url())
}

async fn once(fetcher: &Fetcher, interval: Duration) -> Result<(), TopError> {
    let first = fetcher.scrape().await?;
    tokio::time::sleep(interval).await;
    let second = fetcher.scrape().await?;
    let text = render::plain(&View::new(Some(&first), &second), &heading(fetcher));
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

async fn plain_loop(fetcher: &Fetcher, interval: Duration) -> Result<(), TopError> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev: Option<Scrape> = None;
    let mut blocks = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let text = match fetcher.scrape().await {
            Ok(scrape) => {
                let text = render::plain(&View::new(prev.as_ref(), &scrape), &heading(fetcher));
                prev = Some(scrape);
                text
            }
            Err(e) => format!(
                "{}  {e} (retrying every {})\n",
                humantime::format_rfc3339_seconds(SystemTime::now()),
                humantime::format_duration(interval)
            ),
        };
        let separator = if blocks > 0 { "\n" } else { "" };
        blocks += 1;
        // A closed pipe (`sluice top | head`) ends the watch quietly.
        let mut out = std::io::stdout().lock();
        if out
            .write_all(separator.as_bytes())
            .and_then(|()| out.write_all(text.as_bytes()))
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
    }
}
