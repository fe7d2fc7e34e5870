//! Fork and exec, with precise failure reporting.
//!
//! The agent forks by hand instead of using `std::process::Command` because it needs three
//! things `Command` does not give together: (1) the pid registered with the [`Reaper`] under the
//! reaper's lock at fork time, so the status can never be reaped before anyone listens;
//! (2) supplementary groups set before dropping to the user (`CommandExt::groups` is unstable);
//! (3) knowing *which* step failed in the child: a missing working directory is "other" (125)
//! while a missing program is "not found" (127), and both are `ENOENT`.
//!
//! The child runs only async-signal-safe system calls on data prepared before the fork (the
//! agent is multi-threaded: another thread may hold the allocator lock at fork time). On failure
//! it writes `[step, errno]` to a close-on-exec pipe and `_exit`s; a successful `execve` closes
//! the pipe, so the parent reads either 5 bytes or end of file.
//!
//! Every descriptor the agent opens is close-on-exec, so a child inherits only its own stdio;
//! `close_range(3, ~0, CLOSE_RANGE_CLOEXEC)` in the child covers anything an embedding process
//! (a test harness) left inheritable.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::{pipe2, Pid};
use tokio::sync::oneshot;

use super::{pty, ExecPlan, SpawnError};
use crate::reaper::{ProcessExit, Reaper};

/// The agent's ends of a started process's stdio.
#[derive(Debug)]
pub enum ChildStdio {
    /// Separate pipes: write to `stdin`, read `stdout` and `stderr`.
    Pipes {
        /// Write end of the process's stdin.
        stdin: OwnedFd,
        /// Read end of the process's stdout.
        stdout: OwnedFd,
        /// Read end of the process's stderr.
        stderr: OwnedFd,
    },
    /// A terminal: read and write the master; the process has the slave on 0, 1 and 2.
    Pty {
        /// The pty master.
        master: OwnedFd,
    },
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid, which is also its process group and session id.
    pub pid: Pid,
    /// The agent's ends of its stdio.
    pub stdio: ChildStdio,
    /// Resolves when the reaper collects it.
    pub exit: oneshot::Receiver<ProcessExit>,
}

/// One past the highest signal number on Linux (`_NSIG`).
const NSIG: libc::c_int = 65;

/// Steps of the child's setup, as reported over the error pipe.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum Step {
    Setsid = 1,
    Stdio = 2,
    ControllingTty = 3,
    Credentials = 4,
    Chdir = 5,
    Exec = 6,
}

impl Step {
    fn from_u8(value: u8) -> Option<Self> {
        [
            Step::Setsid,
            Step::Stdio,
            Step::ControllingTty,
            Step::Credentials,
            Step::Chdir,
            Step::Exec,
        ]
        .into_iter()
        .find(|s| *s as u8 == value)
    }

    fn name(self) -> &'static str {
        match self {
            Step::Setsid => "setsid",
            Step::Stdio => "stdio setup",
            Step::ControllingTty => "acquiring the controlling terminal",
            Step::Credentials => "switching user",
            Step::Chdir => "chdir to the working directory",
            Step::Exec => "exec",
        }
    }
}

/// Everything the child needs, as raw pointers and numbers prepared before the fork.
struct ChildArgs<'a> {
    program: &'a CStr,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: &'a CStr,
    creds: Option<(libc::uid_t, libc::gid_t, &'a [libc::gid_t])>,
    stdio: [RawFd; 3],
    tty: bool,
}

/// Starts `plan`'s process in its own session, registered with `reaper`. Blocking.
pub fn spawn(plan: &ExecPlan, reaper: &Reaper) -> Result<Spawned, SpawnError> {
    let stdio_err = |source| SpawnError::Stdio { program: plan.display.clone(), source };
    let (ours, theirs) = make_stdio(plan).map_err(stdio_err)?;
    let (report_r, report_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| stdio_err(e.into()))?;

    let groups: Vec<libc::gid_t> = plan.creds.iter().flat_map(|c| c.groups.clone()).collect();
    let args = ChildArgs {
        program: &plan.program,
        argv: null_terminated(&plan.argv),
        envp: null_terminated(&plan.envp),
        cwd: &plan.cwd,
        creds: plan.creds.as_ref().map(|c| (c.uid, c.gid, groups.as_slice())),
        stdio: theirs.fds(),
        tty: plan.tty.is_some(),
    };

    let (pid, (), exit) = reaper.spawn(|| {
        // SAFETY: the child branch runs only `child_main`, which restricts itself to
        // async-signal-safe system calls on memory prepared above and never returns.
        match unsafe { libc::fork() } {
            -1 => Err(SpawnError::Fork { program: plan.display.clone(), source: Errno::last() }),
            // SAFETY: we are the freshly forked child; see `child_main`'s contract.
            0 => unsafe { child_main(&args, report_w.as_raw_fd()) },
            pid => Ok((Pid::from_raw(pid), ())),
        }
    })?;

    drop(theirs);
    drop(report_w);
    match read_report(&report_r) {
        None => Ok(Spawned { pid, stdio: ours, exit }),
        // The child `_exit`ed; the reaper collects it and the dropped receiver ignores it.
        Some((step, errno)) => Err(step_error(plan, step, errno)),
    }
}

/// The child's ends of its stdio; dropped in the parent right after the fork.
struct TheirStdio(Vec<OwnedFd>);

impl TheirStdio {
    fn fds(&self) -> [RawFd; 3] {
        match self.0.as_slice() {
            [tty] => [tty.as_raw_fd(); 3],
            [a, b, c] => [a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd()],
            _ => unreachable!("stdio is one pty slave or three pipe ends"),
        }
    }
}

fn make_stdio(plan: &ExecPlan) -> std::io::Result<(ChildStdio, TheirStdio)> {
    if let Some(size) = plan.tty {
        let (master, slave) = pty::open_pty(size)?;
        return Ok((ChildStdio::Pty { master }, TheirStdio(vec![slave])));
    }
    let (stdin_r, stdin_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (stdout_r, stdout_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (stderr_r, stderr_w) = pipe2(OFlag::O_CLOEXEC)?;
    let ours = ChildStdio::Pipes { stdin: stdin_w, stdout: stdout_r, stderr: stderr_r };
    Ok((ours, TheirStdio(vec![stdin_r, stdout_w, stderr_w])))
}

fn null_terminated(strings: &[std::ffi::CString]) -> Vec<*const libc::c_char> {
    strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

/// Reads the child's report: `None` when exec succeeded (end of file), else the failed step.
fn read_report(report: &OwnedFd) -> Option<(Step, Errno)> {
    let mut buf = [0u8; 5];
    let mut filled = 0;
    while filled < buf.len() {
        match nix::unistd::read(report.as_raw_fd(), &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if filled == 0 {
        return None;
    }
    let errno = Errno::from_raw(i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]));
    Some((Step::from_u8(buf[0]).unwrap_or(Step::Exec), errno))
}

fn step_error(plan: &ExecPlan, step: Step, source: Errno) -> SpawnError {
    let program = plan.display.clone();
    match step {
        Step::Exec => SpawnError::Exec { program, source },
        step => SpawnError::ChildSetup { program, step: step.name(), source },
    }
}

/// The forked child: set up the session, stdio, identity and directory, then exec.
///
/// # Safety
/// Must only be called in a freshly forked child. It performs only async-signal-safe system
/// calls, reads only memory prepared before the fork and never returns.
unsafe fn child_main(args: &ChildArgs<'_>, report: RawFd) -> ! {
    // SAFETY: (whole body) plain system calls on descriptors and C strings prepared by the
    // parent before the fork; all pointers stay valid because the parent's memory image is
    // copied into the child.
    unsafe {
        reset_signals();
        if libc::setsid() < 0 {
            fail(report, Step::Setsid);
        }
        for (target, &src) in args.stdio.iter().enumerate() {
            let target = target as RawFd;
            let rc = if src == target {
                libc::fcntl(src, libc::F_SETFD, 0)
            } else {
                libc::dup2(src, target)
            };
            if rc < 0 {
                fail(report, Step::Stdio);
            }
        }
        if args.tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            fail(report, Step::ControllingTty);
        }
        if let Some((uid, gid, groups)) = args.creds {
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                || libc::setgid(gid) < 0
                || libc::setuid(uid) < 0
            {
                fail(report, Step::Credentials);
            }
        }
        if libc::chdir(args.cwd.as_ptr()) < 0 {
            fail(report, Step::Chdir);
        }
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
        libc::execve(args.program.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
        fail(report, Step::Exec)
    }
}

/// Restores default signal dispositions and an empty mask: the agent ignores `SIGPIPE` and
/// tokio installs handlers, none of which the user's program should inherit.
///
/// # Safety
/// Only for the forked child (see [`child_main`]).
unsafe fn reset_signals() {
    // SAFETY: sigemptyset / sigprocmask / signal are async-signal-safe and act on locals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..NSIG {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// Reports `step` and the current errno to the parent, then exits.
///
/// # Safety
/// Only for the forked child (see [`child_main`]).
unsafe fn fail(report: RawFd, step: Step) -> ! {
    let errno = Errno::last_raw().to_le_bytes();
    let msg = [step as u8, errno[0], errno[1], errno[2], errno[3]];
    // SAFETY: write and _exit are async-signal-safe; `msg` is a local buffer.
    unsafe {
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}
