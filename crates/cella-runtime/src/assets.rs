//! The guest boot assets that `scripts/setup` installs under `CELLA_HOME/kernel/`.
//!
//! Setup records what it installed in `kernel/current.json`, with paths relative to the kernel
//! directory so the directory can be shared (symlinked) between homes. Nothing here downloads or
//! builds: a missing asset is an error that names the setup command to run.
//!
//! The krun backend needs two more files, both optional (without them `auto` means qemu): the
//! static agent (`"agent"` in the manifest), copied into each sandbox's boot directory, and
//! the libkrunfw library holding its guest kernel, at the fixed path [`KRUNFW_PATH`] (setup
//! verifies its pinned sha256 when it installs it).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backend::krun::KrunAssets;
use crate::backend::KrunInstall;

/// Command a user runs to install the guest assets.
pub const SETUP_HINT: &str = "run scripts/setup from the cella source tree";

/// Where setup installs libkrunfw (the krun guest kernel), relative to the kernel directory.
/// The version is part of the name: msb_krun 0.1.42 was built and tested against 5.6.1.
pub const KRUNFW_PATH: &str = "krun/libkrunfw.so.5.6.1";

/// A missing or unreadable boot asset.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// `kernel/current.json` is missing: setup has not run for this home.
    #[error("guest kernel is not installed ({path} is missing): {SETUP_HINT}")]
    NotInstalled {
        /// The manifest path.
        path: PathBuf,
    },
    /// The manifest exists but cannot be read or parsed.
    #[error("guest kernel manifest {path} is unreadable or malformed: {SETUP_HINT} again")]
    BadManifest {
        /// The manifest path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file the manifest names does not exist.
    #[error("guest {what} {path} is missing: {SETUP_HINT} again")]
    MissingFile {
        /// Which asset ("kernel", "initramfs").
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
}

#[derive(Debug, Deserialize)]
struct Manifest {
    kernel_version: String,
    vmlinux: PathBuf,
    initramfs: PathBuf,
    #[serde(default)]
    agent: Option<PathBuf>,
}

/// Resolved, existing boot assets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootAssets {
    /// Kernel release, e.g. `6.1.0-28-amd64`.
    pub kernel_version: String,
    /// Uncompressed ELF kernel with a PVH entry point.
    pub vmlinux: PathBuf,
    /// The initramfs holding the agent as `/init` and the kernel modules it loads.
    pub initramfs: PathBuf,
    /// The static agent binary on its own, for krun boot directories, if installed.
    pub agent: Option<PathBuf>,
    /// libkrunfw, if installed.
    pub krunfw: Option<PathBuf>,
}

impl BootAssets {
    /// Reads `kernel_dir/current.json` and checks that the files it names exist.
    pub fn load(kernel_dir: &Path) -> Result<Self, AssetError> {
        let manifest_path = kernel_dir.join("current.json");
        let text = match std::fs::read(&manifest_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AssetError::NotInstalled { path: manifest_path })
            }
            Err(e) => {
                return Err(AssetError::BadManifest { path: manifest_path, source: Box::new(e) })
            }
        };
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
            AssetError::BadManifest { path: manifest_path.clone(), source: Box::new(e) }
        })?;

        let krunfw = kernel_dir.join(KRUNFW_PATH);
        let assets = Self {
            kernel_version: manifest.kernel_version,
            vmlinux: kernel_dir.join(manifest.vmlinux),
            initramfs: kernel_dir.join(manifest.initramfs),
            agent: manifest.agent.map(|a| kernel_dir.join(a)).filter(|a| a.is_file()),
            krunfw: krunfw.is_file().then_some(krunfw),
        };
        for (what, path) in [("kernel", &assets.vmlinux), ("initramfs", &assets.initramfs)] {
            if !path.is_file() {
                return Err(AssetError::MissingFile { what, path: path.clone() });
            }
        }
        Ok(assets)
    }

    /// Whether the krun backend's files are installed.
    pub fn krun_install(&self) -> KrunInstall {
        match (&self.krunfw, &self.agent) {
            (None, _) => KrunInstall::NoKernelLibrary,
            (Some(_), None) => KrunInstall::NoAgent,
            (Some(_), Some(_)) => KrunInstall::Installed,
        }
    }

    /// The krun backend's files, when installed.
    pub fn krun(&self) -> Option<KrunAssets> {
        Some(KrunAssets { krunfw: self.krunfw.clone()?, agent: self.agent.clone()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_manifest_names_the_setup_command() {
        let tmp = tempfile::tempdir().unwrap();
        let err = BootAssets::load(tmp.path()).unwrap_err();
        assert!(matches!(err, AssetError::NotInstalled { .. }));
        assert!(err.to_string().contains("scripts/setup"));
    }

    #[test]
    fn manifest_paths_resolve_relative_to_the_kernel_dir() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("6.1")).unwrap();
        std::fs::write(tmp.path().join("6.1/vmlinux"), b"elf").unwrap();
        std::fs::write(tmp.path().join("initramfs-ab.cpio"), b"cpio").unwrap();
        std::fs::write(
            tmp.path().join("current.json"),
            br#"{"kernel_version":"6.1","vmlinux":"6.1/vmlinux","initramfs":"initramfs-ab.cpio","extra":1}"#,
        )
        .unwrap();
        let assets = BootAssets::load(tmp.path()).unwrap();
        assert_eq!(assets.vmlinux, tmp.path().join("6.1/vmlinux"));

        std::fs::remove_file(tmp.path().join("initramfs-ab.cpio")).unwrap();
        assert!(matches!(BootAssets::load(tmp.path()), Err(AssetError::MissingFile { .. })));
    }

    #[test]
    fn krun_files_are_optional_and_found_when_installed() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("vmlinux"), b"elf").unwrap();
        std::fs::write(tmp.path().join("i.cpio"), b"cpio").unwrap();
        let manifest = br#"{"kernel_version":"6.1","vmlinux":"vmlinux","initramfs":"i.cpio","agent":"cella-agent"}"#;
        std::fs::write(tmp.path().join("current.json"), manifest).unwrap();
        let assets = BootAssets::load(tmp.path()).unwrap();
        assert_eq!(assets.krun_install(), KrunInstall::NoKernelLibrary);
        assert_eq!(assets.krun(), None);

        std::fs::create_dir(tmp.path().join("krun")).unwrap();
        std::fs::write(tmp.path().join(KRUNFW_PATH), b"so").unwrap();
        assert_eq!(BootAssets::load(tmp.path()).unwrap().krun_install(), KrunInstall::NoAgent);

        std::fs::write(tmp.path().join("cella-agent"), b"agent").unwrap();
        let krun = BootAssets::load(tmp.path()).unwrap().krun().unwrap();
        assert_eq!(krun.agent, tmp.path().join("cella-agent"));
        assert_eq!(krun.krunfw, tmp.path().join("krun/libkrunfw.so.5.6.1"));
    }
}
