//! Real MLS messages for the provider's unit tests.

use crate::mls::{BridgeProvider, EngineConfig, LocalMember, PortalGroup};
use crate::store::{Backend, CommitConfig, open_data_dir};
use openmls::prelude::SignatureScheme;
use std::sync::Arc;

/// A creator's group (group id `gid`) in a fresh temporary store; the directory must outlive the group.
pub(crate) fn group(gid: &[u8]) -> (tempfile::TempDir, PortalGroup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let p = Arc::new(BridgeProvider::new(store, "t").expect("provider"));
    let m = LocalMember::load_or_create(&p, "mimi://a.test/u/alice", SignatureScheme::ED25519)
        .expect("member")
        .durable_blocking()
        .expect("durable");
    let g = PortalGroup::create(p, Arc::new(m), &EngineConfig::default(), gid).durable_blocking().expect("group");
    (dir, g)
}

/// One PrivateMessage.
pub(crate) fn private_message() -> Vec<u8> {
    let (_dir, mut g) = group(b"mimi://a.test/r/x");
    g.encrypt(b"x").durable_blocking().expect("encrypt")
}

/// One KeyPackage (MLSMessage) of a fresh member `uri`.
pub(crate) fn key_package(uri: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let p = BridgeProvider::new(store, "t").expect("provider");
    let m = LocalMember::load_or_create(&p, uri, SignatureScheme::ED25519)
        .expect("member")
        .durable_blocking()
        .expect("durable");
    let kps = crate::mls::key_packages::generate(&p, &m, &EngineConfig::default(), 1, false)
        .durable_blocking()
        .expect("key package");
    kps.into_iter().next().expect("one")
}
