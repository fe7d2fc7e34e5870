//! Cost of startup maintenance on its skip paths (issue 4, docs/benchmarks.md).
//!
//! Every sandbox process runs `run_startup_maintenance` once. When the lease is held by another
//! process, or a sweep completed less than `MIN_SWEEP_INTERVAL` ago, it must cost one indexed
//! read of the `maintenance_lease` row and nothing else. Measured on a real SQLite file (WAL, the
//! production connection settings) in a temporary directory holding 1,000 sandbox rows; for
//! comparison, a trivial `SELECT 1` through the same pool (the cost of any statement) and a full
//! sweep that finds nothing to do on the same table.
//!
//! Run: `cargo bench -p cella-runtime --bench maintenance`. Also prints SQLite's query plan for
//! the lease read.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::time::Duration;

use cella_db::{now_ms, Db, NewSandbox, SandboxStatus, SANDBOX_MAINTENANCE_LEASE};
use cella_runtime::home::Home;
use cella_runtime::lifecycle::{run_startup_maintenance, MaintenanceOutcome, SkipReason};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

/// Sandbox rows in the table: the lease read must not depend on them.
const ROWS: usize = 1_000;

/// The statement `Db::read_lease` runs (cella-db/src/lease.rs).
const LEASE_READ: &str = "SELECT name, holder_pid, lease_expires_at, last_completed_at, \
                          sweep_count FROM maintenance_lease WHERE name = ?";

struct Fixture {
    rt: tokio::runtime::Runtime,
    db: Db,
    home: Home,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let db = rt.block_on(async {
            let db = Db::open(home.db_path()).await.unwrap();
            for i in 0..ROWS {
                let new = NewSandbox {
                    name: format!("sandbox-{i:04}"),
                    config: serde_json::json!({ "name": format!("sandbox-{i:04}") }),
                    // Persistent sandboxes, one in ten ephemeral; none active or terminal.
                    ephemeral: i % 10 == 0,
                    status: SandboxStatus::Created,
                };
                db.insert_sandbox(&new).await.unwrap();
            }
            db
        });
        Self { rt, db, home, _dir: dir }
    }

    fn exec(&self, sql: &str, a: i64) {
        self.rt.block_on(async {
            sqlx::query(sql)
                .bind(a)
                .bind(SANDBOX_MAINTENANCE_LEASE)
                .execute(self.db.pool())
                .await
                .unwrap();
        });
    }

    /// Another process (pid 1 here) holds the lease for the next hour.
    fn lease_held_by_other(&self) {
        self.exec(
            "UPDATE maintenance_lease SET holder_pid = 1, holder_token = 'other', \
             lease_expires_at = ?, last_completed_at = NULL WHERE name = ?",
            now_ms() + 3_600_000,
        );
    }

    /// The lease is free and a sweep completed just now.
    fn completed_recently(&self) {
        self.exec(
            "UPDATE maintenance_lease SET holder_pid = NULL, holder_token = NULL, \
             lease_expires_at = 0, last_completed_at = ? WHERE name = ?",
            now_ms(),
        );
    }

    /// The lease is free and no sweep ever completed: the next call sweeps.
    fn stale(&self) {
        self.exec(
            "UPDATE maintenance_lease SET holder_pid = NULL, holder_token = NULL, \
             lease_expires_at = ?, last_completed_at = NULL WHERE name = ?",
            0,
        );
    }

    fn maintain(&self) -> MaintenanceOutcome {
        self.rt.block_on(run_startup_maintenance(&self.db, &self.home))
    }

    fn print_lease_plan(&self) {
        let plan: Vec<(i64, i64, i64, String)> = self.rt.block_on(async {
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {LEASE_READ}"))
                .bind(SANDBOX_MAINTENANCE_LEASE)
                .fetch_all(self.db.pool())
                .await
                .unwrap()
        });
        for (_, _, _, detail) in plan {
            println!("EXPLAIN QUERY PLAN (lease read): {detail}");
        }
    }
}

fn bench(c: &mut Criterion) {
    let f = Fixture::new();
    f.print_lease_plan();
    let mut group = c.benchmark_group("startup_maintenance");
    // Short, so a "completed recently" set up at the start stays within MIN_SWEEP_INTERVAL.
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));

    // The floor of any statement through the pool: one trivial query, same connections.
    group.bench_function("pool_round_trip_select_1", |b| {
        b.iter(|| {
            f.rt.block_on(async {
                sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(f.db.pool()).await.unwrap()
            })
        })
    });

    f.lease_held_by_other();
    // A check of the set-up, not of time: the path measured is the one intended.
    assert_eq!(f.maintain(), MaintenanceOutcome::Skipped(SkipReason::LeaseHeld));
    group.bench_function("lease_held_by_other", |b| b.iter(|| f.maintain()));

    f.completed_recently();
    assert_eq!(f.maintain(), MaintenanceOutcome::Skipped(SkipReason::RecentlyCompleted));
    group.bench_function("sweep_completed_recently", |b| b.iter(|| f.maintain()));

    f.stale();
    assert!(matches!(f.maintain(), MaintenanceOutcome::Swept(ref r) if r.completed));
    group.bench_function("sweep_nothing_to_do_1000_rows", |b| {
        b.iter_batched(|| f.stale(), |()| f.maintain(), BatchSize::PerIteration)
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
