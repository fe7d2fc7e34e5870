//! Reconcile with real processes: killed, zombie, pid reused, launcher lock held or free.

use cella_db::{RunStatus, SandboxStatus::*, TerminationReason};

use super::support::{Sleeper, TestHome};
use crate::lifecycle::{
    is_alive, list_reconciled, reconcile_sandbox, LauncherLock, ProcessIdentity, ReconcileOutcome,
};

#[tokio::test]
async fn live_run_process_keeps_the_sandbox_running() {
    let t = TestHome::new().await;
    let owner = Sleeper::spawn();
    t.sandbox_with_run("web", false, &owner.identity(), Running).await;

    assert_eq!(reconcile_sandbox(&t.db, &t.home, "web").await.unwrap(), ReconcileOutcome::Alive);
    assert_eq!(t.status("web").await, Some(Running));
}

#[tokio::test]
async fn sandbox_process_killed_with_sigkill_is_reconciled_to_crashed() {
    let t = TestHome::new().await;
    let mut owner = Sleeper::spawn();
    let identity = owner.identity();
    let (_, run) = t.sandbox_with_run("web", false, &identity, Running).await;

    owner.kill_and_reap();
    assert!(!is_alive(&identity));
    let outcome = reconcile_sandbox(&t.db, &t.home, "web").await.unwrap();

    assert_eq!(outcome, ReconcileOutcome::MarkedCrashed);
    assert_eq!(t.status("web").await, Some(Crashed));
    let run = t.db.find_run(run.id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Terminated);
    assert_eq!(run.termination_reason, Some(TerminationReason::InternalError));
    assert!(run.terminated_at.is_some());
    assert_eq!(reconcile_sandbox(&t.db, &t.home, "web").await.unwrap(), ReconcileOutcome::Inactive);
}

#[tokio::test]
async fn zombie_run_process_counts_as_dead() {
    let t = TestHome::new().await;
    let owner = Sleeper::spawn();
    let identity = owner.identity();
    t.sandbox_with_run("web", false, &identity, Running).await;

    owner.kill_without_reaping();
    assert!(!is_alive(&identity), "a zombie is dead");
    let outcome = reconcile_sandbox(&t.db, &t.home, "web").await.unwrap();
    assert_eq!(outcome, ReconcileOutcome::MarkedCrashed);
}

#[tokio::test]
async fn live_pid_with_another_start_time_is_reconciled_as_dead() {
    let t = TestHome::new().await;
    // The pid belongs to a live process, but not the one the run recorded (pid reuse).
    let other = Sleeper::spawn();
    let mut recorded = other.identity();
    recorded.start_time -= 1;
    t.sandbox_with_run("web", false, &recorded, Running).await;

    assert!(!is_alive(&recorded));
    let outcome = reconcile_sandbox(&t.db, &t.home, "web").await.unwrap();
    assert_eq!(outcome, ReconcileOutcome::MarkedCrashed);
    assert!(is_alive(&other.identity()), "the unrelated process is untouched");
}

#[tokio::test]
async fn run_recorded_before_a_reboot_is_dead() {
    let t = TestHome::new().await;
    let mut recorded = ProcessIdentity::current().unwrap();
    recorded.boot_id = "00000000-0000-0000-0000-000000000000".into();
    t.sandbox_with_run("web", false, &recorded, Running).await;

    let outcome = reconcile_sandbox(&t.db, &t.home, "web").await.unwrap();
    assert_eq!(outcome, ReconcileOutcome::MarkedCrashed);
}

#[tokio::test]
async fn draining_sandbox_whose_process_died_becomes_stopped() {
    let t = TestHome::new().await;
    let mut owner = Sleeper::spawn();
    let (_, run) = t.sandbox_with_run("web", false, &owner.identity(), Running).await;
    t.db.set_sandbox_status("web", Draining, &[Running]).await.unwrap();

    owner.kill_and_reap();
    let outcome = reconcile_sandbox(&t.db, &t.home, "web").await.unwrap();

    assert_eq!(outcome, ReconcileOutcome::MarkedStopped);
    assert_eq!(t.status("web").await, Some(Stopped));
    let run = t.db.find_run(run.id).await.unwrap().unwrap();
    assert_eq!(run.termination_reason, Some(TerminationReason::ShutdownRequested));
}

#[tokio::test]
async fn starting_sandbox_without_run_waits_while_its_launcher_lock_is_held() {
    let t = TestHome::new().await;
    t.sandbox("web", false, Starting).await;
    let launcher = LauncherLock::try_acquire_for(&t.home, "web").unwrap().unwrap();

    let outcome = reconcile_sandbox(&t.db, &t.home, "web").await.unwrap();
    assert_eq!(outcome, ReconcileOutcome::LauncherBusy);
    assert_eq!(t.status("web").await, Some(Starting));

    drop(launcher);
    let outcome = reconcile_sandbox(&t.db, &t.home, "web").await.unwrap();
    assert_eq!(outcome, ReconcileOutcome::MarkedCrashed);
    assert_eq!(t.status("web").await, Some(Crashed));
}

#[tokio::test]
async fn launcher_lock_inherited_by_a_child_keeps_the_sandbox_starting() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let t = TestHome::new().await;
    t.sandbox("web", false, Starting).await;
    let launcher = LauncherLock::try_acquire_for(&t.home, "web").unwrap().unwrap();
    let fd = launcher.file().as_raw_fd();
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("1000");
    // SAFETY: the closure runs in the forked child before exec and only calls dup2, which is
    // async-signal-safe. `fd` stays open in the parent until after spawn; its duplicate at 200
    // lacks close-on-exec, so the child inherits the locked open file description.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 200) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(launcher); // The launcher exits; the sandbox process holds the lock.

    let outcome = reconcile_sandbox(&t.db, &t.home, "web").await.unwrap();
    assert_eq!(outcome, ReconcileOutcome::LauncherBusy);

    child.kill().unwrap();
    child.wait().unwrap();
    let outcome = reconcile_sandbox(&t.db, &t.home, "web").await.unwrap();
    assert_eq!(outcome, ReconcileOutcome::MarkedCrashed);
}

#[tokio::test]
async fn starting_sandbox_whose_run_process_died_becomes_crashed() {
    let t = TestHome::new().await;
    let mut owner = Sleeper::spawn();
    t.sandbox_with_run("web", false, &owner.identity(), Starting).await;
    // Even a held launcher lock does not matter once a dead run is recorded.
    let _launcher = LauncherLock::try_acquire_for(&t.home, "web").unwrap().unwrap();

    owner.kill_and_reap();
    let outcome = reconcile_sandbox(&t.db, &t.home, "web").await.unwrap();
    assert_eq!(outcome, ReconcileOutcome::MarkedCrashed);
}

#[tokio::test]
async fn stopped_sandbox_with_a_stale_running_run_gets_the_run_closed() {
    let t = TestHome::new().await;
    let mut owner = Sleeper::spawn();
    let (_, run) = t.sandbox_with_run("web", false, &owner.identity(), Running).await;
    t.db.set_sandbox_status("web", Stopped, &[Running]).await.unwrap();

    owner.kill_and_reap();
    let outcome = reconcile_sandbox(&t.db, &t.home, "web").await.unwrap();
    assert_eq!(outcome, ReconcileOutcome::ClosedStaleRun);
    assert_eq!(t.status("web").await, Some(Stopped));
    let run = t.db.find_run(run.id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Terminated);
}

#[tokio::test]
async fn listing_shows_a_killed_sandbox_as_crashed_at_once() {
    let t = TestHome::new().await;
    let mut dead = Sleeper::spawn();
    let live = Sleeper::spawn();
    t.sandbox_with_run("dead", false, &dead.identity(), Running).await;
    t.sandbox_with_run("live", false, &live.identity(), Running).await;
    t.sandbox("new", false, Created).await;

    dead.kill_and_reap();
    let list = list_reconciled(&t.db, &t.home).await.unwrap();
    let statuses: Vec<(&str, _)> =
        list.iter().map(|s| (s.sandbox.name.as_str(), s.sandbox.status)).collect();
    assert_eq!(statuses, [("dead", Crashed), ("live", Running), ("new", Created)]);
    assert_eq!(
        reconcile_sandbox(&t.db, &t.home, "gone").await.unwrap(),
        ReconcileOutcome::NotFound
    );
}
