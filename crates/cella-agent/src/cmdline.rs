//! The `cella.*` parameters on the kernel command line: what root to mount, where writes go, the
//! hostname and the log level.
//!
//! Parsing is a pure function of the `/proc/cmdline` text so every rule is unit-tested. A value
//! that cella does not understand for a known key is an error (booting some other root than the
//! host asked for is worse than not booting); an unknown `cella.*` key is collected in
//! [`BootConfig::ignored`] and logged, so a newer host can pass options an older agent lacks.
//!
//! Recognised keys:
//! - `cella.root=9p:<tag>` (default `9p:rootfs`): read-only virtio-9p share (qemu);
//!   `cella.root=virtiofs:<tag>`: read-only virtio-fs share (krun);
//!   `cella.root=blk:<device>`: read-only block device, file system from `cella.rootfstype`
//!   (`ext4` by default, or `erofs`);
//! - `cella.upper=tmpfs` (default) or `cella.upper=blk:<device>` (an ext4 disk holding the
//!   writable layer of a persistent sandbox);
//! - `cella.hostname=<name>`;
//! - `cella.debug` (or `cella.debug=1`): log every boot step and decision to the console.

use std::path::PathBuf;

/// Tag of the 9p share when `cella.root` is absent or names no tag.
pub const DEFAULT_9P_TAG: &str = "rootfs";

/// File system of a block-device root when `cella.rootfstype` is absent.
pub const DEFAULT_BLOCK_FSTYPE: &str = "ext4";

/// Longest hostname Linux accepts (`HOST_NAME_MAX`).
pub const MAX_HOSTNAME_LEN: usize = 64;

/// Where the read-only lower layer of the root comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    /// A virtio-9p share with this mount tag.
    NineP {
        /// The share's mount tag.
        tag: String,
    },
    /// A virtio-fs share with this tag.
    VirtioFs {
        /// The share's tag.
        tag: String,
    },
    /// A block device holding a file system.
    Block {
        /// Device node, for example `/dev/vda`.
        device: PathBuf,
        /// File system type passed to mount(2): `ext4` or `erofs`.
        fstype: String,
    },
}

/// Where the writable upper layer of the overlay lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpperSpec {
    /// A tmpfs: writes vanish at poweroff (one-shot sandboxes).
    Tmpfs,
    /// An ext4 block device that keeps writes across boots (persistent sandboxes).
    Block {
        /// Device node, for example `/dev/vdb`.
        device: PathBuf,
    },
}

/// Everything the agent reads from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// The read-only root.
    pub root: RootSpec,
    /// The writable layer.
    pub upper: UpperSpec,
    /// Hostname to set, if any.
    pub hostname: Option<String>,
    /// Verbose console logging.
    pub debug: bool,
    /// Unknown `cella.*` parameters, kept verbatim for the log.
    pub ignored: Vec<String>,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            root: RootSpec::NineP { tag: DEFAULT_9P_TAG.to_owned() },
            upper: UpperSpec::Tmpfs,
            hostname: None,
            debug: false,
            ignored: Vec::new(),
        }
    }
}

impl BootConfig {
    /// Whether the root or the upper layer lives on a block device.
    pub fn uses_block_device(&self) -> bool {
        matches!(self.root, RootSpec::Block { .. }) || matches!(self.upper, UpperSpec::Block { .. })
    }
}

/// A `cella.*` parameter had a value the agent cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// The value is not one of the accepted forms for the key.
    #[error("invalid kernel parameter {key}={value:?}: expected {expected}")]
    InvalidValue {
        /// The parameter name.
        key: String,
        /// The rejected value.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

/// Parses the kernel command line (the contents of `/proc/cmdline`).
pub fn parse(cmdline: &str) -> Result<BootConfig, CmdlineError> {
    let mut config = BootConfig::default();
    let mut block_fstype: Option<String> = None;

    for word in split_words(cmdline) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word.as_str(), None),
        };
        if !key.starts_with("cella.") {
            continue;
        }
        let invalid = |expected| CmdlineError::InvalidValue {
            key: key.to_owned(),
            value: value.unwrap_or("").to_owned(),
            expected,
        };
        match key {
            "cella.root" => config.root = parse_root(value).ok_or_else(|| invalid(ROOT_FORMS))?,
            "cella.rootfstype" => {
                block_fstype = Some(parse_fstype(value).ok_or_else(|| invalid(FSTYPE_FORMS))?)
            }
            "cella.upper" => {
                config.upper = parse_upper(value).ok_or_else(|| invalid(UPPER_FORMS))?
            }
            "cella.hostname" => {
                config.hostname = Some(parse_hostname(value).ok_or_else(|| invalid(HOST_FORMS))?)
            }
            "cella.debug" => config.debug = parse_flag(value).ok_or_else(|| invalid(FLAG_FORMS))?,
            _ => config.ignored.push(word.clone()),
        }
    }

    if let (RootSpec::Block { fstype, .. }, Some(wanted)) = (&mut config.root, block_fstype) {
        *fstype = wanted;
    }
    Ok(config)
}

const ROOT_FORMS: &str = "9p:<tag>, virtiofs:<tag> or blk:/dev/<device>";
const FSTYPE_FORMS: &str = "ext4 or erofs";
const UPPER_FORMS: &str = "tmpfs or blk:/dev/<device>";
const HOST_FORMS: &str = "1 to 64 printable ASCII characters";
const FLAG_FORMS: &str = "nothing, 1/0, true/false, yes/no or on/off";

/// Splits the command line into words the way the kernel does: on whitespace, with double
/// quotes grouping (and being removed from) a word.
fn split_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut current));
                    has_word = false;
                }
            }
            c => {
                current.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(current);
    }
    words
}

fn parse_root(value: Option<&str>) -> Option<RootSpec> {
    let value = value?;
    if value == "9p" {
        return Some(RootSpec::NineP { tag: DEFAULT_9P_TAG.to_owned() });
    }
    if let Some(tag) = value.strip_prefix("9p:") {
        return valid_tag(tag).then(|| RootSpec::NineP { tag: tag.to_owned() });
    }
    if let Some(tag) = value.strip_prefix("virtiofs:") {
        return valid_tag(tag).then(|| RootSpec::VirtioFs { tag: tag.to_owned() });
    }
    let device = parse_device(value.strip_prefix("blk:")?)?;
    Some(RootSpec::Block { device, fstype: DEFAULT_BLOCK_FSTYPE.to_owned() })
}

/// A share tag: 1 to 31 bytes (9p's limit; virtio-fs allows 36), no `/` or `,`.
fn valid_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.len() <= 31 && !tag.contains(['/', ','])
}

fn parse_fstype(value: Option<&str>) -> Option<String> {
    matches!(value?, "ext4" | "erofs").then(|| value.unwrap_or_default().to_owned())
}

fn parse_upper(value: Option<&str>) -> Option<UpperSpec> {
    match value? {
        "tmpfs" => Some(UpperSpec::Tmpfs),
        v => Some(UpperSpec::Block { device: parse_device(v.strip_prefix("blk:")?)? }),
    }
}

/// A device must be an absolute path under `/dev` without `..`.
fn parse_device(path: &str) -> Option<PathBuf> {
    let ok = path.starts_with("/dev/") && path.len() > 5 && !path.split('/').any(|c| c == "..");
    ok.then(|| PathBuf::from(path))
}

fn parse_hostname(value: Option<&str>) -> Option<String> {
    let value = value?;
    // Linux takes any bytes; sandbox names (letters, digits, `-`, `_`, `.`) must all pass.
    let ok = !value.is_empty()
        && value.len() <= MAX_HOSTNAME_LEN
        && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| value.to_owned())
}

fn parse_flag(value: Option<&str>) -> Option<bool> {
    match value {
        None | Some("1" | "true" | "yes" | "on") => Some(true),
        Some("0" | "false" | "no" | "off") => Some(false),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_without_cella_parameters() {
        let config = parse("console=ttyS0 quiet panic=-1").unwrap();
        assert_eq!(config, BootConfig::default());
        assert_eq!(config.root, RootSpec::NineP { tag: "rootfs".into() });
        assert_eq!(config.upper, UpperSpec::Tmpfs);
    }

    #[test]
    fn ninep_root_with_tag_hostname_and_debug() {
        let config =
            parse("console=ttyS0 cella.root=9p:myroot cella.hostname=box-1 cella.debug\n").unwrap();
        assert_eq!(config.root, RootSpec::NineP { tag: "myroot".into() });
        assert_eq!(config.hostname.as_deref(), Some("box-1"));
        assert!(config.debug);
    }

    #[test]
    fn block_root_defaults_to_ext4_and_takes_rootfstype() {
        let config = parse("cella.root=blk:/dev/vda").unwrap();
        assert_eq!(
            config.root,
            RootSpec::Block { device: "/dev/vda".into(), fstype: "ext4".into() }
        );
        let config = parse("cella.rootfstype=erofs cella.root=blk:/dev/vda").unwrap();
        assert_eq!(
            config.root,
            RootSpec::Block { device: "/dev/vda".into(), fstype: "erofs".into() }
        );
    }

    #[test]
    fn virtiofs_root_is_parsed() {
        let config = parse("cella.root=virtiofs:rootfs cella.hostname=my_box.v2").unwrap();
        assert_eq!(config.root, RootSpec::VirtioFs { tag: "rootfs".into() });
        assert_eq!(config.hostname.as_deref(), Some("my_box.v2"));
        assert!(parse("cella.root=virtiofs:").is_err());
    }

    #[test]
    fn block_upper_is_parsed() {
        let config = parse("cella.upper=blk:/dev/vdb").unwrap();
        assert_eq!(config.upper, UpperSpec::Block { device: "/dev/vdb".into() });
    }

    #[test]
    fn bad_values_for_known_keys_are_errors() {
        for bad in [
            "cella.root=nfs:server",
            "cella.root=9p:",
            "cella.root=blk:vda",
            "cella.root=blk:/dev/../etc/passwd",
            "cella.root",
            "cella.upper=disk",
            "cella.rootfstype=xfs",
            r#"cella.hostname="has space""#,
            "cella.hostname=",
            "cella.debug=maybe",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
        let long = format!("cella.hostname={}", "a".repeat(65));
        assert!(parse(&long).is_err());
    }

    #[test]
    fn unknown_cella_keys_are_collected_not_fatal() {
        let config = parse("cella.future=1 cella.root=9p:r other.key=2").unwrap();
        assert_eq!(config.ignored, vec!["cella.future=1".to_string()]);
        assert_eq!(config.root, RootSpec::NineP { tag: "r".into() });
    }

    #[test]
    fn quotes_group_words_and_are_removed() {
        let words = split_words(r#"a "b c" d="e f" "#);
        assert_eq!(words, vec!["a", "b c", "d=e f"]);
        let config = parse(r#"cella.hostname="quoted""#).unwrap();
        assert_eq!(config.hostname.as_deref(), Some("quoted"));
    }

    #[test]
    fn later_parameters_win_and_debug_can_be_turned_off() {
        let config = parse("cella.debug cella.debug=0 cella.hostname=a cella.hostname=b").unwrap();
        assert!(!config.debug);
        assert_eq!(config.hostname.as_deref(), Some("b"));
    }
}
