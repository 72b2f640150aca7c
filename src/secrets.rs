//! Secrets kept out of the TOML file, and the permission checks for files that hold secrets or key material.
//!
//! The convention, for the admin token and for every account table (`[irc.NAME]`, …):
//!
//! * `KEY = "env:NAME"` — the value is read from the environment variable `NAME` (it must be set and non-empty);
//! * `KEY_file = "/path"` — the value of `KEY` is the content of the file, with one trailing newline removed. The
//!   file must not be readable by other users (no "other" permission bits), like an ssh key.
//!
//! Setting both `KEY` and `KEY_file` is an error. A connector that needs a *path* (not a secret) names its key
//! `..._path` so that the rule never applies to it.

use std::fmt;
use std::path::Path;

/// A secret value. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a secret could not be read. The message never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// `env:NAME` with `NAME` unset or empty.
    #[error("environment variable {0} is not set (or empty)")]
    EnvUnset(String),
    /// The file is missing or unreadable.
    #[error("cannot read {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file can be read by other users.
    #[error("{path} is readable by other users (mode {mode:04o}); run `chmod 600 {path}`")]
    WorldReadable {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file or variable is empty.
    #[error("{0} is empty")]
    Empty(String),
}

/// Refuses a file (or directory) that other users may access: any of the "other" permission bits set.
pub fn check_not_world_accessible(path: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| SecretError::Unreadable { path: path.display().to_string(), reason: e.to_string() })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(SecretError::WorldReadable { path: path.display().to_string(), mode });
    }
    Ok(())
}

/// Reads a secret from a file: permission check, one trailing newline removed, empty refused.
pub fn from_file(path: &Path) -> Result<Secret, SecretError> {
    check_not_world_accessible(path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| SecretError::Unreadable { path: path.display().to_string(), reason: e.to_string() })?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        return Err(SecretError::Empty(path.display().to_string()));
    }
    Ok(Secret::new(value))
}

/// If `value` is `env:NAME`, the variable's value; otherwise `None` (a literal).
pub fn from_env_ref(value: &str) -> Option<Result<Secret, SecretError>> {
    let name = value.strip_prefix("env:")?;
    Some(match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
        _ => Err(SecretError::EnvUnset(name.to_owned())),
    })
}

/// Where a resolution error in a table happened: the key (as written in the table) and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSecretError {
    /// The key the problem is attached to (`password`, `password_file`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Applies the convention to one account table in place: for each of the connector's `secret_keys`, a
/// `KEY_file` entry is replaced by `KEY` with the file's content; `"env:NAME"` string values are replaced by the
/// variable's value. Other `_file` keys (paths the connector reads itself) are left alone.
pub fn resolve_table(table: &mut toml::Table, secret_keys: &[&str]) -> Result<(), TableSecretError> {
    let file_keys: Vec<String> = table
        .keys()
        .filter(|k| k.strip_suffix("_file").is_some_and(|base| secret_keys.contains(&base)))
        .cloned()
        .collect();
    for fk in file_keys {
        let base = fk.trim_end_matches("_file").to_owned();
        if table.contains_key(&base) {
            return Err(TableSecretError {
                key: fk,
                message: format!("set either `{base}` or `{base}_file`, not both"),
            });
        }
        let path = match table.remove(&fk) {
            Some(toml::Value::String(p)) => p,
            _ => return Err(TableSecretError { key: fk, message: "must be a file path (a string)".into() }),
        };
        let secret = from_file(Path::new(&path)).map_err(|e| TableSecretError { key: fk, message: e.to_string() })?;
        table.insert(base, toml::Value::String(secret.expose().to_owned()));
    }
    for (k, v) in table.iter_mut() {
        if let toml::Value::String(s) = v
            && let Some(r) = from_env_ref(s)
        {
            let secret = r.map_err(|e| TableSecretError { key: k.clone(), message: e.to_string() })?;
            *s = secret.expose().to_owned();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, content: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn file_secrets_are_read_trimmed_and_permission_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = write(dir.path(), "ok", "s3cret\n", 0o600);
        assert_eq!(from_file(&ok).expect("ok").expose(), "s3cret");
        let open = write(dir.path(), "open", "s3cret\n", 0o644);
        let e = from_file(&open).expect_err("world-readable");
        assert!(matches!(e, SecretError::WorldReadable { mode: 0o644, .. }), "{e}");
        assert!(!e.to_string().contains("s3cret"));
        let empty = write(dir.path(), "empty", "\n", 0o600);
        assert!(matches!(from_file(&empty), Err(SecretError::Empty(_))));
        assert!(matches!(from_file(&dir.path().join("nope")), Err(SecretError::Unreadable { .. })));
    }

    #[test]
    fn tables_resolve_file_and_env_references() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = write(dir.path(), "pw", "hunter2\n", 0o600);
        // `set_var` is unsafe (and the crate forbids unsafe): an unset name covers the error path, PATH (always
        // set) the success path.
        let var = "MIMI_BRIDGE_TEST_SECRET_SURELY_UNSET";
        let mut t: toml::Table = toml::from_str(&format!(
            "nick = \"bot\"\npassword_file = {:?}\ntoken = \"env:{var}\"\n",
            pw.display().to_string()
        ))
        .expect("toml");
        let e = resolve_table(&mut t, &["password"]).expect_err("unset variable");
        assert_eq!(e.key, "token");
        assert!(e.message.contains(var), "{e:?}");
        let mut t: toml::Table =
            toml::from_str(&format!("password_file = {:?}\nhome = \"env:PATH\"\n", pw.display().to_string()))
                .expect("toml");
        resolve_table(&mut t, &["password"]).expect("resolves");
        assert_eq!(t.get("password").and_then(|v| v.as_str()), Some("hunter2"));
        assert!(!t.contains_key("password_file"));
        assert_eq!(t.get("home").and_then(|v| v.as_str()), std::env::var("PATH").ok().as_deref());
        let mut both: toml::Table =
            toml::from_str(&format!("password = \"x\"\npassword_file = {:?}\n", pw.display().to_string()))
                .expect("toml");
        assert_eq!(resolve_table(&mut both, &["password"]).expect_err("both").key, "password_file");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
