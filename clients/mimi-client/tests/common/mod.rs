//! Helpers shared by the client's integration tests.

use std::path::Path;
use std::process::Command;

/// Runs the real `mimi-client` binary with `--state state --server server args…`; panics unless it succeeds;
/// returns its standard output.
pub fn client(state: &Path, server: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mimi-client"))
        .arg("--state")
        .arg(state)
        .arg("--server")
        .arg(server)
        .args(args)
        .output()
        .expect("mimi-client runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "mimi-client {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}
