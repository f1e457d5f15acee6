//! Stream-level operations: create, delete, describe, list, retention, tags, monitoring,
//! encryption, mode.

use std::collections::BTreeMap;

use sluice_core::HashKeyRange;
use sluice_storage::{Catalog, ShardMeta, StreamMeta, StreamMode, StreamStatus};

use super::{shard_out, shard_visible};
use crate::error::ApiError;
use crate::input::{Checker, Fields, show_str};
use crate::obj;
use crate::state::{AppState, Ctx, stream_name};
use crate::token;
use crate::value::Out;

/// Retention bounds, hours.
pub const MIN_RETENTION_HOURS: i64 = 24;
/// Retention bounds, hours.
pub const MAX_RETENTION_HOURS: i64 = 8760;

fn mode_str(m: StreamMode) -> &'static str {
    match m {
        StreamMode::Provisioned => "PROVISIONED",
        StreamMode::OnDemand => "ON_DEMAND",
    }
}

/// Open shards across every stream (the account quota counts these).
pub fn open_shard_total(catalog: &Catalog) -> usize {
    catalog.streams.values().map(|s| s.open_shards().count()).sum()
}

/// LimitExceededException for going over the account's shard quota.
pub fn shard_limit_error(st: &AppState, ctx: &Ctx, current: usize, extra: usize) -> ApiError {
    ApiError::limit_exceeded(format!(
        "This request would exceed the shard limit for the account {} in {}. Current shard count for the account: {current}. \
         Limit: {}. Number of additional shards that would have resulted from this request: {extra}.",
        st.config.account_id, ctx.region, st.config.shard_limit
    ))
}

/// Checks the Tags map of CreateStream / AddTagsToStream.
fn check_tags(check: &mut Checker, tags: &[(&str, &str)], path: &str) {
    if tags.is_empty() || tags.len() > 50 {
        check.fail(
            "'{...}'",
            path,
            format!(
                "have length {} 50",
                if tags.is_empty() {
                    "greater than or equal to 1, and less than or equal to"
                } else {
                    "less than or equal to"
                }
            ),
        );
    }
    for (k, v) in tags {
        check.length(Some(k), &format!("{path}.key"), 1, 128);
        check.length(Some(v), &format!("{path}.value"), 0, 256);
    }
}

/// Whether a tag key or value holds only what AWS accepts in tags: letters (as AWS's checker
/// sees them: U+00C0–U+1FFF and U+2C00–U+D7FF beside ASCII), digits, white space (a plain
/// space) and `_ . / = + - % @ :`.
fn tag_chars_ok(s: &str) -> bool {
    s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(c, '_' | '.' | '/' | '=' | '+' | '-' | ' ' | '@' | '%' | ':')
            || ('\u{C0}'..='\u{1FFF}').contains(&c)
            || ('\u{2C00}'..='\u{D7FF}').contains(&c)
    })
}

/// The character checks AWS makes on tags once the stream is found (`verb`: "add tags to" or
/// "remove tags from"): any character outside [`tag_chars_ok`] first, then any `%`.
fn check_tag_chars<'s>(
    texts: impl Iterator<Item = &'s str> + Clone,
    verb: &str,
    name: &str,
    account: &str,
) -> Result<(), ApiError> {
    if texts.clone().any(|t| !tag_chars_ok(t)) {
        return Err(ApiError::invalid_argument(
            "Some tags contain invalid characters. Valid characters: Unicode letters, digits, white space, _ . / = + - % @ :.",
        ));
    }
    if texts.clone().any(|t| t.contains('%')) {
        return Err(ApiError::invalid_argument(format!(
            "Failed to {verb} stream {name} under account {account} because some tags contained illegal characters. The allowed characters are Unicode letters, white-spaces, '_',',','/','=','+','-','@',':'."
        )));
    }
    Ok(())
}

/// CreateStream.
pub fn create_stream(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = check.required(f.str("StreamName")?, "streamName");
    check.name(name, "streamName");
    let shard_count = f.int("ShardCount")?;
    check.range(shard_count, "shardCount", 1, 100_000);
    let mode = match f.structure("StreamModeDetails")? {
        Some(m) => {
            let v = check.required(m.str("StreamMode")?, "streamModeDetails.streamMode");
            check.one_of(v, "streamModeDetails.streamMode", &["PROVISIONED", "ON_DEMAND"]);
            v
        }
        None => None,
    };
    let max_kib = f.int("MaxRecordSizeInKiB")?;
    check.range(max_kib, "maxRecordSizeInKiB", 1024, 10240);
    let tags = f.string_map("Tags")?;
    if let Some(t) = &tags {
        check_tags(&mut check, t, "tags");
    }
    check.finish()?;
    let name = name.unwrap_or_default().to_owned();
    let mode = match (mode, shard_count) {
        (Some("ON_DEMAND"), _) | (None, None) => StreamMode::OnDemand,
        (_, Some(_)) => StreamMode::Provisioned,
        (_, None) => return Err(ApiError::invalid_argument("ShardCount is required for a PROVISIONED stream.")),
    };
    let shards = shard_count.unwrap_or(4) as u32;
    let now = ctx.now_ms;
    st.store.mutate_catalog(|cat| {
        if cat.streams.contains_key(&name) {
            return Err(ApiError::in_use(format!(
                "Stream {name} under account {} already exists.",
                st.config.account_id
            )));
        }
        let current = open_shard_total(cat);
        if current + shards as usize > st.config.shard_limit as usize {
            return Err(shard_limit_error(st, ctx, current, shards as usize));
        }
        let mut meta = StreamMeta::new(name.clone(), rand::random(), now, HashKeyRange::uniform(shards));
        meta.status = StreamStatus::Creating;
        meta.status_until_ms = now + st.config.transition_ms;
        meta.mode = mode;
        meta.tags = tags.unwrap_or_default().into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        meta.max_record_size_kib = max_kib.unwrap_or(1024) as u32;
        cat.streams.insert(name.clone(), meta);
        Ok(())
    })?;
    tracing::info!(stream = %name, shards, "stream created");
    Ok(Out::Null)
}

/// DeleteStream.
pub fn delete_stream(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let enforce = f.bool("EnforceConsumerDeletion")?.unwrap_or(false);
    check.finish()?;
    let name = name.unwrap_or_default().to_owned();
    let now = ctx.now_ms;
    st.store.mutate_catalog(|cat| {
        let meta = st.find(cat, &name, now)?;
        if !meta.consumers.is_empty() && !enforce {
            return Err(ApiError::in_use(format!(
                "Stream {name} under account {} has registered consumers. Deregister them or set EnforceConsumerDeletion.",
                st.config.account_id
            )));
        }
        if st.config.transition_ms == 0 {
            cat.streams.remove(&name);
        } else if let Some(m) = cat.streams.get_mut(&name) {
            m.status = StreamStatus::Deleting;
            m.status_until_ms = now + st.config.transition_ms;
        }
        Ok(())
    })?;
    tracing::info!(stream = %name, "stream deleted");
    Ok(Out::Null)
}

fn monitoring_out(meta: &StreamMeta) -> Out {
    Out::List(vec![obj![("ShardLevelMetrics", meta.shard_level_metrics.clone())]])
}

fn encryption_type(meta: &StreamMeta) -> &'static str {
    if meta.encryption_key.is_some() { "KMS" } else { "NONE" }
}

/// DescribeStream.
pub fn describe_stream(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let limit = f.int("Limit")?;
    check.range(limit, "limit", 1, 10_000);
    let start = f.str("ExclusiveStartShardId")?;
    check.name(start, "exclusiveStartShardId");
    check.finish()?;
    let cat = st.store.catalog();
    let meta = st.find(&cat, name.unwrap_or_default(), ctx.now_ms)?;
    let after = start.and_then(sluice_core::ShardId::parse).map(|s| s.0);
    let limit = limit.unwrap_or(100) as usize;
    let candidates: Vec<&ShardMeta> = meta
        .shards
        .iter()
        .filter(|s| shard_visible(meta, s, ctx.now_ms))
        .filter(|s| after.is_none_or(|a| s.index > a))
        .collect();
    let shards: Vec<Out> = candidates.iter().take(limit).map(|s| shard_out(meta, s)).collect();
    Ok(obj![(
        "StreamDescription",
        obj![
            ("StreamName", meta.name.as_str()),
            ("StreamARN", st.stream_arn(ctx, &meta.name)),
            ("StreamStatus", st.status(meta, ctx.now_ms).as_str()),
            ("StreamModeDetails", obj![("StreamMode", mode_str(meta.mode))]),
            ("Shards", Out::List(shards)),
            ("HasMoreShards", candidates.len() > limit),
            ("RetentionPeriodHours", meta.retention_hours),
            ("StreamCreationTimestamp", Out::Timestamp(meta.created_ms)),
            ("EnhancedMonitoring", monitoring_out(meta)),
            ("EncryptionType", encryption_type(meta)),
            ("KeyId", meta.encryption_key.clone()),
        ]
    )])
}

/// DescribeStreamSummary.
pub fn describe_stream_summary(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    check.finish()?;
    let cat = st.store.catalog();
    let meta = st.find(&cat, name.unwrap_or_default(), ctx.now_ms)?;
    Ok(obj![(
        "StreamDescriptionSummary",
        obj![
            ("StreamName", meta.name.as_str()),
            ("StreamARN", st.stream_arn(ctx, &meta.name)),
            ("StreamStatus", st.status(meta, ctx.now_ms).as_str()),
            ("StreamModeDetails", obj![("StreamMode", mode_str(meta.mode))]),
            ("RetentionPeriodHours", meta.retention_hours),
            ("StreamCreationTimestamp", Out::Timestamp(meta.created_ms)),
            ("EnhancedMonitoring", monitoring_out(meta)),
            ("EncryptionType", encryption_type(meta)),
            ("KeyId", meta.encryption_key.clone()),
            ("OpenShardCount", meta.open_shards().count()),
            ("ConsumerCount", meta.consumers.len()),
            ("MaxRecordSizeInKiB", meta.max_record_size_kib),
        ]
    )])
}

/// ListStreams.
pub fn list_streams(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let limit = f.int("Limit")?;
    check.range(limit, "limit", 1, 10_000);
    let start = f.str("ExclusiveStartStreamName")?;
    check.name(start, "exclusiveStartStreamName");
    let next = f.str("NextToken")?;
    check.length(next, "nextToken", 1, 1_048_576);
    check.finish()?;
    let after: Option<String> = match next {
        Some(t) => Some(token::verify(&st.secret, "streams", t, ctx.now_ms).map_err(|e| match e {
            token::TokenError::Expired => ApiError::expired_next_token("The NextToken has expired."),
            token::TokenError::Invalid => ApiError::invalid_argument(format!("Invalid NextToken: {t}")),
        })?),
        None => start.map(str::to_owned),
    };
    let limit = limit.unwrap_or(100).min(100) as usize;
    let cat = st.store.catalog();
    let all: Vec<&StreamMeta> = cat
        .streams
        .values()
        .filter(|m| st.find(&cat, &m.name, ctx.now_ms).is_ok())
        .filter(|m| after.as_deref().is_none_or(|a| m.name.as_str() > a))
        .collect();
    let page = &all[..all.len().min(limit)];
    let more = all.len() > limit;
    let names: Vec<String> = page.iter().map(|m| m.name.clone()).collect();
    let summaries: Vec<Out> = page
        .iter()
        .map(|m| {
            obj![
                ("StreamName", m.name.as_str()),
                ("StreamARN", st.stream_arn(ctx, &m.name)),
                ("StreamStatus", st.status(m, ctx.now_ms).as_str()),
                ("StreamModeDetails", obj![("StreamMode", mode_str(m.mode))]),
                ("StreamCreationTimestamp", Out::Timestamp(m.created_ms)),
            ]
        })
        .collect();
    let next =
        (more && !page.is_empty()).then(|| token::sign(&st.secret, "streams", &page[page.len() - 1].name, ctx.now_ms));
    Ok(obj![
        ("StreamNames", names),
        ("HasMoreStreams", more),
        ("NextToken", next),
        ("StreamSummaries", Out::List(summaries)),
    ])
}

/// Increase / DecreaseStreamRetentionPeriod.
pub fn change_retention(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>, increase: bool) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let hours = check.required(f.int("RetentionPeriodHours")?, "retentionPeriodHours");
    check.range(hours, "retentionPeriodHours", 1, 100_000);
    check.finish()?;
    let hours = hours.unwrap_or_default();
    if hours < MIN_RETENTION_HOURS {
        return Err(ApiError::invalid_argument(format!(
            "Minimum allowed retention period is {MIN_RETENTION_HOURS} hours. Requested retention period ({hours} hours) is too short."
        )));
    }
    if hours > MAX_RETENTION_HOURS {
        return Err(ApiError::invalid_argument(format!(
            "Maximum allowed retention period is {MAX_RETENTION_HOURS} hours. Requested retention period ({hours} hours) is too long."
        )));
    }
    let name = name.unwrap_or_default().to_owned();
    st.store.mutate_catalog(|cat| {
        st.find(cat, &name, ctx.now_ms)?;
        let Some(meta) = cat.streams.get_mut(&name) else { return Err(st.stream_not_found(&name)) };
        let current = i64::from(meta.retention_hours);
        if increase && hours < current {
            return Err(ApiError::invalid_argument(format!(
                "Requested retention period ({hours} hours) for stream {name} can not be shorter than existing retention period ({current} hours). Use DecreaseRetentionPeriod API."
            )));
        }
        if !increase && hours > current {
            return Err(ApiError::invalid_argument(format!(
                "Requested retention period ({hours} hours) for stream {name} can not be longer than existing retention period ({current} hours). Use IncreaseRetentionPeriod API."
            )));
        }
        meta.retention_hours = hours as u32;
        Ok(())
    })?;
    Ok(Out::Null)
}

/// AddTagsToStream.
pub fn add_tags(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let tags = check.required(f.string_map("Tags")?, "tags");
    if let Some(t) = &tags {
        check_tags(&mut check, t, "tags");
    }
    check.finish()?;
    let name = name.unwrap_or_default().to_owned();
    st.store.mutate_catalog(|cat| {
        st.find(cat, &name, ctx.now_ms)?;
        let Some(meta) = cat.streams.get_mut(&name) else { return Err(st.stream_not_found(&name)) };
        let given = tags.as_deref().unwrap_or_default();
        check_tag_chars(
            given.iter().flat_map(|(k, v)| [*k, *v]),
            "add tags to",
            &name,
            &st.config.account_id,
        )?;
        let mut merged: BTreeMap<String, String> = meta.tags.clone();
        for (k, v) in tags.unwrap_or_default() {
            merged.insert(k.to_owned(), v.to_owned());
        }
        if merged.len() > 50 {
            return Err(ApiError::invalid_argument(format!(
                "Failed to add tags to stream {name} under account {} because a given stream cannot have more than 50 tags.",
                st.config.account_id
            )));
        }
        meta.tags = merged;
        Ok(())
    })?;
    Ok(Out::Null)
}

/// ListTagsForStream.
pub fn list_tags(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let start = f.str("ExclusiveStartTagKey")?;
    check.length(start, "exclusiveStartTagKey", 1, 128);
    let limit = f.int("Limit")?;
    check.range(limit, "limit", 1, 50);
    check.finish()?;
    let cat = st.store.catalog();
    let meta = st.find(&cat, name.unwrap_or_default(), ctx.now_ms)?;
    let limit = limit.unwrap_or(50) as usize;
    let all: Vec<(&String, &String)> = meta.tags.iter().filter(|(k, _)| start.is_none_or(|s| k.as_str() > s)).collect();
    let tags: Vec<Out> =
        all.iter().take(limit).map(|(k, v)| obj![("Key", k.as_str()), ("Value", v.as_str())]).collect();
    Ok(obj![("Tags", Out::List(tags)), ("HasMoreTags", all.len() > limit)])
}

/// RemoveTagsFromStream.
pub fn remove_tags(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let keys = check.required(f.list("TagKeys")?, "tagKeys");
    check.count(keys.map(<[_]>::len), "tagKeys", 1, 50);
    let mut names = Vec::new();
    for (i, k) in keys.unwrap_or_default().iter().enumerate() {
        match k {
            crate::value::Value::Str(s) => {
                check.length(Some(s), &format!("tagKeys.{}.member", i + 1), 1, 128);
                names.push(s.to_string());
            }
            other => {
                return Err(ApiError::serialization(format!(
                    "Unexpected value type in TagKeys: {}",
                    other.type_name()
                )));
            }
        }
    }
    check.finish()?;
    let name = name.unwrap_or_default().to_owned();
    st.store.mutate_catalog(|cat| {
        st.find(cat, &name, ctx.now_ms)?;
        check_tag_chars(names.iter().map(String::as_str), "remove tags from", &name, &st.config.account_id)?;
        if let Some(meta) = cat.streams.get_mut(&name) {
            for k in &names {
                meta.tags.remove(k);
            }
        }
        Ok::<(), ApiError>(())
    })?;
    Ok(Out::Null)
}

const SHARD_METRICS: [&str; 8] = [
    "IncomingBytes",
    "IncomingRecords",
    "OutgoingBytes",
    "OutgoingRecords",
    "WriteProvisionedThroughputExceeded",
    "ReadProvisionedThroughputExceeded",
    "IteratorAgeMilliseconds",
    "ALL",
];

/// Enable / DisableEnhancedMonitoring (recorded and reported; sluice's own metrics are always on).
pub fn enhanced_monitoring(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>, enable: bool) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let metrics = check.required(f.list("ShardLevelMetrics")?, "shardLevelMetrics");
    check.count(metrics.map(<[_]>::len), "shardLevelMetrics", 1, 7);
    let mut wanted = Vec::new();
    for (i, m) in metrics.unwrap_or_default().iter().enumerate() {
        let crate::value::Value::Str(s) = m else {
            return Err(ApiError::serialization("ShardLevelMetrics must be strings"));
        };
        check.one_of(Some(s), &format!("shardLevelMetrics.{}.member", i + 1), &SHARD_METRICS);
        wanted.push(s.to_string());
    }
    check.finish()?;
    let name = name.unwrap_or_default().to_owned();
    let all: Vec<String> = SHARD_METRICS[..7].iter().map(|s| s.to_string()).collect();
    let expand = |v: Vec<String>| if v.iter().any(|m| m == "ALL") { all.clone() } else { v };
    let (current, desired) = st.store.mutate_catalog(|cat| {
        st.find(cat, &name, ctx.now_ms)?;
        let Some(meta) = cat.streams.get_mut(&name) else { return Err(st.stream_not_found(&name)) };
        let current = meta.shard_level_metrics.clone();
        let mut desired: Vec<String> = current.clone();
        for m in expand(wanted) {
            if enable && !desired.contains(&m) {
                desired.push(m);
            } else if !enable {
                desired.retain(|x| *x != m);
            }
        }
        desired.sort_by_key(|m| SHARD_METRICS.iter().position(|x| x == m));
        meta.shard_level_metrics = desired.clone();
        Ok((current, desired))
    })?;
    Ok(obj![
        ("StreamName", name.as_str()),
        ("StreamARN", st.stream_arn(ctx, &name)),
        ("CurrentShardLevelMetrics", current),
        ("DesiredShardLevelMetrics", desired),
    ])
}

/// Start / StopStreamEncryption (recorded and reported; data is stored as given).
pub fn encryption(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>, start: bool) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let name = stream_name(&f, &mut check)?;
    let kind = check.required(f.str("EncryptionType")?, "encryptionType");
    check.one_of(kind, "encryptionType", &["NONE", "KMS"]);
    let key = check.required(f.str("KeyId")?, "keyId");
    check.length(key, "keyId", 1, 2048);
    check.finish()?;
    if kind != Some("KMS") {
        return Err(ApiError::invalid_argument(format!(
            "Invalid EncryptionType {}: only KMS is supported.",
            kind.unwrap_or("")
        )));
    }
    let name = name.unwrap_or_default().to_owned();
    let key = key.unwrap_or_default().to_owned();
    st.store.mutate_catalog(|cat| {
        st.find(cat, &name, ctx.now_ms)?;
        if let Some(meta) = cat.streams.get_mut(&name) {
            meta.encryption_key = start.then_some(key);
        }
        Ok::<(), ApiError>(())
    })?;
    Ok(Out::Null)
}

/// DescribeLimits.
pub fn describe_limits(st: &AppState, _ctx: &Ctx) -> Result<Out, ApiError> {
    let cat = st.store.catalog();
    let on_demand = cat.streams.values().filter(|m| m.mode == StreamMode::OnDemand).count();
    Ok(obj![
        ("ShardLimit", st.config.shard_limit),
        ("OpenShardCount", open_shard_total(&cat)),
        ("OnDemandStreamCount", on_demand),
        ("OnDemandStreamCountLimit", 50u32),
    ])
}

/// UpdateStreamMode.
pub fn update_stream_mode(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let arn = check.required(f.str("StreamARN")?, "streamARN");
    let details = check.required(f.structure("StreamModeDetails")?, "streamModeDetails");
    let mode = match details {
        Some(d) => d.str("StreamMode")?,
        None => None,
    };
    check.one_of(mode, "streamModeDetails.streamMode", &["PROVISIONED", "ON_DEMAND"]);
    check.finish()?;
    let Some(name) = arn.and_then(crate::state::parse_stream_arn) else {
        return Err(ApiError::invalid_argument(format!("Invalid StreamARN {}", show_str(arn.unwrap_or("")))));
    };
    let name = name.to_owned();
    let mode = if mode == Some("ON_DEMAND") { StreamMode::OnDemand } else { StreamMode::Provisioned };
    st.store.mutate_catalog(|cat| {
        st.find(cat, &name, ctx.now_ms)?;
        if let Some(meta) = cat.streams.get_mut(&name) {
            meta.mode = mode;
        }
        Ok::<(), ApiError>(())
    })?;
    Ok(Out::Null)
}
