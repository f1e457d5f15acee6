//! The `kinesis` source: consuming a Kinesis stream (sluice's embedded one, `sluice serve`, or
//! Amazon Kinesis) with KCL-compatible leases. So far the parts: lease management
//! ([`leases`]) and shard reading ([`backend`], [`reader`], [`sdk`]); the source that joins
//! them comes next.

pub mod backend;
pub mod leases;
pub mod reader;
pub mod sdk;
