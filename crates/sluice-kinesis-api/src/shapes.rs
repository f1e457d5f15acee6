//! The deserialization pass: every member of a request is checked against its shape in the
//! service model before anything else, and a value of the wrong type is a
//! `SerializationException` worded as the service's (Java) deserializer words it — before any
//! constraint (`ValidationException`) or "Either StreamName or StreamARN" check. Members an
//! operation does not have are ignored, as the service ignores them.

use base64::Engine;

use crate::error::ApiError;
use crate::value::Value;

/// A member's shape in the service model.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// A string.
    Str,
    /// An integer.
    Int,
    /// A boolean.
    Bool,
    /// Bytes (base64 in JSON).
    Blob,
    /// A timestamp (checked by the operation, which accepts numbers and dates).
    Timestamp,
    /// A list of one shape.
    List(&'static Shape),
    /// A map from strings to one shape.
    Map(&'static Shape),
    /// A structure with named members.
    Struct(&'static [(&'static str, Shape)]),
}

/// Each operation's input members and their shapes (from the service model, in its order).
const OPERATIONS: &[(&str, &[(&str, Shape)])] = &[
    (
        "CreateStream",
        &[
            ("StreamName", Shape::Str),
            ("ShardCount", Shape::Int),
            ("StreamModeDetails", Shape::Struct(&[("StreamMode", Shape::Str)])),
            ("Tags", Shape::Map(&Shape::Str)),
            ("WarmThroughputMiBps", Shape::Int),
            ("MaxRecordSizeInKiB", Shape::Int),
        ],
    ),
    (
        "DeleteStream",
        &[
            ("StreamName", Shape::Str),
            ("EnforceConsumerDeletion", Shape::Bool),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "DescribeStream",
        &[
            ("StreamName", Shape::Str),
            ("Limit", Shape::Int),
            ("ExclusiveStartShardId", Shape::Str),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    ("DescribeStreamSummary", &[("StreamName", Shape::Str), ("StreamARN", Shape::Str), ("StreamId", Shape::Str)]),
    ("ListStreams", &[("Limit", Shape::Int), ("ExclusiveStartStreamName", Shape::Str), ("NextToken", Shape::Str)]),
    (
        "IncreaseStreamRetentionPeriod",
        &[
            ("StreamName", Shape::Str),
            ("RetentionPeriodHours", Shape::Int),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "DecreaseStreamRetentionPeriod",
        &[
            ("StreamName", Shape::Str),
            ("RetentionPeriodHours", Shape::Int),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "AddTagsToStream",
        &[
            ("StreamName", Shape::Str),
            ("Tags", Shape::Map(&Shape::Str)),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "ListTagsForStream",
        &[
            ("StreamName", Shape::Str),
            ("ExclusiveStartTagKey", Shape::Str),
            ("Limit", Shape::Int),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "RemoveTagsFromStream",
        &[
            ("StreamName", Shape::Str),
            ("TagKeys", Shape::List(&Shape::Str)),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "EnableEnhancedMonitoring",
        &[
            ("StreamName", Shape::Str),
            ("ShardLevelMetrics", Shape::List(&Shape::Str)),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "DisableEnhancedMonitoring",
        &[
            ("StreamName", Shape::Str),
            ("ShardLevelMetrics", Shape::List(&Shape::Str)),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "StartStreamEncryption",
        &[
            ("StreamName", Shape::Str),
            ("EncryptionType", Shape::Str),
            ("KeyId", Shape::Str),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "StopStreamEncryption",
        &[
            ("StreamName", Shape::Str),
            ("EncryptionType", Shape::Str),
            ("KeyId", Shape::Str),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    ("DescribeLimits", &[]),
    (
        "UpdateStreamMode",
        &[
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
            ("StreamModeDetails", Shape::Struct(&[("StreamMode", Shape::Str)])),
            ("WarmThroughputMiBps", Shape::Int),
        ],
    ),
    (
        "ListShards",
        &[
            ("StreamName", Shape::Str),
            ("NextToken", Shape::Str),
            ("ExclusiveStartShardId", Shape::Str),
            ("MaxResults", Shape::Int),
            ("StreamCreationTimestamp", Shape::Timestamp),
            (
                "ShardFilter",
                Shape::Struct(&[("Type", Shape::Str), ("ShardId", Shape::Str), ("Timestamp", Shape::Timestamp)]),
            ),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "SplitShard",
        &[
            ("StreamName", Shape::Str),
            ("ShardToSplit", Shape::Str),
            ("NewStartingHashKey", Shape::Str),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "MergeShards",
        &[
            ("StreamName", Shape::Str),
            ("ShardToMerge", Shape::Str),
            ("AdjacentShardToMerge", Shape::Str),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "UpdateShardCount",
        &[
            ("StreamName", Shape::Str),
            ("TargetShardCount", Shape::Int),
            ("ScalingType", Shape::Str),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "PutRecord",
        &[
            ("StreamName", Shape::Str),
            ("Data", Shape::Blob),
            ("PartitionKey", Shape::Str),
            ("ExplicitHashKey", Shape::Str),
            ("SequenceNumberForOrdering", Shape::Str),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "PutRecords",
        &[
            (
                "Records",
                Shape::List(&Shape::Struct(&[
                    ("Data", Shape::Blob),
                    ("ExplicitHashKey", Shape::Str),
                    ("PartitionKey", Shape::Str),
                ])),
            ),
            ("StreamName", Shape::Str),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "GetShardIterator",
        &[
            ("StreamName", Shape::Str),
            ("ShardId", Shape::Str),
            ("ShardIteratorType", Shape::Str),
            ("StartingSequenceNumber", Shape::Str),
            ("Timestamp", Shape::Timestamp),
            ("StreamARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "GetRecords",
        &[("ShardIterator", Shape::Str), ("Limit", Shape::Int), ("StreamARN", Shape::Str), ("StreamId", Shape::Str)],
    ),
    (
        "RegisterStreamConsumer",
        &[
            ("StreamARN", Shape::Str),
            ("ConsumerName", Shape::Str),
            ("StreamId", Shape::Str),
            ("Tags", Shape::Map(&Shape::Str)),
        ],
    ),
    (
        "DescribeStreamConsumer",
        &[
            ("StreamARN", Shape::Str),
            ("ConsumerName", Shape::Str),
            ("ConsumerARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "ListStreamConsumers",
        &[
            ("StreamARN", Shape::Str),
            ("NextToken", Shape::Str),
            ("MaxResults", Shape::Int),
            ("StreamCreationTimestamp", Shape::Timestamp),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "DeregisterStreamConsumer",
        &[
            ("StreamARN", Shape::Str),
            ("ConsumerName", Shape::Str),
            ("ConsumerARN", Shape::Str),
            ("StreamId", Shape::Str),
        ],
    ),
    (
        "SubscribeToShard",
        &[
            ("ConsumerARN", Shape::Str),
            ("StreamId", Shape::Str),
            ("ShardId", Shape::Str),
            (
                "StartingPosition",
                Shape::Struct(&[("Type", Shape::Str), ("SequenceNumber", Shape::Str), ("Timestamp", Shape::Timestamp)]),
            ),
        ],
    ),
];

fn err(message: impl Into<String>) -> ApiError {
    ApiError::serialization(message)
}

/// The shape AWS's deserializer gives a value in its messages.
fn java_class(v: &Value<'_>) -> &'static str {
    match v {
        Value::Bool(_) => "java.lang.Boolean",
        Value::Str(_) => "java.lang.String",
        _ => "java.math.BigDecimal",
    }
}

fn check_blob_text(s: &str) -> Result<(), ApiError> {
    if !s.len().is_multiple_of(4) {
        return Err(err(format!(
            "'{s}' can not be converted to a Blob: Base64 encoded length is expected a multiple of 4 bytes but found: {}",
            s.len()
        )));
    }
    let bytes = s.as_bytes();
    let bad = bytes.iter().enumerate().find_map(|(i, &b)| {
        let alphabet = b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=';
        let pad_then_data = b == b'=' && bytes.get(i + 1).is_some_and(|&n| n != b'=');
        (!alphabet || pad_then_data).then_some(b as char)
    });
    if let Some(c) = bad {
        return Err(err(format!("'{s}' can not be converted to a Blob: Invalid Base64 character: '{c}'")));
    }
    if base64::engine::general_purpose::STANDARD.decode(s).is_err() {
        // (sic: the service's own spelling)
        return Err(err(format!(
            "'{s}' can not be converted to a Blob: Invalid last non-pad Base64 character dectected"
        )));
    }
    Ok(())
}

/// Checks `v` against `shape`; `Null` is always fine (an absent member).
fn check_value(v: &Value<'_>, shape: &Shape) -> Result<(), ApiError> {
    let nested = |v: &Value<'_>| match v {
        Value::List(_) => Some(err("Start of list found where not expected")),
        Value::Map(_) => Some(err("Start of structure or map found where not expected.")),
        _ => None,
    };
    if matches!(v, Value::Null) {
        return Ok(());
    }
    match shape {
        Shape::Str => match v {
            Value::Str(_) => Ok(()),
            Value::Bool(_) | Value::Int(_) | Value::Float(_) => {
                Err(err(format!("class {} can not be converted to an String", java_class(v))))
            }
            other => nested(other).map_or(Ok(()), Err),
        },
        Shape::Int => match v {
            Value::Int(_) | Value::Float(_) => Ok(()),
            Value::Bool(_) | Value::Str(_) => {
                Err(err(format!("class {} can not be converted to an Integer", java_class(v))))
            }
            other => nested(other).map_or(Ok(()), Err),
        },
        Shape::Bool => match v {
            Value::Bool(_) => Ok(()),
            Value::Int(_) | Value::Float(_) => {
                Err(err("class java.math.BigDecimal can not be converted to an Boolean"))
            }
            Value::Str(s) => Err(err(format!("'{}' can not be converted to an Boolean", s.to_uppercase()))),
            other => nested(other).map_or(Ok(()), Err),
        },
        Shape::Blob => match v {
            Value::Bytes(_) => Ok(()),
            Value::Str(s) => check_blob_text(s),
            Value::Bool(_) | Value::Int(_) | Value::Float(_) => {
                Err(err(format!("class {} can not be converted to a Blob", java_class(v))))
            }
            other => nested(other).map_or(Ok(()), Err),
        },
        Shape::Timestamp => match v {
            Value::List(_) | Value::Map(_) => nested(v).map_or(Ok(()), Err),
            _ => Ok(()),
        },
        Shape::List(member) => match v {
            Value::List(items) => items.iter().try_for_each(|i| check_value(i, member)),
            Value::Map(_) => Err(err("Start of structure or map found where not expected.")),
            _ => Err(err("Expected list or null")),
        },
        Shape::Map(value) => match v {
            Value::Map(entries) => entries.iter().try_for_each(|(_, e)| check_value(e, value)),
            Value::List(_) => Err(err("Start of list found where not expected")),
            _ => Err(err("Expected map or null")),
        },
        Shape::Struct(members) => match v {
            Value::Map(_) => check_members(v, members),
            Value::List(_) => Err(err("Start of list found where not expected")),
            _ => Err(err("Expected null")),
        },
    }
}

fn check_members(v: &Value<'_>, members: &[(&str, Shape)]) -> Result<(), ApiError> {
    for (name, shape) in members {
        if let Some(m) = v.get(name) {
            check_value(m, shape)?;
        }
    }
    Ok(())
}

/// Checks a whole request of operation `op` (the request itself must be a structure).
pub fn check(op: &str, request: &Value<'_>) -> Result<(), ApiError> {
    let Some((_, members)) = OPERATIONS.iter().find(|(name, _)| *name == op) else { return Ok(()) };
    match request {
        Value::Map(_) => check_members(request, members),
        Value::List(_) => Err(err("Start of list found where not expected")),
        _ => Err(err("Expected null")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Value<'static> {
        crate::value::decode(crate::value::Format::Json, s.as_bytes()).expect("json").into_owned()
    }

    fn message(op: &str, body: &str) -> Option<String> {
        check(op, &json(body)).err().map(|e| e.message)
    }

    #[test]
    fn wrong_types_are_worded_as_the_service_words_them() {
        let cases = [
            ("CreateStream", r#"{"StreamName": true}"#, "class java.lang.Boolean can not be converted to an String"),
            ("CreateStream", r#"{"StreamName": 1}"#, "class java.math.BigDecimal can not be converted to an String"),
            ("CreateStream", r#"{"ShardCount": "1"}"#, "class java.lang.String can not be converted to an Integer"),
            ("CreateStream", r#"{"ShardCount": [1]}"#, "Start of list found where not expected"),
            ("CreateStream", r#"{"StreamName": {}}"#, "Start of structure or map found where not expected."),
            ("CreateStream", r#"{"Tags": "x"}"#, "Expected map or null"),
            ("CreateStream", r#"{"Tags": {"a": 1}}"#, "class java.math.BigDecimal can not be converted to an String"),
            ("CreateStream", r#"{"StreamModeDetails": 1}"#, "Expected null"),
            ("DeleteStream", r#"{"EnforceConsumerDeletion": "yes"}"#, "'YES' can not be converted to an Boolean"),
            (
                "DeleteStream",
                r#"{"EnforceConsumerDeletion": 0}"#,
                "class java.math.BigDecimal can not be converted to an Boolean",
            ),
            ("RemoveTagsFromStream", r#"{"TagKeys": "a"}"#, "Expected list or null"),
            ("RemoveTagsFromStream", r#"{"TagKeys": {}}"#, "Start of structure or map found where not expected."),
            (
                "PutRecords",
                r#"{"Records": [{"Data": 1}]}"#,
                "class java.math.BigDecimal can not be converted to a Blob",
            ),
            (
                "PutRecord",
                r#"{"Data": "abc"}"#,
                "'abc' can not be converted to a Blob: Base64 encoded length is expected a multiple of 4 bytes but found: 3",
            ),
            (
                "PutRecord",
                r#"{"Data": "ab.c"}"#,
                "'ab.c' can not be converted to a Blob: Invalid Base64 character: '.'",
            ),
            (
                "PutRecord",
                r#"{"Data": "a=bc"}"#,
                "'a=bc' can not be converted to a Blob: Invalid Base64 character: '='",
            ),
            (
                "PutRecord",
                r#"{"Data": "YR=="}"#,
                "'YR==' can not be converted to a Blob: Invalid last non-pad Base64 character dectected",
            ),
        ];
        for (op, body, want) in cases {
            assert_eq!(message(op, body).as_deref(), Some(want), "{op} {body}");
        }
    }

    #[test]
    fn right_types_unknown_members_and_nulls_pass() {
        for (op, body) in [
            ("CreateStream", r#"{"StreamName": "s", "ShardCount": 2, "Tags": {"a": "b"}, "Whatever": [1]}"#),
            ("PutRecord", r#"{"StreamName": null, "Data": "YQ==", "PartitionKey": "k"}"#),
            ("ListShards", r#"{"ShardFilter": {"Type": "AT_LATEST", "Timestamp": 1.5}, "MaxResults": 3.0}"#),
            ("DescribeLimits", r#"{"Anything": true}"#),
        ] {
            assert_eq!(message(op, body), None, "{op} {body}");
        }
    }
}
