//! The agent's top-level error: one variant per subsystem, each carrying its own typed error.
//!
//! Every [`AgentError`] is fatal: `main` prints it (with its source chain, [`chain`]) to the
//! console and powers the guest off. Recoverable failures (one module, one session, one bad
//! frame) never become an `AgentError`; they are handled where they happen.

use crate::boot::BootError;
use crate::port::PortError;
use crate::server::ServeError;

/// A failure that ends the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The boot sequence failed.
    #[error("boot failed")]
    Boot(#[from] BootError),
    /// The host port could not be found or opened.
    #[error("agent port unavailable")]
    Port(#[from] PortError),
    /// The async runtime or the reaper could not start.
    #[error("cannot start the agent runtime")]
    Runtime(#[source] std::io::Error),
    /// Serving the host failed beyond recovery.
    #[error("serving the host failed")]
    Serve(#[from] ServeError),
}

/// Formats an error and all its sources as one line: `a: b: c`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        line.push_str(": ");
        line.push_str(&e.to_string());
        source = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_sources() {
        let err = AgentError::Runtime(std::io::Error::other("no epoll"));
        assert_eq!(chain(&err), "cannot start the agent runtime: no epoll");
    }
}
