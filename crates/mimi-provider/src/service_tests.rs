//! Tests of [`Provider`](super::Provider): routing, updates with their GroupInfo, notifies after a restart, and a
//! follower's copy of the log.

use super::service::{PeerNotify, Provider, ProviderError, RoomRoute};
use super::tests_support::group;
use mimi_protocol::hub::{JoinPolicy, Origin, Refusal};
use mimi_protocol::wire::{GroupInfoOption, MlsMessageBytes, RatchetTreeOption, UpdateRequest};
use mimi_store::{Backend, CommitConfig, Store, open_data_dir};

const ROOM: &str = "mimi://a.test/r/club";
const ALICE: &str = "mimi://a.test/u/alice";
const BOB: &str = "mimi://b.test/u/bob";

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default(), &mimi_store::schema::Schema::FIRST)
            .expect("store");
    (dir, store)
}

fn bytes(v: Vec<u8>) -> MlsMessageBytes {
    MlsMessageBytes::new(v).expect("framed")
}

/// A provider of a.test on `st` hosting [`ROOM`], made by alice, whose group it returns.
async fn hosting(st: &Store) -> (Provider, tempfile::TempDir, mimi_mls::PortalGroup) {
    let a = Provider::open("a.test", st.clone()).expect("provider");
    let (dir, g) = group(ROOM.as_bytes());
    a.create_room(ROOM, &bytes(g.export_group_info(true).expect("group info")), None, ALICE, JoinPolicy::Open, false)
        .await
        .expect("room");
    (a, dir, g)
}

#[tokio::test]
async fn a_hub_applies_updates_keeps_their_group_info_and_renotifies_followers_after_a_restart() {
    let (_d, st) = store();
    let a = Provider::open("a.test", st.clone()).expect("provider");
    let mut outbound = a.take_outbound().expect("queue");
    assert!(matches!(a.route(ROOM), Err(ProviderError::UnknownRoom(_))), "our own domain, unknown");
    assert_eq!(a.route("mimi://b.test/r/x").expect("route"), RoomRoute::Remote { domain: "b.test".into() });
    assert!(a.route("mimi://b.test").is_err(), "not a room URI");

    let (_g, mut g) = group(ROOM.as_bytes());
    a.create_room(ROOM, &bytes(g.export_group_info(true).expect("group info")), None, ALICE, JoinPolicy::Open, false)
        .await
        .expect("room");
    assert_eq!(a.route(ROOM).expect("route"), RoomRoute::Hub);
    let info0 = bytes(g.export_group_info(true).expect("group info"));
    a.put_group_info(ROOM, info0.clone()).await.expect("current epoch");
    a.add_participant(ROOM, BOB).await.expect("invite");

    let out = g.self_update().durable_blocking().expect("commit");
    let update = UpdateRequest::Commit {
        commit: bytes(out.commit),
        welcome: None,
        group_info: GroupInfoOption(bytes(out.group_info.expect("group info"))),
        ratchet_tree: RatchetTreeOption::DistributionService,
    };
    let next_info = match &update {
        UpdateRequest::Commit { group_info, .. } => group_info.0.clone(),
        UpdateRequest::Proposals { .. } => unreachable!(),
    };
    let from_b = Origin::Follower("b.test".into());
    let r = a.update(ROOM, update.clone(), ALICE, from_b.clone()).await;
    assert!(matches!(r, Err(ProviderError::Refused(Refusal::NotAllowed(_)))), "b.test speaks for b.test: {r:?}");
    let accepted = a.update(ROOM, update.clone(), BOB, from_b.clone()).await.expect("accepted");
    assert_eq!((accepted.seq, a.epoch(ROOM).expect("epoch")), (1, 1));
    assert_eq!(a.group_info(ROOM).expect("room"), Some(next_info.as_bytes().to_vec()));
    let again = a.update(ROOM, update, BOB, from_b).await.expect("a retry");
    assert_eq!((again.seq, again.duplicate), (1, true));
    assert_eq!(
        outbound.try_recv().expect("notify"),
        PeerNotify { peer: "b.test".into(), room: ROOM.into(), seq: 1 },
        "the origin's provider is notified too"
    );
    assert!(outbound.try_recv().is_err(), "a retry is not notified again");
    let stale = a.put_group_info(ROOM, info0).await;
    assert!(matches!(stale, Err(ProviderError::Refused(Refusal::EpochTooOld { current_epoch: 1 }))), "{stale:?}");

    // A restart: the GroupInfo is still served, and followers hear of the last entry again.
    drop(a);
    let a = Provider::open("a.test", st).expect("reopen");
    let mut outbound = a.take_outbound().expect("queue");
    assert_eq!(a.group_info(ROOM).expect("room"), Some(next_info.as_bytes().to_vec()));
    assert_eq!(outbound.try_recv().expect("renotify"), PeerNotify { peer: "b.test".into(), room: ROOM.into(), seq: 1 });

    // The group's public state stayed in the store at the restart; the first GroupInfo handed in and the first
    // commit load it (without it, both would be refused as not judged).
    g.merge_pending_commit().durable_blocking().expect("merge");
    a.put_group_info(ROOM, bytes(g.export_group_info(true).expect("group info"))).await.expect("checked, stored");
    let update = merged(&mut g, |g| g.self_update());
    let accepted = a.update(ROOM, update, BOB, Origin::Follower("b.test".into())).await.expect("judged and accepted");
    assert_eq!((accepted.seq, a.epoch(ROOM).expect("epoch")), (2, 2));
}

/// A room's public state released by the hub (its portal went quiet) is the store's, as it was after the last
/// commit: it is loaded again for the next GroupInfo request, GroupInfo and commit, and judges them as before.
#[tokio::test]
async fn a_released_public_state_is_loaded_again_when_needed() {
    let (_d, st) = store();
    let (a, _g, mut g) = hosting(&st).await;
    let created = a.ratchet_tree(ROOM).await.expect("room").expect("tree");
    let accepted = a.update(ROOM, merged(&mut g, |g| g.self_update()), ALICE, Origin::Portal).await.expect("commit");
    assert_eq!(accepted.seq, 1);
    let committed = a.ratchet_tree(ROOM).await.expect("room").expect("tree");
    assert_ne!(committed, created, "the commit changed the tree");
    assert!(a.holds_public(ROOM));

    a.release_public(ROOM).await.expect("released");
    assert!(!a.holds_public(ROOM), "released");
    assert_eq!(a.ratchet_tree(ROOM).await.expect("room"), Some(committed), "loaded again: the last commit's");
    assert!(a.holds_public(ROOM));
    a.release_public(ROOM).await.expect("released");
    let info = bytes(g.export_group_info(true).expect("group info"));
    assert_ne!(a.group_info(ROOM).expect("room").as_deref(), Some(info.as_bytes()), "a GroupInfo to check");
    a.put_group_info(ROOM, info.clone()).await.expect("checked");
    assert_eq!(a.group_info(ROOM).expect("room").as_deref(), Some(info.as_bytes()), "checked and stored");
    a.release_public(ROOM).await.expect("released");
    let accepted = a.update(ROOM, merged(&mut g, |g| g.self_update()), ALICE, Origin::Portal).await.expect("judged");
    assert_eq!((accepted.seq, a.epoch(ROOM).expect("epoch")), (2, 2));
    a.release_public(ROOM).await.expect("released");
    let m = bytes(g.encrypt(b"after a release").durable_blocking().expect("encrypt"));
    assert_eq!(a.submit(ROOM, m, ALICE, Origin::Portal).await.expect("judged").seq, 3);
}

/// Entries below a room's stored start — a copy that started over, its removal cut short by a stop — are
/// removed by the next pruning, whatever their age; the start and what follows stay.
#[tokio::test]
async fn pruning_removes_entries_below_the_stored_start() {
    let (_d, st) = store();
    let (a, _g, mut g) = hosting(&st).await;
    for i in 0..4 {
        let m = bytes(g.encrypt(format!("line {i}").as_bytes()).durable_blocking().expect("encrypt"));
        a.submit(ROOM, m, ALICE, Origin::Portal).await.expect("sequenced");
    }
    let mut b = mimi_store::Batch::new();
    super::log::write::first(&mut b, ROOM, 3);
    st.commit(b).await.expect("start moved");
    assert_eq!(a.prune_log(0).await.expect("pruned"), 2, "nothing is old enough: only what lies below the start");
    let records = super::log::Records(&st);
    let kept = records.oldest_seqs(ROOM, 10).expect("read");
    assert_eq!(kept, [3, 4]);
    assert_eq!(a.prune_log(0).await.expect("pruned"), 0, "once");
}

#[tokio::test]
async fn a_follower_keeps_a_copy_of_the_log_and_sends_updates_to_the_hub() {
    let (_da, sa) = store();
    let (_db, sb) = store();
    let a = Provider::open("a.test", sa).expect("hub");
    let b = Provider::open("b.test", sb.clone()).expect("follower");
    let (_g, mut g) = group(ROOM.as_bytes());
    a.create_room(ROOM, &bytes(g.export_group_info(true).expect("group info")), None, ALICE, JoinPolicy::Open, false)
        .await
        .expect("room");
    for text in [&b"one"[..], b"two", b"three"] {
        let m = bytes(g.encrypt(text).durable_blocking().expect("encrypt"));
        a.submit(ROOM, m, ALICE, Origin::Client(ALICE.into())).await.expect("accepted");
    }
    assert_eq!(b.route(ROOM).expect("route"), RoomRoute::Remote { domain: "a.test".into() });
    b.follow(ROOM, "a.test").await.expect("follow");
    assert_eq!(b.route(ROOM).expect("route"), RoomRoute::Follower { hub: "a.test".into() });
    let info = bytes(g.export_group_info(true).expect("group info"));
    assert!(matches!(b.put_group_info(ROOM, info).await, Err(ProviderError::NotHub { .. })));

    // Entry 3 arrives first: a gap, so the follower asks for the log after 0; the page fills it.
    let entries = a.entries_after(ROOM, 0, 10).expect("log");
    let fetch = b.accept_entries(ROOM, entries[2..].to_vec(), false).await.expect("notify");
    assert_eq!(fetch, Some(0));
    assert_eq!(b.last_seq(ROOM).expect("room"), 0);
    let more = b.accept_entries(ROOM, entries.clone(), true).await.expect("page");
    assert_eq!(more, Some(3), "asks for a further page");
    assert_eq!(b.accept_entries(ROOM, Vec::new(), true).await.expect("empty page"), None);
    assert_eq!(b.entries_after(ROOM, 0, 10).expect("copy"), entries);

    // After a restart the copy and the role are still there.
    drop(b);
    let b = Provider::open("b.test", sb).expect("reopen");
    assert_eq!(b.followed(), vec![(ROOM.to_owned(), "a.test".to_owned())]);
    assert_eq!(b.last_seq(ROOM).expect("room"), 3);
}

#[tokio::test]
async fn a_stale_group_info_never_replaces_a_newer_one() {
    let (_d, st) = store();
    let (a, _g, mut g) = hosting(&st).await;
    let info0 = g.export_group_info(true).expect("group info");
    let mut infos = Vec::new();
    for _ in 0..2 {
        let out = g.self_update().durable_blocking().expect("commit");
        let info = bytes(out.group_info.expect("group info"));
        let update = UpdateRequest::Commit {
            commit: bytes(out.commit),
            welcome: None,
            group_info: GroupInfoOption(info.clone()),
            ratchet_tree: RatchetTreeOption::DistributionService,
        };
        a.update(ROOM, update, ALICE, Origin::Client(ALICE.into())).await.expect("accepted");
        g.merge_pending_commit().durable_blocking().expect("merge");
        infos.push(info);
    }
    assert_eq!(a.epoch(ROOM).expect("epoch"), 2);
    assert_eq!(a.group_info(ROOM).expect("room"), Some(infos[1].as_bytes().to_vec()));
    // The first update's GroupInfo, late (it lost the race with the second commit): refused, nothing replaced.
    let late = a.put_group_info(ROOM, infos[0].clone()).await;
    assert!(matches!(late, Err(ProviderError::Refused(Refusal::EpochTooOld { current_epoch: 2 }))), "{late:?}");
    let first = a.put_group_info(ROOM, bytes(info0)).await;
    assert!(matches!(first, Err(ProviderError::Refused(Refusal::EpochTooOld { current_epoch: 2 }))), "{first:?}");
    let commit = a.entries_after(ROOM, 0, 1).expect("log").remove(0).fanout.message;
    let not_info = a.put_group_info(ROOM, commit).await;
    assert!(matches!(not_info, Err(ProviderError::BadRequest(_))), "not a GroupInfo: {not_info:?}");
    assert_eq!(a.group_info(ROOM).expect("room"), Some(infos[1].as_bytes().to_vec()));
    a.put_group_info(ROOM, infos[1].clone()).await.expect("the same epoch's again");
    drop(a);
    let a = Provider::open("a.test", st).expect("reopen");
    assert_eq!(a.group_info(ROOM).expect("room"), Some(infos[1].as_bytes().to_vec()), "the store has the newest");
}

#[tokio::test]
async fn a_follow_for_an_update_the_hub_refuses_is_forgotten() {
    let (_d, st) = store();
    let b = Provider::open("b.test", st.clone()).expect("provider");
    let other = "mimi://a.test/r/other";
    // Refused: the room is forgotten, durably.
    b.follow_for_update(ROOM, "a.test").await.expect("follow");
    assert_eq!(b.route(ROOM).expect("route"), RoomRoute::Follower { hub: "a.test".into() });
    b.update_settled(ROOM, false, None).await.expect("settled");
    assert_eq!(b.route(ROOM).expect("route"), RoomRoute::Remote { domain: "a.test".into() });
    // Two updates in flight, the first refused, the second accepted (answers in either order): kept.
    b.follow_for_update(other, "a.test").await.expect("follow");
    b.follow_for_update(other, "a.test").await.expect("follow");
    b.update_settled(other, false, None).await.expect("settled");
    assert_eq!(b.route(other).expect("route"), RoomRoute::Follower { hub: "a.test".into() }, "one still in flight");
    b.update_settled(other, true, None).await.expect("settled");
    // A room followed for good is never forgotten by a refusal.
    b.follow_for_update(other, "a.test").await.expect("follow");
    b.update_settled(other, false, None).await.expect("settled");
    assert_eq!(b.route(other).expect("route"), RoomRoute::Follower { hub: "a.test".into() });
    b.follow_for_update(ROOM, "a.test").await.expect("follow");
    b.follow(ROOM, "a.test").await.expect("invited meanwhile");
    b.update_settled(ROOM, false, None).await.expect("settled");
    assert_eq!(b.route(ROOM).expect("route"), RoomRoute::Follower { hub: "a.test".into() });
    let third = "mimi://a.test/r/third";
    b.follow_for_update(third, "a.test").await.expect("follow");
    b.update_settled(third, false, None).await.expect("settled");
    drop(b);
    let b = Provider::open("b.test", st).expect("reopen");
    let mut followed = b.followed();
    followed.sort();
    assert_eq!(followed, vec![(ROOM.to_owned(), "a.test".to_owned()), (other.to_owned(), "a.test".to_owned())]);
}

#[tokio::test]
async fn an_invite_only_hub_answers_group_info_requests_of_participants_only() {
    use mimi_protocol::wire::{
        DEFAULT_CIPHERSUITE, GroupInfoCode, GroupInfoRequest, GroupInfoResponse, HubSigner, WireMessage,
    };
    let (_d, st) = store();
    let a = Provider::open("a.test", st.clone()).expect("provider");
    let (_g, g) = group(ROOM.as_bytes());
    a.create_room(ROOM, &bytes(g.export_group_info(true).expect("group info")), None, ALICE, JoinPolicy::Invite, false)
        .await
        .expect("room");
    a.put_group_info(ROOM, bytes(g.export_group_info(true).expect("group info"))).await.expect("group info");
    let ask = |who: &str| {
        let key = HubSigner::generate(who.as_bytes()).expect("key");
        let credential = key.sender.credential.credential().expect("credential");
        GroupInfoRequest::new(DEFAULT_CIPHERSUITE, &key, &key.sender.signature_key, &credential, None).expect("req")
    };
    let (mallory, _) = ask("mimi://b.test/u/mallory");
    mallory.verify().expect("signed");
    let answer = a.answer_group_info(ROOM, &mallory).await.expect("answer");
    assert_eq!(answer.status(), GroupInfoCode::NotAuthorized);
    assert_eq!(GroupInfoResponse::decode(&answer.encode().expect("enc")).expect("dec"), answer);

    let (alice, secret) = ask(ALICE);
    let answer = a.answer_group_info(ROOM, &alice).await.expect("answer");
    let tbe = answer.open(ROOM.as_bytes(), &secret).expect("opens");
    assert_eq!(tbe.group_info.as_bytes(), a.group_info(ROOM).expect("room").expect("gi").as_slice());
    assert_eq!(
        a.answer_group_info("mimi://a.test/r/nowhere", &alice).await.expect("answer").status(),
        GroupInfoCode::NoSuchRoom
    );

    // The hub key survives a restart.
    let key = a.hub_signer().await.expect("key").sender;
    // A GroupInfo handed in without the tree is answered with the hub's tree, after a restart too (when the
    // room's public state is still in the store).
    a.put_group_info(ROOM, bytes(g.export_group_info(false).expect("group info"))).await.expect("without tree");
    drop(a);
    let a = Provider::open("a.test", st).expect("reopen");
    assert_eq!(a.hub_signer().await.expect("key").sender, key);
    let answer = a.answer_group_info(ROOM, &alice).await.expect("answer");
    let tbe = answer.open(ROOM.as_bytes(), &secret).expect("opens");
    assert!(matches!(tbe.ratchet_tree, RatchetTreeOption::Full(_)), "the tree is served: {:?}", tbe.ratchet_tree);
}

#[tokio::test]
async fn a_restart_finds_every_room_without_reading_the_logs() {
    let (_d, st) = store();
    let a = Provider::open("a.test", st.clone()).expect("provider");
    a.hub_signer().await.expect("a key that is no room's");
    let names = ["mimi://a.test/r/x", "mimi://a.test/r/a-much-longer-room-name", "mimi://a.test/r/é"];
    let mut groups = Vec::new();
    for name in names {
        let (dir, mut g) = group(name.as_bytes());
        let info = bytes(g.export_group_info(true).expect("group info"));
        a.create_room(name, &info, None, ALICE, JoinPolicy::Open, false).await.expect("room");
        for i in 0..3 {
            let m = bytes(g.encrypt(format!("{i}").as_bytes()).durable_blocking().expect("encrypt"));
            a.submit(name, m, ALICE, Origin::Client(ALICE.into())).await.expect("sequenced");
        }
        groups.push((dir, g));
    }
    a.follow("mimi://b.test/r/y", "b.test").await.expect("follow");
    drop(a);
    let a = Provider::open("a.test", st).expect("reopen");
    for name in names {
        assert_eq!(a.route(name).expect("route"), RoomRoute::Hub, "{name}");
        assert_eq!(a.last_seq(name).expect("room"), 3, "{name}");
    }
    assert_eq!(a.route("mimi://b.test/r/y").expect("route"), RoomRoute::Follower { hub: "b.test".into() });
}

#[tokio::test]
async fn a_retry_after_a_restart_gets_its_first_number_from_the_store() {
    let (_d, st) = store();
    let (a, _g, mut g) = hosting(&st).await;
    let m = bytes(g.encrypt(b"once").durable_blocking().expect("encrypt"));
    let first = a.submit(ROOM, m.clone(), ALICE, Origin::Client(ALICE.into())).await.expect("sequenced");
    drop(a);
    // The restarted hub holds no idempotency keys in memory: the retry is found in the durable index.
    let a = Provider::open("a.test", st).expect("reopen");
    let again = a.submit(ROOM, m, ALICE, Origin::Client(ALICE.into())).await.expect("retry");
    assert_eq!((again.seq, again.duplicate), (first.seq, true));
    assert_eq!(a.last_seq(ROOM).expect("room"), 1, "no second entry");
}

/// The hub's public state is stored as a manifest and its chunks: after each commit the room's chunks are
/// exactly the manifest's (none left behind), a restart reads the state back (the next commit is judged against
/// it), and a state stored whole, as schema 3 first wrote it, is still read and then stored in chunks.
#[tokio::test]
async fn the_public_state_is_stored_in_chunks_and_none_is_left_behind() {
    use super::log::{HUB_LOG, lp, write};
    use mimi_store::chunks::parse_manifest;
    use std::collections::BTreeSet;

    let (_d, st) = store();
    let (_g, mut g) = group(ROOM.as_bytes());
    // Enough members that the state spans a few dozen chunks.
    let kps: Vec<Vec<u8>> = (0..400).map(|i| raw_key_package(&format!("mimi://a.test/u/m{i}"))).collect();
    let refs: Vec<&[u8]> = kps.iter().map(Vec::as_slice).collect();
    g.add_members(&refs).durable_blocking().expect("add");
    g.merge_pending_commit().durable_blocking().expect("merge");
    let info = bytes(g.export_group_info(true).expect("group info"));
    let a = Provider::open("a.test", st.clone()).expect("provider");
    a.create_room(ROOM, &info, None, ALICE, JoinPolicy::Open, false).await.expect("room");

    let stored = |st: &Store| -> (usize, BTreeSet<Vec<u8>>, BTreeSet<Vec<u8>>) {
        let mut key = lp(ROOM.as_bytes());
        key.push(b'P');
        let manifest = st.get(HUB_LOG, &key).expect("read").expect("a public state");
        let (len, hashes) = parse_manifest(&manifest).expect("a manifest");
        key.pop();
        key.push(b'Q');
        let chunks = st.scan_prefix(HUB_LOG, &key).expect("scan").into_iter().map(|(k, _)| k[key.len()..].to_vec());
        (len as usize, hashes.into_iter().map(|h| h.to_vec()).collect(), chunks.collect())
    };
    let commit = |g: &mut mimi_mls::PortalGroup| merged(g, |g| g.self_update());
    let (len, manifest, chunks) = stored(&st);
    assert!(manifest.len() > 1, "{len} bytes in {} chunks", manifest.len());
    assert_eq!(chunks, manifest);
    let mut before = manifest;
    for _ in 0..3 {
        a.update(ROOM, commit(&mut g), ALICE, Origin::Client(ALICE.into())).await.expect("accepted");
        let (_, now, chunks) = stored(&st);
        assert_eq!(chunks, now, "the room's chunks are the manifest's");
        let rewritten = now.difference(&before).count();
        assert!(rewritten < now.len(), "a commit rewrites part of the state: {rewritten} of {}", now.len());
        before = now;
    }

    // A restart reads the state back from its chunks.
    drop(a);
    let a = Provider::open("a.test", st.clone()).expect("reopen");
    a.update(ROOM, commit(&mut g), ALICE, Origin::Client(ALICE.into())).await.expect("judged after a restart");

    // Stored whole (the first layout): read, and the next commit stores it in chunks, the old record replaced.
    drop(a);
    let whole = super::log::Records(&st).public_state(ROOM).expect("read").expect("stored").0;
    let mut b = mimi_store::Batch::new();
    write::public_state(&mut b, ROOM, &whole);
    let (_, _, chunks) = stored(&st);
    for h in chunks {
        let mut key = lp(ROOM.as_bytes());
        key.push(b'Q');
        key.extend(h);
        b.delete(HUB_LOG, key);
    }
    st.commit(b).await.expect("whole");
    let a = Provider::open("a.test", st.clone()).expect("reopen");
    a.update(ROOM, commit(&mut g), ALICE, Origin::Client(ALICE.into())).await.expect("judged against a whole record");
    let (_, manifest, chunks) = stored(&st);
    assert_eq!(chunks, manifest);
}

/// Migration 3 → 4: a public state stored whole becomes a manifest and its chunks (the same state), and the
/// provider opens on it; a record that does not decode is left alone; a second run changes nothing. (That the
/// first format, OpenMLS's JSON storage, decodes is `mimi_protocol::public`'s test.)
#[tokio::test]
async fn migration_3_to_4_stores_public_states_in_chunks() {
    use super::log::{HUB_LOG, lp, migrate_v3_to_v4, write};
    use mimi_store::chunks::parse_manifest;

    let (_d, st) = store();
    let (_g, g) = group(ROOM.as_bytes());
    let info = bytes(g.export_group_info(true).expect("group info"));
    let a = Provider::open("a.test", st.clone()).expect("provider");
    a.create_room(ROOM, &info, None, ALICE, JoinPolicy::Open, false).await.expect("room");
    drop(a);
    let whole = super::log::Records(&st).public_state(ROOM).expect("read").expect("stored").0;
    let mut b = mimi_store::Batch::new();
    write::public_state(&mut b, ROOM, &whole);
    st.commit(b).await.expect("a whole record");

    migrate_v3_to_v4(st.kv().as_ref()).expect("migrated");
    let key = |room: &str| {
        let mut k = lp(room.as_bytes());
        k.push(b'P');
        k
    };
    let manifest = st.get(HUB_LOG, &key(ROOM)).expect("read").expect("kept");
    let (len, hashes) = parse_manifest(&manifest).expect("a manifest now");
    assert_eq!((len as usize, !hashes.is_empty()), (whole.len(), true));
    assert_eq!(super::log::Records(&st).public_state(ROOM).expect("read").expect("stored").0, whole);
    let a = Provider::open("a.test", st.clone()).expect("opens on the migrated store");
    assert_eq!(a.epoch(ROOM).expect("room"), 0);
    drop(a);

    // A hosted room whose public state does not decode is left as it is; a second run changes nothing else.
    let broken = "mimi://a.test/r/broken";
    let mut state = super::log::Records(&st)
        .rooms()
        .expect("rooms")
        .into_iter()
        .find_map(|r| match r {
            super::log::RoomRecord::Hub(s) => Some(s),
            super::log::RoomRecord::Follower { .. } => None,
        })
        .expect("a hosted room");
    state.room = broken.to_owned();
    let mut b = mimi_store::Batch::new();
    write::hub(&mut b, &state).expect("record");
    write::public_state(&mut b, broken, b"\x02not a state");
    st.commit(b).await.expect("a broken record");
    migrate_v3_to_v4(st.kv().as_ref()).expect("a second run");
    assert_eq!(st.get(HUB_LOG, &key(broken)).expect("read").as_deref(), Some(&b"\x02not a state"[..]));
    assert_eq!(st.get(HUB_LOG, &key(ROOM)).expect("read"), Some(manifest));
}

/// The commit `make` makes on `g`, merged, as an update (with its Welcome and the GroupInfo of its epoch).
fn merged(
    g: &mut mimi_mls::PortalGroup,
    make: impl FnOnce(&mut mimi_mls::PortalGroup) -> mimi_mls::Pending<mimi_mls::CommitOutput>,
) -> UpdateRequest {
    let out = make(g).durable_blocking().expect("commit");
    g.merge_pending_commit().durable_blocking().expect("merge");
    UpdateRequest::Commit {
        commit: bytes(out.commit),
        welcome: out.welcome.map(bytes),
        group_info: GroupInfoOption(bytes(out.group_info.expect("group info"))),
        ratchet_tree: RatchetTreeOption::DistributionService,
    }
}

/// A raw KeyPackage (MLSMessage) of a new member `uri`.
fn raw_key_package(uri: &str) -> Vec<u8> {
    use openmls::prelude::{BasicCredential, Ciphersuite, CredentialWithKey, KeyPackage, MlsMessageOut};
    let cs = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let signer = openmls_basic_credential::SignatureKeyPair::new(cs.signature_algorithm()).expect("key");
    let credential = CredentialWithKey {
        credential: BasicCredential::new(uri.as_bytes().to_vec()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    let bundle = KeyPackage::builder().build(cs, &provider, &signer, credential).expect("kp");
    MlsMessageOut::from(bundle.key_package().clone()).to_bytes().expect("bytes")
}

/// The keys of `ROOM`'s participants in the store, and its record as JSON.
fn stored_participants(st: &Store) -> (Vec<String>, serde_json::Value) {
    use super::log::{HUB_LOG, lp};
    let mut key = lp(ROOM.as_bytes());
    key.push(b'U');
    let users = st.scan_prefix(HUB_LOG, &key).expect("scan");
    let users = users.into_iter().map(|(k, _)| String::from_utf8(k[key.len()..].to_vec()).expect("utf8")).collect();
    key.pop();
    key.push(b'S');
    let record = st.get(HUB_LOG, &key).expect("read").expect("a record");
    (users, serde_json::from_slice(&record).expect("json"))
}

/// A hosted room's participants have a key each, follow invites, adds and removals, and come back after a
/// restart; the room's record (written with every message) does not hold them.
#[tokio::test]
async fn participants_have_keys_of_their_own_and_survive_a_restart() {
    let (_d, st) = store();
    let (_g, mut g) = group(ROOM.as_bytes());
    let info = bytes(g.export_group_info(true).expect("group info"));
    let a = Provider::open("a.test", st.clone()).expect("provider");
    a.create_room(ROOM, &info, None, ALICE, JoinPolicy::Open, false).await.expect("room");
    a.add_participant(ROOM, "mimi://a.test/u/dave").await.expect("invite");
    // A member of another provider is added (its provider hands the commit in), then removed.
    let carol = "mimi://b.test/u/carol";
    let kp = raw_key_package(carol);
    let add = merged(&mut g, |g| g.add_members(&[&kp]));
    let from_b = Origin::Follower("b.test".into());
    a.update(ROOM, add, "mimi://b.test/u/carol", from_b.clone()).await.expect("added");
    let (users, record) = stored_participants(&st);
    assert_eq!(users, [ALICE, "mimi://a.test/u/dave", carol].map(String::from).to_vec());
    assert!(record.get("participants").is_none(), "not in the record: {record}");
    assert_eq!(record["next_seq"], 3, "commit and Welcome");
    let m = bytes(g.encrypt(b"hello").durable_blocking().expect("encrypt"));
    a.submit(ROOM, m, ALICE, Origin::Client(ALICE.into())).await.expect("message");
    assert_eq!(stored_participants(&st).1["next_seq"], 4, "the record follows the log");

    drop(a);
    let a = Provider::open("a.test", st.clone()).expect("reopen");
    for who in [ALICE, carol, "mimi://a.test/u/dave"] {
        assert!(a.is_participant(ROOM, who).expect("room"), "{who} after a restart");
    }
    let remove = merged(&mut g, |g| g.remove_members(&[1]));
    a.update(ROOM, remove, ALICE, Origin::Client(ALICE.into())).await.expect("removed");
    assert!(!a.is_participant(ROOM, carol).expect("room"));
    assert_eq!(stored_participants(&st).0, [ALICE, "mimi://a.test/u/dave"].map(String::from).to_vec());
}

/// Migration 4 → 5: the participants of a record written with them move to keys of their own.
#[tokio::test]
async fn migration_4_to_5_moves_participants_to_their_keys() {
    use super::log::{HUB_LOG, RoomRecord, lp, migrate_v4_to_v5};
    let (_d, st) = store();
    let (_g, mut g) = group(ROOM.as_bytes());
    let info = bytes(g.export_group_info(true).expect("group info"));
    let a = Provider::open("a.test", st.clone()).expect("provider");
    a.create_room(ROOM, &info, None, ALICE, JoinPolicy::Open, false).await.expect("room");
    drop(a);
    // The record as schema 4 wrote it: the whole state, participants in it, and no keys.
    let mut key = lp(ROOM.as_bytes());
    key.push(b'S');
    let RoomRecord::Hub(mut state) =
        serde_json::from_slice(&st.get(HUB_LOG, &key).expect("read").expect("record")).expect("json")
    else {
        panic!("not a hub record")
    };
    state.participants = [ALICE, BOB].map(String::from).into();
    let mut b = mimi_store::Batch::new();
    b.put(HUB_LOG, key.clone(), serde_json::to_vec(&RoomRecord::Hub(state)).expect("json"));
    let mut users = lp(ROOM.as_bytes());
    users.push(b'U');
    users.extend(ALICE.as_bytes());
    b.delete(HUB_LOG, users);
    st.commit(b).await.expect("an old record");

    migrate_v4_to_v5(st.kv().as_ref()).expect("migrated");
    let (users, record) = stored_participants(&st);
    assert_eq!(users, [ALICE, BOB].map(String::from).to_vec());
    assert!(record.get("participants").is_none(), "{record}");
    migrate_v4_to_v5(st.kv().as_ref()).expect("a second run");
    assert_eq!(stored_participants(&st), (users, record), "changes nothing");
    // The record is rewritten with the next message; the participants stay, from their keys.
    let a = Provider::open("a.test", st.clone()).expect("opens");
    let m = bytes(g.encrypt(b"after").durable_blocking().expect("encrypt"));
    a.submit(ROOM, m, ALICE, Origin::Client(ALICE.into())).await.expect("message");
    drop(a);
    let a = Provider::open("a.test", st.clone()).expect("reopens");
    assert!(a.is_participant(ROOM, BOB).expect("room"), "bob, from his key");
}
