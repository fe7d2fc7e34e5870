//! The per-sandbox boot directory: the krun guest's `/` until the agent switches into the
//! user's root (`sandboxes/<name>/runtime/boot/`).
//!
//! It holds the static agent at [`INIT_PATH`] and the empty mount points of
//! [`BOOT_DIR_MOUNT_POINTS`], nothing else. It is rebuilt from scratch on every boot, so what a
//! previous boot left (nothing, since the guest sees it read-only, but a crash mid-build could)
//! never matters. The agent is hard-linked from the kernel directory when both live on one file
//! system, else copied; setup replaces the agent there by renaming, so a link never sees a
//! half-written binary.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::config::{BOOT_DIR_MOUNT_POINTS, INIT_PATH};

/// The boot directory could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BootDirError {
    /// A directory could not be removed or created.
    #[error("cannot prepare boot directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The agent could not be placed in it.
    #[error("cannot copy the guest agent {agent} into {path}")]
    Agent {
        /// The installed agent.
        agent: PathBuf,
        /// Its place in the boot directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Builds `dir` afresh with `agent` as its init.
pub fn prepare(dir: &Path, agent: &Path) -> Result<(), BootDirError> {
    let dir_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootDirError::Dir { path, source }
    };
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(dir_err(dir)(e)),
        _ => {}
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o755);
    builder.create(dir).map_err(dir_err(dir))?;
    for name in BOOT_DIR_MOUNT_POINTS {
        let path = dir.join(name);
        builder.create(&path).map_err(dir_err(&path))?;
    }

    let target = dir.join(INIT_PATH.trim_start_matches('/'));
    let agent_err =
        |source| BootDirError::Agent { agent: agent.to_path_buf(), path: target.clone(), source };
    if std::fs::hard_link(agent, &target).is_ok() {
        let mode = std::fs::metadata(&target).map_err(agent_err)?.permissions().mode();
        if mode & 0o555 == 0o555 {
            return Ok(());
        }
        // A link shares the installed file's mode; never chmod that one.
        std::fs::remove_file(&target).map_err(agent_err)?;
    }
    std::fs::copy(agent, &target).map_err(agent_err)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).map_err(agent_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_dir_holds_the_agent_and_empty_mount_points_only() {
        let tmp = tempfile::tempdir().unwrap();
        let agent = tmp.path().join("cella-agent");
        std::fs::write(&agent, b"\x7fELF agent").unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o644)).unwrap();
        let dir = tmp.path().join("sb/runtime/boot");
        std::fs::create_dir_all(dir.join("stale/deep")).unwrap();
        std::fs::write(dir.join("stale/deep/file"), b"x").unwrap();

        prepare(&dir, &agent).unwrap();

        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected: Vec<String> =
            BOOT_DIR_MOUNT_POINTS.iter().map(|s| s.to_string()).collect();
        expected.push("cella-agent".into());
        expected.sort();
        assert_eq!(names, expected);
        for name in BOOT_DIR_MOUNT_POINTS {
            assert_eq!(std::fs::read_dir(dir.join(name)).unwrap().count(), 0);
        }
        let init = dir.join("cella-agent");
        assert_eq!(std::fs::read(&init).unwrap(), b"\x7fELF agent");
        assert_eq!(std::fs::metadata(&init).unwrap().permissions().mode() & 0o777, 0o755);
        let installed = std::fs::metadata(&agent).unwrap().permissions().mode();
        assert_eq!(installed & 0o777, 0o644, "the installed agent's mode was changed");
    }

    #[test]
    fn a_missing_agent_names_both_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let err = prepare(&tmp.path().join("boot"), &tmp.path().join("no-agent")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no-agent") && text.contains("boot"), "{text}");
    }
}
