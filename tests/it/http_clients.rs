//! Two (then three) native clients on one provider, through the real client API over HTTP on loopback, with the
//! `mimi-client` binary as a person would run it.

use crate::client_support::{client, texts, try_client};

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

/// `invite ROOM USER...` adds many users in commits of at most `--batch` adds: each commit's Welcome is one entry
/// of the log, so the users of one batch wait for the same Welcome. A user without KeyPackages is named and left
/// out, the others are added, and the command fails. Every user added joins from their Welcome and hears the room.
#[test]
fn many_users_are_invited_in_batches_and_one_without_key_packages_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = crate::client_support::server::serve(&rt, &dir.path().join("daemon"), "a.test", None);
    let alice = dir.path().join("alice");
    client(&alice, &server, &["register", "alice"]);
    let room = client(&alice, &server, &["create-room", "club"]).lines().last().expect("room line").to_owned();
    let users = ["u1", "u2", "u3", "u4", "u5"];
    for u in users {
        client(&dir.path().join(u), &server, &["register", u]);
    }

    // u3 twice: invited once. "ghost" never registered.
    let mut args = vec!["invite", room.as_str(), "u1", "u2", "u3", "ghost", "u3", "u4", "u5", "--batch", "2"];
    let out = try_client(&alice, &server, &args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a user left out fails the command: {stderr}");
    assert!(stderr.contains("no KeyPackage for mimi://a.test/u/ghost"), "{stderr}");
    assert!(stderr.contains("1 of 6 not invited to mimi://a.test/r/club: mimi://a.test/u/ghost"), "{stderr}");
    let invited: Vec<String> = users.iter().map(|u| format!("invited mimi://a.test/u/{u} to {room}")).collect();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), invited, "each user added once, in order");

    // The list without its repeat, in batches of two: [u1 u2] [u3 ghost] [u4 u5], ghost left out: three commits,
    // each with its Welcome.
    let welcome_of = |u: &str| -> u64 {
        let listed = client(&dir.path().join(u), &server, &["invites"]);
        let line = listed.lines().find(|l| l.starts_with(&room)).unwrap_or_else(|| panic!("{u} invited: {listed}"));
        line.rsplit(' ').next().and_then(|s| s.parse().ok()).expect("seq")
    };
    let seqs: Vec<u64> = users.iter().map(|u| welcome_of(u)).collect();
    assert!(seqs[0] == seqs[1] && seqs[3] == seqs[4], "u1 with u2, u4 with u5: {seqs:?}");
    assert!(seqs[0] < seqs[2] && seqs[2] < seqs[3], "three commits in order: {seqs:?}");

    for u in users {
        client(&dir.path().join(u), &server, &["join", &room]);
    }
    // Inviting members again does nothing for them: said, not an error (a rerun after a partial failure).
    let again = client(&alice, &server, &["invite", &room, "u1", "u5"]);
    let said: Vec<String> = ["u1", "u5"].iter().map(|u| format!("mimi://a.test/u/{u} is already in {room}")).collect();
    assert_eq!(again.lines().collect::<Vec<_>>(), said);
    client(&alice, &server, &["send", &room, "welcome all"]);
    for u in users {
        let got = client(&dir.path().join(u), &server, &["listen", &room, "--json", "--count", "1", "--timeout", "10"]);
        assert_eq!(texts(&got), ["welcome all"], "{u}");
    }

    // A batch outside 1..=500 is refused before anything is claimed.
    args.truncate(3);
    args.extend(["--batch", "0"]);
    let out = try_client(&alice, &server, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--batch"), "{stderr}");
    drop(rt);
}
