//! `cella run` end to end: each test boots a real guest through the backend `auto` picks on
//! this host (qemu without hardware KVM, krun with it), or the one `CELLA_TEST_BACKEND` names
//! (see cella-testkit). `vm_run_uses_the_backend_auto_or_the_override_picks` says which ran.
//!
//! Test names start with `vm_` so nextest runs them one at a time with a hard timeout
//! (.config/nextest.toml). They skip with a message when the guest assets are missing, and fail
//! instead when `CELLA_REQUIRE_VM=1`.

use std::io::Read;
use std::process::Child;
use std::time::{Duration, Instant};

use cella_testkit::tree_snapshot as snapshot;
use cella_testkit::{
    processes_matching, require_vm, run_with_timeout, wait_or_kill, TestHome, COMMAND_TIMEOUT,
};

const BIN: &str = env!("CARGO_BIN_EXE_cella");

fn cella_run(home: &TestHome, args: &[&str], stdin: &[u8]) -> cella_testkit::Finished {
    let mut cmd = home.command(BIN);
    cmd.arg("run").args(args);
    run_with_timeout(cmd, stdin, COMMAND_TIMEOUT)
}

/// After a run: no sandbox directory, no socket, no emulator for this home.
fn assert_nothing_left(home: &TestHome) {
    home.assert_nothing_left();
}

#[test]
fn vm_run_separates_stdout_and_stderr_and_returns_the_exit_code() {
    if !require_vm("vm_run_separates_stdout_and_stderr_and_returns_the_exit_code") {
        return;
    }
    let home = TestHome::new();
    let out = cella_run(&home, &["--", "sh", "-c", "echo out; echo err >&2; exit 7"], b"");
    assert_eq!(out.code(), 7, "{}", out.stderr_text());
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_nothing_left(&home);
    assert!(home.run_entries().is_empty(), "socket or lock file left: {:?}", home.run_entries());
}

#[test]
fn vm_run_forwards_stdin_and_its_end() {
    if !require_vm("vm_run_forwards_stdin_and_its_end") {
        return;
    }
    let home = TestHome::new();
    let out = cella_run(&home, &["--", "sh", "-c", "cat; echo after"], b"a");
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert_eq!(out.stdout, b"aafter\n");
}

#[test]
fn vm_run_applies_cpus_memory_env_and_workdir() {
    if !require_vm("vm_run_applies_cpus_memory_env_and_workdir") {
        return;
    }
    let home = TestHome::new();
    let script = "echo $A; pwd; nproc; awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo";
    let args = [
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
    let out = cella_run(&home, &args, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..3], &["1", "/tmp", "2"], "{text}");
    let mem: u32 = lines[3].parse().unwrap();
    assert!((400..=512).contains(&mem), "guest sees {mem} MiB");
}

#[test]
fn vm_run_output_is_byte_exact() {
    if !require_vm("vm_run_output_is_byte_exact") {
        return;
    }
    let home = TestHome::new();
    // Three megabytes of every byte value through stdin and back out of stdout and stderr.
    let input: Vec<u8> =
        (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let out = cella_run(&home, &["--", "sh", "-c", "tee /dev/stderr"], &input);
    assert_eq!(
        out.code(),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(500)])
    );
    assert!(out.stdout == input, "stdout differs: {} bytes vs {}", out.stdout.len(), input.len());
    assert!(out.stderr == input, "stderr differs: {} bytes vs {}", out.stderr.len(), input.len());

    let out = cella_run(&home, &["--", "printf", "a\\000b"], b"");
    assert_eq!(out.stdout, b"a\0b");
}

#[test]
fn vm_run_reports_missing_unexecutable_and_signalled_commands() {
    if !require_vm("vm_run_reports_missing_unexecutable_and_signalled_commands") {
        return;
    }
    let home = TestHome::new();
    let out = cella_run(&home, &["--", "no-such-command"], b"");
    assert_eq!(out.code(), 127, "{}", out.stderr_text());
    assert!(out.stderr_text().contains("no-such-command"), "{}", out.stderr_text());

    let out = cella_run(&home, &["--", "/etc/passwd"], b"");
    assert_eq!(out.code(), 126, "{}", out.stderr_text());

    let out = cella_run(&home, &["--", "sh", "-c", "kill -9 $$"], b"");
    assert_eq!(out.code(), 137, "{}", out.stderr_text());
    assert_nothing_left(&home);
}

#[test]
fn vm_run_never_modifies_the_root_even_when_the_guest_remounts_it() {
    if !require_vm("vm_run_never_modifies_the_root_even_when_the_guest_remounts_it") {
        return;
    }
    let home = TestHome::new();
    let root = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .args([
            "-a",
            &format!("{}/.", home.path().join("rootfs/default").canonicalize().unwrap().display()),
        ])
        .arg(root.path())
        .status()
        .unwrap();
    assert!(status.success());
    let before = snapshot(root.path());

    // The agent leaves the read-only lower layer (the host's share: 9p on qemu, virtio-fs on
    // krun) visible at /run/cella/lower. Root in the guest remounts it read-write and writes:
    // the guest kernel lets the remount through, the host refuses the write.
    let script = "echo changed > /etc/hostname; touch /new-file; rm -f /bin/ls; \
        cat /etc/hostname; L=/run/cella/lower; \
        test -f $L/bin/ls && echo lower-intact; \
        (touch $L/evil 2>/dev/null && echo WROTE-THROUGH) || echo refused-ro; \
        if mount -o remount,rw $L; then echo remounted; \
          (touch $L/evil2 2>/dev/null && echo WROTE-THROUGH) || echo refused-by-host; \
          (echo x > $L/etc/hostname) 2>/dev/null && echo WROTE-THROUGH || true; \
        else echo remount-failed; fi";
    let rootfs = root.path().to_str().unwrap();
    let out = cella_run(&home, &["--rootfs", rootfs, "--", "sh", "-c", script], b"");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.code(), 0, "{stdout} {}", out.stderr_text());
    assert!(stdout.starts_with("changed\n"), "guest writes must land in its own layer: {stdout}");
    assert!(stdout.contains("lower-intact\nrefused-ro\nremounted\nrefused-by-host\n"), "{stdout}");
    assert!(!stdout.contains("WROTE-THROUGH"), "{stdout}");
    assert!(before == snapshot(root.path()), "host root was modified");
}

#[test]
fn vm_run_boot_timeout_kills_a_guest_that_never_answers() {
    if !require_vm("vm_run_boot_timeout_kills_a_guest_that_never_answers") {
        return;
    }
    let home = TestHome::new();
    silent_guest_kernel_dir(&home);
    // The silent guest is an initramfs, which only qemu boots (krun ignores an initramfs and
    // has its own version of this test in krun_vm.rs).
    let out = cella_run(&home, &["--backend", "qemu", "--boot-timeout", "8", "--", "true"], b"");
    assert_eq!(out.code(), 125, "{}", out.stderr_text());
    let stderr = out.stderr_text();
    assert!(stderr.contains("did not answer within 8s"), "{stderr}");
    assert!(stderr.contains("silent-init: up"), "console tail missing: {stderr}");
    // The ephemeral sandbox's files are gone by now: the message must not send anyone there.
    assert!(!stderr.contains("/sandboxes/"), "{stderr}");
    assert_nothing_left(&home);
}

/// Replaces the test home's kernel dir with one whose initramfs runs an init that never
/// speaks the protocol.
fn silent_guest_kernel_dir(home: &TestHome) {
    let shared = home.path().join("kernel").canonicalize().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shared.join("current.json")).unwrap()).unwrap();
    let kernel_dir = home.path().join("kernel");
    std::fs::remove_file(&kernel_dir).unwrap();
    std::fs::create_dir(&kernel_dir).unwrap();
    let vmlinux = manifest["vmlinux"].as_str().unwrap();
    std::os::unix::fs::symlink(shared.join(vmlinux), kernel_dir.join("vmlinux")).unwrap();

    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("bin")).unwrap();
    std::fs::create_dir_all(tree.path().join("dev")).unwrap();
    std::fs::copy("/bin/busybox", tree.path().join("bin/busybox")).unwrap();
    std::fs::write(
        tree.path().join("init"),
        "#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\n\
         /bin/busybox echo silent-init: up > /dev/console\nwhile :; do /bin/busybox sleep 1; done\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("busybox", tree.path().join("bin/sh")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tree.path().join("init"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    let cpio = kernel_dir.join("silent.cpio");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            tree.path().display(),
            cpio.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let manifest = serde_json::json!({"kernel_version": "test", "vmlinux": "vmlinux", "initramfs": "silent.cpio"});
    std::fs::write(kernel_dir.join("current.json"), manifest.to_string()).unwrap();
}

/// Spawns `cella run` with piped stdout and waits until the guest printed `marker`.
fn spawn_until(
    home: &TestHome,
    args: &[&str],
    marker: &str,
) -> (Child, std::thread::JoinHandle<Vec<u8>>) {
    let mut cmd = home.command(BIN);
    cmd.arg("run").args(args);
    cella_testkit::spawn_until(cmd, marker)
}

#[test]
fn vm_run_forwards_sigterm_sent_to_the_process_group() {
    if !require_vm("vm_run_forwards_sigterm_sent_to_the_process_group") {
        return;
    }
    let home = TestHome::new();
    let script = "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done";
    let (mut child, reader) = spawn_until(&home, &["--", "sh", "-c", script], "ready");
    // SAFETY: plain kill(2) on the process group the test created for `cella run`.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    let status = wait_or_kill(&mut child, COMMAND_TIMEOUT);
    assert_eq!(status.code(), Some(3));
    assert_eq!(reader.join().unwrap(), b"ready\ngot-term\n");
    assert_nothing_left(&home);
}

#[test]
fn vm_run_sigint_to_the_process_group_ends_the_command_with_130() {
    if !require_vm("vm_run_sigint_to_the_process_group_ends_the_command_with_130") {
        return;
    }
    let home = TestHome::new();
    let (mut child, _reader) =
        spawn_until(&home, &["--", "sh", "-c", "echo ready; exec sleep 1000"], "ready");
    // SAFETY: plain kill(2) on the process group the test created for `cella run`.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    let status = wait_or_kill(&mut child, COMMAND_TIMEOUT);
    assert_eq!(status.code(), Some(130));
    assert_nothing_left(&home);
}

#[test]
fn vm_run_killed_with_sigkill_leaves_no_emulator() {
    if !require_vm("vm_run_killed_with_sigkill_leaves_no_emulator") {
        return;
    }
    let home = TestHome::new();
    let (mut child, _reader) =
        spawn_until(&home, &["--", "sh", "-c", "echo ready; exec sleep 1000"], "ready");
    child.kill().unwrap();
    let _ = child.wait();
    assert_nothing_left(&home);
}

#[test]
fn vm_sandbox_process_killed_with_sigkill_leaves_no_emulator_and_no_sandbox() {
    if !require_vm("vm_sandbox_process_killed_with_sigkill_leaves_no_emulator_and_no_sandbox") {
        return;
    }
    let home = TestHome::new();
    let args = ["--name", "victim", "--", "sh", "-c", "echo ready; exec sleep 1000"];
    let (mut child, _reader) = spawn_until(&home, &args, "ready");
    let sandbox_pids: Vec<u32> = processes_matching("sandbox --name victim")
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|e| e.ends_with("cella"))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(sandbox_pids.len(), 1, "{sandbox_pids:?}");
    // SAFETY: plain kill(2) on the sandbox process this test's `cella run` started.
    unsafe { libc::kill(sandbox_pids[0] as i32, libc::SIGKILL) };
    let status = wait_or_kill(&mut child, COMMAND_TIMEOUT);
    assert_eq!(status.code(), Some(125));
    let home_text = home.path().to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_matching(&format!("{home_text}/kernel")).is_empty() {
        assert!(Instant::now() < deadline, "emulator still running after its owner was killed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // `cella run` settled the crash itself: the ephemeral sandbox is gone when it returns.
    assert!(home.sandbox_rows().is_empty(), "{:?}", home.sandbox_rows());
    assert!(home.sandbox_dirs().is_empty(), "{:?}", home.sandbox_dirs());
    assert_nothing_left(&home);
}

#[test]
fn vm_run_python_in_a_real_debian_root() {
    if !require_vm("vm_run_python_in_a_real_debian_root") {
        return;
    }
    let Some(debian) = cella_testkit::debian_rootfs() else {
        if cella_testkit::vm_required() {
            panic!("Debian root missing: run scripts/debian-rootfs");
        }
        eprintln!("SKIPPED vm_run_python_in_a_real_debian_root: run scripts/debian-rootfs");
        return;
    };
    let home = TestHome::new();
    // python3-minimal has no json module: the program writes its JSON document by hand.
    let program = "import sys\n\
        text = sys.stdin.buffer.read().decode('utf-8')\n\
        doc = '{\"answer\": %d, \"len\": %d, \"upper\": \"%s\"}' % (6 * 7, len(text), text.upper())\n\
        sys.stdout.buffer.write(doc.encode('utf-8'))\n\
        print('to stderr', file=sys.stderr)\n\
        sys.exit(3)\n";
    let root = debian.to_str().unwrap();
    let out = cella_run(
        &home,
        &["--rootfs", root, "--memory", "512", "--", "python3", "-c", program],
        b"hello \xc3\xa9",
    );
    assert_eq!(out.code(), 3, "{}", out.stderr_text());
    assert_eq!(out.stdout, "{\"answer\": 42, \"len\": 7, \"upper\": \"HELLO \u{c9}\"}".as_bytes());
    assert_eq!(out.stderr, b"to stderr\n");
}

/// The backend this suite is meant to run on: `CELLA_TEST_BACKEND` if set, else what `auto`
/// resolves to with the shared assets on this host.
fn expected_backend() -> String {
    use cella_runtime::config::BackendKind;
    match cella_testkit::test_backend() {
        Some(forced) if forced != "auto" => forced,
        _ => {
            let kernel_dir = cella_testkit::assets_home().join("kernel");
            let assets = cella_runtime::assets::BootAssets::load(&kernel_dir).expect("assets");
            let kind = cella_runtime::backend::select(BackendKind::Auto, assets.krun_install());
            kind.expect("auto never fails").name().to_string()
        }
    }
}

#[test]
fn vm_run_uses_the_backend_auto_or_the_override_picks() {
    if !require_vm("vm_run_uses_the_backend_auto_or_the_override_picks") {
        return;
    }
    let home = TestHome::new();
    let out = cella_run(&home, &["--name", "which", "--keep", "--", "true"], b"");
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let log_path = home.path().join("sandboxes/which/logs/runtime.log");
    let log = std::fs::read_to_string(log_path).unwrap();
    let expected = expected_backend();
    eprintln!("functional VM suite backend on this host: {expected}");
    let line = log.lines().find(|l| l.contains("guest is up"));
    let line = line.unwrap_or_else(|| panic!("no boot line: {log}"));
    let quoted = format!("backend=\"{expected}\"");
    let bare = format!("backend={expected}");
    assert!(line.contains(&quoted) || line.contains(&bare), "expected {expected}: {line}");
}

#[test]
fn vm_run_ctrl_c_at_a_terminal_reaches_the_guest_command() {
    if !require_vm("vm_run_ctrl_c_at_a_terminal_reaches_the_guest_command") {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let home = TestHome::new();
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave.as_raw_fd();
    // Not home.command(): its process_group(0) would make setsid() below fail.
    let mut cmd = std::process::Command::new(BIN);
    cmd.env("CELLA_HOME", home.path());
    cmd.args([
        "run",
        "--",
        "sh",
        "-c",
        "trap 'echo got-int; exit 9' INT; echo ready; while :; do sleep 0.1; done",
    ]);
    cmd.stdin(std::fs::File::from(pty.slave.try_clone().unwrap()))
        .stdout(std::fs::File::from(pty.slave.try_clone().unwrap()))
        .stderr(std::fs::File::from(pty.slave.try_clone().unwrap()));
    // SAFETY: runs in the child before exec; setsid and ioctl are async-signal-safe. The child
    // becomes a session leader whose controlling terminal is the pty, as under a real terminal.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if libc::ioctl(slave, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // setsid makes the child its own process group, so wait_or_kill can still kill the group.
    let mut child = cmd.spawn().unwrap();
    // Only the child may hold the terminal's slave side, or the master never sees its end.
    drop(cmd);
    drop(pty.slave);
    let master = std::fs::File::from(pty.master);
    let mut writer = master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut master = master;
        let mut buf = [0u8; 1024];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while !String::from_utf8_lossy(&seen).contains("ready") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => seen.extend_from_slice(&bytes),
            Err(_) => {
                // SAFETY: plain kill(2) on the process group of the child this test started.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                panic!("no ready marker: {:?}", String::from_utf8_lossy(&seen));
            }
        }
    }
    std::io::Write::write_all(&mut writer, b"\x03").unwrap();
    let status = wait_or_kill(&mut child, COMMAND_TIMEOUT);
    while let Ok(bytes) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.extend_from_slice(&bytes);
    }
    assert_eq!(status.code(), Some(9), "{:?}", String::from_utf8_lossy(&seen));
    assert!(String::from_utf8_lossy(&seen).contains("got-int"));
    assert_nothing_left(&home);
}

/// Runs `script` with stdout on a pipe whose reader takes two lines and leaves, as `| head -2`
/// does; returns the exit status and stderr.
fn run_into_a_reader_that_leaves(home: &TestHome, script: &str) -> (Option<i32>, String) {
    let mut cmd = home.command(BIN);
    cmd.args(["run", "--", "sh", "-c", script]);
    cmd.stdin(std::process::Stdio::null());
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    for _ in 0..2 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert_eq!(line, "y\n");
    }
    drop(stdout);
    let mut stderr = child.stderr.take().unwrap();
    let status = wait_or_kill(&mut child, COMMAND_TIMEOUT);
    let mut text = String::new();
    stderr.read_to_string(&mut text).unwrap();
    (status.code(), text)
}

#[test]
fn vm_run_whose_output_reader_leaves_ends_like_a_host_pipeline() {
    if !require_vm("vm_run_whose_output_reader_leaves_ends_like_a_host_pipeline") {
        return;
    }
    let home = TestHome::new();
    // `yes | head -2` on a host: yes dies of SIGPIPE, 128 + 13.
    let (code, stderr) = run_into_a_reader_that_leaves(&home, "yes");
    assert_eq!(code, Some(141), "{stderr}");
    assert_nothing_left(&home);

    // A command that handles SIGPIPE decides for itself.
    let script =
        "trap 'echo got-sigpipe >&2; exit 9' PIPE; while true; do echo y; sleep 0.05; done";
    let (code, stderr) = run_into_a_reader_that_leaves(&home, script);
    assert_eq!(code, Some(9), "{stderr}");
    assert_eq!(stderr, "got-sigpipe\n");
    assert_nothing_left(&home);
}
