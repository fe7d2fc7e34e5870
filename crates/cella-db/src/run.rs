//! The `run` table: one row per boot of a sandbox.
//!
//! A run records the sandbox process that owns the boot by pid **and** identity (process start
//! time in clock ticks since boot, and the host boot id), so a liveness check can tell that
//! process from a later one that reused its pid. A run is inserted Running by the sandbox
//! process while its sandbox is Starting and is finished exactly once: every finish is
//! conditional on the run still being Running, so the exit observer and a reconciler that both
//! try to close it produce one recorded end.

use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::SqliteConnection;

use crate::sandbox::{get, read_summary, set_status};
use crate::{now_ms, Db, DbError, RunStatus, SandboxKey, SandboxStatus, TerminationReason};

/// Columns of `run` as selected by every read, aliased `r` and prefixed `run_`.
pub(crate) const RUN_COLUMNS: &str = "r.id AS run_id, r.sandbox_id AS run_sandbox_id, \
     r.pid AS run_pid, r.pid_start_time AS run_pid_start_time, r.boot_id AS run_boot_id, \
     r.status AS run_status, r.exit_code AS run_exit_code, r.exit_signal AS run_exit_signal, \
     r.termination_reason AS run_termination_reason, \
     r.termination_detail AS run_termination_detail, r.started_at AS run_started_at, \
     r.terminated_at AS run_terminated_at";

/// The process that owns a new run, as the sandbox process records itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    /// Pid of the sandbox process.
    pub pid: i32,
    /// Its start time, field 22 of `/proc/PID/stat` (clock ticks since boot).
    pub pid_start_time: u64,
    /// The host boot id when it was recorded (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd {
    /// Exit code of the guest command or VM, when it exited.
    pub exit_code: Option<i32>,
    /// Signal that ended it, when one did.
    pub exit_signal: Option<i32>,
    /// Why it ended.
    pub reason: TerminationReason,
    /// Free-form detail for `inspect` (e.g. the boot error).
    pub detail: Option<String>,
}

impl RunEnd {
    /// An end with only a reason and a detail, for runs whose process died unobserved.
    pub fn reason(reason: TerminationReason, detail: impl Into<String>) -> Self {
        Self { exit_code: None, exit_signal: None, reason, detail: Some(detail.into()) }
    }
}

/// One row of `run`. Timestamps are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRow {
    /// Primary key; increases with every run of every sandbox.
    pub id: i64,
    /// The sandbox this run booted.
    pub sandbox_id: i64,
    /// Pid of its sandbox process.
    pub pid: i32,
    /// Start time of that process (clock ticks since boot).
    pub pid_start_time: u64,
    /// Host boot id when the run was recorded.
    pub boot_id: String,
    /// Running or Terminated.
    pub status: RunStatus,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Ending signal, when one ended it.
    pub exit_signal: Option<i32>,
    /// Why it ended (set once Terminated).
    pub termination_reason: Option<TerminationReason>,
    /// Detail of the end.
    pub termination_detail: Option<String>,
    /// When the run was recorded.
    pub started_at: i64,
    /// When the run ended.
    pub terminated_at: Option<i64>,
}

impl RunRow {
    /// Parses the `run_`-prefixed columns of a row that may come from a LEFT JOIN.
    pub(crate) fn from_joined(row: &SqliteRow) -> Result<Option<Self>, DbError> {
        let Some(id) = get::<Option<i64>>(row, "run_id")? else {
            return Ok(None);
        };
        let status: String = get(row, "run_status")?;
        let status = status
            .parse()
            .map_err(|_| DbError::InvalidValue { column: "run.status", value: status })?;
        let reason: Option<String> = get(row, "run_termination_reason")?;
        let termination_reason = reason
            .map(|r| {
                r.parse().map_err(|_| DbError::InvalidValue {
                    column: "run.termination_reason",
                    value: r,
                })
            })
            .transpose()?;
        let start: i64 = get(row, "run_pid_start_time")?;
        Ok(Some(Self {
            id,
            sandbox_id: get(row, "run_sandbox_id")?,
            pid: get(row, "run_pid")?,
            pid_start_time: start.max(0) as u64,
            boot_id: get(row, "run_boot_id")?,
            status,
            exit_code: get(row, "run_exit_code")?,
            exit_signal: get(row, "run_exit_signal")?,
            termination_reason,
            termination_detail: get(row, "run_termination_detail")?,
            started_at: get(row, "run_started_at")?,
            terminated_at: get(row, "run_terminated_at")?,
        }))
    }

    fn from_row(row: &SqliteRow) -> Result<Self, DbError> {
        Self::from_joined(row)?
            .ok_or_else(|| DbError::InvalidValue { column: "run.id", value: "NULL".to_owned() })
    }
}

/// What [`Db::finish_run_and_set_status`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunFinish {
    /// This call ended the run (it was still Running).
    pub run_finished: bool,
    /// This call also changed the sandbox status.
    pub status_changed: bool,
}

impl Db {
    /// Records a new Running run for a sandbox that is Starting.
    ///
    /// Fails with [`DbError::RunNotStarting`] in any other status and with
    /// [`DbError::RunAlreadyActive`] if another run is still marked Running. Runs in
    /// `BEGIN IMMEDIATE`: the checks and the insert see one state.
    pub async fn insert_run(
        &self,
        sandbox: impl Into<SandboxKey>,
        new: &NewRun,
    ) -> Result<RunRow, DbError> {
        let key = sandbox.into();
        let err = |e| DbError::query("record a run for", &key, e);
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await.map_err(err)?;

        let summary = read_summary(&mut tx, &key).await?.ok_or_else(|| key.not_found())?;
        let sandbox = summary.sandbox;
        if sandbox.status != SandboxStatus::Starting {
            return Err(DbError::RunNotStarting { name: sandbox.name, status: sandbox.status });
        }
        if let Some(run_id) = active_run_id(&mut tx, sandbox.id).await.map_err(err)? {
            return Err(DbError::RunAlreadyActive { name: sandbox.name, run_id });
        }

        let now = now_ms();
        let start = i64::try_from(new.pid_start_time).unwrap_or(i64::MAX);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO run (sandbox_id, pid, pid_start_time, boot_id, status, started_at) \
             VALUES (?, ?, ?, ?, 'Running', ?) RETURNING id",
        )
        .bind(sandbox.id)
        .bind(new.pid)
        .bind(start)
        .bind(&new.boot_id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;

        Ok(RunRow {
            id,
            sandbox_id: sandbox.id,
            pid: new.pid,
            pid_start_time: new.pid_start_time,
            boot_id: new.boot_id.clone(),
            status: RunStatus::Running,
            exit_code: None,
            exit_signal: None,
            termination_reason: None,
            termination_detail: None,
            started_at: now,
            terminated_at: None,
        })
    }

    /// Ends a run, only while it is still Running. Returns whether this call ended it.
    pub async fn finish_run(&self, run_id: i64, end: &RunEnd) -> Result<bool, DbError> {
        let mut conn = self.pool().acquire().await.map_err(|e| finish_err(run_id, e))?;
        finish(&mut conn, run_id, end).await
    }

    /// Ends a run and moves its sandbox from one of `from` to `to`, atomically.
    ///
    /// The status changes only if this call ended the run: whoever closes the run owns the
    /// sandbox's outcome, so an exit observer and a reconciler never record two different ends.
    pub async fn finish_run_and_set_status(
        &self,
        run_id: i64,
        end: &RunEnd,
        to: SandboxStatus,
        from: &[SandboxStatus],
    ) -> Result<RunFinish, DbError> {
        self.finish_run_inner(run_id, end, None, to, from).await
    }

    /// As [`Db::finish_run_and_set_status`], for the run's own sandbox process: when the
    /// sandbox is Draining at the moment of the write (a `stop` asked for the end), the run's
    /// reason is `if_draining` instead of `end.reason`. The status is read in the same
    /// transaction, so a `stop` that lands between a read and the write cannot be missed.
    pub async fn finish_own_run(
        &self,
        run_id: i64,
        end: &RunEnd,
        if_draining: TerminationReason,
        to: SandboxStatus,
        from: &[SandboxStatus],
    ) -> Result<RunFinish, DbError> {
        self.finish_run_inner(run_id, end, Some(if_draining), to, from).await
    }

    async fn finish_run_inner(
        &self,
        run_id: i64,
        end: &RunEnd,
        if_draining: Option<TerminationReason>,
        to: SandboxStatus,
        from: &[SandboxStatus],
    ) -> Result<RunFinish, DbError> {
        let err = |e| finish_err(run_id, e);
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await.map_err(err)?;

        let owner: Option<(i64, String)> = sqlx::query_as(
            "SELECT s.id, s.status FROM run r JOIN sandbox s ON s.id = r.sandbox_id WHERE r.id = ?",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        let Some((sandbox_id, status)) = owner else {
            return Ok(RunFinish { run_finished: false, status_changed: false });
        };
        let draining = status == SandboxStatus::Draining.as_str();
        let end = match if_draining {
            Some(reason) if draining => RunEnd { reason, ..end.clone() },
            _ => end.clone(),
        };
        let run_finished = finish(&mut tx, run_id, &end).await?;
        let status_changed = run_finished
            && set_status(&mut tx, &SandboxKey::Id(sandbox_id), to, from, false).await?;

        tx.commit().await.map_err(err)?;
        Ok(RunFinish { run_finished, status_changed })
    }

    /// A run by id.
    pub async fn find_run(&self, run_id: i64) -> Result<Option<RunRow>, DbError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM run r WHERE r.id = ?");
        let row = sqlx::query(&sql)
            .bind(run_id)
            .fetch_optional(self.pool())
            .await
            .map_err(|e| DbError::query("read", format!("run {run_id}"), e))?;
        row.as_ref().map(RunRow::from_row).transpose()
    }

    /// The most recent run of a sandbox, if it was ever started.
    pub async fn latest_run(
        &self,
        sandbox: impl Into<SandboxKey>,
    ) -> Result<Option<RunRow>, DbError> {
        let key = sandbox.into();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM run r JOIN sandbox s ON s.id = r.sandbox_id \
             WHERE {} ORDER BY r.id DESC LIMIT 1",
            key.predicate()
        );
        let row = key
            .bind(sqlx::query(&sql))
            .fetch_optional(self.pool())
            .await
            .map_err(|e| DbError::query("read latest run of", &key, e))?;
        row.as_ref().map(RunRow::from_row).transpose()
    }

    /// Every run of a sandbox, oldest first (what `inspect` shows as history).
    pub async fn runs(&self, sandbox: impl Into<SandboxKey>) -> Result<Vec<RunRow>, DbError> {
        let key = sandbox.into();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM run r JOIN sandbox s ON s.id = r.sandbox_id \
             WHERE {} ORDER BY r.id",
            key.predicate()
        );
        let rows = key
            .bind(sqlx::query(&sql))
            .fetch_all(self.pool())
            .await
            .map_err(|e| DbError::query("read runs of", &key, e))?;
        rows.iter().map(RunRow::from_row).collect()
    }
}

async fn active_run_id(
    conn: &mut SqliteConnection,
    sandbox_id: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM run WHERE sandbox_id = ? AND status = 'Running' LIMIT 1")
        .bind(sandbox_id)
        .fetch_optional(&mut *conn)
        .await
}

async fn finish(conn: &mut SqliteConnection, run_id: i64, end: &RunEnd) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE run SET status = 'Terminated', exit_code = ?, exit_signal = ?, \
         termination_reason = ?, termination_detail = ?, terminated_at = ? \
         WHERE id = ? AND status = 'Running'",
    )
    .bind(end.exit_code)
    .bind(end.exit_signal)
    .bind(end.reason.as_str())
    .bind(end.detail.as_deref())
    .bind(now_ms())
    .bind(run_id)
    .execute(&mut *conn)
    .await
    .map_err(|e| finish_err(run_id, e))?;
    Ok(done.rows_affected() == 1)
}

fn finish_err(run_id: i64, e: sqlx::Error) -> DbError {
    DbError::query("finish", format!("run {run_id}"), e)
}
