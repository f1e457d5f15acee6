//! A DynamoDB-API-compatible table store, sized for lease tables (the KCL's, sluice's own).
//!
//! [`store`] is the durable engine (per-table checksummed log + snapshot, replayed into an
//! ordered map), [`expr`] parses and evaluates condition / update / projection expressions,
//! [`ops`] answers the operations (`Db::handle`) with DynamoDB's error names and texts. The HTTP
//! front door lives in `sluice-kinesis-api`, which routes `DynamoDB_20120810.*` targets here.

pub mod error;
pub mod expr;
pub mod number;
pub mod ops;
pub mod store;
pub mod value;

pub use error::DynamoError;
pub use ops::{Ctx, KNOWN_OPS};
pub use store::{Db, DbConfig, OpenError};

/// The `X-Amz-Target` prefix of DynamoDB requests.
pub const TARGET_PREFIX: &str = "DynamoDB_20120810.";

/// The content type DynamoDB answers with.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.0";
