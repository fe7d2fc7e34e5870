//! The enumerations stored as text in the database.
//!
//! Each value is stored as its variant name (`"Running"`, `"MaxDurationExceeded"`), which is
//! also its [`Display`](std::fmt::Display) and serde form. There are no SQL `CHECK` constraints
//! on these columns (SQLite cannot alter a constraint without rebuilding the table); instead every
//! write goes through these types and every read parses them back, so an unknown value surfaces
//! as [`crate::DbError::InvalidValue`] rather than a silently wrong state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A stored string that is not a variant of the expected enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind}")]
pub struct ParseStatusError {
    /// Name of the enum, e.g. `SandboxStatus`.
    pub kind: &'static str,
    /// The rejected text.
    pub value: String,
}

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseStatusError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $(stringify!($variant) => Ok($name::$variant),)+
                    _ => Err(ParseStatusError { kind: stringify!($name), value: s.to_owned() }),
                }
            }
        }
    };
}

text_enum! {
    /// Where a sandbox is in its life. See DESIGN.md, "Lifecycle".
    SandboxStatus {
        /// Row written by `create`; never started.
        Created,
        /// The launcher holds the launcher lock and is spawning the sandbox process.
        Starting,
        /// The agent answered the handshake; the sandbox serves clients.
        Running,
        /// `stop` asked the guest to shut down; waiting for it to exit.
        Draining,
        /// The VM is paused; its sandbox process is alive.
        Paused,
        /// Ended in an orderly way; can be started again if persistent.
        Stopped,
        /// Ended abnormally, or its sandbox process died without recording an end.
        Crashed,
    }
}

text_enum! {
    /// Whether a run (one boot of a sandbox) is still going.
    RunStatus {
        /// The sandbox process recorded in the run is expected to be alive.
        Running,
        /// The run ended; its exit and reason are recorded.
        Terminated,
    }
}

text_enum! {
    /// Why a run ended.
    TerminationReason {
        /// The guest workload finished and the VM powered off cleanly.
        Completed,
        /// The guest workload or the boot failed.
        Failed,
        /// The run reached its maximum duration.
        MaxDurationExceeded,
        /// No exec session and no client for the idle period.
        IdleTimeout,
        /// The agent's heartbeat stopped after the boot grace period.
        AgentUnresponsive,
        /// `stop` (or a dead sandbox process found Draining) ended the run.
        ShutdownRequested,
        /// The host asked the sandbox to drain (e.g. host shutdown).
        DrainRequested,
        /// The sandbox process was ended by a signal.
        Signal,
        /// cella itself failed, or the sandbox process died without recording an end.
        InternalError,
    }
}

impl SandboxStatus {
    /// Stopped or Crashed: no process belongs to the sandbox any more.
    pub const TERMINAL: &'static [SandboxStatus] =
        &[SandboxStatus::Stopped, SandboxStatus::Crashed];

    /// Statuses whose sandbox process is expected to be alive (or about to be).
    pub const ACTIVE: &'static [SandboxStatus] = &[
        SandboxStatus::Starting,
        SandboxStatus::Running,
        SandboxStatus::Draining,
        SandboxStatus::Paused,
    ];

    /// True for Stopped and Crashed.
    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    /// True for Starting, Running, Draining and Paused.
    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_its_stored_text() {
        for s in SandboxStatus::ALL {
            assert_eq!(s.to_string().parse::<SandboxStatus>().unwrap(), *s);
        }
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), *s);
        }
        for r in TerminationReason::ALL {
            assert_eq!(r.as_str().parse::<TerminationReason>().unwrap(), *r);
        }
    }

    #[test]
    fn unknown_status_text_is_rejected_with_its_kind() {
        let err = "running".parse::<SandboxStatus>().unwrap_err();
        assert_eq!(err.kind, "SandboxStatus");
        assert_eq!(err.value, "running");
    }

    #[test]
    fn serde_form_matches_stored_text() {
        let json = serde_json::to_string(&TerminationReason::MaxDurationExceeded).unwrap();
        assert_eq!(json, "\"MaxDurationExceeded\"");
    }

    #[test]
    fn terminal_and_active_partition_all_but_created() {
        for s in SandboxStatus::ALL {
            let expected = *s != SandboxStatus::Created;
            assert_eq!(s.is_terminal() ^ s.is_active(), expected, "{s}");
        }
    }
}
