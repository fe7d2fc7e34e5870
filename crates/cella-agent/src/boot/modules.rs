//! Loading the kernel modules the initramfs carries.
//!
//! `scripts/build-initramfs` puts the modules, uncompressed, flat in `/lib/modules` and writes
//! their file names one per line, in dependency order, to `/etc/cella/modules`. There is no
//! `modprobe` in the guest: the order of that file is the dependency resolution.
//!
//! Each module is loaded with `finit_module`. `EEXIST` (already loaded, or built in) is success.
//! A failure is logged and loading continues with the next module: a missing optional driver
//! must not stop the boot, and a missing essential one makes a later step (mount, port) fail
//! with a clearer error. A missing list means a kernel with everything built in (krun).
//!
//! Modules only block devices need ([`BLOCK_ONLY_MODULES`]) are skipped when the command line
//! names no block device: under TCG `ext4.ko` alone takes about 0.4 s to load, a tenth of a cold
//! boot. ext4's own dependencies (jbd2, mbcache, crc16) are skipped with it: nothing else in the
//! initramfs uses them, and together they cost about 60 ms.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// The module load list in the initramfs.
pub const MODULE_LIST: &str = "/etc/cella/modules";

/// Where the listed module files are.
pub const MODULE_DIR: &str = "/lib/modules";

/// Modules only needed to use a block device (the root or upper disk). `crc32c_generic` is
/// ext4's soft dependency (its checksums go through the crypto API, not a symbol); jbd2, mbcache
/// and crc16 are used by ext4 alone among the modules the initramfs carries.
pub const BLOCK_ONLY_MODULES: &[&str] =
    &["virtio_blk", "ext4", "erofs", "crc32c_generic", "jbd2", "mbcache", "crc16"];

/// One module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The module file could not be opened.
    #[error("cannot open module {}", path.display())]
    Open {
        /// The module file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the module.
    #[error("cannot load module {}", path.display())]
    Load {
        /// The module file.
        path: PathBuf,
        /// The kernel's error.
        #[source]
        source: Errno,
    },
}

/// What loading the list did.
#[derive(Debug, Default)]
pub struct ModuleReport {
    /// Modules newly loaded.
    pub loaded: usize,
    /// Modules that were already present.
    pub present: usize,
    /// Modules skipped because this boot does not need them.
    pub skipped: usize,
    /// Modules that failed.
    pub failed: Vec<ModuleError>,
}

/// Parses the module list: one file name per line; blank lines and `#` comments are skipped, as
/// are names with a `/` (the list names files in [`MODULE_DIR`], nothing else).
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !l.contains('/') && *l != "." && *l != "..")
        .map(str::to_owned)
        .collect()
}

/// The module name of a file name: `ext4.ko` -> `ext4`, `-` read as `_` (as the kernel does).
pub fn module_name(file: &str) -> String {
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Loads every module named in `list` from `dir`, except those named in `skip`. A missing list
/// loads nothing.
pub fn load_all(list: &Path, dir: &Path, skip: &[&str]) -> ModuleReport {
    let mut report = ModuleReport::default();
    let Ok(text) = std::fs::read_to_string(list) else {
        crate::log_info!("no module list at {}; assuming built-in drivers", list.display());
        return report;
    };
    for name in parse_list(&text) {
        if skip.contains(&module_name(&name).as_str()) {
            crate::log_debug!("module {name}: not needed for this boot");
            report.skipped += 1;
            continue;
        }
        let start = std::time::Instant::now();
        let result = load_one(&dir.join(&name));
        crate::log_debug!("module {name}: {:?} in {:?}", result.as_ref().ok(), start.elapsed());
        match result {
            Ok(true) => report.loaded += 1,
            Ok(false) => report.present += 1,
            Err(e) => report.failed.push(e),
        }
    }
    report
}

/// Loads one module; `Ok(false)` if it was already loaded.
fn load_one(path: &Path) -> Result<bool, ModuleError> {
    let file =
        File::open(path).map_err(|source| ModuleError::Open { path: path.into(), source })?;
    match finit_module(&file, c"", ModuleInitFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(source) => Err(ModuleError::Load { path: path.into(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keeps_order_and_skips_comments_blanks_and_paths() {
        let text =
            "virtio_ring.ko\n\n# comment\n  virtio.ko  \n../evil.ko\nsub/x.ko\nvirtio_console.ko";
        assert_eq!(parse_list(text), ["virtio_ring.ko", "virtio.ko", "virtio_console.ko"]);
    }

    #[test]
    fn skipped_modules_are_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules"), "ext4.ko\nvirtio-blk.ko\nmissing.ko\n").unwrap();
        let report = load_all(&dir.path().join("modules"), dir.path(), BLOCK_ONLY_MODULES);
        assert_eq!((report.skipped, report.failed.len()), (2, 1));
    }

    #[test]
    fn module_names_drop_the_suffix_and_normalise_dashes() {
        assert_eq!(module_name("ext4.ko"), "ext4");
        assert_eq!(module_name("virtio-blk.ko.xz"), "virtio_blk");
        assert_eq!(module_name("plain"), "plain");
    }

    #[test]
    fn missing_list_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let report = load_all(&dir.path().join("modules"), dir.path(), &[]);
        assert_eq!((report.loaded, report.present, report.failed.len()), (0, 0, 0));
    }

    #[test]
    fn missing_module_file_is_reported_and_loading_continues() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules"), "a.ko\nb.ko\n").unwrap();
        let report = load_all(&dir.path().join("modules"), dir.path(), &[]);
        assert_eq!(report.failed.len(), 2);
        assert!(matches!(report.failed[0], ModuleError::Open { .. }));
    }
}
