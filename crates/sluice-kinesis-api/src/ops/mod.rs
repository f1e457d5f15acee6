//! The operations, one function each: decode members, call the store, build the answer.

pub mod consumers;
pub mod records;
pub mod shards;
pub mod streams;

use sluice_core::seq::END_ORDINAL;
use sluice_core::{SequenceNumber, ShardId};
use sluice_storage::{ShardMeta, StreamMeta};

use crate::error::ApiError;
use crate::input::{Checker, Fields};
use crate::obj;
use crate::state::{AppState, Ctx};
use crate::value::Out;

/// The sequence number at which a shard starts.
pub fn starting_sequence(meta: &StreamMeta, shard: &ShardMeta) -> SequenceNumber {
    SequenceNumber { stream_tag: meta.tag, shard: shard.index, ordinal: 0, arrival_ms: shard.created_ms }
}

/// The sequence number at which a closed shard ends: above every record it holds.
pub fn ending_sequence(meta: &StreamMeta, shard: &ShardMeta) -> Option<SequenceNumber> {
    shard.closed_ms.map(|t| SequenceNumber {
        stream_tag: meta.tag,
        shard: shard.index,
        ordinal: END_ORDINAL,
        arrival_ms: t,
    })
}

/// The `Record` structure of GetRecords and SubscribeToShard events.
pub fn record_out(
    stream_tag: u32,
    shard: u32,
    r: sluice_storage::StoredRecord,
    encryption: Option<&'static str>,
) -> Out {
    let seq = SequenceNumber { stream_tag, shard, ordinal: r.ordinal, arrival_ms: r.arrival_ms };
    obj![
        ("SequenceNumber", seq.to_string()),
        ("ApproximateArrivalTimestamp", Out::Timestamp(r.arrival_ms)),
        ("Data", Out::Bytes(r.data)),
        ("PartitionKey", r.partition_key),
        ("EncryptionType", encryption),
    ]
}

/// Whether a shard is still listed: open, or closed less than the retention period ago.
pub fn shard_visible(meta: &StreamMeta, shard: &ShardMeta, now_ms: u64) -> bool {
    shard.closed_ms.is_none_or(|t| t + u64::from(meta.retention_hours) * 3_600_000 > now_ms)
}

/// `HashKeyRange` structure.
pub fn range_out(shard: &ShardMeta) -> Out {
    obj![("StartingHashKey", shard.range.start.to_string()), ("EndingHashKey", shard.range.end.to_string())]
}

/// The `Shard` structure of DescribeStream / ListShards.
pub fn shard_out(meta: &StreamMeta, shard: &ShardMeta) -> Out {
    obj![
        ("ShardId", ShardId(shard.index).to_string()),
        ("ParentShardId", shard.parent.map(|p| ShardId(p).to_string())),
        ("AdjacentParentShardId", shard.adjacent_parent.map(|p| ShardId(p).to_string())),
        ("HashKeyRange", range_out(shard)),
        (
            "SequenceNumberRange",
            obj![
                ("StartingSequenceNumber", starting_sequence(meta, shard).to_string()),
                ("EndingSequenceNumber", ending_sequence(meta, shard).map(|s| s.to_string())),
            ]
        ),
    ]
}

/// The shards split or merged from `parent`.
pub fn children_of(meta: &StreamMeta, parent: u32) -> impl Iterator<Item = &sluice_storage::ShardMeta> {
    meta.shards.iter().filter(move |s| s.parent == Some(parent) || s.adjacent_parent == Some(parent))
}

/// The `ChildShards` of a closed shard.
pub fn child_shards_out(meta: &StreamMeta, parent: u32) -> Out {
    let children: Vec<Out> = children_of(meta, parent)
        .map(|s| {
            let parents: Vec<String> =
                s.parent.into_iter().chain(s.adjacent_parent).map(|p| ShardId(p).to_string()).collect();
            obj![("ShardId", ShardId(s.index).to_string()), ("ParentShards", parents), ("HashKeyRange", range_out(s))]
        })
        .collect();
    Out::List(children)
}

/// Reads a shard id member: pattern-checked, then parsed leniently (`shardId-7`, `7`).
pub fn shard_id_member(
    f: &Fields<'_, '_>,
    check: &mut Checker,
    name: &str,
    required: bool,
) -> Result<Option<(String, Option<u32>)>, ApiError> {
    let path = crate::input::lower_camel(name);
    let s = f.str(name)?;
    if required {
        check.required(s, &path);
    }
    check.name(s, &path);
    Ok(s.map(|s| (s.to_owned(), ShardId::parse(s).map(|i| i.0))))
}

/// Looks a shard up; unknown or unparsable ids are ResourceNotFound in AWS's wording.
pub fn find_shard<'m>(
    st: &AppState,
    meta: &'m StreamMeta,
    id: &(String, Option<u32>),
) -> Result<&'m ShardMeta, ApiError> {
    id.1.and_then(|i| meta.shard(i)).ok_or_else(|| {
        // A parsable id is named normalized (`5` and `shardId-5` are `shardId-000000000005`).
        let shown = id.1.map_or_else(|| id.0.clone(), |i| ShardId(i).to_string());
        ApiError::not_found(format!(
            "Could not find shard {shown} in stream {} under account {}.",
            meta.name, st.config.account_id
        ))
    })
}

/// Dispatches a non-streaming operation by name.
pub async fn dispatch(st: &AppState, ctx: &Ctx, op: &str, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    match op {
        "CreateStream" => streams::create_stream(st, ctx, f),
        "DeleteStream" => streams::delete_stream(st, ctx, f),
        "DescribeStream" => streams::describe_stream(st, ctx, f),
        "DescribeStreamSummary" => streams::describe_stream_summary(st, ctx, f),
        "ListStreams" => streams::list_streams(st, ctx, f),
        "IncreaseStreamRetentionPeriod" => streams::change_retention(st, ctx, f, true),
        "DecreaseStreamRetentionPeriod" => streams::change_retention(st, ctx, f, false),
        "AddTagsToStream" => streams::add_tags(st, ctx, f),
        "ListTagsForStream" => streams::list_tags(st, ctx, f),
        "RemoveTagsFromStream" => streams::remove_tags(st, ctx, f),
        "EnableEnhancedMonitoring" => streams::enhanced_monitoring(st, ctx, f, true),
        "DisableEnhancedMonitoring" => streams::enhanced_monitoring(st, ctx, f, false),
        "StartStreamEncryption" => streams::encryption(st, ctx, f, true),
        "StopStreamEncryption" => streams::encryption(st, ctx, f, false),
        "DescribeLimits" => streams::describe_limits(st, ctx),
        "UpdateStreamMode" => streams::update_stream_mode(st, ctx, f),
        "ListShards" => shards::list_shards(st, ctx, f),
        "SplitShard" => shards::split_shard(st, ctx, f),
        "MergeShards" => shards::merge_shards(st, ctx, f),
        "UpdateShardCount" => shards::update_shard_count(st, ctx, f),
        "PutRecord" => records::put_record(st, ctx, f).await,
        "PutRecords" => records::put_records(st, ctx, f).await,
        "GetShardIterator" => records::get_shard_iterator(st, ctx, f),
        "GetRecords" => records::get_records(st, ctx, f).await,
        "RegisterStreamConsumer" => consumers::register(st, ctx, f),
        "DescribeStreamConsumer" => consumers::describe(st, ctx, f),
        "ListStreamConsumers" => consumers::list(st, ctx, f),
        "DeregisterStreamConsumer" => consumers::deregister(st, ctx, f),
        _ => Err(ApiError::unknown_operation(format!("Unknown operation: {op}"))),
    }
}
