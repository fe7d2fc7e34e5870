//! Turning an `ExecStart` request into a running process.
//!
//! Split in three steps so each is testable on its own:
//! - [`plan`] (this file): resolve the user, build the environment, look the program up in the
//!   request's `PATH` ([`lookup`]), and convert everything to C strings. Pure apart from reading
//!   `/etc/passwd` and stat-ing `PATH` entries; failures here never fork.
//! - [`spawn()`]: fork and exec with pipes or a pty ([`pty`]), reporting the exact failing step
//!   from the child over a close-on-exec pipe.
//! - [`SpawnError::failure`]: classify a failure the way shells and container runtimes do:
//!   not found (127), not executable (126), anything else (125).
//!
//! The environment starts clean: `PATH` (the Debian default) and `HOME` (from passwd), `TERM`
//! for a terminal session, then the request's variables in order, later ones winning.

pub mod lookup;
pub mod pty;
pub mod spawn;

use std::ffi::CString;
use std::path::{Path, PathBuf};

use cella_protocol::{ExecStart, SpawnFailure, WindowSize};
use nix::errno::Errno;

use crate::user::{Credentials, UserDb, UserError};

pub use spawn::{spawn, ChildStdio, Spawned};

/// `PATH` every process starts with, before the request's environment.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `TERM` of a terminal session unless the request sets one.
pub const DEFAULT_TERM: &str = "xterm";

/// Working directory when the request names none.
pub const DEFAULT_CWD: &str = "/";

/// A request, resolved and converted, ready to fork.
#[derive(Debug)]
pub struct ExecPlan {
    /// Path handed to `execve`.
    pub program: CString,
    /// The program as the request named it, for messages.
    pub display: String,
    /// Arguments, `argv[0]` as requested.
    pub argv: Vec<CString>,
    /// `KEY=value` strings.
    pub envp: Vec<CString>,
    /// Working directory.
    pub cwd: CString,
    /// Identity to switch to; `None` keeps the agent's (root).
    pub creds: Option<Credentials>,
    /// Terminal size when the session runs on a pty.
    pub tty: Option<WindowSize>,
}

/// Why a process could not be started. [`SpawnError::failure`] classifies it for the host.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The request's argv was empty.
    #[error("empty argv")]
    EmptyArgv,
    /// A string contained a NUL byte.
    #[error("{what} contains a NUL byte")]
    Nul {
        /// Which string (argv, env, cwd).
        what: &'static str,
    },
    /// An environment variable name was empty or contained `=`.
    #[error("invalid environment variable name {key:?}")]
    InvalidEnvName {
        /// The rejected name.
        key: String,
    },
    /// The user does not exist.
    #[error("cannot resolve user")]
    User(#[from] UserError),
    /// No file of that name in any `PATH` directory.
    #[error("{program}: not found in PATH {path:?}")]
    NotInPath {
        /// The requested program.
        program: String,
        /// The `PATH` that was searched.
        path: String,
    },
    /// Files of that name exist in `PATH` but none is executable.
    #[error("{}: found {} but it is not executable", program, path.display())]
    NotExecutableInPath {
        /// The requested program.
        program: String,
        /// The first non-executable match.
        path: PathBuf,
    },
    /// Creating the pipes or the pty failed.
    #[error("cannot set up stdio for {program}")]
    Stdio {
        /// The requested program.
        program: String,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// `fork` failed.
    #[error("cannot fork for {program}")]
    Fork {
        /// The requested program.
        program: String,
        /// The system error.
        #[source]
        source: Errno,
    },
    /// A step in the child before `execve` failed.
    #[error("{program}: {step} failed")]
    ChildSetup {
        /// The requested program.
        program: String,
        /// Which step: "setsid", "stdio", "controlling terminal", "credentials", "chdir".
        step: &'static str,
        /// The system error.
        #[source]
        source: Errno,
    },
    /// `execve` itself failed.
    #[error("exec {program}")]
    Exec {
        /// The program path that was executed.
        program: String,
        /// The system error.
        #[source]
        source: Errno,
    },
}

impl SpawnError {
    /// The classification the host maps to an exit status (127 / 126 / 125).
    pub fn failure(&self) -> SpawnFailure {
        match self {
            SpawnError::NotInPath { .. } => SpawnFailure::NotFound,
            SpawnError::NotExecutableInPath { .. } => SpawnFailure::NotExecutable,
            SpawnError::Exec { source, .. } => match source {
                Errno::ENOENT | Errno::ENOTDIR => SpawnFailure::NotFound,
                Errno::EACCES | Errno::ENOEXEC | Errno::EISDIR => SpawnFailure::NotExecutable,
                _ => SpawnFailure::Other,
            },
            _ => SpawnFailure::Other,
        }
    }

    /// The error and its sources as one line, for the host.
    pub fn message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(err) = source {
            message.push_str(": ");
            message.push_str(&err.to_string());
            source = err.source();
        }
        message
    }
}

/// Resolves `req` against the root at `root` (where `etc/passwd` lives).
pub fn plan(req: &ExecStart, root: &Path) -> Result<ExecPlan, SpawnError> {
    let argv0 = req.argv.first().ok_or(SpawnError::EmptyArgv)?;

    let creds = UserDb::load(root).resolve(req.user.as_deref())?;
    let env = build_env(&req.env, &creds.home, req.tty.is_some())?;
    let path_var = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    let program = lookup::find_program(argv0, path_var.unwrap_or(""))?;

    Ok(ExecPlan {
        program: cstring(program.into_os_string().into_encoded_bytes(), "program path")?,
        display: argv0.clone(),
        argv: req.argv.iter().map(|a| cstring(a.as_bytes(), "argv")).collect::<Result<_, _>>()?,
        envp: env
            .iter()
            .map(|(k, v)| cstring(format!("{k}={v}").into_bytes(), "env"))
            .collect::<Result<_, _>>()?,
        cwd: cstring(req.cwd.as_deref().unwrap_or(DEFAULT_CWD).as_bytes(), "cwd")?,
        creds: req.user.is_some().then_some(creds),
        tty: req.tty,
    })
}

/// The process environment: defaults, then the request's variables; later entries win, and a
/// variable keeps the position where it first appeared.
pub fn build_env(
    request: &[(String, String)],
    home: &str,
    tty: bool,
) -> Result<Vec<(String, String)>, SpawnError> {
    let mut env: Vec<(String, String)> =
        vec![("PATH".into(), DEFAULT_PATH.into()), ("HOME".into(), home.into())];
    if tty {
        env.push(("TERM".into(), DEFAULT_TERM.into()));
    }
    for (key, value) in request {
        if key.is_empty() || key.contains('=') {
            return Err(SpawnError::InvalidEnvName { key: key.clone() });
        }
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => env.push((key.clone(), value.clone())),
        }
    }
    Ok(env)
}

fn cstring(bytes: impl Into<Vec<u8>>, what: &'static str) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul { what })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(argv: &[&str]) -> ExecStart {
        ExecStart {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: None,
            user: None,
            tty: None,
        }
    }

    #[test]
    fn env_starts_clean_and_later_entries_win() {
        let req = vec![
            ("A".to_string(), "1".to_string()),
            ("PATH".to_string(), "/x".to_string()),
            ("A".to_string(), "2".to_string()),
        ];
        let env = build_env(&req, "/home/u", false).unwrap();
        assert_eq!(
            env,
            vec![
                ("PATH".to_string(), "/x".to_string()),
                ("HOME".to_string(), "/home/u".to_string()),
                ("A".to_string(), "2".to_string()),
            ]
        );
    }

    #[test]
    fn tty_sessions_get_a_default_term() {
        let env = build_env(&[], "/", true).unwrap();
        assert!(env.contains(&("TERM".to_string(), "xterm".to_string())));
        let env = build_env(&[("TERM".into(), "dumb".into())], "/", true).unwrap();
        assert!(env.contains(&("TERM".to_string(), "dumb".to_string())));
    }

    #[test]
    fn bad_env_names_and_nul_bytes_are_rejected_as_other() {
        let err = build_env(&[("A=B".into(), "x".into())], "/", false).unwrap_err();
        assert_eq!(err.failure(), SpawnFailure::Other);
        let err = plan(&request(&["/bin/sh", "a\0b"]), Path::new("/")).unwrap_err();
        assert!(matches!(err, SpawnError::Nul { what: "argv" }));
    }

    #[test]
    fn empty_argv_is_rejected() {
        let err = plan(&request(&[]), Path::new("/")).unwrap_err();
        assert!(matches!(err, SpawnError::EmptyArgv));
        assert_eq!(err.failure(), SpawnFailure::Other);
    }

    #[test]
    fn unknown_user_is_other() {
        let mut req = request(&["/bin/true"]);
        req.user = Some("no-such-user-cella".into());
        let err = plan(&req, Path::new("/nonexistent-root")).unwrap_err();
        assert_eq!(err.failure(), SpawnFailure::Other);
        assert!(err.message().contains("no-such-user-cella"), "{}", err.message());
    }

    #[test]
    fn exec_errnos_are_classified_like_a_shell() {
        let exec = |source| SpawnError::Exec { program: "x".into(), source };
        assert_eq!(exec(Errno::ENOENT).failure(), SpawnFailure::NotFound);
        assert_eq!(exec(Errno::EACCES).failure(), SpawnFailure::NotExecutable);
        assert_eq!(exec(Errno::ENOEXEC).failure(), SpawnFailure::NotExecutable);
        assert_eq!(exec(Errno::E2BIG).failure(), SpawnFailure::Other);
        assert!(exec(Errno::ENOENT).message().contains("No such file"));
    }
}
