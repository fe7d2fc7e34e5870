//! Errors of the SDK.

use std::path::PathBuf;

use cella_protocol::ErrorCode;

/// Talking to a running sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The sandbox socket could not be reached.
    #[error("cannot connect to sandbox socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox refused the connection.
    #[error("sandbox refused the connection: {message}")]
    Refused {
        /// Its reason.
        message: String,
    },
    /// The sandbox process closed the connection before the session ended.
    #[error(
        "the sandbox process closed the connection before the command finished; see `cella logs`"
    )]
    Disconnected,
    /// The sandbox process accepted no connection or sent no welcome in time.
    #[error(
        "the sandbox process did not answer on {path} within {waited:?}; it may be stopped or \
         wedged: `cella stop --force` ends it"
    )]
    Unresponsive {
        /// The socket.
        path: std::path::PathBuf,
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// A frame could not be encoded or decoded.
    #[error("protocol error talking to the sandbox")]
    Protocol(#[from] cella_protocol::ProtocolError),
    /// The sandbox or the agent rejected a session request.
    #[error("sandbox rejected the request ({code:?}): {message}")]
    Session {
        /// Classification.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
    /// Writing the command's output on the host failed.
    #[error("cannot write the command's output")]
    Output(#[source] std::io::Error),
}

/// Creating or starting a sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] cella_runtime::config::ConfigError),
    /// The home directory is unusable.
    #[error(transparent)]
    Home(#[from] cella_runtime::home::HomeError),
    /// A sandbox of this name already exists.
    #[error("a sandbox named {name} already exists")]
    Exists {
        /// The name.
        name: String,
    },
    /// No sandbox has this name.
    #[error("no sandbox named {name} (see `cella ls --all`)")]
    NotFound {
        /// The name.
        name: String,
    },
    /// The sandbox is already running or starting.
    #[error("sandbox {name} is already {status}")]
    AlreadyActive {
        /// The name.
        name: String,
        /// Its status.
        status: String,
    },
    /// The sandbox is not running.
    #[error("sandbox {name} is not running (it is {status})")]
    NotRunning {
        /// The name.
        name: String,
        /// Its status.
        status: String,
    },
    /// The sandbox must be stopped before this operation.
    #[error("sandbox {name} is {status}: stop it first, or pass --force")]
    StillActive {
        /// The name.
        name: String,
        /// Its status.
        status: String,
    },
    /// Another process is starting or running this sandbox.
    #[error("sandbox {name} is being started by another process")]
    LauncherBusy {
        /// The name.
        name: String,
    },
    /// The sandbox process did not exit in time.
    #[error("sandbox {name} (pid {pid}) did not stop within {waited:?}; try `cella stop --force {name}`")]
    StopTimeout {
        /// The name.
        name: String,
        /// Its sandbox process.
        pid: i32,
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// The sandbox is starting but its process has not recorded its run yet.
    #[error(
        "sandbox {name} is starting but its process has not recorded itself within {waited:?}; \
         retry `cella stop {name}`"
    )]
    NoCurrentRun {
        /// The name.
        name: String,
        /// How long we waited for the run row.
        waited: std::time::Duration,
    },
    /// The state database failed.
    #[error(transparent)]
    Db(#[from] cella_db::DbError),
    /// Lifecycle bookkeeping failed.
    #[error(transparent)]
    Lifecycle(#[from] cella_runtime::lifecycle::LifecycleError),
    /// The `cella` binary that runs sandbox processes was not found.
    #[error("cannot find the cella binary: set CELLA_BIN or put cella on PATH")]
    NoBinary,
    /// The sandbox process failed to start or to boot the guest.
    #[error(transparent)]
    Launch(#[from] cella_runtime::launch::LaunchError),
    /// Talking to the sandbox failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}
