//! Is the process recorded in a run still that process?
//!
//! A bare `kill(pid, 0)` answers "is *some* process using this pid", which after a reboot or
//! a long uptime may be an unrelated process that reused it. Here a process is identified by
//! [`ProcessIdentity`]: pid, start time (field 22 of `/proc/PID/stat`, clock ticks since boot)
//! and the host boot id (`/proc/sys/kernel/random/boot_id`). A recorded run is alive only when
//! all three still match and the process is not a zombie.
//!
//! Decision table, in order ([`check_liveness`]):
//! 1. pid not positive, or a readable boot id that differs: dead;
//! 2. `kill(pid, 0)` says ESRCH: dead;
//! 3. `/proc/PID/stat` gone: dead; state Z (zombie) or X (dead): dead;
//! 4. start time differs: dead (pid reused);
//! 5. otherwise alive. When the stat cannot be read for another reason, EPERM from `kill`
//!    counts as dead (its identity is unproven) while a signalable process counts as alive:
//!    without a readable `/proc` we fall back to what `kill` knows rather than fail every
//!    live sandbox.
//!
//! The stat line is parsed after the **last** `)`: the command name in field 2 may contain
//! spaces and parentheses (msb_krun renames its process). All `/proc` and `kill` access goes
//! through [`ProcSource`] so the table above is unit-tested with crafted inputs.

use std::fs;
use std::io;
use std::path::Path;

use cella_db::{NewRun, RunRow};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::LivenessError;

/// Where Linux publishes the id of the current boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Field 22 of `/proc/PID/stat` is the 20th field after the command name's closing `)`.
const START_TIME_INDEX_AFTER_COMM: usize = 19;

/// What `kill(pid, 0)` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalProbe {
    /// The signal could be sent: a process has the pid.
    Exists,
    /// ESRCH: no process has the pid.
    NoSuchProcess,
    /// EPERM: a process has the pid but belongs to someone else.
    PermissionDenied,
}

/// Access to the kernel facts liveness depends on.
pub trait ProcSource {
    /// The contents of `/proc/PID/stat`.
    fn stat(&self, pid: i32) -> io::Result<String>;
    /// The host boot id, trimmed.
    fn boot_id(&self) -> io::Result<String>;
    /// The result of `kill(pid, 0)`.
    fn probe(&self, pid: i32) -> SignalProbe;
}

/// The real `/proc` and `kill(2)` of this host.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostProc;

impl ProcSource for HostProc {
    fn stat(&self, pid: i32) -> io::Result<String> {
        fs::read_to_string(format!("/proc/{pid}/stat"))
    }

    fn boot_id(&self) -> io::Result<String> {
        Ok(fs::read_to_string(BOOT_ID_PATH)?.trim().to_owned())
    }

    fn probe(&self, pid: i32) -> SignalProbe {
        match kill(Pid::from_raw(pid), None) {
            Ok(()) => SignalProbe::Exists,
            Err(Errno::EPERM) => SignalProbe::PermissionDenied,
            // ESRCH, or EINVAL for a pid the kernel rejects: nobody there.
            Err(_) => SignalProbe::NoSuchProcess,
        }
    }
}

/// The fields of `/proc/PID/stat` that liveness uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// Field 3: process state (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

impl StatFields {
    /// Zombie (`Z`) or dead (`X`, `x`): exited, whatever still holds the pid.
    pub fn is_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses a `/proc/PID/stat` line, reading fields after the last `)`.
pub fn parse_stat(line: &str) -> Result<StatFields, &'static str> {
    let close = line.rfind(')').ok_or("no ')' after the command name")?;
    let mut fields = line[close + 1..].split_ascii_whitespace();

    let state = fields.next().ok_or("no state field")?;
    let mut chars = state.chars();
    let state = match (chars.next(), chars.next()) {
        (Some(c), None) => c,
        _ => return Err("state is not one character"),
    };
    let start_time = fields
        .nth(START_TIME_INDEX_AFTER_COMM - 1)
        .ok_or("fewer than 22 fields")?
        .parse()
        .map_err(|_| "start time is not a number")?;
    Ok(StatFields { state, start_time })
}

/// A process as recorded in a run: pid, start time and host boot id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessIdentity {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
    /// Host boot id at the time it was read.
    pub boot_id: String,
}

impl ProcessIdentity {
    /// The identity of the calling process.
    pub fn current() -> Result<Self, LivenessError> {
        Self::of(std::process::id() as i32)
    }

    /// The identity of process `pid` now.
    pub fn of(pid: i32) -> Result<Self, LivenessError> {
        Self::read_from(&HostProc, pid)
    }

    /// The identity of process `pid` as `source` reports it.
    pub fn read_from(source: &impl ProcSource, pid: i32) -> Result<Self, LivenessError> {
        let line = source.stat(pid).map_err(|source| LivenessError::ReadStat { pid, source })?;
        let stat =
            parse_stat(&line).map_err(|reason| LivenessError::MalformedStat { pid, reason })?;
        let boot_id = source.boot_id().map_err(|source| LivenessError::ReadBootId {
            path: Path::new(BOOT_ID_PATH).into(),
            source,
        })?;
        Ok(Self { pid, start_time: stat.start_time, boot_id })
    }

    /// The identity recorded in a run row.
    pub fn from_run(run: &RunRow) -> Self {
        Self { pid: run.pid, start_time: run.pid_start_time, boot_id: run.boot_id.clone() }
    }

    /// The run row fields that record this identity.
    pub fn to_new_run(&self) -> NewRun {
        NewRun { pid: self.pid, pid_start_time: self.start_time, boot_id: self.boot_id.clone() }
    }
}

/// The verdict on a recorded process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The recorded process still runs.
    Alive,
    /// It does not; the reason says how we know.
    Dead(DeathReason),
}

impl Liveness {
    /// True for [`Liveness::Alive`].
    pub fn is_alive(self) -> bool {
        self == Liveness::Alive
    }
}

/// Why a recorded process counts as dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// The recorded pid is not a valid process id.
    InvalidPid,
    /// The host rebooted since the run was recorded.
    OtherBoot,
    /// No process has the pid.
    NoSuchProcess,
    /// The process exited and is a zombie awaiting its parent.
    Zombie,
    /// A different process reused the pid.
    PidReused,
    /// `kill` said EPERM and the identity could not be read to prove it is ours.
    IdentityUnproven,
}

/// Decides whether `recorded` is alive, using `source` (see the module docs).
pub fn check_liveness(source: &impl ProcSource, recorded: &ProcessIdentity) -> Liveness {
    use DeathReason::*;
    if recorded.pid <= 0 {
        return Liveness::Dead(InvalidPid);
    }
    if let Ok(boot_id) = source.boot_id() {
        if boot_id != recorded.boot_id {
            return Liveness::Dead(OtherBoot);
        }
    }

    let probe = source.probe(recorded.pid);
    if probe == SignalProbe::NoSuchProcess {
        return Liveness::Dead(NoSuchProcess);
    }
    let stat = match source.stat(recorded.pid) {
        Ok(line) => parse_stat(&line).ok(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Liveness::Dead(NoSuchProcess),
        Err(_) => None,
    };
    match (stat, probe) {
        (Some(stat), _) if stat.is_exited() => Liveness::Dead(Zombie),
        (Some(stat), _) if stat.start_time != recorded.start_time => Liveness::Dead(PidReused),
        (Some(_), _) => Liveness::Alive,
        (None, SignalProbe::PermissionDenied) => Liveness::Dead(IdentityUnproven),
        (None, _) => Liveness::Alive,
    }
}

/// True when the recorded process is still alive on this host.
pub fn is_alive(recorded: &ProcessIdentity) -> bool {
    check_liveness(&HostProc, recorded).is_alive()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 52 fields as Linux prints them; `{comm}`, `{state}` and `{start}` are substituted.
    fn stat_line(pid: i32, comm: &str, state: char, start: u64) -> String {
        format!(
            "{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0 \
             {start} 10000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 \
             0 0 0 0 0 0 0 0 0 0 0"
        )
    }

    struct FakeProc {
        stat: Option<String>,
        stat_error: io::ErrorKind,
        boot_id: &'static str,
        probe: SignalProbe,
    }

    impl FakeProc {
        fn running(comm: &str, state: char, start: u64) -> Self {
            Self {
                stat: Some(stat_line(42, comm, state, start)),
                stat_error: io::ErrorKind::NotFound,
                boot_id: "boot-a",
                probe: SignalProbe::Exists,
            }
        }
    }

    impl ProcSource for FakeProc {
        fn stat(&self, _pid: i32) -> io::Result<String> {
            self.stat.clone().ok_or_else(|| io::Error::from(self.stat_error))
        }
        fn boot_id(&self) -> io::Result<String> {
            Ok(self.boot_id.to_owned())
        }
        fn probe(&self, _pid: i32) -> SignalProbe {
            self.probe
        }
    }

    fn recorded(start: u64) -> ProcessIdentity {
        ProcessIdentity { pid: 42, start_time: start, boot_id: "boot-a".to_owned() }
    }

    #[test]
    fn parse_stat_reads_fields_after_the_last_paren() {
        for comm in ["sleep", "a b", "x) S 1 2 (y", ") (", "((", "cella sandbox (web) ) R"] {
            let fields = parse_stat(&stat_line(7, comm, 'S', 123456)).unwrap();
            assert_eq!(fields, StatFields { state: 'S', start_time: 123456 }, "comm {comm:?}");
        }
    }

    #[test]
    fn parse_stat_rejects_truncated_and_garbled_lines() {
        assert!(parse_stat("12 (sleep S 1 2").is_err());
        assert!(parse_stat("12 (sleep) S 1 2 3").is_err());
        assert!(parse_stat("12 (sleep) SS 1 2 3").is_err());
        let bad_start = stat_line(7, "x", 'S', 1).replace(" 1 10000000", " soon 10000000");
        assert!(parse_stat(&bad_start).is_err());
    }

    #[test]
    fn matching_identity_is_alive() {
        let proc = FakeProc::running("cella sandbox", 'S', 500);
        assert_eq!(check_liveness(&proc, &recorded(500)), Liveness::Alive);
    }

    #[test]
    fn reused_pid_with_other_start_time_is_dead() {
        let proc = FakeProc::running("bash", 'S', 999);
        assert_eq!(check_liveness(&proc, &recorded(500)), Liveness::Dead(DeathReason::PidReused));
    }

    #[test]
    fn zombie_and_dead_states_are_dead() {
        for state in ['Z', 'X'] {
            let proc = FakeProc::running("defunct) Z (", state, 500);
            assert_eq!(check_liveness(&proc, &recorded(500)), Liveness::Dead(DeathReason::Zombie));
        }
    }

    #[test]
    fn other_boot_id_is_dead_even_with_matching_start_time() {
        let mut proc = FakeProc::running("x", 'S', 500);
        proc.boot_id = "boot-b";
        assert_eq!(check_liveness(&proc, &recorded(500)), Liveness::Dead(DeathReason::OtherBoot));
    }

    #[test]
    fn esrch_is_dead_without_reading_stat() {
        let mut proc = FakeProc::running("x", 'S', 500);
        proc.probe = SignalProbe::NoSuchProcess;
        assert_eq!(
            check_liveness(&proc, &recorded(500)),
            Liveness::Dead(DeathReason::NoSuchProcess)
        );
    }

    #[test]
    fn eperm_counts_alive_only_when_identity_matches() {
        let mut proc = FakeProc::running("x", 'S', 500);
        proc.probe = SignalProbe::PermissionDenied;
        assert_eq!(check_liveness(&proc, &recorded(500)), Liveness::Alive);
        assert_eq!(check_liveness(&proc, &recorded(501)), Liveness::Dead(DeathReason::PidReused));

        proc.stat = None;
        proc.stat_error = io::ErrorKind::PermissionDenied;
        assert_eq!(
            check_liveness(&proc, &recorded(500)),
            Liveness::Dead(DeathReason::IdentityUnproven)
        );
    }

    #[test]
    fn vanished_stat_is_dead() {
        let mut proc = FakeProc::running("x", 'S', 500);
        proc.stat = None;
        assert_eq!(
            check_liveness(&proc, &recorded(500)),
            Liveness::Dead(DeathReason::NoSuchProcess)
        );
    }

    #[test]
    fn non_positive_pid_is_never_probed() {
        let proc = FakeProc::running("x", 'S', 500);
        let mut id = recorded(500);
        for pid in [0, -1] {
            id.pid = pid;
            assert_eq!(check_liveness(&proc, &id), Liveness::Dead(DeathReason::InvalidPid));
        }
    }

    #[test]
    fn current_process_is_alive_and_its_identity_is_stable() {
        let me = ProcessIdentity::current().unwrap();
        assert!(is_alive(&me));
        assert_eq!(ProcessIdentity::current().unwrap(), me);
        assert_eq!(me.boot_id.len(), 36, "boot id is a UUID");
    }
}
