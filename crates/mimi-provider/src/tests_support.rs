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

/// A fresh temporary store; the directory must outlive it.
pub(crate) fn store() -> (tempfile::TempDir, mimi_store::Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default(), &mimi_store::schema::Schema::FIRST)
            .expect("store");
    (dir, store)
}

/// Log entry `seq`: a made-up PrivateMessage with `len` bytes of ciphertext.
pub(crate) fn entry(seq: u64, len: usize) -> mimi_protocol::wire::SequencedFanout {
    use mimi_protocol::wire::{FanoutMessage, MlsMessageBytes, SequencedFanout};
    // A PrivateMessage (mls10, wire format 2): group id "x", epoch 1, application content, no authenticated
    // data, one byte of sender data, `len` (< 16384) bytes of ciphertext.
    let mut m = vec![0, 1, 0, 2, 1, b'x', 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0];
    match u8::try_from(len) {
        Ok(short) if short < 64 => m.push(short),
        _ => m.extend((u16::try_from(len).expect("short") | 0x4000).to_be_bytes()),
    }
    m.extend(std::iter::repeat_n(0u8, len));
    let msg = MlsMessageBytes::new(m).expect("framed");
    SequencedFanout { seq, fanout: FanoutMessage::plain(seq, msg) }
}
