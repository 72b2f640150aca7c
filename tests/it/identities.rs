//! Identities are bound to authentication, over real HTTP: the bridge's own and legacy users' URIs cannot be
//! registered, KeyPackages and GroupInfo requests carry the authenticated user's credential, a claim never
//! consumes the last-resort KeyPackage, a commit adds a local user only with a KeyPackage handed out for them, and a
//! room a user made first is never adopted as a portal's.

use crate::common::api::{Who, call, client_member, group_info, register, request, serve};
use bridge_api::PortalId;
use bridge_core::MlsRooms;
use mimi_mls::{EngineConfig, LocalMember, MlsBackend, key_packages};
use mimi_protocol::wire::{
    DEFAULT_CIPHERSUITE, GroupInfoOption, GroupInfoRequest, MlsMessageBytes, RatchetTreeOption, UpdateRequest,
    WireMessage,
};
use mimi_provider::{JoinPolicy, Provider};
use mimi_store::{Backend, CommitConfig, Store};

fn provider(dir: &std::path::Path) -> (Store, Provider) {
    let store = bridge_core::open_store(dir, Some(Backend::Redb), CommitConfig::default()).expect("store");
    (store.clone(), Provider::open("a.test", store).expect("provider"))
}

/// `n` KeyPackages of `m` (the last one last-resort if asked), as the upload body.
async fn key_package_body(backend: &MlsBackend, m: &LocalMember, n: usize, last_resort: bool) -> Vec<u8> {
    let kps = key_packages::generate(backend, m, &EngineConfig::default(), n, last_resort)
        .durable()
        .await
        .expect("key packages");
    kps.concat()
}

async fn upload(addr: &str, who: &Who, body: Vec<u8>) -> (u16, String) {
    call(addr, "POST", "/client/v1/keyPackages", Some(who), body).await
}

#[tokio::test]
async fn reserved_and_malformed_user_names_cannot_be_registered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, provider) = provider(dir.path());
    let addr = serve(&provider).await;
    let try_register = |name: String| {
        let addr = addr.clone();
        async move {
            let body = serde_json::json!({ "user": name }).to_string();
            call(&addr, "POST", "/client/v1/register", None, body).await
        }
    };
    for (name, status) in [
        ("bridge".to_owned(), 403),
        ("mimi://a.test/u/bridge".to_owned(), 403),
        ("irc.libera~alice".to_owned(), 400),
        ("mimi://a.test/u/irc.libera~alice".to_owned(), 400),
        ("mimi://b.test/u/eve".to_owned(), 400),
        ("mimi://a.test/r/lobby".to_owned(), 400),
        ("".to_owned(), 400),
        ("a/b".to_owned(), 400),
        ("x".repeat(65), 400),
        ("x".repeat(1 << 20), 413),
    ] {
        let (got, body) = try_register(name.clone()).await;
        assert_eq!(got, status, "{}: {body}", &name[..name.len().min(40)]);
        assert!(got == 413 || body.contains("error"), "{body}");
    }
    assert!(provider.user("mimi://a.test/u/bridge").expect("users").is_none());
    assert!(provider.user("mimi://a.test/u/irc.libera~alice").expect("users").is_none());
    let (uri, _) = register(&addr, "mimi://a.test/u/alice").await;
    assert_eq!(uri, "mimi://a.test/u/alice");
}

#[tokio::test]
async fn key_packages_name_their_uploader_and_the_last_resort_one_is_never_used_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, provider) = provider(dir.path());
    let addr = serve(&provider).await;
    let alice = register(&addr, "alice").await;
    let mallory = register(&addr, "mallory").await;
    let bob = register(&addr, "bob").await;

    // mallory cannot publish KeyPackages in alice's name (anyone adding "alice" would add mallory's key).
    let (alice_backend, alice_member) = client_member(dir.path(), &alice.0).await;
    let forged = key_package_body(&alice_backend, &alice_member, 1, false).await;
    let (status, body) = upload(&addr, &mallory, forged.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not the uploader"), "{body}");
    assert_eq!(provider.claim_key_package(&alice.0).await.expect("claim"), None, "nothing stored for alice");
    assert_eq!(upload(&addr, &alice, forged).await.0, 204, "alice may");
    // Garbage is refused too.
    assert_eq!(upload(&addr, &bob, vec![0, 1, 0, 5, 1, 2, 3]).await.0, 400);

    // bob has one ordinary and one last-resort KeyPackage: claims take the ordinary one first, then the
    // last-resort one again and again, so bob stays invitable.
    let (bob_backend, bob_member) = client_member(dir.path(), &bob.0).await;
    let body = key_package_body(&bob_backend, &bob_member, 1, true).await;
    assert_eq!(upload(&addr, &bob, body).await.0, 204);
    let bare = format!("/client/v1/keyPackage/{}", bob.0.trim_start_matches("mimi://"));
    let (status, body) = call(&addr, "POST", &bare, Some(&alice), "").await;
    assert_eq!(status, 400, "KeyPackages are claimed only to invite to a room: {body}");
    let room = "mimi://a.test/r/club";
    let (_keys, info) = group_info(&dir.path().join("room"), &alice.0, room).await;
    provider.create_room(room, &info, None, &alice.0, JoinPolicy::Open, false).await.expect("room");
    let path = format!("{bare}?room=a.test/r/club");
    let mut claimed = Vec::new();
    for _ in 0..4 {
        let (status, kp) = call(&addr, "POST", &path, Some(&alice), "").await;
        assert_eq!(status, 200, "{kp}");
        claimed.push(kp);
    }
    assert_ne!(claimed[0], claimed[1], "the ordinary KeyPackage first, then the last-resort one");
    assert!(claimed[1..].iter().all(|k| *k == claimed[1]), "the last-resort KeyPackage is served again");
}

#[tokio::test]
async fn a_group_info_request_must_carry_the_requesters_own_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, provider) = provider(dir.path());
    let room = "mimi://a.test/r/club";
    let (_keys, info) = group_info(&dir.path().join("room"), "mimi://a.test/u/alice", room).await;
    provider.create_room(room, &info, None, "mimi://a.test/u/alice", JoinPolicy::Open, false).await.expect("room");
    let addr = serve(&provider).await;
    let _alice = register(&addr, "alice").await;
    let mallory = register(&addr, "mallory").await;
    let request_as = |m: &LocalMember| {
        let (req, _secret) = GroupInfoRequest::new(
            DEFAULT_CIPHERSUITE,
            m.signer(),
            m.credential().signature_key.as_slice(),
            &m.credential().credential,
            None,
        )
        .expect("request");
        req.encode().expect("encode")
    };
    let path = format!("/client/v1/groupInfo/{}", room.trim_start_matches("mimi://"));
    // A request signed with a key of "alice" but sent by mallory: refused before the hub looks at the room.
    let (_, as_alice) = client_member(dir.path(), "mimi://a.test/u/alice").await;
    let (status, body) = call(&addr, "POST", &path, Some(&mallory), request_as(&as_alice)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("credential"), "{body}");
    // Her own is answered (the room has no GroupInfo yet: a GroupInfoResponse all the same).
    let (_, as_mallory) = client_member(dir.path(), &mallory.0).await;
    let (status, body) = call(&addr, "POST", &path, Some(&mallory), request_as(&as_mallory)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_room_a_user_made_first_is_never_adopted_as_a_portals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, provider) = provider(dir.path());
    let addr = serve(&provider).await;
    let mallory = register(&addr, "mallory").await;
    // The body of mallory's create-room request for `name`: her own group's GroupInfo.
    let create = |name: &'static str| {
        let (dir, mallory) = (dir.path().join(format!("mallory-{name}")), mallory.0.clone());
        async move {
            let (_keys, info) = group_info(&dir, &mallory, &format!("mimi://a.test/r/{name}")).await;
            serde_json::json!({ "name": name, "group_info": hex::encode(info.as_bytes()), "invite_only": true })
                .to_string()
        }
    };
    let (status, body) = call(&addr, "POST", "/client/v1/rooms", Some(&mallory), create("dev").await).await;
    assert_eq!(status, 200, "{body}");
    drop(provider);

    // The operator then configures a portal "dev": the daemon's room of record refuses the squatted room,
    // saying what to do, instead of adopting mallory's record.
    let rooms = MlsRooms::open(store, "a.test", JoinPolicy::Open).await.expect("rooms");
    let e = rooms.ensure_portal(&PortalId::new("dev").expect("portal")).await.expect_err("squatted");
    assert!(e.to_string().contains("was not created by the bridge"), "{e}");
    // A portal the bridge made first cannot be taken over by a user's create-room either.
    rooms.ensure_portal(&PortalId::new("ops").expect("portal")).await.expect("portal ops");
    let addr = serve(rooms.provider()).await;
    let (status, body) = call(&addr, "POST", "/client/v1/rooms", Some(&mallory), create("ops").await).await;
    assert_eq!(status, 409, "{body}");
    assert!(!rooms.provider().is_participant("mimi://a.test/r/ops", &mallory.0).expect("room"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_hand_out_the_same_key_package() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, provider) = provider(dir.path());
    let addr = serve(&provider).await;
    let bob = register(&addr, "bob").await;
    let (backend, member) = client_member(dir.path(), &bob.0).await;
    assert_eq!(upload(&addr, &bob, key_package_body(&backend, &member, 8, false).await).await.0, 204);
    let claims: Vec<_> = (0..8)
        .map(|_| {
            let p = provider.clone();
            let user = bob.0.clone();
            tokio::spawn(async move { p.claim_key_package(&user).await.expect("claim").expect("one left") })
        })
        .collect();
    let mut got = std::collections::BTreeSet::new();
    for c in claims {
        got.insert(c.await.expect("task"));
    }
    assert_eq!(got.len(), 8, "eight claims at once, eight different KeyPackages");
    assert_eq!(provider.claim_key_package(&bob.0).await.expect("claim"), None, "all used up");
}

#[tokio::test]
async fn a_commit_adds_a_local_user_only_with_a_key_package_handed_out_for_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, provider) = provider(dir.path());
    let addr = serve(&provider).await;
    let alice = register(&addr, "alice").await;
    let bob = register(&addr, "bob").await;
    let room = "mimi://a.test/r/club";
    let (mut g, info) = group_info(&dir.path().join("alice-room"), &alice.0, room).await;
    let body = serde_json::json!({ "name": "club", "group_info": hex::encode(info.as_bytes()), "invite_only": true });
    let (status, body) = call(&addr, "POST", "/client/v1/rooms", Some(&alice), body.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let update = |out: mimi_mls::CommitOutput| {
        let framed = |b: Vec<u8>| MlsMessageBytes::new(b).expect("framed");
        UpdateRequest::Commit {
            commit: framed(out.commit),
            welcome: out.welcome.map(framed),
            group_info: GroupInfoOption(framed(out.group_info.expect("group info"))),
            ratchet_tree: RatchetTreeOption::DistributionService,
        }
        .encode()
        .expect("encode")
    };
    let path = "/client/v1/update/a.test/r/club";

    // alice, a member, adds leaves with keys of her own making: under bob's name, a legacy user's, a user of
    // another provider, and bob's again in another spelling of our domain.
    for (forged_as, says) in [
        (bob.0.as_str(), "handed out"),
        ("mimi://a.test/u/irc.libera~carol", "the bridge's"),
        ("mimi://b.test/u/eve", "fetched from their provider"),
        ("mimi://A.test/u/bob", "another spelling"),
    ] {
        let (backend, fake) = client_member(&dir.path().join("forgeries"), forged_as).await;
        let kp = key_package_body(&backend, &fake, 1, false).await;
        let out = g.add_members(&[&kp]).durable().await.expect("commit");
        let (status, body) = call(&addr, "POST", path, Some(&alice), update(out)).await;
        assert_eq!(status, 403, "{forged_as}: {body}");
        assert!(body.contains(says), "{body}");
        g.clear_pending_commit().durable().await.expect("clear");
    }
    assert!(!provider.is_participant(room, &bob.0).expect("room"), "refused adds change nothing");

    // bob's own KeyPackage, claimed by alice for the room: added.
    let (bob_backend, bob_member) = client_member(dir.path(), &bob.0).await;
    assert_eq!(upload(&addr, &bob, key_package_body(&bob_backend, &bob_member, 1, false).await).await.0, 204);
    let claim = format!("/client/v1/keyPackage/{}?room=a.test/r/club", bob.0.trim_start_matches("mimi://"));
    let (status, kp) = request(&addr, "POST", &claim, Some(&alice), Vec::new()).await;
    assert_eq!(status, 200);
    let out = g.add_members(&[&kp]).durable().await.expect("commit");
    let (status, body) = call(&addr, "POST", path, Some(&alice), update(out)).await;
    assert_eq!(status, 200, "{body}");
    assert!(provider.is_participant(room, &bob.0).expect("room"));
}
