//! Feeds arbitrary bytes to every decoder that request input reaches: JSON and CBOR bodies
//! (and member extraction over them), shard iterators, sequence numbers, event-stream frames.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run request_decoders` from this folder.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_kinesis_api::input::Fields;
use sluice_kinesis_api::value::{Format, decode};

fuzz_target!(|data: &[u8]| {
    for format in [Format::Json, Format::Cbor] {
        if let Ok(v) = decode(format, data)
            && let Ok(f) = Fields::new(&v, format, "request")
        {
            let _ = f.str("StreamName");
            let _ = f.blob("Data");
            let _ = f.timestamp("Timestamp");
            let _ = f.int("Limit");
            if let Ok(Some(list)) = f.list("Records") {
                for item in list {
                    if let Ok(e) = Fields::new(item, format, "Records") {
                        let _ = e.blob("Data");
                        let _ = e.str("PartitionKey");
                    }
                }
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = sluice_core::ShardIterator::decode(s, b"key", 0);
        let _ = sluice_core::SequenceNumber::parse(s);
        let _ = sluice_core::hash::parse_hash_key(s);
    }
    let _ = sluice_core::eventstream::decode_frame(data);
});
