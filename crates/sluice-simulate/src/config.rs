//! What the simulator can be told: the command-line arguments ([`SimulateArgs`]), the same options as a
//! plain struct for programs and tests ([`SimConfig`]), and the per-connection overrides read from a
//! request's query string.

use std::net::SocketAddr;
use std::time::Duration;

use clap::ValueEnum;

use crate::feed::GenConfig;

/// Arguments of `sluice simulate`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Address to serve on. Only loopback addresses are accepted.
    #[arg(long, default_value = "127.0.0.1:8765", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Number of racers; each reports once per second, so the feed runs at RACERS msgs/s by default.
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub racers: u32,

    /// Total messages per second across all racers (overrides RACERS x 1/s).
    #[arg(long, value_name = "MSGS_PER_SEC", value_parser = parse_rate, conflicts_with = "fast")]
    pub rate: Option<f64>,

    /// Emit as fast as the slowest connected client takes messages (for benchmarks).
    #[arg(long)]
    pub fast: bool,

    /// Stop generating after N messages; clients stay connected.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Messages kept in memory for resume. A cursor older than this replays from the oldest kept.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub history: usize,

    /// Cut every feed connection this long after it starts (e.g. `2s`, `500ms`).
    #[arg(long, value_name = "DURATION", value_parser = sluice_core::duration::parse)]
    pub cut_every: Option<Duration>,

    /// How connections are cut: a close frame / end of body, a dropped TCP connection, or alternating.
    #[arg(long, value_enum, default_value_t = CutMode::Close, value_name = "MODE")]
    pub cut_mode: CutMode,

    /// Every DURATION of a connection's life, stop sending to it (keeping it open) for --stall-for.
    #[arg(long, value_name = "DURATION", value_parser = sluice_core::duration::parse, requires = "stall_for")]
    pub stall_every: Option<Duration>,

    /// How long each stall lasts.
    #[arg(long, value_name = "DURATION", value_parser = sluice_core::duration::parse, requires = "stall_every")]
    pub stall_for: Option<Duration>,

    /// Make every Nth frame of a connection something that is not JSON (N >= 2).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pub garbage_every: Option<u64>,
}

impl SimulateArgs {
    /// The simulator configuration these arguments describe.
    pub fn config(&self) -> SimConfig {
        SimConfig {
            racers: self.racers,
            rate: self.rate,
            fast: self.fast,
            count: self.count,
            history: self.history,
            cut_every: self.cut_every,
            cut_mode: self.cut_mode,
            stall_every: self.stall_every,
            stall_for: self.stall_for,
            garbage_every: self.garbage_every,
        }
    }
}

/// How a fault-injected cut ends a connection.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CutMode {
    /// A WebSocket close frame (code 1001), or the end of the HTTP body.
    #[default]
    Close,
    /// Drop the connection mid-stream: no close frame, no final HTTP chunk.
    Abort,
    /// Alternate between `close` and `abort`, starting with `close`.
    Mixed,
}

/// The simulator's options; mirrors [`SimulateArgs`] without the listen address.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Racers reporting round-robin (default 1,000).
    pub racers: u32,
    /// Total messages per second; `None` means `racers` per second.
    pub rate: Option<f64>,
    /// Emit as fast as the slowest connected client takes messages; ignores `rate`.
    pub fast: bool,
    /// Stop generating after this many messages.
    pub count: Option<u64>,
    /// Messages kept for resume (default 1,000,000).
    pub history: usize,
    /// Cut each connection this long after it starts.
    pub cut_every: Option<Duration>,
    /// How cuts end a connection.
    pub cut_mode: CutMode,
    /// Stall each connection this often...
    pub stall_every: Option<Duration>,
    /// ...for this long (default 1 s when only `stall_every` is set).
    pub stall_for: Option<Duration>,
    /// Every Nth frame is not JSON.
    pub garbage_every: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            racers: 1000,
            rate: None,
            fast: false,
            count: None,
            history: 1_000_000,
            cut_every: None,
            cut_mode: CutMode::Close,
            stall_every: None,
            stall_for: None,
            garbage_every: None,
        }
    }
}

impl SimConfig {
    /// Checks the options; the error is one sentence for the user.
    pub fn validate(&self) -> Result<(), String> {
        if self.racers == 0 {
            return Err("--racers must be at least 1".into());
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(format!("--rate must be a positive number of messages per second, got {rate}"));
        }
        if self.cut_every.is_some_and(|d| d.is_zero()) {
            return Err("--cut-every must be longer than zero".into());
        }
        if self.stall_every.is_some_and(|d| d.is_zero()) || self.stall_for.is_some_and(|d| d.is_zero()) {
            return Err("--stall-every and --stall-for must be longer than zero".into());
        }
        if self.garbage_every.is_some_and(|n| n < 2) {
            return Err("--garbage-every must be at least 2 (otherwise no frame would be JSON)".into());
        }
        Ok(())
    }

    pub(crate) fn generator(&self) -> GenConfig {
        GenConfig {
            racers: self.racers,
            rate: if self.fast { None } else { Some(self.rate.unwrap_or(f64::from(self.racers))) },
            count: self.count,
        }
    }

    fn faults(&self) -> ConnOptions {
        ConnOptions {
            after: None,
            cut_after: self.cut_every,
            cut_mode: self.cut_mode,
            stall_every: self.stall_every,
            stall_for: self.stall_for.unwrap_or(DEFAULT_STALL),
            garbage_every: self.garbage_every,
            subscribe_wait: SUBSCRIBE_WINDOW,
        }
    }
}

const DEFAULT_STALL: Duration = Duration::from_secs(1);

/// How long a WebSocket connection without `?after=` waits for `{"type":"subscribe",...}` before it starts
/// from live. Messages generated meanwhile are not lost: "live" means from the moment of connecting.
pub(crate) const SUBSCRIBE_WINDOW: Duration = Duration::from_secs(1);

/// The options of one connection: the simulator's faults, overridden by the query string.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ConnOptions {
    /// Resume cursor: send messages with `seq > after`. `None` starts from live.
    pub after: Option<u64>,
    pub cut_after: Option<Duration>,
    pub cut_mode: CutMode,
    pub stall_every: Option<Duration>,
    pub stall_for: Duration,
    pub garbage_every: Option<u64>,
    pub subscribe_wait: Duration,
}

impl ConnOptions {
    /// Reads `after`, `cut_after_ms`, `cut_mode`, `stall_every_ms`, `stall_for_ms`, `garbage_every` and
    /// `subscribe_wait_ms` from a query string; a 0 turns the fault off for this connection. Other
    /// parameters are ignored.
    pub(crate) fn from_query(cfg: &SimConfig, query: Option<&str>) -> Result<ConnOptions, String> {
        let mut opts = cfg.faults();
        let pairs =
            query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()).map(|kv| kv.split_once('=').unwrap_or((kv, "")));
        for (key, value) in pairs {
            let number = || {
                value.parse::<u64>().map_err(|_| format!("query parameter {key} must be a whole number, got {value:?}"))
            };
            let millis = |n: u64| (n > 0).then(|| Duration::from_millis(n));
            match key {
                "after" => opts.after = Some(number()?),
                "cut_after_ms" => opts.cut_after = millis(number()?),
                "cut_mode" => {
                    opts.cut_mode = CutMode::from_str(value, true)
                        .map_err(|_| format!("query parameter cut_mode must be close, abort or mixed, got {value:?}"))?
                }
                "stall_every_ms" => opts.stall_every = millis(number()?),
                "stall_for_ms" => opts.stall_for = millis(number()?).unwrap_or(DEFAULT_STALL),
                "garbage_every" => {
                    opts.garbage_every = match number()? {
                        0 => None,
                        1 => return Err("query parameter garbage_every must be 0 (off) or at least 2".into()),
                        n => Some(n),
                    }
                }
                "subscribe_wait_ms" => opts.subscribe_wait = Duration::from_millis(number()?),
                _ => {}
            }
        }
        Ok(opts)
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a positive number of messages per second")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    #[test]
    fn duration_flags_use_the_core_grammar() {
        let cli =
            Cli::try_parse_from(["x", "--cut-every", "1m 30s", "--stall-every", "4", "--stall-for", "250ms"]).unwrap();
        assert_eq!(cli.args.cut_every, Some(Duration::from_secs(90)));
        assert_eq!(cli.args.stall_every, Some(Duration::from_secs(4)));
        assert_eq!(cli.args.stall_for, Some(Duration::from_millis(250)));
        let err = Cli::try_parse_from(["x", "--cut-every", "2 parsecs"]).err().unwrap().to_string();
        assert!(err.contains(r#"invalid duration "2 parsecs""#), "{err}");
    }

    #[test]
    fn cli_defaults_and_flags() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.args.listen, "127.0.0.1:8765".parse().unwrap());
        assert_eq!(cli.args.config(), SimConfig::default());
        let cli = Cli::try_parse_from([
            "x",
            "--racers",
            "10",
            "--rate",
            "250",
            "--count",
            "99",
            "--history",
            "5",
            "--cut-every",
            "2s",
            "--cut-mode",
            "mixed",
            "--stall-every",
            "3s",
            "--stall-for",
            "500ms",
            "--garbage-every",
            "7",
        ])
        .unwrap();
        let cfg = cli.args.config();
        assert_eq!(cfg.racers, 10);
        assert_eq!(cfg.rate, Some(250.0));
        assert_eq!(cfg.count, Some(99));
        assert_eq!(cfg.history, 5);
        assert_eq!(cfg.cut_every, Some(Duration::from_secs(2)));
        assert_eq!(cfg.cut_mode, CutMode::Mixed);
        assert_eq!(cfg.stall_for, Some(Duration::from_millis(500)));
        assert_eq!(cfg.garbage_every, Some(7));
        assert!(Cli::try_parse_from(["x", "--fast", "--rate", "5"]).is_err());
        assert!(Cli::try_parse_from(["x", "--stall-every", "1s"]).is_err());
        assert!(Cli::try_parse_from(["x", "--garbage-every", "1"]).is_err());
        assert!(Cli::try_parse_from(["x", "--rate", "0"]).is_err());
    }

    #[test]
    fn query_overrides_faults() {
        let cfg = SimConfig { cut_every: Some(Duration::from_secs(2)), garbage_every: Some(5), ..SimConfig::default() };
        let opts = ConnOptions::from_query(&cfg, None).unwrap();
        assert_eq!(opts.after, None);
        assert_eq!(opts.cut_after, Some(Duration::from_secs(2)));
        let opts = ConnOptions::from_query(
            &cfg,
            Some("after=42&cut_after_ms=0&cut_mode=abort&stall_every_ms=300&stall_for_ms=200&garbage_every=0&x=y"),
        )
        .unwrap();
        assert_eq!(opts.after, Some(42));
        assert_eq!(opts.cut_after, None);
        assert_eq!(opts.cut_mode, CutMode::Abort);
        assert_eq!(opts.stall_every, Some(Duration::from_millis(300)));
        assert_eq!(opts.stall_for, Duration::from_millis(200));
        assert_eq!(opts.garbage_every, None);
        assert!(ConnOptions::from_query(&cfg, Some("after=-1")).is_err());
        assert!(ConnOptions::from_query(&cfg, Some("cut_mode=explode")).is_err());
    }
}
