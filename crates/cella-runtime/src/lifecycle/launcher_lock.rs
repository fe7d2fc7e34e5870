//! The launcher lock `CELLA_HOME/run/<name>.lock`.
//!
//! `start` takes this exclusive `flock` before it sets a sandbox Starting, and the sandbox
//! process inherits the locked descriptor and holds it for its whole life. A lock can therefore
//! be taken by someone else only when no launcher and no sandbox process of that sandbox is
//! alive, which is what "provably free" means to the reconciler: it takes the lock without
//! blocking and, while holding it, marks a sandbox that never recorded a run as Crashed.
//!
//! The lock belongs to the open file description, not the descriptor: a child that inherited the
//! descriptor keeps the lock after the parent closes its copy. So this type never calls
//! `LOCK_UN`; dropping it closes the file, which releases the lock only when no inherited copy
//! remains. (A parent that unlocked explicitly would release the child's lock too.)
//!
//! A lock file is removed with its sandbox, and only by a holder of its lock
//! ([`LauncherLock::remove`]). A process that opened the file before the removal and locks it
//! afterwards would hold a lock on a file no longer at the path; so every acquirer checks, once
//! it holds the lock, that the path still names the file it locked (device and inode), and
//! starts over otherwise. Two processes can therefore never both hold "the" lock of one name.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::home::{create_private_dir, Home};

use super::LifecycleError;

/// Mode of a lock file: private to the user.
const LOCK_FILE_MODE: u32 = 0o600;

/// A held launcher lock.
#[derive(Debug)]
pub struct LauncherLock {
    file: File,
    path: PathBuf,
}

impl LauncherLock {
    /// Takes the launcher lock of sandbox `name` without blocking; `None` when it is held.
    pub fn try_acquire_for(home: &Home, name: &str) -> Result<Option<Self>, LifecycleError> {
        Self::try_acquire(&home.lock_path(name))
    }

    /// Takes the exclusive lock on `path` without blocking, creating the file (0600) and its
    /// directory (0700) when missing. `None` when another open file holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<Self>, LifecycleError> {
        let lock_err = |source| LifecycleError::LauncherLock { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        // Each round: the file at the path is removed between our open and our lock at most
        // as often as sandboxes of this name are removed, so a handful of rounds is plenty.
        for _ in 0..MAX_ATTEMPTS {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(LOCK_FILE_MODE)
                .open(path)
                .map_err(lock_err)?;
            match lock_opened(&file, path).map_err(lock_err)? {
                Attempt::Locked => return Ok(Some(Self { file, path: path.to_owned() })),
                Attempt::Held => return Ok(None),
                Attempt::Stale => continue,
            }
        }
        Err(lock_err(io::Error::other("the lock file kept being replaced while it was locked")))
    }

    /// Removes the lock file while holding its lock, then releases it. Whoever locks the removed
    /// file afterwards notices and uses a new one.
    pub fn remove(self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked file, e.g. to hand its descriptor to the sandbox process. It is opened
    /// close-on-exec: the launcher must pass it explicitly (clear `FD_CLOEXEC` on a duplicate,
    /// or `dup2` it in the child) for the child to inherit the lock.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Gives up the wrapper and returns the file; the lock lives as long as the file (and any
    /// inherited copy) stays open.
    pub fn into_file(self) -> File {
        self.file
    }
}

impl AsFd for LauncherLock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Rounds of open-and-lock before [`LauncherLock::try_acquire`] gives up.
const MAX_ATTEMPTS: usize = 16;

/// What locking an opened lock file gave.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// Locked, and the path still names this file.
    Locked,
    /// Someone else holds the lock.
    Held,
    /// Locked, but the file was removed (or replaced) after it was opened: try again.
    Stale,
}

/// Locks `file`, opened from `path`, and checks that `path` still names it.
fn lock_opened(file: &File, path: &Path) -> io::Result<Attempt> {
    use std::os::unix::fs::MetadataExt;
    if !flock_exclusive_nonblocking(file)? {
        return Ok(Attempt::Held);
    }
    let locked = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => Ok(Attempt::Locked),
        Ok(_) => Ok(Attempt::Stale),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Attempt::Stale),
        Err(e) => Err(e),
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another open file description holds the lock.
fn flock_exclusive_nonblocking(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: `file` owns a valid open descriptor for the whole call; flock only changes the
        // lock state of that open file description and touches no memory of ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_file_cannot_take_a_held_lock_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("web.lock");

        let first = LauncherLock::try_acquire(&path).unwrap().expect("free lock");
        assert!(LauncherLock::try_acquire(&path).unwrap().is_none());

        drop(first);
        assert!(LauncherLock::try_acquire(&path).unwrap().is_some());
    }

    #[test]
    fn a_lock_taken_on_a_removed_file_is_stale_and_the_next_round_uses_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("web.lock");
        let holder = LauncherLock::try_acquire(&path).unwrap().expect("free lock");
        // Opened before the removal, locked after it, as a racing `start` would.
        let early = File::open(&path).unwrap();
        holder.remove().unwrap();
        assert!(!path.exists());
        assert_eq!(lock_opened(&early, &path).unwrap(), Attempt::Stale);
        drop(early);

        let fresh = LauncherLock::try_acquire(&path).unwrap().expect("a new lock file");
        assert!(path.exists());
        let early = File::open(&path).unwrap();
        assert_eq!(lock_opened(&early, &path).unwrap(), Attempt::Held, "one holder per name");
        drop(fresh);
    }

    #[test]
    fn lock_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        let _lock = LauncherLock::try_acquire_for(&home, "web").unwrap().unwrap();
        let mode = std::fs::metadata(home.run_dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
