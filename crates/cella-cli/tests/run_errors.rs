//! `cella run` with bad input: each case is one clear line on stderr, exit status 125, and no
//! state left behind. None of these boot a guest.

use cella_testkit::{run_with_timeout, TestHome};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_cella");

fn run(home: &TestHome, args: &[&str]) -> cella_testkit::Finished {
    let mut cmd = home.command(BIN);
    cmd.args(args);
    run_with_timeout(cmd, b"", Duration::from_secs(30))
}

fn assert_fails_with(home: &TestHome, args: &[&str], needle: &str) {
    let out = run(home, args);
    assert_eq!(out.code(), 125, "{:?}", out);
    let stderr = out.stderr_text();
    assert!(stderr.contains(needle), "stderr {stderr:?} lacks {needle:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "not one line: {stderr:?}");
    assert!(home.sandbox_dirs().is_empty(), "left {:?}", home.sandbox_dirs());
}

#[test]
fn missing_rootfs_is_a_clear_error() {
    let home = TestHome::new();
    assert_fails_with(
        &home,
        &["run", "--rootfs", "/nonexistent/root", "--", "true"],
        "/nonexistent/root does not exist",
    );
}

#[test]
fn rootfs_that_is_a_file_is_a_clear_error() {
    let home = TestHome::new();
    assert_fails_with(
        &home,
        &["run", "--rootfs", "/etc/hostname", "--", "true"],
        "is not a directory",
    );
}

#[test]
fn memory_out_of_range_is_a_clear_error() {
    let home = TestHome::new();
    assert_fails_with(
        &home,
        &["run", "--memory", "16", "--", "true"],
        "memory 16 MiB is out of range",
    );
}

#[test]
fn cpus_out_of_range_is_a_clear_error() {
    let home = TestHome::new();
    assert_fails_with(&home, &["run", "--cpus", "0", "--", "true"], "cpu count 0 is out of range");
    assert_fails_with(
        &home,
        &["run", "--cpus", "500", "--", "true"],
        "cpu count 500 is out of range",
    );
}

#[test]
fn malformed_env_is_a_clear_error() {
    let home = TestHome::new();
    assert_fails_with(
        &home,
        &["run", "--env", "NOEQUALS", "--", "true"],
        "invalid environment entry",
    );
}

#[test]
fn invalid_name_is_a_clear_error() {
    let home = TestHome::new();
    assert_fails_with(&home, &["run", "--name", "../x", "--", "true"], "invalid sandbox name");
}

#[test]
fn missing_kernel_names_the_setup_command() {
    let empty = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.env("CELLA_HOME", empty.path())
        .args(["run", "--rootfs"])
        .arg(root.path())
        .args(["--", "true"]);
    let out = run_with_timeout(cmd, b"", Duration::from_secs(30));
    assert_eq!(out.code(), 125, "{out:?}");
    assert!(out.stderr_text().contains("guest kernel is not installed"), "{}", out.stderr_text());
    assert!(out.stderr_text().contains("scripts/setup"));
    let left: Vec<_> = std::fs::read_dir(empty.path().join("sandboxes")).unwrap().collect();
    assert!(left.is_empty());
}

#[test]
fn unknown_backend_and_missing_command_are_usage_errors() {
    let home = TestHome::new();
    assert_fails_with(&home, &["run", "--backend", "xen", "--", "true"], "unknown backend");
    let out = run(&home, &["run"]);
    assert_eq!(out.code(), 125);
}

#[test]
fn krun_backend_explains_why_it_cannot_run_here() {
    if cella_testkit::kvm_missing().is_none() {
        eprintln!("SKIPPED: krun can run on this host; krun_vm.rs covers it (CELLA_REQUIRE_KVM=1)");
        return;
    }
    let home = TestHome::new();
    let out = run(&home, &["run", "--backend", "krun", "--", "true"]);
    assert_eq!(out.code(), 125, "{out:?}");
    assert!(out.stderr_text().contains("krun backend cannot run here"), "{}", out.stderr_text());
    assert_eq!(out.stderr_text().trim_end().lines().count(), 1, "{}", out.stderr_text());
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        let reason = "KVM is kvm-pvm, a paravirtual module that cannot run this guest kernel";
        assert!(out.stderr_text().contains(reason), "{}", out.stderr_text());
    }
    assert!(home.sandbox_dirs().is_empty(), "left {:?}", home.sandbox_dirs());
}

#[test]
fn zero_or_huge_timeouts_are_usage_errors() {
    let home = TestHome::new();
    for (flag, value, max) in [
        ("--max-duration", "0", "31536000"),
        ("--idle-timeout", "0", "31536000"),
        ("--boot-timeout", "0", "3600"),
        ("--boot-timeout", "3601", "3600"),
        ("--idle-timeout", "1.5", "31536000"),
    ] {
        let out = run(&home, &["run", flag, value, "--", "true"]);
        assert_eq!(out.code(), 125, "{flag} {value}: {out:?}");
        let first = out.stderr_text().lines().next().unwrap_or_default().to_string();
        assert!(first.contains(flag), "{first}");
        assert!(first.contains(&format!("seconds from 1 to {max}")), "{first}");
        assert!(home.sandbox_dirs().is_empty(), "left {:?}", home.sandbox_dirs());
    }
}

#[test]
fn exec_with_a_relative_working_directory_is_refused_before_connecting() {
    let home = TestHome::new();
    assert_fails_with(
        &home,
        &["exec", "-w", "relative", "anything", "--", "pwd"],
        "working directory \"relative\" must be an absolute path",
    );
}
