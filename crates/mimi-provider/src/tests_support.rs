//! Real MLS messages for the provider's unit tests.

use mimi_mls::{EngineConfig, LocalMember, MlsBackend, PortalGroup};
use mimi_store::{Backend, CommitConfig, open_data_dir};
use openmls::prelude::SignatureScheme;
use std::sync::Arc;

/// A creator's group (group id `gid`) in a fresh temporary store; the directory must outlive the group.
pub(crate) fn group(gid: &[u8]) -> (tempfile::TempDir, PortalGroup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default(), &mimi_store::schema::Schema::FIRST)
            .expect("store");
    let p = Arc::new(MlsBackend::new(store, "t").expect("provider"));
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
