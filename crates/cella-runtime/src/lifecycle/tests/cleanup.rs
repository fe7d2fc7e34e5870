//! Each cleanup outcome, on a real database and real directories.

use cella_db::{CleanupClaim, SandboxStatus::*};

use super::support::{Sleeper, TestHome, TmpfsMount};
use crate::lifecycle::{
    cleanup_sandbox, remove_sandbox, CleanupOutcome, LifecycleError, ProcessIdentity,
};

#[tokio::test]
async fn cleanup_removes_dir_then_row_of_a_terminal_ephemeral_sandbox() {
    let t = TestHome::new().await;
    let mut owner = Sleeper::spawn();
    let (row, run) = t.sandbox_with_run("eph", true, &owner.identity(), Running).await;
    owner.kill_and_reap();
    let end = cella_db::RunEnd::reason(cella_db::TerminationReason::Completed, "done");
    t.db.finish_run_and_set_status(run.id, &end, Stopped, &[Running]).await.unwrap();

    assert_eq!(cleanup_sandbox(&t.db, &t.home, "eph").await.unwrap(), CleanupOutcome::Removed);
    assert!(!t.dir("eph").exists());
    assert!(t.db.find_sandbox(row.id).await.unwrap().is_none());
    assert!(t.db.find_run(run.id).await.unwrap().is_none(), "runs go with the row");
}

#[tokio::test]
async fn cleanup_is_idempotent_and_reports_already_gone() {
    let t = TestHome::new().await;
    t.sandbox("eph", true, Crashed).await;

    assert_eq!(cleanup_sandbox(&t.db, &t.home, "eph").await.unwrap(), CleanupOutcome::Removed);
    assert_eq!(cleanup_sandbox(&t.db, &t.home, "eph").await.unwrap(), CleanupOutcome::AlreadyGone);
    assert_eq!(
        cleanup_sandbox(&t.db, &t.home, "never").await.unwrap(),
        CleanupOutcome::AlreadyGone
    );
}

#[tokio::test]
async fn cleanup_leaves_persistent_sandboxes_alone() {
    let t = TestHome::new().await;
    t.sandbox("kept", false, Stopped).await;

    let outcome = cleanup_sandbox(&t.db, &t.home, "kept").await.unwrap();
    assert_eq!(outcome, CleanupOutcome::SkippedPersistent);
    assert!(t.dir("kept").join("config.json").exists());
    assert_eq!(t.status("kept").await, Some(Stopped));
}

#[tokio::test]
async fn cleanup_leaves_active_sandboxes_alone() {
    let t = TestHome::new().await;
    for (name, status) in [("c", Created), ("s", Starting), ("r", Running), ("d", Draining)] {
        t.sandbox(name, true, status).await;
        let outcome = cleanup_sandbox(&t.db, &t.home, name).await.unwrap();
        assert_eq!(outcome, CleanupOutcome::SkippedActive, "{status}");
        assert!(t.dir(name).exists());
        assert_eq!(t.status(name).await, Some(status));
    }
}

#[tokio::test]
async fn cleanup_skips_a_stopped_sandbox_whose_run_process_is_alive_until_it_dies() {
    let t = TestHome::new().await;
    let mut owner = Sleeper::spawn();
    let (row, _run) = t.sandbox_with_run("eph", true, &owner.identity(), Running).await;
    // Status says Stopped but the recorded process still runs (e.g. it is still exiting).
    t.db.set_sandbox_status(row.id, Stopped, &[Running]).await.unwrap();

    let outcome = cleanup_sandbox(&t.db, &t.home, "eph").await.unwrap();
    assert_eq!(outcome, CleanupOutcome::SkippedLivePid);
    assert!(t.dir("eph").exists());

    owner.kill_and_reap();
    assert_eq!(cleanup_sandbox(&t.db, &t.home, "eph").await.unwrap(), CleanupOutcome::Removed);
}

#[tokio::test]
async fn sandbox_process_can_clean_itself_up_while_its_own_run_is_open() {
    let t = TestHome::new().await;
    let me = ProcessIdentity::current().unwrap();
    let (row, _run) = t.sandbox_with_run("self", true, &me, Running).await;
    t.db.set_sandbox_status(row.id, Crashed, &[Running]).await.unwrap();

    assert_eq!(cleanup_sandbox(&t.db, &t.home, "self").await.unwrap(), CleanupOutcome::Removed);
}

#[tokio::test]
async fn cleanup_reports_already_claimed_while_another_cleaner_holds_the_claim() {
    let t = TestHome::new().await;
    t.sandbox("eph", true, Stopped).await;
    let CleanupClaim::Claimed { .. } = t.db.claim_cleanup("eph", true).await.unwrap() else {
        panic!("the other cleaner's claim");
    };

    let outcome = cleanup_sandbox(&t.db, &t.home, "eph").await.unwrap();
    assert_eq!(outcome, CleanupOutcome::AlreadyClaimed);
    assert!(t.dir("eph").exists(), "the claim holder owns the removal");
}

#[tokio::test]
async fn cleanup_finishes_the_job_of_a_cleaner_that_died_after_removing_the_dir() {
    let t = TestHome::new().await;
    t.sandbox("eph", true, Stopped).await;
    let CleanupClaim::Claimed { .. } = t.db.claim_cleanup("eph", true).await.unwrap() else {
        panic!("claim");
    };
    std::fs::remove_dir_all(t.dir("eph")).unwrap();
    // The dead cleaner's claim expires.
    sqlx::query("UPDATE sandbox SET cleanup_claim_expires_at = 0")
        .execute(t.db.pool())
        .await
        .unwrap();

    assert_eq!(cleanup_sandbox(&t.db, &t.home, "eph").await.unwrap(), CleanupOutcome::Removed);
    assert!(t.db.find_sandbox("eph").await.unwrap().is_none());
}

#[tokio::test]
async fn cleanup_keeps_row_when_dir_removal_fails_and_succeeds_on_retry() {
    let t = TestHome::new().await;
    t.sandbox("eph", true, Crashed).await;
    // A mount point inside the directory: rmdir fails with EBUSY, even for root.
    let mut mount = TmpfsMount::new(&t.dir("eph").join("runtime").join("upper"));

    let outcome = cleanup_sandbox(&t.db, &t.home, "eph").await.unwrap();
    assert_eq!(outcome, CleanupOutcome::DirRemoveFailed);
    assert_eq!(t.status("eph").await, Some(Crashed), "row kept so the failure stays visible");

    // The claim was released: a retry is not blocked by it.
    mount.unmount();
    assert_eq!(cleanup_sandbox(&t.db, &t.home, "eph").await.unwrap(), CleanupOutcome::Removed);
    assert!(!t.dir("eph").exists());
    assert!(t.db.find_sandbox("eph").await.unwrap().is_none());
}

#[tokio::test]
async fn remove_takes_persistent_sandboxes_and_returns_dir_failures_as_errors() {
    let t = TestHome::new().await;
    t.sandbox("kept", false, Stopped).await;
    let mut mount = TmpfsMount::new(&t.dir("kept").join("disk"));

    let err = remove_sandbox(&t.db, &t.home, "kept").await.unwrap_err();
    assert!(matches!(&err, LifecycleError::RemoveDir { name, .. } if name == "kept"), "{err}");
    assert_eq!(t.status("kept").await, Some(Stopped));

    mount.unmount();
    assert_eq!(remove_sandbox(&t.db, &t.home, "kept").await.unwrap(), CleanupOutcome::Removed);
    t.sandbox("busy", false, Running).await;
    assert_eq!(
        remove_sandbox(&t.db, &t.home, "busy").await.unwrap(),
        CleanupOutcome::SkippedActive
    );
}

#[tokio::test]
async fn rm_removes_a_created_sandbox_that_the_sweep_leaves_alone() {
    let t = TestHome::new().await;
    t.sandbox("fresh", true, Created).await;

    let swept = cleanup_sandbox(&t.db, &t.home, "fresh").await.unwrap();
    assert_eq!(swept, CleanupOutcome::SkippedActive, "a Created row may be about to start");
    assert!(t.dir("fresh").exists());

    assert_eq!(remove_sandbox(&t.db, &t.home, "fresh").await.unwrap(), CleanupOutcome::Removed);
    assert!(!t.dir("fresh").exists());
    assert_eq!(t.status("fresh").await, None);
}

#[tokio::test]
async fn removal_takes_the_stale_sockets_and_free_lock_file_of_a_killed_sandbox_process() {
    let t = TestHome::new().await;
    t.sandbox("killed", false, Crashed).await;
    std::fs::create_dir_all(t.home.run_dir()).unwrap();
    let client = std::os::unix::net::UnixListener::bind(t.home.client_socket("killed")).unwrap();
    drop(client); // As after SIGKILL: the socket file outlives its listener.
    std::fs::write(t.home.agent_port_socket("killed"), b"").unwrap();
    std::fs::write(t.home.lock_path("killed"), b"").unwrap();

    assert_eq!(remove_sandbox(&t.db, &t.home, "killed").await.unwrap(), CleanupOutcome::Removed);
    assert!(!t.home.client_socket("killed").exists());
    assert!(!t.home.agent_port_socket("killed").exists());
    assert!(!t.home.lock_path("killed").exists());
}

#[tokio::test]
async fn a_held_lock_file_outlives_the_removal_and_goes_once_it_is_free() {
    let t = TestHome::new().await;
    t.sandbox("eph", true, Stopped).await;
    // The self-clean path: the sandbox process still holds its lock while it removes itself.
    let held = crate::lifecycle::LauncherLock::try_acquire_for(&t.home, "eph").unwrap().unwrap();

    assert_eq!(cleanup_sandbox(&t.db, &t.home, "eph").await.unwrap(), CleanupOutcome::Removed);
    assert!(t.home.lock_path("eph").exists(), "removed under its holder");

    drop(held);
    assert_eq!(cleanup_sandbox(&t.db, &t.home, "eph").await.unwrap(), CleanupOutcome::AlreadyGone);
    assert!(!t.home.lock_path("eph").exists(), "left behind once free");
}
