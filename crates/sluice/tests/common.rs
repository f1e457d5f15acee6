//! Starts the real `sluice serve` binary on a free loopback port in a temp dir.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server process; killed on drop.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
}

impl ServerProcess {
    /// Starts `sluice serve` on `dir` with extra flags, waiting for its "listening" line.
    pub fn start(dir: &Path, extra: &[&str]) -> ServerProcess {
        Self::start_with_env(dir, extra, &[])
    }

    /// As [`ServerProcess::start`], with extra environment variables.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(extra)
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("sluice: listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(u) = rx.recv_timeout(Duration::from_millis(100)) {
                break u;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("sluice exited early: {status}");
            }
            assert!(Instant::now() < deadline, "sluice did not start in time");
        };
        ServerProcess { child, url, dir: dir.to_path_buf() }
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An AWS SDK for Rust Kinesis client pointed at the server.
pub async fn sdk_client(url: &str) -> aws_sdk_kinesis::Client {
    sdk_client_with(url, "AKIDTEST", "secret")
}

/// An SDK client with the given access key and secret.
pub fn sdk_client_with(url: &str, akid: &str, secret: &str) -> aws_sdk_kinesis::Client {
    let creds = aws_sdk_kinesis::config::Credentials::new(akid, secret, None, None, "test");
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(url)
        .build();
    aws_sdk_kinesis::Client::from_conf(conf)
}
