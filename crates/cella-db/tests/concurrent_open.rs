//! Many processes opening (and migrating) one fresh database at the same instant.
//!
//! The test binary re-executes itself as worker processes: the `worker` test does nothing unless
//! `CELLA_DB_TEST_WORKER` is set, in which case it is the worker.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cella_db::{Db, NewSandbox, SandboxStatus, SCHEMA_VERSION};

const WORKER_ENV: &str = "CELLA_DB_TEST_WORKER";
const PATH_ENV: &str = "CELLA_DB_TEST_PATH";
const START_ENV: &str = "CELLA_DB_TEST_START_AT_MS";
const PROCESSES: usize = 50;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn worker() {
    let Ok(index) = std::env::var(WORKER_ENV) else {
        return;
    };
    let path = std::env::var(PATH_ENV).unwrap();
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    std::thread::sleep(Duration::from_millis(start.saturating_sub(now_ms())));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = rt.block_on(async {
        let db = Db::open(&path).await?;
        let new = NewSandbox {
            name: format!("w{index}"),
            config: serde_json::json!({}),
            ephemeral: true,
            status: SandboxStatus::Created,
        };
        db.insert_sandbox(&new).await
    });
    match result {
        Ok(_) => println!("WORKER-RESULT ok"),
        Err(e) => println!("WORKER-RESULT err {e}: {:?}", std::error::Error::source(&e)),
    }
}

#[test]
fn fifty_processes_opening_a_fresh_database_at_once_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db").join("cella.db");
    let start = now_ms() + 1500;

    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "worker", "--nocapture", "--test-threads=1"])
                .env(WORKER_ENV, i.to_string())
                .env(PATH_ENV, &path)
                .env(START_ENV, start.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let results: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines()
                .find_map(|l| l.split_once("WORKER-RESULT ").map(|(_, r)| r))
                .unwrap_or("no result")
                .to_owned()
        })
        .collect();

    let failures: Vec<&String> = results.iter().filter(|r| *r != "ok").collect();
    assert!(failures.is_empty(), "{} of {PROCESSES} failed: {failures:?}", failures.len());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let db = Db::open(&path).await.unwrap();
        assert_eq!(db.list_sandboxes().await.unwrap().len(), PROCESSES);
        let version: i64 =
            sqlx::query_scalar("PRAGMA user_version").fetch_one(db.pool()).await.unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let leases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM maintenance_lease")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(leases, 1, "the schema was applied once");
    });
}
