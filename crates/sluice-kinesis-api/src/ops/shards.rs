//! Shard-level operations: ListShards, SplitShard, MergeShards, UpdateShardCount.
//!
//! Resharding closes parent shards (they keep their records until retention expires them) and
//! creates children with the next free indices, with `ParentShardId` / `AdjacentParentShardId`
//! lineage that consumers follow to read parents before children.

use sluice_core::hash::parse_hash_key;
use sluice_core::{HashKeyRange, ShardId};
use sluice_storage::{ShardMeta, StreamMeta, StreamMode, StreamStatus};

use super::{find_shard, shard_id_member, shard_out, shard_visible};
use crate::error::ApiError;
use crate::input::{Checker, Fields};
use crate::obj;
use crate::ops::streams::open_shard_total;
use crate::state::{AppState, Ctx, stream_name};
use crate::token;
use crate::value::Out;

const FILTER_TYPES: [&str; 6] =
    ["AFTER_SHARD_ID", "AT_TRIM_HORIZON", "FROM_TRIM_HORIZON", "AT_LATEST", "AT_TIMESTAMP", "FROM_TIMESTAMP"];

/// A ShardFilter, carried inside ListShards tokens.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    kind: String,
    shard: Option<u32>,
    ts: Option<i64>,
}

fn filter_matches(meta: &StreamMeta, s: &ShardMeta, f: &Filter, now: u64) -> bool {
    match f.kind.as_str() {
        "AFTER_SHARD_ID" => f.shard.is_none_or(|a| s.index > a),
        "AT_LATEST" => s.is_open(),
        "AT_TRIM_HORIZON" => {
            // The roots of what is still readable: shards none of whose parents are still listed.
            s.parent
                .into_iter()
                .chain(s.adjacent_parent)
                .all(|p| meta.shard(p).is_none_or(|ps| !shard_visible(meta, ps, now)))
        }
        "AT_TIMESTAMP" => {
            let t = f.ts.unwrap_or(0).max(0) as u64;
            let t = t.max(meta.created_ms);
            s.created_ms <= t && s.closed_ms.is_none_or(|c| c > t)
        }
        "FROM_TIMESTAMP" => {
            let t = f.ts.unwrap_or(0).max(0) as u64;
            s.closed_ms.is_none_or(|c| c >= t)
        }
        _ => true,
    }
}

/// ListShards.
pub fn list_shards(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let next = f.str("NextToken")?;
    check.length(next, "nextToken", 1, 1_048_576);
    let max = f.int("MaxResults")?;
    check.range(max, "maxResults", 1, 10_000);
    let start = f.str("ExclusiveStartShardId")?;
    check.name(start, "exclusiveStartShardId");
    let created = f.timestamp("StreamCreationTimestamp")?;
    let filter = match f.structure("ShardFilter")? {
        Some(sf) => {
            let kind = check.required(sf.str("Type")?, "shardFilter.type");
            check.one_of(kind, "shardFilter.type", &FILTER_TYPES);
            let shard = sf.str("ShardId")?;
            check.name(shard, "shardFilter.shardId");
            let ts = sf.timestamp("Timestamp")?;
            Some((kind.unwrap_or_default().to_owned(), shard, ts))
        }
        None => None,
    };
    if next.is_some() {
        if f.has("StreamName") || f.has("StreamARN") {
            return Err(ApiError::invalid_argument("NextToken and StreamName cannot be provided together."));
        }
        if created.is_some() {
            return Err(ApiError::invalid_argument(
                "NextToken and StreamCreationTimestamp cannot be provided together.",
            ));
        }
        std::mem::take(&mut check).finish()?;
    }
    let max = max.unwrap_or(1000).min(1000) as usize;
    let cat = st.store.catalog();
    let (name, after, filter) = match next {
        Some(t) => {
            let payload = token::verify(&st.secret, "shards", t, ctx.now_ms).map_err(|e| match e {
                token::TokenError::Expired => ApiError::expired_next_token("The NextToken has expired."),
                token::TokenError::Invalid => ApiError::invalid_argument("Invalid NextToken."),
            })?;
            let parts: Vec<&str> = payload.split('\n').collect();
            let [name, tag, after, kind, shard, ts] = parts[..] else {
                return Err(ApiError::invalid_argument("Invalid NextToken."));
            };
            let meta = st.find(&cat, name, ctx.now_ms)?;
            if tag != meta.tag.to_string() {
                return Err(ApiError::not_found(format!(
                    "Stream {name} was deleted and re-created; the NextToken is stale."
                )));
            }
            let filter = Filter { kind: kind.to_owned(), shard: shard.parse().ok(), ts: ts.parse().ok() };
            (name.to_owned(), after.parse::<u32>().ok(), filter)
        }
        None => {
            let name = stream_name(&f, &mut check)?;
            check.finish()?;
            let filter = match filter {
                Some((kind, shard, ts)) => {
                    if kind == "AFTER_SHARD_ID" && shard.is_none() {
                        return Err(ApiError::invalid_argument(
                            "ShardId must be provided for the AFTER_SHARD_ID ShardFilter type.",
                        ));
                    }
                    if (kind == "AT_TIMESTAMP" || kind == "FROM_TIMESTAMP") && ts.is_none() {
                        return Err(ApiError::invalid_argument(format!(
                            "Timestamp must be provided for the {kind} ShardFilter type."
                        )));
                    }
                    Filter { kind, shard: shard.and_then(ShardId::parse).map(|s| s.0), ts }
                }
                None => Filter { kind: "FROM_TRIM_HORIZON".into(), shard: None, ts: None },
            };
            (name.unwrap_or_default().to_owned(), start.and_then(ShardId::parse).map(|s| s.0), filter)
        }
    };
    let meta = st.find(&cat, &name, ctx.now_ms)?;
    let matching: Vec<&ShardMeta> = meta
        .shards
        .iter()
        .filter(|s| shard_visible(meta, s, ctx.now_ms))
        .filter(|s| after.is_none_or(|a| s.index > a))
        .filter(|s| filter_matches(meta, s, &filter, ctx.now_ms))
        .collect();
    let page = &matching[..matching.len().min(max)];
    let token = (matching.len() > max && !page.is_empty()).then(|| {
        let last = page[page.len() - 1].index;
        let payload = format!(
            "{name}\n{}\n{last}\n{}\n{}\n{}",
            meta.tag,
            filter.kind,
            filter.shard.map(|s| s.to_string()).unwrap_or_default(),
            filter.ts.map(|t| t.to_string()).unwrap_or_default()
        );
        token::sign(&st.secret, "shards", &payload, ctx.now_ms)
    });
    Ok(obj![("Shards", Out::List(page.iter().map(|s| shard_out(meta, s)).collect())), ("NextToken", token)])
}

fn require_active(st: &AppState, meta: &StreamMeta, now: u64) -> Result<(), ApiError> {
    let status = st.status(meta, now);
    if status != StreamStatus::Active {
        return Err(ApiError::in_use(format!(
            "Stream {} under account {} not ACTIVE, instead in state {}",
            meta.name,
            st.config.account_id,
            status.as_str()
        )));
    }
    Ok(())
}

fn not_eligible(st: &AppState, meta: &StreamMeta, shard: u32) -> ApiError {
    ApiError::in_use(format!(
        "Shard {} in stream {} under account {} has already been merged or split, and thus is not eligible for merging or splitting.",
        ShardId(shard),
        meta.name,
        st.config.account_id
    ))
}

fn new_shard(meta: &mut StreamMeta, range: HashKeyRange, parent: Option<u32>, adjacent: Option<u32>, now: u64) -> u32 {
    let index = meta.next_shard_index;
    meta.next_shard_index += 1;
    meta.shards.push(ShardMeta { index, parent, adjacent_parent: adjacent, range, created_ms: now, closed_ms: None });
    index
}

fn close(meta: &mut StreamMeta, index: u32, now: u64) {
    if let Some(s) = meta.shards.iter_mut().find(|s| s.index == index) {
        s.closed_ms = Some(now);
    }
}

fn mark_updating(st: &AppState, meta: &mut StreamMeta, now: u64) {
    meta.status = StreamStatus::Updating;
    meta.status_until_ms = now + st.config.transition_ms;
}

fn check_quota(st: &AppState, ctx: &Ctx, cat: &sluice_storage::Catalog, extra: usize) -> Result<(), ApiError> {
    let current = open_shard_total(cat);
    if current + extra > st.config.shard_limit as usize {
        return Err(crate::ops::streams::shard_limit_error(st, ctx, current, extra));
    }
    Ok(())
}

/// SplitShard.
pub fn split_shard(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let shard = shard_id_member(&f, &mut check, "ShardToSplit", true)?;
    let key = check.required(f.str("NewStartingHashKey")?, "newStartingHashKey");
    check.pattern(
        key,
        "newStartingHashKey",
        |k| !matches!(parse_hash_key(k), Err(sluice_core::hash::HashKeyError::Syntax)),
        "0|([1-9]\\d{0,38})",
    );
    check.finish()?;
    let (Some(name), Some(shard), Some(key_str)) = (name, shard, key) else {
        return Err(ApiError::validation("1 validation error detected: missing member"));
    };
    let name = name.to_owned();
    let now = ctx.now_ms;
    st.store.mutate_catalog(|cat| {
        check_quota(st, ctx, cat, 1)?;
        let meta = st.find(cat, &name, now)?;
        require_active(st, meta, now)?;
        let parent = find_shard(st, meta, &shard)?.clone();
        if !parent.is_open() {
            return Err(not_eligible(st, meta, parent.index));
        }
        let bad_key = || {
            ApiError::invalid_argument(format!(
                "NewStartingHashKey {key_str} used in SplitShard() on shard {} in stream {name} under account {} is not both greater than one plus the shard's StartingHashKey {} and less than the shard's EndingHashKey {}.",
                ShardId(parent.index), st.config.account_id, parent.range.start, parent.range.end
            ))
        };
        let key = parse_hash_key(key_str).map_err(|_| bad_key())?;
        let (low, high) = parent.range.split_at(key).ok_or_else(bad_key)?;
        let Some(meta) = cat.streams.get_mut(&name) else { return Err(st.stream_not_found(&name)) };
        close(meta, parent.index, now);
        new_shard(meta, low, Some(parent.index), None, now);
        new_shard(meta, high, Some(parent.index), None, now);
        mark_updating(st, meta, now);
        Ok(())
    })?;
    Ok(Out::Null)
}

/// MergeShards.
pub fn merge_shards(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let first = shard_id_member(&f, &mut check, "ShardToMerge", true)?;
    let second = shard_id_member(&f, &mut check, "AdjacentShardToMerge", true)?;
    check.finish()?;
    let (Some(name), Some(first), Some(second)) = (name, first, second) else {
        return Err(ApiError::validation("1 validation error detected: missing member"));
    };
    let name = name.to_owned();
    let now = ctx.now_ms;
    st.store.mutate_catalog(|cat| {
        let meta = st.find(cat, &name, now)?;
        let a = find_shard(st, meta, &first)?.clone();
        let b = find_shard(st, meta, &second)?.clone();
        // AWS's order: the pair must be adjacent in this order (ShardToMerge's range ends right
        // before AdjacentShardToMerge's), then the stream must be ACTIVE.
        let adjacent = a.index != b.index && a.range.end.checked_add(1) == Some(b.range.start);
        if !adjacent {
            return Err(ApiError::invalid_argument(format!(
                "Shards {} and {} in stream {name} under account {} are not an adjacent pair of shards eligible for merging",
                ShardId(a.index),
                ShardId(b.index),
                st.config.account_id
            )));
        }
        require_active(st, meta, now)?;
        for s in [&a, &b] {
            if !s.is_open() {
                return Err(not_eligible(st, meta, s.index));
            }
        }
        let merged = HashKeyRange { start: a.range.start, end: b.range.end };
        let Some(meta) = cat.streams.get_mut(&name) else { return Err(st.stream_not_found(&name)) };
        close(meta, a.index, now);
        close(meta, b.index, now);
        new_shard(meta, merged, Some(a.index), Some(b.index), now);
        mark_updating(st, meta, now);
        Ok(())
    })?;
    Ok(Out::Null)
}

/// Reshapes the open shards into `target` uniform ranges the way the service does: first split
/// every open shard at each new boundary inside it (one boundary per split, so a shard crossed by
/// several boundaries yields short-lived intermediate shards), then merge the pieces of each new
/// range pairwise. Every shard keeps at most two parents; ranges already right are left alone.
fn reshape(meta: &mut StreamMeta, target: u32, now: u64) {
    let wanted = HashKeyRange::uniform(target);
    let mut open: Vec<ShardMeta> = meta.open_shards().cloned().collect();
    open.sort_by_key(|s| s.range.start);
    // Phase 1: splits. `pieces` ends as shards each inside exactly one wanted range.
    let mut pieces: Vec<(u32, HashKeyRange)> = Vec::new();
    for shard in open {
        let mut current = (shard.index, shard.range);
        for w in &wanted {
            let boundary = w.start;
            if boundary > current.1.start && boundary <= current.1.end {
                let low = HashKeyRange { start: current.1.start, end: boundary - 1 };
                let high = HashKeyRange { start: boundary, end: current.1.end };
                close(meta, current.0, now);
                let l = new_shard(meta, low, Some(current.0), None, now);
                let h = new_shard(meta, high, Some(current.0), None, now);
                pieces.push((l, low));
                current = (h, high);
            }
        }
        pieces.push(current);
    }
    // Phase 2: merges within each wanted range, left to right.
    for w in &wanted {
        let mut group = pieces.iter().filter(|(_, r)| w.contains(r.start)).copied();
        let Some(mut acc) = group.next() else { continue };
        for next in group {
            close(meta, acc.0, now);
            close(meta, next.0, now);
            let range = HashKeyRange { start: acc.1.start, end: next.1.end };
            let child = new_shard(meta, range, Some(acc.0), Some(next.0), now);
            acc = (child, range);
        }
    }
    // Intermediate shards that were created and closed within this call hold no records.
}

/// UpdateShardCount.
pub fn update_shard_count(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let target = check.required(f.int("TargetShardCount")?, "targetShardCount");
    check.range(target, "targetShardCount", 1, 100_000);
    let scaling = check.required(f.str("ScalingType")?, "scalingType");
    check.one_of(scaling, "scalingType", &["UNIFORM_SCALING"]);
    check.finish()?;
    let name = name.unwrap_or_default().to_owned();
    let target = target.unwrap_or(1) as u32;
    let now = ctx.now_ms;
    let current = st.store.mutate_catalog(|cat| {
        let meta = st.find(cat, &name, now)?;
        if meta.mode == StreamMode::OnDemand {
            return Err(ApiError::validation(format!(
                "UpdateShardCount is not supported for stream {name} under account {} because it is in ON_DEMAND mode.",
                st.config.account_id
            )));
        }
        require_active(st, meta, now)?;
        let current = meta.open_shards().count() as u32;
        if target > current * 2 {
            return Err(ApiError::limit_exceeded(format!(
                "UpdateShardCount cannot scale up over double your current open shard count. Current open shard count: {current} Target shard count: {target}"
            )));
        }
        if target * 2 < current {
            return Err(ApiError::limit_exceeded(format!(
                "UpdateShardCount cannot scale down below half your current open shard count. Current open shard count: {current} Target shard count: {target}"
            )));
        }
        let recent = meta.scaling_history_ms.iter().filter(|t| now.saturating_sub(**t) < 86_400_000).count();
        if recent >= 10 {
            return Err(ApiError::limit_exceeded(format!(
                "Stream {name} under account {} has reached the limit of 10 UpdateShardCount calls in the last 24 hours.",
                st.config.account_id
            )));
        }
        check_quota(st, ctx, cat, target.saturating_sub(current) as usize)?;
        let Some(meta) = cat.streams.get_mut(&name) else { return Err(st.stream_not_found(&name)) };
        reshape(meta, target, now);
        meta.scaling_history_ms.retain(|t| now.saturating_sub(*t) < 86_400_000);
        meta.scaling_history_ms.push(now);
        mark_updating(st, meta, now);
        Ok(current)
    })?;
    Ok(obj![
        ("StreamName", name.as_str()),
        ("CurrentShardCount", current),
        ("TargetShardCount", target),
        ("StreamARN", st.stream_arn(ctx, &name)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: u32) -> StreamMeta {
        StreamMeta::new("s".into(), 1, 0, HashKeyRange::uniform(n))
    }

    #[test]
    fn reshape_reaches_uniform_target_with_at_most_two_parents() {
        for (from, to) in [(1, 2), (2, 4), (4, 2), (3, 5), (5, 3), (7, 13), (13, 7), (4, 4), (1, 1), (6, 12)] {
            let mut m = stream(from);
            reshape(&mut m, to, 10);
            let mut open: Vec<HashKeyRange> = m.open_shards().map(|s| s.range).collect();
            open.sort_by_key(|r| r.start);
            assert_eq!(open, HashKeyRange::uniform(to), "{from}->{to}");
            for s in &m.shards {
                if let Some(p) = s.parent {
                    assert!(m.shard(p).is_some_and(|p| !p.is_open()));
                }
            }
        }
    }

    #[test]
    fn doubling_is_pure_splits() {
        let mut m = stream(2);
        reshape(&mut m, 4, 10);
        assert_eq!(m.shards.len(), 6);
        assert!(m.shards.iter().all(|s| s.adjacent_parent.is_none()));
    }
}
