//! Lifecycle verbs given bad input: each case is one clear line on stderr, exit status 125, and
//! the state database exactly as it was. None of these boot a guest.

use std::time::Duration;

use cella_testkit::{run_with_timeout, Finished, TestHome};

const BIN: &str = env!("CARGO_BIN_EXE_cella");

fn cella(home: &TestHome, args: &[&str]) -> Finished {
    let mut cmd = home.command(BIN);
    cmd.args(args);
    run_with_timeout(cmd, b"", Duration::from_secs(30))
}

fn ok(home: &TestHome, args: &[&str]) -> String {
    let out = cella(home, args);
    assert_eq!(out.code(), 0, "cella {args:?}: {}", out.stderr_text());
    String::from_utf8(out.stdout).unwrap()
}

fn ls_json(home: &TestHome) -> serde_json::Value {
    serde_json::from_str(&ok(home, &["ls", "--all", "--json"])).unwrap()
}

/// Runs `args`, expects exit 125 with one line naming `needle`, and no change to any row.
fn refused(home: &TestHome, args: &[&str], needle: &str) {
    let before = ls_json(home);
    let out = cella(home, args);
    let stderr = out.stderr_text();
    assert_eq!(out.code(), 125, "cella {args:?}: {stderr}");
    assert!(stderr.contains(needle), "cella {args:?}: {stderr:?} lacks {needle:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "not one line: {stderr:?}");
    assert_eq!(ls_json(home), before, "cella {args:?} changed the state");
}

#[test]
fn unknown_sandbox_is_named_by_every_verb() {
    let home = TestHome::new();
    ok(&home, &["create", "known"]);
    for verb in ["start", "stop", "rm", "inspect"] {
        refused(&home, &[verb, "ghost"], "no sandbox named ghost");
    }
    refused(&home, &["exec", "ghost", "--", "true"], "no sandbox named ghost");
    refused(&home, &["logs", "ghost"], "no logs for sandbox ghost");
}

#[test]
fn duplicate_name_is_refused_and_keeps_the_first_sandbox() {
    let home = TestHome::new();
    ok(&home, &["create", "web", "--cpus", "2"]);
    refused(&home, &["create", "web", "--cpus", "4"], "a sandbox named web already exists");
    let rows = ls_json(&home);
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["cpus"], 2, "{rows}");
}

#[test]
fn invalid_names_are_refused_before_anything_is_written() {
    let home = TestHome::new();
    for name in ["../x", "a/b", ".hidden", "a..b", &"n".repeat(64)] {
        refused(&home, &["create", name], "invalid sandbox name");
        refused(&home, &["stop", name], "invalid sandbox name");
    }
    assert!(home.sandbox_dirs().is_empty(), "{:?}", home.sandbox_dirs());
}

#[test]
fn stopping_or_execing_a_sandbox_that_is_not_running_changes_nothing() {
    let home = TestHome::new();
    ok(&home, &["create", "idle"]);
    refused(&home, &["stop", "idle"], "sandbox idle is not running (it is Created)");
    refused(&home, &["exec", "idle", "--", "true"], "sandbox idle is not running");
}

#[test]
fn logs_of_a_sandbox_that_never_started_say_so() {
    let home = TestHome::new();
    ok(&home, &["create", "fresh"]);
    refused(&home, &["logs", "fresh"], "no logs for sandbox fresh yet: it has never been started");
}

#[test]
fn a_created_sandbox_is_removed_with_its_directory() {
    let home = TestHome::new();
    ok(&home, &["create", "gone"]);
    assert_eq!(home.sandbox_dirs(), ["gone"]);
    ok(&home, &["rm", "gone"]);
    assert!(home.sandbox_dirs().is_empty(), "{:?}", home.sandbox_dirs());
    assert!(home.sandbox_rows().is_empty(), "{:?}", home.sandbox_rows());
    refused(&home, &["rm", "gone"], "no sandbox named gone");
}

#[test]
fn ls_json_has_exactly_the_documented_fields() {
    let home = TestHome::new();
    ok(&home, &["create", "shape", "--cpus", "2", "--memory", "384"]);
    let rows = ls_json(&home);
    let entry = rows[0].as_object().unwrap();
    let mut fields: Vec<&str> = entry.keys().map(String::as_str).collect();
    fields.sort_unstable();
    // docs/cli.md lists these; fields are only ever added, so a change here is a docs change.
    assert_eq!(
        fields,
        [
            "cpus",
            "created_at_ms",
            "ephemeral",
            "last_exit_code",
            "last_termination_reason",
            "memory_mib",
            "name",
            "pid",
            "rootfs",
            "status",
            "updated_at_ms",
        ]
    );
    assert_eq!(entry["status"], "Created");
    assert_eq!(entry["ephemeral"], false);
    assert_eq!((entry["cpus"].as_u64(), entry["memory_mib"].as_u64()), (Some(2), Some(384)));
    assert!(entry["pid"].is_null() && entry["last_termination_reason"].is_null());

    let inspected: serde_json::Value =
        serde_json::from_str(&ok(&home, &["inspect", "shape", "--json"])).unwrap();
    assert_eq!(inspected["name"], "shape");
    assert_eq!(inspected["runs"], serde_json::json!([]));
    assert_eq!(inspected["config"]["memory_mib"], 384);
}

#[test]
fn sandboxes_that_are_not_active_show_only_with_ls_all() {
    let home = TestHome::new();
    ok(&home, &["create", "quiet"]);
    let plain = ok(&home, &["ls"]);
    assert!(!plain.contains("quiet"), "{plain}");
    let all = ok(&home, &["ls", "--all"]);
    assert!(all.contains("quiet") && all.contains("Created"), "{all}");
}
