//! Persistent and ephemeral sandboxes through the CLI, with real guests, a real state database
//! and real signals. Test names start with `vm_` (serialized, hard timeout; see
//! .config/nextest.toml).

use std::time::{Duration, Instant};

use cella_testkit::{require_vm, run_with_timeout, Finished, TestHome, COMMAND_TIMEOUT};

const BIN: &str = env!("CARGO_BIN_EXE_cella");

fn cella(home: &TestHome, args: &[&str]) -> Finished {
    let mut cmd = home.command(BIN);
    cmd.args(args);
    run_with_timeout(cmd, b"", COMMAND_TIMEOUT)
}

fn ok(home: &TestHome, args: &[&str]) -> String {
    let out = cella(home, args);
    assert_eq!(out.code(), 0, "cella {args:?}: {}", out.stderr_text());
    String::from_utf8(out.stdout).unwrap()
}

fn ls_json(home: &TestHome) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(home, &["ls", "--all", "--json"])).unwrap()
}

fn entry(home: &TestHome, name: &str) -> Option<serde_json::Value> {
    ls_json(home).into_iter().find(|e| e["name"] == name)
}

fn status(home: &TestHome, name: &str) -> String {
    entry(home, name).map(|e| e["status"].as_str().unwrap().to_string()).unwrap_or_default()
}

/// Polls `ls` until `name` has `want` status.
fn wait_status(home: &TestHome, name: &str, want: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(e) = entry(home, name) {
            if e["status"] == want {
                return e;
            }
        }
        assert!(Instant::now() < deadline, "{name} never became {want}: {:?}", entry(home, name));
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn vm_sandbox_keeps_files_across_stop_and_start_then_is_removed() {
    if !require_vm("vm_sandbox_keeps_files_across_stop_and_start_then_is_removed") {
        return;
    }
    let home = TestHome::new();
    ok(&home, &["create", "keeper", "--env", "GREETING=hi"]);
    assert_eq!(status(&home, "keeper"), "Created");

    ok(&home, &["start", "keeper"]);
    assert_eq!(status(&home, "keeper"), "Running");
    assert_eq!(
        ok(
            &home,
            &["exec", "keeper", "--", "sh", "-c", "echo $GREETING > /root/note; cat /root/note"]
        ),
        "hi\n"
    );
    let out = cella(&home, &["start", "keeper"]);
    assert_eq!(out.code(), 125);
    assert!(out.stderr_text().contains("already Running"), "{}", out.stderr_text());

    ok(&home, &["stop", "keeper"]);
    let stopped = entry(&home, "keeper").unwrap();
    assert_eq!(stopped["status"], "Stopped");
    assert_eq!(stopped["last_termination_reason"], "ShutdownRequested");
    let out = cella(&home, &["stop", "keeper"]);
    assert_eq!(out.code(), 125, "stopping a stopped sandbox must fail");
    assert!(out.stderr_text().contains("not running"), "{}", out.stderr_text());

    ok(&home, &["start", "keeper"]);
    assert_eq!(ok(&home, &["exec", "keeper", "--", "cat", "/root/note"]), "hi\n");
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&home, &["inspect", "keeper", "--json"])).unwrap();
    assert_eq!(inspect["runs"].as_array().unwrap().len(), 2);

    let out = cella(&home, &["rm", "keeper"]);
    assert_eq!(out.code(), 125, "removing a running sandbox without --force must fail");
    assert_eq!(status(&home, "keeper"), "Running");
    ok(&home, &["rm", "--force", "keeper"]);
    assert!(entry(&home, "keeper").is_none());
    assert!(home.sandbox_dirs().is_empty(), "{:?}", home.sandbox_dirs());
}

#[test]
fn vm_run_keep_leaves_a_stopped_sandbox_that_starts_again_with_its_files() {
    if !require_vm("vm_run_keep_leaves_a_stopped_sandbox_that_starts_again_with_its_files") {
        return;
    }
    let home = TestHome::new();
    let out = cella(
        &home,
        &["run", "--name", "kept", "--keep", "--", "sh", "-c", "echo v1 > /root/state"],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let kept = wait_status(&home, "kept", "Stopped", Duration::from_secs(30));
    assert_eq!(kept["ephemeral"], false);
    let out = cella(&home, &["run", "--name", "kept", "--", "true"]);
    assert_eq!(out.code(), 125, "a duplicate name must fail");
    assert!(out.stderr_text().contains("already exists"), "{}", out.stderr_text());

    ok(&home, &["start", "kept"]);
    assert_eq!(ok(&home, &["exec", "kept", "--", "cat", "/root/state"]), "v1\n");
    // Started again, it is an ordinary persistent sandbox: the exec's client leaving does not
    // stop it, as it stopped the boot `cella run` attached to.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(&home, "kept"), "Running");
    assert_eq!(ok(&home, &["exec", "kept", "--", "echo", "again"]), "again\n");
    ok(&home, &["rm", "-f", "kept"]);
}

#[test]
fn vm_idle_timeout_stops_a_sandbox_with_idle_timeout() {
    if !require_vm("vm_idle_timeout_stops_a_sandbox_with_idle_timeout") {
        return;
    }
    let home = TestHome::new();
    ok(&home, &["create", "idler", "--idle-timeout", "3"]);
    ok(&home, &["start", "idler"]);
    let stopped = wait_status(&home, "idler", "Stopped", Duration::from_secs(60));
    assert_eq!(stopped["last_termination_reason"], "IdleTimeout");
    ok(&home, &["rm", "idler"]);
}

#[test]
fn vm_max_duration_stops_a_busy_sandbox_with_max_duration_exceeded() {
    if !require_vm("vm_max_duration_stops_a_busy_sandbox_with_max_duration_exceeded") {
        return;
    }
    let home = TestHome::new();
    // The command keeps a session open, so only the maximum duration can end the run.
    let out = cella(
        &home,
        &["run", "--name", "capped", "--keep", "--max-duration", "4", "--", "sleep", "600"],
    );
    assert_eq!(out.code(), 143, "sleep ends with the SIGTERM of the shutdown");
    let stderr = out.stderr_text();
    assert!(stderr.contains("reached its maximum duration (4s)"), "{stderr}");
    let stopped = wait_status(&home, "capped", "Stopped", Duration::from_secs(60));
    assert_eq!(stopped["last_termination_reason"], "MaxDurationExceeded");
}

#[test]
fn vm_killed_sandbox_process_shows_crashed_at_the_next_command() {
    if !require_vm("vm_killed_sandbox_process_shows_crashed_at_the_next_command") {
        return;
    }
    let home = TestHome::new();
    ok(&home, &["create", "victim"]);
    ok(&home, &["start", "victim"]);
    let pid = entry(&home, "victim").unwrap()["pid"].as_i64().unwrap();
    // SAFETY: plain kill(2) on the sandbox process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_process_gone(pid as i32);
    let crashed = entry(&home, "victim").unwrap();
    assert_eq!(crashed["status"], "Crashed", "{crashed}");
    assert_eq!(crashed["last_termination_reason"], "InternalError");

    // A crashed persistent sandbox starts again.
    ok(&home, &["start", "victim"]);
    assert_eq!(ok(&home, &["exec", "victim", "--", "echo", "back"]), "back\n");
    ok(&home, &["rm", "-f", "victim"]);
}

#[test]
fn vm_killed_ephemeral_sandbox_is_gone_after_the_next_start() {
    if !require_vm("vm_killed_ephemeral_sandbox_is_gone_after_the_next_start") {
        return;
    }
    let home = TestHome::new();
    // `cella run` keeps the ephemeral sandbox alive while its command sleeps.
    let mut cmd = home.command(BIN);
    cmd.args(["run", "--name", "doomed", "--", "sleep", "600"]);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut runner = cmd.spawn().unwrap();
    let running = wait_status(&home, "doomed", "Running", COMMAND_TIMEOUT);
    let pid = running["pid"].as_i64().unwrap();
    // SAFETY: plain kill(2) on the sandbox process and the `cella run` this test started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
        libc::kill(-(runner.id() as i32), libc::SIGKILL);
    }
    let _ = runner.wait();
    assert_eq!(status(&home, "doomed"), "Crashed");

    // The next sandbox process's startup sweep removes it, row and directory. The first boot of
    // this test already swept, so let the minimum interval between sweeps elapse first.
    expire_last_sweep(&home);
    let out = cella(&home, &["run", "--", "true"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert!(entry(&home, "doomed").is_none(), "{:?}", ls_json(&home));
    assert!(!home.sandbox_dirs().contains(&"doomed".to_string()));
}

/// Waits until `pid` has died (gone, or a zombie): kill(2) returns before the target is dead.
fn wait_process_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, None | Some("Z") | Some("X")) {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} survived SIGKILL: {stat}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Moves the last completed maintenance sweep back past the minimum sweep interval, as if the
/// interval had elapsed.
fn expire_last_sweep(home: &TestHome) {
    let db_path = home.path().join("db/cella.db");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let db = cella_db::Db::open(&db_path).await.unwrap();
        sqlx::query("UPDATE maintenance_lease SET last_completed_at = 0, lease_expires_at = 0")
            .execute(db.pool())
            .await
            .unwrap();
    });
}

/// The pid of the QEMU process of running sandbox `name`: its sandbox process's only child.
fn qemu_of(home: &TestHome, name: &str) -> i32 {
    let sandbox_pid = entry(home, name).unwrap()["pid"].as_i64().unwrap();
    let children =
        std::fs::read_to_string(format!("/proc/{sandbox_pid}/task/{sandbox_pid}/children"))
            .unwrap_or_default();
    let vmm: Vec<i32> = children.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    assert_eq!(vmm.len(), 1, "expected one VMM child of the sandbox process: {vmm:?}");
    vmm[0]
}

#[test]
fn vm_frozen_guest_ends_with_agent_unresponsive() {
    if !require_vm("vm_frozen_guest_ends_with_agent_unresponsive") {
        return;
    }
    let home = TestHome::new();
    // Freezing the guest means stopping its emulator process: qemu's, whatever the host's
    // default backend (under krun the VM runs inside the sandbox process itself).
    ok(&home, &["create", "frozen", "--backend", "qemu"]);
    ok(&home, &["start", "frozen"]);
    let vmm = qemu_of(&home, "frozen");
    // Freeze the whole VM: the agent's heartbeats stop, as they would in a hung guest.
    // SAFETY: plain kill(2) on the emulator this test's sandbox started.
    unsafe { libc::kill(vmm, libc::SIGSTOP) };
    let crashed = wait_status(&home, "frozen", "Crashed", Duration::from_secs(150));
    assert_eq!(crashed["last_termination_reason"], "AgentUnresponsive");
    ok(&home, &["rm", "frozen"]);
}

#[test]
fn vm_stopping_a_sandbox_that_is_still_booting_stops_it_in_order() {
    if !require_vm("vm_stopping_a_sandbox_that_is_still_booting_stops_it_in_order") {
        return;
    }
    let home = TestHome::new();
    ok(&home, &["create", "early"]);
    let mut start = home.command(BIN);
    start.args(["start", "early"]).stdin(std::process::Stdio::null());
    start.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let starter = start.spawn().unwrap();
    wait_status(&home, "early", "Starting", Duration::from_secs(30));

    let out = cella(&home, &["stop", "early"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let started = starter.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&started.stderr).into_owned();
    // A guest that booted faster than `stop` arrived is stopped from Running instead.
    let interrupted = stderr.contains("interrupted by SIGTERM while the guest was booting");
    assert!(interrupted || started.status.success(), "{stderr}");
    let stopped = entry(&home, "early").unwrap();
    assert_eq!(stopped["status"], "Stopped", "{stopped}");
    assert_eq!(stopped["last_termination_reason"], "ShutdownRequested", "{stopped}");
    assert!(stopped["pid"].is_null(), "{stopped}");

    // Nothing of the interrupted boot is in the way of the next one.
    ok(&home, &["start", "early"]);
    assert_eq!(ok(&home, &["exec", "early", "--", "echo", "up"]), "up\n");
    ok(&home, &["rm", "--force", "early"]);
    assert!(home.sandbox_rows().is_empty(), "{:?}", home.sandbox_rows());
}

#[test]
fn vm_qemu_is_confined_and_sees_only_its_own_sandbox() {
    if !require_vm("vm_qemu_is_confined_and_sees_only_its_own_sandbox") {
        return;
    }
    let home = TestHome::new();
    ok(&home, &["create", "neighbour"]);
    ok(&home, &["create", "boxed", "--backend", "qemu"]);
    ok(&home, &["start", "boxed"]);
    let qemu = qemu_of(&home, "boxed");
    let sandbox_pid = entry(&home, "boxed").unwrap()["pid"].as_i64().unwrap();
    let owner = std::fs::read_to_string(format!("/proc/{sandbox_pid}/status")).unwrap();
    assert!(owner.lines().any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"])), "{owner}");

    let status = std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_default();
        line.split_whitespace().nth(1).unwrap_or_default().to_string()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("Seccomp:"), "2", "QEMU's seccomp filter is not on: {status}");
    // QEMU inherits nothing of the sandbox process: no launcher lock, no database.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{qemu}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect();
    assert!(!fds.iter().any(|t| t.ends_with(".lock") || t.contains("cella.db")), "{fds:?}");
    let limits = std::fs::read_to_string(format!("/proc/{qemu}/limits")).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // /proc/PID/root resolves paths in QEMU's own mount namespace.
        let seen = |rel: &str| {
            let path = format!("/proc/{qemu}/root{}/{rel}", home.path().display());
            let mut names: Vec<String> = std::fs::read_dir(path)
                .map(|dir| dir.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
                .unwrap_or_default();
            names.sort();
            names
        };
        assert_eq!(seen("sandboxes"), ["boxed"], "another sandbox is visible to QEMU");
        assert_eq!(seen("sandboxes/boxed"), ["logs", "upper.ext4"]);
        assert!(seen("db").is_empty(), "the state database is visible to QEMU");
        assert!(!seen("run").iter().any(|n| n.starts_with("neighbour") || n == "boxed.sock"));
        // The host's own view is unchanged.
        assert!(home.path().join("sandboxes/neighbour").is_dir());
        assert!(home.path().join("db/cella.db").is_file());
    } else {
        eprintln!("not root: QEMU runs without a private mount namespace; skipped that part");
    }

    // Confined, the guest still works: exec, then an orderly stop.
    assert_eq!(ok(&home, &["exec", "boxed", "--", "echo", "fine"]), "fine\n");
    ok(&home, &["stop", "boxed"]);
    assert_eq!(status_of_run(&home, "boxed"), "ShutdownRequested");
    ok(&home, &["rm", "boxed", "neighbour"]);
}

fn status_of_run(home: &TestHome, name: &str) -> String {
    let e = entry(home, name).unwrap();
    e["last_termination_reason"].as_str().unwrap_or_default().to_string()
}

#[test]
fn vm_a_wedged_sandbox_process_fails_exec_and_is_stopped_by_escalation() {
    if !require_vm("vm_a_wedged_sandbox_process_fails_exec_and_is_stopped_by_escalation") {
        return;
    }
    let home = TestHome::new();
    ok(&home, &["create", "wedged"]);
    ok(&home, &["start", "wedged"]);
    let pid = entry(&home, "wedged").unwrap()["pid"].as_i64().unwrap() as i32;
    // SAFETY: plain kill(2) on the sandbox process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };

    let out = cella(&home, &["exec", "wedged", "--", "true"]);
    assert_eq!(out.code(), 125, "{}", out.stderr_text());
    assert!(out.stderr_text().contains("did not answer"), "{}", out.stderr_text());

    // The orderly request cannot get through; the signals after the timeout end it.
    let out = cella(&home, &["stop", "--timeout", "1", "wedged"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let stopped = entry(&home, "wedged").unwrap();
    assert_eq!(stopped["status"], "Stopped", "{stopped}");
    assert_eq!(stopped["last_termination_reason"], "ShutdownRequested", "{stopped}");
    ok(&home, &["rm", "wedged"]);
    home.assert_nothing_left();
}
