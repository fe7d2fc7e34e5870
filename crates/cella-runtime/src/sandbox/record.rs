//! The sandbox process's own entries in the state database: its run row, the Starting ->
//! Running flip once the agent answered, and the run's end with the sandbox's final status.
//!
//! Who ends the run owns the outcome: [`RunRecord::finish`] closes the run and sets the status
//! in one transaction, and only while the run is still open, so a reconciler that already
//! declared this process dead and the process itself never record two different endings.

use cella_db::{Db, DbError, RunEnd, SandboxStatus, TerminationReason};

use super::Termination;
use crate::backend::VmExit;
use crate::lifecycle::{LifecycleError, ProcessIdentity};

/// Longest termination detail stored; details can quote guest console output.
const MAX_DETAIL_LEN: usize = 4096;

/// Statuses a live sandbox process may end its run from.
const LIVE: &[SandboxStatus] =
    &[SandboxStatus::Starting, SandboxStatus::Running, SandboxStatus::Draining];

/// This process's run of one sandbox.
pub struct RunRecord {
    db: Db,
    name: String,
    run_id: i64,
}

impl RunRecord {
    /// Inserts the run row with this process's identity; the sandbox must be Starting.
    pub async fn begin(db: Db, name: &str) -> Result<Self, LifecycleError> {
        let identity = ProcessIdentity::current()?;
        let run = db.insert_run(name, &identity.to_new_run()).await?;
        Ok(Self { db, name: name.to_string(), run_id: run.id })
    }

    /// The database this record writes to.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Marks the sandbox Running (only while it is still Starting).
    pub async fn running(&self) -> Result<bool, DbError> {
        self.db
            .set_sandbox_status(
                self.name.as_str(),
                SandboxStatus::Running,
                &[SandboxStatus::Starting],
            )
            .await
    }

    /// Records a boot that failed: run Failed, sandbox Crashed.
    pub async fn boot_failed(&self, detail: &str) {
        let end = RunEnd::reason(TerminationReason::Failed, truncate(detail));
        self.close(&end, SandboxStatus::Crashed).await;
    }

    /// Records a boot that a host signal (or `cella stop`) cut short: nothing ran yet and the
    /// VM was killed with the boot, so the sandbox is Stopped, not Crashed.
    pub async fn interrupted(&self, signal: &str) {
        let detail = format!("{signal} while the guest was booting");
        let end = RunEnd::reason(TerminationReason::Signal, detail);
        self.close(&end, SandboxStatus::Stopped).await;
    }

    /// Records how the run ended. A sandbox that `stop` marked Draining ends with
    /// ShutdownRequested whatever triggered the last step.
    pub async fn finish(&self, termination: &Termination) {
        let reason = termination.reason;
        let (exit_code, exit_signal) = match termination.vm_exit {
            Some(VmExit::Exited(code)) => (Some(code), None),
            Some(VmExit::Signaled(signal)) => (None, Some(signal)),
            None => (None, None),
        };
        let detail = (!termination.detail.is_empty()).then(|| truncate(&termination.detail));
        let end = RunEnd { exit_code, exit_signal, reason, detail };
        let to = if termination.clean { SandboxStatus::Stopped } else { SandboxStatus::Crashed };
        self.close(&end, to).await;
    }

    async fn close(&self, end: &RunEnd, to: SandboxStatus) {
        let if_draining = TerminationReason::ShutdownRequested;
        match self.db.finish_own_run(self.run_id, end, if_draining, to, LIVE).await {
            Ok(done) if !done.run_finished => {
                tracing::warn!(sandbox = %self.name, run = self.run_id, "run was already closed by a reconciler");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(sandbox = %self.name, run = self.run_id, error = %e, "cannot record the end of the run")
            }
        }
    }
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(MAX_DETAIL_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
