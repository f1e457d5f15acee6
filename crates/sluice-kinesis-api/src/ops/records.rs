//! The data plane: PutRecord, PutRecords, GetShardIterator, GetRecords.
//!
//! A put validates every entry, routes it by MD5(partition key) or ExplicitHashKey to the open
//! shard whose range holds it, admits it against the shard's limits, and hands the accepted
//! entries to the store as one group-committed append; the answer is sent only after the store
//! has made them durable. Reads decode a signed iterator, read up to 10,000 records / 10 MiB
//! from the shard's log and hand back a fresh iterator.

use std::borrow::Cow;

use bytes::Bytes;
use metrics::counter;
use sluice_core::hash::{HashKeyError, parse_hash_key};
use sluice_core::iterator::IteratorError;
use sluice_core::seq::END_ORDINAL;
use sluice_core::{SequenceNumber, ShardId, ShardIterator, partition_key_hash};
use sluice_storage::{AppendRecord, StorageError, StreamMeta, StreamStatus};

use super::{child_shards_out, children_of, find_shard, shard_id_member};
use crate::error::ApiError;
use crate::input::{Checker, Fields};
use crate::obj;
use crate::state::{AppState, Ctx, stream_name};
use crate::value::{Format, Out, write_json_blob, write_json_str, write_json_timestamp};

/// Most records one GetRecords call returns.
pub const MAX_GET_RECORDS: i64 = 10_000;
/// Most bytes one GetRecords call returns.
pub const MAX_GET_BYTES: usize = 10 * 1024 * 1024;
/// Most bytes of data + keys in one PutRecords call (5 MiB, or one maximum-size record).
pub const MAX_PUT_RECORDS_BYTES: usize = 5 * 1024 * 1024;

const ITERATOR_TYPES: [&str; 5] =
    ["AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER", "TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"];

fn is_sequence_syntax(s: &str) -> bool {
    !s.is_empty() && s.len() <= 129 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// One decoded put entry.
struct Entry<'r> {
    data: Bytes,
    key: &'r str,
    hash: Option<&'r str>,
}

/// Reads one entry, trying the common valid case without building member paths; falls back to
/// [`read_entry`] (which formats `records.N.member.` paths) only when something is wrong.
fn read_put_entry<'r>(
    f: &Fields<'r, '_>,
    check: &mut Checker,
    index: usize,
    max_record: usize,
) -> Result<Option<Entry<'r>>, ApiError> {
    if let (Some(data), Some(key)) = (f.blob("Data")?, f.str("PartitionKey")?) {
        let hash = f.str("ExplicitHashKey")?;
        if entry_ok(data.len(), key, hash, max_record) {
            return Ok(Some(Entry { data: Bytes::from(data.into_owned()), key, hash }));
        }
    }
    read_entry(f, check, &format!("records.{}.member.", index + 1), max_record)
}

/// Whether an entry passes its member constraints (the cheap test of the common case; the
/// exact messages come from [`check_entry`]).
fn entry_ok(data_len: usize, key: &str, hash: Option<&str>, max_record: usize) -> bool {
    let key_ok = !key.is_empty() && (key.len() <= 256 || key.chars().count() <= 256);
    let hash_ok = hash.is_none_or(|h| parse_hash_key(h) != Err(HashKeyError::Syntax));
    data_len <= max_record && key_ok && hash_ok
}

/// Records the member constraint violations of one entry (missing members included), in the
/// service's order; `prefix` is the member path prefix (`` or `records.3.member.`).
fn check_entry(
    check: &mut Checker,
    prefix: &str,
    data_len: Option<usize>,
    key: Option<&str>,
    hash: Option<&str>,
    max_record: usize,
) {
    let data_len = check.required(data_len, &format!("{prefix}data"));
    check.blob_size(data_len, &format!("{prefix}data"), max_record);
    let key = check.required(key, &format!("{prefix}partitionKey"));
    check.length(key, &format!("{prefix}partitionKey"), 1, 256);
    check.pattern(
        hash,
        &format!("{prefix}explicitHashKey"),
        |h| parse_hash_key(h) != Err(HashKeyError::Syntax),
        "0|([1-9]\\d{0,38})",
    );
}

/// Reads and checks one `{Data, PartitionKey, ExplicitHashKey}` entry; `prefix` is the member
/// path prefix for messages (`` or `records.3.member.`).
fn read_entry<'r>(
    f: &Fields<'r, '_>,
    check: &mut Checker,
    prefix: &str,
    max_record: usize,
) -> Result<Option<Entry<'r>>, ApiError> {
    let data = f.blob("Data")?;
    let key = f.str("PartitionKey")?;
    let hash = f.str("ExplicitHashKey")?;
    check_entry(check, prefix, data.as_ref().map(|d| d.len()), key, hash, max_record);
    Ok(match (data, key) {
        (Some(data), Some(key)) => Some(Entry { data: Bytes::from(data.into_owned()), key, hash }),
        _ => None,
    })
}

fn hash_of(e: &Entry<'_>) -> Result<u128, ApiError> {
    match e.hash {
        Some(h) => parse_hash_key(h).map_err(|_| {
            ApiError::invalid_argument(format!(
                "Invalid ExplicitHashKey. ExplicitHashKey must be in the range: [0, 2^128-1]. Specified value was {h}"
            ))
        }),
        None => Ok(partition_key_hash(e.key)),
    }
}

/// Open shards of a stream as (start, end, index), sorted by start, for routing.
fn routing_table(meta: &StreamMeta) -> Vec<(u128, u128, u32)> {
    let mut t: Vec<(u128, u128, u32)> = meta.open_shards().map(|s| (s.range.start, s.range.end, s.index)).collect();
    t.sort_unstable();
    t
}

fn route(table: &[(u128, u128, u32)], hash: u128) -> Option<u32> {
    let i = table.partition_point(|(start, _, _)| *start <= hash);
    i.checked_sub(1).map(|i| table[i]).filter(|(_, end, _)| hash <= *end).map(|(_, _, idx)| idx)
}

fn writable<'c>(
    st: &AppState,
    cat: &'c sluice_storage::Catalog,
    name: &str,
    now: u64,
) -> Result<&'c StreamMeta, ApiError> {
    let meta = st.find(cat, name, now)?;
    match st.status(meta, now) {
        StreamStatus::Active | StreamStatus::Updating => Ok(meta),
        _ => Err(st.stream_not_found(name)),
    }
}

fn max_record_bytes(st: &AppState, name: Option<&str>) -> usize {
    let cat = st.store.catalog();
    name.and_then(|n| cat.streams.get(n)).map_or(1024, |m| m.max_record_size_kib as usize) * 1024
}

fn throttled_message(st: &AppState, name: &str, shard: u32) -> String {
    format!("Rate exceeded for shard {} in stream {name} under account {}.", ShardId(shard), st.config.account_id)
}

/// Outcome of routing and admitting one entry.
enum Slot {
    /// Index into the append batch.
    Accepted(usize),
    /// Refused by the shard's throughput limit.
    Throttled(u32),
}

/// Routes, admits and appends; returns per-entry results in request order, each
/// `Ok((shard, sequence number))` or `Err(shard)` when throttled.
async fn append_entries(
    st: &AppState,
    ctx: &Ctx,
    name: &str,
    entries: &[Entry<'_>],
    hashes: &[u128],
) -> Result<Vec<Result<(u32, SequenceNumber), u32>>, ApiError> {
    // A reshard between routing and appending makes the store refuse the batch (the shard is
    // closed); route again against the new shard map. Nothing was appended in that case.
    for _attempt in 0..8 {
        let cat = st.store.catalog();
        let meta = writable(st, &cat, name, ctx.now_ms)?;
        let table = routing_table(meta);
        let mut batch = Vec::with_capacity(entries.len());
        let mut slots = Vec::with_capacity(entries.len());
        for (e, &h) in entries.iter().zip(hashes) {
            let shard = route(&table, h).ok_or_else(|| ApiError::internal("No open shard covers the hash key"))?;
            if st.limits.admit_write((meta.tag, shard), e.data.len() + e.key.len()) {
                slots.push(Slot::Accepted(batch.len()));
                batch.push(AppendRecord { shard, partition_key: e.key.to_owned(), data: e.data.clone() });
            } else {
                slots.push(Slot::Throttled(shard));
            }
        }
        let shards: Vec<u32> = batch.iter().map(|r| r.shard).collect();
        let appended = if batch.is_empty() { Ok(Vec::new()) } else { st.store.append(name, meta.tag, batch).await };
        match appended {
            Ok(done) => {
                let bytes: usize = entries.iter().map(|e| e.data.len()).sum();
                counter!("sluice_records_in_total", "stream" => name.to_owned()).increment(done.len() as u64);
                counter!("sluice_bytes_in_total", "stream" => name.to_owned()).increment(bytes as u64);
                return Ok(slots
                    .into_iter()
                    .map(|slot| match slot {
                        Slot::Accepted(i) => {
                            let a = &done[i];
                            let seq = SequenceNumber {
                                stream_tag: meta.tag,
                                shard: shards[i],
                                ordinal: a.ordinal,
                                arrival_ms: a.arrival_ms,
                            };
                            Ok((shards[i], seq))
                        }
                        Slot::Throttled(shard) => {
                            counter!("sluice_records_throttled_total", "stream" => name.to_owned()).increment(1);
                            Err(shard)
                        }
                    })
                    .collect());
            }
            Err(StorageError::ShardClosed { .. }) => continue,
            Err(StorageError::NoSuchStream) => return Err(st.stream_not_found(name)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::unavailable("The stream is being resharded; retry the request."))
}

/// PutRecord.
pub async fn put_record(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let max_record = max_record_bytes(st, name);
    let entry = read_entry(&f, &mut check, "", max_record)?;
    let ordering = f.str("SequenceNumberForOrdering")?;
    check.pattern(ordering, "sequenceNumberForOrdering", is_sequence_syntax, "0|([1-9]\\d{0,128})");
    check.finish()?;
    let (Some(name), Some(entry)) = (name, entry) else {
        return Err(ApiError::validation("1 validation error detected: missing member"));
    };
    if let Some(o) = ordering
        && o != "0"
        && SequenceNumber::parse(o).is_err()
    {
        return Err(ApiError::invalid_argument(format!(
            "ExclusiveMinimumSequenceNumber {o} used in PutRecord on stream {name} under account {} is invalid.",
            st.config.account_id
        )));
    }
    if entry.data.len() + entry.key.len() > max_record {
        return Err(ApiError::invalid_argument(format!(
            "Record size exceeds {max_record} bytes: data and partition key are {} bytes.",
            entry.data.len() + entry.key.len()
        )));
    }
    let hash = hash_of(&entry)?;
    let results = append_entries(st, ctx, name, std::slice::from_ref(&entry), &[hash]).await?;
    match results.into_iter().next() {
        Some(Ok((shard, seq))) => Ok(obj![
            ("ShardId", ShardId(shard).to_string()),
            ("SequenceNumber", seq.to_string()),
            ("EncryptionType", encryption_of(st, name)),
        ]),
        Some(Err(shard)) => Err(ApiError::throughput(throttled_message(st, name, shard))),
        None => Err(ApiError::internal("no result")),
    }
}

fn encryption_of(st: &AppState, name: &str) -> Option<&'static str> {
    st.store.catalog().streams.get(name).and_then(|m| m.encryption_key.as_ref()).map(|_| "KMS")
}

/// PutRecords.
pub async fn put_records(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let max_record = max_record_bytes(st, name);
    let list = check.required(f.list("Records")?, "records");
    check.count(list.map(<[_]>::len), "records", 1, 500);
    let mut entries = Vec::with_capacity(list.map_or(0, <[_]>::len));
    if list.is_some_and(|l| l.len() <= 500) {
        for (i, item) in list.unwrap_or_default().iter().enumerate() {
            let ef = Fields::new(item, ctx.format, "Records")?;
            if let Some(e) = read_put_entry(&ef, &mut check, i, max_record)? {
                entries.push(e);
            }
        }
    }
    check.finish()?;
    put_entries(st, ctx, name.unwrap_or_default(), &entries, max_record).await
}

/// PutRecords for JSON requests of the usual shape, read straight into typed structs that
/// borrow from the body. Returns None whenever anything is unusual (a type error, a constraint
/// violation, an unknown stream) so that the general path produces the exact error.
pub async fn put_records_fast(st: &AppState, ctx: &Ctx, body: &[u8]) -> Option<Result<Out, ApiError>> {
    #[derive(serde::Deserialize)]
    struct Request<'a> {
        #[serde(rename = "Records", borrow)]
        records: Vec<RequestEntry<'a>>,
        #[serde(rename = "StreamName", borrow, default)]
        stream_name: Option<Cow<'a, str>>,
        #[serde(rename = "StreamARN", borrow, default)]
        stream_arn: Option<Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    struct RequestEntry<'a> {
        #[serde(rename = "Data", borrow)]
        data: Cow<'a, str>,
        #[serde(rename = "PartitionKey", borrow)]
        key: Cow<'a, str>,
        #[serde(rename = "ExplicitHashKey", borrow, default)]
        hash: Option<Cow<'a, str>>,
    }
    let req: Request<'_> = serde_json::from_slice(body).ok()?;
    if req.stream_arn.is_some() || req.records.is_empty() || req.records.len() > 500 {
        return None;
    }
    let name = req.stream_name.as_deref().filter(|n| n.len() <= 128 && crate::input::is_name(n))?;
    let max_record = max_record_bytes(st, Some(name));
    let mut entries = Vec::with_capacity(req.records.len());
    for e in &req.records {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.decode(e.data.as_bytes()).ok()?;
        if !entry_ok(data.len(), &e.key, e.hash.as_deref(), max_record) {
            return None;
        }
        entries.push(Entry { data: Bytes::from(data), key: &e.key, hash: e.hash.as_deref() });
    }
    Some(put_entries(st, ctx, name, &entries, max_record).await)
}

async fn put_entries(
    st: &AppState,
    ctx: &Ctx,
    name: &str,
    entries: &[Entry<'_>],
    max_record: usize,
) -> Result<Out, ApiError> {
    let results = put_checked(st, ctx, name, entries, max_record, None).await?;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if ctx.format == Format::Json {
        return Ok(Out::RawJson(put_records_json(st, name, failed, &results)));
    }
    let records: Vec<Out> = results
        .into_iter()
        .map(|r| match r {
            Ok((shard, seq)) => obj![("SequenceNumber", seq.to_string()), ("ShardId", ShardId(shard).to_string())],
            Err(shard) => obj![
                ("ErrorCode", "ProvisionedThroughputExceededException"),
                ("ErrorMessage", throttled_message(st, name, shard)),
            ],
        })
        .collect();
    Ok(obj![
        ("FailedRecordCount", failed),
        ("Records", Out::List(records)),
        ("EncryptionType", encryption_of(st, name))
    ])
}

/// The call-wide size checks, then routing, admission and the append of entries whose own
/// constraints already passed: per entry `Ok((shard, sequence number))` or `Err(shard)` when
/// throttled.
async fn put_checked(
    st: &AppState,
    ctx: &Ctx,
    name: &str,
    entries: &[Entry<'_>],
    max_record: usize,
    known_hashes: Option<Vec<u128>>,
) -> Result<Vec<Result<(u32, SequenceNumber), u32>>, ApiError> {
    let total: usize = entries.iter().map(|e| e.data.len() + e.key.len()).sum();
    if total > MAX_PUT_RECORDS_BYTES.max(max_record) {
        return Err(ApiError::invalid_argument(format!(
            "Records size exceeds {} MB limit",
            MAX_PUT_RECORDS_BYTES.max(max_record) / (1024 * 1024)
        )));
    }
    if let Some(e) = entries.iter().find(|e| e.data.len() + e.key.len() > max_record) {
        return Err(ApiError::invalid_argument(format!(
            "Record size exceeds {max_record} bytes: data and partition key are {} bytes.",
            e.data.len() + e.key.len()
        )));
    }
    let hashes = match known_hashes {
        Some(h) => h,
        None => entries.iter().map(hash_of).collect::<Result<Vec<u128>, ApiError>>()?,
    };
    append_entries(st, ctx, name, entries, &hashes).await
}

/// One PutRecords entry given in-process (see [`crate::local`]).
#[derive(Debug, Clone)]
pub struct PutEntry<'a> {
    /// The record's data.
    pub data: Bytes,
    /// Its partition key.
    pub partition_key: &'a str,
    /// Its explicit hash key, if any.
    pub explicit_hash_key: Option<&'a str>,
    /// MD5 of the partition key as an integer, when the caller has computed it already (saves
    /// hashing twice); ignored when there is an explicit hash key.
    pub key_hash: Option<u128>,
}

/// The outcome of one in-process PutRecords entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored.
    Accepted {
        /// The shard it landed on.
        shard: ShardId,
        /// Its sequence number.
        sequence_number: SequenceNumber,
    },
    /// Refused by the shard's throughput limit (`ProvisionedThroughputExceededException`).
    Throttled {
        /// The service's message.
        message: String,
    },
}

/// PutRecords without a wire format: the same constraints (with the same
/// ValidationException texts), routing, limits and durable append as the HTTP operation.
pub async fn put_records_typed(
    st: &AppState,
    ctx: &Ctx,
    stream: &str,
    entries: &[PutEntry<'_>],
) -> Result<Vec<PutOutcome>, ApiError> {
    let mut check = Checker::new();
    check.name(Some(stream), "streamName");
    check.count(Some(entries.len()), "records", 1, 500);
    check.finish()?;
    let mut check = Checker::new();
    let max_record = max_record_bytes(st, Some(stream));
    let mut checked = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let (key, hash) = (e.partition_key, e.explicit_hash_key);
        if !entry_ok(e.data.len(), key, hash, max_record) {
            // The member paths are only formatted when something is wrong.
            check_entry(
                &mut check,
                &format!("records.{}.member.", i + 1),
                Some(e.data.len()),
                Some(key),
                hash,
                max_record,
            );
        }
        checked.push(Entry { data: e.data.clone(), key, hash });
    }
    check.finish()?;
    let mut hashes = Vec::with_capacity(checked.len());
    for (e, given) in checked.iter().zip(entries) {
        hashes.push(match (e.hash, given.key_hash) {
            (None, Some(h)) => h,
            _ => hash_of(e)?,
        });
    }
    let results = put_checked(st, ctx, stream, &checked, max_record, Some(hashes)).await?;
    Ok(results
        .into_iter()
        .map(|r| match r {
            Ok((shard, sequence_number)) => PutOutcome::Accepted { shard: ShardId(shard), sequence_number },
            Err(shard) => PutOutcome::Throttled { message: throttled_message(st, stream, shard) },
        })
        .collect())
}

/// The PutRecords answer written straight to JSON (the hot path: no intermediate tree).
fn put_records_json(
    st: &AppState,
    name: &str,
    failed: usize,
    results: &[Result<(u32, SequenceNumber), u32>],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + results.len() * 100);
    out.extend_from_slice(b"{\"FailedRecordCount\":");
    out.extend_from_slice(failed.to_string().as_bytes());
    out.extend_from_slice(b",\"Records\":[");
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match r {
            Ok((shard, seq)) => {
                out.extend_from_slice(b"{\"SequenceNumber\":\"");
                seq.write_to(&mut out);
                out.extend_from_slice(b"\",\"ShardId\":\"");
                ShardId(*shard).write_to(&mut out);
                out.extend_from_slice(b"\"}");
            }
            Err(shard) => {
                out.extend_from_slice(b"{\"ErrorCode\":\"ProvisionedThroughputExceededException\",\"ErrorMessage\":");
                write_json_str(&throttled_message(st, name, *shard), &mut out);
                out.push(b'}');
            }
        }
    }
    out.extend_from_slice(b"]");
    if encryption_of(st, name).is_some() {
        out.extend_from_slice(b",\"EncryptionType\":\"KMS\"");
    }
    out.push(b'}');
    out
}

/// GetShardIterator.
pub fn get_shard_iterator(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let shard = shard_id_member(&f, &mut check, "ShardId", true)?;
    let kind = check.required(f.str("ShardIteratorType")?, "shardIteratorType");
    check.one_of(kind, "shardIteratorType", &ITERATOR_TYPES);
    let seq = f.str("StartingSequenceNumber")?;
    check.pattern(seq, "startingSequenceNumber", is_sequence_syntax, "0|([1-9]\\d{0,128})");
    let ts = f.timestamp("Timestamp")?;
    check.finish()?;
    let (Some(name), Some(shard), Some(kind)) = (name, shard, kind) else {
        return Err(ApiError::validation("1 validation error detected: missing member"));
    };
    // AWS's order: an id that is not a shard id at all first, then an unknown stream or an
    // unknown shard, both named by the (normalized) shard.
    let Some(index) = shard.1 else {
        return Err(ApiError::not_found(format!(
            "Could not find shard {} in stream {name} under account {}.",
            shard.0, st.config.account_id
        )));
    };
    let missing = || {
        ApiError::not_found(format!(
            "Shard {} in stream {name} under account {} does not exist",
            ShardId(index),
            st.config.account_id
        ))
    };
    let cat = st.store.catalog();
    let meta = st.find(&cat, name, ctx.now_ms).map_err(|_| missing())?;
    let shard_meta = find_shard(st, meta, &shard).map_err(|_| missing())?;
    let index = shard_meta.index;
    let position = resolve_position(st, ctx, meta, index, kind, seq, ts)?;
    metrics::counter!("sluice_iterators_issued_total").increment(1);
    st.touch_iterator(meta.tag, index, ctx.now_ms);
    let token =
        ShardIterator { stream: name.to_owned(), stream_tag: meta.tag, shard: index, position, issued_ms: ctx.now_ms };
    Ok(obj![("ShardIterator", token.encode(&st.secret))])
}

/// The ordinal an iterator of `kind` starts at (shared by GetShardIterator and SubscribeToShard).
pub fn resolve_position(
    st: &AppState,
    ctx: &Ctx,
    meta: &StreamMeta,
    index: u32,
    kind: &str,
    seq: Option<&str>,
    ts: Option<i64>,
) -> Result<u64, ApiError> {
    let name = meta.name.as_str();
    let needs_seq = matches!(kind, "AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER");
    if needs_seq != seq.is_some() {
        return Err(ApiError::invalid_argument(if needs_seq {
            format!(
                "Must either specify (1) AT_SEQUENCE_NUMBER or AFTER_SEQUENCE_NUMBER and StartingSequenceNumber or (2) TRIM_HORIZON or LATEST and no StartingSequenceNumber. Request specified {kind} and no StartingSequenceNumber."
            )
        } else {
            format!(
                "Request specified {kind} and also a StartingSequenceNumber. Either specify (1) AT_SEQUENCE_NUMBER or AFTER_SEQUENCE_NUMBER and StartingSequenceNumber or (2) TRIM_HORIZON or LATEST and no StartingSequenceNumber."
            )
        }));
    }
    let pos = st.store.shard_position(name, meta.tag, index)?;
    Ok(match kind {
        "TRIM_HORIZON" => pos.first_ordinal,
        "LATEST" => pos.next_ordinal,
        "AT_TIMESTAMP" => {
            let Some(ts) = ts else {
                return Err(ApiError::invalid_argument(
                    "Must specify timestampInMillis parameter for iterator of type AT_TIMESTAMP. Current request has no timestamp parameter.",
                ));
            };
            if ts > ctx.now_ms as i64 {
                return Err(ApiError::invalid_argument(format!(
                    "The timestampInMillis parameter cannot be greater than the currentTimestampInMillis. timestampInMillis: {ts}, currentTimestampInMillis: {}",
                    ctx.now_ms
                )));
            }
            st.store.seek_timestamp(name, meta.tag, index, ts.max(0) as u64)?
        }
        _ => {
            let s = seq.unwrap_or_default();
            let parsed = SequenceNumber::parse(s).map_err(|_| {
                ApiError::invalid_argument(format!(
                    "StartingSequenceNumber {s} used in GetShardIterator on shard {} in stream {name} under account {} is invalid.",
                    ShardId(index),
                    st.config.account_id
                ))
            })?;
            if parsed.stream_tag != meta.tag {
                return Err(ApiError::invalid_argument(format!(
                    "StartingSequenceNumber {s} used in GetShardIterator on shard {} in stream {name} under account {} is invalid because it did not come from this stream.",
                    ShardId(index),
                    st.config.account_id
                )));
            }
            if parsed.shard != index {
                return Err(ApiError::invalid_argument(format!(
                    "Invalid StartingSequenceNumber. It encodes {}, while it was used in a call to a shard with {}",
                    ShardId(parsed.shard),
                    ShardId(index)
                )));
            }
            let at = if parsed.ordinal == END_ORDINAL { pos.next_ordinal } else { parsed.ordinal.max(1) };
            let at = if kind == "AFTER_SEQUENCE_NUMBER" && parsed.ordinal != 0 && parsed.ordinal != END_ORDINAL {
                at + 1
            } else {
                at
            };
            at.min(pos.next_ordinal).max(pos.first_ordinal)
        }
    })
}

fn java_date(ms: u64) -> String {
    format!("{ms} ms since the epoch")
}

/// GetRecords.
pub async fn get_records(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let token = check.required(f.str("ShardIterator")?, "shardIterator");
    check.length(token, "shardIterator", 1, 512);
    let limit = f.int("Limit")?;
    check.range(limit, "limit", 1, MAX_GET_RECORDS);
    let _arn = f.str("StreamARN")?;
    check.finish()?;
    let got = read_records(st, ctx, token.unwrap_or_default(), limit.unwrap_or(MAX_GET_RECORDS) as usize)?;
    let encrypted = got.encrypted.then_some("KMS");
    if ctx.format == Format::Json {
        let bytes: usize = got.records.iter().map(|r| r.data.len() + r.partition_key.len()).sum();
        let mut out = Vec::with_capacity(64 + bytes * 4 / 3 + got.records.len() * 140);
        out.extend_from_slice(b"{\"Records\":[");
        let mut seqs = sluice_core::seq::SequenceWriter::new(got.tag, got.shard);
        for (i, r) in got.records.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"SequenceNumber\":\"");
            seqs.write(r.ordinal, r.arrival_ms, &mut out);
            out.extend_from_slice(b"\",\"ApproximateArrivalTimestamp\":");
            write_json_timestamp(r.arrival_ms, &mut out);
            out.extend_from_slice(b",\"Data\":");
            write_json_blob(&r.data, &mut out);
            out.extend_from_slice(b",\"PartitionKey\":");
            write_json_str(&r.partition_key, &mut out);
            if encrypted.is_some() {
                out.extend_from_slice(b",\"EncryptionType\":\"KMS\"");
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]");
        if let Some(n) = &got.next_iterator {
            out.extend_from_slice(b",\"NextShardIterator\":");
            write_json_str(n, &mut out);
        }
        out.extend_from_slice(b",\"MillisBehindLatest\":");
        out.extend_from_slice(got.millis_behind.to_string().as_bytes());
        if let Some(children) = &got.child_shards {
            out.extend_from_slice(b",\"ChildShards\":");
            out.extend_from_slice(&children.encode(Format::Json));
        }
        out.push(b'}');
        return Ok(Out::RawJson(out));
    }
    let (tag, shard) = (got.tag, got.shard);
    let records: Vec<Out> = got.records.into_iter().map(|r| super::record_out(tag, shard, r, encrypted)).collect();
    Ok(obj![
        ("Records", Out::List(records)),
        ("NextShardIterator", got.next_iterator),
        ("MillisBehindLatest", got.millis_behind),
        ("ChildShards", got.child_shards.unwrap_or(Out::Null)),
    ])
}

/// What one GetRecords read found, before it is encoded (for a response, or handed on
/// in-process by [`crate::LocalApi::get_records`]).
pub struct RecordsRead {
    /// The stream's tag (part of every sequence number).
    pub tag: u32,
    /// The shard's index.
    pub shard: u32,
    /// The records, in shard order.
    pub records: Vec<sluice_storage::StoredRecord>,
    /// Where to read on; `None` at the end of a closed shard.
    pub next_iterator: Option<String>,
    /// `MillisBehindLatest`.
    pub millis_behind: i64,
    /// At the end of a closed shard: `ChildShards`.
    pub child_shards: Option<Out>,
    /// The child shard ids (with `child_shards`).
    pub child_ids: Vec<String>,
    /// Whether the stream is encrypted (records report `EncryptionType`).
    pub encrypted: bool,
    /// One past the shard's newest ordinal when it was read.
    pub tip: u64,
}

/// GetRecords after its request was validated: decodes the iterator, applies the read limits
/// and reads up to `limit` records.
pub fn read_records(st: &AppState, ctx: &Ctx, token: &str, limit: usize) -> Result<RecordsRead, ApiError> {
    let iter = match ShardIterator::decode(token, &st.secret, ctx.now_ms) {
        Ok(i) => i,
        Err(IteratorError::Invalid) => return Err(ApiError::invalid_argument("Invalid ShardIterator.")),
        Err(IteratorError::Expired) => {
            // Decode again ignoring expiry to report when it was issued.
            let issued = ShardIterator::decode(token, &st.secret, 0).map(|i| i.issued_ms).unwrap_or(0);
            return Err(ApiError::expired_iterator(format!(
                "Iterator expired. The iterator was created at time {} while right now it is {} which is further in the future than the tolerated delay of 300000 milliseconds.",
                java_date(issued),
                java_date(ctx.now_ms)
            )));
        }
    };
    let cat = st.store.catalog();
    let meta = match st.find(&cat, &iter.stream, ctx.now_ms) {
        Ok(m) if m.tag == iter.stream_tag => m,
        // AWS names the shard when the iterator's stream is gone.
        _ => {
            return Err(ApiError::not_found(format!(
                "Shard {} in stream {} under account {} does not exist",
                ShardId(iter.shard),
                iter.stream,
                st.config.account_id
            )));
        }
    };
    let Some(shard) = meta.shard(iter.shard) else {
        return Err(ApiError::not_found(format!(
            "Shard {} in stream {} under account {} does not exist",
            ShardId(iter.shard),
            meta.name,
            st.config.account_id
        )));
    };
    let key = (meta.tag, shard.index);
    st.touch_iterator(meta.tag, shard.index, ctx.now_ms);
    if !st.limits.admit_read(key) {
        counter!("sluice_reads_throttled_total", "stream" => meta.name.clone()).increment(1);
        return Err(ApiError::throughput(throttled_message(st, &meta.name, shard.index)));
    }
    let max_bytes = MAX_GET_BYTES.min(st.limits.read_budget(key));
    let mut batch = st.store.read(&meta.name, meta.tag, shard.index, iter.position, limit, max_bytes)?;
    // Whole segments are trimmed by age; records past the retention period inside a segment
    // that is still kept are never returned either (AWS never returns them).
    let cutoff = ctx.now_ms.saturating_sub(u64::from(meta.retention_hours) * 3_600_000);
    if batch.records.first().is_some_and(|r| r.arrival_ms < cutoff) {
        let from = st.store.seek_timestamp(&meta.name, meta.tag, shard.index, cutoff)?.max(iter.position);
        batch = st.store.read(&meta.name, meta.tag, shard.index, from, limit, max_bytes)?;
        batch.records.retain(|r| r.arrival_ms >= cutoff);
    }
    let bytes: usize = batch.records.iter().map(|r| r.data.len() + r.partition_key.len()).sum();
    st.limits.charge_read_bytes(key, bytes);
    counter!("sluice_records_out_total", "stream" => meta.name.clone()).increment(batch.records.len() as u64);
    counter!("sluice_bytes_out_total", "stream" => meta.name.clone()).increment(bytes as u64);
    let caught_up = batch.next_ordinal >= batch.tip.next_ordinal;
    let millis_behind =
        if caught_up { 0 } else { batch.records.last().map_or(0, |r| ctx.now_ms.saturating_sub(r.arrival_ms)) as i64 };
    let at_end = caught_up && shard.closed_ms.is_some();
    let next_iterator = (!at_end).then(|| {
        ShardIterator {
            stream: meta.name.clone(),
            stream_tag: meta.tag,
            shard: shard.index,
            position: batch.next_ordinal,
            issued_ms: ctx.now_ms,
        }
        .encode(&st.secret)
    });
    let child_ids = if at_end {
        children_of(meta, shard.index).map(|s| ShardId(s.index).to_string()).collect()
    } else {
        Vec::new()
    };
    Ok(RecordsRead {
        tag: meta.tag,
        shard: shard.index,
        records: batch.records,
        next_iterator,
        millis_behind,
        child_shards: at_end.then(|| child_shards_out(meta, shard.index)),
        child_ids,
        encrypted: meta.encryption_key.is_some(),
        tip: batch.tip.next_ordinal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_picks_the_range_holding_the_hash() {
        let table = vec![(0, 9, 0), (10, 19, 4), (20, u128::MAX, 7)];
        assert_eq!(route(&table, 0), Some(0));
        assert_eq!(route(&table, 10), Some(4));
        assert_eq!(route(&table, 19), Some(4));
        assert_eq!(route(&table, u128::MAX), Some(7));
        assert_eq!(route(&[(5, 9, 1)], 3), None);
    }

    #[test]
    fn sequence_syntax() {
        assert!(is_sequence_syntax("0"));
        assert!(is_sequence_syntax("123"));
        assert!(!is_sequence_syntax("0123"));
        assert!(!is_sequence_syntax(""));
        assert!(!is_sequence_syntax("12a"));
    }
}
