//! The storage error type.

use std::io;
use std::path::{Path, PathBuf};

/// Everything the storage engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O error on `path` (full disk, permissions, ...).
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another process (or another `Store` in this process) holds the data directory's lock.
    #[error("data directory is locked by another process ({})", .0.display())]
    Locked(PathBuf),
    /// The stream (with that tag) does not exist.
    #[error("no such stream")]
    NoSuchStream,
    /// The stream exists but has no such shard.
    #[error("no such shard")]
    NoSuchShard,
    /// An append targeted a shard that is closed (or unknown to the stream); nothing of that
    /// call was appended.
    #[error("shard {shard} is closed")]
    ShardClosed {
        /// The offending shard index.
        shard: u32,
    },
    /// A record's key plus data exceed what a frame can hold ([`crate::MAX_RECORD_BYTES`]).
    #[error("record of {size} bytes exceeds the storage limit")]
    RecordTooLarge {
        /// Partition key plus data, bytes.
        size: usize,
    },
    /// On-disk data failed validation in a way recovery cannot repair.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The store is shut down (or shutting down); appends are refused.
    #[error("the store is shutting down")]
    ShuttingDown,
}

impl StorageError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> StorageError {
        StorageError::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// A copy suitable for answering several callers with the same failure (`io::Error` is not
    /// `Clone`, so I/O errors are re-created from their kind and message).
    pub(crate) fn duplicate(&self) -> StorageError {
        match self {
            StorageError::Io { path, source } => {
                StorageError::Io { path: path.clone(), source: io::Error::new(source.kind(), source.to_string()) }
            }
            StorageError::Locked(p) => StorageError::Locked(p.clone()),
            StorageError::NoSuchStream => StorageError::NoSuchStream,
            StorageError::NoSuchShard => StorageError::NoSuchShard,
            StorageError::ShardClosed { shard } => StorageError::ShardClosed { shard: *shard },
            StorageError::RecordTooLarge { size } => StorageError::RecordTooLarge { size: *size },
            StorageError::Corrupt(m) => StorageError::Corrupt(m.clone()),
            StorageError::ShuttingDown => StorageError::ShuttingDown,
        }
    }
}

/// `map_err` helper: `.map_err(at(&path))`.
pub(crate) fn at(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |e| StorageError::io(path, e)
}
