//! Helpers of the native client's tests: running the client (`mimi-bridge client`, the `mimi-client` library), reading its `listen
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
    crate::common::client::command(state, server, args)
}

/// Runs the real client (`mimi-bridge client`) with `--state state --server server args…`; whatever it did.
pub fn try_client(state: &Path, server: &str, args: &[&str]) -> Output {
    client_command(state, server, args).output().expect("mimi-client runs")
}

pub use crate::common::client::client;

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
