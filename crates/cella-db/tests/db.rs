//! Functional tests of the state database on a real SQLite file in a temp dir.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use cella_db::{
    now_ms, CleanupClaim, Db, DbError, NewRun, NewSandbox, RunEnd, RunStatus, SandboxStatus,
    TerminationReason, BUSY_TIMEOUT, SANDBOX_MAINTENANCE_LEASE, SCHEMA_VERSION,
};
use serde_json::json;
use tempfile::TempDir;

use SandboxStatus::*;

async fn fresh() -> (TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db").join("cella.db")).await.unwrap();
    (dir, db)
}

fn new(name: &str, ephemeral: bool, status: SandboxStatus) -> NewSandbox {
    NewSandbox { name: name.into(), config: json!({ "cpus": 1 }), ephemeral, status }
}

fn me() -> NewRun {
    NewRun { pid: std::process::id() as i32, pid_start_time: 1234, boot_id: "boot".into() }
}

#[tokio::test]
async fn open_creates_private_dir_wal_foreign_keys_and_current_schema() {
    let (dir, db) = fresh().await;

    let mode = std::fs::metadata(dir.path().join("db")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let journal: String =
        sqlx::query_scalar("PRAGMA journal_mode").fetch_one(db.pool()).await.unwrap();
    assert_eq!(journal, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(db.pool()).await.unwrap();
    assert_eq!(fk, 1);
    let version: i64 =
        sqlx::query_scalar("PRAGMA user_version").fetch_one(db.pool()).await.unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let lease = db.read_lease(SANDBOX_MAINTENANCE_LEASE).await.unwrap().unwrap();
    assert_eq!((lease.lease_expires_at, lease.sweep_count), (0, 0));
}

#[tokio::test]
async fn reopening_keeps_rows_and_schema() {
    let (dir, db) = fresh().await;
    db.insert_sandbox(&new("web", false, Created)).await.unwrap();
    db.close().await;

    let db = Db::open(dir.path().join("db").join("cella.db")).await.unwrap();
    assert_eq!(db.sandbox("web").await.unwrap().status, Created);
    let leases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM maintenance_lease")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(leases, 1);
}

#[tokio::test]
async fn database_from_a_newer_cella_is_refused() {
    let (dir, db) = fresh().await;
    sqlx::query("PRAGMA user_version = 99").execute(db.pool()).await.unwrap();
    db.close().await;

    let err = Db::open(dir.path().join("db").join("cella.db")).await.unwrap_err();
    assert!(matches!(err, DbError::SchemaTooNew { found: 99, .. }), "{err}");
}

#[tokio::test]
async fn duplicate_name_is_rejected_and_changes_nothing() {
    let (_dir, db) = fresh().await;
    let first = db.insert_sandbox(&new("web", false, Created)).await.unwrap();

    let err = db.insert_sandbox(&new("web", true, Starting)).await.unwrap_err();
    assert!(matches!(&err, DbError::DuplicateName { name } if name == "web"), "{err}");
    assert_eq!(err.to_string(), "a sandbox named \"web\" already exists");
    assert_eq!(db.list_sandboxes().await.unwrap(), vec![first]);
}

#[tokio::test]
async fn unsafe_names_never_reach_the_table() {
    let (_dir, db) = fresh().await;
    for name in ["../etc", "a/b", "", ".."] {
        let err = db.insert_sandbox(&new(name, false, Created)).await.unwrap_err();
        assert!(matches!(err, DbError::InvalidName { .. }), "{name:?}: {err}");
    }
    assert!(db.list_sandboxes().await.unwrap().is_empty());
}

#[tokio::test]
async fn rows_round_trip_config_and_flags() {
    let (_dir, db) = fresh().await;
    let inserted = db.insert_sandbox(&new("web", true, Starting)).await.unwrap();
    let read = db.sandbox(inserted.id).await.unwrap();
    assert_eq!(read, inserted);
    assert_eq!(read.config, json!({ "cpus": 1 }));
    assert!(read.ephemeral);
    assert!(read.created_at > 0 && read.created_at == read.updated_at);
    assert!(db.find_sandbox("nope").await.unwrap().is_none());
    assert!(matches!(db.sandbox("nope").await, Err(DbError::SandboxNotFound { .. })));
}

#[tokio::test]
async fn status_changes_only_from_listed_statuses() {
    let (_dir, db) = fresh().await;
    db.insert_sandbox(&new("web", false, Created)).await.unwrap();

    assert!(!db.set_sandbox_status("web", Running, &[Starting]).await.unwrap());
    assert_eq!(db.sandbox("web").await.unwrap().status, Created);
    assert!(db.set_sandbox_status("web", Starting, &[Created, Stopped]).await.unwrap());
    assert_eq!(db.sandbox("web").await.unwrap().status, Starting);
    assert!(!db.set_sandbox_status("missing", Starting, &[Created]).await.unwrap());
}

#[tokio::test]
async fn racing_status_changes_from_separate_connections_have_one_winner() {
    let (dir, db) = fresh().await;
    db.insert_sandbox(&new("web", false, Running)).await.unwrap();

    let path = dir.path().join("db").join("cella.db");
    let mut tasks = Vec::new();
    for i in 0..10 {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let db = Db::open(&path).await.unwrap();
            let to = if i % 2 == 0 { Crashed } else { Draining };
            db.set_sandbox_status("web", to, &[Running]).await.unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += t.await.unwrap() as u32;
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn runs_are_recorded_only_while_starting_and_one_at_a_time() {
    let (_dir, db) = fresh().await;
    db.insert_sandbox(&new("web", false, Created)).await.unwrap();

    let err = db.insert_run("web", &me()).await.unwrap_err();
    assert!(matches!(err, DbError::RunNotStarting { status: Created, .. }), "{err}");

    db.set_sandbox_status("web", Starting, &[Created]).await.unwrap();
    let run = db.insert_run("web", &me()).await.unwrap();
    assert_eq!(run.status, RunStatus::Running);
    let err = db.insert_run("web", &me()).await.unwrap_err();
    assert!(matches!(err, DbError::RunAlreadyActive { run_id, .. } if run_id == run.id), "{err}");
    assert_eq!(db.latest_run("web").await.unwrap(), Some(run));
}

#[tokio::test]
async fn a_run_is_finished_exactly_once() {
    let (_dir, db) = fresh().await;
    db.insert_sandbox(&new("web", false, Starting)).await.unwrap();
    let run = db.insert_run("web", &me()).await.unwrap();

    let end = RunEnd {
        exit_code: Some(3),
        exit_signal: None,
        reason: TerminationReason::Failed,
        detail: Some("exit 3".into()),
    };
    assert!(db.finish_run(run.id, &end).await.unwrap());
    let later = RunEnd::reason(TerminationReason::InternalError, "late");
    assert!(!db.finish_run(run.id, &later).await.unwrap());

    let read = db.find_run(run.id).await.unwrap().unwrap();
    assert_eq!(read.status, RunStatus::Terminated);
    assert_eq!(read.exit_code, Some(3));
    assert_eq!(read.termination_reason, Some(TerminationReason::Failed));
    assert_eq!(read.termination_detail.as_deref(), Some("exit 3"));
    assert!(read.terminated_at.is_some());
}

#[tokio::test]
async fn finishing_a_run_moves_its_sandbox_in_the_same_transaction() {
    let (_dir, db) = fresh().await;
    db.insert_sandbox(&new("web", false, Starting)).await.unwrap();
    let run = db.insert_run("web", &me()).await.unwrap();
    db.set_sandbox_status("web", Running, &[Starting]).await.unwrap();

    let end = RunEnd::reason(TerminationReason::IdleTimeout, "idle");
    let first = db.finish_run_and_set_status(run.id, &end, Stopped, &[Running]).await.unwrap();
    assert!(first.run_finished && first.status_changed);
    let second = db.finish_run_and_set_status(run.id, &end, Crashed, &[Stopped]).await.unwrap();
    assert!(!second.run_finished && !second.status_changed);
    assert_eq!(db.sandbox("web").await.unwrap().status, Stopped);
}

#[tokio::test]
async fn own_run_ending_while_draining_is_recorded_as_shutdown_requested() {
    let (_dir, db) = fresh().await;
    let live = [Starting, Running, Draining];
    let idle = RunEnd::reason(TerminationReason::IdleTimeout, "idle");
    let shutdown = TerminationReason::ShutdownRequested;
    for (name, status, expected) in [
        ("drained", Draining, TerminationReason::ShutdownRequested),
        ("running", Running, TerminationReason::IdleTimeout),
    ] {
        db.insert_sandbox(&new(name, false, Starting)).await.unwrap();
        let run = db.insert_run(name, &me()).await.unwrap();
        db.set_sandbox_status(name, status, &[Starting]).await.unwrap();

        let done = db.finish_own_run(run.id, &idle, shutdown, Stopped, &live).await.unwrap();

        assert!(done.run_finished && done.status_changed, "{name}");
        let read = db.find_run(run.id).await.unwrap().unwrap();
        assert_eq!(read.termination_reason, Some(expected), "{name}");
        assert_eq!(read.termination_detail.as_deref(), Some("idle"), "{name}");
        assert_eq!(db.sandbox(name).await.unwrap().status, Stopped, "{name}");
    }
}

#[tokio::test]
async fn history_lists_runs_oldest_first_and_summary_shows_the_latest() {
    let (_dir, db) = fresh().await;
    db.insert_sandbox(&new("web", false, Starting)).await.unwrap();
    db.insert_sandbox(&new("idle", false, Created)).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let run = db.insert_run("web", &me()).await.unwrap();
        let end = RunEnd::reason(TerminationReason::Completed, "done");
        db.finish_run_and_set_status(run.id, &end, Starting, &[Starting]).await.unwrap();
        ids.push(run.id);
    }

    let history: Vec<i64> = db.runs("web").await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(history, ids);
    let summaries = db.list_sandbox_summaries().await.unwrap();
    let names: Vec<&str> = summaries.iter().map(|s| s.sandbox.name.as_str()).collect();
    assert_eq!(names, ["idle", "web"]);
    assert!(summaries[0].latest_run.is_none());
    assert_eq!(summaries[1].latest_run.as_ref().unwrap().id, ids[2]);
}

#[tokio::test]
async fn deleting_a_sandbox_cascades_to_its_runs() {
    let (_dir, db) = fresh().await;
    let sb = db.insert_sandbox(&new("web", false, Starting)).await.unwrap();
    let run = db.insert_run("web", &me()).await.unwrap();
    db.finish_run_and_set_status(
        run.id,
        &RunEnd::reason(TerminationReason::Completed, ""),
        Stopped,
        &[Starting],
    )
    .await
    .unwrap();

    assert!(!db.delete_sandbox("web", &[Running]).await.unwrap());
    assert!(db.delete_sandbox("web", &[Stopped]).await.unwrap());
    assert!(db.find_run(run.id).await.unwrap().is_none());
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM run WHERE sandbox_id = ?")
        .bind(sb.id)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(runs, 0);
}

#[tokio::test]
async fn a_live_cleanup_claim_excludes_other_cleaners_and_status_changes() {
    let (_dir, db) = fresh().await;
    db.insert_sandbox(&new("web", true, Stopped)).await.unwrap();

    let CleanupClaim::Claimed { token, .. } = db.claim_cleanup("web", true).await.unwrap() else {
        panic!("first claim should win");
    };
    assert_eq!(db.claim_cleanup("web", true).await.unwrap(), CleanupClaim::HeldByOther);
    assert!(!db.set_sandbox_status("web", Starting, &[Stopped]).await.unwrap());
    assert!(!db.delete_sandbox("web", &[Stopped]).await.unwrap());
    assert!(!db.delete_claimed_sandbox(1, "someone-else", true).await.unwrap());

    let id = db.sandbox("web").await.unwrap().id;
    assert!(db.release_cleanup_claim(id, &token).await.unwrap());
    assert!(matches!(db.claim_cleanup("web", true).await.unwrap(), CleanupClaim::Claimed { .. }));
}

#[tokio::test]
async fn an_expired_cleanup_claim_can_be_taken_over() {
    let (_dir, db) = fresh().await;
    db.insert_sandbox(&new("web", true, Crashed)).await.unwrap();
    let CleanupClaim::Claimed { token: old, .. } = db.claim_cleanup("web", true).await.unwrap()
    else {
        panic!("claim");
    };
    sqlx::query("UPDATE sandbox SET cleanup_claim_expires_at = ?")
        .bind(now_ms() - 1)
        .execute(db.pool())
        .await
        .unwrap();

    let CleanupClaim::Claimed { token: new, summary } =
        db.claim_cleanup("web", true).await.unwrap()
    else {
        panic!("expired claim should be taken over");
    };
    assert!(!db.delete_claimed_sandbox(summary.sandbox.id, &old, true).await.unwrap());
    assert!(db.delete_claimed_sandbox(summary.sandbox.id, &new, true).await.unwrap());
}

#[tokio::test]
async fn claims_respect_ephemeral_and_terminal_status() {
    let (_dir, db) = fresh().await;
    db.insert_sandbox(&new("kept", false, Stopped)).await.unwrap();
    db.insert_sandbox(&new("live", true, Running)).await.unwrap();

    assert_eq!(db.claim_cleanup("kept", true).await.unwrap(), CleanupClaim::NotEphemeral);
    assert!(matches!(db.claim_cleanup("kept", false).await.unwrap(), CleanupClaim::Claimed { .. }));
    assert_eq!(db.claim_cleanup("live", true).await.unwrap(), CleanupClaim::NotTerminal(Running));
    assert_eq!(db.claim_cleanup("gone", true).await.unwrap(), CleanupClaim::NotFound);
}

#[tokio::test]
async fn lease_is_acquired_once_and_completion_gates_the_next() {
    let (_dir, db) = fresh().await;
    let (lease, interval) = (Duration::from_secs(10), Duration::from_secs(30));
    let now = now_ms();

    let grant =
        db.try_acquire_lease(SANDBOX_MAINTENANCE_LEASE, now, lease, interval).await.unwrap();
    let grant = grant.expect("a fresh lease is free");
    assert!(db
        .try_acquire_lease(SANDBOX_MAINTENANCE_LEASE, now, lease, interval)
        .await
        .unwrap()
        .is_none());

    assert!(db.complete_lease(&grant, now).await.unwrap());
    let row = db.read_lease(SANDBOX_MAINTENANCE_LEASE).await.unwrap().unwrap();
    assert!(!row.is_held(now + 1));
    assert!(row.completed_within(now + 1, interval));
    assert_eq!(row.sweep_count, 1);
    let soon = now + 1_000;
    assert!(db
        .try_acquire_lease(SANDBOX_MAINTENANCE_LEASE, soon, lease, interval)
        .await
        .unwrap()
        .is_none());
    let later = now + 31_000;
    assert!(db
        .try_acquire_lease(SANDBOX_MAINTENANCE_LEASE, later, lease, interval)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn status_queries_use_the_ephemeral_status_index() {
    let (_dir, db) = fresh().await;
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT id FROM sandbox s \
         WHERE s.ephemeral IN (0, 1) AND s.status IN ('Running', 'Draining')",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let detail: String = plan.into_iter().map(|p| p.3).collect::<Vec<_>>().join("; ");
    assert!(detail.contains("sandbox_ephemeral_status"), "{detail}");
}

#[tokio::test]
async fn a_writer_holding_the_lock_is_waited_for_not_failed_at_once() {
    let (dir, db) = fresh().await;
    let path = dir.path().join("db").join("cella.db");
    let holder = Db::open(&path).await.unwrap();

    let mut tx = holder.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("UPDATE maintenance_lease SET holder_pid = 1").execute(&mut *tx).await.unwrap();
    let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = released.clone();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        tx.commit().await.unwrap();
    });

    // Succeeds (so within the busy timeout), and only once the holder let go.
    db.insert_sandbox(&new("web", false, Created)).await.unwrap();
    assert!(released.load(std::sync::atomic::Ordering::SeqCst), "wrote while the lock was held");
    release.await.unwrap();
    assert_eq!(db.sandbox("web").await.unwrap().status, Created);
}

#[tokio::test]
async fn a_writer_holding_the_lock_past_the_busy_timeout_is_reported_as_busy() {
    let (dir, db) = fresh().await;
    let holder = Db::open(dir.path().join("db").join("cella.db")).await.unwrap();
    let mut tx = holder.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("UPDATE maintenance_lease SET holder_pid = 1").execute(&mut *tx).await.unwrap();

    let started = Instant::now();
    let err = db.insert_sandbox(&new("web", false, Created)).await.unwrap_err();
    assert!(err.is_busy(), "{err}");
    assert!(started.elapsed() >= BUSY_TIMEOUT - Duration::from_millis(200));
    tx.rollback().await.unwrap();
}

/// Every operation's future can run in a spawned multi-threaded task (sqlx plus borrowed
/// transactions can silently lose `Send`; this fails to compile if that happens).
#[allow(dead_code, unused_must_use, clippy::let_underscore_future)]
fn operations_are_send(db: Db) {
    fn send<F: std::future::Future + Send>(_: F) {}
    let run = NewRun { pid: 1, pid_start_time: 1, boot_id: String::new() };
    let end = RunEnd::reason(TerminationReason::Completed, "");
    send(Db::open(std::path::PathBuf::new()));
    send(db.insert_sandbox(&new("a", false, Created)));
    send(db.find_sandbox("a"));
    send(db.find_sandbox_summary("a"));
    send(db.list_sandbox_summaries());
    send(db.sandboxes_in_status(&[true], &[Stopped], 1));
    send(db.set_sandbox_status("a", Stopped, &[Running]));
    send(db.set_sandbox_status_without_active_run("a", Stopped, &[Running]));
    send(db.delete_sandbox("a", &[Stopped]));
    send(db.insert_run("a", &run));
    send(db.finish_run(1, &end));
    send(db.finish_run_and_set_status(1, &end, Stopped, &[Running]));
    send(db.latest_run("a"));
    send(db.runs("a"));
    send(db.claim_cleanup("a", true));
    send(db.release_cleanup_claim(1, ""));
    send(db.delete_claimed_sandbox(1, "", true));
    send(db.read_lease(""));
    send(db.try_acquire_lease("", 0, Duration::ZERO, Duration::ZERO));
}
