//! The client over HTTPS: the real client API behind the daemon's TLS listener, with a certificate from a test
//! CA. Trusted through `--ca-file`, the whole flow works; without it (the system's CAs), with another CA, or
//! under a name the certificate does not carry, the client refuses the server and says why.

use crate::client_support::{client, texts, try_client};
use harness::pki::Ca;
use mimi_bridge::mimi_tls::MimiTls;
use std::path::Path;

/// The client's standard error after a run that must fail.
fn refused(state: &Path, server: &str, args: &[&str]) -> String {
    let out = try_client(state, server, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "mimi-client {args:?} must fail: {stderr}");
    stderr
}

#[test]
fn the_client_talks_https_to_a_server_it_trusts_and_refuses_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "provider");
    let id = ca.issue("server", &["localhost"], true, false);
    let tls = MimiTls::load(&id.cert, &id.key, Some(&ca.cert)).expect("TLS settings");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = crate::client_support::server::serve(&rt, &dir.path().join("daemon"), "a.test", Some(tls));
    assert!(server.starts_with("https://localhost:"), "{server}");
    let ca_file = ca.cert.to_str().expect("utf-8 path");
    let trusting = |state: &Path, args: &[&str]| client(state, &server, &[&["--ca-file", ca_file], args].concat());

    let (alice, bob, carol) = (dir.path().join("alice"), dir.path().join("bob"), dir.path().join("carol"));
    assert_eq!(trusting(&alice, &["register", "alice"]).trim(), "mimi://a.test/u/alice");
    trusting(&bob, &["register", "bob"]);
    let room = trusting(&alice, &["create-room", "club"]).lines().last().expect("room line").to_owned();
    trusting(&bob, &["join", &room]);
    trusting(&alice, &["send", &room, "hello over TLS"]);
    let got = trusting(&bob, &["listen", &room, "--json", "--count", "1", "--timeout", "10"]);
    assert_eq!(texts(&got), ["hello over TLS"]);

    // The system's CAs do not know the test CA.
    let e = refused(&carol, &server, &["register", "carol"]);
    assert!(e.contains("certificate"), "{e}");
    // Nor does another CA.
    let other = Ca::new(dir.path(), "other");
    let other_ca = other.cert.to_str().expect("utf-8 path");
    let e = refused(&carol, &server, &["--ca-file", other_ca, "register", "carol"]);
    assert!(e.contains("invalid peer certificate") && e.contains("UnknownIssuer"), "{e}");
    assert!(e.contains("--ca-file"), "the error says what to do: {e}");
    // The certificate is for localhost, not for 127.0.0.1: the name in the URL is checked.
    let by_address = server.replace("localhost", "127.0.0.1");
    let e = refused(&carol, &by_address, &["--ca-file", ca_file, "register", "carol"]);
    assert!(e.contains("invalid peer certificate: certificate not valid for name \"127.0.0.1\""), "{e}");
    // A bad CA file is named.
    let e = refused(&carol, &server, &["--ca-file", "/nonexistent/ca.pem", "register", "carol"]);
    assert!(e.contains("--ca-file /nonexistent/ca.pem"), "{e}");
    assert!(!carol.join("client.json").exists(), "carol never registered");
}
