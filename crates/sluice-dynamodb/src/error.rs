//! Errors answered with DynamoDB's exception names.

/// An error answered to the client: HTTP status, DynamoDB exception name and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct DynamoError {
    /// HTTP status (400 for client errors, 500 for internal ones).
    pub status: u16,
    /// The exception shape name, e.g. `ConditionalCheckFailedException`.
    pub kind: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `Item` of a failed condition, when `ReturnValuesOnConditionCheckFailure` is `ALL_OLD`.
    pub item: Option<serde_json::Value>,
}

impl DynamoError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> DynamoError {
        DynamoError { status, kind, message: message.into(), item: None }
    }

    /// `ValidationException`.
    pub fn validation(message: impl Into<String>) -> DynamoError {
        DynamoError::new(400, "ValidationException", message)
    }

    /// `SerializationException` (a body that is not the expected JSON structure).
    pub fn serialization(message: impl Into<String>) -> DynamoError {
        DynamoError::new(400, "SerializationException", message)
    }

    /// `ResourceNotFoundException`.
    pub fn not_found(message: impl Into<String>) -> DynamoError {
        DynamoError::new(400, "ResourceNotFoundException", message)
    }

    /// `ResourceNotFoundException` with the text item operations use.
    pub fn no_table() -> DynamoError {
        DynamoError::not_found("Requested resource not found")
    }

    /// `ResourceInUseException`.
    pub fn in_use(message: impl Into<String>) -> DynamoError {
        DynamoError::new(400, "ResourceInUseException", message)
    }

    /// `ConditionalCheckFailedException`.
    pub fn condition_failed() -> DynamoError {
        DynamoError::new(400, "ConditionalCheckFailedException", "The conditional request failed")
    }

    /// `UnknownOperationException`.
    pub fn unknown_operation(message: impl Into<String>) -> DynamoError {
        DynamoError::new(400, "UnknownOperationException", message)
    }

    /// `InternalServerError` (storage failures).
    pub fn internal(message: impl Into<String>) -> DynamoError {
        DynamoError::new(500, "InternalServerError", message)
    }

    /// The `__type` of the error body: the shape name with the namespace the service uses.
    pub fn wire_type(&self) -> String {
        let ns = match self.kind {
            "ValidationException" => "com.amazon.coral.validate",
            "SerializationException" | "UnknownOperationException" => "com.amazon.coral.service",
            _ => "com.amazonaws.dynamodb.v20120810",
        };
        format!("{ns}#{}", self.kind)
    }

    /// The JSON error body: `{"__type": …, "message": …}` (and `Item` when asked for).
    pub fn body(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("__type".into(), self.wire_type().into());
        m.insert("message".into(), self.message.clone().into());
        if let Some(item) = &self.item {
            m.insert("Item".into(), item.clone());
        }
        serde_json::Value::Object(m)
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = DynamoError> = std::result::Result<T, E>;
