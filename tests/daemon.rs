//! The daemon as a user runs it: check a config, start on the example config, stop with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mimi-bridge")
}

/// The example config with its data_dir moved into `dir`.
fn example_config(dir: &std::path::Path) -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml")).expect("example config");
    let data = dir.join("data");
    let text = text.replace("data_dir = \"./data\"", &format!("data_dir = {:?}", data.display().to_string()));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_config_accepts_the_example_and_locates_errors() {
    let ok = Command::new(bin())
        .args(["check-config", concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml")])
        .output()
        .expect("runs");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[bridge]\ndomain = \"a.example\"\ndata_dir = \"/x\"\n\n[[portal]]\nnmae = \"x\"\n")
        .expect("write");
    let out = Command::new(bin()).arg("check-config").arg(&bad).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:6:1: key `portal.nmae`"), "{err}");
    assert!(err.contains("did you mean `name`?"), "{err}");
}

#[test]
fn runs_on_the_example_config_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = example_config(dir.path());
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut running = false;
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
            && line.contains("bridge running")
        {
            running = true;
            break;
        }
    }
    assert!(running, "daemon did not report running");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("data")).expect("data dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "data dir is private");
    }
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "daemon did not stop within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut saw_stopped = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        saw_stopped |= line.contains("stopped");
    }
    assert!(saw_stopped, "daemon logged its clean stop");
}
