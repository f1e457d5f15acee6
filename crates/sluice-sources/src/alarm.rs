//! Source alarms: `silence` (no event forwarded for `alarm.silence`), `no_connection` (no
//! live connection for `alarm.no_connection`) and `cursor_stuck` (always on: connections keep
//! ending on unusable messages without the cursor moving, see the supervisor).
//!
//! Each alarm, on raise and on clear: sets its gauge (`sluice_source_silent`,
//! `sluice_source_no_connection`, `sluice_source_cursor_stuck`), logs (a warning when raised), updates the source's alarm
//! board (which the pipeline's `/health` reads, answering 503 while any alarm is up), and runs
//! `alarm.command` if configured. The supervisor checks them on its tick.

use std::time::Duration;

use metrics::Gauge;
use sluice_flow::Alarms;
use tokio::time::Instant;

use crate::config::AlarmPlan;

/// How long `alarm.command` may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One alarm's state.
struct Watch {
    name: &'static str,
    after: Duration,
    gauge: Gauge,
    raised: bool,
}

/// The alarms of one source.
pub(crate) struct AlarmWatch {
    source: String,
    board: Alarms,
    /// `alarm.command` runs, in order, one at a time.
    command: Option<tokio::sync::mpsc::UnboundedSender<Run>>,
    silence: Option<Watch>,
    no_connection: Option<Watch>,
    cursor_stuck: Watch,
    /// Since when no connection has been live (`None`: one is).
    disconnected_since: Option<Instant>,
}

impl AlarmWatch {
    pub(crate) fn new(source: &str, plan: &AlarmPlan, board: Alarms) -> AlarmWatch {
        let watch = |name: &'static str, after: Option<Duration>, metric: &'static str| {
            let gauge = metrics::gauge!(metric, "source" => source.to_owned());
            gauge.set(0.0);
            after.map(|after| Watch { name, after, gauge, raised: false })
        };
        metrics::describe_gauge!("sluice_source_silent", "1 while the source's silence alarm is up.");
        metrics::describe_gauge!("sluice_source_no_connection", "1 while the source's no-connection alarm is up.");
        metrics::describe_gauge!(
            "sluice_source_cursor_stuck",
            "1 while connections keep ending on unusable messages without the cursor moving."
        );
        let command = plan.command.clone().map(|argv| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Run>();
            let source = source.to_owned();
            tokio::spawn(async move {
                while let Some(run) = rx.recv().await {
                    run_command(&source, &argv, run).await;
                }
            });
            tx
        });
        AlarmWatch {
            source: source.to_owned(),
            board,
            command,
            silence: watch("silence", plan.silence, "sluice_source_silent"),
            no_connection: watch("no_connection", plan.no_connection, "sluice_source_no_connection"),
            cursor_stuck: {
                let gauge = metrics::gauge!("sluice_source_cursor_stuck", "source" => source.to_owned());
                gauge.set(0.0);
                Watch { name: "cursor_stuck", after: Duration::ZERO, gauge, raised: false }
            },
            disconnected_since: Some(Instant::now()),
        }
    }

    /// The number of live connections changed.
    pub(crate) fn connections(&mut self, live: usize) {
        match (live, self.disconnected_since) {
            (0, None) => self.disconnected_since = Some(Instant::now()),
            (n, Some(_)) if n > 0 => self.disconnected_since = None,
            _ => {}
        }
    }

    /// Raises or clears each alarm; `silent_for` is the time since the last forwarded event.
    pub(crate) fn check(&mut self, silent_for: Duration) {
        let (source, board, command) = (&self.source, &self.board, &self.command);
        if let Some(w) = self.silence.as_mut() {
            let detail = format!("no event for {:.1}s (alarm.silence = {:?})", silent_for.as_secs_f64(), w.after);
            update(source, board, command, w, silent_for >= w.after, detail);
        }
        if let Some(w) = self.no_connection.as_mut() {
            let down = self.disconnected_since.map(|t| t.elapsed()).unwrap_or_default();
            let detail =
                format!("no live connection for {:.1}s (alarm.no_connection = {:?})", down.as_secs_f64(), w.after);
            update(source, board, command, w, self.disconnected_since.is_some() && down >= w.after, detail);
        }
    }

    /// Raises or clears `cursor_stuck`.
    pub(crate) fn cursor_stuck(&mut self, up: bool, detail: String) {
        update(&self.source, &self.board, &self.command, &mut self.cursor_stuck, up, detail);
    }

    /// Clears every alarm at shutdown (a stopped source is not silent), without the command.
    pub(crate) fn stop(&mut self) {
        let stuck = Some(&mut self.cursor_stuck);
        for w in [self.silence.as_mut(), self.no_connection.as_mut(), stuck].into_iter().flatten() {
            w.gauge.set(0.0);
            self.board.clear(w.name);
        }
    }
}

/// One run of `alarm.command`.
pub(crate) struct Run {
    alarm: &'static str,
    state: &'static str,
    detail: String,
}

fn update(
    source: &str,
    board: &Alarms,
    command: &Option<tokio::sync::mpsc::UnboundedSender<Run>>,
    w: &mut Watch,
    up: bool,
    detail: String,
) {
    if up == w.raised {
        return;
    }
    w.raised = up;
    w.gauge.set(if up { 1.0 } else { 0.0 });
    let state = if up { "raised" } else { "cleared" };
    if up {
        board.raise(w.name, detail.clone());
        tracing::warn!(source, alarm = w.name, detail = %detail, "alarm raised");
    } else {
        board.clear(w.name);
        tracing::info!(source, alarm = w.name, "alarm cleared");
    }
    if let Some(tx) = command {
        let _ = tx.send(Run { alarm: w.name, state, detail });
    }
}

/// Runs `alarm.command` once and waits for it (at most 30 s); a failure is logged, never fatal.
async fn run_command(source: &str, argv: &[String], run: Run) {
    let Some((program, args)) = argv.split_first() else { return };
    let Run { alarm, state, detail } = run;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("SLUICE_SOURCE", source)
        .env("SLUICE_ALARM", alarm)
        .env("SLUICE_ALARM_STATE", state)
        .env("SLUICE_ALARM_DETAIL", &detail)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(source, alarm, state, error = %e, "alarm.command could not start");
            return;
        }
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => tracing::warn!(source, alarm, state, %status, "alarm.command failed"),
        Ok(Err(e)) => tracing::warn!(source, alarm, state, error = %e, "alarm.command failed"),
        Err(_) => {
            tracing::warn!(source, alarm, state, "alarm.command ran over 30s; killed");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn alarms_raise_and_clear_on_the_board_and_run_the_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("alarms.log");
        let plan = AlarmPlan {
            silence: Some(Duration::from_millis(100)),
            no_connection: Some(Duration::from_secs(3600)),
            command: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo \"$SLUICE_SOURCE $SLUICE_ALARM $SLUICE_ALARM_STATE\" >> {}", log.display()),
            ]),
        };
        let board = Alarms::default();
        let mut w = AlarmWatch::new("feed", &plan, board.clone());
        w.check(Duration::from_millis(50));
        assert!(board.snapshot().is_empty());
        w.check(Duration::from_millis(150));
        assert!(board.is_raised("silence"));
        assert!(!board.is_raised("no_connection"), "not down long enough");
        w.connections(1);
        w.check(Duration::ZERO);
        assert!(board.snapshot().is_empty());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() >= 2 {
                assert_eq!(text, "feed silence raised\nfeed silence cleared\n");
                break;
            }
            assert!(Instant::now() < deadline, "the command did not run twice: {text:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
