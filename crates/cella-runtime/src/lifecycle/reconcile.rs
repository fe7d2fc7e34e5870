//! Reconcile: make a sandbox row agree with whether its process is alive.
//!
//! A sandbox process records its own end, but one killed with SIGKILL (or a host reboot)
//! records nothing and leaves its row Running. Every command that reads a sandbox (`ls`,
//! `inspect`, `start`, `stop`, `rm`, `exec`) and the startup sweep pass the rows they read
//! through [`reconcile_summary`], so a dead sandbox shows as dead at the very next command.
//!
//! Rules, by the evidence found:
//! - latest run Running and its process alive ([`super::liveness`]): nothing to do;
//! - latest run Running and its process dead: the run is closed and the sandbox moves, in one
//!   transaction and only if both are still as read: Running, Starting or Paused become Crashed
//!   (run: InternalError); Draining becomes Stopped (run: ShutdownRequested). A terminal
//!   sandbox only gets its stale run closed;
//! - no live run evidence (no run row, or the latest already Terminated) for an active
//!   sandbox: it may still be starting, so it is left alone unless its launcher lock is
//!   provably free ([`super::LauncherLock`]); then, still holding that lock, it becomes Crashed
//!   (Stopped if Draining), only while no run appeared meanwhile.
//!
//! Every write is conditional; losing a race to another reconciler or to the sandbox process
//! itself is a normal outcome ([`ReconcileOutcome::LostRace`]), not an error.

use cella_db::{
    Db, RunEnd, RunRow, RunStatus, SandboxKey, SandboxStatus, SandboxSummary, TerminationReason,
};

use super::liveness::{check_liveness, HostProc, Liveness, ProcessIdentity};
use super::{LauncherLock, LifecycleError};
use crate::home::Home;

/// What reconciling one sandbox did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileOutcome {
    /// The sandbox does not exist.
    NotFound,
    /// Its latest run's process is alive.
    Alive,
    /// Created, Stopped or Crashed with no stale run: nothing to check.
    Inactive,
    /// Active with no live run, but its launcher lock is held: still starting.
    LauncherBusy,
    /// Its process was dead: now Crashed.
    MarkedCrashed,
    /// It was Draining and its process was dead: now Stopped.
    MarkedStopped,
    /// A terminal sandbox's run was still marked Running: the run was closed.
    ClosedStaleRun,
    /// Someone else changed the row first; re-read it for the current state.
    LostRace,
}

impl ReconcileOutcome {
    /// True when this call changed the database.
    pub fn changed(self) -> bool {
        matches!(self, Self::MarkedCrashed | Self::MarkedStopped | Self::ClosedStaleRun)
    }
}

/// True when the summary could be stale: an active status or a run still marked Running.
pub fn needs_reconcile(summary: &SandboxSummary) -> bool {
    summary.sandbox.status.is_active()
        || summary.latest_run.as_ref().is_some_and(|r| r.status == RunStatus::Running)
}

/// Reads one sandbox and reconciles it.
pub async fn reconcile_sandbox(
    db: &Db,
    home: &Home,
    key: impl Into<SandboxKey>,
) -> Result<ReconcileOutcome, LifecycleError> {
    match db.find_sandbox_summary(key).await? {
        Some(summary) => reconcile_summary(db, home, &summary).await,
        None => Ok(ReconcileOutcome::NotFound),
    }
}

/// Lists every sandbox with its latest run, reconciling each stale-looking row first (what `ls`
/// shows). Re-reads the list only when something changed.
pub async fn list_reconciled(db: &Db, home: &Home) -> Result<Vec<SandboxSummary>, LifecycleError> {
    let summaries = db.list_sandbox_summaries().await?;
    let mut changed = false;
    for summary in summaries.iter().filter(|s| needs_reconcile(s)) {
        let outcome = reconcile_summary(db, home, summary).await?;
        changed |= outcome.changed() || outcome == ReconcileOutcome::LostRace;
    }
    if changed {
        return Ok(db.list_sandbox_summaries().await?);
    }
    Ok(summaries)
}

/// Reconciles a sandbox as read in `summary` (see the module docs for the rules).
pub async fn reconcile_summary(
    db: &Db,
    home: &Home,
    summary: &SandboxSummary,
) -> Result<ReconcileOutcome, LifecycleError> {
    let status = summary.sandbox.status;
    match summary.latest_run.as_ref().filter(|r| r.status == RunStatus::Running) {
        Some(run) => match check_liveness(&HostProc, &ProcessIdentity::from_run(run)) {
            Liveness::Alive => Ok(ReconcileOutcome::Alive),
            Liveness::Dead(why) => {
                let sandbox = &summary.sandbox.name;
                tracing::debug!(%sandbox, pid = run.pid, ?why, "run process is dead");
                close_dead_run(db, summary, run).await
            }
        },
        None if status.is_active() => fail_if_launcher_gone(db, home, summary).await,
        None => Ok(ReconcileOutcome::Inactive),
    }
}

/// Where a sandbox goes when its process is found dead, and the reason recorded on its run.
fn dead_transition(status: SandboxStatus) -> (SandboxStatus, TerminationReason) {
    match status {
        SandboxStatus::Draining => (SandboxStatus::Stopped, TerminationReason::ShutdownRequested),
        _ => (SandboxStatus::Crashed, TerminationReason::InternalError),
    }
}

fn outcome_for(to: SandboxStatus) -> ReconcileOutcome {
    match to {
        SandboxStatus::Stopped => ReconcileOutcome::MarkedStopped,
        _ => ReconcileOutcome::MarkedCrashed,
    }
}

async fn close_dead_run(
    db: &Db,
    summary: &SandboxSummary,
    run: &RunRow,
) -> Result<ReconcileOutcome, LifecycleError> {
    let sandbox = &summary.sandbox;
    let (to, reason) = dead_transition(sandbox.status);
    let detail = format!("sandbox process {} died without recording its end", run.pid);
    let end = RunEnd::reason(reason, detail);

    if !sandbox.status.is_active() {
        let closed = db.finish_run(run.id, &end).await?;
        return Ok(if closed {
            ReconcileOutcome::ClosedStaleRun
        } else {
            ReconcileOutcome::LostRace
        });
    }

    let finish = db.finish_run_and_set_status(run.id, &end, to, &[sandbox.status]).await?;
    if finish.status_changed {
        tracing::info!(sandbox = %sandbox.name, pid = run.pid, from = %sandbox.status, %to,
            "sandbox process is gone; recorded its end");
        return Ok(outcome_for(to));
    }
    Ok(ReconcileOutcome::LostRace)
}

async fn fail_if_launcher_gone(
    db: &Db,
    home: &Home,
    summary: &SandboxSummary,
) -> Result<ReconcileOutcome, LifecycleError> {
    let sandbox = &summary.sandbox;
    let Some(_lock) = LauncherLock::try_acquire_for(home, &sandbox.name)? else {
        return Ok(ReconcileOutcome::LauncherBusy);
    };

    // Holding the lock: no launcher and no sandbox process of this sandbox is alive.
    let (to, _) = dead_transition(sandbox.status);
    let changed =
        db.set_sandbox_status_without_active_run(sandbox.id, to, &[sandbox.status]).await?;
    if !changed {
        return Ok(ReconcileOutcome::LostRace);
    }
    tracing::info!(sandbox = %sandbox.name, from = %sandbox.status, %to,
        "sandbox never recorded a live run and its launcher is gone");
    Ok(outcome_for(to))
}
