//! RFC 9420 interop: a client built on `mls-rs` (an independent MLS implementation) joins a group our engine
//! (OpenMLS) created, from a Welcome, and both exchange application messages; then the mls-rs client commits and
//! the bridge follows, and the bridge commits and the mls-rs client follows.

use crate::mls_support::{Client as BridgeClient, open_store};
use mimi_mls::{PortalGroup, Received};
use mls_rs::identity::SigningIdentity;
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::{CipherSuite, CipherSuiteProvider, Client, CryptoProvider, MlsMessage};
use mls_rs_crypto_rustcrypto::RustCryptoProvider;

const GROUP: &[u8] = b"mimi://bridge.example.org/r/interop";
const ALICE: &str = "mimi://other.example.net/u/alice";

fn mls_rs_client() -> Client<impl mls_rs::client_builder::MlsConfig> {
    let crypto = RustCryptoProvider::default();
    let suite = crypto.cipher_suite_provider(CipherSuite::CURVE25519_AES128).expect("0x0001 supported by mls-rs");
    let (secret, public) = suite.signature_key_generate().expect("signature key");
    let identity = SigningIdentity::new(BasicCredential::new(ALICE.as_bytes().to_vec()).into_credential(), public);
    Client::builder()
        .identity_provider(BasicIdentityProvider)
        .crypto_provider(crypto)
        .signing_identity(identity, secret, CipherSuite::CURVE25519_AES128)
        .build()
}

fn bridge_decrypts(g: &mut PortalGroup, ct: &[u8], expect: &[u8]) {
    match g.process(ct).durable_blocking().expect("the bridge decrypts mls-rs's message") {
        Received::Application { plaintext, sender_identity, .. } => {
            assert_eq!(plaintext, expect);
            assert_eq!(sender_identity, ALICE.as_bytes());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn interop_mls_rs_joins_from_welcome_and_exchanges_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bridge = BridgeClient::new(&open_store(dir.path()), "bridge");
    let mut g = bridge.create(GROUP);

    let alice = mls_rs_client();
    let kp = alice
        .generate_key_package_message(Default::default(), Default::default(), None)
        .expect("mls-rs key package")
        .to_bytes()
        .expect("encode");
    let out = g.add_members(&[&kp]).durable_blocking().expect("the bridge adds the mls-rs client");
    g.merge_pending_commit().durable_blocking().expect("merge");
    let welcome = MlsMessage::from_bytes(out.welcome.as_deref().expect("welcome")).expect("mls-rs parses the Welcome");
    // OpenMLS's Welcomes carry no ratchet tree (it is served out of band): mls-rs takes the bridge's.
    let tree = g.export_ratchet_tree().expect("tree");
    let tree = mls_rs::group::ExportedTree::from_bytes(&tree).expect("mls-rs parses the tree");
    let (mut ga, _) = alice.join_group(Some(tree), &welcome, None).expect("mls-rs joins from OpenMLS's Welcome");
    assert_eq!(ga.current_epoch(), g.epoch());

    // Bridge → mls-rs.
    for text in ["hello from OpenMLS", "second message"] {
        let ct = g.encrypt(text.as_bytes()).durable_blocking().expect("encrypt");
        let msg = MlsMessage::from_bytes(&ct).expect("parse");
        match ga.process_incoming_message(msg).expect("mls-rs decrypts") {
            mls_rs::group::ReceivedMessage::ApplicationMessage(m) => {
                assert_eq!(m.data(), text.as_bytes());
                assert_eq!(m.sender_index, g.own_index());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // mls-rs → bridge.
    for text in ["hello from mls-rs", "and again"] {
        let ct = ga.encrypt_application_message(text.as_bytes(), Vec::new()).expect("mls-rs encrypts");
        bridge_decrypts(&mut g, &ct.to_bytes().expect("encode"), text.as_bytes());
    }

    // mls-rs commits (an empty commit with a path: a self-update); the bridge follows.
    let commit = ga.commit(Vec::new()).expect("mls-rs commits");
    ga.apply_pending_commit().expect("apply");
    assert!(matches!(
        g.process(&commit.commit_message.to_bytes().expect("encode")).durable_blocking(),
        Ok(Received::Commit { .. })
    ));
    assert_eq!(g.epoch(), ga.current_epoch());

    // The bridge commits (self-update); mls-rs follows.
    let out = g.self_update().durable_blocking().expect("bridge self-update");
    let msg = MlsMessage::from_bytes(&out.commit).expect("parse");
    assert!(matches!(
        ga.process_incoming_message(msg).expect("mls-rs processes OpenMLS's commit"),
        mls_rs::group::ReceivedMessage::Commit(_)
    ));
    g.merge_pending_commit().durable_blocking().expect("merge");
    assert_eq!(g.epoch(), ga.current_epoch());

    let ct = ga.encrypt_application_message(b"after two commits", Vec::new()).expect("encrypt");
    bridge_decrypts(&mut g, &ct.to_bytes().expect("encode"), b"after two commits");
    let ct = g.encrypt(b"ack").durable_blocking().expect("encrypt");
    assert!(matches!(
        ga.process_incoming_message(MlsMessage::from_bytes(&ct).expect("parse")).expect("decrypt"),
        mls_rs::group::ReceivedMessage::ApplicationMessage(_)
    ));
}
