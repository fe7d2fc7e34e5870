//! Reaping children and routing their exit statuses to sessions.
//!
//! The [`Reaper`] is the only code in the agent that calls `waitpid`. It owns a table
//! `pid -> waiting session`; on every `SIGCHLD` it drains all finished children and hands each
//! status to the session that registered the pid. Children nobody registered (orphans the kernel
//! re-parented to PID 1) are simply reaped.
//!
//! Invariants:
//! - A pid is registered **while the table lock is held across the fork** ([`Reaper::spawn`]):
//!   the reaper needs the same lock to call `waitpid`, so a child that dies instantly can never
//!   be reaped before its session is listening (which would lose its status), and no status is
//!   ever routed to the wrong session.
//! - `waitpid` runs on a blocking thread (`spawn_blocking`), never on the async runtime thread,
//!   because it waits for that lock while a fork is in progress.
//!
//! [`ReapScope::AllChildren`] (`waitpid(-1)`) is the PID 1 mode. [`ReapScope::Registered`] only
//! waits for registered pids: it is for running the agent as an ordinary process (tests, the
//! `--stdio` development mode), where reaping the host process's other children would be a bug.
//! A periodic rescan ([`RESCAN_INTERVAL`]) backs up the signal, at the cost of one `waitpid` per
//! second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How often the reaper rescans even without a `SIGCHLD`: a safety net against a lost wakeup.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessExit {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

/// Which children the reaper waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapScope {
    /// Every child, including orphans (`waitpid(-1)`): the agent is PID 1.
    AllChildren,
    /// Only pids registered through [`Reaper::spawn`]: the agent is an ordinary process.
    Registered,
}

type Table = HashMap<i32, oneshot::Sender<ProcessExit>>;

/// Handle to the reaper; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reaper {
    scope: ReapScope,
    table: Arc<Mutex<Table>>,
}

impl Reaper {
    /// Starts the reaper task on the current tokio runtime.
    pub fn start(scope: ReapScope) -> std::io::Result<Self> {
        let reaper = Self { scope, table: Arc::new(Mutex::new(HashMap::new())) };
        let mut sigchld = signal(SignalKind::child())?;
        let task = reaper.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tokio::time::sleep(RESCAN_INTERVAL) => {}
                }
                let reaper = task.clone();
                let _ = tokio::task::spawn_blocking(move || reaper.drain()).await;
            }
        });
        Ok(reaper)
    }

    /// Runs `fork` (which must start one child and return its pid plus anything else) with the
    /// table locked, and registers the pid before any `waitpid` can see it. Blocking: call it
    /// from a blocking thread.
    pub fn spawn<T, E>(
        &self,
        fork: impl FnOnce() -> Result<(Pid, T), E>,
    ) -> Result<(Pid, T, oneshot::Receiver<ProcessExit>), E> {
        let mut table = self.lock();
        let (pid, extra) = fork()?;
        let (tx, rx) = oneshot::channel();
        table.insert(pid.as_raw(), tx);
        Ok((pid, extra, rx))
    }

    /// Number of registered children that have not been reaped yet.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// Reaps every finished child now. Blocking.
    pub fn drain(&self) {
        let mut table = self.lock();
        match self.scope {
            ReapScope::AllChildren => drain_all(&mut table),
            ReapScope::Registered => drain_registered(&mut table),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock only means another thread panicked while holding it; the table itself
        // is always consistent (single inserts and removes).
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn drain_all(table: &mut Table) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(status) => route(table, status),
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                crate::log_warn!("waitpid(-1) failed: {errno}");
                return;
            }
        }
    }
}

fn drain_registered(table: &mut Table) {
    let pids: Vec<i32> = table.keys().copied().collect();
    for pid in pids {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            Ok(status) => route(table, status),
            Err(errno) => {
                // Someone else reaped it: the status is gone. Dropping the sender tells the
                // session, which reports the loss instead of waiting forever.
                crate::log_warn!("waitpid({pid}) failed: {errno}");
                table.remove(&pid);
            }
        }
    }
}

fn route(table: &mut Table, status: WaitStatus) {
    let (pid, exit) = match status {
        WaitStatus::Exited(pid, code) => (pid, ProcessExit::Code(code)),
        WaitStatus::Signaled(pid, signal, _core) => (pid, ProcessExit::Signal(signal as i32)),
        // Stops and continues are not requested (no WUNTRACED / WCONTINUED).
        _ => return,
    };
    match table.remove(&pid.as_raw()) {
        // The session may already be gone (aborted at shutdown); nothing to tell then.
        Some(tx) => drop(tx.send(exit)),
        None => crate::log_debug!("reaped orphan {pid}: {exit:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fork_exit(code: i32) -> Result<(Pid, ()), Errno> {
        // SAFETY: the child only calls `_exit`, which is async-signal-safe.
        match unsafe { nix::unistd::fork() }? {
            // SAFETY: `_exit` is async-signal-safe and never returns.
            nix::unistd::ForkResult::Child => unsafe { libc::_exit(code) },
            nix::unistd::ForkResult::Parent { child } => Ok((child, ())),
        }
    }

    #[tokio::test]
    async fn registered_child_status_reaches_its_waiter() {
        let reaper = Reaper::start(ReapScope::Registered).unwrap();
        let r = reaper.clone();
        let (_, _, rx) =
            tokio::task::spawn_blocking(move || r.spawn(|| fork_exit(7))).await.unwrap().unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), rx).await.unwrap().unwrap();
        assert_eq!(exit, ProcessExit::Code(7));
        assert_eq!(reaper.pending(), 0);
    }
}
