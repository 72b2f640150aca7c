//! Property test of the hub: random bytes and mutations of valid handshakes (commits, proposals, Welcomes,
//! GroupInfos, application messages) fed to [`HubRoom::submit`] and [`HubRoom::update`] never panic, and a
//! refusal leaves the room exactly as it was (state, public state, last sequence number).

use crate::hub::{HubRoom, HubState, JoinPolicy, Origin};
use crate::test_group::{TestClient, TestCommit, forged_commit, group};
use crate::wire::{GroupInfoOption, MlsMessageBytes, RatchetTreeOption, UpdateRequest};
use proptest::prelude::*;
use std::sync::OnceLock;

const ROOM: &str = "mimi://a.test/r/x";
const ALICE: &str = "mimi://a.test/u/alice";
const BOB: &str = "mimi://a.test/u/bob";

/// A room of Alice and Bob as the hub stored it, and valid messages of its current epoch.
struct Fixture {
    state: HubState,
    public: Vec<u8>,
    /// Messages to mutate: Bob's commit (with its GroupInfo), Alice's add (commit, Welcome, GroupInfo), Bob's
    /// proposal, Alice's application message, a forged commit.
    messages: Vec<Vec<u8>>,
    /// A valid bundle's GroupInfo and Welcome, to wrap mutated commits in.
    group_info: Vec<u8>,
    welcome: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (_d, mut alice) = group(ROOM.as_bytes());
        let gi = MlsMessageBytes::new(alice.export_group_info(true).expect("gi")).expect("framed");
        let mut hub = HubRoom::new(ROOM, &gi, None, ALICE, JoinPolicy::Open, false).expect("room");
        let bob = TestClient::new(BOB);
        let add = alice.add(&[bob.key_package()]);
        hub.update(&bundle(&add), ALICE, &Origin::Portal, 1).expect("add");
        alice.merge();
        let mut bob = bob.join_from_welcome(add.welcome.as_ref().expect("welcome"));
        let bob_commit = bob.self_update().expect("commit");
        bob.clear();
        let proposal = bob.propose_remove(0);
        let carol = TestClient::new("mimi://a.test/u/carol");
        let add_carol = alice.add(&[carol.key_package()]);
        let message = alice.encrypt(b"hello").expect("encrypt");
        let mut messages = vec![
            bob_commit.commit.clone(),
            bob_commit.group_info.clone().expect("gi"),
            add_carol.commit.clone(),
            add_carol.welcome.clone().expect("welcome"),
            proposal,
            message,
            forged_commit(ROOM.as_bytes(), hub.epoch()),
        ];
        messages.push(add_carol.group_info.clone().expect("gi"));
        Fixture {
            state: hub.state().clone(),
            public: hub.public_state().expect("encodes").expect("known"),
            messages,
            group_info: add_carol.group_info.expect("gi"),
            welcome: add_carol.welcome.expect("welcome"),
        }
    })
}

fn bundle(c: &TestCommit) -> UpdateRequest {
    UpdateRequest::Commit {
        commit: MlsMessageBytes::new(c.commit.clone()).expect("framed"),
        welcome: c.welcome.clone().map(|w| MlsMessageBytes::new(w).expect("framed")),
        group_info: GroupInfoOption(MlsMessageBytes::new(c.group_info.clone().expect("gi")).expect("framed")),
        ratchet_tree: RatchetTreeOption::DistributionService,
    }
}

/// One change to a message.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    /// A bit of the last 256 bytes: signature, tags, ciphertext — where a change keeps the message well-formed.
    FlipTail {
        back: usize,
        bit: u8,
    },
    Set {
        at: usize,
        value: u8,
    },
    Truncate {
        at: usize,
    },
    Insert {
        at: usize,
        value: u8,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        4 => (0usize..256, 0u8..8).prop_map(|(back, bit)| Mutation::FlipTail { back, bit }),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Insert { at, value }),
    ]
}

fn apply(mut m: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for x in mutations {
        if m.is_empty() {
            break;
        }
        let n = m.len();
        match *x {
            Mutation::Flip { at, bit } => m[at % n] ^= 1 << bit,
            Mutation::FlipTail { back, bit } => m[n - 1 - back % n] ^= 1 << bit,
            Mutation::Set { at, value } => m[at % n] = value,
            Mutation::Truncate { at } => m.truncate(at % n),
            Mutation::Insert { at, value } => m.insert(at % (n + 1), value),
        }
    }
    m
}

fn snapshot(hub: &HubRoom) -> (HubState, Option<Vec<u8>>, u64) {
    (hub.state().clone(), hub.public_state().expect("encodes"), hub.last_seq())
}

/// Feeds `bytes` to a fresh copy of the fixture's room as a submit, and (a commit) as an update with a valid
/// GroupInfo and Welcome of another commit; checks that refusals change nothing.
fn feed(bytes: Vec<u8>) {
    let f = fixture();
    let Ok(message) = MlsMessageBytes::new(bytes) else { return };
    let origins = [Origin::Client(BOB.into()), Origin::Portal, Origin::Follower("a.test".into())];
    for origin in &origins {
        let mut hub = HubRoom::restore(f.state.clone(), Some(&f.public), [], false).expect("restore");
        let before = snapshot(&hub);
        if hub.submit(message.clone(), BOB, origin, 1).is_err() {
            assert_eq!(snapshot(&hub), before, "a refused submit changed the room");
        }
        let mut hub = HubRoom::restore(f.state.clone(), Some(&f.public), [], false).expect("restore");
        let req = UpdateRequest::Commit {
            commit: message.clone(),
            welcome: Some(MlsMessageBytes::new(f.welcome.clone()).expect("framed")),
            group_info: GroupInfoOption(MlsMessageBytes::new(f.group_info.clone()).expect("framed")),
            ratchet_tree: RatchetTreeOption::DistributionService,
        };
        if hub.update(&req, BOB, origin, 1).is_err() {
            assert_eq!(snapshot(&hub), before, "a refused update changed the room");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_handshakes_never_panic_and_refusals_change_nothing(
        which in 0usize..8,
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let f = fixture();
        feed(apply(f.messages[which % f.messages.len()].clone(), &mutations));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), header in 0u16..6) {
        // Random bodies behind a plausible MLSMessage header (mls10, a wire format), and raw.
        let mut framed = vec![0, 1];
        framed.extend_from_slice(&header.to_be_bytes());
        framed.extend_from_slice(&bytes);
        feed(framed);
        feed(bytes);
    }
}

#[test]
fn the_unmutated_messages_are_what_the_fixture_says() {
    // Bob's commit, alone, is accepted: the property test starts from valid handshakes.
    let f = fixture();
    let mut hub = HubRoom::restore(f.state.clone(), Some(&f.public), [], false).expect("restore");
    let commit = MlsMessageBytes::new(f.messages[0].clone()).expect("framed");
    hub.submit(commit, BOB, &Origin::Client(BOB.into()), 1).expect("bob's commit");
    assert_eq!(hub.epoch(), f.state.epoch + 1);
}
