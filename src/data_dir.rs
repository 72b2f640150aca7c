//! Data at rest: the data directory (the store, with the MLS key material, and the admin token) is private to
//! the daemon's user. The daemon creates everything with umask 077 (directories 0700, files 0600) and refuses to
//! start on a data directory, or a file in it, that other users can read.

use crate::secrets::Secret;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The admin token the daemon writes when the config names none (readable by the daemon's user only).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// A file or directory other users can access.
#[derive(Debug, thiserror::Error)]
#[error("{path} is accessible to other users (mode {mode:04o}); it holds key material: run `chmod -R go-rwx {root}`")]
pub struct Exposed {
    /// The offending path.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// The data directory.
    pub root: PathBuf,
}

/// Makes every file and directory this process creates private (umask 077).
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Refuses a data directory that exists and that other users can access, or that holds such a file (checked to a
/// depth of 4). A missing directory is fine: the store creates it with mode 0700.
pub fn check(root: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if !root.exists() {
        return Ok(());
    }
    walk(root, root, 0)
}

fn walk(root: &Path, path: &Path, depth: usize) -> Result<(), Box<dyn std::error::Error>> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(Box::new(Exposed { path: path.to_owned(), mode, root: root.to_owned() }));
    }
    if meta.is_dir() && depth < 4 {
        for entry in std::fs::read_dir(path)? {
            walk(root, &entry?.path(), depth + 1)?;
        }
    }
    Ok(())
}

/// Writes a fresh random admin token to `DATA_DIR/admin.token` (mode 0600, replacing the previous one).
pub fn write_admin_token(data_dir: &Path) -> std::io::Result<Secret> {
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let tmp = data_dir.join(format!("{ADMIN_TOKEN_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_readable_files_and_dirs_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        assert!(check(&root).is_ok(), "a missing data dir is created later");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let key = root.join("store.redb");
        std::fs::write(&key, b"keys").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        check(&root).expect("private");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = check(&root).expect_err("world-readable key file");
        assert!(e.to_string().contains("store.redb") && e.to_string().contains("0644"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(check(&root).is_err(), "world-readable data dir");
    }

    #[test]
    fn the_generated_admin_token_is_private_and_fresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write_admin_token(dir.path()).expect("write");
        let b = write_admin_token(dir.path()).expect("write");
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(crate::secrets::from_file(&path).expect("read"), b);
    }
}
