//! A sandbox's configuration: what the user asked for, validated once, stored as JSON in the
//! sandbox's directory (and later in its database row) and read by the sandbox process.
//!
//! Validation happens when the config is built, so every later reader can rely on it: the name
//! is safe as a path component, sizes are in range, the root exists and is a directory.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Smallest guest memory that boots the Debian kernel with the agent and a workload.
pub const MIN_MEMORY_MIB: u32 = 128;
/// Largest guest memory accepted (1 TiB); the host may still refuse less.
pub const MAX_MEMORY_MIB: u32 = 1024 * 1024;
/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// Largest vCPU count accepted.
pub const MAX_CPUS: u8 = 64;
/// Default vCPU count.
pub const DEFAULT_CPUS: u8 = 1;
/// Longest sandbox name. Names become file names and socket paths (which Unix limits to 107
/// bytes), so they are kept short.
pub const MAX_NAME_LEN: usize = cella_db::MAX_SANDBOX_NAME_LEN;

/// Which VMM runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// krun when hardware KVM works and its kernel is installed, else qemu.
    #[default]
    Auto,
    /// QEMU as a child process (KVM when usable, else TCG software emulation).
    Qemu,
    /// msb_krun in the sandbox process (hardware KVM only).
    Krun,
}

impl BackendKind {
    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Qemu => "qemu",
            Self::Krun => "krun",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "auto" => Ok(Self::Auto),
            "qemu" => Ok(Self::Qemu),
            "krun" => Ok(Self::Krun),
            other => Err(ConfigError::UnknownBackend { value: other.to_string() }),
        }
    }
}

/// An invalid configuration value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The sandbox name is not usable.
    #[error("invalid sandbox name {name:?}: {why}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What rule it breaks.
        why: &'static str,
    },
    /// `--memory` is out of range.
    #[error("memory {mib} MiB is out of range: use {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB")]
    MemoryOutOfRange {
        /// The value given.
        mib: u32,
    },
    /// `--cpus` is out of range.
    #[error("cpu count {cpus} is out of range: use 1 to {MAX_CPUS}")]
    CpusOutOfRange {
        /// The value given.
        cpus: u32,
    },
    /// The root filesystem does not exist.
    #[error("root filesystem {path} does not exist")]
    RootfsMissing {
        /// The path given.
        path: PathBuf,
    },
    /// The root filesystem is not a directory.
    #[error("root filesystem {path} is not a directory")]
    RootfsNotDirectory {
        /// The path given.
        path: PathBuf,
    },
    /// An environment entry is not `KEY=VALUE` with a valid key.
    #[error("invalid environment entry {entry:?}: expected KEY=VALUE with a non-empty KEY without '=' or NUL")]
    InvalidEnv {
        /// The entry as given.
        entry: String,
    },
    /// The working directory is not absolute.
    #[error("working directory {path:?} must be an absolute path")]
    RelativeWorkdir {
        /// The path given.
        path: String,
    },
    /// Unknown `--backend` value.
    #[error("unknown backend {value:?}: use auto, qemu or krun")]
    UnknownBackend {
        /// The value given.
        value: String,
    },
    /// The stored config could not be read or parsed.
    #[error("cannot read sandbox config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The stored config is not valid JSON for this version.
    #[error("malformed sandbox config {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: serde_json::Error,
    },
}

/// Everything the sandbox process needs to boot and run a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Unique name; also the directory and socket name.
    pub name: String,
    /// Absolute path of the root filesystem directory, attached read-only.
    pub rootfs: PathBuf,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Environment given to every process started in the sandbox.
    pub env: Vec<(String, String)>,
    /// Default working directory for exec sessions.
    pub workdir: Option<String>,
    /// Requested backend.
    pub backend: BackendKind,
    /// Removed (row and directory) once it stops.
    pub ephemeral: bool,
    /// Stop once the client that started it has gone and no session is left (`cella run`). The
    /// sandbox process honours it on the first boot only.
    pub stop_when_detached: bool,
    /// Stop after this long without a session or client.
    pub idle_timeout_secs: Option<u64>,
    /// Stop after this long, whatever is running.
    pub max_duration_secs: Option<u64>,
    /// How long the guest may take to answer the handshake before the boot counts as failed;
    /// `None` picks a default for the accelerator in use.
    pub boot_timeout_secs: Option<u64>,
}

impl SandboxConfig {
    /// Checks every field; see [`ConfigError`] for what is rejected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name(&self.name)?;
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::MemoryOutOfRange { mib: self.memory_mib });
        }
        validate_cpus(self.cpus as u32)?;
        validate_rootfs(&self.rootfs)?;
        if let Some(dir) = &self.workdir {
            validate_workdir(dir)?;
        }
        for (key, value) in &self.env {
            validate_env(key, value)?;
        }
        Ok(())
    }

    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout_secs.map(Duration::from_secs)
    }

    /// The maximum duration as a duration.
    pub fn max_duration(&self) -> Option<Duration> {
        self.max_duration_secs.map(Duration::from_secs)
    }

    /// Reads and parses a stored config.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        serde_json::from_slice(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
    }
}

/// Checks that `name` is usable as a sandbox name: the database's rule
/// ([`cella_db::validate_sandbox_name`]: 1 to [`MAX_NAME_LEN`] ASCII letters, digits, `-`, `_`
/// and `.`, starting with a letter or digit, no `..`), reported as a configuration error.
pub fn validate_name(name: &str) -> Result<(), ConfigError> {
    match cella_db::validate_sandbox_name(name) {
        Ok(()) => Ok(()),
        Err(cella_db::DbError::InvalidName { reason, .. }) => {
            Err(ConfigError::InvalidName { name: name.to_string(), why: reason })
        }
        Err(other) => unreachable!("name validation returned {other}"),
    }
}

/// Checks a working directory: commands start there inside the guest, so it must be absolute.
pub fn validate_workdir(dir: &str) -> Result<(), ConfigError> {
    if !dir.starts_with('/') {
        return Err(ConfigError::RelativeWorkdir { path: dir.to_string() });
    }
    Ok(())
}

/// Checks a vCPU count.
pub fn validate_cpus(cpus: u32) -> Result<(), ConfigError> {
    if cpus == 0 || cpus > MAX_CPUS as u32 {
        return Err(ConfigError::CpusOutOfRange { cpus });
    }
    Ok(())
}

/// Checks that `path` exists and is a directory.
pub fn validate_rootfs(path: &std::path::Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Err(_) => Err(ConfigError::RootfsMissing { path: path.to_path_buf() }),
        Ok(meta) if !meta.is_dir() => {
            Err(ConfigError::RootfsNotDirectory { path: path.to_path_buf() })
        }
        Ok(_) => Ok(()),
    }
}

/// Parses a `KEY=VALUE` environment entry.
pub fn parse_env(entry: &str) -> Result<(String, String), ConfigError> {
    let invalid = || ConfigError::InvalidEnv { entry: entry.to_string() };
    let (key, value) = entry.split_once('=').ok_or_else(invalid)?;
    validate_env(key, value)?;
    Ok((key.to_string(), value.to_string()))
}

/// Checks one environment variable: a non-empty key without `=` or NUL, a value without NUL.
pub fn validate_env(key: &str, value: &str) -> Result<(), ConfigError> {
    if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
        return Err(ConfigError::InvalidEnv { entry: format!("{key}={value}") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_path_characters_are_rejected() {
        for bad in ["", ".", "..", "a/b", "../x", "a\0b", "-x", "a b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "web-1", "build_2.x", &"x".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good:?} rejected");
        }
    }

    #[test]
    fn env_entries_need_a_key() {
        assert_eq!(parse_env("A=1=2").unwrap(), ("A".into(), "1=2".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), "".into()));
        assert!(parse_env("=1").is_err());
        assert!(parse_env("A").is_err());
    }

    #[test]
    fn rootfs_must_be_an_existing_directory() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(validate_rootfs(tmp.path()).is_ok());
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(validate_rootfs(&file), Err(ConfigError::RootfsNotDirectory { .. })));
        assert!(matches!(
            validate_rootfs(&tmp.path().join("missing")),
            Err(ConfigError::RootfsMissing { .. })
        ));
    }
}
