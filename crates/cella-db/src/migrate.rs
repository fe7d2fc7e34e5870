//! Schema and migrations.
//!
//! The schema version lives in SQLite's `user_version` header field. Opening a database first
//! reads it without any lock (the common case, every command on an up-to-date database, costs
//! one header read); only when it is behind does the opener take `BEGIN IMMEDIATE`, read it
//! again under the write lock and apply the missing steps. Fifty processes opening a fresh
//! database at once therefore serialize on the write lock, the first applies the schema and the
//! rest find it current: migrations are idempotent by construction, not by `IF NOT EXISTS`.
//!
//! Steps are append-only: never edit a released step, add a new one.

use std::path::Path;

use sqlx::SqlitePool;

use crate::DbError;

/// Name of the single lease row that coordinates the startup sweep.
pub const SANDBOX_MAINTENANCE_LEASE: &str = "sandbox_lifecycle_maintenance";

/// Version 1: sandbox, run, maintenance_lease.
///
/// All `*_at` columns are unix milliseconds. Beyond DESIGN.md's columns:
/// - `sandbox.cleanup_token`, `sandbox.cleanup_claim_expires_at`: the cleanup claim (see
///   `cella_runtime::lifecycle::cleanup`);
/// - `run (sandbox_id, id)` index: latest run per sandbox is one index seek;
/// - `maintenance_lease.holder_token` identifies the holder for release;
///   `sweep_count` counts acquired sweeps (tests and benches read it).
const V1: &str = r#"
CREATE TABLE sandbox (
    id                       INTEGER PRIMARY KEY AUTOINCREMENT,
    name                     TEXT    NOT NULL UNIQUE,
    config                   TEXT    NOT NULL CHECK (json_valid(config)),
    status                   TEXT    NOT NULL,
    ephemeral                INTEGER NOT NULL CHECK (ephemeral IN (0, 1)),
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL,
    cleanup_token            TEXT,
    cleanup_claim_expires_at INTEGER
);
CREATE INDEX sandbox_ephemeral_status ON sandbox (ephemeral, status);

CREATE TABLE run (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id         INTEGER NOT NULL REFERENCES sandbox (id) ON DELETE CASCADE,
    pid                INTEGER NOT NULL,
    pid_start_time     INTEGER NOT NULL,
    boot_id            TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    exit_code          INTEGER,
    exit_signal        INTEGER,
    termination_reason TEXT,
    termination_detail TEXT,
    started_at         INTEGER NOT NULL,
    terminated_at      INTEGER
);
CREATE INDEX run_sandbox_id ON run (sandbox_id, id);

CREATE TABLE maintenance_lease (
    name              TEXT    PRIMARY KEY,
    holder_pid        INTEGER,
    holder_token      TEXT,
    lease_expires_at  INTEGER NOT NULL DEFAULT 0,
    last_completed_at INTEGER,
    sweep_count       INTEGER NOT NULL DEFAULT 0
);
INSERT INTO maintenance_lease (name) VALUES ('sandbox_lifecycle_maintenance');
"#;

/// Migration steps; step `i` moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database at `path` up to [`SCHEMA_VERSION`].
pub(crate) async fn migrate(pool: &SqlitePool, path: &Path) -> Result<(), DbError> {
    let found = user_version(pool, path).await?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    check_not_newer(found, path)?;

    let open_err = |source| DbError::Open { path: path.to_owned(), source };
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(open_err)?;

    // Another process may have migrated while we waited for the write lock.
    let current: i64 =
        sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *tx).await.map_err(open_err)?;
    check_not_newer(current, path)?;
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = step as i64 + 1;
        // PRAGMA takes no bound parameters; `version` is our own integer. The script goes through
        // `query` (SQLite runs its statements one after another) rather than `raw_sql`, whose
        // future is not `Send` under a borrowed transaction, which would make `Db::open`
        // unusable in a spawned task.
        let script = format!("{sql}\nPRAGMA user_version = {version};");
        if let Err(source) = sqlx::query(&script).persistent(false).execute(&mut *tx).await {
            return Err(DbError::Migrate { path: path.to_owned(), version, source });
        }
    }

    let version = SCHEMA_VERSION;
    tx.commit().await.map_err(|source| DbError::Migrate {
        path: path.to_owned(),
        version,
        source,
    })?;
    if current < SCHEMA_VERSION {
        let path = path.display();
        tracing::info!(%path, from = current, to = SCHEMA_VERSION, "migrated database");
    }
    Ok(())
}

async fn user_version(pool: &SqlitePool, path: &Path) -> Result<i64, DbError> {
    sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(pool)
        .await
        .map_err(|source| DbError::Open { path: path.to_owned(), source })
}

fn check_not_newer(found: i64, path: &Path) -> Result<(), DbError> {
    if found > SCHEMA_VERSION {
        return Err(DbError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}
