//! `cella-agent`: the first process (PID 1) of every cella guest.
//!
//! The agent boots the guest's userspace (mounts, kernel modules, the overlay root, hostname,
//! loopback), opens the named virtio-console port and serves the host's framed protocol
//! ([`cella_protocol`]): exec sessions with flow-controlled stdio, signals, heartbeats and an
//! orderly shutdown that ends in a poweroff only after the host acknowledged the final frame.
//!
//! The crate is a library plus a thin binary so that everything above the kernel boundary (the
//! protocol server, sessions, process spawning, PATH lookup, passwd parsing, command-line
//! parsing) is tested on the host with real processes, without a VM. Kernel-facing steps that
//! only make sense as PID 1 (mounts, switch root, poweroff) live in [`boot`] and [`shutdown`]
//! and are proven by booting a guest.

pub mod boot;
pub mod cmdline;
pub mod console;
pub mod error;
pub mod exec;
pub mod fdio;
pub mod port;
pub mod reaper;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod user;

pub use error::AgentError;
pub use reaper::{ReapScope, Reaper};
pub use server::{serve, ServeError, ServeOptions, ServeOutcome};

/// The agent's version, reported to the host in `Hello`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
