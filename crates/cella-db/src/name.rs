//! Sandbox names, as the database accepts them.
//!
//! A sandbox name becomes a directory (`sandboxes/<name>/`), a lock file and socket names under
//! `run/`. The database refuses any name that is not a single safe path component, so code that
//! derives a path from a stored name never needs to re-check it. The rule is the same as the
//! SDK's config validation (`cella_runtime::config::validate_name`), so a validated config is
//! never refused here; this is the last line, not the user-facing check.

use crate::DbError;

/// Longest sandbox name, in bytes (socket paths under `run/` must fit in 107 bytes).
pub const MAX_SANDBOX_NAME_LEN: usize = 63;

/// Checks that `name` is 1 to [`MAX_SANDBOX_NAME_LEN`] bytes of ASCII letters, digits, `-`, `_`
/// and `.`, starting with a letter or digit, with no `..` anywhere. Such a name has no `/` and
/// no NUL and can never be `.` or `..`; refusing `..` inside a name as well keeps every name
/// safe for any tool that splits or joins it with other text.
pub fn validate_sandbox_name(name: &str) -> Result<(), DbError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_SANDBOX_NAME_LEN {
        Some("it is longer than 63 bytes")
    } else if !name.as_bytes()[0].is_ascii_alphanumeric() {
        Some("it must start with a letter or digit")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        Some("only letters, digits, '-', '_' and '.' are allowed")
    } else if name.contains("..") {
        Some("it must not contain '..'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DbError::InvalidName { name: name.to_owned(), reason }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_accepted() {
        for name in ["web", "a", "build-42", "my_box.v2", "X9", "a.b.c"] {
            validate_sandbox_name(name).unwrap();
        }
        validate_sandbox_name(&"a".repeat(MAX_SANDBOX_NAME_LEN)).unwrap();
    }

    #[test]
    fn names_that_could_escape_the_sandbox_dir_are_rejected() {
        let long = "a".repeat(MAX_SANDBOX_NAME_LEN + 1);
        for name in
            ["", ".", "..", "a/b", "../x", "a\0b", "-rf", ".hidden", "é", "a..b", "a..", &long]
        {
            assert!(
                matches!(validate_sandbox_name(name), Err(DbError::InvalidName { .. })),
                "{name:?} should be rejected"
            );
        }
    }
}
