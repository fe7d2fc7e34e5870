//! Finding a program in `PATH`, and telling "not there" from "there but not executable".
//!
//! The agent searches `PATH` itself (rather than letting `execvp` do it in the child) for two
//! reasons: it must use the *request's* `PATH`, not the agent's, and it must classify the failure
//! for the host the way a shell does: no match anywhere is "not found" (127); only
//! non-executable matches is "not executable" (126), like `execvp` returning `EACCES`.
//!
//! A name containing `/` is not searched: it is executed as given (relative to the process's
//! working directory) and `execve`'s own error classifies it. Empty `PATH` entries, which
//! historically mean the current directory, are skipped: a sandbox should not run whatever
//! happens to lie in its working directory by accident.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::SpawnError;

/// Resolves `name` against the colon-separated `path_var`.
pub fn find_program(name: &str, path_var: &str) -> Result<PathBuf, SpawnError> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let not_found =
        || SpawnError::NotInPath { program: name.to_owned(), path: path_var.to_owned() };
    if name.is_empty() || name == "." || name == ".." {
        return Err(not_found());
    }

    let mut not_executable = None;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        match classify(&candidate) {
            Candidate::Executable => return Ok(candidate),
            Candidate::NotExecutable => {
                not_executable.get_or_insert(candidate);
            }
            Candidate::Absent => {}
        }
    }
    match not_executable {
        Some(path) => Err(SpawnError::NotExecutableInPath { program: name.to_owned(), path }),
        None => Err(not_found()),
    }
}

enum Candidate {
    Executable,
    NotExecutable,
    Absent,
}

/// Follows symlinks; directories and other non-files count as absent, as in a shell.
fn classify(path: &Path) -> Candidate {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
            Candidate::Executable
        }
        Ok(meta) if meta.is_file() => Candidate::NotExecutable,
        _ => Candidate::Absent,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use cella_protocol::SpawnFailure;

    use super::*;

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn finds_the_first_executable_match() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        file(a.path(), "tool", 0o644);
        let wanted = file(b.path(), "tool", 0o755);
        let path = format!("{}:{}", a.path().display(), b.path().display());
        assert_eq!(find_program("tool", &path).unwrap(), wanted);
    }

    #[test]
    fn missing_everywhere_is_not_found() {
        let a = tempfile::tempdir().unwrap();
        let err = find_program("nope", &a.path().display().to_string()).unwrap_err();
        assert_eq!(err.failure(), SpawnFailure::NotFound);
        assert_eq!(find_program("nope", "").unwrap_err().failure(), SpawnFailure::NotFound);
    }

    #[test]
    fn only_non_executable_matches_is_not_executable() {
        let a = tempfile::tempdir().unwrap();
        let path = file(a.path(), "script", 0o644);
        let err = find_program("script", &a.path().display().to_string()).unwrap_err();
        assert_eq!(err.failure(), SpawnFailure::NotExecutable);
        assert!(err.message().contains(&path.display().to_string()));
    }

    #[test]
    fn directories_are_skipped() {
        let a = tempfile::tempdir().unwrap();
        fs::create_dir(a.path().join("sub")).unwrap();
        let err = find_program("sub", &a.path().display().to_string()).unwrap_err();
        assert_eq!(err.failure(), SpawnFailure::NotFound);
    }

    #[test]
    fn names_with_a_slash_are_not_searched() {
        assert_eq!(find_program("./x", "").unwrap(), PathBuf::from("./x"));
        assert_eq!(find_program("/bin/x", "/usr/bin").unwrap(), PathBuf::from("/bin/x"));
    }

    #[test]
    fn empty_path_entries_are_skipped() {
        // The test binary's own directory would match if "" meant ".", but tests cannot chdir
        // safely in parallel; an all-empty PATH must simply find nothing.
        let err = find_program("cargo", "::").unwrap_err();
        assert_eq!(err.failure(), SpawnFailure::NotFound);
    }
}
