//! KPL record aggregation: many user records in one Kinesis record.
//!
//! The Kinesis Producer Library packs user records into one Kinesis record as
//!
//! ```text
//! F3 89 9A C2 | protobuf AggregatedRecord | MD5(protobuf bytes), 16 bytes
//! ```
//!
//! with the proto2 schema of `aws/kinesis/protobuf/messages.proto`:
//!
//! ```text
//! message AggregatedRecord { repeated string partition_key_table = 1;
//!                            repeated string explicit_hash_key_table = 2;
//!                            repeated Record records = 3; }
//! message Record { required uint64 partition_key_index = 1;
//!                  optional uint64 explicit_hash_key_index = 2;
//!                  required bytes data = 3;
//!                  repeated Tag tags = 4; }
//! message Tag { required string key = 1; optional string value = 2; }
//! ```
//!
//! [`encode`] and [`Aggregator`] write exactly that (field order, proto2 `required` fields always
//! present, partition keys deduplicated in first-use order, no tags), so the output decodes with
//! the KCL, `aws-kinesis-agg` and the KPL's own tools. [`decode`] follows the KCL's
//! `AggregatorUtil`: a blob is an aggregate only if (1) it starts with the magic, (2) more than
//! 16 bytes follow the magic, (3) the MD5 of the middle equals the 16-byte trailer, and (4) the
//! middle parses as an `AggregatedRecord` (required fields present). Anything else is returned
//! unchanged as one plain record, so garbage and ordinary records pass through.
//!
//! This module does no I/O and knows nothing about shards; choosing which records share an
//! aggregate (the KPL aggregates per predicted shard) is the producer's job.

use md5::{Digest, Md5};
use prost::Message;

use crate::hash::{parse_hash_key, partition_key_hash};

/// The four bytes every aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 trailer.
pub const DIGEST_LEN: usize = 16;

/// Bytes an aggregate adds around its protobuf body: magic + MD5 trailer.
pub const FRAMING_LEN: usize = MAGIC.len() + DIGEST_LEN;

/// The KPL's default `AggregationMaxSize`: an aggregate (framing included) stays at or below it.
pub const DEFAULT_MAX_AGGREGATE_BYTES: usize = 51_200;

/// The partition key the KPL gives every aggregated Kinesis record (routing uses the
/// explicit hash key instead).
pub const AGGREGATE_PARTITION_KEY: &str = "a";

/// One user record: what a producer put and what a consumer gets back after de-aggregation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The partition key the producer gave.
    pub partition_key: String,
    /// The explicit hash key the producer gave, if any (decimal).
    pub explicit_hash_key: Option<String>,
    /// The payload.
    pub data: Vec<u8>,
}

impl UserRecord {
    /// A user record with a partition key and no explicit hash key.
    pub fn new(partition_key: impl Into<String>, data: impl Into<Vec<u8>>) -> UserRecord {
        UserRecord { partition_key: partition_key.into(), explicit_hash_key: None, data: data.into() }
    }

    /// The hash key that routes this record: the explicit hash key if it is valid, otherwise
    /// MD5 of the partition key.
    pub fn hash_key(&self) -> u128 {
        self.explicit_hash_key
            .as_deref()
            .and_then(|k| parse_hash_key(k).ok())
            .unwrap_or_else(|| partition_key_hash(&self.partition_key))
    }
}

/// Why [`decode`] refused a blob that passed all four aggregate checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KplError {
    /// A sub-record names a partition key or explicit hash key past the end of its table (the
    /// KCL fails the whole batch on this; it means the producer is broken).
    #[error("sub-record {record} refers to {table} index {index}, but the table has {len} entries")]
    BadIndex {
        /// Position of the sub-record in the aggregate.
        record: usize,
        /// `partition_key_table` or `explicit_hash_key_table`.
        table: &'static str,
        /// The index it names.
        index: u64,
        /// The table's length.
        len: usize,
    },
}

/// The protobuf messages, mirroring `messages.proto`.
///
/// Tables are read as `bytes` (protobuf-java does not check UTF-8 in proto2 strings) and the
/// proto2 `required` fields are `Option`s so that a missing one is detected, as protobuf-java
/// does; both choices leave the encoding byte-identical to generated code.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AggregatedRecord {
        #[prost(bytes = "vec", repeated, tag = "1")]
        pub partition_key_table: Vec<Vec<u8>>,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub explicit_hash_key_table: Vec<Vec<u8>>,
        #[prost(message, repeated, tag = "3")]
        pub records: Vec<Record>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Record {
        #[prost(uint64, optional, tag = "1")]
        pub partition_key_index: Option<u64>,
        #[prost(uint64, optional, tag = "2")]
        pub explicit_hash_key_index: Option<u64>,
        #[prost(bytes = "vec", optional, tag = "3")]
        pub data: Option<Vec<u8>>,
        #[prost(message, repeated, tag = "4")]
        pub tags: Vec<Tag>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tag {
        #[prost(bytes = "vec", optional, tag = "1")]
        pub key: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub value: Option<Vec<u8>>,
    }

    impl AggregatedRecord {
        /// Whether every proto2 `required` field is present (protobuf-java refuses to parse
        /// otherwise).
        pub fn is_initialized(&self) -> bool {
            self.records
                .iter()
                .all(|r| r.partition_key_index.is_some() && r.data.is_some() && r.tags.iter().all(|t| t.key.is_some()))
        }
    }
}

/// Encodes user records as one aggregated blob (magic + protobuf + MD5), whatever their number.
///
/// Producers send a single record unaggregated instead (see [`Aggregator::finish`]); this
/// function always writes the aggregate form.
pub fn encode(records: &[UserRecord]) -> Vec<u8> {
    let mut agg = Aggregator::new(usize::MAX);
    for r in records {
        agg.push(r.clone());
    }
    agg.encode_aggregate()
}

/// Whether `data` is a KPL aggregate by the KCL's four checks.
pub fn is_aggregated(data: &[u8]) -> bool {
    parse(data).is_some()
}

/// De-aggregates one Kinesis record whose partition key is `partition_key`.
///
/// An aggregate yields its sub-records in order; anything that fails one of the four checks is
/// returned unchanged as a single record with the outer partition key.
pub fn decode(data: &[u8], partition_key: &str) -> Result<Vec<UserRecord>, KplError> {
    let Some(agg) = parse(data) else {
        return Ok(vec![UserRecord::new(partition_key, data)]);
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut out = Vec::with_capacity(agg.records.len());
    for (i, r) in agg.records.into_iter().enumerate() {
        let pk_index = r.partition_key_index.unwrap_or_default();
        let pk = usize::try_from(pk_index).ok().and_then(|ix| agg.partition_key_table.get(ix)).ok_or(
            KplError::BadIndex {
                record: i,
                table: "partition_key_table",
                index: pk_index,
                len: agg.partition_key_table.len(),
            },
        )?;
        let ehk = match r.explicit_hash_key_index {
            None => None,
            Some(ix) => Some(text(usize::try_from(ix).ok().and_then(|i| agg.explicit_hash_key_table.get(i)).ok_or(
                KplError::BadIndex {
                    record: i,
                    table: "explicit_hash_key_table",
                    index: ix,
                    len: agg.explicit_hash_key_table.len(),
                },
            )?)),
        };
        out.push(UserRecord { partition_key: text(pk), explicit_hash_key: ehk, data: r.data.unwrap_or_default() });
    }
    Ok(out)
}

/// The four checks; the parsed message if all pass.
fn parse(data: &[u8]) -> Option<proto::AggregatedRecord> {
    let rest = data.strip_prefix(&MAGIC[..])?;
    if rest.len() <= DIGEST_LEN {
        return None;
    }
    let (body, digest) = rest.split_at(rest.len() - DIGEST_LEN);
    if Md5::digest(body).as_slice() != digest {
        return None;
    }
    let agg = proto::AggregatedRecord::decode(body).ok()?;
    agg.is_initialized().then_some(agg)
}

/// What a finished container is sent as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisRecord {
    /// `"a"` for an aggregate, the user record's key for a single record.
    pub partition_key: String,
    /// The first user record's hash key (decimal) for an aggregate; the user record's own
    /// explicit hash key for a single record.
    pub explicit_hash_key: Option<String>,
    /// The blob to put.
    pub data: Vec<u8>,
}

/// Builds one aggregate incrementally, tracking its exact encoded size so a producer can stop
/// before `max_bytes` (framing included).
#[derive(Debug, Clone)]
pub struct Aggregator {
    max_bytes: usize,
    msg: proto::AggregatedRecord,
    pk_index: std::collections::HashMap<String, u64>,
    ehk_index: std::collections::HashMap<String, u64>,
    first_hash: Option<u128>,
    body_len: usize,
}

fn varint_len(v: u64) -> usize {
    prost::encoding::encoded_len_varint(v)
}

/// Bytes of a length-delimited field with a one-byte tag.
fn delimited_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

impl Aggregator {
    /// An empty aggregate that will hold at most `max_bytes` (magic and MD5 included).
    pub fn new(max_bytes: usize) -> Aggregator {
        Aggregator {
            max_bytes,
            msg: proto::AggregatedRecord::default(),
            pk_index: Default::default(),
            ehk_index: Default::default(),
            first_hash: None,
            body_len: 0,
        }
    }

    /// Number of user records so far.
    pub fn len(&self) -> usize {
        self.msg.records.len()
    }

    /// Whether no record has been added.
    pub fn is_empty(&self) -> bool {
        self.msg.records.is_empty()
    }

    /// The exact size of the aggregate blob so far (magic + protobuf + MD5).
    pub fn size(&self) -> usize {
        FRAMING_LEN + self.body_len
    }

    /// The blob's exact size if `record` were added.
    pub fn size_with(&self, record: &UserRecord) -> usize {
        self.size() + self.growth(record)
    }

    /// Whether `record` fits under the size limit. An empty aggregate accepts anything, so a
    /// record never waits forever.
    pub fn fits(&self, record: &UserRecord) -> bool {
        self.is_empty() || self.size_with(record) <= self.max_bytes
    }

    /// [`Aggregator::fits`] for a record given by its parts, without building a
    /// [`UserRecord`] (no copy of the key or the data just to ask).
    pub fn fits_parts(&self, partition_key: &str, explicit_hash_key: Option<&str>, data_len: usize) -> bool {
        self.is_empty() || self.size() + self.growth_parts(partition_key, explicit_hash_key, data_len) <= self.max_bytes
    }

    fn growth(&self, record: &UserRecord) -> usize {
        self.growth_parts(&record.partition_key, record.explicit_hash_key.as_deref(), record.data.len())
    }

    fn growth_parts(&self, partition_key: &str, explicit_hash_key: Option<&str>, data_len: usize) -> usize {
        let mut grow = 0;
        let pk_ix = match self.pk_index.get(partition_key) {
            Some(&ix) => ix,
            None => {
                grow += delimited_len(partition_key.len());
                self.pk_index.len() as u64
            }
        };
        let mut inner = 1 + varint_len(pk_ix) + delimited_len(data_len);
        if let Some(ehk) = explicit_hash_key {
            let ix = match self.ehk_index.get(ehk) {
                Some(&ix) => ix,
                None => {
                    grow += delimited_len(ehk.len());
                    self.ehk_index.len() as u64
                }
            };
            inner += 1 + varint_len(ix);
        }
        grow + delimited_len(inner)
    }

    /// Adds a record if it fits; gives it back otherwise.
    pub fn try_push(&mut self, record: UserRecord) -> Result<(), UserRecord> {
        if !self.fits(&record) {
            return Err(record);
        }
        self.push(record);
        Ok(())
    }

    /// Adds a record regardless of the size limit.
    pub fn push(&mut self, record: UserRecord) {
        self.body_len += self.growth(&record);
        if self.first_hash.is_none() {
            self.first_hash = Some(record.hash_key());
        }
        let next_pk = self.pk_index.len() as u64;
        let pk_ix = *self.pk_index.entry(record.partition_key.clone()).or_insert_with(|| {
            self.msg.partition_key_table.push(record.partition_key.clone().into_bytes());
            next_pk
        });
        let ehk_ix = record.explicit_hash_key.as_ref().map(|ehk| {
            let next = self.ehk_index.len() as u64;
            *self.ehk_index.entry(ehk.clone()).or_insert_with(|| {
                self.msg.explicit_hash_key_table.push(ehk.clone().into_bytes());
                next
            })
        });
        self.msg.records.push(proto::Record {
            partition_key_index: Some(pk_ix),
            explicit_hash_key_index: ehk_ix,
            data: Some(record.data),
            tags: Vec::new(),
        });
    }

    /// The aggregate blob (magic + protobuf + MD5), even for zero or one record.
    pub fn encode_aggregate(&self) -> Vec<u8> {
        // Encoded straight after the magic, in a buffer of the exact final size (no copy of the
        // body); the MD5 is of the body in place.
        let body_len = self.msg.encoded_len();
        let mut out = Vec::with_capacity(FRAMING_LEN + body_len);
        out.extend_from_slice(&MAGIC);
        if self.msg.encode(&mut out).is_err() {
            // Not reachable (a Vec grows as needed), but never worth a panic.
            out.truncate(MAGIC.len());
            out.extend_from_slice(&self.msg.encode_to_vec());
        }
        let digest = Md5::digest(&out[MAGIC.len()..]);
        out.extend_from_slice(&digest);
        out
    }

    /// Finishes the container the way the KPL sends it: `None` if empty; a single record
    /// unaggregated (its own key, data and explicit hash key); several as an aggregate with
    /// partition key `"a"` and the first record's hash key as explicit hash key.
    pub fn finish(mut self) -> Option<KinesisRecord> {
        match self.msg.records.len() {
            0 => None,
            1 => {
                let r = self.msg.records.pop()?;
                let pk = self.msg.partition_key_table.pop()?;
                let ehk = self.msg.explicit_hash_key_table.pop();
                Some(KinesisRecord {
                    partition_key: String::from_utf8_lossy(&pk).into_owned(),
                    explicit_hash_key: ehk.map(|e| String::from_utf8_lossy(&e).into_owned()),
                    data: r.data.unwrap_or_default(),
                })
            }
            _ => Some(KinesisRecord {
                partition_key: AGGREGATE_PARTITION_KEY.to_owned(),
                explicit_hash_key: self.first_hash.map(|h| h.to_string()),
                data: self.encode_aggregate(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(pk: &str, data: &[u8]) -> UserRecord {
        UserRecord::new(pk, data)
    }

    #[test]
    fn encodes_the_documented_layout() {
        let blob = encode(&[rec("k1", b"hello"), rec("k2", b"world"), rec("k1", b"!")]);
        assert_eq!(&blob[..4], &MAGIC);
        let body = &blob[4..blob.len() - 16];
        assert_eq!(&blob[blob.len() - 16..], Md5::digest(body).as_slice());
        // Hand-assembled protobuf: table "k1","k2", then three Record messages.
        let expected: Vec<u8> = [
            &[0x0a, 2][..],
            b"k1",
            &[0x0a, 2],
            b"k2",
            &[0x1a, 9, 0x08, 0, 0x1a, 5],
            b"hello",
            &[0x1a, 9, 0x08, 1, 0x1a, 5],
            b"world",
            &[0x1a, 5, 0x08, 0, 0x1a, 1],
            b"!",
        ]
        .concat();
        assert_eq!(body, &expected[..]);
    }

    #[test]
    fn required_fields_are_written_even_when_zero_or_empty() {
        let blob = encode(&[rec("k", b""), rec("k", b"")]);
        let body = &blob[4..blob.len() - 16];
        assert_eq!(body, &[0x0a, 1, b'k', 0x1a, 4, 0x08, 0, 0x1a, 0, 0x1a, 4, 0x08, 0, 0x1a, 0][..]);
        let back = decode(&blob, "a").expect("decode");
        assert_eq!(back, vec![rec("k", b""), rec("k", b"")]);
    }

    #[test]
    fn decode_round_trips_with_explicit_hash_keys() {
        let mut r2 = rec("k2", b"two");
        r2.explicit_hash_key = Some("12345".into());
        let input = vec![rec("k1", b"one"), r2, rec("k1", b"three")];
        let blob = encode(&input);
        assert!(is_aggregated(&blob));
        assert_eq!(decode(&blob, "a").expect("decode"), input);
    }

    #[test]
    fn garbage_and_plain_records_pass_through() {
        for data in [&b""[..], b"plain json {}", &MAGIC[..], &[0xF3, 0x89, 0x9A, 0xC2, 1, 2, 3]] {
            assert_eq!(decode(data, "pk").expect("decode"), vec![rec("pk", data)]);
            assert!(!is_aggregated(data));
        }
    }

    #[test]
    fn a_bad_digest_passes_through() {
        let mut blob = encode(&[rec("k", b"x"), rec("k", b"y")]);
        let last = blob.len() - 1;
        blob[last] ^= 1;
        assert_eq!(decode(&blob, "pk").expect("decode"), vec![rec("pk", &blob)]);
    }

    #[test]
    fn exactly_sixteen_bytes_after_the_magic_pass_through() {
        // Check 2: more than 16 bytes must follow the magic. An empty protobuf body is exactly
        // the digest of nothing, which the KCL treats as plain data.
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&Md5::digest(b""));
        assert!(!is_aggregated(&blob));
    }

    #[test]
    fn a_missing_required_field_passes_through() {
        // A Record without data (field 3): protobuf-java refuses it, so it is not an aggregate.
        let body = [0x0a, 1, b'k', 0x1a, 2, 0x08, 0];
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&body);
        blob.extend_from_slice(&Md5::digest(body));
        assert!(!is_aggregated(&blob));
        assert_eq!(decode(&blob, "pk").expect("decode"), vec![rec("pk", &blob)]);
    }

    #[test]
    fn a_bad_index_is_an_error() {
        let body = [0x0a, 1, b'k', 0x1a, 4, 0x08, 3, 0x1a, 0];
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&body);
        blob.extend_from_slice(&Md5::digest(body));
        assert!(matches!(decode(&blob, "pk"), Err(KplError::BadIndex { index: 3, .. })));
    }

    #[test]
    fn single_record_containers_are_sent_unaggregated() {
        let mut agg = Aggregator::new(DEFAULT_MAX_AGGREGATE_BYTES);
        agg.push(rec("racer-7", b"{\"lap\":1}"));
        let kr = agg.finish().expect("one record");
        assert_eq!(
            kr,
            KinesisRecord { partition_key: "racer-7".into(), explicit_hash_key: None, data: b"{\"lap\":1}".to_vec() }
        );
        assert!(Aggregator::new(100).finish().is_none());
    }

    #[test]
    fn aggregates_use_key_a_and_the_first_records_hash() {
        let mut agg = Aggregator::new(DEFAULT_MAX_AGGREGATE_BYTES);
        agg.push(rec("first", b"1"));
        agg.push(rec("second", b"2"));
        let kr = agg.finish().expect("aggregate");
        assert_eq!(kr.partition_key, "a");
        assert_eq!(kr.explicit_hash_key, Some(partition_key_hash("first").to_string()));
        assert_eq!(decode(&kr.data, "a").expect("decode"), vec![rec("first", b"1"), rec("second", b"2")]);
    }

    #[test]
    fn the_size_limit_is_respected_exactly() {
        let mut agg = Aggregator::new(1000);
        let mut n = 0;
        while agg.try_push(rec(&format!("key-{}", n % 7), &[b'x'; 37])).is_ok() {
            n += 1;
            assert_eq!(agg.size(), agg.encode_aggregate().len());
        }
        assert!(agg.size() <= 1000);
        assert!(n > 10);
    }

    #[test]
    fn fits_parts_agrees_with_fits() {
        let mut agg = Aggregator::new(700);
        for n in 0..200usize {
            let mut r = rec(&format!("k{}", n % 5), &vec![b'y'; n % 90]);
            if n % 3 == 0 {
                r.explicit_hash_key = Some(format!("{}", n % 4));
            }
            let parts = agg.fits_parts(&r.partition_key, r.explicit_hash_key.as_deref(), r.data.len());
            assert_eq!(parts, agg.fits(&r), "record {n}");
            if agg.try_push(r).is_err() {
                agg = Aggregator::new(700);
            }
        }
    }

    proptest! {
        #[test]
        fn round_trip(records in prop::collection::vec(
            ("[a-z0-9]{1,12}", prop::option::of("[1-9][0-9]{0,20}"), prop::collection::vec(any::<u8>(), 0..200)),
            0..40,
        )) {
            let input: Vec<UserRecord> = records
                .into_iter()
                .map(|(pk, ehk, data)| UserRecord { partition_key: pk, explicit_hash_key: ehk, data })
                .collect();
            let mut agg = Aggregator::new(usize::MAX);
            for r in &input {
                let predicted = agg.size_with(r);
                agg.push(r.clone());
                prop_assert_eq!(agg.size(), predicted);
            }
            let blob = agg.encode_aggregate();
            prop_assert_eq!(blob.len(), agg.size());
            prop_assert_eq!(&blob, &encode(&input));
            if input.is_empty() {
                // An empty aggregate is exactly 20 bytes and fails check 2: plain data.
                prop_assert_eq!(decode(&blob, "pk").expect("decode"), vec![UserRecord::new("pk", blob.clone())]);
            } else {
                prop_assert_eq!(decode(&blob, "a").expect("decode"), input.clone());
            }
            match agg.finish() {
                None => prop_assert!(input.is_empty()),
                Some(kr) if input.len() == 1 => {
                    prop_assert_eq!(kr.partition_key, input[0].partition_key.clone());
                    prop_assert_eq!(kr.data, input[0].data.clone());
                }
                Some(kr) => {
                    prop_assert_eq!(kr.explicit_hash_key, Some(input[0].hash_key().to_string()));
                    prop_assert_eq!(decode(&kr.data, &kr.partition_key).expect("decode"), input);
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_usually_pass_through(data in prop::collection::vec(any::<u8>(), 0..300)) {
            let out = decode(&data, "pk");
            if !is_aggregated(&data) {
                prop_assert_eq!(out.expect("plain"), vec![UserRecord::new("pk", data.clone())]);
            }
        }

        #[test]
        fn magic_prefixed_garbage_passes_through(tail in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut data = MAGIC.to_vec();
            data.extend_from_slice(&tail);
            // Without a matching MD5 trailer it is never an aggregate.
            prop_assert_eq!(decode(&data, "pk").expect("plain"), vec![UserRecord::new("pk", data.clone())]);
        }
    }
}
