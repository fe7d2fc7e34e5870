//! Launching a sandbox process and hearing back from it.
//!
//! The launcher (CLI or SDK) spawns `cella sandbox --name NAME --ready-fd N` in a new session,
//! detached from its terminal, with the write end of a pipe as fd N. The sandbox process writes
//! exactly one JSON line to it, either "ready" (the agent answered its handshake; clients may
//! connect) or "failed" with the real cause, and closes it. The launcher therefore prints why a
//! boot failed, not "exited with status 1". If the pipe closes without a line, the sandbox
//! process died before it could say anything, and the launcher points at its log.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::lifecycle::LauncherLock;

/// Longest report line the launcher reads; the sandbox process is ours, but a bound costs
/// nothing.
const MAX_REPORT_LEN: u64 = 64 * 1024;

/// What the sandbox process reports on its ready pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReadyReport {
    /// The guest is up and the client socket accepts connections.
    Ready {
        /// Pid of the sandbox process.
        pid: u32,
        /// Accelerator in use (`kvm` or `tcg`).
        accelerator: String,
        /// Milliseconds from the sandbox process's start to the agent's handshake.
        boot_ms: u64,
    },
    /// The sandbox could not be started.
    Failed {
        /// One line saying what failed and what to do.
        error: String,
    },
}

/// Launching or waiting for a sandbox process failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The pipe or the process could not be created.
    #[error("cannot start the sandbox process {binary}")]
    Spawn {
        /// The cella binary.
        binary: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox process reported a failure.
    #[error("{error}")]
    Failed {
        /// Its one-line error.
        error: String,
    },
    /// The sandbox process ended without reporting.
    #[error("sandbox process for {name} exited without reporting ({status}); see {log}")]
    Silent {
        /// The sandbox.
        name: String,
        /// How it exited, if known.
        status: String,
        /// Its runtime log.
        log: PathBuf,
    },
}

/// The write end of the ready pipe, held by the sandbox process.
pub struct ReadyReporter {
    pipe: Option<std::fs::File>,
    /// No launcher listens: print a failure on stderr (once).
    to_stderr: bool,
}

impl ReadyReporter {
    /// Takes ownership of the inherited fd `fd`.
    ///
    /// # Safety
    ///
    /// `fd` must be an open file descriptor that nothing else in this process owns.
    pub unsafe fn from_fd(fd: RawFd) -> Self {
        // SAFETY: the caller guarantees `fd` is open and unowned.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        Self { pipe: Some(file), to_stderr: false }
    }

    /// A reporter for a sandbox process started by hand: a failure goes to stderr.
    pub fn none() -> Self {
        Self { pipe: None, to_stderr: true }
    }

    /// Sends the report and closes the pipe. Later calls do nothing.
    pub fn report(&mut self, report: &ReadyReport) {
        if let Some(mut pipe) = self.pipe.take() {
            let mut line = serde_json::to_vec(report).unwrap_or_default();
            line.push(b'\n');
            // The launcher may have gone; there is nobody else to tell.
            let _ = pipe.write_all(&line);
        } else if std::mem::take(&mut self.to_stderr) {
            if let ReadyReport::Failed { error } = report {
                eprintln!("cella sandbox: {error}");
            }
        }
    }
}

/// A sandbox process that was spawned and has not reported yet.
pub struct PendingSandbox {
    child: Child,
    report: OwnedFd,
    name: String,
    log: PathBuf,
}

/// A sandbox process that reported ready.
pub struct LaunchedSandbox {
    /// The child process (reap it, or let it be reparented when the launcher exits).
    pub child: Child,
    /// Accelerator in use.
    pub accelerator: String,
    /// Milliseconds to the agent's handshake.
    pub boot_ms: u64,
}

/// Spawns `cella_bin sandbox --name NAME` for `home`, detached from the caller's terminal.
///
/// `lock` is the sandbox's launcher lock: the sandbox process inherits it and holds it for its
/// whole life, so the lock is free exactly when no process of this sandbox is alive.
pub fn spawn(
    cella_bin: &Path,
    home: &Home,
    name: &str,
    lock: Option<&LauncherLock>,
) -> Result<PendingSandbox, LaunchError> {
    let spawn_err = |source| LaunchError::Spawn { binary: cella_bin.to_path_buf(), source };
    let (read_end, write_end) = nix::unistd::pipe().map_err(|e| spawn_err(e.into()))?;
    let lock_fd = lock.map(|l| l.file().as_raw_fd());
    let child = spawn_detached(cella_bin, home, name, &write_end, lock_fd).map_err(spawn_err)?;
    drop(write_end);
    let log = home.sandbox_dir(name).join("logs").join("runtime.log");
    Ok(PendingSandbox { child, report: read_end, name: name.to_string(), log })
}

impl PendingSandbox {
    /// Pid of the sandbox process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Blocks until the sandbox process reports; the sandbox process bounds that wait with its
    /// boot timeout.
    pub fn wait_ready(self) -> Result<LaunchedSandbox, LaunchError> {
        let Self { mut child, report, name, log } = self;
        let mut line = String::new();
        let mut reader = BufReader::new(std::fs::File::from(report).take(MAX_REPORT_LEN));
        let _ = reader.read_line(&mut line);
        match serde_json::from_str::<ReadyReport>(line.trim_end()) {
            Ok(ReadyReport::Ready { accelerator, boot_ms, .. }) => {
                Ok(LaunchedSandbox { child, accelerator, boot_ms })
            }
            Ok(ReadyReport::Failed { error }) => {
                let _ = child.wait();
                Err(LaunchError::Failed { error })
            }
            Err(_) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                Err(LaunchError::Silent { name, status, log })
            }
        }
    }
}

fn spawn_detached(
    cella_bin: &Path,
    home: &Home,
    name: &str,
    write_end: &OwnedFd,
    lock_fd: Option<RawFd>,
) -> std::io::Result<Child> {
    let fd = write_end.as_raw_fd();
    let args: Vec<OsString> = vec![
        "sandbox".into(),
        "--name".into(),
        name.into(),
        "--ready-fd".into(),
        fd.to_string().into(),
    ];
    let mut cmd = Command::new(cella_bin);
    cmd.args(args)
        .env(crate::home::HOME_ENV, home.root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: runs in the forked child before exec; setsid and fcntl are async-signal-safe and
    // the closure allocates nothing. It detaches the sandbox process from the launcher's
    // terminal (so terminal signals reach only the launcher) and keeps the pipe's write end
    // open across exec (pipe() created it close-on-exec), and the launcher lock likewise.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            for fd in std::iter::once(fd).chain(lock_fd) {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_as_one_json_line() {
        let ready = ReadyReport::Ready { pid: 7, accelerator: "tcg".into(), boot_ms: 2500 };
        let text = serde_json::to_string(&ready).unwrap();
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<ReadyReport>(&text).unwrap(), ready);
        let failed: ReadyReport =
            serde_json::from_str(r#"{"status":"failed","error":"x"}"#).unwrap();
        assert_eq!(failed, ReadyReport::Failed { error: "x".into() });
    }

    #[test]
    fn a_launcher_that_hears_nothing_names_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        let pending = spawn(Path::new("/bin/true"), &home, "quiet", None).unwrap();
        let err = pending.wait_ready().err().unwrap();
        assert!(matches!(err, LaunchError::Silent { .. }), "{err}");
        assert!(err.to_string().contains("runtime.log"));
    }
}
