//! `mimi-bridge store export | import` moves a daemon's store from redb to PostgreSQL and back (issue #20), with the
//! commands an operator runs: every entry arrives unchanged, `store check` passes, and the daemon starts on the
//! moved store.

use crate::common::{Daemon, bin, write_config};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `mimi-bridge store ARGS --config cfg` (with `input` on standard input); its standard output.
fn store(args: &[&str], cfg: &Path, input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new(bin())
        .arg("store")
        .args(args)
        .arg("--config")
        .arg(cfg)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mimi-bridge store runs");
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        std::io::Write::write_all(&mut stdin, data).expect("write the export");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "store {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The entry lines of an export (the header names the backend it came from; the entries must be equal).
fn entries(export: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(export).lines().filter(|l| l.starts_with("{\"tree\"")).map(str::to_owned).collect()
}

/// A copy of `cfg` with another data directory and `extra` lines in `[bridge]`.
fn variant(cfg: &Path, dir: &Path, name: &str, extra: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(cfg).expect("read config");
    let data = dir.join(format!("data-{name}"));
    let old_data = format!("{:?}", dir.join("data").display().to_string());
    let text = text.replace(&old_data, &format!("{:?}\n{extra}", data.display().to_string()));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn a_store_moves_from_redb_to_postgres_and_back() {
    let pg = harness::Postgres::start().expect("PostgreSQL starts (installed by ./scripts/test)");
    let url = pg.create_database("moved").expect("database");
    let dir = tempfile::tempdir().expect("tempdir");
    let url_file = dir.path().join("postgres-url");
    std::fs::write(&url_file, &url).expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    // A daemon on redb creates its portals, their MLS groups and the hub's state.
    let (redb, _) = write_config(dir.path(), "");
    let mut d = Daemon::start(&redb, &[]);
    assert_eq!(d.terminate(Duration::from_secs(30)), Some(0));
    let from_redb = store(&["export"], &redb, None);
    assert!(entries(&from_redb).len() > 10, "the daemon wrote its state");

    let postgres = variant(
        &redb,
        dir.path(),
        "pg",
        &format!("store = \"postgres\"\npostgres_url_file = {:?}", url_file.display().to_string()),
    );
    store(&["import", "-"], &postgres, Some(&from_redb));
    store(&["check"], &postgres, None);
    let from_postgres = store(&["export"], &postgres, None);
    assert_eq!(entries(&from_postgres), entries(&from_redb), "every entry arrives in PostgreSQL unchanged");
    assert!(String::from_utf8_lossy(&from_postgres).starts_with("{\"format\":\"mimi-bridge-store\""));
    assert!(String::from_utf8_lossy(&from_postgres).lines().next().is_some_and(|h| h.contains("\"postgres\"")));

    // The daemon runs on the moved store, and back on redb after it.
    let mut d = Daemon::start(&postgres, &[]);
    assert_eq!(d.terminate(Duration::from_secs(30)), Some(0));
    let after_run = store(&["export"], &postgres, None);
    let back = variant(&redb, dir.path(), "back", "store = \"redb\"");
    store(&["import", "-"], &back, Some(&after_run));
    store(&["check"], &back, None);
    assert_eq!(entries(&store(&["export"], &back, None)), entries(&after_run), "and back to redb unchanged");
    let mut d = Daemon::start(&back, &[]);
    assert_eq!(d.terminate(Duration::from_secs(30)), Some(0));
}
