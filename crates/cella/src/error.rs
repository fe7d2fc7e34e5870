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
    #[error("the sandbox process closed the connection before the command finished; see `cella logs`")]
    Disconnected,
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
    /// The sandbox's files could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
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
