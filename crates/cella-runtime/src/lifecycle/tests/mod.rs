//! Lifecycle tests against a real SQLite file in a temp dir, real processes and real signals.
//!
//! Nothing here mocks the database or the kernel: runs record real child processes, deaths are
//! real `SIGKILL`s, an unremovable directory is a real tmpfs mount point, and the race tests
//! re-execute this test binary as independent worker processes (see [`support::worker_entry`]).
//! They run as root (mount needs it), like the rest of the suite.

mod cleanup;
mod maintenance;
mod races;
mod reconcile;
mod support;

/// The lifecycle futures can be spawned on a multi-threaded runtime (the sandbox process runs
/// maintenance as a background task); this stops compiling if one loses `Send`.
#[allow(dead_code, clippy::let_underscore_future)]
fn lifecycle_futures_are_send(db: cella_db::Db, home: crate::home::Home) {
    fn send<F: std::future::Future + Send + 'static>(_: F) {}
    let (d, h) = (db.clone(), home.clone());
    send(async move { super::run_startup_maintenance(&d, &h).await });
    let (d, h) = (db.clone(), home.clone());
    send(async move { super::cleanup_sandbox(&d, &h, "a").await });
    let (d, h) = (db.clone(), home.clone());
    send(async move { super::remove_sandbox(&d, &h, "a").await });
    let (d, h) = (db.clone(), home.clone());
    send(async move { super::reconcile_sandbox(&d, &h, "a").await });
    send(async move { super::list_reconciled(&db, &home).await });
}
