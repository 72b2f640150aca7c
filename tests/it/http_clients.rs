//! Two (then three) native clients on one provider, through the real client API over HTTP on loopback, with the
//! `mimi-client` binary as a person would run it.

use crate::client_support::{client, texts};

#[test]
fn two_native_clients_talk_through_the_client_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = crate::client_support::server::serve(&rt, &dir.path().join("daemon"), "a.test", None);
    let (a, b, c) = (dir.path().join("alice"), dir.path().join("bob"), dir.path().join("carol"));
    assert_eq!(client(&a, &server, &["register", "alice"]).trim(), "mimi://a.test/u/alice");
    client(&b, &server, &["register", "bob"]);
    let created = client(&a, &server, &["create-room", "club"]);
    let room = created.lines().last().expect("room line").to_owned();
    assert_eq!(room, "mimi://a.test/r/club");
    client(&a, &server, &["invite", &room, "bob"]);
    client(&b, &server, &["join", &room]);
    client(&a, &server, &["send", &room, "hello bob"]);
    let got = client(&b, &server, &["listen", &room, "--json", "--count", "1", "--timeout", "10"]);
    assert_eq!(texts(&got), ["hello bob"]);
    let line: serde_json::Value = serde_json::from_str(got.lines().next().expect("line")).expect("json");
    assert_eq!(line["sender"], "mimi://a.test/u/alice");
    assert_eq!(line["message_id"].as_str().map(str::len), Some(64));

    // A third user joins the open room by external commit; everybody follows the new epoch.
    client(&c, &server, &["register", "carol"]);
    client(&c, &server, &["join", &room]);
    client(&b, &server, &["send", &room, "hi both"]);
    assert_eq!(
        texts(&client(&a, &server, &["listen", &room, "--json", "--count", "1", "--timeout", "10"])),
        ["hi both"]
    );
    assert_eq!(
        texts(&client(&c, &server, &["listen", &room, "--json", "--count", "1", "--timeout", "10"])),
        ["hi both"]
    );
    // Own messages are not echoed; nothing else is pending.
    assert_eq!(client(&b, &server, &["listen", &room, "--json", "--timeout", "1"]), "");
    drop(rt);
}
