//! `systemd/mimi-bridge.service` passes `systemd-analyze verify` with `ExecStart` pointing at the built binary, and
//! fails it when the binary is missing (so the check is not vacuous). `systemd-analyze` must be installed (Debian:
//! package `systemd`); a missing tool fails the test.

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../../systemd/mimi-bridge.service");

fn analyze() -> std::path::PathBuf {
    harness::find_binary("systemd-analyze", "apt-get install systemd").unwrap_or_else(|e| panic!("{e}"))
}

/// Writes the unit with ExecStart's binary replaced by `binary`; returns its path.
fn unit_with(dir: &Path, binary: &str) -> std::path::PathBuf {
    let mut replaced = 0;
    let text: String = UNIT
        .lines()
        .map(|l| match l.strip_prefix("ExecStart=/usr/bin/mimi-bridge ") {
            Some(args) => {
                replaced += 1;
                format!("ExecStart={binary} {args}\n")
            }
            None => format!("{l}\n"),
        })
        .collect();
    assert_eq!(replaced, 1, "the unit has one ExecStart=/usr/bin/mimi-bridge line");
    let path = dir.join("mimi-bridge.service");
    std::fs::write(&path, text).expect("write unit");
    path
}

fn verify(unit: &Path) -> (bool, String) {
    let out = Command::new(analyze()).arg("verify").arg(unit).output().expect("runs systemd-analyze");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, out) = verify(&unit_with(dir.path(), env!("CARGO_BIN_EXE_mimi-bridge")));
    assert!(ok, "systemd-analyze verify failed:\n{out}");
    assert!(!out.contains("mimi-bridge.service:"), "warnings about the unit:\n{out}");

    let (ok, out) = verify(&unit_with(dir.path(), "/nonexistent/mimi-bridge"));
    assert!(!ok, "verify must fail when the binary is missing:\n{out}");
    assert!(out.contains("is not executable"), "{out}");
}

#[test]
fn the_unit_has_the_required_settings() {
    for needle in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=mimi-bridge",
        "StateDirectoryMode=0700",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        // Big groups' MLS work lowers its threads' priority (crates/mimi-mls/src/offload.rs).
        "SystemCallFilter=setpriority",
        "UMask=0077",
    ] {
        assert!(UNIT.lines().any(|l| l.starts_with(needle)), "missing {needle}");
    }
    // Allowed after the last deny-list (`~@resources` holds setpriority): for systemd a later line wins.
    let lines: Vec<&str> = UNIT.lines().collect();
    let allowed = lines.iter().rposition(|l| *l == "SystemCallFilter=setpriority");
    let denied = lines.iter().rposition(|l| l.starts_with("SystemCallFilter=~"));
    assert!(allowed > denied, "setpriority is allowed before a deny-list that takes it out again");
}

/// Prints the offline security assessment (reported in the closing note) and keeps it "OK" or better.
#[test]
fn the_unit_is_hardened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_with(dir.path(), env!("CARGO_BIN_EXE_mimi-bridge"));
    let out = Command::new(analyze())
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("runs systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    println!("{line}");
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"));
    assert!(score <= 2.0, "exposure {score} (want ≤ 2.0, \"OK\"):\n{text}");
}
