//! The end of the guest: stop everything, sync, power off.
//!
//! Every way out of the agent as PID 1 ends here: orderly shutdown, host gone, a fatal boot
//! error, a desynchronised stream, even a panic (the panic hook calls [`power_off`]). A PID 1
//! that exits or unwinds is a kernel panic; with `panic=-1` and QEMU's `-no-reboot` that also
//! ends the VM, so it is the fallback if the poweroff call itself fails.

use nix::sys::reboot::{reboot, RebootMode};

/// Kills every remaining process, flushes file systems and powers the VM off. Only for PID 1.
pub fn power_off() -> ! {
    // SAFETY: kill(2) with plain integers; as PID 1, kill(-1) spares the agent itself.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    nix::unistd::sync();
    crate::log_info!("powering off");
    let err = match reboot(RebootMode::RB_POWER_OFF) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    crate::log_error!("poweroff failed ({err}); exiting, which panics the kernel");
    std::process::exit(1)
}
