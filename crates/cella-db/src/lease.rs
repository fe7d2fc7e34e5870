//! The `maintenance_lease` table: a non-blocking, read-gated lease.
//!
//! The protocol (policy lives in `cella_runtime::lifecycle::maintenance`): read the row with
//! [`Db::read_lease`]; when it is held or a sweep completed recently, do nothing. Only a stale
//! lease leads to [`Db::try_acquire_lease`], a single conditional write that re-checks both
//! conditions under the write lock, so of any number of racing processes exactly one wins. The
//! winner ends with [`Db::complete_lease`] (success: records `last_completed_at`, releases) or
//! lets the lease expire (failure: the next process retries after the lease duration rather
//! than the longer sweep interval). `sweep_count` counts acquisitions.

use std::time::Duration;

use serde::Serialize;

use crate::sandbox::get;
use crate::{unique_token, Db, DbError};

/// One row of `maintenance_lease`. Timestamps are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRow {
    /// Lease name (primary key).
    pub name: String,
    /// Pid of the last holder, while held.
    pub holder_pid: Option<i64>,
    /// The lease is held until this instant; 0 when never taken.
    pub lease_expires_at: i64,
    /// When the last successful sweep finished.
    pub last_completed_at: Option<i64>,
    /// How many times the lease has been acquired.
    pub sweep_count: i64,
}

impl LeaseRow {
    /// True while the lease is held at `now`.
    pub fn is_held(&self, now: i64) -> bool {
        self.lease_expires_at > now
    }

    /// True when a sweep completed less than `interval` before `now`.
    pub fn completed_within(&self, now: i64, interval: Duration) -> bool {
        self.last_completed_at.is_some_and(|t| t > now - interval.as_millis() as i64)
    }
}

/// Proof of holding a lease, needed to complete or release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Lease name.
    pub name: String,
    /// Unique token written into the row.
    pub token: String,
    /// The lease is ours until this instant (unix ms).
    pub expires_at: i64,
}

impl Db {
    /// Reads a lease row: one primary-key lookup, no write lock.
    pub async fn read_lease(&self, name: &str) -> Result<Option<LeaseRow>, DbError> {
        let row = sqlx::query(
            "SELECT name, holder_pid, lease_expires_at, last_completed_at, sweep_count \
             FROM maintenance_lease WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .map_err(|e| DbError::query("read lease", name, e))?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(LeaseRow {
            name: get(&row, "name")?,
            holder_pid: get(&row, "holder_pid")?,
            lease_expires_at: get(&row, "lease_expires_at")?,
            last_completed_at: get(&row, "last_completed_at")?,
            sweep_count: get(&row, "sweep_count")?,
        }))
    }

    /// Takes the lease for `duration` if, at `now`, it is not held and no sweep completed within
    /// `min_interval`. Returns the grant to the one winner, `None` to everyone else.
    pub async fn try_acquire_lease(
        &self,
        name: &str,
        now: i64,
        duration: Duration,
        min_interval: Duration,
    ) -> Result<Option<LeaseGrant>, DbError> {
        let err = |e| DbError::query("acquire lease", name, e);
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await.map_err(err)?;

        // The row is created by the schema; recreate it if someone deleted it.
        sqlx::query("INSERT OR IGNORE INTO maintenance_lease (name) VALUES (?)")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let token = unique_token();
        let expires_at = now + duration.as_millis() as i64;
        let done = sqlx::query(
            "UPDATE maintenance_lease \
             SET holder_pid = ?, holder_token = ?, lease_expires_at = ?, \
                 sweep_count = sweep_count + 1 \
             WHERE name = ? AND lease_expires_at <= ? \
               AND (last_completed_at IS NULL OR last_completed_at <= ?)",
        )
        .bind(i64::from(std::process::id()))
        .bind(&token)
        .bind(expires_at)
        .bind(name)
        .bind(now)
        .bind(now - min_interval.as_millis() as i64)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;

        let won = done.rows_affected() == 1;
        Ok(won.then(|| LeaseGrant { name: name.to_owned(), token, expires_at }))
    }

    /// Records a successful sweep at `now` and releases the lease. Returns false when the grant
    /// no longer holds the lease (it expired and was taken over).
    pub async fn complete_lease(&self, grant: &LeaseGrant, now: i64) -> Result<bool, DbError> {
        let done = sqlx::query(
            "UPDATE maintenance_lease \
             SET last_completed_at = ?, lease_expires_at = ?, holder_pid = NULL, \
                 holder_token = NULL \
             WHERE name = ? AND holder_token = ?",
        )
        .bind(now)
        .bind(now)
        .bind(&grant.name)
        .bind(&grant.token)
        .execute(self.pool())
        .await
        .map_err(|e| DbError::query("complete lease", &grant.name, e))?;
        Ok(done.rows_affected() == 1)
    }

    /// Releases the lease at `now` without recording a completion.
    pub async fn release_lease(&self, grant: &LeaseGrant, now: i64) -> Result<bool, DbError> {
        let done = sqlx::query(
            "UPDATE maintenance_lease \
             SET lease_expires_at = ?, holder_pid = NULL, holder_token = NULL \
             WHERE name = ? AND holder_token = ?",
        )
        .bind(now)
        .bind(&grant.name)
        .bind(&grant.token)
        .execute(self.pool())
        .await
        .map_err(|e| DbError::query("release lease", &grant.name, e))?;
        Ok(done.rows_affected() == 1)
    }
}
