//! Startup maintenance: a read-gated, non-blocking lease and a bounded sweep.
//!
//! Every sandbox process runs [`run_startup_maintenance`] once, in the background: it must
//! never delay or abort a boot, so every error is logged here and swallowed, and the result is
//! only a report for tests and benchmarks.
//!
//! The lease (`maintenance_lease` row `sandbox_lifecycle_maintenance`):
//! 1. read the row (one primary-key lookup, no write lock);
//! 2. skip when it is held ([`SkipReason::LeaseHeld`]) or a sweep completed less than
//!    [`MIN_SWEEP_INTERVAL`] ago ([`SkipReason::RecentlyCompleted`]);
//! 3. otherwise try one conditional write that re-checks both under the write lock; of many
//!    racing processes one wins, the rest skip ([`SkipReason::LostRace`]).
//!
//! A burst of fifty starts thus costs fifty indexed reads and at most one sweep per window.
//!
//! The sweep, bounded by [`MAX_ROWS_PER_PHASE`] rows per phase and [`MAX_SWEEP_DURATION`] of
//! wall time (checked between rows), counts per-row errors instead of aborting:
//! 1. reconcile active sandboxes (Starting, Running, Draining, Paused) with
//!    [`super::reconcile_summary`];
//! 2. remove terminal ephemeral sandboxes with [`super::cleanup_sandbox`];
//! 3. remove the launcher lock files of sandboxes that no longer exist (under their lock).
//!
//! Completion is recorded (and the lease released) only when the sweep had no error and
//! finished within its time budget. Otherwise the lease is left to expire after
//! [`LEASE_DURATION`], so the next start retries sooner than the sweep interval, but not in a
//! tight loop. The budget is far below the lease duration, so a sweep never outlives its lease.
//!
//! Known shortcoming: each phase looks at the first [`MAX_ROWS_PER_PHASE`] rows by id, so on a
//! host with more live sandboxes than that, rows past the limit are reconciled only when a
//! command reads them. A cursor kept in the lease row would rotate through them.

use std::time::{Duration, Instant};

use cella_db::{now_ms, Db, LeaseGrant, SandboxStatus, SandboxSummary, SANDBOX_MAINTENANCE_LEASE};

use super::cleanup::remove_lock_file;
use super::{cleanup_sandbox, reconcile_summary, CleanupOutcome};
use crate::home::Home;

/// How long a sweeper holds the lease: forty times the sweep budget, so a live sweeper never
/// loses it, and short enough that a sweeper killed mid-way is replaced within seconds.
pub const LEASE_DURATION: Duration = Duration::from_secs(10);

/// Minimum time between two completed sweeps: a burst of starts triggers one sweep.
pub const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Wall-time budget of one sweep, checked between rows: maintenance shares the machine with
/// the boot it runs beside.
pub const MAX_SWEEP_DURATION: Duration = Duration::from_millis(250);

/// Rows examined per phase of one sweep.
pub const MAX_ROWS_PER_PHASE: u32 = 250;

/// What a call to [`run_startup_maintenance`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaintenanceOutcome {
    /// No sweep ran.
    Skipped(SkipReason),
    /// This process held the lease and swept.
    Swept(SweepReport),
}

/// Why no sweep ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Another process holds the lease.
    LeaseHeld,
    /// A sweep completed less than [`MIN_SWEEP_INTERVAL`] ago.
    RecentlyCompleted,
    /// The lease looked stale but another process acquired it first.
    LostRace,
    /// The lease could not be read or written (logged).
    DatabaseError,
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Active sandboxes examined in phase 1.
    pub examined: u32,
    /// Sandboxes whose row phase 1 changed (marked Crashed or Stopped, stale run closed).
    pub reconciled: u32,
    /// Ephemeral sandboxes phase 2 removed.
    pub removed: u32,
    /// Launcher lock files of sandboxes that no longer exist, removed by phase 3.
    pub locks_removed: u32,
    /// Rows that failed (logged); a failing phase query counts as one.
    pub errors: u32,
    /// The time budget ran out before every selected row was handled.
    pub truncated: bool,
    /// Completion was recorded in the lease row.
    pub completed: bool,
    /// Wall time of the sweep.
    pub elapsed: Duration,
}

impl SweepReport {
    fn succeeded(&self) -> bool {
        self.errors == 0 && !self.truncated
    }
}

/// Runs the lease protocol and, if this process wins, one sweep (see the module docs).
pub async fn run_startup_maintenance(db: &Db, home: &Home) -> MaintenanceOutcome {
    let grant = match acquire(db).await {
        Ok(grant) => grant,
        Err(reason) => return MaintenanceOutcome::Skipped(reason),
    };

    let mut report = sweep(db, home).await;
    if report.succeeded() {
        match db.complete_lease(&grant, now_ms()).await {
            Ok(done) => report.completed = done,
            Err(e) => tracing::warn!(error = %e, "cannot record completed maintenance sweep"),
        }
    }
    tracing::debug!(?report, "startup maintenance sweep finished");
    MaintenanceOutcome::Swept(report)
}

/// Steps 1 to 3 of the lease protocol.
async fn acquire(db: &Db) -> Result<LeaseGrant, SkipReason> {
    let name = SANDBOX_MAINTENANCE_LEASE;
    let now = now_ms();
    let lease = db.read_lease(name).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot read maintenance lease; skipping sweep");
        SkipReason::DatabaseError
    })?;
    if let Some(lease) = lease {
        if lease.is_held(now) {
            return Err(SkipReason::LeaseHeld);
        }
        if lease.completed_within(now, MIN_SWEEP_INTERVAL) {
            return Err(SkipReason::RecentlyCompleted);
        }
    }

    match db.try_acquire_lease(name, now, LEASE_DURATION, MIN_SWEEP_INTERVAL).await {
        Ok(Some(grant)) => Ok(grant),
        Ok(None) => Err(SkipReason::LostRace),
        Err(e) => {
            tracing::warn!(error = %e, "cannot acquire maintenance lease; skipping sweep");
            Err(SkipReason::DatabaseError)
        }
    }
}

/// How much one sweep may do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SweepLimits {
    /// Rows selected per phase.
    pub rows_per_phase: u32,
    /// Wall time for both phases.
    pub duration: Duration,
}

impl SweepLimits {
    /// What every sandbox process uses.
    pub(crate) const DEFAULT: Self =
        Self { rows_per_phase: MAX_ROWS_PER_PHASE, duration: MAX_SWEEP_DURATION };
}

/// Both phases, within the row and time budgets.
async fn sweep(db: &Db, home: &Home) -> SweepReport {
    sweep_within(db, home, SweepLimits::DEFAULT).await
}

/// Both phases, within `limits`.
pub(crate) async fn sweep_within(db: &Db, home: &Home, limits: SweepLimits) -> SweepReport {
    let started = Instant::now();
    let deadline = started + limits.duration;
    let mut report = SweepReport::default();

    reconcile_phase(db, home, deadline, limits.rows_per_phase, &mut report).await;
    cleanup_phase(db, home, deadline, limits.rows_per_phase, &mut report).await;
    lock_phase(db, home, deadline, limits.rows_per_phase, &mut report).await;

    report.elapsed = started.elapsed();
    report
}

/// Phase 3: lock files in `run/` whose sandbox no longer exists. A sandbox process that removed
/// itself still held its lock, and when nobody settled it afterwards (its launcher was killed
/// too) the file stayed. Each is removed under its own lock, so a start racing for the name is
/// never confused (see `launcher_lock`).
async fn lock_phase(db: &Db, home: &Home, deadline: Instant, limit: u32, report: &mut SweepReport) {
    let Ok(entries) = std::fs::read_dir(home.run_dir()) else { return };
    for entry in entries.flatten().take(limit as usize) {
        if Instant::now() >= deadline {
            report.truncated = true;
            return;
        }
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        if crate::config::validate_name(name).is_err() {
            continue;
        }
        match db.find_sandbox(name).await {
            Ok(None) => report.locks_removed += u32::from(remove_lock_file(home, name)),
            Ok(Some(_)) => {}
            Err(e) => {
                report.errors += 1;
                tracing::warn!(sandbox = %name, error = %e, "cannot check the owner of a lock file");
            }
        }
    }
}

async fn reconcile_phase(
    db: &Db,
    home: &Home,
    deadline: Instant,
    limit: u32,
    report: &mut SweepReport,
) {
    let Some(rows) = select(db, &[false, true], SandboxStatus::ACTIVE, limit, report).await else {
        return;
    };
    for summary in &rows {
        if Instant::now() >= deadline {
            report.truncated = true;
            return;
        }
        report.examined += 1;
        match reconcile_summary(db, home, summary).await {
            Ok(outcome) if outcome.changed() => report.reconciled += 1,
            Ok(_) => {}
            Err(e) => {
                report.errors += 1;
                let sandbox = &summary.sandbox.name;
                tracing::warn!(%sandbox, error = %e, "cannot reconcile sandbox");
            }
        }
    }
}

async fn cleanup_phase(
    db: &Db,
    home: &Home,
    deadline: Instant,
    limit: u32,
    report: &mut SweepReport,
) {
    let Some(rows) = select(db, &[true], SandboxStatus::TERMINAL, limit, report).await else {
        return;
    };
    for summary in &rows {
        if Instant::now() >= deadline {
            report.truncated = true;
            return;
        }
        match cleanup_sandbox(db, home, summary.sandbox.id).await {
            Ok(CleanupOutcome::Removed) => report.removed += 1,
            // Already logged where the removal failed.
            Ok(CleanupOutcome::DirRemoveFailed) => report.errors += 1,
            Ok(_) => {}
            Err(e) => {
                report.errors += 1;
                let sandbox = &summary.sandbox.name;
                tracing::warn!(%sandbox, error = %e, "cannot clean up sandbox");
            }
        }
    }
}

async fn select(
    db: &Db,
    ephemeral: &[bool],
    statuses: &[SandboxStatus],
    limit: u32,
    report: &mut SweepReport,
) -> Option<Vec<SandboxSummary>> {
    match db.sandboxes_in_status(ephemeral, statuses, limit).await {
        Ok(rows) => Some(rows),
        Err(e) => {
            report.errors += 1;
            tracing::warn!(error = %e, "cannot list sandboxes for maintenance");
            None
        }
    }
}
