//! Shared helpers of the MLS tests: a store in a temporary directory and a local member on it.
#![allow(dead_code)]

use mimi_mls::{EngineConfig, LocalMember, MlsBackend, PortalGroup, Received, key_packages};
use mimi_store::{Backend, CommitConfig, Store, open_data_dir};
use openmls::prelude::SignatureScheme;
use std::path::Path;
use std::sync::Arc;

/// The bridge's domain in the tests.
pub const DOMAIN: &str = "bridge.example.org";

/// Opens (or creates) a redb store in `dir`.
pub fn open_store(dir: &Path) -> Store {
    open_data_dir(dir, Some(Backend::Redb), CommitConfig::default(), &mimi_store::schema::Schema::FIRST)
        .expect("open the store")
}

/// A local member and its provider.
#[derive(Clone)]
pub struct Client {
    /// Its provider (storage namespace).
    pub provider: Arc<MlsBackend>,
    /// Its identity.
    pub member: Arc<LocalMember>,
}

impl Client {
    /// Loads or creates member `user` (URI `mimi://DOMAIN/u/USER`) in namespace `user` of `store`.
    pub fn new(store: &Store, user: &str) -> Self {
        let provider = Arc::new(MlsBackend::new(store.clone(), user).expect("provider"));
        let uri = format!("mimi://{DOMAIN}/u/{user}");
        let member = LocalMember::load_or_create(&provider, &uri, SignatureScheme::ED25519)
            .expect("member")
            .durable_blocking()
            .expect("member durable");
        Self { provider, member: Arc::new(member) }
    }

    /// One fresh KeyPackage (MLSMessage).
    pub fn key_package(&self) -> Vec<u8> {
        let kps = key_packages::generate(&self.provider, &self.member, &EngineConfig::default(), 1, false)
            .durable_blocking()
            .expect("key package");
        kps.into_iter().next().expect("one key package")
    }

    /// Creates group `id`.
    pub fn create(&self, id: &[u8]) -> PortalGroup {
        PortalGroup::create(self.provider.clone(), self.member.clone(), &EngineConfig::default(), id)
            .durable_blocking()
            .expect("create group")
    }

    /// Joins from a Welcome, with the ratchet tree of `committer` (who made the Welcome and merged its commit):
    /// Welcomes carry no tree.
    pub fn join(&self, welcome: &[u8], committer: &PortalGroup) -> PortalGroup {
        self.join_with_tree(welcome, &committer.export_ratchet_tree().expect("the committer's tree"))
    }

    /// Joins from a Welcome with the ratchet tree `tree` (TLS-encoded) of the epoch it is for.
    pub fn join_with_tree(&self, welcome: &[u8], tree: &[u8]) -> PortalGroup {
        PortalGroup::join_from_welcome(
            self.provider.clone(),
            self.member.clone(),
            &EngineConfig::default(),
            welcome,
            Some(tree),
        )
        .durable_blocking()
        .expect("join from welcome")
    }

    /// Loads group `id` from storage.
    pub fn load(&self, id: &[u8]) -> PortalGroup {
        PortalGroup::load(self.provider.clone(), self.member.clone(), id).expect("load group")
    }
}

/// `from` encrypts `text`; every group in `to` decrypts it.
pub fn send(from: &mut PortalGroup, to: &mut [&mut PortalGroup], text: &str) {
    let ct = from.encrypt(text.as_bytes()).durable_blocking().expect("encrypt");
    for g in to.iter_mut() {
        match g.process(&ct).durable_blocking().expect("decrypt") {
            Received::Application { plaintext, sender_identity, .. } => {
                assert_eq!(plaintext, text.as_bytes());
                assert_eq!(sender_identity, from.member().uri().as_bytes());
            }
            other => panic!("expected an application message, got {other:?}"),
        }
    }
}

/// `by` commits (already created as `commit`), every group in `others` processes it, then `by` merges.
pub fn apply_commit(by: &mut PortalGroup, commit: &[u8], others: &mut [&mut PortalGroup]) {
    for g in others.iter_mut() {
        match g.process(commit).durable_blocking().expect("process commit") {
            Received::Commit { .. } => {}
            other => panic!("expected a commit, got {other:?}"),
        }
    }
    by.merge_pending_commit().durable_blocking().expect("merge own commit");
    for g in others.iter() {
        assert_eq!(g.epoch(), by.epoch(), "epochs agree after the commit");
    }
}

/// A KeyPackage of a member who will never speak (MLSMessage bytes).
pub fn silent_member_key_package(i: usize) -> Vec<u8> {
    use openmls::prelude::tls_codec::Serialize as _;
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;
    let cs = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(cs.signature_algorithm()).expect("signature key");
    let credential = CredentialWithKey {
        credential: BasicCredential::new(format!("mimi://example.org/u/silent{i}").into_bytes()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    let bundle = KeyPackage::builder().build(cs, &provider, &signer, credential).expect("key package");
    MlsMessageOut::from(bundle.key_package().clone()).tls_serialize_detached().expect("encode")
}
