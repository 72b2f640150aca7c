//! The daemon as a user runs it: check a config, start on the example config, stop with SIGTERM; the systemd
//! readiness protocol; log formats.

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
    // Free ports, so tests (and a daemon running on the developer's machine) do not collide.
    let admin = harness::free_port().expect("port");
    let mimi = harness::free_port().expect("port");
    assert!(text.contains("listen = \"127.0.0.1:8449\"") && text.contains("listen = \"127.0.0.1:8448\""));
    let text = text
        .replace("listen = \"127.0.0.1:8449\"", &format!("listen = \"127.0.0.1:{admin}\""))
        .replace("listen = \"127.0.0.1:8448\"", &format!("listen = \"127.0.0.1:{mimi}\""));
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

/// The sd_notify protocol as systemd sees it: READY once running, WATCHDOG while healthy, STOPPING on SIGTERM.
#[test]
fn speaks_the_systemd_notify_protocol() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) = crate::common::write_config(dir.path(), "");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut d = crate::common::Daemon::start(
        &cfg,
        &[("NOTIFY_SOCKET", sock_path.to_str().expect("utf-8")), ("WATCHDOG_USEC", "400000")],
    );
    let mut buf = [0u8; 4096];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv();
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    let mut watchdogs = 0;
    let started = Instant::now();
    while watchdogs < 3 {
        let m = recv();
        assert!(!m.contains("READY=1"), "READY sent twice");
        watchdogs += usize::from(m.lines().any(|l| l == "WATCHDOG=1"));
        assert!(started.elapsed() < Duration::from_secs(10), "no regular WATCHDOG=1 at a 400 ms watchdog");
    }
    let st = Command::new("kill").args(["-TERM", &d.child.id().to_string()]).status().expect("kill");
    assert!(st.success());
    let mut stopping = false;
    for _ in 0..50 {
        let m = recv();
        if m.lines().any(|l| l == "STOPPING=1") {
            assert!(m.lines().any(|l| l.starts_with("EXTEND_TIMEOUT_USEC=")), "{m:?}");
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = d.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn logs_json_lines_or_journald_priorities_when_asked() {
    for (format, check) in [
        ("json", (|l: &str| serde_json::from_str::<serde_json::Value>(l).is_ok()) as fn(&str) -> bool),
        ("journald", |l: &str| l.starts_with("<6>INFO ") || l.starts_with("<4>WARN ") || l.starts_with("<7>")),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cfg, _) = crate::common::write_config(dir.path(), "");
        let mut d = crate::common::Daemon::start(&cfg, &[("MIMI_BRIDGE_LOG_FORMAT", format)]);
        assert_eq!(d.terminate(Duration::from_secs(30)), Some(0));
        assert!(d.seen.len() >= 3, "{:?}", d.seen);
        for line in &d.seen {
            assert!(check(line), "{format}: {line:?}");
        }
    }
}
