//! Removing a terminal sandbox: directory first, then row, exactly once.
//!
//! Protocol (shared by the self-clean path of a sandbox process, the startup sweep and `rm`):
//! 1. **Claim** the row ([`Db::claim_cleanup`]): in one `BEGIN IMMEDIATE` transaction, check
//!    that it exists, is ephemeral (automatic cleanup only), is Stopped or Crashed and carries
//!    no live claim, then write a unique token and an expiry. Of any number of concurrent
//!    cleaners exactly one gets the claim; the others return [`CleanupOutcome::AlreadyClaimed`]
//!    (claim live) or [`CleanupOutcome::AlreadyGone`] (row deleted already). While claimed, the
//!    row refuses status changes, so nobody restarts it under the cleaner.
//! 2. **Check liveness**: a run still marked Running whose process is alive (and is not the
//!    caller itself, which is the self-clean path finishing) means someone still uses the
//!    sandbox: release the claim, [`CleanupOutcome::SkippedLivePid`].
//! 3. **Remove the directory** `sandboxes/<name>/`. A missing directory counts as removed (a
//!    previous cleaner got this far and died). On failure release the claim and keep the row,
//!    so the failure stays visible and the next sweep retries: [`CleanupOutcome::DirRemoveFailed`].
//!    Stale sockets of a killed sandbox process go with it.
//! 4. **Delete the row** only while our token holds the claim and the row is still terminal
//!    (and ephemeral): [`CleanupOutcome::Removed`]. Runs go with it (cascade). Then the
//!    launcher lock file, if its lock is free (see `launcher_lock`).
//!
//! A cleaner that dies between 3 and 4 leaves a claimed row without a directory; the claim
//! expires after [`cella_db::CLEANUP_CLAIM_DURATION`] and the next cleaner finishes the job.

use std::io;
use std::path::{Path, PathBuf};

use cella_db::{CleanupClaim, Db, RunStatus, SandboxKey, SandboxSummary};

use super::launcher_lock::LauncherLock;
use super::liveness::{is_alive, ProcessIdentity};
use super::LifecycleError;
use crate::home::Home;

/// How a cleanup attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CleanupOutcome {
    /// This call removed the directory and then the row.
    Removed,
    /// The directory could not be removed; the row was kept for a later retry.
    DirRemoveFailed,
    /// No such sandbox: someone removed it already.
    AlreadyGone,
    /// Another cleaner holds the claim right now.
    AlreadyClaimed,
    /// The sandbox is persistent; automatic cleanup leaves it alone.
    SkippedPersistent,
    /// The sandbox is not Stopped or Crashed.
    SkippedActive,
    /// The sandbox is terminal but a process recorded in its running run is alive.
    SkippedLivePid,
}

/// Whether only ephemeral sandboxes may be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    EphemeralOnly,
    Any,
}

/// Removes a terminal ephemeral sandbox (self-clean and sweep path). A directory that cannot
/// be removed is logged here and reported as [`CleanupOutcome::DirRemoveFailed`].
pub async fn cleanup_sandbox(
    db: &Db,
    home: &Home,
    key: impl Into<SandboxKey>,
) -> Result<CleanupOutcome, LifecycleError> {
    match remove(db, home, key.into(), Scope::EphemeralOnly).await {
        Err(LifecycleError::RemoveDir { name, path, source }) => {
            tracing::warn!(sandbox = %name, path = %path.display(), error = %source,
                "cannot remove sandbox directory; keeping its record for a later retry");
            Ok(CleanupOutcome::DirRemoveFailed)
        }
        other => other,
    }
}

/// Removes a terminal or never-started (Created) sandbox, persistent or not (the `rm` path; the
/// caller stops it first). A directory that cannot be removed is returned as
/// [`LifecycleError::RemoveDir`], row kept.
/// Never returns [`CleanupOutcome::SkippedPersistent`] or [`CleanupOutcome::DirRemoveFailed`].
pub async fn remove_sandbox(
    db: &Db,
    home: &Home,
    key: impl Into<SandboxKey>,
) -> Result<CleanupOutcome, LifecycleError> {
    remove(db, home, key.into(), Scope::Any).await
}

async fn remove(
    db: &Db,
    home: &Home,
    key: SandboxKey,
    scope: Scope,
) -> Result<CleanupOutcome, LifecycleError> {
    let ephemeral_only = scope == Scope::EphemeralOnly;
    let name = match &key {
        SandboxKey::Name(name) => Some(name.clone()),
        SandboxKey::Id(_) => None,
    };
    let (token, summary) = match db.claim_cleanup(key, ephemeral_only).await? {
        CleanupClaim::Claimed { token, summary } => (token, summary),
        CleanupClaim::NotFound => {
            // A sandbox process that removed itself could not remove the lock it held.
            if let Some(name) = name {
                remove_lock_file(home, &name);
            }
            return Ok(CleanupOutcome::AlreadyGone);
        }
        CleanupClaim::NotEphemeral => return Ok(CleanupOutcome::SkippedPersistent),
        CleanupClaim::NotTerminal(_) => return Ok(CleanupOutcome::SkippedActive),
        CleanupClaim::HeldByOther => return Ok(CleanupOutcome::AlreadyClaimed),
    };
    let sandbox = &summary.sandbox;

    if has_live_run(&summary) {
        db.release_cleanup_claim(sandbox.id, &token).await?;
        return Ok(CleanupOutcome::SkippedLivePid);
    }

    let dir = home.sandbox_dir(&sandbox.name);
    if let Err(source) = remove_dir(dir.clone()).await {
        db.release_cleanup_claim(sandbox.id, &token).await?;
        return Err(LifecycleError::RemoveDir { name: sandbox.name.clone(), path: dir, source });
    }

    // A sandbox process that was killed could not unlink its sockets. Nobody serves them now
    // (no live run, and the claim keeps the name from starting again), so they go with the
    // directory. The launcher lock file goes after the row, under its own lock.
    for socket in [home.client_socket(&sandbox.name), home.agent_port_socket(&sandbox.name)] {
        if let Err(e) = std::fs::remove_file(&socket) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(sandbox = %sandbox.name, path = %socket.display(), error = %e,
                    "cannot remove a stale socket");
            }
        }
    }

    if db.delete_claimed_sandbox(sandbox.id, &token, ephemeral_only).await? {
        tracing::info!(sandbox = %sandbox.name, "removed sandbox");
        remove_lock_file(home, &sandbox.name);
        return Ok(CleanupOutcome::Removed);
    }
    // Our claim expired and another cleaner took over (or finished) meanwhile.
    match db.find_sandbox(sandbox.id).await? {
        None => Ok(CleanupOutcome::AlreadyGone),
        Some(_) => Ok(CleanupOutcome::AlreadyClaimed),
    }
}

/// Removes the launcher lock file of a sandbox that no longer exists, if nobody holds the lock
/// (the self-clean path holds it until its process exits; the caller that settles it after that
/// removes the file). Failures only cost an empty file, so they are logged.
/// Returns whether the file was removed.
pub(crate) fn remove_lock_file(home: &Home, name: &str) -> bool {
    match LauncherLock::try_acquire_for(home, name) {
        Ok(Some(lock)) => match lock.remove() {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(sandbox = %name, error = %e, "cannot remove the lock file");
                false
            }
        },
        Ok(None) => false,
        Err(e) => {
            tracing::debug!(sandbox = %name, error = %e, "cannot take the lock to remove it");
            false
        }
    }
}

/// A run marked Running whose process is alive and is not the caller.
fn has_live_run(summary: &SandboxSummary) -> bool {
    let Some(run) = summary.latest_run.as_ref().filter(|r| r.status == RunStatus::Running) else {
        return false;
    };
    let recorded = ProcessIdentity::from_run(run);
    let is_self = ProcessIdentity::current().is_ok_and(|me| me == recorded);
    !is_self && is_alive(&recorded)
}

/// Removes `dir` and everything under it on the blocking pool; a missing directory is success.
async fn remove_dir(dir: PathBuf) -> io::Result<()> {
    let joined = tokio::task::spawn_blocking(move || remove_dir_blocking(&dir)).await;
    joined.unwrap_or_else(|e| Err(io::Error::other(e)))
}

fn remove_dir_blocking(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
