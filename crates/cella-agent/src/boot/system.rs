//! Small pieces of system identity: the hostname and the loopback interface.
//!
//! Loopback is brought up with two `ioctl`s on a throwaway socket (`SIOCGIFFLAGS`, then
//! `SIOCSIFFLAGS` with `IFF_UP`); the kernel assigns 127.0.0.1 itself. No `ip` binary is needed,
//! so this works on any root.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::BootError;

/// Hostname when the command line sets none.
pub const DEFAULT_HOSTNAME: &str = "cella";

/// Sets the hostname.
pub fn set_hostname(name: &str) -> Result<(), BootError> {
    nix::unistd::sethostname(name)
        .map_err(|source| BootError::Hostname { name: name.to_owned(), source })
}

/// Brings the loopback interface up.
pub fn loopback_up() -> Result<(), BootError> {
    let err = |source| BootError::Loopback { source };
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(Errno::last()));
    }
    // SAFETY: `socket` just returned this descriptor; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the `ifreq` the pointer refers to, valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(err(Errno::last()));
    }
    // SAFETY: after SIOCGIFFLAGS the union holds the flags member.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the `ifreq` the pointer refers to, valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(err(Errno::last()));
    }
    Ok(())
}
