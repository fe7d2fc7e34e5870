//! Sandbox lifecycle: liveness of run processes, reconciling rows with reality, cleanup of
//! terminal sandboxes and the startup maintenance sweep.
//!
//! The state database (`cella_db`) records what each sandbox process said about itself; this
//! module keeps that record honest when a process could not speak (killed, host rebooted):
//! - [`liveness`]: is the process in a run row still that process (pid + start time + boot id);
//! - [`reconcile`]: a row whose process is dead becomes Crashed (or Stopped if Draining), on
//!   every command that reads it;
//! - [`cleanup`]: removing a terminal sandbox, directory before row, exactly once under races;
//! - [`maintenance`]: the read-gated lease and bounded sweep each sandbox process runs at start;
//! - [`launcher_lock`]: the `run/<name>.lock` flock held for a sandbox process's whole life.
//!
//! Everything here is conditional and idempotent: any number of processes may run any of it
//! at once against one database, and each row ends in one consistent state.

pub mod cleanup;
mod error;
pub mod launcher_lock;
pub mod liveness;
pub mod maintenance;
pub mod reconcile;

#[cfg(test)]
mod tests;

pub use cleanup::{cleanup_sandbox, remove_sandbox, CleanupOutcome};
pub use error::{LifecycleError, LivenessError};
pub use launcher_lock::LauncherLock;
pub use liveness::{is_alive, Liveness, ProcessIdentity};
pub use maintenance::{
    run_startup_maintenance, MaintenanceOutcome, SkipReason, SweepReport, LEASE_DURATION,
    MAX_ROWS_PER_PHASE, MAX_SWEEP_DURATION, MIN_SWEEP_INTERVAL,
};
pub use reconcile::{
    list_reconciled, needs_reconcile, reconcile_sandbox, reconcile_summary, ReconcileOutcome,
};
