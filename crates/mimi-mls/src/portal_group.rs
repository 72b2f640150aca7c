//! [`PortalGroup`]: the MLS group of one portal, seen from one local member.
//!
//! Every mutating operation runs OpenMLS synchronously, then submits the group's dirty state as one atomic batch
//! and returns a [`Pending`]: its output (ciphertext, commit, Welcome, decrypted message, or error) is handed out
//! only once that batch is durable. Refused incoming messages go through the same path, because OpenMLS may have
//! consumed ratchet state while refusing them and the durable state must follow the in-memory one. Application
//! messages defer their ratchet state instead ([`crate::write_behind`]): an encrypt is handed out once its
//! reservation is durable, a decrypt once what it wrote (its kept plaintext) is.
//!
//! Commits from others are merged as soon as they are processed (the hub has already sequenced them). The
//! bridge's own commits stay *pending* until the caller knows the hub accepted them:
//! [`PortalGroup::merge_pending_commit`] or [`PortalGroup::clear_pending_commit`].

use super::backend::{MlsBackend, Pending};
use super::config::EngineConfig;
use super::error::MlsError;
use super::member::LocalMember;
use super::storage::{Durability, MlsStorage};
use super::verified_signatures;
use super::write_behind::{self, BeforeEncrypt, Extend, Reservation, WriteBehind};
use openmls::group::{CommitBuilder, Initial};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    ContentType, GroupId, KeyPackage, KeyPackageIn, LeafNodeIndex, LeafNodeParameters, MlsGroup, MlsMessageBodyIn,
    MlsMessageIn, MlsMessageOut, ProcessedMessageContent, ProcessedWelcome, ProtocolMessage, ProtocolVersion,
    RatchetTreeIn, Sender,
};
use openmls_traits::OpenMlsProvider;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

/// A member as the group lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Leaf index.
    pub index: u32,
    /// The basic credential's identity (a MIMI URI for bridge members).
    pub identity: Vec<u8>,
}

/// What processing an incoming message produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// An application message.
    Application {
        /// The sender's leaf index.
        sender: u32,
        /// The sender's credential identity.
        sender_identity: Vec<u8>,
        /// The epoch it was sent in.
        epoch: u64,
        /// The plaintext (MIMI content for MIMI clients).
        plaintext: Vec<u8>,
    },
    /// One of our own application messages came back (the hub fans out to everyone): nothing to do.
    Own,
    /// A proposal, now queued for the next commit.
    Proposal {
        /// The proposer's leaf index, if a member.
        sender: Option<u32>,
    },
    /// A commit by someone else, merged: the group is now at `epoch`.
    Commit {
        /// The new epoch.
        epoch: u64,
        /// Identities added by the commit.
        added: Vec<Vec<u8>>,
        /// Leaf indices removed by the commit.
        removed: Vec<u32>,
    },
}

/// An application message decrypted by [`PortalGroup::process_and_keep`] and not yet handed on for good.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptMessage {
    /// Its log position.
    pub seq: u64,
    /// The sender's credential identity.
    pub sender_identity: Vec<u8>,
    /// The decrypted content.
    pub plaintext: Vec<u8>,
}

/// The messages an own commit produced: send `commit` to the group (via the hub), `welcome` to new members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutput {
    /// The commit (MLSMessage).
    pub commit: Vec<u8>,
    /// The Welcome for added members (MLSMessage), if any.
    pub welcome: Option<Vec<u8>>,
    /// The GroupInfo of the new epoch (MLSMessage), if OpenMLS made one.
    pub group_info: Option<Vec<u8>>,
}

/// The MLS group of a portal, for one local member.
pub struct PortalGroup {
    group: MlsGroup,
    provider: Arc<MlsBackend>,
    member: Arc<LocalMember>,
    partition: Vec<u8>,
    /// When the message secrets are encoded ([`write_behind`]).
    write_behind: WriteBehind,
    /// A reservation record was written and not yet sealed.
    record_written: bool,
    /// This object's claim on the group's partition ([`MlsStorage::claim`]).
    claim: u64,
    /// The number of members, and the epoch it was counted at.
    counted: (u64, usize),
    /// The past epochs' message secrets did not change since they were last encoded: only current-epoch
    /// application messages were encrypted and decrypted ([`MlsStorage::reuse_past_epochs`]).
    past_epochs_unchanged: bool,
}

impl std::fmt::Debug for PortalGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalGroup")
            .field("group_id", &hex::encode(self.group.group_id().as_slice()))
            .field("epoch", &self.epoch())
            .field("member", &self.member.uri())
            .finish_non_exhaustive()
    }
}

fn lib(e: impl std::fmt::Display) -> MlsError {
    MlsError::Library(e.to_string())
}

fn to_bytes(m: &MlsMessageOut) -> Result<Vec<u8>, MlsError> {
    m.to_bytes().map_err(lib)
}

fn parse_message(bytes: &[u8]) -> Result<MlsMessageBodyIn, MlsError> {
    let mut slice = bytes;
    let msg = MlsMessageIn::tls_deserialize(&mut slice).map_err(|e| MlsError::Malformed(e.to_string()))?;
    if !slice.is_empty() {
        return Err(MlsError::Malformed(format!("{} trailing bytes", slice.len())));
    }
    Ok(msg.extract())
}

/// The encoding interval of `group` ([`write_behind`]): the backend's, at most a quarter of the group's
/// `maximum_forward_distance` (how far behind a receiver's state on disk may be, and how far a sender may jump
/// after a crash, both count against it).
fn interval(provider: &MlsBackend, group: &MlsGroup) -> u64 {
    let forward = u64::from(group.configuration().sender_ratchet_configuration().maximum_forward_distance());
    provider.write_behind_ops().min(forward / 4)
}

fn parse_tree(bytes: Option<&[u8]>) -> Result<Option<RatchetTreeIn>, MlsError> {
    bytes
        .map(|mut b| {
            RatchetTreeIn::tls_deserialize(&mut b).map_err(|e| MlsError::Malformed(format!("ratchet tree: {e}")))
        })
        .transpose()
}

/// Parses a KeyPackage, either as an MLSMessage (`mls_key_package`, how clients publish them) or bare.
pub fn parse_key_package(provider: &MlsBackend, bytes: &[u8]) -> Result<KeyPackage, MlsError> {
    let kp_in = match parse_message(bytes) {
        Ok(MlsMessageBodyIn::KeyPackage(kp)) => kp,
        _ => {
            let mut slice = bytes;
            KeyPackageIn::tls_deserialize(&mut slice).map_err(|e| MlsError::InvalidKeyPackage(e.to_string()))?
        }
    };
    kp_in.validate(provider.crypto(), ProtocolVersion::Mls10).map_err(|e| MlsError::InvalidKeyPackage(e.to_string()))
}

impl PortalGroup {
    /// A group whose state was just written through (created, joined).
    fn wrap(group: MlsGroup, provider: Arc<MlsBackend>, member: Arc<LocalMember>) -> Result<Self, MlsError> {
        Self::open(group, provider, member, None)
    }

    /// The object for `group`, whose reservation on disk is `record` ([`write_behind`]).
    fn open(
        group: MlsGroup,
        provider: Arc<MlsBackend>,
        member: Arc<LocalMember>,
        record: Option<Reservation>,
    ) -> Result<Self, MlsError> {
        let partition = MlsStorage::partition(group.group_id())?;
        let write_behind =
            WriteBehind::loaded(interval(&provider, &group), group.epoch().as_u64(), record, Instant::now());
        let claim = provider.storage().claim(&partition);
        let counted = (group.epoch().as_u64(), group.members().count());
        Ok(Self {
            group,
            provider,
            member,
            partition,
            write_behind,
            record_written: false,
            claim,
            counted,
            past_epochs_unchanged: false,
        })
    }

    fn storage(&self) -> &MlsStorage {
        self.provider.storage()
    }

    /// Seals the group's writes, with the reservation record if the operation encoded the message secrets.
    fn submit(&mut self) -> Durability {
        if self.storage().take_secrets_encoded(&self.partition)
            && let Err(e) = self.seal_reservation(Extend::Keep)
        {
            // The state is written without its record: a crash could burn too few generations. Encode the
            // state again with the next encrypt, which then waits for the record.
            tracing::warn!(error = %e, "ratchet reservation not written");
            self.write_behind.unreserve();
        }
        let d = self.storage().submit(&self.partition);
        if std::mem::take(&mut self.record_written) {
            self.write_behind.sealed(d.seq());
        }
        if self.counted.0 != self.epoch() {
            self.counted = (self.epoch(), self.group.members().count());
        }
        d
    }

    /// Writes the reservation record that goes with an encoding of the message secrets (into the same batch).
    fn seal_reservation(&mut self, extend: Extend) -> Result<(), MlsError> {
        if !self.write_behind.enabled() {
            return Ok(());
        }
        let record: Reservation = self.write_behind.encoded(self.epoch(), extend, Instant::now());
        if let Err(e) = self.storage().group_record_put(&self.partition, write_behind::RECORD, &record) {
            // The reservation in memory was never written: nothing may rest on it.
            self.write_behind.unreserve();
            return Err(e.into());
        }
        self.record_written = true;
        Ok(())
    }

    /// Encodes the message secrets now (they are behind after deferred operations) and the reservation record.
    fn encode_secrets(&mut self, extend: Extend) -> Result<(), MlsError> {
        self.check_claim()?;
        if self.write_behind.behind() > 0 {
            self.storage().reuse_past_epochs(&self.partition, self.past_epochs_unchanged);
            let policy = self.group.past_epoch_deletion_policy().clone();
            let written = self.group.set_past_epoch_deletion_policy(self.provider.as_ref(), policy).map_err(lib);
            // Whatever happened, no later write may leave the past epochs as they are (only this one was told).
            self.storage().reuse_past_epochs(&self.partition, false);
            written?;
            // Taken here: the record goes with it.
            self.storage().take_secrets_encoded(&self.partition);
            self.past_epochs_unchanged = true;
        }
        self.seal_reservation(extend)
    }

    /// Submits the group's writes and packs `result` with their durability.
    fn finish<T>(&mut self, result: Result<T, MlsError>) -> Pending<T> {
        // Any operation but a current-epoch application message may have changed the past epochs' secrets.
        self.past_epochs_unchanged = false;
        let d = self.submit();
        Pending::from_result(result, d)
    }

    /// Runs `f` with the group's message-secrets writes deferred ([`write_behind`]); deferral ends even if `f`
    /// panics (a group left deferred would skip the writes of its commits too).
    fn deferred<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        struct Undefer(Arc<MlsBackend>, Vec<u8>);
        impl Drop for Undefer {
            fn drop(&mut self) {
                self.0.storage().defer_message_secrets(&self.1, false);
            }
        }
        self.storage().defer_message_secrets(&self.partition, true);
        let _undefer = Undefer(self.provider.clone(), self.partition.clone());
        f(self)
    }

    /// Creates the group `group_id` (e.g. the portal's room URI) with `member` as its only member.
    pub fn create(
        provider: Arc<MlsBackend>,
        member: Arc<LocalMember>,
        config: &EngineConfig,
        group_id: &[u8],
    ) -> Pending<Self> {
        let gid = GroupId::from_slice(group_id);
        let created = MlsGroup::new_with_group_id(
            provider.as_ref(),
            member.signer(),
            &config.create_config(),
            gid.clone(),
            member.credential().clone(),
        );
        match created.map_err(lib).and_then(|g| Self::wrap(g, provider.clone(), member)) {
            Ok(mut g) => {
                let d = g.submit();
                Pending::new(g, d)
            }
            Err(e) => match MlsStorage::partition(&gid) {
                Ok(p) => Pending::from_result(Err(e), provider.storage().submit(&p)),
                Err(pe) => Pending::failed(pe.into()),
            },
        }
    }

    /// Loads the group `group_id` from storage (after a restart).
    pub fn load(provider: Arc<MlsBackend>, member: Arc<LocalMember>, group_id: &[u8]) -> Result<Self, MlsError> {
        let gid = GroupId::from_slice(group_id);
        let group = MlsGroup::load(provider.storage(), &gid)?
            .ok_or_else(|| MlsError::UnknownGroup(String::from_utf8_lossy(group_id).into_owned()))?;
        let partition = MlsStorage::partition(group.group_id())?;
        let record = provider.storage().group_record_get::<Reservation>(&partition, write_behind::RECORD)?;
        Self::open(group, provider, member, record)
    }

    /// Joins a group from a Welcome (MLSMessage) addressed to one of `member`'s KeyPackages. `ratchet_tree` is
    /// needed when the Welcome does not carry the tree.
    pub fn join_from_welcome(
        provider: Arc<MlsBackend>,
        member: Arc<LocalMember>,
        config: &EngineConfig,
        welcome: &[u8],
        ratchet_tree: Option<&[u8]>,
    ) -> Pending<Self> {
        let joined = (|| {
            let MlsMessageBodyIn::Welcome(welcome) = parse_message(welcome)? else {
                return Err(MlsError::Malformed("not a Welcome".into()));
            };
            // Parsed before the Welcome is processed: processing it consumes the KeyPackage.
            let tree = parse_tree(ratchet_tree)?;
            let processed = ProcessedWelcome::new_from_welcome(provider.as_ref(), &config.join_config(), welcome)
                .map_err(|e| MlsError::Welcome(e.to_string()))?;
            let info = processed.unverified_group_info();
            if let Some(t) = verified_signatures::tree_of_join(info.extensions().ratchet_tree(), ratchet_tree) {
                let alg = info.ciphersuite().signature_algorithm();
                verified_signatures::preverify_tree(alg, info.group_id().as_slice(), &t);
            }
            let staged =
                processed.into_staged_welcome(provider.as_ref(), tree).map_err(|e| MlsError::Welcome(e.to_string()))?;
            let group = staged.into_group(provider.as_ref()).map_err(|e| MlsError::Welcome(e.to_string()))?;
            Self::wrap(group, provider.clone(), member)
        })();
        match joined {
            Ok(mut g) => {
                let d = g.submit();
                Pending::new(g, d)
            }
            // The KeyPackage may have been consumed: persist that too.
            Err(e) => Pending::from_result(Err(e), provider.storage().submit_global()),
        }
    }

    /// (Re)joins a group by external commit from its GroupInfo (MLSMessage, as [`PortalGroup::export_group_info`]
    /// makes it) when the local state is lost or the bridge was removed. Any old state of the group in this
    /// member's storage is replaced. Returns the group, with the external commit pending, and the commit to send;
    /// call [`PortalGroup::merge_pending_commit`] once the hub accepted it.
    pub fn rejoin_by_external_commit(
        provider: Arc<MlsBackend>,
        member: Arc<LocalMember>,
        config: &EngineConfig,
        group_info: &[u8],
        ratchet_tree: Option<&[u8]>,
    ) -> Pending<(Self, Vec<u8>)> {
        let joined = (|| {
            let MlsMessageBodyIn::GroupInfo(info) = parse_message(group_info)? else {
                return Err(MlsError::Malformed("not a GroupInfo".into()));
            };
            // Old state of the group (we were removed, or it is stale): remove it, so no key of it lingers.
            let gid = info.group_id().clone();
            if let Some(mut old) = MlsGroup::load(provider.storage(), &gid)? {
                old.delete(provider.storage())?;
            }
            if let Some(t) = verified_signatures::tree_of_join(info.extensions().ratchet_tree(), ratchet_tree) {
                verified_signatures::preverify_tree(info.ciphersuite().signature_algorithm(), gid.as_slice(), &t);
            }
            let mut builder = MlsGroup::external_commit_builder().with_config(config.join_config());
            if let Some(tree) = parse_tree(ratchet_tree)? {
                builder = builder.with_ratchet_tree(tree);
            }
            let ext = |e: &dyn std::fmt::Display| MlsError::ExternalCommit(e.to_string());
            let (group, bundle) = builder
                .build_group(provider.as_ref(), info, member.credential().clone())
                .map_err(|e| ext(&e))?
                .leaf_node_parameters(LeafNodeParameters::default())
                .load_psks(provider.storage())
                .map_err(|e| ext(&e))?
                .build(provider.rand(), provider.crypto(), member.signer(), |_| true)
                .map_err(|e| ext(&e))?
                .finalize(provider.as_ref())
                .map_err(|e| ext(&e))?;
            let commit = to_bytes(&bundle.into_commit())?;
            Ok((Self::wrap(group, provider.clone(), member)?, commit))
        })();
        match joined {
            Ok((mut g, commit)) => {
                let d = g.submit();
                Pending::new((g, commit), d)
            }
            Err(e) => Pending::from_result(Err(e), provider.storage().submit_all()),
        }
    }

    /// The group id.
    pub fn group_id(&self) -> &[u8] {
        self.group.group_id().as_slice()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// False once the bridge's leaf was removed.
    pub fn is_active(&self) -> bool {
        self.group.is_active()
    }

    /// The local member.
    pub fn member(&self) -> &Arc<LocalMember> {
        &self.member
    }

    /// Our leaf index.
    pub fn own_index(&self) -> u32 {
        self.group.own_leaf_index().u32()
    }

    /// The number of members (counted once per epoch: cheap to ask).
    pub fn member_count(&self) -> usize {
        self.counted.1
    }

    /// The members, in leaf order.
    pub fn members(&self) -> Vec<GroupMember> {
        self.group
            .members()
            .map(|m| GroupMember { index: m.index.u32(), identity: m.credential.serialized_content().to_vec() })
            .collect()
    }

    /// The leaf index of the member whose credential identity is `identity`.
    pub fn member_index(&self, identity: &[u8]) -> Option<u32> {
        self.group.members().find(|m| m.credential.serialized_content() == identity).map(|m| m.index.u32())
    }

    /// Checks KeyPackages someone else published (MLSMessages or bare) before they are added together: each must
    /// parse, its signature and lifetime check, it must be of this group's ciphersuite, and its keys must be new
    /// (its signature and encryption keys in no member's leaf and no earlier KeyPackage of the list, its init key
    /// none of those and no earlier one's: what a commit of these adds would otherwise be refused for, RFC 9420
    /// §12.2). Per KeyPackage, the credential identity (a user's URI) it would add, or why it may not be added; a
    /// KeyPackage refused does not count against the ones after it.
    pub fn check_key_packages(&self, key_packages: &[&[u8]]) -> Vec<Result<Vec<u8>, MlsError>> {
        // HPKE keys compared in their TLS encoding (OpenMLS gives no other view of a leaf's encryption key); an
        // encryption key and an init key encode alike.
        fn hpke(key: &impl openmls::prelude::tls_codec::Serialize) -> Vec<u8> {
            key.tls_serialize_detached().unwrap_or_default()
        }
        let mut signature_keys: HashSet<Vec<u8>> = HashSet::new();
        let mut encryption_keys: HashSet<Vec<u8>> = HashSet::new();
        for m in self.group.members() {
            signature_keys.insert(m.signature_key);
            encryption_keys.insert(hpke(&openmls::treesync::EncryptionKey::from(m.encryption_key)));
        }
        let mut init_keys: HashSet<Vec<u8>> = HashSet::new();
        key_packages
            .iter()
            .map(|bytes| {
                let kp = parse_key_package(&self.provider, bytes)?;
                if kp.ciphersuite() != self.group.ciphersuite() {
                    return Err(MlsError::InvalidKeyPackage(format!(
                        "of ciphersuite {:?}, the group's is {:?}",
                        kp.ciphersuite(),
                        self.group.ciphersuite()
                    )));
                }
                let signature = kp.leaf_node().signature_key().as_slice().to_vec();
                let encryption = hpke(kp.leaf_node().encryption_key());
                let init = hpke(kp.hpke_init_key());
                let reused = signature_keys.contains(&signature)
                    || encryption_keys.contains(&encryption)
                    || init_keys.contains(&encryption)
                    || encryption_keys.contains(&init)
                    || init_keys.contains(&init)
                    || init == encryption;
                if reused {
                    return Err(MlsError::InvalidKeyPackage("a key of it is in the group or the list already".into()));
                }
                signature_keys.insert(signature);
                encryption_keys.insert(encryption);
                init_keys.insert(init);
                Ok(kp.leaf_node().credential().serialized_content().to_vec())
            })
            .collect()
    }

    /// A commit of this member's is pending: made, not yet merged or cleared.
    pub fn has_pending_commit(&self) -> bool {
        self.group.pending_commit().is_some()
    }

    /// Leaves other than ours that carry our identity: left behind when the bridge rejoined by external commit
    /// after losing its state (OpenMLS only replaces a leaf with the *same signature key*). Remove them with
    /// [`PortalGroup::remove_members`].
    pub fn stale_own_leaves(&self) -> Vec<u32> {
        let own = self.own_index();
        let me = self.member.uri().as_bytes();
        self.group
            .members()
            .filter(|m| m.index.u32() != own && m.credential.serialized_content() == me)
            .map(|m| m.index.u32())
            .collect()
    }

    /// The GroupInfo of the current epoch (MLSMessage), signed by us, with the ratchet tree inside if
    /// `with_ratchet_tree`. What an external joiner (or the bridge after a state loss) needs.
    pub fn export_group_info(&self, with_ratchet_tree: bool) -> Result<Vec<u8>, MlsError> {
        let info = self
            .group
            .export_group_info(self.provider.crypto(), self.member.signer(), with_ratchet_tree)
            .map_err(lib)?;
        to_bytes(&info)
    }

    /// The ratchet tree of the current epoch (TLS-encoded `ratchet_tree` extension data), to serve out of band.
    pub fn export_ratchet_tree(&self) -> Result<Vec<u8>, MlsError> {
        self.group.export_ratchet_tree().tls_serialize_detached().map_err(lib)
    }

    /// Refuses any change by a group object that is no longer the group's last one opened (the group was loaded,
    /// joined or created again since): its state is older than what the newer object may have written, and what
    /// it wrote would overwrite that.
    fn check_claim(&self) -> Result<(), MlsError> {
        if self.storage().may_write(&self.partition, self.claim) {
            Ok(())
        } else {
            Err(MlsError::GroupState("the group was opened again elsewhere; this copy is stale".into()))
        }
    }

    fn check_active(&self) -> Result<(), MlsError> {
        if self.group.is_active() { Ok(()) } else { Err(MlsError::GroupState("the bridge is not a member".into())) }
    }

    /// Before a commit: the member is in the group and has no commit pending (one the hub may have taken already:
    /// replacing it would leave its copy in the log unmerged).
    fn check_can_commit(&self) -> Result<(), MlsError> {
        self.check_claim()?;
        self.check_active()?;
        match self.group.pending_commit() {
            Some(_) => Err(MlsError::GroupState("a commit of ours is pending".into())),
            None => Ok(()),
        }
    }

    /// Encrypts an application message. The ciphertext (MLSMessage) is available once the ratchet state that
    /// produced it — or the reservation covering it ([`write_behind`]) — is durable.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Pending<Vec<u8>> {
        if let Err(e) = self.check_active() {
            return self.finish(Err(e));
        }
        if let Err(e) = self.check_claim() {
            return Pending::failed(e);
        }
        if let BeforeEncrypt::Burn(n) = self.write_behind.before_encrypt()
            && let Err(e) = self.burn(n)
        {
            return self.finish(Err(e));
        }
        if !self.write_behind.enabled() {
            let result = self.create_message(plaintext);
            return self.finish(result);
        }
        if self.write_behind.before_encrypt() == BeforeEncrypt::Reserve
            && let Err(e) = self.encode_secrets(Extend::Grow)
        {
            return self.finish(Err(e));
        }
        let result = self.deferred(|g| {
            g.write_behind.encrypted();
            g.create_message(plaintext)
        });
        // What this operation wrote (a new reservation), then the reservation the ciphertext rests on.
        let mut d = self.submit_deferred(false);
        if let Some(seq) = self.write_behind.reservation_seq() {
            d = d.and(self.storage().ticket_for(seq));
        }
        Pending::from_result(result, d)
    }

    fn create_message(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, MlsError> {
        let msg = self
            .group
            .create_message(self.provider.as_ref(), self.member.signer(), plaintext)
            .map_err(|e| MlsError::GroupState(e.to_string()))?;
        to_bytes(&msg)
    }

    /// Throws `n` generations away: after a crash, ciphertexts up to the reservation may be out there, made by a
    /// newer state than the one loaded ([`write_behind`]).
    fn burn(&mut self, n: u64) -> Result<(), MlsError> {
        tracing::info!(group = %hex::encode(self.group.group_id().as_slice()), generations = n,
            "skipping the generations reserved before an unclean stop");
        let (burnt, failed) = self.deferred(|g| {
            for i in 0..n {
                // A failed encrypt (e.g. proposals pending) did not advance the ratchet: stop and count the rest.
                if let Err(e) = g.group.create_message(g.provider.as_ref(), g.member.signer(), &[]) {
                    return (i, Some(e));
                }
            }
            (n, None)
        });
        self.write_behind.burnt(burnt);
        self.provider.count_skipped(burnt);
        match failed {
            None => Ok(()),
            Some(e) => Err(MlsError::GroupState(format!(
                "{} generations reserved before an unclean stop are still to skip: {e}",
                n - burnt
            ))),
        }
    }

    /// Seals what a deferred operation wrote besides the message secrets; ready at once when it wrote nothing
    /// (`wrote` false). When it did write (a reservation, a kept message), the handle covers everything sealed so
    /// far: another group's operation may have sealed this one's writes in the shared partition already.
    fn submit_deferred(&mut self, wrote: bool) -> Durability {
        let d = if wrote || self.record_written {
            self.storage().submit(&self.partition)
        } else {
            self.storage().submit_if_dirty(&self.partition)
        };
        if std::mem::take(&mut self.record_written) {
            self.write_behind.sealed(d.seq());
        }
        d
    }

    fn commit_output(
        &self,
        commit: MlsMessageOut,
        welcome: Option<MlsMessageOut>,
        info: Option<MlsMessageOut>,
    ) -> Result<CommitOutput, MlsError> {
        Ok(CommitOutput {
            commit: to_bytes(&commit)?,
            welcome: welcome.as_ref().map(to_bytes).transpose()?,
            group_info: info.as_ref().map(to_bytes).transpose()?,
        })
    }

    /// Commits adding the members of `key_packages` (MLSMessages or bare KeyPackages). The commit stays pending.
    ///
    /// The commit carries no update path (RFC 9420 §12.4 allows it for a commit of Adds only). A path would
    /// encrypt a path secret to the resolution of every node beside our own path — in a group seated in commits
    /// of adds, where few parent nodes are set, that is nearly every member: raw OpenMLS's add commit takes
    /// 0.54 s at 10 000 members, this one 62 ms (docs/benchmarks.md). Our own leaf's key is renewed by the
    /// periodic self-updates instead.
    pub fn add_members(&mut self, key_packages: &[&[u8]]) -> Pending<CommitOutput> {
        let result = (|| {
            if key_packages.is_empty() {
                return Err(MlsError::GroupState("an add of no one".into()));
            }
            let kps = key_packages
                .iter()
                .map(|b| parse_key_package(&self.provider, b))
                .collect::<Result<Vec<_>, MlsError>>()?;
            self.commit(|b| b.propose_adds(kps).force_self_update(false))
        })();
        self.finish(result)
    }

    /// Commits removing the members at `leaves`. The commit stays pending.
    pub fn remove_members(&mut self, leaves: &[u32]) -> Pending<CommitOutput> {
        let result = (|| {
            if leaves.is_empty() {
                return Err(MlsError::GroupState("a removal of no one".into()));
            }
            for l in leaves {
                if !self.group.members().any(|m| m.index.u32() == *l) {
                    return Err(MlsError::NoSuchMember(format!("leaf {l}")));
                }
            }
            let idx: Vec<LeafNodeIndex> = leaves.iter().map(|l| LeafNodeIndex::new(*l)).collect();
            self.commit(|b| b.propose_removals(idx))
        })();
        self.finish(result)
    }

    /// Makes our commit of what `propose` puts into OpenMLS's commit builder, left pending, with the GroupInfo of
    /// the new epoch, which carries no ratchet tree (whatever the group's stored configuration says: groups made
    /// before kept the tree in it).
    fn commit(
        &mut self,
        propose: impl FnOnce(CommitBuilder<'_, Initial>) -> CommitBuilder<'_, Initial>,
    ) -> Result<CommitOutput, MlsError> {
        self.check_can_commit()?;
        let gs = |e: &dyn std::fmt::Display| MlsError::GroupState(e.to_string());
        let (commit, welcome, info) = propose(self.group.commit_builder())
            .load_psks(self.provider.storage())
            .map_err(|e| gs(&e))?
            .create_group_info(true)
            .use_ratchet_tree_extension(false)
            .build(self.provider.rand(), self.provider.crypto(), self.member.signer(), |_| true)
            .map_err(|e| gs(&e))?
            .stage_commit(self.provider.as_ref())
            .map_err(|e| gs(&e))?
            .into_messages();
        self.commit_output(commit, welcome, info)
    }

    /// Commits a fresh leaf key for ourselves (post-compromise security). The commit stays pending.
    pub fn self_update(&mut self) -> Pending<CommitOutput> {
        let result =
            self.commit(|b| b.leaf_node_parameters(LeafNodeParameters::default()).consume_proposal_store(true));
        self.finish(result)
    }

    /// Merges our pending commit (the hub accepted it): the group moves to the next epoch.
    pub fn merge_pending_commit(&mut self) -> Pending<()> {
        if let Err(e) = self.check_claim() {
            return Pending::failed(e);
        }
        let result =
            self.group.merge_pending_commit(self.provider.as_ref()).map_err(|e| MlsError::GroupState(e.to_string()));
        self.finish(result)
    }

    /// Drops our pending commit (the hub refused it, e.g. another commit won the epoch).
    pub fn clear_pending_commit(&mut self) -> Pending<()> {
        if let Err(e) = self.check_claim() {
            return Pending::failed(e);
        }
        let result = self.group.clear_pending_commit(self.provider.storage()).map_err(MlsError::from);
        self.finish(result)
    }

    /// Processes an incoming MLSMessage (application message, proposal or commit).
    ///
    /// Refusals come back as typed errors ([`MlsError::is_refusal`]); a commit that removes the bridge is merged
    /// (the group becomes inactive) and reported as [`MlsError::Removed`].
    pub fn process(&mut self, message: &[u8]) -> Pending<Received> {
        let (result, deferred) = self.process_inner(message);
        if let Err(e) = &result {
            self.log_refused(e);
        }
        self.finish_process(result, deferred, false)
    }

    /// Seals what processing wrote: an application message deferred its message secrets ([`write_behind`]) and
    /// waits only for what it did write (a kept message, an encoding due every so many messages).
    /// `kept`: the operation wrote a kept message.
    fn finish_process(&mut self, result: Result<Received, MlsError>, deferred: bool, kept: bool) -> Pending<Received> {
        if !deferred {
            return self.finish(result);
        }
        if self.write_behind.decrypted(Instant::now())
            && let Err(e) = self.encode_secrets(Extend::Keep)
        {
            tracing::warn!(error = %e, "message secrets not encoded");
        }
        let d = self.submit_deferred(kept);
        Pending::from_result(result, d)
    }

    fn log_refused(&self, e: &MlsError) {
        tracing::warn!(
            group = %hex::encode(self.group.group_id().as_slice()),
            epoch = self.epoch(),
            kind = e.kind(),
            error = %e,
            "MLS message refused"
        );
    }

    /// Processes `message`; true with it if it was an application message, whose writes were deferred.
    fn process_inner(&mut self, message: &[u8]) -> (Result<Received, MlsError>, bool) {
        if let Err(e) = self.check_claim() {
            return (Err(e), false);
        }
        let protocol: ProtocolMessage = match parse_message(message) {
            Ok(MlsMessageBodyIn::PublicMessage(m)) => m.into(),
            Ok(MlsMessageBodyIn::PrivateMessage(m)) => m.into(),
            Ok(_) => return (Err(MlsError::Malformed("not an application or handshake message".into())), false),
            Err(e) => return (Err(e), false),
        };
        if self.write_behind.enabled() && protocol.content_type() == ContentType::Application {
            if protocol.epoch().as_u64() != self.epoch() {
                // Decrypted (or refused) with a past epoch's secrets.
                self.past_epochs_unchanged = false;
            }
            (self.deferred(|g| g.process_protocol(protocol)), true)
        } else {
            (self.process_protocol(protocol), false)
        }
    }

    fn process_protocol(&mut self, protocol: ProtocolMessage) -> Result<Received, MlsError> {
        self.check_active()?;
        let message_epoch = protocol.epoch().as_u64();
        let group_epoch = self.epoch();
        let processed = self
            .group
            .process_message(self.provider.as_ref(), protocol)
            .map_err(|e| MlsError::from_process(e, message_epoch, group_epoch))?;
        let sender = match processed.sender() {
            Sender::Member(i) => Some(i.u32()),
            _ => None,
        };
        let sender_identity = processed.credential().serialized_content().to_vec();
        let epoch = processed.epoch().as_u64();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Ok(Received::Application {
                sender: sender.ok_or_else(|| MlsError::NotAMember("application message from a non-member".into()))?,
                sender_identity,
                epoch,
                plaintext: app.into_bytes(),
            }),
            ProcessedMessageContent::OwnPrivateMessage => Ok(Received::Own),
            // Our own commit, sequenced by the hub but not merged here (the process stopped in between, or the
            // merge failed): merge it now, or the group stays an epoch behind for good.
            ProcessedMessageContent::OwnPendingCommit => {
                self.group
                    .merge_pending_commit(self.provider.as_ref())
                    .map_err(|e| MlsError::GroupState(e.to_string()))?;
                Ok(Received::Commit { epoch: self.epoch(), added: Vec::new(), removed: Vec::new() })
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                self.group.store_pending_proposal(self.provider.storage(), *p)?;
                Ok(Received::Proposal { sender })
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(p) => {
                self.group.store_pending_proposal(self.provider.storage(), *p)?;
                Ok(Received::Proposal { sender })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let removed_self = staged.self_removed();
                let added = staged
                    .add_proposals()
                    .map(|p| p.add_proposal().key_package().leaf_node().credential().serialized_content().to_vec())
                    .collect();
                let removed = staged.remove_proposals().map(|p| p.remove_proposal().removed().u32()).collect();
                self.group
                    .merge_staged_commit(self.provider.as_ref(), *staged)
                    .map_err(|e| MlsError::InvalidHandshake(e.to_string()))?;
                if removed_self {
                    return Err(MlsError::Removed { epoch: self.epoch() });
                }
                Ok(Received::Commit { epoch: self.epoch(), added, removed })
            }
        }
    }

    /// Processes `message`, log entry `seq`, like [`PortalGroup::process`]; an application message is also added
    /// to the kept list `list` **in the same atomic batch as the state change that decrypted it**, so a crash after
    /// the decryption cannot lose the plaintext (the ratchet will not decrypt it twice). Entries of the list up to
    /// `handed_on` (those the caller has handed on for good) are dropped from it on the way.
    pub fn process_and_keep(&mut self, message: &[u8], seq: u64, list: &[u8], handed_on: u64) -> Pending<Received> {
        let (result, deferred) = self.process_inner(message);
        let kept = matches!(result, Ok(Received::Application { .. }));
        match &result {
            Ok(Received::Application { sender_identity, plaintext, .. }) => {
                let kept = self.storage_record::<Vec<KeptMessage>>(list).and_then(|old| {
                    let mut kept: Vec<KeptMessage> = old.unwrap_or_default();
                    kept.retain(|k| k.seq > handed_on);
                    kept.push(KeptMessage {
                        seq,
                        sender_identity: sender_identity.clone(),
                        plaintext: plaintext.clone(),
                    });
                    self.put_storage_record(list, &kept)
                });
                if let Err(e) = kept {
                    tracing::warn!(error = %e, seq, "a decrypted message could not be kept for a crash");
                }
            }
            Ok(_) => {}
            Err(e) => self.log_refused(e),
        }
        self.finish_process(result, deferred, kept)
    }

    /// The kept list `list` (see [`PortalGroup::process_and_keep`]), oldest first.
    pub fn kept_messages(&self, list: &[u8]) -> Result<Vec<KeptMessage>, MlsError> {
        Ok(self.storage_record(list)?.unwrap_or_default())
    }

    /// Reads one of the engine's own records in this member's storage.
    pub fn storage_record<V: serde::de::DeserializeOwned>(&self, name: &[u8]) -> Result<Option<V>, MlsError> {
        Ok(self.storage().app_get(name)?)
    }

    /// Writes one of the engine's own records in this member's storage; it goes into the batch of this member's
    /// next operation.
    pub fn put_storage_record<V: serde::Serialize>(&self, name: &[u8], value: &V) -> Result<(), MlsError> {
        self.check_claim()?;
        Ok(self.storage().app_put(name, value)?)
    }

    /// Deletes this member's state of the group (after it was removed, or to forget a group for good).
    pub fn delete(mut self) -> Pending<()> {
        if let Err(e) = self.check_claim() {
            return Pending::failed(e);
        }
        self.write_behind.forget();
        self.storage().group_record_delete(&self.partition, write_behind::RECORD);
        let result = self.group.delete(self.provider.storage()).map_err(MlsError::from);
        self.storage().take_secrets_encoded(&self.partition);
        self.finish(result)
    }

    /// Encodes the message secrets that deferred operations left behind ([`write_behind`]) and reserves nothing
    /// beyond what was sent: a copy of the group loaded from the store after this — with nothing sent or received
    /// by this object in between — burns no generation and decrypts nothing twice. What a close does (and a drop,
    /// unless the group was opened again since); call it before the group is opened again while this object is
    /// still alive, as its drop then writes nothing. Sealed with the storage's next operations; ready at once
    /// when there was nothing to encode.
    pub fn flush(&mut self) -> Pending<()> {
        let dirty = self.write_behind.behind() > 0 || self.write_behind.reserved_ahead();
        if !dirty || !self.group.is_active() {
            return Pending::from_result(Ok(()), Durability::ready());
        }
        // Opened again since: nothing of this copy may be written.
        if let Err(e) = self.check_claim() {
            return Pending::failed(e);
        }
        match self.encode_secrets(Extend::Shrink) {
            Ok(()) => {
                let d = self.submit();
                Pending::from_result(Ok(()), d)
            }
            Err(e) => {
                tracing::warn!(error = %e, "message secrets not encoded when the group was closed");
                Pending::failed(e)
            }
        }
    }

    /// Bytes of MLS state this member's storage holds in memory (all its groups).
    pub fn cached_state_bytes(&self) -> usize {
        self.storage().cached_bytes()
    }
}

impl Drop for PortalGroup {
    /// [`PortalGroup::flush`]es what deferred operations left behind, so that the store holds the group's state
    /// after a clean stop (a restart then burns no generation and decrypts nothing twice). Not when the group
    /// was opened again since (its state is the new object's now: `flush` checks that).
    fn drop(&mut self) {
        // Sealed, not waited for: handed off with the storage's next wait, or when it is dropped.
        drop(self.flush());
        self.storage().release_claim(&self.partition, self.claim);
    }
}
