//! What the Kinesis and DynamoDB clients of this source share: credentials for endpoint URLs
//! and the configuration chain for `"aws"`.

// The SDK crates re-export the same credential and region types.
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};

/// `AWS_ACCESS_KEY_ID` & co. if set, else placeholder keys (local endpoints such as `sluice
/// serve` or moto check only that a signature is present).
pub(crate) fn env_or_placeholder_credentials() -> Credentials {
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

/// The SDK's default chain for `endpoint = "aws"`: `region` if given, else the chain's, else
/// `us-east-1`.
pub(crate) async fn aws_chain(region: Option<String>) -> aws_config::SdkConfig {
    let region = aws_config::meta::region::RegionProviderChain::first_try(region.map(Region::new))
        .or_default_provider()
        .or_else(Region::from_static("us-east-1"));
    aws_config::defaults(BehaviorVersion::latest()).region(region).load().await
}
