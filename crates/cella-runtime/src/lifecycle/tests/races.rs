//! Races between independent OS processes (this test binary re-executed as workers).

use cella_db::{now_ms, SandboxStatus::*, SANDBOX_MAINTENANCE_LEASE};

use super::support::{run_workers, Sleeper, TestHome, WorkerRole};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_cleanups_of_one_sandbox_remove_it_exactly_once() {
    let t = TestHome::new().await;
    t.sandbox("eph", true, Stopped).await;
    let home = t.home.clone();

    let results =
        tokio::task::spawn_blocking(move || run_workers(WorkerRole::Cleanup, 20, &home, "eph"))
            .await
            .unwrap();

    let removed = results.iter().filter(|r| *r == "Removed").count();
    let others: Vec<&String> = results
        .iter()
        .filter(|r| *r != "Removed" && *r != "AlreadyGone" && *r != "AlreadyClaimed")
        .collect();
    assert_eq!(removed, 1, "{results:?}");
    assert!(others.is_empty(), "unexpected outcomes: {others:?}");
    assert!(!t.dir("eph").exists());
    assert!(t.db.find_sandbox("eph").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_processes_starting_maintenance_from_a_stale_lease_sweep_exactly_once() {
    let t = TestHome::new().await;
    let stale = now_ms() - 3_600_000;
    sqlx::query(
        "UPDATE maintenance_lease SET holder_pid = 999999, lease_expires_at = ?, \
         last_completed_at = ? WHERE name = ?",
    )
    .bind(stale)
    .bind(stale)
    .bind(SANDBOX_MAINTENANCE_LEASE)
    .execute(t.db.pool())
    .await
    .unwrap();
    let mut dead = Sleeper::spawn();
    t.sandbox_with_run("dead", false, &dead.identity(), Running).await;
    dead.kill_and_reap();
    t.sandbox("leftover", true, Crashed).await;
    let home = t.home.clone();

    let results =
        tokio::task::spawn_blocking(move || run_workers(WorkerRole::Maintenance, 50, &home, ""))
            .await
            .unwrap();

    let sweeps: Vec<&String> = results.iter().filter(|r| r.starts_with("swept")).collect();
    let bad: Vec<&String> = results
        .iter()
        .filter(|r| !r.starts_with("swept") && !r.starts_with("skipped"))
        .chain(results.iter().filter(|r| r.contains("DatabaseError")))
        .collect();
    assert!(bad.is_empty(), "errors: {bad:?}");
    assert_eq!(sweeps.len(), 1, "{results:?}");
    assert!(sweeps[0].starts_with("swept errors=0 "), "{results:?}");

    // Counted from the database, not from the workers' reports.
    let lease = t.db.read_lease(SANDBOX_MAINTENANCE_LEASE).await.unwrap().unwrap();
    assert_eq!(lease.sweep_count, 1);
    // On a loaded machine the sweep may run out of its time budget (not an error); it then
    // leaves completion and the remaining rows to the next sweep.
    if sweeps[0].ends_with("completed=true") {
        assert!(lease.last_completed_at.unwrap() > stale);
        assert_eq!(t.status("dead").await, Some(Crashed));
        assert_eq!(t.status("leftover").await, None);
    }
}
