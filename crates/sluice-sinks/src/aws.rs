//! What the sinks' AWS SDK clients share: credentials for endpoint URLs and the configuration
//! chain for `endpoint = "aws"`.

use aws_config::{BehaviorVersion, Region, SdkConfig};
// The SDK crates re-export the same credential types.
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};

/// `AWS_ACCESS_KEY_ID` & co. if set, else placeholder keys (local endpoints such as `sluice
/// serve` or moto check only that a signature is present).
pub(crate) fn static_credentials() -> Credentials {
    match std::env::var("AWS_ACCESS_KEY_ID") {
        Ok(id) if !id.is_empty() => Credentials::new(
            id,
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
            std::env::var("AWS_SESSION_TOKEN").ok().filter(|t| !t.is_empty()),
            None,
            "environment",
        ),
        _ => Credentials::new("sluice", "sluice", None, None, "sluice-static"),
    }
}

/// The shared SDK config for `endpoint`: `"aws"` takes the default chain (`region` if given,
/// else the chain's, else `us-east-1`); a URL gets [`static_credentials`] and `region` (default
/// `us-east-1`).
pub(crate) async fn sdk_config(endpoint: &str, region: Option<String>) -> SdkConfig {
    if endpoint == "aws" {
        let region = aws_config::meta::region::RegionProviderChain::first_try(region.map(Region::new))
            .or_default_provider()
            .or_else(Region::from_static("us-east-1"));
        return aws_config::defaults(BehaviorVersion::latest()).region(region).load().await;
    }
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.unwrap_or_else(|| "us-east-1".to_owned())))
        .credentials_provider(SharedCredentialsProvider::new(static_credentials()))
        .endpoint_url(endpoint)
        .build()
}
