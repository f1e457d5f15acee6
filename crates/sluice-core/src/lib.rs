//! Core domain types and codecs of the Kinesis data model, shared by every sluice crate.
//!
//! It owns the arithmetic and the wire encodings that must be exactly right — hash keys and
//! their ranges, shard ids, sequence numbers, shard iterators, event-stream frames, KPL
//! aggregates, JSON pointers into raw messages — and
//! deliberately does no I/O.

pub mod duration;
pub mod eventstream;
pub mod hash;
pub mod iterator;
pub mod json_pointer;
pub mod kpl;
pub mod seq;
pub mod shard;
pub mod size;

pub use hash::{HashKeyRange, partition_key_hash};
pub use iterator::ShardIterator;
pub use seq::SequenceNumber;
pub use shard::ShardId;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
