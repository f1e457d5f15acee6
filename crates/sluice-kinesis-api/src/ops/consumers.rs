//! Enhanced fan-out consumers: Register, Describe, List, Deregister.
//!
//! A consumer ARN is the stream ARN + `/consumer/<name>:<creation epoch seconds>`.

use sluice_storage::{ConsumerMeta, StreamMeta};

use crate::error::ApiError;
use crate::input::{Checker, Fields};
use crate::obj;
use crate::state::{AppState, Ctx, parse_stream_arn};
use crate::token;
use crate::value::Out;

/// Most consumers per stream.
pub const MAX_CONSUMERS: usize = 20;

/// Splits a consumer ARN into (stream name, consumer name, creation seconds).
pub fn parse_consumer_arn(arn: &str) -> Option<(&str, &str, u64)> {
    let (stream_arn, rest) = arn.split_once("/consumer/")?;
    let stream = parse_stream_arn(stream_arn)?;
    let (name, secs) = rest.rsplit_once(':')?;
    Some((stream, name, secs.parse().ok()?))
}

/// The ARN of a consumer.
pub fn consumer_arn(st: &AppState, ctx: &Ctx, stream: &str, c: &ConsumerMeta) -> String {
    format!("{}/consumer/{}:{}", st.stream_arn(ctx, stream), c.name, c.created_ms / 1000)
}

fn status(c: &ConsumerMeta, now: u64) -> &str {
    if now >= c.status_until_ms && c.status == "CREATING" { "ACTIVE" } else { c.status.as_str() }
}

fn consumer_out(st: &AppState, ctx: &Ctx, stream: &str, c: &ConsumerMeta, with_stream: bool) -> Out {
    obj![
        ("ConsumerName", c.name.as_str()),
        ("ConsumerARN", consumer_arn(st, ctx, stream, c)),
        ("ConsumerStatus", status(c, ctx.now_ms)),
        ("ConsumerCreationTimestamp", Out::Timestamp(c.created_ms)),
        ("StreamARN", with_stream.then(|| st.stream_arn(ctx, stream))),
    ]
}

fn check_stream_arn(check: &mut Checker, arn: Option<&str>, path: &str) {
    check.length(arn, path, 1, 2048);
    check.pattern(arn, path, |a| parse_stream_arn(a).is_some(), "arn:aws.*:kinesis:.*:\\d{12}:stream/\\S+");
}

fn check_consumer_arn(check: &mut Checker, arn: Option<&str>) {
    check.length(arn, "consumerARN", 1, 2048);
    check.pattern(
        arn,
        "consumerARN",
        |a| parse_consumer_arn(a).is_some(),
        "^(arn):aws.*:kinesis:.*:\\d{12}:.*stream\\/[a-zA-Z0-9_.-]+\\/consumer\\/[a-zA-Z0-9_.-]+:[0-9]+",
    );
}

/// Finds a live consumer (ACTIVE or CREATING; DELETING ones whose time passed are gone).
pub fn find_consumer<'m>(
    st: &AppState,
    meta: &'m StreamMeta,
    name: &str,
    created_secs: Option<u64>,
    now: u64,
) -> Result<&'m ConsumerMeta, ApiError> {
    meta.consumers
        .iter()
        .find(|c| {
            c.name == name
                && created_secs.is_none_or(|s| c.created_ms / 1000 == s)
                && !(c.status == "DELETING" && now >= c.status_until_ms)
        })
        .ok_or_else(|| ApiError::not_found(format!("Consumer {name}, account {} not found.", st.config.account_id)))
}

/// Resolves `ConsumerARN`, or `StreamARN` + `ConsumerName`, to (stream, consumer, created secs).
/// (stream name, consumer name, creation seconds if the ARN gave them).
type Target<'r> = (&'r str, &'r str, Option<u64>);

fn target<'r>(f: &Fields<'r, '_>, check: &mut Checker) -> Result<Option<Target<'r>>, ApiError> {
    let arn = f.str("ConsumerARN")?;
    let stream_arn = f.str("StreamARN")?;
    let name = f.str("ConsumerName")?;
    check_consumer_arn(check, arn);
    check_stream_arn(check, stream_arn, "streamARN");
    check.name(name, "consumerName");
    if let Some(a) = arn.and_then(parse_consumer_arn) {
        return Ok(Some((a.0, a.1, Some(a.2))));
    }
    match (stream_arn.and_then(parse_stream_arn), name) {
        (Some(s), Some(n)) => Ok(Some((s, n, None))),
        _ if arn.is_none() => {
            Err(ApiError::invalid_argument("Either ConsumerARN or both ConsumerName and StreamARN must be provided."))
        }
        _ => Ok(None),
    }
}

/// RegisterStreamConsumer.
pub fn register(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let arn = check.required(f.str("StreamARN")?, "streamARN");
    check_stream_arn(&mut check, arn, "streamARN");
    let name = check.required(f.str("ConsumerName")?, "consumerName");
    check.name(name, "consumerName");
    check.finish()?;
    let (Some(stream), Some(name)) = (arn.and_then(parse_stream_arn), name) else {
        return Err(ApiError::validation("1 validation error detected: missing member"));
    };
    let now = ctx.now_ms;
    let c = st.store.mutate_catalog(|cat| {
        let meta = st.find(cat, stream, now)?;
        if find_consumer(st, meta, name, None, now).is_ok() {
            return Err(ApiError::in_use(format!(
                "Consumer {name} under stream {stream} already exists for account {}.",
                st.config.account_id
            )));
        }
        if meta.consumers.len() >= MAX_CONSUMERS {
            return Err(ApiError::limit_exceeded(format!(
                "Stream {stream} under account {} has reached the limit of {MAX_CONSUMERS} consumers.",
                st.config.account_id
            )));
        }
        let Some(meta) = cat.streams.get_mut(stream) else { return Err(st.stream_not_found(stream)) };
        meta.consumers.retain(|c| c.name != name);
        let c = ConsumerMeta {
            name: name.to_owned(),
            created_ms: now,
            status: "CREATING".into(),
            status_until_ms: now + st.config.transition_ms,
        };
        meta.consumers.push(c.clone());
        Ok(c)
    })?;
    Ok(obj![("Consumer", consumer_out(st, ctx, stream, &c, false))])
}

/// DescribeStreamConsumer.
pub fn describe(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let t = target(&f, &mut check)?;
    check.finish()?;
    let Some((stream, name, secs)) = t else { return Err(ApiError::invalid_argument("Invalid consumer")) };
    let cat = st.store.catalog();
    let meta = st.find(&cat, stream, ctx.now_ms)?;
    let c = find_consumer(st, meta, name, secs, ctx.now_ms)?;
    Ok(obj![("ConsumerDescription", consumer_out(st, ctx, stream, c, true))])
}

/// ListStreamConsumers.
pub fn list(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let arn = check.required(f.str("StreamARN")?, "streamARN");
    check_stream_arn(&mut check, arn, "streamARN");
    let max = f.int("MaxResults")?;
    check.range(max, "maxResults", 1, 10_000);
    let next = f.str("NextToken")?;
    check.length(next, "nextToken", 1, 1_048_576);
    let _created = f.timestamp("StreamCreationTimestamp")?;
    check.finish()?;
    let Some(stream) = arn.and_then(parse_stream_arn) else {
        return Err(ApiError::validation("1 validation error detected: missing member"));
    };
    let after = match next {
        Some(t) => Some(token::verify(&st.secret, "consumers", t, ctx.now_ms).map_err(|e| match e {
            token::TokenError::Expired => ApiError::expired_next_token("The NextToken has expired."),
            token::TokenError::Invalid => ApiError::invalid_argument("Invalid NextToken."),
        })?),
        None => None,
    };
    let cat = st.store.catalog();
    let meta = st.find(&cat, stream, ctx.now_ms)?;
    let mut all: Vec<&ConsumerMeta> = meta
        .consumers
        .iter()
        .filter(|c| !(c.status == "DELETING" && ctx.now_ms >= c.status_until_ms))
        .filter(|c| after.as_deref().is_none_or(|a| c.name.as_str() > a))
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let max = max.unwrap_or(100) as usize;
    let page = &all[..all.len().min(max)];
    let token = (all.len() > max && !page.is_empty())
        .then(|| token::sign(&st.secret, "consumers", &page[page.len() - 1].name, ctx.now_ms));
    Ok(obj![
        ("Consumers", Out::List(page.iter().map(|c| consumer_out(st, ctx, stream, c, false)).collect())),
        ("NextToken", token),
    ])
}

/// DeregisterStreamConsumer.
pub fn deregister(st: &AppState, ctx: &Ctx, f: Fields<'_, '_>) -> Result<Out, ApiError> {
    let mut check = Checker::new();
    let t = target(&f, &mut check)?;
    check.finish()?;
    let Some((stream, name, secs)) = t else { return Err(ApiError::invalid_argument("Invalid consumer")) };
    let now = ctx.now_ms;
    st.store.mutate_catalog(|cat| {
        let meta = st.find(cat, stream, now)?;
        find_consumer(st, meta, name, secs, now)?;
        let Some(meta) = cat.streams.get_mut(stream) else { return Err(st.stream_not_found(stream)) };
        if st.config.transition_ms == 0 {
            meta.consumers.retain(|c| c.name != name);
        } else if let Some(c) = meta.consumers.iter_mut().find(|c| c.name == name) {
            c.status = "DELETING".into();
            c.status_until_ms = now + st.config.transition_ms;
        }
        Ok(())
    })?;
    Ok(Out::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_arns() {
        assert_eq!(
            parse_consumer_arn("arn:aws:kinesis:us-east-1:000000000000:stream/s/consumer/c:1700000000"),
            Some(("s", "c", 1_700_000_000))
        );
        assert_eq!(parse_consumer_arn("arn:aws:kinesis:us-east-1:000000000000:stream/s"), None);
    }
}
