//! Cleanup claims: which process is removing a sandbox right now.
//!
//! Removing a sandbox is two steps that cannot share one transaction: delete the directory
//! (file system), then delete the row (database). A claim makes the pair exclusive without
//! holding a database lock across file-system work: `claim_cleanup` writes a unique token and
//! an expiry into the row in one `BEGIN IMMEDIATE` transaction, only if the row is terminal
//! (and ephemeral, for automatic cleanup) and carries no live claim. While the claim is live
//! every status change and every unclaimed delete of the row is refused, so the sandbox cannot be
//! restarted under the cleaner's feet. The final delete requires the same token.
//!
//! A claim expires after [`CLEANUP_CLAIM_DURATION`], so a cleaner that dies mid-way delays the
//! next attempt by at most that long; a failed directory removal releases its claim at once so
//! the row stays visible and the next sweep retries it.

use std::time::Duration;

use crate::sandbox::{read_summary, NO_LIVE_CLAIM};
use crate::{now_ms, unique_token, Db, DbError, SandboxKey, SandboxStatus, SandboxSummary};

/// How long a cleanup claim keeps other cleaners away. Far longer than removing a sandbox
/// directory takes; short enough that a cleaner killed mid-way is retried within a minute.
pub const CLEANUP_CLAIM_DURATION: Duration = Duration::from_secs(60);

/// The result of trying to claim a sandbox for removal.
#[derive(Debug, Clone, PartialEq)]
pub enum CleanupClaim {
    /// This caller holds the claim; `token` authorises the final delete.
    Claimed {
        /// Unique token written into the row.
        token: String,
        /// The sandbox and its latest run, as read under the claim.
        summary: Box<SandboxSummary>,
    },
    /// No such sandbox (already removed).
    NotFound,
    /// The sandbox is persistent and an ephemeral-only claim was asked for.
    NotEphemeral,
    /// The sandbox is not Stopped or Crashed.
    NotTerminal(SandboxStatus),
    /// Another cleaner holds a live claim.
    HeldByOther,
}

impl Db {
    /// Claims a terminal sandbox for removal (see the module docs). With `ephemeral_only` (the
    /// sweep and self-clean), persistent sandboxes are refused with
    /// [`CleanupClaim::NotEphemeral`]; without it (`rm`), a Created sandbox, which never ran,
    /// may be claimed as well.
    pub async fn claim_cleanup(
        &self,
        key: impl Into<SandboxKey>,
        ephemeral_only: bool,
    ) -> Result<CleanupClaim, DbError> {
        let key = key.into();
        let err = |e| DbError::query("claim for cleanup", &key, e);
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await.map_err(err)?;

        let Some(summary) = read_summary(&mut tx, &key).await? else {
            return Ok(CleanupClaim::NotFound);
        };
        let sandbox = &summary.sandbox;
        if ephemeral_only && !sandbox.ephemeral {
            return Ok(CleanupClaim::NotEphemeral);
        }
        let removable = sandbox.status.is_terminal()
            || (!ephemeral_only && sandbox.status == SandboxStatus::Created);
        if !removable {
            return Ok(CleanupClaim::NotTerminal(sandbox.status));
        }

        let now = now_ms();
        let token = unique_token();
        let expires = now + CLEANUP_CLAIM_DURATION.as_millis() as i64;
        let sql = format!(
            "UPDATE sandbox AS s SET cleanup_token = ?, cleanup_claim_expires_at = ? \
             WHERE s.id = ? AND {NO_LIVE_CLAIM}"
        );
        let done = sqlx::query(&sql)
            .bind(&token)
            .bind(expires)
            .bind(sandbox.id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        if done.rows_affected() == 0 {
            return Ok(CleanupClaim::HeldByOther);
        }
        tx.commit().await.map_err(err)?;
        Ok(CleanupClaim::Claimed { token, summary: Box::new(summary) })
    }

    /// Gives up a claim (after a failed removal), only if `token` still holds it.
    pub async fn release_cleanup_claim(
        &self,
        sandbox_id: i64,
        token: &str,
    ) -> Result<bool, DbError> {
        let done = sqlx::query(
            "UPDATE sandbox SET cleanup_token = NULL, cleanup_claim_expires_at = NULL \
             WHERE id = ? AND cleanup_token = ?",
        )
        .bind(sandbox_id)
        .bind(token)
        .execute(self.pool())
        .await
        .map_err(|e| DbError::query("release cleanup claim of", SandboxKey::Id(sandbox_id), e))?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a claimed sandbox row, only while `token` holds the claim and the row is still
    /// terminal (and ephemeral, with `ephemeral_only`; or Created, without it). Returns whether
    /// the row was deleted.
    pub async fn delete_claimed_sandbox(
        &self,
        sandbox_id: i64,
        token: &str,
        ephemeral_only: bool,
    ) -> Result<bool, DbError> {
        let done = sqlx::query(
            "DELETE FROM sandbox WHERE id = ? AND cleanup_token = ? \
             AND (status IN ('Stopped', 'Crashed') OR (status = 'Created' AND NOT ?)) \
             AND (ephemeral = 1 OR NOT ?)",
        )
        .bind(sandbox_id)
        .bind(token)
        .bind(ephemeral_only)
        .bind(ephemeral_only)
        .execute(self.pool())
        .await
        .map_err(|e| DbError::query("delete", SandboxKey::Id(sandbox_id), e))?;
        Ok(done.rows_affected() == 1)
    }
}
