//! The `sandbox` table: one row per sandbox, persistent or ephemeral.
//!
//! Status changes are conditional updates ("set X only while the status is one of ..."), so two
//! processes racing on one row produce one winner; the loser learns it lost from the returned
//! `false` and re-reads. A row under a live cleanup claim (see [`crate::CleanupClaim`]) refuses
//! every status change: it is being deleted.

use std::fmt;

use serde::Serialize;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Row, Sqlite, SqliteConnection};

use crate::run::{RunRow, RUN_COLUMNS};
use crate::{now_ms, validate_sandbox_name, Db, DbError, SandboxStatus};

/// Columns of `sandbox` as selected by every read, aliased `s`.
pub(crate) const SANDBOX_COLUMNS: &str =
    "s.id, s.name, s.config, s.status, s.ephemeral, s.created_at, s.updated_at";

/// Selects a sandbox and its latest run (if any) in one statement.
pub(crate) fn select_with_latest_run() -> String {
    format!(
        "SELECT {SANDBOX_COLUMNS}, {RUN_COLUMNS} FROM sandbox s \
         LEFT JOIN run r ON r.id = (SELECT MAX(id) FROM run WHERE sandbox_id = s.id)"
    )
}

/// Identifies a sandbox by its row id or its unique name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SandboxKey {
    /// The `sandbox.id` primary key.
    Id(i64),
    /// The unique `sandbox.name`.
    Name(String),
}

impl SandboxKey {
    /// `"s.id = ?"` or `"s.name = ?"`, to be followed by [`SandboxKey::bind`].
    pub(crate) fn predicate(&self) -> &'static str {
        match self {
            SandboxKey::Id(_) => "s.id = ?",
            SandboxKey::Name(_) => "s.name = ?",
        }
    }

    /// Binds the key's value to the next `?` of `query`.
    pub(crate) fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
    ) -> sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>> {
        match self {
            SandboxKey::Id(id) => query.bind(*id),
            SandboxKey::Name(name) => query.bind(name.as_str()),
        }
    }

    pub(crate) fn not_found(&self) -> DbError {
        DbError::SandboxNotFound { key: self.to_string() }
    }
}

impl fmt::Display for SandboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SandboxKey::Id(id) => write!(f, "sandbox #{id}"),
            SandboxKey::Name(name) => write!(f, "sandbox {name:?}"),
        }
    }
}

impl From<i64> for SandboxKey {
    fn from(id: i64) -> Self {
        SandboxKey::Id(id)
    }
}

impl From<&str> for SandboxKey {
    fn from(name: &str) -> Self {
        SandboxKey::Name(name.to_owned())
    }
}

impl From<String> for SandboxKey {
    fn from(name: String) -> Self {
        SandboxKey::Name(name)
    }
}

impl From<&SandboxRow> for SandboxKey {
    fn from(row: &SandboxRow) -> Self {
        SandboxKey::Id(row.id)
    }
}

/// A new sandbox, as `create` or `run` writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSandbox {
    /// Unique name; must pass [`validate_sandbox_name`].
    pub name: String,
    /// The sandbox configuration, owned by the SDK (stored as JSON text).
    pub config: serde_json::Value,
    /// Removed, row and directory, once it reaches Stopped or Crashed.
    pub ephemeral: bool,
    /// Initial status; `create` uses Created, a one-shot `run` may insert Starting directly.
    pub status: SandboxStatus,
}

/// One row of `sandbox`. Timestamps are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxRow {
    /// Primary key.
    pub id: i64,
    /// Unique name, also the directory name under `sandboxes/`.
    pub name: String,
    /// Configuration JSON as written by the SDK.
    pub config: serde_json::Value,
    /// Current status.
    pub status: SandboxStatus,
    /// Removed automatically once terminal.
    pub ephemeral: bool,
    /// When the row was inserted.
    pub created_at: i64,
    /// When the row last changed status.
    pub updated_at: i64,
}

impl SandboxRow {
    pub(crate) fn from_row(row: &SqliteRow) -> Result<Self, DbError> {
        let config: String = get(row, "config")?;
        let config = serde_json::from_str(&config)
            .map_err(|_| DbError::InvalidValue { column: "sandbox.config", value: config })?;
        let status: String = get(row, "status")?;
        let status = status
            .parse()
            .map_err(|_| DbError::InvalidValue { column: "sandbox.status", value: status })?;
        Ok(Self {
            id: get(row, "id")?,
            name: get(row, "name")?,
            config,
            status,
            ephemeral: get(row, "ephemeral")?,
            created_at: get(row, "created_at")?,
            updated_at: get(row, "updated_at")?,
        })
    }
}

/// A sandbox with its most recent run, as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxSummary {
    /// The sandbox row.
    pub sandbox: SandboxRow,
    /// Its latest run, if it was ever started.
    pub latest_run: Option<RunRow>,
}

impl SandboxSummary {
    pub(crate) fn from_row(row: &SqliteRow) -> Result<Self, DbError> {
        Ok(Self { sandbox: SandboxRow::from_row(row)?, latest_run: RunRow::from_joined(row)? })
    }
}

/// Reads a column, mapping a decode failure to [`DbError::Query`].
pub(crate) fn get<'r, T>(row: &'r SqliteRow, column: &'static str) -> Result<T, DbError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(column).map_err(|e| DbError::query("decode column", column, e))
}

impl Db {
    /// Inserts a sandbox. A taken name is [`DbError::DuplicateName`]; an unusable one is
    /// [`DbError::InvalidName`].
    pub async fn insert_sandbox(&self, new: &NewSandbox) -> Result<SandboxRow, DbError> {
        validate_sandbox_name(&new.name)?;
        let now = now_ms();
        let result = sqlx::query(
            "INSERT INTO sandbox (name, config, status, ephemeral, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&new.name)
        .bind(new.config.to_string())
        .bind(new.status.as_str())
        .bind(new.ephemeral)
        .bind(now)
        .bind(now)
        .fetch_one(self.pool())
        .await;

        let id: i64 = match result {
            Ok(row) => get(&row, "id")?,
            Err(e) if is_unique_violation(&e) => {
                return Err(DbError::DuplicateName { name: new.name.clone() })
            }
            Err(e) => return Err(DbError::query("insert", SandboxKey::from(new.name.as_str()), e)),
        };
        Ok(SandboxRow {
            id,
            name: new.name.clone(),
            config: new.config.clone(),
            status: new.status,
            ephemeral: new.ephemeral,
            created_at: now,
            updated_at: now,
        })
    }

    /// The sandbox with this name or id, if any.
    pub async fn find_sandbox(
        &self,
        key: impl Into<SandboxKey>,
    ) -> Result<Option<SandboxRow>, DbError> {
        let key = key.into();
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandbox s WHERE {}", key.predicate());
        let row = key
            .bind(sqlx::query(&sql))
            .fetch_optional(self.pool())
            .await
            .map_err(|e| DbError::query("read", &key, e))?;
        row.as_ref().map(SandboxRow::from_row).transpose()
    }

    /// The sandbox with this name or id, or [`DbError::SandboxNotFound`].
    pub async fn sandbox(&self, key: impl Into<SandboxKey>) -> Result<SandboxRow, DbError> {
        let key = key.into();
        self.find_sandbox(key.clone()).await?.ok_or_else(|| key.not_found())
    }

    /// The sandbox and its latest run, if the sandbox exists.
    pub async fn find_sandbox_summary(
        &self,
        key: impl Into<SandboxKey>,
    ) -> Result<Option<SandboxSummary>, DbError> {
        let key = key.into();
        let mut conn = self.pool().acquire().await.map_err(|e| DbError::query("read", &key, e))?;
        read_summary(&mut conn, &key).await
    }

    /// Every sandbox, ordered by name.
    pub async fn list_sandboxes(&self) -> Result<Vec<SandboxRow>, DbError> {
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandbox s ORDER BY s.name");
        let rows = sqlx::query(&sql)
            .fetch_all(self.pool())
            .await
            .map_err(|e| DbError::query("list", "sandboxes", e))?;
        rows.iter().map(SandboxRow::from_row).collect()
    }

    /// Every sandbox with its latest run, ordered by name (what `ls` shows).
    pub async fn list_sandbox_summaries(&self) -> Result<Vec<SandboxSummary>, DbError> {
        let sql = format!("{} ORDER BY s.name", select_with_latest_run());
        let rows = sqlx::query(&sql)
            .fetch_all(self.pool())
            .await
            .map_err(|e| DbError::query("list", "sandboxes", e))?;
        rows.iter().map(SandboxSummary::from_row).collect()
    }

    /// Up to `limit` sandboxes with one of `statuses` among rows with `ephemeral` in
    /// `ephemeral`, oldest id first, with their latest run. Uses the (ephemeral, status) index.
    pub async fn sandboxes_in_status(
        &self,
        ephemeral: &[bool],
        statuses: &[SandboxStatus],
        limit: u32,
    ) -> Result<Vec<SandboxSummary>, DbError> {
        let sql = format!(
            "{} WHERE s.ephemeral IN ({}) AND s.status IN ({}) ORDER BY s.id LIMIT ?",
            select_with_latest_run(),
            placeholders(ephemeral.len()),
            placeholders(statuses.len()),
        );
        let mut query = sqlx::query(&sql);
        for e in ephemeral {
            query = query.bind(*e);
        }
        for s in statuses {
            query = query.bind(s.as_str());
        }
        let rows = query
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .map_err(|e| DbError::query("list", "sandboxes by status", e))?;
        rows.iter().map(SandboxSummary::from_row).collect()
    }

    /// Sets the status to `to` only while it is one of `from` and no cleanup claim is live.
    /// Returns whether this call made the change.
    pub async fn set_sandbox_status(
        &self,
        key: impl Into<SandboxKey>,
        to: SandboxStatus,
        from: &[SandboxStatus],
    ) -> Result<bool, DbError> {
        let key = key.into();
        let mut conn =
            self.pool().acquire().await.map_err(|e| DbError::query("update status of", &key, e))?;
        set_status(&mut conn, &key, to, from, false).await
    }

    /// Like [`Db::set_sandbox_status`], but also only while the sandbox has no run marked
    /// Running. Used to fail a sandbox that never recorded its run.
    pub async fn set_sandbox_status_without_active_run(
        &self,
        key: impl Into<SandboxKey>,
        to: SandboxStatus,
        from: &[SandboxStatus],
    ) -> Result<bool, DbError> {
        let key = key.into();
        let mut conn =
            self.pool().acquire().await.map_err(|e| DbError::query("update status of", &key, e))?;
        set_status(&mut conn, &key, to, from, true).await
    }

    /// Deletes the sandbox (and, by cascade, its runs) only while its status is one of `from`
    /// and no cleanup claim is live. Returns whether a row was deleted. This touches only the
    /// row: removing a sandbox's directory first is the caller's job
    /// (`cella_runtime::lifecycle::cleanup` does both in the right order).
    pub async fn delete_sandbox(
        &self,
        key: impl Into<SandboxKey>,
        from: &[SandboxStatus],
    ) -> Result<bool, DbError> {
        let key = key.into();
        let sql = format!(
            "DELETE FROM sandbox AS s WHERE {} AND s.status IN ({}) AND {}",
            key.predicate(),
            placeholders(from.len()),
            NO_LIVE_CLAIM,
        );
        let mut query = key.bind(sqlx::query(&sql));
        for s in from {
            query = query.bind(s.as_str());
        }
        let done = query
            .bind(now_ms())
            .execute(self.pool())
            .await
            .map_err(|e| DbError::query("delete", &key, e))?;
        Ok(done.rows_affected() == 1)
    }
}

/// SQL condition: the row carries no unexpired cleanup claim. Binds one parameter: now.
pub(crate) const NO_LIVE_CLAIM: &str =
    "(s.cleanup_token IS NULL OR s.cleanup_claim_expires_at <= ?)";

/// Reads a sandbox and its latest run on `conn` (inside or outside a transaction).
pub(crate) async fn read_summary(
    conn: &mut SqliteConnection,
    key: &SandboxKey,
) -> Result<Option<SandboxSummary>, DbError> {
    let sql = format!("{} WHERE {}", select_with_latest_run(), key.predicate());
    let row = key
        .bind(sqlx::query(&sql))
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| DbError::query("read", key, e))?;
    row.as_ref().map(SandboxSummary::from_row).transpose()
}

/// The conditional status update shared by the public operations and the run operations.
pub(crate) async fn set_status(
    conn: &mut SqliteConnection,
    key: &SandboxKey,
    to: SandboxStatus,
    from: &[SandboxStatus],
    require_no_active_run: bool,
) -> Result<bool, DbError> {
    let no_run = if require_no_active_run {
        " AND NOT EXISTS (SELECT 1 FROM run WHERE run.sandbox_id = s.id AND run.status = 'Running')"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE sandbox AS s SET status = ?, updated_at = ? WHERE {} AND s.status IN ({}) AND {}{}",
        key.predicate(),
        placeholders(from.len()),
        NO_LIVE_CLAIM,
        no_run,
    );
    let now = now_ms();
    let mut query = key.bind(sqlx::query(&sql).bind(to.as_str()).bind(now));
    for s in from {
        query = query.bind(s.as_str());
    }
    let done = query
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| DbError::query("update status of", key, e))?;
    Ok(done.rows_affected() == 1)
}

/// `?, ?, ?` with `n` placeholders (`NULL` when `n` is 0, which matches nothing).
pub(crate) fn placeholders(n: usize) -> String {
    if n == 0 {
        return "NULL".to_owned();
    }
    vec!["?"; n].join(", ")
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.is_unique_violation())
}
