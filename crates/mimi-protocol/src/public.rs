//! The public state of a room's MLS group as its hub keeps it: OpenMLS's [`PublicGroup`] — the ratchet tree, the
//! GroupContext, the interim transcript hash, the last confirmation tag and the queued proposals — with which the
//! hub validates every handshake message before sequencing it.
//!
//! What that checks (OpenMLS `PublicGroup::process_message`): the sender's signature over content bound to the
//! current GroupContext; that the sender is a member (by leaf index, with that leaf's key) or a valid external
//! joiner; for a commit, that its proposals are valid and its update path applies to the public tree. What no hub
//! can check, for want of the epoch secrets: the membership tag, the confirmation tag and the path secrets — so a
//! *member* can still send a commit the other members cannot process. PrivateMessage handshakes cannot be
//! validated at all and are refused.
//!
//! Storage: the [`PublicStorageProvider`](openmls_traits::public_storage::PublicStorageProvider) is an in-memory
//! one whose values are compact CBOR ([`storage`]); [`PublicState::encode`] turns its contents into one record
//! that the hub's IO shell writes in the same atomic batch as the log entry that changed it (see
//! [`crate::hub::HubAction::Append`]). Only handshakes change it, so application messages cost no write of it.
//! Records of the first format (OpenMLS's `MemoryStorage`, JSON) are still read.

use crate::hub::Refusal;
use crate::wire::{MlsMessageBytes, Reader};
use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, Credential, GroupId, LeafNodeIndex, MlsMessageBodyIn, MlsMessageIn, OpenMlsSignaturePublicKey,
    ProcessedMessage, ProposalStore, ProtocolMessage, PublicGroup, QueuedProposal, RatchetTreeIn, StagedCommit,
    Verifiable as _,
};
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use storage::{FromJson, PublicStorage};

pub mod storage;

/// A member a commit adds: its identity (if a UTF-8 basic credential) and its KeyPackageRef.
pub(crate) type Added = (Option<String>, Vec<u8>);

/// Version byte of [`PublicState::encode`]'s format: 2, values in CBOR ([`storage`]).
const FORMAT: u8 = 2;
/// The first format: values as OpenMLS's `MemoryStorage` writes them (JSON), keys as it makes them.
const FORMAT_JSON: u8 = 1;

/// The public state of one MLS group (see the module documentation).
#[derive(Debug)]
pub struct PublicState {
    group: PublicGroup,
    storage: PublicStorage,
    /// How many members the group has (counted when the state is made: counting walks the tree).
    members: usize,
}

fn refused(what: &str, e: impl std::fmt::Debug) -> Refusal {
    Refusal::NotAllowed(format!("{what}: {e:?}"))
}

fn malformed(what: &str, e: impl std::fmt::Display) -> Refusal {
    Refusal::Malformed(format!("{what}: {e}"))
}

/// The UTF-8 identity of a basic credential.
pub fn identity(credential: &Credential) -> Option<String> {
    BasicCredential::try_from(credential.clone()).ok().and_then(|b| String::from_utf8(b.identity().to_vec()).ok())
}

/// The GroupInfo inside an MLSMessage.
fn group_info_of(m: &MlsMessageBytes) -> Result<VerifiableGroupInfo, Refusal> {
    let msg = MlsMessageIn::tls_deserialize_exact(m.as_bytes()).map_err(|e| malformed("GroupInfo", e))?;
    match msg.extract() {
        MlsMessageBodyIn::GroupInfo(g) => Ok(g),
        _ => Err(Refusal::Malformed("not a GroupInfo".into())),
    }
}

/// The `signer` and the encoded `confirmation_tag` of a GroupInfo MLSMessage (OpenMLS keeps the signer to
/// itself): `MLSMessage { version, wire_format, GroupInfo { GroupContext, extensions<V>, confirmation_tag,
/// signer, signature } }`, `GroupContext { version, cipher_suite, group_id<V>, epoch, tree_hash<V>,
/// confirmed_transcript_hash<V>, extensions<V> }`.
fn signer_and_tag(m: &MlsMessageBytes) -> Result<(u32, Vec<u8>), Refusal> {
    let bad = |e: crate::wire::WireError| malformed("GroupInfo", e);
    let mut r = Reader::new(m.as_bytes());
    r.u16().map_err(bad)?;
    r.u16().map_err(bad)?;
    r.u16().map_err(bad)?;
    r.u16().map_err(bad)?;
    r.vl_bytes().map_err(bad)?;
    r.u64().map_err(bad)?;
    r.vl_bytes().map_err(bad)?;
    r.vl_bytes().map_err(bad)?;
    r.vl_bytes().map_err(bad)?;
    r.vl_bytes().map_err(bad)?;
    let before = r.rest();
    r.vl_bytes().map_err(bad)?;
    let tag = before[..before.len() - r.rest().len()].to_vec();
    Ok((r.u32().map_err(bad)?, tag))
}

impl PublicState {
    /// Starts tracking a group from its GroupInfo (an MLSMessage) and ratchet tree (the TLS encoding of
    /// `optional<Node> ratchet_tree<V>`; if `None`, the GroupInfo's `ratchet_tree` extension). OpenMLS checks the
    /// tree, and the GroupInfo's signature against its signer's leaf in it.
    pub fn from_group_info(group_info: &MlsMessageBytes, ratchet_tree: Option<&[u8]>) -> Result<Self, Refusal> {
        let vgi = group_info_of(group_info)?;
        let tree = match ratchet_tree {
            Some(t) => RatchetTreeIn::tls_deserialize_exact(t).map_err(|e| malformed("ratchet tree", e))?,
            None => vgi
                .extensions()
                .ratchet_tree()
                .map(|e| e.ratchet_tree().clone())
                .ok_or_else(|| Refusal::Malformed("no ratchet tree, and none in the GroupInfo".into()))?,
        };
        let storage = PublicStorage::default();
        let (group, _) = PublicGroup::from_external(&RustCrypto::default(), &storage, tree, vgi, ProposalStore::new())
            .map_err(|e| refused("the GroupInfo and ratchet tree do not make a valid group", e))?;
        Ok(Self::counted(group, storage))
    }

    fn counted(group: PublicGroup, storage: PublicStorage) -> Self {
        let members = group.members().count();
        Self { group, storage, members }
    }

    /// The state from [`PublicState::encode`]'s bytes (either format).
    pub fn decode(bytes: &[u8]) -> Result<Self, Refusal> {
        let bad = |e: crate::wire::WireError| malformed("stored public state", e);
        let mut r = Reader::new(bytes);
        let format = r.u8().map_err(bad)?;
        if format != FORMAT && format != FORMAT_JSON {
            return Err(Refusal::Malformed("stored public state: unknown format".into()));
        }
        let gid = GroupId::from_slice(&r.vl_bytes().map_err(bad)?);
        let mut values = BTreeMap::new();
        while !r.rest().is_empty() {
            let k = r.vl_bytes().map_err(bad)?;
            values.insert(k, r.vl_bytes().map_err(bad)?);
        }
        if format == FORMAT {
            return Self::load(PublicStorage::from_values(values), &gid);
        }
        let json = MemoryStorage { values: HashMap::from_iter(values).into() };
        let storage = PublicStorage::default();
        let group = PublicGroup::load(&FromJson { from: &json, into: &storage }, &gid)
            .map_err(|e| malformed("stored public state", e))?
            .ok_or_else(|| Refusal::Malformed("stored public state: incomplete".into()))?;
        Ok(Self::counted(group, storage))
    }

    fn load(storage: PublicStorage, gid: &GroupId) -> Result<Self, Refusal> {
        let group = PublicGroup::load(&storage, gid)
            .map_err(|e| malformed("stored public state", e))?
            .ok_or_else(|| Refusal::Malformed("stored public state: incomplete".into()))?;
        Ok(Self::counted(group, storage))
    }

    /// The state as bytes, to persist: format byte, group id, then the storage's key/value pairs in key order.
    pub fn encode(&self) -> Result<Vec<u8>, Refusal> {
        let bad = |e: crate::wire::WireError| Refusal::NotAllowed(format!("the room's public state: {e}"));
        let values = self.storage.values();
        let mut w = crate::wire::Writer::default();
        w.u8(FORMAT).map_err(bad)?;
        w.vl_bytes(self.group.group_id().as_slice()).map_err(bad)?;
        for (k, v) in values.iter() {
            w.vl_bytes(k).map_err(bad)?;
            w.vl_bytes(v).map_err(bad)?;
        }
        Ok(w.into_bytes())
    }

    /// A copy (through the storage: OpenMLS's `PublicGroup` is not `Clone`).
    fn copy(&self) -> Result<Self, Refusal> {
        let values = self.storage.values().clone();
        Self::load(PublicStorage::from_values(values), self.group.group_id())
    }

    /// How many members the group has.
    pub fn members(&self) -> usize {
        self.members
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    /// The group id.
    pub fn group_id(&self) -> &[u8] {
        self.group.group_id().as_slice()
    }

    /// The ratchet tree (TLS encoding of `optional<Node> ratchet_tree<V>`).
    pub fn ratchet_tree(&self) -> Vec<u8> {
        self.group.export_ratchet_tree().tls_serialize_detached().unwrap_or_default()
    }

    /// The identities (basic credentials, UTF-8) of the members.
    pub fn identities(&self) -> BTreeSet<String> {
        self.group.members().filter_map(|m| identity(&m.credential)).collect()
    }

    /// The identity of the member at `leaf`.
    pub(crate) fn identity_at(&self, leaf: LeafNodeIndex) -> Option<String> {
        self.group.leaf(leaf).and_then(|l| identity(l.credential()))
    }

    /// Validates a PublicMessage handshake (a PrivateMessage is refused: the hub cannot read it).
    pub(crate) fn process(&self, message: ProtocolMessage) -> Result<ProcessedMessage, Refusal> {
        self.group
            .process_message(&RustCrypto::default(), message)
            .map_err(|e| Refusal::NotAllowed(format!("the handshake does not verify against the room's group: {e}")))
    }

    /// The members a staged commit adds: each one's identity (if a UTF-8 basic credential) and KeyPackageRef.
    pub(crate) fn adds(staged: &StagedCommit) -> Result<Vec<Added>, Refusal> {
        staged.add_proposals().map(|a| Self::add_of(a.add_proposal().key_package())).collect()
    }

    /// The member an Add of `kp` adds: identity and KeyPackageRef.
    pub(crate) fn add_of(kp: &openmls::prelude::KeyPackage) -> Result<Added, Refusal> {
        let r = kp.hash_ref(&RustCrypto::default()).map_err(|e| refused("KeyPackageRef", e))?;
        Ok((identity(kp.leaf_node().credential()), r.as_slice().to_vec()))
    }

    /// The leaves a staged commit removes.
    pub(crate) fn removed_leaves(staged: &StagedCommit) -> BTreeSet<LeafNodeIndex> {
        staged.remove_proposals().map(|r| r.remove_proposal().removed()).collect()
    }

    /// Every member's leaf and identity.
    pub(crate) fn leaf_identities(&self) -> Vec<(LeafNodeIndex, Option<String>)> {
        self.group.members().map(|m| (m.index, identity(&m.credential))).collect()
    }

    /// The state after `staged` (validated by [`PublicState::process`] on `self`); `self` is left as it was.
    pub(crate) fn with_commit(&self, staged: StagedCommit) -> Result<Self, Refusal> {
        let mut next = self.copy()?;
        next.group.merge_commit(&next.storage, staged).map_err(|e| refused("merging the commit", e))?;
        next.members = next.group.members().count();
        Ok(next)
    }

    /// The state with `proposal` queued; `self` is left as it was.
    pub(crate) fn with_proposal(&self, proposal: QueuedProposal) -> Result<Self, Refusal> {
        let mut next = self.copy()?;
        next.group.add_proposal(&next.storage, proposal).map_err(|e| refused("queueing the proposal", e))?;
        Ok(next)
    }

    /// Checks that `group_info` (an MLSMessage) describes this state: signed by the member at its `signer` leaf,
    /// with this GroupContext and this confirmation tag.
    pub fn check_group_info(&self, group_info: &MlsMessageBytes) -> Result<(), Refusal> {
        let vgi = group_info_of(group_info)?;
        let (signer, tag) = signer_and_tag(group_info)?;
        let leaf = self
            .group
            .leaf(LeafNodeIndex::new(signer))
            .ok_or_else(|| Refusal::NotAllowed(format!("the GroupInfo's signer (leaf {signer}) is not a member")))?;
        let key = OpenMlsSignaturePublicKey::from_signature_key(
            leaf.signature_key().clone(),
            self.group.ciphersuite().signature_algorithm(),
        );
        let gi = vgi
            .verify(&RustCrypto::default(), &key)
            .map_err(|_| Refusal::NotAllowed("the GroupInfo's signature does not verify".into()))?;
        let encode = |c: &openmls::prelude::GroupContext| c.tls_serialize_detached().unwrap_or_default();
        if encode(gi.group_context()) != encode(self.group.group_context()) {
            return Err(Refusal::NotAllowed("the GroupInfo's GroupContext is not the room's".into()));
        }
        if self.group.confirmation_tag().tls_serialize_detached().ok().as_ref() != Some(&tag) {
            return Err(Refusal::NotAllowed("the GroupInfo's confirmation tag is not the room's".into()));
        }
        Ok(())
    }

    /// True if `group_info` (an MLSMessage) carries the `ratchet_tree` extension.
    pub fn has_ratchet_tree(group_info: &MlsMessageBytes) -> bool {
        group_info_of(group_info).is_ok_and(|g| g.extensions().ratchet_tree().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_group::{TestClient, group};

    fn framed(v: Vec<u8>) -> MlsMessageBytes {
        MlsMessageBytes::new(v).expect("framed")
    }

    /// The first format's record of `gid`'s state in `json`: format byte, group id, key/value pairs in key order.
    fn first_format(gid: &[u8], json: &MemoryStorage) -> Vec<u8> {
        let values = json.values.read().expect("values");
        let mut pairs: Vec<_> = values.iter().collect();
        pairs.sort();
        let mut w = crate::wire::Writer::default();
        w.u8(FORMAT_JSON).expect("format");
        w.vl_bytes(gid).expect("gid");
        for (k, v) in pairs {
            w.vl_bytes(k).expect("key");
            w.vl_bytes(v).expect("value");
        }
        w.into_bytes()
    }

    fn queued(p: &PublicState) -> usize {
        p.group.queued_proposals(&p.storage).expect("queued").len()
    }

    /// A record written by the first format (OpenMLS's JSON storage), with a proposal queued, is read as the same
    /// state — tree, context, queue — and written again in CBOR, smaller, which reads back the same.
    #[test]
    fn a_state_of_the_first_format_is_read_and_written_again_in_cbor() {
        let (_d, mut alice) = group(b"room");
        for i in 0..8 {
            let kp = TestClient::new(&format!("mimi://a.test/u/m{i}")).key_package();
            alice.add(&[kp]);
            alice.merge();
        }
        let info = framed(alice.export_group_info(true).expect("group info"));
        let vgi = group_info_of(&info).expect("group info");
        let tree = vgi.extensions().ratchet_tree().expect("tree").ratchet_tree().clone();
        let json = MemoryStorage::default();
        let (mut public, _) =
            PublicGroup::from_external(&RustCrypto::default(), &json, tree, vgi, ProposalStore::new()).expect("group");
        let proposal = alice.propose_add(&TestClient::new("mimi://a.test/u/bob").key_package());
        let msg = MlsMessageIn::tls_deserialize_exact(&proposal[..]).expect("message");
        let processed = public
            .process_message(&RustCrypto::default(), msg.try_into_protocol_message().expect("public"))
            .expect("ok");
        let openmls::prelude::ProcessedMessageContent::ProposalMessage(p) = processed.into_content() else {
            panic!("not a proposal")
        };
        public.add_proposal(&json, *p).expect("queued");
        let old = first_format(b"room", &json);

        let read = PublicState::decode(&old).expect("the first format is read");
        assert_eq!(read.members(), 9);
        assert_eq!(queued(&read), 1, "the queued proposal is carried");
        let cbor = read.encode().expect("encoded");
        assert_eq!(cbor[0], FORMAT);
        assert!(cbor.len() * 2 < old.len(), "CBOR {} bytes, JSON {} bytes", cbor.len(), old.len());
        let again = PublicState::decode(&cbor).expect("the new format is read");
        assert_eq!(again.encode().expect("encoded"), cbor, "decoding and encoding again changes nothing");
        assert_eq!(again.ratchet_tree(), read.ratchet_tree());
        assert_eq!(again.identities(), read.identities());
        assert_eq!(again.epoch(), read.epoch());
        assert_eq!(queued(&again), 1);
        let direct = PublicState::from_group_info(&info, None).expect("from the GroupInfo");
        assert_eq!(direct.ratchet_tree(), again.ratchet_tree(), "the same tree as made from the GroupInfo");
    }
}
