//! The native client as operators and scripts run it: `mimi-bridge client --state DIR --server URL COMMAND`.

use std::path::Path;
use std::process::{Command, Stdio};

/// The base URL of the client API of the daemon configured in `cfg` (its `[mimi] listen`).
pub fn server_of(cfg: &Path) -> String {
    let cfg = mimi_bridge::config::Config::load(cfg).expect("valid config");
    format!("http://{}", cfg.mimi.listen.get_ref())
}

/// `mimi-bridge client --state state --server server args…`, not started yet.
pub fn command(state: &Path, server: &str, args: &[&str]) -> Command {
    let mut c = Command::new(super::bin());
    c.arg("client").arg("--state").arg(state).arg("--server").arg(server).args(args).stdin(Stdio::null());
    c
}

/// Runs `mimi-bridge client …` to its end; panics unless it succeeds; its standard output.
pub fn client(state: &Path, server: &str, args: &[&str]) -> String {
    let out = command(state, server, args).output().expect("mimi-bridge client runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "client {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The JSON lines of `listen --json`.
pub fn messages(listen_json: &str) -> Vec<serde_json::Value> {
    listen_json.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}
