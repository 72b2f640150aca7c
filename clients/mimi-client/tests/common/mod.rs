//! Helpers shared by the client's integration tests: running the `mimi-client` binary, reading its `listen
//! --json` output, serving the client API in-process ([`server`]), running `mimi-bridge run` daemons in their own
//! processes ([`daemon`]) and a transparent relay between two daemons that a test can hold back and watch
//! ([`relay`]).
#![allow(dead_code)] // each test file uses some of these

pub mod daemon;
pub mod relay;
pub mod server;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn client_command(state: &Path, server: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mimi-client"));
    c.arg("--state").arg(state).arg("--server").arg(server).args(args);
    c
}

/// Runs the real `mimi-client` binary with `--state state --server server args…`; whatever it did.
pub fn try_client(state: &Path, server: &str, args: &[&str]) -> Output {
    client_command(state, server, args).output().expect("mimi-client runs")
}

/// Runs the real `mimi-client` binary with `--state state --server server args…`; panics unless it succeeds;
/// returns its standard output.
pub fn client(state: &Path, server: &str, args: &[&str]) -> String {
    let out = try_client(state, server, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "mimi-client {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// A `mimi-client` running in the background ([`Spawned::start`]).
pub struct Spawned {
    child: Child,
    stderr: mpsc::Receiver<String>,
    what: String,
}

impl Spawned {
    /// Starts the `mimi-client` binary like [`client`] without waiting for it.
    pub fn start(state: &Path, server: &str, args: &[&str]) -> Self {
        let mut child = client_command(state, server, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mimi-client starts");
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, stderr, what: format!("mimi-client {args:?}") }
    }

    /// Waits until a line of its standard error contains `needle`; panics after `timeout`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("{} did not say {needle:?} within {timeout:?}", self.what),
            }
        }
    }

    /// Waits for it to end; panics unless it succeeded; returns its standard output.
    pub fn finish(self) -> String {
        let out = self.child.wait_with_output().expect("mimi-client ends");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr: Vec<String> = self.stderr.try_iter().collect();
        assert!(out.status.success(), "{} failed: {}\n{stdout}", self.what, stderr.join("\n"));
        stdout
    }
}

/// The texts of `listen --json` output, in order.
pub fn texts(listen_json: &str) -> Vec<String> {
    listen_json
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json line")["text"].as_str().unwrap_or("").to_owned()
        })
        .collect()
}
