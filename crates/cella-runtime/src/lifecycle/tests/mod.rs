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
