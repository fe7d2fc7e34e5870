//! The on-disk layout of `CELLA_HOME` (default `~/.cella`).
//!
//! ```text
//! db/cella.db            state database
//! kernel/                guest kernel(s) and initramfs, placed by scripts/setup
//! rootfs/default/        the default root filesystem
//! sandboxes/<name>/      per-sandbox config, logs/, runtime/ (runtime/boot/: krun boot dir)
//! run/                   sockets and launcher locks (0700)
//! ```
//!
//! Every path cella uses is derived here, so the layout lives in one place. Directories holding
//! sockets or state are created private to the user (0700).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable that overrides the default home directory.
pub const HOME_ENV: &str = "CELLA_HOME";

/// Longest path a Unix socket address can hold (`sun_path` is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Errors about the home directory itself.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// Neither `CELLA_HOME` nor `HOME` is set.
    #[error("cannot find cella's home: set CELLA_HOME or HOME")]
    NoHome,
    /// A directory under the home could not be created.
    #[error("cannot create {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A socket path does not fit in a Unix socket address.
    #[error("socket path {path} is {len} bytes, over the {MAX_SOCKET_PATH} byte limit of Unix sockets: use a shorter CELLA_HOME or sandbox name")]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

/// Resolved `CELLA_HOME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// The home named by `CELLA_HOME`, else `~/.cella`.
    pub fn from_env() -> Result<Self, HomeError> {
        if let Some(dir) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
            return Ok(Self::at(dir));
        }
        let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or(HomeError::NoHome)?;
        Ok(Self::at(Path::new(&home).join(".cella")))
    }

    /// A home rooted at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state database file.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("db").join("cella.db")
    }

    /// Where setup places guest kernels and initramfs images.
    pub fn kernel_dir(&self) -> PathBuf {
        self.root.join("kernel")
    }

    /// The default root filesystem built by setup.
    pub fn default_rootfs(&self) -> PathBuf {
        self.root.join("rootfs").join("default")
    }

    /// Directory holding every sandbox's state.
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// Directory of one sandbox.
    pub fn sandbox_dir(&self, name: &str) -> PathBuf {
        self.sandboxes_dir().join(name)
    }

    /// The krun guest's boot directory: its `/` until the agent switches into the sandbox's
    /// root (rebuilt on every krun boot).
    pub fn krun_boot_dir(&self, name: &str) -> PathBuf {
        self.sandbox_dir(name).join("runtime").join("boot")
    }

    /// Directory for sockets and lock files.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The launcher lock of a sandbox, held by its sandbox process for its whole life.
    pub fn lock_path(&self, name: &str) -> PathBuf {
        self.run_dir().join(format!("{name}.lock"))
    }

    /// The socket clients use to reach a running sandbox.
    pub fn client_socket(&self, name: &str) -> PathBuf {
        self.run_dir().join(format!("{name}.sock"))
    }

    /// The socket the VMM connects the guest agent's console port to.
    pub fn agent_port_socket(&self, name: &str) -> PathBuf {
        self.run_dir().join(format!("{name}.port"))
    }

    /// Creates the home's top-level directories, private to the user.
    pub fn ensure(&self) -> Result<(), HomeError> {
        for dir in [self.root.clone(), self.sandboxes_dir(), self.run_dir(), self.root.join("db")] {
            create_private_dir(&dir)?;
        }
        Ok(())
    }
}

/// Creates `dir` (and parents) with mode 0700, and tightens an existing one to 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), HomeError> {
    let err = |source| HomeError::CreateDir { path: dir.to_path_buf(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Checks that `path` fits in a Unix socket address.
pub fn check_socket_path(path: &Path) -> Result<(), HomeError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(HomeError::SocketPathTooLong { path: path.to_path_buf(), len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_rooted_at_home() {
        let home = Home::at("/h");
        assert_eq!(home.db_path(), Path::new("/h/db/cella.db"));
        assert_eq!(home.sandbox_dir("a"), Path::new("/h/sandboxes/a"));
        assert_eq!(home.client_socket("a"), Path::new("/h/run/a.sock"));
        assert_eq!(home.lock_path("a"), Path::new("/h/run/a.lock"));
        assert_eq!(home.krun_boot_dir("a"), Path::new("/h/sandboxes/a/runtime/boot"));
    }

    #[test]
    fn ensure_creates_private_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("home"));
        home.ensure().unwrap();
        let mode = std::fs::metadata(home.run_dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn overlong_socket_path_is_rejected() {
        let long = PathBuf::from(format!("/{}", "x".repeat(200)));
        assert!(matches!(check_socket_path(&long), Err(HomeError::SocketPathTooLong { .. })));
        assert!(check_socket_path(Path::new("/tmp/a.sock")).is_ok());
    }
}
