//! The passphrase of the account's sqlite stores (bot mode's matrix-sdk store, appservice mode's devices' crypto
//! stores): with `store_passphrase` set, matrix-sdk encrypts what it keeps (Olm accounts and sessions, room keys,
//! cross-signing keys) with a key derived from it, so a copy of the data directory alone gives none of them away.
//!
//! A store made without a passphrase cannot take one later, nor the other way round: the stores' directory
//! records which it is ([`MARKER`]), and a start whose configuration disagrees fails with what to do.

use std::path::Path;

/// The file, beside the stores, that says they are protected by a passphrase.
pub const MARKER: &str = "passphrase-protected";

/// The passphrase to open the stores under `dir` with, after checking that it agrees with how they were made (a
/// new `dir` is made, mode 0700, and marked if `passphrase` is set). `Err` says what disagrees and what to do.
pub fn check<'a>(dir: &Path, passphrase: Option<&'a str>) -> Result<Option<&'a str>, String> {
    let marked = dir.join(MARKER).exists();
    let made = match std::fs::read_dir(dir) {
        Ok(entries) => entries.flatten().any(|e| e.file_name() != MARKER),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    match (made, marked, passphrase) {
        (false, _, Some(_)) => {
            std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
                .create(dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::write(dir.join(MARKER), b"").map_err(|e| format!("{}: {e}", dir.display()))?;
            Ok(passphrase)
        }
        (false, true, None) => {
            // A mark without stores (they were removed): the new ones are made in the clear.
            std::fs::remove_file(dir.join(MARKER)).map_err(|e| format!("{}: {e}", dir.display()))?;
            Ok(None)
        }
        (true, false, Some(_)) => Err(format!(
            "the stores in {} were made without a passphrase and cannot take one: remove `store_passphrase`, or \
             move the directory away to start them over (the bridge's Matrix devices start over with them: new keys)",
            dir.display()
        )),
        (true, true, None) => Err(format!(
            "the stores in {} are protected by a passphrase: set `store_passphrase` (`store_passphrase_file` or \
             \"env:NAME\")",
            dir.display()
        )),
        (_, _, passphrase) => Ok(passphrase),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_takes_the_passphrase_and_keeps_needing_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("stores");
        assert_eq!(check(&dir, Some("pw")), Ok(Some("pw")));
        assert!(dir.join(MARKER).exists(), "marked");
        std::fs::write(dir.join("store.sqlite3"), b"x").expect("a store");
        assert_eq!(check(&dir, Some("pw")), Ok(Some("pw")));
        let e = check(&dir, None).expect_err("needs it");
        assert!(e.contains("set `store_passphrase`"), "{e}");
    }

    #[test]
    fn a_store_made_without_a_passphrase_cannot_take_one() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("stores");
        assert_eq!(check(&dir, None), Ok(None));
        assert!(!dir.join(MARKER).exists());
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("store.sqlite3"), b"x").expect("a store");
        assert_eq!(check(&dir, None), Ok(None));
        let e = check(&dir, Some("pw")).expect_err("too late");
        assert!(e.contains("made without a passphrase"), "{e}");
    }

    #[test]
    fn a_mark_without_stores_goes_when_there_is_no_passphrase() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(check(root.path(), Some("pw")), Ok(Some("pw")));
        assert_eq!(check(root.path(), None), Ok(None));
        assert!(!root.path().join(MARKER).exists(), "the stores made now are in the clear");
        std::fs::write(root.path().join("store.sqlite3"), b"x").expect("a store");
        assert_eq!(check(root.path(), None), Ok(None));
    }

    #[test]
    fn an_empty_directory_is_a_new_store() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(check(root.path(), Some("pw")), Ok(Some("pw")));
        assert!(root.path().join(MARKER).exists());
    }
}
