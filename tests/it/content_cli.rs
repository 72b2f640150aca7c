//! `mimi-bridge content` on the draft's examples: decode | encode is byte-identical and `content id` gives the
//! expected message id; malformed input exits 1 with a one-line reason.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mimi-bridge")
}

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/mimi-content/tests/data/mimi-content")
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or_default()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("output")
}

#[test]
fn every_example_round_trips_through_the_cli_with_its_expected_id() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data().join("expected.json")).expect("expected.json"))
            .expect("json");
    let examples = expected["examples"].as_array().expect("examples");
    let mut checked = 0;
    for ex in examples {
        let file = ex["file"].as_str().expect("file");
        let Some(want_id) = ex["message_id_computed"].as_str() else { continue };
        if file == "implied-original.cbor" {
            continue; // not a message (see the vectors' README)
        }
        let path = data().join(file);
        let path = path.to_str().expect("utf-8 path");
        let decoded = run(&["content", "decode", path], None);
        assert!(decoded.status.success(), "{file}: {}", String::from_utf8_lossy(&decoded.stderr));
        let encoded = run(&["content", "encode"], Some(&decoded.stdout));
        assert!(encoded.status.success(), "{file}: {}", String::from_utf8_lossy(&encoded.stderr));
        assert_eq!(encoded.stdout, std::fs::read(data().join(file)).expect("cbor"), "{file} re-encodes identically");
        let id = run(&["content", "id", path], None);
        assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), want_id, "{file} message id");
        checked += 1;
    }
    assert_eq!(checked, 9, "all nine example messages checked");
}

#[test]
fn malformed_input_exits_1_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.cbor");
    std::fs::write(&bad, [0xff, 0x00, 0x13]).expect("write");
    let out = run(&["content", "decode", bad.to_str().expect("utf-8")], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let out = run(&["content", "encode"], Some(b"{not json"));
    assert_eq!(out.status.code(), Some(1));
}
