//! Finding and opening the agent's virtio-console port.
//!
//! The port is found by **name** (`/sys/class/virtio-ports/<dev>/name` holds
//! [`AGENT_PORT_NAME`](cella_protocol::AGENT_PORT_NAME)), not by number: QEMU and libkrun number
//! their ports differently. The device may appear a little after the console driver loaded
//! (device probing and devtmpfs node creation are asynchronous), so the search retries for up to
//! [`PORT_WAIT`].
//!
//! A virtio-console port can be opened only once, so it is opened a single time read-write and
//! shared by the reader and the writer (see [`crate::server`]).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use crate::fdio::FdStream;

/// Where the kernel lists virtio-console ports.
pub const VIRTIO_PORTS_DIR: &str = "/sys/class/virtio-ports";

/// How long the agent waits for its port to appear.
pub const PORT_WAIT: Duration = Duration::from_secs(10);

/// Pause between two searches for the port.
const PORT_POLL: Duration = Duration::from_millis(20);

/// The port could not be found or opened.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// No port with that name appeared in time.
    #[error("no virtio-console port named {name:?} in {dir} after {waited:?}")]
    NotFound {
        /// The wanted port name.
        name: String,
        /// The sysfs directory searched.
        dir: PathBuf,
        /// How long the agent waited.
        waited: Duration,
    },
    /// Opening the device node failed.
    #[error("cannot open agent port {}", path.display())]
    Open {
        /// The device node.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
}

/// Looks once for a port called `name` under `sys_dir`; returns its device name (`vport0p1`).
pub fn find_port_once(sys_dir: &Path, name: &str) -> Option<String> {
    let mut entries: Vec<_> = std::fs::read_dir(sys_dir).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    entries.into_iter().find_map(|entry| {
        let port_name = std::fs::read_to_string(entry.path().join("name")).ok()?;
        (port_name.trim_end_matches('\n') == name)
            .then(|| entry.file_name().to_string_lossy().into_owned())
    })
}

/// Waits up to `wait` for the port called `name` and returns its `/dev` path.
pub async fn wait_for_port(name: &str, wait: Duration) -> Result<PathBuf, PortError> {
    let sys_dir = Path::new(VIRTIO_PORTS_DIR);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(dev) = find_port_once(sys_dir, name) {
            let path = Path::new("/dev").join(dev);
            if path.exists() {
                return Ok(path);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PortError::NotFound {
                name: name.into(),
                dir: sys_dir.into(),
                waited: wait,
            });
        }
        tokio::time::sleep(PORT_POLL).await;
    }
}

/// Opens the port read-write as a non-blocking stream.
pub fn open_port(path: &Path) -> Result<FdStream, PortError> {
    let err = |source| PortError::Open { path: path.to_owned(), source };
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = open(path, flags, Mode::empty()).map_err(|e| err(e.into()))?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    FdStream::new(fd).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_is_found_by_name_not_number() {
        let sys = tempfile::tempdir().unwrap();
        for (dev, name) in
            [("vport0p0", "console"), ("vport0p1", "other"), ("vport1p3", "cella.agent")]
        {
            std::fs::create_dir(sys.path().join(dev)).unwrap();
            std::fs::write(sys.path().join(dev).join("name"), format!("{name}\n")).unwrap();
        }
        std::fs::create_dir(sys.path().join("vport2p0")).unwrap(); // no name file
        assert_eq!(find_port_once(sys.path(), "cella.agent").as_deref(), Some("vport1p3"));
        assert_eq!(find_port_once(sys.path(), "missing"), None);
        assert_eq!(find_port_once(&sys.path().join("nope"), "cella.agent"), None);
    }
}
