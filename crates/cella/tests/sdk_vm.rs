//! The Rust SDK end to end, as the README shows it: `Sandbox::builder(..).create()`, execs,
//! `stop`, and the management handle (`Cella`) for persistent sandboxes. Each test boots a real
//! guest through the backend `auto` picks (or `CELLA_TEST_BACKEND`), in its own `CELLA_HOME`.
//!
//! The sandbox process is the `cella` binary of the same cargo build (`target/<profile>/cella`,
//! next to this test's `deps/` directory), never one found on PATH.

use std::path::PathBuf;
use std::time::Duration;

use cella::{Cella, Exited, Sandbox, SandboxBuilder, SandboxError};
use cella_db::SandboxStatus;
use cella_runtime::config::BackendKind;
use cella_runtime::home::Home;
use cella_testkit::{require_vm, test_backend, TestHome};

/// Whole-test deadline: a hung guest fails the test instead of waiting for nextest's timeout.
const TEST_DEADLINE: Duration = Duration::from_secs(240);

/// The `cella` binary cargo built alongside this test.
fn cella_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let bin = profile_dir.join("cella");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace (cargo nextest run --workspace) so that the SDK \
         tests can spawn the sandbox process",
        bin.display()
    );
    bin
}

fn builder(home: &TestHome, name: &str) -> SandboxBuilder {
    let backend = match test_backend() {
        Some(name) => name.parse().expect("CELLA_TEST_BACKEND names a backend"),
        None => BackendKind::Auto,
    };
    Sandbox::builder(name).home(home.path()).cella_bin(cella_bin()).backend(backend)
}

/// Runs `test` on a fresh tokio runtime, failing it if it outlives [`TEST_DEADLINE`].
fn run_bounded<F: std::future::Future<Output = ()>>(test: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        tokio::time::timeout(TEST_DEADLINE, test).await.expect("the test ran past its deadline")
    });
}

#[test]
fn vm_sdk_ephemeral_sandbox_runs_several_execs_and_leaves_nothing() {
    if !require_vm("vm_sdk_ephemeral_sandbox_runs_several_execs_and_leaves_nothing") {
        return;
    }
    let home = TestHome::new();
    run_bounded(async {
        let sandbox = builder(&home, "sdk-eph")
            .ephemeral(true)
            .env("GREETING", "hi")
            .workdir("/tmp")
            .create()
            .await
            .expect("the sandbox boots");
        assert!(sandbox.pid().is_some());

        let out = sandbox.exec_output(&["sh", "-c", "echo $GREETING; pwd; echo e >&2; exit 3"]);
        let out = out.await.unwrap();
        assert_eq!(out.exited, Exited::Code { code: 3 });
        assert_eq!(out.stdout, b"hi\n/tmp\n");
        assert_eq!(out.stderr, b"e\n");

        // State written by one exec is seen by the next: one VM serves them all.
        let write = sandbox.exec_output(&["sh", "-c", "echo kept > /tmp/f"]).await.unwrap();
        assert_eq!(write.exited, Exited::Code { code: 0 });
        let read = sandbox.exec_output(&["cat", "/tmp/f"]).await.unwrap();
        assert_eq!(read.stdout, b"kept\n");

        let missing = sandbox.exec_output(&["no-such-command"]).await.unwrap();
        assert_eq!(missing.exited.exit_status(), 127, "{missing:?}");

        let dir = sandbox.dir();
        assert!(dir.is_dir());
        sandbox.stop(Duration::from_secs(60)).await.expect("an orderly stop");
        assert!(!dir.exists(), "the ephemeral sandbox's directory outlived it");
    });
    assert!(home.run_entries().is_empty(), "{:?}", home.run_entries());
    home.assert_nothing_left();
}

#[test]
fn vm_sdk_persistent_sandbox_keeps_its_files_across_a_restart() {
    if !require_vm("vm_sdk_persistent_sandbox_keeps_its_files_across_a_restart") {
        return;
    }
    let home = TestHome::new();
    run_bounded(async {
        let mut sandbox = builder(&home, "sdk-keep").create().await.expect("the sandbox boots");
        let out = sandbox.exec_output(&["sh", "-c", "echo state > /root/file"]).await.unwrap();
        assert_eq!(out.exited, Exited::Code { code: 0 }, "{out:?}");

        let cella = Cella::open_at(Home::at(home.path().to_path_buf())).await.unwrap();
        let running = cella.list().await.unwrap();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].sandbox.status, SandboxStatus::Running);

        // A second create of the same name is refused and changes nothing.
        let again = builder(&home, "sdk-keep").create().await;
        assert!(
            matches!(&again, Err(SandboxError::Exists { name }) if name == "sdk-keep"),
            "duplicate not refused: {:?}",
            again.err()
        );

        cella.stop("sdk-keep", Duration::from_secs(60), false).await.expect("an orderly stop");
        assert!(sandbox.wait_exit(Duration::from_secs(10)).await, "stopped, yet not exited");
        let (summary, runs) = cella.inspect("sdk-keep").await.unwrap();
        assert_eq!(summary.sandbox.status, SandboxStatus::Stopped);
        assert_eq!(runs.len(), 1);

        let restarted = cella.start("sdk-keep", &cella_bin()).await.unwrap().ready().await;
        let mut restarted = restarted.expect("the sandbox boots again");
        let out = restarted.exec_output(&["cat", "/root/file"]).await.unwrap();
        assert_eq!(out.stdout, b"state\n", "{out:?}");
        assert_eq!(cella.inspect("sdk-keep").await.unwrap().1.len(), 2);

        cella.remove("sdk-keep", true).await.expect("rm --force of a running sandbox");
        assert!(cella.list().await.unwrap().is_empty());
        assert!(restarted.wait_exit(Duration::from_secs(10)).await, "removed, yet not exited");
    });
    home.assert_nothing_left();
}

#[test]
fn vm_sdk_dropping_the_handle_of_an_ephemeral_sandbox_stops_and_removes_it() {
    if !require_vm("vm_sdk_dropping_the_handle_of_an_ephemeral_sandbox_stops_and_removes_it") {
        return;
    }
    let home = TestHome::new();
    run_bounded(async {
        let sandbox = builder(&home, "sdk-drop").ephemeral(true).create().await.unwrap();
        let pid = sandbox.pid().unwrap() as i32;
        drop(sandbox);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // Reaped by the handle's reaper thread: the pid disappears rather than lingering as a
        // zombie of this process.
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "sandbox process {pid} outlived its handle"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    home.assert_nothing_left();
}

#[test]
fn vm_sdk_stop_through_a_looked_up_handle_waits_for_the_stop() {
    if !require_vm("vm_sdk_stop_through_a_looked_up_handle_waits_for_the_stop") {
        return;
    }
    let home = TestHome::new();
    run_bounded(async {
        let mut started = builder(&home, "sdk-look").create().await.unwrap();
        let cella = Cella::open_at(Home::at(home.path().to_path_buf())).await.unwrap();
        let looked_up = cella.sandbox("sdk-look").await.unwrap();
        assert!(looked_up.pid().is_none(), "this handle did not start the process");

        looked_up.stop(Duration::from_secs(30)).await.unwrap();
        let (summary, _) = cella.inspect("sdk-look").await.unwrap();
        assert_eq!(summary.sandbox.status, SandboxStatus::Stopped);
        assert!(started.wait_exit(Duration::from_secs(10)).await);
        cella.remove("sdk-look", false).await.unwrap();
    });
    home.assert_nothing_left();
}

#[test]
fn sdk_refuses_environment_keys_the_guest_could_never_set() {
    let home = TestHome::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for (key, value) in [("BAD=KEY", "x"), ("", "x"), ("K", "nul\0byte")] {
        let result = runtime.block_on(builder(&home, "sdk-env").env(key, value).create());
        let err = result.err().expect("invalid environment accepted");
        assert!(err.to_string().contains("invalid environment entry"), "{err}");
    }
    assert!(home.sandbox_rows().is_empty() && home.sandbox_dirs().is_empty());
}
