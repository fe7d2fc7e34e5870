//! The one error type of the state database.
//!
//! Every variant names what it concerns: the database path for connection and schema failures,
//! the sandbox (by name or id) or lease for query failures. A query that gave up because another
//! process held the write lock longer than [`crate::BUSY_TIMEOUT`] is reported as
//! [`DbError::Busy`] so callers can tell contention from corruption.

use std::io;
use std::path::PathBuf;

/// Errors from opening, migrating and querying the state database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The directory that holds the database file could not be created.
    #[error("cannot create database directory {path}")]
    CreateDir {
        /// Directory that could not be created.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// SQLite refused to open the database file.
    #[error("cannot open database {path}")]
    Open {
        /// Database file.
        path: PathBuf,
        /// Underlying SQLite error.
        #[source]
        source: sqlx::Error,
    },

    /// The database could not be switched to write-ahead logging.
    #[error("cannot enable WAL journal on {path} (journal mode stays {mode:?})")]
    WalUnavailable {
        /// Database file.
        path: PathBuf,
        /// Journal mode SQLite reported instead of `wal`.
        mode: String,
    },

    /// A schema migration failed; the transaction was rolled back.
    #[error("cannot migrate database {path} to schema version {version}")]
    Migrate {
        /// Database file.
        path: PathBuf,
        /// Schema version the migration was creating.
        version: i64,
        /// Underlying SQLite error.
        #[source]
        source: sqlx::Error,
    },

    /// The database was written by a newer cella whose schema this build does not know.
    #[error("database {path} has schema version {found}, this cella supports up to {supported}")]
    SchemaTooNew {
        /// Database file.
        path: PathBuf,
        /// Version found in the file.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },

    /// Another process held the database write lock for longer than the busy timeout.
    #[error("database busy: cannot {operation} {subject} (another cella process holds the lock)")]
    Busy {
        /// What was being done, e.g. `update status of`.
        operation: &'static str,
        /// What it was done to, e.g. `sandbox "web"`.
        subject: String,
        /// Underlying SQLite error.
        #[source]
        source: sqlx::Error,
    },

    /// A query failed for a reason other than lock contention.
    #[error("cannot {operation} {subject}")]
    Query {
        /// What was being done, e.g. `insert`.
        operation: &'static str,
        /// What it was done to, e.g. `sandbox "web"`.
        subject: String,
        /// Underlying SQLite error.
        #[source]
        source: sqlx::Error,
    },

    /// A sandbox with this name already exists.
    #[error("a sandbox named {name:?} already exists")]
    DuplicateName {
        /// The name that is taken.
        name: String,
    },

    /// The sandbox name is not usable as a name and a directory name.
    #[error("invalid sandbox name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// No sandbox matches the name or id.
    #[error("no {key} in the state database")]
    SandboxNotFound {
        /// The name or id that was looked up, as displayed by [`crate::SandboxKey`].
        key: String,
    },

    /// A run can only be recorded for a sandbox that is starting.
    #[error("cannot record a run for sandbox {name:?}: it is {status}, not Starting")]
    RunNotStarting {
        /// Sandbox name.
        name: String,
        /// Its current status.
        status: crate::SandboxStatus,
    },

    /// The sandbox already has a run marked Running.
    #[error("sandbox {name:?} already has an active run (run {run_id})")]
    RunAlreadyActive {
        /// Sandbox name.
        name: String,
        /// The run that is still marked Running.
        run_id: i64,
    },

    /// A stored value is not one this build can read (a newer or damaged database).
    #[error("unreadable value {value:?} in column {column}")]
    InvalidValue {
        /// Table and column, e.g. `sandbox.status`.
        column: &'static str,
        /// The stored text.
        value: String,
    },
}

impl DbError {
    /// True when the error is lock contention that outlasted the busy timeout.
    pub fn is_busy(&self) -> bool {
        matches!(self, DbError::Busy { .. })
    }

    /// Classifies a query failure: lock contention becomes [`DbError::Busy`].
    pub(crate) fn query(
        operation: &'static str,
        subject: impl ToString,
        source: sqlx::Error,
    ) -> Self {
        let subject = subject.to_string();
        if is_busy_error(&source) {
            DbError::Busy { operation, subject, source }
        } else {
            DbError::Query { operation, subject, source }
        }
    }
}

/// SQLITE_BUSY (5) and SQLITE_LOCKED (6), including their extended codes.
pub(crate) fn is_busy_error(error: &sqlx::Error) -> bool {
    let Some(db) = error.as_database_error() else {
        return false;
    };
    let Some(code) = db.code() else { return false };
    code.parse::<i32>().map(|c| matches!(c & 0xff, 5 | 6)).unwrap_or(false)
}
