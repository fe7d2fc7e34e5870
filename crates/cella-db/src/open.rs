//! Opening the database: file, connection settings, journal mode, schema.
//!
//! Every connection gets `foreign_keys = ON` (runs cascade with their sandbox), `synchronous =
//! NORMAL` (durable across process crashes; a power loss may lose the last transactions, never
//! corrupt the file) and a busy timeout of [`BUSY_TIMEOUT`]. The file is put in WAL mode once;
//! WAL is persistent, so later opens find it set. Switching into WAL needs an exclusive lock that
//! SQLite's busy handler does not wait for, so [`Db::open`] retries that one pragma itself, for up
//! to the same busy timeout.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::error::is_busy_error;
use crate::migrate::migrate;
use crate::DbError;

/// How long a statement waits for another process's write lock before failing with
/// [`DbError::Busy`]. Writes here are single-row and take milliseconds; five seconds absorbs a
/// burst of fifty sandbox processes starting at once without making a wedged writer look like a
/// hang to the user.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections per open database. cella processes are short-lived or mostly idle: a few
/// connections let a relay and a timer write without queueing behind each other.
pub const MAX_CONNECTIONS: u32 = 4;

/// Mode of the database directory when `open` creates it: state is private to the user.
const DB_DIR_MODE: u32 = 0o700;

/// Pause between attempts to switch a contended database into WAL mode.
const WAL_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// An open, migrated state database. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct Db {
    pool: SqlitePool,
    path: PathBuf,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and migrates it to the current schema.
    ///
    /// The parent directory is created with mode 0700 when missing.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, DbError> {
        let path = path.as_ref().to_owned();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(DB_DIR_MODE)
                .create(parent)
                .map_err(|source| DbError::CreateDir { path: parent.to_owned(), source })?;
        }

        let pool = connect(&path).await?;
        enable_wal(&pool, &path).await?;
        migrate(&pool, &path).await?;
        Ok(Self { pool, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying pool, for tests and benchmarks that need to read or stage raw rows.
    /// Production code goes through the typed operations.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection, waiting for them to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn connect(path: &Path) -> Result<SqlitePool, DbError> {
    let open_err = |source| DbError::Open { path: path.to_owned(), source };
    let options = SqliteConnectOptions::from_str("sqlite://")
        .map_err(open_err)?
        .filename(path)
        .create_if_missing(true)
        .foreign_keys(true)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT);
    SqlitePoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .min_connections(0)
        .connect_with(options)
        .await
        .map_err(open_err)
}

async fn enable_wal(pool: &SqlitePool, path: &Path) -> Result<(), DbError> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        let result: Result<String, _> =
            sqlx::query_scalar("PRAGMA journal_mode = WAL").fetch_one(pool).await;
        match result {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => return Err(DbError::WalUnavailable { path: path.to_owned(), mode }),
            Err(e) if is_busy_error(&e) && Instant::now() < deadline => {
                tokio::time::sleep(WAL_RETRY_PAUSE).await;
            }
            Err(source) => return Err(DbError::Open { path: path.to_owned(), source }),
        }
    }
}
