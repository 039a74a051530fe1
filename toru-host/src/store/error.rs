//! The store's errors: [`StoreError`] for the database itself, [`KvError`] for a plugin's KV.

use std::path::PathBuf;
use std::sync::Arc;

use toru_plugin_api::protocol::error_code;

/// The database could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The folder that holds the database could not be created.
    #[error("cannot create the data folder {}", path.display())]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a redb database, or is damaged. It is left as it was.
    #[error("{} is not a toru database or is corrupt; it was left untouched", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What redb found.
        #[source]
        source: redb::DatabaseError,
    },
    /// Another process (or another `Store` in this one) has the database open.
    #[error("the database {} is already open in another process or store", path.display())]
    AlreadyOpen {
        /// The database file.
        path: PathBuf,
    },
    /// The database could not be opened for another reason (permissions, an old file format).
    #[error("cannot open the database {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// The write-ahead log beside the database could not be opened, read or written.
    #[error("the store's log {} failed", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why. Shared, since one failed append fails every write in its batch.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The write-ahead log is missing although the database says it may hold writes that were
    /// acknowledged but are not yet in the database file (the store was not closed cleanly).
    #[error(
        "the store's log {} is missing, and may have held acknowledged writes that the database \
         does not have yet; put it back, or create an empty file there to open the database \
         without them",
        path.display()
    )]
    LogMissing {
        /// The log file.
        path: PathBuf,
    },
    /// The write-ahead log is damaged before its last record (which a crash may leave torn,
    /// and which is then ignored). The log is left untouched.
    #[error("the store's log {} is damaged: {detail}; it was left untouched", path.display())]
    LogCorrupt {
        /// The log file.
        path: PathBuf,
        /// Where and how.
        detail: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start the store's writer thread")]
    Thread(#[source] std::io::Error),
    /// A stored value is not what this version of Toru wrote.
    #[error("the stored {what} is invalid: {detail}")]
    Invalid {
        /// Which value.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// Reading or writing the database failed. Shared, since one failed commit fails every
    /// write in its batch.
    #[error("database storage failed")]
    Storage(#[source] Arc<redb::Error>),
    /// The store was closed (the host shut down).
    #[error("the store is closed")]
    Closed,
    /// The setting belongs to the host: an application may read it but not write it.
    #[error("the setting {name:?} belongs to the host and cannot be written")]
    Reserved {
        /// The setting's name.
        name: String,
    },
}

impl StoreError {
    /// Classifies an error from opening the database at `path`.
    pub(crate) fn open(path: PathBuf, source: redb::DatabaseError) -> Self {
        match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path },
            // redb reports a file without its magic number as invalid data.
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => {
                StoreError::Corrupt { path, source }
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(ref e))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                StoreError::Corrupt { path, source }
            }
            source => StoreError::Open { path, source },
        }
    }

    /// A failure of the log at `path`.
    pub(crate) fn log(path: PathBuf, source: std::io::Error) -> Self {
        StoreError::Log {
            path,
            source: Arc::new(source),
        }
    }

    /// A shareable copy of a storage error, for answering every write of a failed batch.
    pub(crate) fn share(&self) -> Self {
        match self {
            StoreError::Storage(e) => StoreError::Storage(Arc::clone(e)),
            StoreError::Log { path, source } => StoreError::Log {
                path: path.clone(),
                source: Arc::clone(source),
            },
            StoreError::Closed => StoreError::Closed,
            other => StoreError::Invalid {
                what: "batch",
                detail: other.to_string(),
            },
        }
    }
}

/// Any redb error after opening: storage, transaction, table and commit errors.
pub(crate) fn storage(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Storage(Arc::new(e.into()))
}

/// A plugin's KV request was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The key is longer than [`KvLimits::max_key_len`](super::KvLimits::max_key_len).
    #[error("key of {len} bytes exceeds the {max}-byte limit")]
    KeyTooLarge {
        /// The key's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is longer than [`KvLimits::max_value_len`](super::KvLimits::max_value_len).
    #[error("value of {len} bytes exceeds the {max}-byte limit")]
    ValueTooLarge {
        /// The value's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The key is the empty string.
    #[error("key is empty")]
    EmptyKey,
    /// The write would take the plugin's namespace past its quota.
    #[error(
        "plugin {plugin:?} uses {used} of its {max} kv bytes; writing {requested} more would exceed the quota"
    )]
    QuotaExceeded {
        /// The plugin.
        plugin: String,
        /// Bytes (keys plus values) the plugin stores now.
        used: u64,
        /// Bytes of the key and value being written.
        requested: u64,
        /// The quota, [`KvLimits::max_bytes_per_plugin`](super::KvLimits::max_bytes_per_plugin).
        max: u64,
    },
    /// The database failed.
    #[error("kv storage failed")]
    Storage(#[source] StoreError),
    /// The store was closed (the host shut down).
    #[error("the store is closed")]
    Closed,
}

impl KvError {
    /// The protocol's error code for this error (from [`error_code`]).
    pub fn code(&self) -> &'static str {
        match self {
            KvError::KeyTooLarge { .. } | KvError::ValueTooLarge { .. } => error_code::KV_TOO_LARGE,
            KvError::QuotaExceeded { .. } => error_code::KV_QUOTA_EXCEEDED,
            KvError::EmptyKey => error_code::BAD_REQUEST,
            KvError::Closed | KvError::Storage(StoreError::Closed) => error_code::SHUTTING_DOWN,
            KvError::Storage(_) => error_code::INTERNAL,
        }
    }
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => KvError::Closed,
            e => KvError::Storage(e),
        }
    }
}
