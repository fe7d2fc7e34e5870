//! Pseudo-terminals for `tty` sessions.
//!
//! Both ends are opened close-on-exec from the start (`posix_openpt(O_CLOEXEC)`, slave with
//! `O_CLOEXEC`), never fixed up afterwards: another session forking at the same moment must not
//! inherit this session's terminal, or this session would never see end of file.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use cella_protocol::WindowSize;
use nix::fcntl::{open, OFlag};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::stat::Mode;

/// Opens a new pty pair of the given size: `(master, slave)`.
pub fn open_pty(size: WindowSize) -> nix::Result<(OwnedFd, OwnedFd)> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    let slave =
        open(name.as_str(), OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // SAFETY: `into_raw_fd` hands over the master's descriptor, owned by nothing else after.
    let master = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) };
    set_window_size(&master, size)?;
    Ok((master, slave))
}

/// Sets the terminal size (the kernel sends `SIGWINCH` to the foreground process group).
pub fn set_window_size(master: &impl AsRawFd, size: WindowSize) -> nix::Result<()> {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    nix::errno::Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_pair_has_the_requested_size() {
        let (_master, slave) = open_pty(WindowSize { rows: 33, cols: 101 }).unwrap();
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, valid for the call.
        let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
    }
}
