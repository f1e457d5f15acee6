//! The `kinesis` source: consuming a Kinesis stream (sluice's embedded one, `sluice serve`, or
//! Amazon Kinesis) with KCL-compatible leases: lease management ([`leases`]), shard reading
//! ([`backend`], [`reader`] for GetRecords polling, [`fanout`] for enhanced fan-out, [`sdk`]) and
//! the source that joins them ([`source`]).

mod aws;
pub mod backend;
pub mod fanout;
pub mod leases;
pub mod reader;
pub mod sdk;
pub mod source;
