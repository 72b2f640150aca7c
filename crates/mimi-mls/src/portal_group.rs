//! [`PortalGroup`]: the MLS group of one portal, seen from one local member.
//!
//! Every mutating operation runs OpenMLS synchronously, then submits the group's dirty state as one atomic batch
//! and returns a [`Pending`]: its output (ciphertext, commit, Welcome, decrypted message, or error) is handed out
//! only once that batch is durable. Refused incoming messages go through the same path, because OpenMLS may have
//! consumed ratchet state while refusing them and the durable state must follow the in-memory one.
//!
//! Commits from others are merged as soon as they are processed (the hub has already sequenced them). The
//! bridge's own commits stay *pending* until the caller knows the hub accepted them:
//! [`PortalGroup::merge_pending_commit`] or [`PortalGroup::clear_pending_commit`].

use super::backend::{MlsBackend, Pending};
use super::config::EngineConfig;
use super::error::MlsError;
use super::member::LocalMember;
use super::storage::{Durability, MlsStorage};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    GroupId, KeyPackage, KeyPackageIn, LeafNodeIndex, LeafNodeParameters, MlsGroup, MlsMessageBodyIn, MlsMessageIn,
    MlsMessageOut, ProcessedMessageContent, ProtocolMessage, ProtocolVersion, RatchetTreeIn, Sender, StagedWelcome,
};
use openmls_traits::OpenMlsProvider;
use std::sync::Arc;

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
    fn wrap(group: MlsGroup, provider: Arc<MlsBackend>, member: Arc<LocalMember>) -> Result<Self, MlsError> {
        let partition = MlsStorage::partition(group.group_id())?;
        Ok(Self { group, provider, member, partition })
    }

    fn storage(&self) -> &MlsStorage {
        self.provider.storage()
    }

    fn submit(&self) -> Durability {
        self.storage().submit(&self.partition)
    }

    /// Submits the group's writes and packs `result` with their durability.
    fn finish<T>(&self, result: Result<T, MlsError>) -> Pending<T> {
        Pending::from_result(result, self.submit())
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
        let durability = match MlsStorage::partition(&gid) {
            Ok(p) => provider.storage().submit(&p),
            Err(e) => return Pending::failed(e.into()),
        };
        let result = created.map_err(lib).and_then(|g| Self::wrap(g, provider.clone(), member));
        Pending::from_result(result, durability)
    }

    /// Loads the group `group_id` from storage (after a restart).
    pub fn load(provider: Arc<MlsBackend>, member: Arc<LocalMember>, group_id: &[u8]) -> Result<Self, MlsError> {
        let gid = GroupId::from_slice(group_id);
        let group = MlsGroup::load(provider.storage(), &gid)?
            .ok_or_else(|| MlsError::UnknownGroup(String::from_utf8_lossy(group_id).into_owned()))?;
        Self::wrap(group, provider, member)
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
            let tree = parse_tree(ratchet_tree)?;
            let staged = StagedWelcome::new_from_welcome(provider.as_ref(), &config.join_config(), welcome, tree)
                .map_err(|e| MlsError::Welcome(e.to_string()))?;
            let group = staged.into_group(provider.as_ref()).map_err(|e| MlsError::Welcome(e.to_string()))?;
            Self::wrap(group, provider.clone(), member)
        })();
        match joined {
            Ok(g) => {
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
            Ok((g, commit)) => {
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

    fn check_active(&self) -> Result<(), MlsError> {
        if self.group.is_active() { Ok(()) } else { Err(MlsError::GroupState("the bridge is not a member".into())) }
    }

    /// Encrypts an application message. The ciphertext (MLSMessage) is available once the ratchet state that
    /// produced it is durable.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Pending<Vec<u8>> {
        let result = self.check_active().and_then(|()| {
            let msg = self
                .group
                .create_message(self.provider.as_ref(), self.member.signer(), plaintext)
                .map_err(|e| MlsError::GroupState(e.to_string()))?;
            to_bytes(&msg)
        });
        self.finish(result)
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
    pub fn add_members(&mut self, key_packages: &[&[u8]]) -> Pending<CommitOutput> {
        let result = (|| {
            self.check_active()?;
            let kps = key_packages
                .iter()
                .map(|b| parse_key_package(&self.provider, b))
                .collect::<Result<Vec<_>, MlsError>>()?;
            let (commit, welcome, info) = self
                .group
                .add_members(self.provider.as_ref(), self.member.signer(), &kps)
                .map_err(|e| MlsError::GroupState(e.to_string()))?;
            self.commit_output(commit, Some(welcome), info.map(MlsMessageOut::from))
        })();
        self.finish(result)
    }

    /// Commits removing the members at `leaves`. The commit stays pending.
    pub fn remove_members(&mut self, leaves: &[u32]) -> Pending<CommitOutput> {
        let result = (|| {
            self.check_active()?;
            for l in leaves {
                if !self.group.members().any(|m| m.index.u32() == *l) {
                    return Err(MlsError::NoSuchMember(format!("leaf {l}")));
                }
            }
            let idx: Vec<LeafNodeIndex> = leaves.iter().map(|l| LeafNodeIndex::new(*l)).collect();
            let (commit, welcome, info) = self
                .group
                .remove_members(self.provider.as_ref(), self.member.signer(), &idx)
                .map_err(|e| MlsError::GroupState(e.to_string()))?;
            self.commit_output(commit, welcome, info.map(MlsMessageOut::from))
        })();
        self.finish(result)
    }

    /// Commits a fresh leaf key for ourselves (post-compromise security). The commit stays pending.
    pub fn self_update(&mut self) -> Pending<CommitOutput> {
        let result = (|| {
            self.check_active()?;
            let bundle = self
                .group
                .self_update(self.provider.as_ref(), self.member.signer(), LeafNodeParameters::default())
                .map_err(|e| MlsError::GroupState(e.to_string()))?;
            let (commit, welcome, info) = bundle.into_messages();
            self.commit_output(commit, welcome, info)
        })();
        self.finish(result)
    }

    /// Merges our pending commit (the hub accepted it): the group moves to the next epoch.
    pub fn merge_pending_commit(&mut self) -> Pending<()> {
        let result =
            self.group.merge_pending_commit(self.provider.as_ref()).map_err(|e| MlsError::GroupState(e.to_string()));
        self.finish(result)
    }

    /// Drops our pending commit (the hub refused it, e.g. another commit won the epoch).
    pub fn clear_pending_commit(&mut self) -> Pending<()> {
        let result = self.group.clear_pending_commit(self.provider.storage()).map_err(MlsError::from);
        self.finish(result)
    }

    /// Processes an incoming MLSMessage (application message, proposal or commit).
    ///
    /// Refusals come back as typed errors ([`MlsError::is_refusal`]); a commit that removes the bridge is merged
    /// (the group becomes inactive) and reported as [`MlsError::Removed`].
    pub fn process(&mut self, message: &[u8]) -> Pending<Received> {
        let result = self.process_inner(message);
        if let Err(e) = &result {
            self.log_refused(e);
        }
        self.finish(result)
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

    fn process_inner(&mut self, message: &[u8]) -> Result<Received, MlsError> {
        let protocol: ProtocolMessage = match parse_message(message)? {
            MlsMessageBodyIn::PublicMessage(m) => m.into(),
            MlsMessageBodyIn::PrivateMessage(m) => m.into(),
            _ => return Err(MlsError::Malformed("not an application or handshake message".into())),
        };
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
        let result = self.process_inner(message);
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
        self.finish(result)
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
        Ok(self.storage().app_put(name, value)?)
    }

    /// Deletes this member's state of the group (after it was removed, or to forget a group for good).
    pub fn delete(mut self) -> Pending<()> {
        let result = self.group.delete(self.provider.storage()).map_err(MlsError::from);
        self.finish(result)
    }

    /// Bytes of MLS state this member's storage holds in memory (all its groups).
    pub fn cached_state_bytes(&self) -> usize {
        self.storage().cached_bytes()
    }
}
