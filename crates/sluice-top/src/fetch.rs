//! Reading `/metrics` over HTTP.

use std::time::{Duration, Instant};

use reqwest::Url;

use crate::TopError;
use crate::model::Scrape;

/// Turns `HOST:PORT` or a URL into the metrics URL: `http://` is assumed when no scheme is
/// given and `/metrics` when the URL has no path.
pub fn metrics_url(target: &str) -> Result<Url, TopError> {
    let target = target.trim();
    let invalid = |reason: String| TopError::Target { target: target.to_owned(), reason };
    let with_scheme = if target.contains("://") { target.to_owned() } else { format!("http://{target}") };
    let mut url = Url::parse(&with_scheme).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!("scheme {:?} is not http or https", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".to_owned()));
    }
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/metrics");
    }
    Ok(url)
}

/// Scrapes one target.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    url: Url,
}

impl Fetcher {
    /// A fetcher for `target` (see [`metrics_url`]) whose requests give up after `timeout`.
    pub fn new(target: &str, timeout: Duration) -> Result<Fetcher, TopError> {
        let url = metrics_url(target)?;
        // The ops port is local or on a private network; a proxy from the environment
        // would only get in the way.
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|e| TopError::Target { target: target.to_owned(), reason: e.to_string() })?;
        Ok(Fetcher { client, url })
    }

    /// The metrics URL.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Reads and parses the page once.
    pub async fn scrape(&self) -> Result<Scrape, TopError> {
        let unreachable = |reason: String| TopError::Unreachable { url: self.url.to_string(), reason };
        let response = self.client.get(self.url.clone()).send().await.map_err(|e| unreachable(describe(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(unreachable(format!("HTTP {status}")));
        }
        let text = response.text().await.map_err(|e| unreachable(describe(&e)))?;
        Ok(Scrape::parse(&text, Instant::now()))
    }
}

/// The most specific cause (e.g. "Connection refused (os error 111)"): reqwest's own message
/// only repeats the URL.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_become_metrics_urls() {
        let url = |t: &str| metrics_url(t).map(|u| u.to_string()).map_err(|e| e.to_string());
        assert_eq!(url("127.0.0.1:9598").unwrap(), "http://127.0.0.1:9598/metrics");
        assert_eq!(url("http://127.0.0.1:4567").unwrap(), "http://127.0.0.1:4567/metrics");
        assert_eq!(url("http://127.0.0.1:4567/").unwrap(), "http://127.0.0.1:4567/metrics");
        assert_eq!(url("localhost:1/custom/path").unwrap(), "http://localhost:1/custom/path");
        assert_eq!(url("https://ops.example:8443/metrics").unwrap(), "https://ops.example:8443/metrics");
        assert_eq!(url("[::1]:4567").unwrap(), "http://[::1]:4567/metrics");
        assert!(url("ftp://host/x").unwrap_err().contains("not http"));
        assert!(url("http://").is_err());
        assert!(url("").is_err());
    }

    #[tokio::test]
    async fn unreachable_target_is_an_error_naming_the_url() {
        // Bind then drop: the port is free and nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let fetcher = Fetcher::new(&format!("127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        let err = fetcher.scrape().await.unwrap_err().to_string();
        assert!(err.starts_with(&format!("cannot reach http://127.0.0.1:{port}/metrics: ")), "{err}");
    }
}
