//! Errors of the lifecycle subsystem.

use std::io;
use std::path::PathBuf;

use cella_db::DbError;

use crate::home::HomeError;

/// Reading a process's identity from `/proc` failed.
#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    /// `/proc/PID/stat` could not be read (the process may have exited).
    #[error("cannot read /proc/{pid}/stat")]
    ReadStat {
        /// The process.
        pid: i32,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// `/proc/PID/stat` did not have the expected shape.
    #[error("unparsable /proc/{pid}/stat: {reason}")]
    MalformedStat {
        /// The process.
        pid: i32,
        /// What was wrong.
        reason: &'static str,
    },

    /// The host boot id could not be read.
    #[error("cannot read the host boot id from {path}")]
    ReadBootId {
        /// Path of the boot id file.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
}

/// Errors from reconcile, cleanup and launcher locks.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The state database failed.
    #[error(transparent)]
    Db(#[from] DbError),

    /// A directory under the home could not be created.
    #[error(transparent)]
    Home(#[from] HomeError),

    /// A process identity could not be read.
    #[error(transparent)]
    Liveness(#[from] LivenessError),

    /// The launcher lock file could not be opened or locked.
    #[error("cannot take launcher lock {path}")]
    LauncherLock {
        /// The lock file.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// A sandbox directory could not be removed; its row was kept.
    #[error("cannot remove directory {path} of sandbox {name:?}; its record was kept")]
    RemoveDir {
        /// The sandbox.
        name: String,
        /// The directory.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
}
