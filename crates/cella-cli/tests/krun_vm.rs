//! The krun backend end to end: the functional `cella run` tests of `run_vm.rs`, forced onto
//! `--backend krun`, plus what only krun has (the boot directory, the read-only virtio-fs
//! shares, the VMM inside the sandbox process).
//!
//! NOT RUN in this project's CI: its machines have kvm-pvm, not VMX/SVM KVM, and a krun guest
//! cannot boot there (shared/ENVIRONMENT.md). Every test is `#[ignore]`d with the reason "needs
//! VMX/SVM KVM"; on a host with hardware KVM run them with
//! `CELLA_REQUIRE_KVM=1 cargo nextest run --release -p cella-cli --run-ignored all -E 'binary(krun_vm)'`
//! (docs/krun.md). With `CELLA_REQUIRE_KVM=1` a host that cannot run them fails the run instead
//! of skipping. The rest of the VM suite runs on krun there too: `auto` picks it.

use std::process::Child;
use std::time::{Duration, Instant};

use cella_testkit::{
    require_kvm, run_with_timeout, tree_snapshot, wait_or_kill, Finished, TestHome, COMMAND_TIMEOUT,
};

const BIN: &str = env!("CARGO_BIN_EXE_cella");

/// `cella ARGS...` with this home; `run` and `create` get `--backend krun`.
fn cella(home: &TestHome, args: &[&str], stdin: &[u8]) -> Finished {
    let mut cmd = home.command(BIN);
    cmd.args(with_krun(args));
    run_with_timeout(cmd, stdin, COMMAND_TIMEOUT)
}

fn with_krun(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if matches!(args.first(), Some(&"run") | Some(&"create")) {
        out.splice(1..1, ["--backend".to_string(), "krun".to_string()]);
    }
    out
}

fn run(home: &TestHome, args: &[&str], stdin: &[u8]) -> Finished {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    cella(home, &all, stdin)
}

fn ok(home: &TestHome, args: &[&str]) -> String {
    let out = cella(home, args, b"");
    assert_eq!(out.code(), 0, "cella {args:?}: {}", out.stderr_text());
    String::from_utf8(out.stdout).unwrap()
}

fn ls_entry(home: &TestHome, name: &str) -> serde_json::Value {
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&ok(home, &["ls", "--all", "--json"])).unwrap();
    all.into_iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("no sandbox {name}"))
}

fn wait_status(home: &TestHome, name: &str, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let entry = ls_entry(home, name);
        if entry["status"] == want {
            return entry;
        }
        assert!(Instant::now() < deadline, "{name} never became {want}: {entry}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn spawn_run_until(
    home: &TestHome,
    args: &[&str],
    marker: &str,
) -> (Child, std::thread::JoinHandle<Vec<u8>>) {
    let mut cmd = home.command(BIN);
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    cmd.args(with_krun(&all));
    cella_testkit::spawn_until(cmd, marker)
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_run_separates_stdout_and_stderr_and_returns_the_exit_code() {
    if !require_kvm("vm_krun_run_separates_stdout_and_stderr_and_returns_the_exit_code") {
        return;
    }
    let home = TestHome::new();
    let out = run(&home, &["--", "sh", "-c", "echo out; echo err >&2; exit 7"], b"");
    assert_eq!(out.code(), 7, "{}", out.stderr_text());
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    home.assert_nothing_left();
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_run_forwards_stdin_and_its_end() {
    if !require_kvm("vm_krun_run_forwards_stdin_and_its_end") {
        return;
    }
    let home = TestHome::new();
    let out = run(&home, &["--", "sh", "-c", "cat; echo after"], b"a");
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert_eq!(out.stdout, b"aafter\n");
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_run_applies_cpus_memory_env_and_workdir() {
    if !require_kvm("vm_krun_run_applies_cpus_memory_env_and_workdir") {
        return;
    }
    let home = TestHome::new();
    let script =
        "echo $A; pwd; nproc; awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo; hostname";
    let args = [
        "--name",
        "sized",
        "--cpus",
        "2",
        "--memory",
        "512",
        "--env",
        "A=1",
        "--workdir",
        "/tmp",
        "--",
        "sh",
        "-c",
        script,
    ];
    let out = run(&home, &args, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..3], &["1", "/tmp", "2"], "{text}");
    let mem: u32 = lines[3].parse().unwrap();
    assert!((400..=512).contains(&mem), "guest sees {mem} MiB");
    assert_eq!(lines[4], "sized");
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_run_output_is_byte_exact() {
    if !require_kvm("vm_krun_run_output_is_byte_exact") {
        return;
    }
    let home = TestHome::new();
    let input: Vec<u8> =
        (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let out = run(&home, &["--", "sh", "-c", "tee /dev/stderr"], &input);
    assert_eq!(out.code(), 0);
    assert!(out.stdout == input, "stdout differs: {} bytes vs {}", out.stdout.len(), input.len());
    assert!(out.stderr == input, "stderr differs: {} bytes vs {}", out.stderr.len(), input.len());
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_run_reports_missing_unexecutable_and_signalled_commands() {
    if !require_kvm("vm_krun_run_reports_missing_unexecutable_and_signalled_commands") {
        return;
    }
    let home = TestHome::new();
    assert_eq!(run(&home, &["--", "no-such-command"], b"").code(), 127);
    assert_eq!(run(&home, &["--", "/etc/passwd"], b"").code(), 126);
    assert_eq!(run(&home, &["--", "sh", "-c", "kill -9 $$"], b"").code(), 137);
    home.assert_nothing_left();
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_root_and_boot_directory_stay_unmodified_even_when_the_guest_remounts_them() {
    if !require_kvm(
        "vm_krun_root_and_boot_directory_stay_unmodified_even_when_the_guest_remounts_them",
    ) {
        return;
    }
    let home = TestHome::new();
    let root = tempfile::tempdir().unwrap();
    let source = home.path().join("rootfs/default").canonicalize().unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", source.display()))
        .arg(root.path())
        .status();
    assert!(copied.unwrap().success());
    let before = tree_snapshot(root.path());

    let script =
        "echo changed > /etc/hostname; rm -f /bin/ls; cat /etc/hostname; mkdir -p /mnt/b; \
        L=/run/cella/lower; mount -o remount,rw $L && echo remounted; \
        (touch $L/evil && echo WROTE-THROUGH) || echo refused; \
        mount -t virtiofs /dev/root /mnt/b && mount -o remount,rw /mnt/b; \
        (touch /mnt/b/evil && echo WROTE-BOOT) || echo refused; \
        test -e /mnt/b/init.krun && echo INJECTED-INIT-VISIBLE; true";
    let rootfs = root.path().to_str().unwrap();
    let out =
        run(&home, &["--name", "ro", "--keep", "--rootfs", rootfs, "--", "sh", "-c", script], b"");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.code(), 0, "{stdout} {}", out.stderr_text());
    assert!(stdout.starts_with("changed\n"), "guest writes must land in its own layer: {stdout}");
    assert!(stdout.contains("remounted\nrefused\n"), "{stdout}");
    assert!(!stdout.contains("WROTE-") && !stdout.contains("INJECTED-INIT"), "{stdout}");
    assert!(before == tree_snapshot(root.path()), "host root was modified");
    let boot = home.path().join("sandboxes/ro/runtime/boot");
    let mut names: Vec<_> =
        std::fs::read_dir(&boot).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(
        names,
        ["cella-agent", "dev", "lower", "newroot", "proc", "sys", "upper"],
        "{boot:?}"
    );
    ok(&home, &["rm", "ro"]);
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_boot_timeout_kills_a_guest_that_never_answers() {
    if !require_kvm("vm_krun_boot_timeout_kills_a_guest_that_never_answers") {
        return;
    }
    let home = TestHome::new();
    if !silent_agent(&home) {
        return;
    }
    let out = run(&home, &["--boot-timeout", "5", "--", "true"], b"");
    assert_eq!(out.code(), 125, "{}", out.stderr_text());
    let stderr = out.stderr_text();
    assert!(stderr.contains("did not answer within 5s"), "{stderr}");
    assert!(stderr.contains("silent-init: up"), "console tail missing: {stderr}");
    home.assert_nothing_left();
}

/// Gives the test home a kernel directory whose "agent" is a static init that never speaks the
/// protocol. krun ignores an initramfs, so the silent guest must be the boot directory's init;
/// it is compiled with the host's C compiler. Returns false (after saying why) when there is
/// none and the test may be skipped.
fn silent_agent(home: &TestHome) -> bool {
    let source = r#"#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>
int main(void) {
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    int fd = open("/dev/console", O_WRONLY);
    write(fd, "silent-init: up\n", 16);
    for (;;) pause();
}
"#;
    let shared = home.path().join("kernel").canonicalize().unwrap();
    let kernel_dir = home.path().join("kernel");
    std::fs::remove_file(&kernel_dir).unwrap();
    std::fs::create_dir(&kernel_dir).unwrap();
    for entry in std::fs::read_dir(&shared).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "cella-agent" {
            std::os::unix::fs::symlink(entry.path(), kernel_dir.join(entry.file_name())).unwrap();
        }
    }
    let c_file = kernel_dir.join("silent.c");
    std::fs::write(&c_file, source).unwrap();
    let compiled = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(kernel_dir.join("cella-agent"))
        .arg(&c_file)
        .status();
    match compiled {
        Ok(status) if status.success() => true,
        other if cella_testkit::kvm_required() => {
            panic!("cannot build the silent init with cc -static: {other:?}")
        }
        other => {
            eprintln!("SKIPPED vm_krun_boot_timeout_kills_a_guest_that_never_answers: cc -static failed: {other:?}");
            false
        }
    }
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_run_forwards_sigterm_sent_to_the_process_group() {
    if !require_kvm("vm_krun_run_forwards_sigterm_sent_to_the_process_group") {
        return;
    }
    let home = TestHome::new();
    let script = "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done";
    let (mut child, reader) = spawn_run_until(&home, &["--", "sh", "-c", script], "ready");
    // SAFETY: plain kill(2) on the process group the test created for `cella run`.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    assert_eq!(wait_or_kill(&mut child, COMMAND_TIMEOUT).code(), Some(3));
    assert_eq!(reader.join().unwrap(), b"ready\ngot-term\n");
    home.assert_nothing_left();
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_run_sigint_to_the_process_group_ends_the_command_with_130() {
    if !require_kvm("vm_krun_run_sigint_to_the_process_group_ends_the_command_with_130") {
        return;
    }
    let home = TestHome::new();
    let (mut child, _reader) =
        spawn_run_until(&home, &["--", "sh", "-c", "echo ready; exec sleep 1000"], "ready");
    // SAFETY: plain kill(2) on the process group the test created for `cella run`.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    assert_eq!(wait_or_kill(&mut child, COMMAND_TIMEOUT).code(), Some(130));
    home.assert_nothing_left();
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_sigterm_to_the_sandbox_process_stops_the_guest_in_order() {
    if !require_kvm("vm_krun_sigterm_to_the_sandbox_process_stops_the_guest_in_order") {
        return;
    }
    let home = TestHome::new();
    ok(&home, &["create", "termed"]);
    ok(&home, &["start", "termed"]);
    let pid = ls_entry(&home, "termed")["pid"].as_i64().unwrap();
    // msb_krun takes SIGTERM for itself while it builds the VM; the backend puts the runtime's
    // handler back, so this must be an orderly stop (agent goodbye: Stopped), not a crash.
    // SAFETY: plain kill(2) on the sandbox process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let stopped = wait_status(&home, "termed", "Stopped");
    assert_eq!(stopped["last_termination_reason"], "Signal", "{stopped}");
    ok(&home, &["rm", "termed"]);
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_guest_poweroff_without_goodbye_is_a_crash() {
    if !require_kvm("vm_krun_guest_poweroff_without_goodbye_is_a_crash") {
        return;
    }
    let home = TestHome::new();
    ok(&home, &["create", "panicky"]);
    ok(&home, &["start", "panicky"]);
    // A kernel panic: msb_krun reports exit code 0 for it, as for a clean poweroff; only the
    // missing goodbye frame tells them apart.
    let _ =
        cella(&home, &["exec", "panicky", "--", "sh", "-c", "echo c > /proc/sysrq-trigger"], b"");
    let crashed = wait_status(&home, "panicky", "Crashed");
    assert_eq!(crashed["last_termination_reason"], "Failed", "{crashed}");
    ok(&home, &["rm", "-f", "panicky"]);
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_persistent_sandbox_keeps_files_on_its_upper_disk() {
    if !require_kvm("vm_krun_persistent_sandbox_keeps_files_on_its_upper_disk") {
        return;
    }
    let home = TestHome::new();
    ok(&home, &["create", "keeper", "--env", "GREETING=hi"]);
    ok(&home, &["start", "keeper"]);
    let echoed = ok(
        &home,
        &["exec", "keeper", "--", "sh", "-c", "echo $GREETING > /root/note; cat /root/note"],
    );
    assert_eq!(echoed, "hi\n");
    ok(&home, &["stop", "keeper"]);
    assert_eq!(ls_entry(&home, "keeper")["status"], "Stopped");
    ok(&home, &["start", "keeper"]);
    assert_eq!(ok(&home, &["exec", "keeper", "--", "cat", "/root/note"]), "hi\n");
    ok(&home, &["rm", "-f", "keeper"]);
    home.assert_nothing_left();
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_sandbox_process_killed_with_sigkill_takes_its_guest_with_it() {
    if !require_kvm("vm_krun_sandbox_process_killed_with_sigkill_takes_its_guest_with_it") {
        return;
    }
    let home = TestHome::new();
    let args = ["--name", "victim", "--", "sh", "-c", "echo ready; exec sleep 1000"];
    let (mut child, _reader) = spawn_run_until(&home, &args, "ready");
    let pid = ls_entry(&home, "victim")["pid"].as_i64().unwrap();
    // The VM runs inside this process: there is no emulator to leave behind.
    // SAFETY: plain kill(2) on the sandbox process this test's `cella run` started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(wait_or_kill(&mut child, COMMAND_TIMEOUT).code(), Some(125));
    // Gone, or a zombie until its parent's exit is noticed: either way no vCPU runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let state = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().chars().next())
            .unwrap_or_default();
        if state == Some('Z') {
            break;
        }
        assert!(Instant::now() < deadline, "sandbox process {pid} survived SIGKILL: {stat}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_is_what_auto_picks_when_kvm_works() {
    if !require_kvm("vm_krun_is_what_auto_picks_when_kvm_works") {
        return;
    }
    let home = TestHome::new();
    let mut cmd = home.command(BIN);
    cmd.args(["run", "--backend", "auto", "--name", "auto", "--keep", "--", "true"]);
    let out = run_with_timeout(cmd, b"", COMMAND_TIMEOUT);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let log = std::fs::read_to_string(home.path().join("sandboxes/auto/logs/runtime.log")).unwrap();
    let line = log.lines().find(|l| l.contains("guest is up")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("krun") && line.contains("kvm"), "{line}");
    ok(&home, &["rm", "auto"]);
}

#[test]
#[ignore = "needs VMX/SVM KVM"]
fn vm_krun_run_python_in_a_real_debian_root() {
    if !require_kvm("vm_krun_run_python_in_a_real_debian_root") {
        return;
    }
    let Some(debian) = cella_testkit::debian_rootfs() else {
        assert!(!cella_testkit::kvm_required(), "Debian root missing: run scripts/debian-rootfs");
        eprintln!("SKIPPED vm_krun_run_python_in_a_real_debian_root: run scripts/debian-rootfs");
        return;
    };
    let home = TestHome::new();
    let program = "import sys\nsys.stdout.write(str(6 * 7))\nsys.exit(3)\n";
    let out =
        run(&home, &["--rootfs", debian.to_str().unwrap(), "--", "python3", "-c", program], b"");
    assert_eq!(out.code(), 3, "{}", out.stderr_text());
    assert_eq!(out.stdout, b"42");
}
