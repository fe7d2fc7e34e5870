//! Users and groups of the guest root, read from `/etc/passwd` and `/etc/group` by hand.
//!
//! The agent is a static glibc binary: `getpwnam` would go through NSS, which needs shared
//! libraries that a static binary cannot load (and the user's root may have none). So this
//! module parses the two files itself, tolerating the odd lines real systems contain (comments,
//! NIS `+`/`-` entries, blank or short lines are skipped, never fatal).
//!
//! Resolution follows the container convention: a name must exist in passwd; a numeric uid may
//! be absent from passwd, in which case it runs with gid = uid and `HOME=/`. Supplementary groups
//! are the primary gid plus every group that lists the user by name.

use std::path::{Path, PathBuf};

/// Home directory for a uid that has no passwd entry.
pub const HOME_FOR_UNKNOWN_UID: &str = "/";

/// Home directory for root when passwd has no entry for uid 0.
pub const ROOT_HOME_FALLBACK: &str = "/root";

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member login names.
    pub members: Vec<String>,
}

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups, primary gid first, without duplicates.
    pub groups: Vec<u32>,
    /// Home directory (for `HOME`).
    pub home: String,
}

/// The requested user does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// A user name that `/etc/passwd` does not list.
    #[error("user {name:?} not found in {passwd}")]
    UnknownUser {
        /// The requested name.
        name: String,
        /// The passwd file that was searched.
        passwd: PathBuf,
    },
}

/// The parsed user and group databases of one root.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    /// Path the passwd entries came from, for error messages.
    pub passwd_path: PathBuf,
    /// Entries of `/etc/passwd`.
    pub passwd: Vec<PasswdEntry>,
    /// Entries of `/etc/group`.
    pub groups: Vec<GroupEntry>,
}

impl UserDb {
    /// Reads `etc/passwd` and `etc/group` under `root`. Missing or unreadable files count as
    /// empty: a root without passwd can still run commands as root or as a numeric uid.
    pub fn load(root: &Path) -> Self {
        let passwd_path = root.join("etc/passwd");
        let passwd = std::fs::read(&passwd_path).unwrap_or_default();
        let group = std::fs::read(root.join("etc/group")).unwrap_or_default();
        Self {
            passwd: parse_passwd(&String::from_utf8_lossy(&passwd)),
            groups: parse_group(&String::from_utf8_lossy(&group)),
            passwd_path,
        }
    }

    /// Resolves `spec` (a user name or a numeric uid; `None` means root) to credentials.
    pub fn resolve(&self, spec: Option<&str>) -> Result<Credentials, UserError> {
        let entry = match spec {
            None => self.by_uid(0).cloned().or_else(|| Some(root_fallback())),
            Some(spec) => match self.passwd.iter().find(|e| e.name == spec) {
                Some(entry) => Some(entry.clone()),
                None => match spec.parse::<u32>() {
                    Ok(uid) => Some(self.by_uid(uid).cloned().unwrap_or_else(|| unknown_uid(uid))),
                    Err(_) => None,
                },
            },
        };
        let entry = entry.ok_or_else(|| UserError::UnknownUser {
            name: spec.unwrap_or_default().to_owned(),
            passwd: self.passwd_path.clone(),
        })?;
        Ok(Credentials {
            uid: entry.uid,
            gid: entry.gid,
            groups: self.groups_of(&entry),
            home: entry.home,
        })
    }

    /// Gid of the group called `name`, if any.
    pub fn group_gid(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|g| g.name == name).map(|g| g.gid)
    }

    fn by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|e| e.uid == uid)
    }

    fn groups_of(&self, entry: &PasswdEntry) -> Vec<u32> {
        let mut groups = vec![entry.gid];
        let named = self.groups.iter().filter(|g| g.members.contains(&entry.name));
        for group in named {
            if !groups.contains(&group.gid) {
                groups.push(group.gid);
            }
        }
        groups
    }
}

fn root_fallback() -> PasswdEntry {
    PasswdEntry { name: "root".into(), uid: 0, gid: 0, home: ROOT_HOME_FALLBACK.into() }
}

fn unknown_uid(uid: u32) -> PasswdEntry {
    PasswdEntry { name: String::new(), uid, gid: uid, home: HOME_FOR_UNKNOWN_UID.into() }
}

/// Splits a line of a colon-separated database, skipping comments, NIS entries and blanks.
fn fields(line: &str) -> Option<Vec<&str>> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() || line.starts_with(['#', '+', '-']) {
        return None;
    }
    Some(line.split(':').collect())
}

/// Parses `/etc/passwd` text (`name:pw:uid:gid:gecos:home:shell`), skipping malformed lines.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(fields)
        .filter_map(|f| {
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: if f[5].is_empty() { HOME_FOR_UNKNOWN_UID.into() } else { f[5].to_owned() },
            })
        })
        .collect()
}

/// Parses `/etc/group` text (`name:pw:gid:member,member`), skipping malformed lines.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(fields)
        .filter_map(|f| {
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f[3].split(',').filter(|m| !m.is_empty()).map(str::to_owned).collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken line
+nisuser::::::
alice:x:1000:1000:Alice,,,:/home/alice:/bin/sh
bob:x:1001:100::/home/bob:/bin/sh
nohome:x:1002:1002:::/bin/sh
bad:x:notanumber:1:::
";
    const GROUP: &str = "\
root:x:0:
users:x:100:alice
audio:x:29:alice,bob
alice:x:1000:
docker:x:999:bob,alice,
";

    fn db() -> UserDb {
        UserDb {
            passwd_path: "/etc/passwd".into(),
            passwd: parse_passwd(PASSWD),
            groups: parse_group(GROUP),
        }
    }

    #[test]
    fn passwd_parsing_skips_malformed_lines() {
        let names: Vec<_> = parse_passwd(PASSWD).into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["root", "daemon", "alice", "bob", "nohome"]);
    }

    #[test]
    fn no_user_means_root_with_its_home() {
        let creds = db().resolve(None).unwrap();
        assert_eq!((creds.uid, creds.gid, creds.home.as_str()), (0, 0, "/root"));
        assert_eq!(creds.groups, vec![0]);
    }

    #[test]
    fn root_without_passwd_gets_fallback_home() {
        let creds = UserDb::default().resolve(None).unwrap();
        assert_eq!((creds.uid, creds.home.as_str()), (0, ROOT_HOME_FALLBACK));
    }

    #[test]
    fn name_resolves_with_supplementary_groups() {
        let creds = db().resolve(Some("alice")).unwrap();
        assert_eq!((creds.uid, creds.gid), (1000, 1000));
        assert_eq!(creds.home, "/home/alice");
        assert_eq!(creds.groups, vec![1000, 100, 29, 999]);
    }

    #[test]
    fn numeric_uid_resolves_through_passwd_when_listed() {
        let creds = db().resolve(Some("1001")).unwrap();
        assert_eq!((creds.uid, creds.gid, creds.home.as_str()), (1001, 100, "/home/bob"));
        assert_eq!(creds.groups, vec![100, 29, 999]);
    }

    #[test]
    fn unlisted_numeric_uid_runs_with_gid_equal_uid_and_root_home() {
        let creds = db().resolve(Some("4242")).unwrap();
        assert_eq!((creds.uid, creds.gid, creds.home.as_str()), (4242, 4242, "/"));
        assert_eq!(creds.groups, vec![4242]);
    }

    #[test]
    fn unknown_name_is_an_error_naming_the_file() {
        let err = db().resolve(Some("mallory")).unwrap_err();
        assert!(err.to_string().contains("mallory"));
        assert!(err.to_string().contains("/etc/passwd"));
    }

    #[test]
    fn empty_home_becomes_slash() {
        assert_eq!(db().resolve(Some("nohome")).unwrap().home, "/");
    }

    #[test]
    fn load_reads_files_under_a_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        let db = UserDb::load(dir.path());
        assert_eq!(db.resolve(Some("bob")).unwrap().uid, 1001);
        assert_eq!(db.group_gid("audio"), Some(29));
        let empty = UserDb::load(&dir.path().join("missing"));
        assert!(empty.passwd.is_empty());
    }
}
