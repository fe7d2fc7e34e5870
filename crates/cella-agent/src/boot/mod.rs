//! The boot sequence of the guest's userspace, run once by the agent as PID 1.
//!
//! 1. devtmpfs, proc, sysfs in the initramfs; the console on fds 0-2;
//! 2. the kernel command line ([`crate::cmdline`]) and the log level;
//! 3. kernel modules ([`modules`]);
//! 4. the overlay root and the switch into it, then devpts, /dev/shm, /run, /tmp ([`mounts`]);
//! 5. hostname and loopback ([`system`]).
//!
//! Steps 1 to 4 are fatal when they fail (the caller logs the error and powers off: there is no
//! useful guest without its root); step 5 failures are logged and the boot goes on. This code
//! only makes sense as PID 1 of a fresh guest: it is proven by booting one, not by unit tests
//! (the pure parts, command line and module list, are unit-tested in their modules).

pub mod modules;
pub mod mounts;
pub mod system;

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

use crate::cmdline::{self, BootConfig, CmdlineError};
use crate::user::UserDb;

/// A fatal boot step failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// mount(2) failed.
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        /// Mount point.
        target: String,
        /// File system type.
        fstype: String,
        /// The kernel's error.
        #[source]
        source: Errno,
    },
    /// Moving a mount failed.
    #[error("cannot move mount {from} to {}", to.display())]
    MoveMount {
        /// The mount's old place.
        from: String,
        /// Its new place.
        to: PathBuf,
        /// The kernel's error.
        #[source]
        source: Errno,
    },
    /// A directory could not be created.
    #[error("cannot create directory {}", path.display())]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// A device node never appeared.
    #[error("device {} did not appear within {waited:?}", path.display())]
    DeviceMissing {
        /// The device node.
        path: PathBuf,
        /// How long the agent waited.
        waited: Duration,
    },
    /// A step of the switch into the new root failed.
    #[error("switch root: cannot {step}")]
    SwitchRoot {
        /// The failing step.
        step: &'static str,
        /// The kernel's error.
        #[source]
        source: Errno,
    },
    /// `/proc/cmdline` could not be read.
    #[error("cannot read /proc/cmdline")]
    ReadCmdline(#[source] std::io::Error),
    /// The command line asks for something the agent cannot do.
    #[error("bad kernel command line")]
    Cmdline(#[from] CmdlineError),
    /// Setting the hostname failed (not fatal).
    #[error("cannot set hostname {name:?}")]
    Hostname {
        /// The hostname.
        name: String,
        /// The kernel's error.
        #[source]
        source: Errno,
    },
    /// Bringing up loopback failed (not fatal).
    #[error("cannot bring up the loopback interface")]
    Loopback {
        /// The kernel's error.
        #[source]
        source: Errno,
    },
}

/// Runs the boot sequence and returns the configuration it booted with.
pub fn boot() -> Result<BootConfig, BootError> {
    mounts::mount_early()?;
    crate::console::attach_console();

    let text = std::fs::read_to_string("/proc/cmdline").map_err(BootError::ReadCmdline)?;
    let config = cmdline::parse(&text)?;
    crate::console::set_debug(config.debug);
    crate::log_info!("cella-agent {} booting: {config:?}", crate::AGENT_VERSION);
    for ignored in &config.ignored {
        crate::log_warn!("ignoring unknown kernel parameter {ignored}");
    }

    let skip = if config.uses_block_device() { &[][..] } else { modules::BLOCK_ONLY_MODULES };
    let (list, dir) = (Path::new(modules::MODULE_LIST), Path::new(modules::MODULE_DIR));
    let report = modules::load_all(list, dir, skip);
    for failure in &report.failed {
        crate::log_warn!("{}", crate::error::chain(failure));
    }
    let (loaded, present, skipped) = (report.loaded, report.present, report.skipped);
    crate::log_info!("modules: {loaded} loaded, {present} present, {skipped} skipped");

    mounts::assemble_root(&config)?;
    mounts::switch_root()?;
    let tty_gid = UserDb::load(Path::new("/")).group_gid("tty");
    mounts::mount_runtime(tty_gid)?;

    let hostname = config.hostname.as_deref().unwrap_or(system::DEFAULT_HOSTNAME);
    if let Err(e) = system::set_hostname(hostname) {
        crate::log_warn!("{}", crate::error::chain(&e));
    }
    if let Err(e) = system::loopback_up() {
        crate::log_warn!("{}", crate::error::chain(&e));
    }
    crate::log_info!("boot complete");
    Ok(config)
}
