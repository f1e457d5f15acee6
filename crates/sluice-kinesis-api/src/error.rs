//! API errors: the `__type` + message envelope every Kinesis client parses.

use std::fmt;

/// An error answered to the client with its AWS exception name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (400 for every modeled error).
    pub status: u16,
    /// The exception shape name, e.g. `ResourceNotFoundException`.
    pub kind: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ApiError {}

macro_rules! ctor {
    ($fn:ident, $kind:literal, $status:literal) => {
        #[doc = concat!("A `", $kind, "` error.")]
        pub fn $fn(message: impl Into<String>) -> ApiError {
            ApiError { status: $status, kind: $kind, message: message.into() }
        }
    };
}

impl ApiError {
    ctor!(not_found, "ResourceNotFoundException", 400);
    ctor!(in_use, "ResourceInUseException", 400);
    ctor!(invalid_argument, "InvalidArgumentException", 400);
    ctor!(throughput, "ProvisionedThroughputExceededException", 400);
    ctor!(expired_iterator, "ExpiredIteratorException", 400);
    ctor!(expired_next_token, "ExpiredNextTokenException", 400);
    ctor!(limit_exceeded, "LimitExceededException", 400);
    ctor!(validation, "ValidationException", 400);
    ctor!(serialization, "SerializationException", 400);
    ctor!(unknown_operation, "UnknownOperationException", 400);
    ctor!(missing_auth, "MissingAuthenticationTokenException", 400);
    ctor!(incomplete_signature, "IncompleteSignatureException", 400);
    ctor!(invalid_signature, "InvalidSignatureException", 400);
    ctor!(unrecognized_client, "UnrecognizedClientException", 400);
    ctor!(access_denied, "AccessDeniedException", 400);
    ctor!(internal, "InternalFailure", 500);
    ctor!(unavailable, "ServiceUnavailable", 503);
    ctor!(too_large, "RequestEntityTooLargeException", 413);
}

impl From<sluice_storage::StorageError> for ApiError {
    fn from(e: sluice_storage::StorageError) -> ApiError {
        use sluice_storage::StorageError as S;
        match e {
            S::NoSuchStream => ApiError::not_found("Stream not found"),
            S::NoSuchShard => ApiError::not_found("Shard not found"),
            S::ShuttingDown => ApiError::unavailable("The server is shutting down"),
            other => {
                tracing::error!(error = %other, "storage failure");
                ApiError::internal(format!("Storage failure: {other}"))
            }
        }
    }
}
