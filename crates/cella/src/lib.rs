//! The cella SDK: run untrusted code in lightweight VMs from Rust.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cella::SandboxError> {
//! let sandbox = cella::Sandbox::builder("demo").ephemeral(true).create().await?;
//! let out = sandbox.exec_output(&["sh", "-c", "echo hello"]).await?;
//! assert_eq!(out.stdout, b"hello\n");
//! sandbox.stop(std::time::Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```
//!
//! Every sandbox is owned by its own `cella sandbox` process (no daemon); this crate writes the
//! sandbox's configuration, spawns that process and talks to it over the sandbox's Unix socket
//! with the framed protocol of `cella-protocol`.

pub mod client;
pub mod error;
pub mod manage;
pub mod sandbox;

pub use cella_db::{
    RunRow, RunStatus, SandboxRow, SandboxStatus, SandboxSummary, TerminationReason,
};
pub use cella_protocol::{ExecStart, Exited, SpawnFailure, WindowSize};
pub use cella_runtime::config::{BackendKind, SandboxConfig};
pub use cella_runtime::home::Home;
pub use client::{Connection, ExecIo};
pub use error::{ClientError, SandboxError};
pub use manage::Cella;
pub use sandbox::{find_cella_bin, Output, Sandbox, SandboxBuilder, Starting};
