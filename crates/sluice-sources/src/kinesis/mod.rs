//! The `kinesis` source: consume a Kinesis stream with KCL-compatible leases. So far only the
//! lease management ([`leases`]); the shard readers and the source come next.

pub mod leases;
