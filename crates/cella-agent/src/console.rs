//! The agent's log: lines on the kernel console.
//!
//! As PID 1 the agent's stderr is `/dev/console` (see [`attach_console`]), which the host
//! captures to a file: it is the only witness of a boot that hangs or fails. The log is quiet by
//! default (warnings and errors only) and verbose with `cella.debug` on the kernel command line.
//!
//! Every line carries the guest uptime, so a slow boot step shows in the console capture. Lines
//! are written with one `write(2)` each, so concurrent tasks never interleave inside a line.
//! Logging never fails: a console that cannot be written is ignored.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::sys::time::TimeValLike;
use nix::time::{clock_gettime, ClockId};

/// Whether debug lines are printed (`cella.debug`).
static DEBUG: AtomicBool = AtomicBool::new(false);

/// Largest single log line; longer messages are cut so one line is one bounded write.
const MAX_LINE: usize = 4096;

/// Turns debug logging on or off.
pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

/// Whether debug logging is on.
pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// Milliseconds since the guest booted (`CLOCK_BOOTTIME`, which includes suspended time).
pub fn uptime_ms() -> u64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME).map(|t| t.num_milliseconds().max(0) as u64).unwrap_or(0)
}

/// Writes one log line at `level` ("error", "warn", "info", "debug").
pub fn log_line(level: &str, args: std::fmt::Arguments<'_>) {
    let ms = uptime_ms();
    let mut line = format!("[{:>5}.{:03}] cella-agent {level}: {args}", ms / 1000, ms % 1000);
    if line.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Logs an error: something failed that a human has to look at.
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => { $crate::console::log_line("error", format_args!($($arg)*)) };
}

/// Logs a warning: degraded but continuing.
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { $crate::console::log_line("warn", format_args!($($arg)*)) };
}

/// Logs a lifecycle step; printed only with `cella.debug` (the console stays quiet by default).
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => {
        if $crate::console::debug_enabled() {
            $crate::console::log_line("info", format_args!($($arg)*))
        }
    };
}

/// Logs a decision; printed only with `cella.debug`.
#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)*) => {
        if $crate::console::debug_enabled() {
            $crate::console::log_line("debug", format_args!($($arg)*))
        }
    };
}

/// Points fds 0, 1 and 2 at `/dev/null`, `/dev/console`, `/dev/console`.
///
/// The kernel starts init with the console on 0-2 only if the initramfs has a `/dev/console`
/// node; otherwise they are closed, and the first files the agent opens would land on 0-2 and
/// be clobbered when a child's stdio is set up. Call this right after devtmpfs is mounted.
pub fn attach_console() {
    let null = open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty());
    let flags = OFlag::O_WRONLY | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let console = open("/dev/console", flags, Mode::empty());
    let out = match (&console, &null) {
        (Ok(fd), _) | (Err(_), Ok(fd)) => Some(*fd),
        _ => None,
    };
    // SAFETY: dup2 on descriptors this function just opened (or that are already closed/valid
    // std descriptors 0-2); it creates no Rust-owned handles, and the originals are closed below.
    unsafe {
        if let Ok(fd) = null {
            libc::dup2(fd, 0);
        }
        if let Some(fd) = out {
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
        }
        for fd in [null, console].into_iter().flatten() {
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_monotonic() {
        let a = uptime_ms();
        let b = uptime_ms();
        assert!(b >= a);
    }

    #[test]
    fn debug_flag_toggles() {
        set_debug(true);
        assert!(debug_enabled());
        set_debug(false);
        assert!(!debug_enabled());
    }
}
