//! Lease rules and the sweep, on a real database.

use cella_db::{now_ms, LeaseRow, SandboxStatus::*, SANDBOX_MAINTENANCE_LEASE};

use super::support::{Sleeper, TestHome, TmpfsMount};
use crate::lifecycle::maintenance::{sweep_within, SweepLimits};
use crate::lifecycle::{
    run_startup_maintenance, MaintenanceOutcome, SkipReason, LEASE_DURATION, MAX_ROWS_PER_PHASE,
    MIN_SWEEP_INTERVAL,
};

async fn stage_lease(t: &TestHome, expires_at: i64, completed_at: Option<i64>) {
    sqlx::query(
        "UPDATE maintenance_lease SET holder_pid = 1, lease_expires_at = ?, last_completed_at = ? \
         WHERE name = ?",
    )
    .bind(expires_at)
    .bind(completed_at)
    .bind(SANDBOX_MAINTENANCE_LEASE)
    .execute(t.db.pool())
    .await
    .unwrap();
}

async fn lease(t: &TestHome) -> LeaseRow {
    t.db.read_lease(SANDBOX_MAINTENANCE_LEASE).await.unwrap().unwrap()
}

fn swept(outcome: MaintenanceOutcome) -> crate::lifecycle::SweepReport {
    match outcome {
        MaintenanceOutcome::Swept(report) => report,
        other => panic!("expected a sweep, got {other:?}"),
    }
}

#[tokio::test]
async fn held_lease_skips_the_sweep() {
    let t = TestHome::new().await;
    t.sandbox("eph", true, Stopped).await;
    stage_lease(&t, now_ms() + 5_000, None).await;

    let outcome = run_startup_maintenance(&t.db, &t.home).await;
    assert_eq!(outcome, MaintenanceOutcome::Skipped(SkipReason::LeaseHeld));
    assert_eq!(lease(&t).await.sweep_count, 0);
    assert!(t.db.find_sandbox("eph").await.unwrap().is_some(), "nothing was swept");
}

#[tokio::test]
async fn recently_completed_sweep_skips_the_next() {
    let t = TestHome::new().await;
    t.sandbox("eph", true, Stopped).await;
    let recent = now_ms() - (MIN_SWEEP_INTERVAL.as_millis() as i64) / 2;
    stage_lease(&t, recent, Some(recent)).await;

    let outcome = run_startup_maintenance(&t.db, &t.home).await;
    assert_eq!(outcome, MaintenanceOutcome::Skipped(SkipReason::RecentlyCompleted));
    assert_eq!(lease(&t).await.sweep_count, 0);
}

#[tokio::test]
async fn stale_lease_sweeps_reconciles_cleans_and_records_completion() {
    let t = TestHome::new().await;
    let long_ago = now_ms() - 2 * MIN_SWEEP_INTERVAL.as_millis() as i64;
    stage_lease(&t, long_ago, Some(long_ago)).await;

    let mut dead_persistent = Sleeper::spawn();
    let mut dead_ephemeral = Sleeper::spawn();
    let live = Sleeper::spawn();
    t.sandbox_with_run("dead-kept", false, &dead_persistent.identity(), Running).await;
    t.sandbox_with_run("dead-eph", true, &dead_ephemeral.identity(), Running).await;
    t.sandbox_with_run("live", true, &live.identity(), Running).await;
    t.sandbox("old-eph", true, Stopped).await;
    t.sandbox("kept", false, Stopped).await;
    dead_persistent.kill_and_reap();
    dead_ephemeral.kill_and_reap();

    let before = now_ms();
    let report = swept(run_startup_maintenance(&t.db, &t.home).await);

    assert_eq!((report.examined, report.reconciled, report.removed), (3, 2, 2), "{report:?}");
    assert_eq!(report.errors, 0);
    assert!(report.completed && !report.truncated);
    assert_eq!(t.status("dead-kept").await, Some(Crashed));
    assert_eq!(t.status("dead-eph").await, None, "crashed ephemeral is removed in phase 2");
    assert!(!t.dir("dead-eph").exists() && !t.dir("old-eph").exists());
    assert_eq!(t.status("live").await, Some(Running));
    assert_eq!(t.status("kept").await, Some(Stopped));

    let lease = lease(&t).await;
    assert_eq!(lease.sweep_count, 1);
    assert!(lease.last_completed_at.unwrap() >= before);
    assert!(!lease.is_held(now_ms() + 1), "a completed sweep releases the lease");
    let again = run_startup_maintenance(&t.db, &t.home).await;
    assert_eq!(again, MaintenanceOutcome::Skipped(SkipReason::RecentlyCompleted));
}

#[tokio::test]
async fn failed_sweep_records_no_completion_and_lets_the_lease_expire() {
    let t = TestHome::new().await;
    t.sandbox("stuck", true, Crashed).await;
    let _mount = TmpfsMount::new(&t.dir("stuck").join("upper"));

    let before = now_ms();
    let report = swept(run_startup_maintenance(&t.db, &t.home).await);

    assert_eq!(report.errors, 1, "{report:?}");
    assert!(!report.completed);
    let lease = lease(&t).await;
    assert_eq!(lease.last_completed_at, None);
    assert!(lease.is_held(now_ms()), "held until it expires");
    assert!(lease.lease_expires_at <= before + LEASE_DURATION.as_millis() as i64 + 1_000);
    assert_eq!(t.status("stuck").await, Some(Crashed), "row kept for the retry");
    let next = run_startup_maintenance(&t.db, &t.home).await;
    assert_eq!(next, MaintenanceOutcome::Skipped(SkipReason::LeaseHeld));
}

#[tokio::test]
async fn sweep_is_bounded_in_rows_per_phase() {
    let t = TestHome::new().await;
    let rows = MAX_ROWS_PER_PHASE + 20;
    for i in 0..rows {
        let new = cella_db::NewSandbox {
            name: format!("eph-{i}"),
            config: serde_json::json!({}),
            ephemeral: true,
            status: Stopped,
        };
        t.db.insert_sandbox(&new).await.unwrap();
    }

    let report = swept(run_startup_maintenance(&t.db, &t.home).await);
    assert!(report.removed <= MAX_ROWS_PER_PHASE, "{report:?}");
    assert!(report.removed == MAX_ROWS_PER_PHASE || report.truncated, "{report:?}");
    let left = t.db.list_sandboxes().await.unwrap().len() as u32;
    assert_eq!(left, rows - report.removed);
}

/// Five dead Running persistent sandboxes (phase 1's work) and five Stopped ephemeral ones
/// (phase 2's).
async fn stage_work_for_both_phases(t: &TestHome) {
    let mut owner = Sleeper::spawn();
    let identity = owner.identity();
    owner.kill_and_reap();
    for i in 0..5 {
        t.sandbox_with_run(&format!("dead-{i}"), false, &identity, Running).await;
        t.sandbox(&format!("eph-{i}"), true, Stopped).await;
    }
}

#[tokio::test]
async fn each_phase_handles_at_most_its_row_limit() {
    let t = TestHome::new().await;
    stage_work_for_both_phases(&t).await;
    let limits = SweepLimits { rows_per_phase: 3, duration: std::time::Duration::from_secs(60) };

    let report = sweep_within(&t.db, &t.home, limits).await;

    assert_eq!((report.examined, report.reconciled, report.removed), (3, 3, 3), "{report:?}");
    assert!(!report.truncated && report.errors == 0, "{report:?}");
    let mut crashed = 0;
    for i in 0..5 {
        crashed += u32::from(t.status(&format!("dead-{i}")).await == Some(Crashed));
    }
    assert_eq!(crashed, 3);
    let left = t.db.list_sandboxes().await.unwrap();
    assert_eq!(left.iter().filter(|row| row.ephemeral).count(), 2);
}

#[tokio::test]
async fn a_sweep_out_of_time_stops_and_reports_itself_truncated() {
    let t = TestHome::new().await;
    stage_work_for_both_phases(&t).await;
    let limits = SweepLimits { rows_per_phase: 250, duration: std::time::Duration::ZERO };

    let report = sweep_within(&t.db, &t.home, limits).await;

    assert!(report.truncated, "{report:?}");
    assert_eq!((report.examined, report.reconciled, report.removed), (0, 0, 0), "{report:?}");
    assert_eq!(t.db.list_sandboxes().await.unwrap().len(), 10);
    assert_eq!(t.status("dead-0").await, Some(Running), "left for the next sweep");
}

#[tokio::test]
async fn the_sweep_removes_lock_files_whose_sandbox_is_gone_unless_they_are_held() {
    let t = TestHome::new().await;
    t.sandbox("alive", false, Stopped).await;
    std::fs::create_dir_all(t.home.run_dir()).unwrap();
    for name in ["orphan", "alive", "held"] {
        std::fs::write(t.home.lock_path(name), b"").unwrap();
    }
    std::fs::write(t.home.run_dir().join("not-a-lock.sock"), b"").unwrap();
    let held = crate::lifecycle::LauncherLock::try_acquire_for(&t.home, "held").unwrap().unwrap();

    let report = sweep_within(&t.db, &t.home, SweepLimits::DEFAULT).await;

    assert_eq!((report.locks_removed, report.errors), (1, 0), "{report:?}");
    assert!(!t.home.lock_path("orphan").exists());
    assert!(t.home.lock_path("alive").exists(), "its sandbox exists");
    assert!(t.home.lock_path("held").exists(), "someone holds it: maybe a start of that name");
    assert!(t.home.run_dir().join("not-a-lock.sock").exists());
    drop(held);
}
