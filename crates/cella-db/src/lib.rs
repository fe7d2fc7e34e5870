//! cella's state database: SQLite in WAL mode under `CELLA_HOME/db/cella.db`.
//!
//! This crate owns the connection settings ([`Db::open`]), the schema and its migrations, the
//! row types and every SQL statement cella runs. It knows nothing about processes or
//! directories (the home layout is `cella_runtime::home`); liveness, cleanup and the startup
//! sweep live in `cella_runtime::lifecycle` and use the operations here.
//!
//! Invariants every operation keeps:
//! - every state change is conditional ("only while still X") and reports whether it won, so
//!   racing processes produce one winner and never clobber each other;
//! - every read-then-write runs in a `BEGIN IMMEDIATE` transaction (a deferred one that
//!   upgrades to a write fails with `SQLITE_BUSY` at once, whatever the busy timeout);
//! - timestamps are unix milliseconds ([`now_ms`]);
//! - a sandbox name is always a safe single path component ([`validate_sandbox_name`]).

mod claim;
mod clock;
mod error;
mod lease;
mod migrate;
mod name;
mod open;
mod run;
mod sandbox;
mod status;

pub use claim::{CleanupClaim, CLEANUP_CLAIM_DURATION};
pub use clock::{now_ms, unique_token};
pub use error::DbError;
pub use lease::{LeaseGrant, LeaseRow};
pub use migrate::{SANDBOX_MAINTENANCE_LEASE, SCHEMA_VERSION};
pub use name::{validate_sandbox_name, MAX_SANDBOX_NAME_LEN};
pub use open::{Db, BUSY_TIMEOUT, MAX_CONNECTIONS};
pub use run::{NewRun, RunEnd, RunFinish, RunRow};
pub use sandbox::{NewSandbox, SandboxKey, SandboxRow, SandboxSummary};
pub use status::{ParseStatusError, RunStatus, SandboxStatus, TerminationReason};
