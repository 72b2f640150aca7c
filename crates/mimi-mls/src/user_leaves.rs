//! Per-user leaves (`mls_identity = "per-user"`, design §4): in a portal that opts in, each *active* legacy user
//! gets an MLS leaf of their own, whose basic credential is that user's MIMI URI, so native clients see real
//! members instead of "alice (IRC)" behind the bridge's shared leaf.
//!
//! * **Lazily added**: [`UserLeaves::add`] when a user without a leaf first speaks, or [`UserLeaves::add_many`]
//!   for several new speakers in one commit (at most [`LeafPolicy::add_batch`]). The *bridge's* leaf commits
//!   the add (a user leaf commits only its own key updates); once the hub accepted that commit,
//!   [`UserLeaves::complete`] merges it, lets the other local leaves process it and joins the new leaves from the
//!   Welcome. A user's messages are then encrypted by [`UserLeaves::group_mut`].
//! * **Removed when idle**: [`UserLeaves::idle`] lists leaves silent for longer than
//!   [`LeafPolicy::idle_after`]; [`UserLeaves::remove`] commits their removal in one commit.
//! * **Capped**: at most [`LeafPolicy::max_leaves`] per portal. At the cap, [`UserLeaves::add`] answers
//!   [`AddLeaf::Full`] and the caller sends from the shared leaf with the [`super::LegacySender`] extension.
//!
//! Every local leaf is a full MLS member: **every commit of the group is processed once per local leaf**
//! ([`UserLeaves::process_handshake`]), which is what per-user leaves cost (the `leaves_process` benchmark).
//! Leaves need not see application messages (their secret tree is derived lazily), so only handshakes are fed.
//! The bridge's own leaf still decrypts everything; a message whose sender identity is a local leaf's
//! ([`UserLeaves::contains`]) is the bridge's own, echoed by the hub, and is not bridged again.
//!
//! Each leaf has a storage namespace of its own per portal (`leaf/<portal>/<uri>`: leaves in the same group
//! must not share keys, and one storage exists per namespace). The list of a portal's leaves is an engine record
//! in the bridge's storage, written in the same batch as the bridge's merge of the commit, so that
//! [`UserLeaves::open`] finds them again after a restart (a leaf a native member removed meanwhile is skipped).
//! When each leaf last spoke is saved by the periodic sweep, so the idle clock survives restarts (to within one
//! sweep). The portals use them through `provider::room` (`room/leaves.rs`);
//! a leaf commits only its own key updates ([`UserLeaves::update`], driven by `room/keys.rs`).

use super::backend::{MlsBackend, Pending};
use super::config::EngineConfig;
use super::error::MlsError;
use super::member::LocalMember;
use super::portal_group::{CommitOutput, PortalGroup, Received};
use super::storage::Durability;
use mimi_store::Store;
use openmls::prelude::SignatureScheme;
use sha2::Digest as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits of per-user leaves in one portal.
#[derive(Debug, Clone)]
pub struct LeafPolicy {
    /// A leaf silent for longer than this is removed (by the caller's periodic [`UserLeaves::idle`] sweep).
    /// Default: one hour.
    pub idle_after: Duration,
    /// Most per-user leaves in one portal. Default: 100.
    pub max_leaves: usize,
    /// Most leaves one commit of the bridge adds ([`UserLeaves::add_many`]). With 1, the caller adds a new
    /// speaker's leaf before their first message (which then comes from that leaf); with more, the caller sends
    /// new speakers' first messages from the shared leaf and adds their leaves together. Default:
    /// [`DEFAULT_ADD_BATCH`].
    pub add_batch: usize,
}

/// Default of [`LeafPolicy::add_batch`].
pub const DEFAULT_ADD_BATCH: usize = 32;

impl Default for LeafPolicy {
    fn default() -> Self {
        Self { idle_after: Duration::from_secs(3600), max_leaves: 100, add_batch: DEFAULT_ADD_BATCH }
    }
}

/// A membership change of the per-user leaves, committed by the bridge's leaf and not merged yet.
///
/// Send [`LeafChange::commit`] to the hub; then call [`UserLeaves::complete`] if the hub accepted it, or
/// [`UserLeaves::abandon`] if it did not.
#[derive(Debug)]
#[must_use = "complete or abandon the change once the hub answered"]
pub struct LeafChange {
    /// The bridge's commit (and Welcome for an added leaf).
    pub commit: CommitOutput,
    /// The users whose leaves are added.
    pub added: Vec<String>,
    /// The users whose leaves are removed.
    pub removed: Vec<String>,
}

/// What [`UserLeaves::add`] did.
#[derive(Debug)]
pub enum AddLeaf {
    /// The bridge committed the add (durable once the [`Pending`] resolves).
    Committed(Pending<LeafChange>),
    /// The user already has a leaf: nothing to do.
    Present,
    /// The portal is at [`LeafPolicy::max_leaves`]: send from the shared leaf instead.
    Full,
}

/// One local member (signature key, storage namespace), kept for the life of the [`UserLeaves`].
#[derive(Clone)]
struct Identity {
    provider: Arc<MlsBackend>,
    member: Arc<LocalMember>,
}

struct Leaf {
    group: PortalGroup,
    last_active: Instant,
}

/// The list of a portal's leaves, as stored, with when each was last active (UNIX seconds; written by
/// [`UserLeaves::save_activity`], so the idle clock survives restarts to within one sweep).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct LeavesRecord {
    uris: Vec<String>,
    #[serde(default)]
    active: BTreeMap<String, u64>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The per-user leaves of one portal. See the module documentation.
pub struct UserLeaves {
    store: Store,
    config: EngineConfig,
    policy: LeafPolicy,
    group_id: Vec<u8>,
    /// Short stable name of the portal's group in namespaces and record names.
    portal: String,
    identities: HashMap<String, Identity>,
    leaves: BTreeMap<String, Leaf>,
    /// The leaves being added (identities and KeyPackages made, commit pending).
    adding: Vec<String>,
    /// A leaf spoke since the activity was last saved.
    activity_unsaved: bool,
    /// Members found at [`UserLeaves::open`] whose leaves never joined ([`UserLeaves::take_orphans`]).
    orphans: Vec<String>,
}

impl std::fmt::Debug for UserLeaves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserLeaves")
            .field("portal", &self.portal)
            .field("leaves", &self.leaves.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl UserLeaves {
    /// The per-user leaves of the portal whose group `bridge` is (the bridge's leaf in it), loading those that
    /// exist from `store`.
    pub fn open(
        store: Store,
        config: EngineConfig,
        policy: LeafPolicy,
        bridge: &PortalGroup,
    ) -> Result<Self, MlsError> {
        let group_id = bridge.group_id().to_vec();
        let portal = hex::encode(&sha2::Sha256::digest(&group_id)[..8]);
        let mut me = Self {
            store,
            config,
            policy,
            group_id,
            portal,
            identities: HashMap::new(),
            leaves: BTreeMap::new(),
            adding: Vec::new(),
            activity_unsaved: false,
            orphans: Vec::new(),
        };
        let record: LeavesRecord = bridge.storage_record(&me.record_name())?.unwrap_or_default();
        let (now, unix) = (Instant::now(), unix_now());
        for uri in record.uris {
            // A leaf last active N seconds ago (as saved) is that much closer to its idle removal.
            let silent = Duration::from_secs(unix.saturating_sub(record.active.get(&uri).copied().unwrap_or(unix)));
            let last_active = now.checked_sub(silent).unwrap_or(now);
            // Listed leaves have their signature key stored already: nothing new to wait for.
            let (id, _) = me.identity(&uri)?;
            match PortalGroup::load(id.provider, id.member, &me.group_id) {
                Ok(group) => {
                    me.leaves.insert(uri, Leaf { group, last_active });
                }
                // Removed by a native member's commit (its state was deleted then, the list is rewritten with the
                // next change of leaves): not a leaf any more.
                // Still a member: its add was merged but the leaf never joined (a stop in between); the caller
                // removes the member nobody owns ([`UserLeaves::take_orphans`]).
                Err(MlsError::UnknownGroup(_)) if bridge.member_index(uri.as_bytes()).is_some() => {
                    tracing::warn!(user = %uri, "a listed per-user leaf never joined: its member is removed");
                    me.orphans.push(uri);
                }
                Err(MlsError::UnknownGroup(_)) => {
                    tracing::info!(user = %uri, "a listed per-user leaf has no group state: it was removed");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(me)
    }

    fn record_name(&self) -> Vec<u8> {
        format!("leaves/{}", self.portal).into_bytes()
    }

    /// The identity (storage namespace, signature key) of `uri`'s leaf in this portal, made on first use; the
    /// durability is that of a newly made signature key.
    fn identity(&mut self, uri: &str) -> Result<(Identity, Durability), MlsError> {
        if let Some(id) = self.identities.get(uri) {
            return Ok((id.clone(), Durability::ready()));
        }
        let provider = Arc::new(MlsBackend::new(self.store.clone(), &format!("leaf/{}/{uri}", self.portal))?);
        let scheme: SignatureScheme = self.config.ciphersuite().signature_algorithm();
        let (member, durability) = LocalMember::load_or_create(&provider, uri, scheme)?.into_parts();
        let id = Identity { provider, member: Arc::new(member?) };
        self.identities.insert(uri.to_owned(), id.clone());
        Ok((id, durability))
    }

    /// The users listed as leaves at [`UserLeaves::open`] who are members of the group without a leaf (their add
    /// was merged, and the process stopped before the leaf joined): their members should be removed.
    pub fn take_orphans(&mut self) -> Vec<String> {
        std::mem::take(&mut self.orphans)
    }

    /// The policy.
    pub fn policy(&self) -> &LeafPolicy {
        &self.policy
    }

    /// Number of per-user leaves.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// True if there is none.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The users with a leaf, in URI order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.leaves.keys().map(String::as_str)
    }

    /// True if `uri` has a leaf.
    pub fn contains(&self, uri: &str) -> bool {
        self.leaves.contains_key(uri)
    }

    /// The group as `uri`'s leaf sees it, to encrypt that user's message; marks the leaf active at `now`.
    pub fn group_mut(&mut self, uri: &str, now: Instant) -> Option<&mut PortalGroup> {
        let leaf = self.leaves.get_mut(uri)?;
        leaf.last_active = now;
        self.activity_unsaved = true;
        Some(&mut leaf.group)
    }

    /// Commits, from the bridge's leaf, the add of a leaf for `uri` (basic credential = `uri`). The commit stays
    /// pending on `bridge`; only one change can be pending at a time.
    pub fn add(&mut self, bridge: &mut PortalGroup, uri: &str) -> Result<AddLeaf, MlsError> {
        self.add_many(bridge, &[uri])
    }

    /// Commits, from the bridge's leaf, the add of leaves for the users of `uris` that have none, in one commit
    /// (at most [`LeafPolicy::add_batch`] of them, and no more than the cap leaves room for: the change's
    /// [`LeafChange::added`] lists who is in it). [`AddLeaf::Present`] if they all have a leaf, [`AddLeaf::Full`] if
    /// the portal is at its cap. The commit stays pending on `bridge`; only one change can be pending at a time.
    pub fn add_many(&mut self, bridge: &mut PortalGroup, uris: &[&str]) -> Result<AddLeaf, MlsError> {
        if let Some(other) = self.adding.first() {
            return Err(MlsError::GroupState(format!("the add of {other:?}'s leaf is still pending")));
        }
        let mut seen = std::collections::HashSet::new();
        let mut new: Vec<&str> =
            uris.iter().copied().filter(|u| !self.leaves.contains_key(*u) && seen.insert(*u)).collect();
        if new.is_empty() {
            return Ok(AddLeaf::Present);
        }
        let room = self.policy.max_leaves.saturating_sub(self.leaves.len()).min(self.policy.add_batch.max(1));
        if room == 0 {
            return Ok(AddLeaf::Full);
        }
        new.truncate(room);
        let mut durability = Durability::ready();
        let mut kps = Vec::with_capacity(new.len());
        for uri in &new {
            let (id, made) = self.identity(uri)?;
            // The KeyPackage's private keys go into the leaf's storage: the commit waits for them too.
            let (kp, kp_durable) =
                super::key_packages::generate(&id.provider, &id.member, &self.config, 1, false).into_parts();
            kps.push(kp?.into_iter().next().ok_or_else(|| MlsError::Library("no KeyPackage generated".into()))?);
            durability = durability.and(made).and(kp_durable);
        }
        let added: Vec<String> = new.iter().map(|u| (*u).to_owned()).collect();
        self.adding = added.clone();
        let refs: Vec<&[u8]> = kps.iter().map(|k| k.as_slice()).collect();
        let commit = bridge.add_members(&refs).map(|commit| LeafChange { commit, added, removed: vec![] });
        Ok(AddLeaf::Committed(commit.and_durable(durability)))
    }

    /// The stored form of the list of leaves and their activity.
    fn record(&self) -> LeavesRecord {
        let (now, unix) = (Instant::now(), unix_now());
        let active = self
            .leaves
            .iter()
            .map(|(u, l)| (u.clone(), unix.saturating_sub(now.saturating_duration_since(l.last_active).as_secs())))
            .collect();
        LeavesRecord { uris: self.leaves.keys().cloned().collect(), active }
    }

    /// Saves when each leaf was last active, if a leaf spoke since the last save, into the bridge's storage (it
    /// goes to disk with the bridge's next operation). Called by the periodic sweep, not per message.
    pub fn save_activity(&mut self, bridge: &PortalGroup) -> Result<(), MlsError> {
        if std::mem::take(&mut self.activity_unsaved) {
            bridge.put_storage_record(&self.record_name(), &self.record())?;
        }
        Ok(())
    }

    /// The users whose leaves were silent for longer than [`LeafPolicy::idle_after`] at `now`.
    pub fn idle(&self, now: Instant) -> Vec<String> {
        self.leaves
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_active) > self.policy.idle_after)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Commits, from the bridge's leaf, the removal of the leaves of `users` (one commit). The commit stays pending
    /// on `bridge`.
    pub fn remove(&mut self, bridge: &mut PortalGroup, users: &[String]) -> Pending<LeafChange> {
        let mut leaves = Vec::with_capacity(users.len());
        for u in users {
            let Some(leaf) = self.leaves.get(u) else {
                return Pending::failed(MlsError::NoSuchMember(u.clone()));
            };
            leaves.push(leaf.group.own_index());
        }
        let removed = users.to_vec();
        bridge.remove_members(&leaves).map(|commit| LeafChange { commit, added: Vec::new(), removed })
    }

    /// The hub accepted `change`: the bridge merges its commit, the other local leaves process it, added leaves
    /// join from the Welcome, removed leaves' state is deleted, and the list of leaves is updated — all durable
    /// when the result resolves. `now` starts the new leaves' idle clock. The result lists the added users whose
    /// leaf could not join (the bridge merged their add all the same: their slots in the group have no owner).
    pub fn complete(&mut self, bridge: &mut PortalGroup, change: LeafChange, now: Instant) -> Pending<Vec<String>> {
        let LeafChange { commit, added, removed } = change;
        // The local leaves that stay process the commit (removed ones learn their removal, then are deleted).
        let mut durability = self.feed(&commit.commit, Some(&removed));
        for u in &removed {
            if let Some(leaf) = self.leaves.remove(u) {
                let (_, d) = leaf.group.delete().into_parts();
                durability = durability.and(d);
            }
        }
        self.adding.clear();
        // The list of leaves goes into the bridge's batch with its merge, naming the added users already: the leaf
        // of one whose join fails below has no group state, so reading the list skips it, and the next change of
        // leaves drops it.
        let mut record = self.record();
        let unix = unix_now();
        for uri in &added {
            record.uris.push(uri.clone());
            record.active.insert(uri.clone(), unix);
        }
        if let Err(e) = bridge.put_storage_record(&self.record_name(), &record) {
            return Pending::failed(e);
        }
        let (merged, d) = bridge.merge_pending_commit().into_parts();
        durability = durability.and(d);
        if let Err(e) = merged {
            return Pending::from_result(Err(e), durability);
        }
        // Welcomes carry no ratchet tree (it is served out of band): the new leaves take the bridge's, of the
        // epoch the commit made.
        let tree = match added.is_empty() {
            true => None,
            false => match bridge.export_ratchet_tree() {
                Ok(tree) => Some(tree),
                Err(e) => return Pending::from_result(Err(e), durability),
            },
        };
        let mut failed = Vec::new();
        for uri in added {
            let joined = match (self.identity(&uri), commit.welcome.as_deref()) {
                (Ok((id, made)), Some(welcome)) => {
                    durability = durability.and(made);
                    let (r, d) =
                        PortalGroup::join_from_welcome(id.provider, id.member, &self.config, welcome, tree.as_deref())
                            .into_parts();
                    durability = durability.and(d);
                    r
                }
                (Err(e), _) => Err(e),
                (_, None) => Err(MlsError::Welcome("the add commit has no Welcome".into())),
            };
            match joined {
                Ok(group) => {
                    self.leaves.insert(uri, Leaf { group, last_active: now });
                }
                Err(e) => {
                    tracing::warn!(user = %uri, error = %e, "a per-user leaf could not join from the bridge's Welcome");
                    failed.push(uri);
                }
            }
        }
        Pending::from_result(Ok(failed), durability)
    }

    /// The hub refused `change` (another commit won the epoch): the bridge drops its pending commit. Retry the
    /// change after processing the winning commit.
    pub fn abandon(&mut self, bridge: &mut PortalGroup, change: LeafChange) -> Pending<()> {
        if !change.added.is_empty() {
            self.adding.clear();
        }
        bridge.clear_pending_commit()
    }

    /// Commits, from `uri`'s own leaf, a fresh leaf key for it (post-compromise security: a user leaf's keys
    /// change even though it never commits otherwise). The commit stays pending on the leaf: send it, then call
    /// [`UserLeaves::complete_update`] or [`UserLeaves::abandon_update`].
    pub fn update(&mut self, uri: &str) -> Pending<CommitOutput> {
        match self.leaves.get_mut(uri) {
            Some(leaf) => leaf.group.self_update(),
            None => Pending::failed(MlsError::NoSuchMember(uri.to_owned())),
        }
    }

    /// The hub accepted `uri`'s update `commit`: the leaf merges it, the other local leaves process it (the
    /// bridge's leaf processes it like any member's commit, from the caller).
    pub fn complete_update(&mut self, uri: &str, commit: &[u8]) -> Pending<()> {
        let Some(leaf) = self.leaves.get_mut(uri) else {
            return Pending::failed(MlsError::NoSuchMember(uri.to_owned()));
        };
        let (merged, mut durability) = leaf.group.merge_pending_commit().into_parts();
        for (other, leaf) in self.leaves.iter_mut().filter(|(u, _)| u.as_str() != uri) {
            let (r, d) = leaf.group.process(commit).into_parts();
            if let Err(e) = r {
                tracing::warn!(user = %other, error = %e, "a per-user leaf could not process another leaf's update");
            }
            durability = durability.and(d);
        }
        Pending::from_result(merged, durability)
    }

    /// The hub refused `uri`'s update: the leaf drops its pending commit.
    pub fn abandon_update(&mut self, uri: &str) -> Pending<()> {
        match self.leaves.get_mut(uri) {
            Some(leaf) => leaf.group.clear_pending_commit(),
            None => Pending::failed(MlsError::NoSuchMember(uri.to_owned())),
        }
    }

    /// The pending add could not be sent at all (its commit never became durable, or the hub could not be
    /// reached): the bridge drops its pending commit and a later [`UserLeaves::add`] starts afresh.
    pub fn cancel(&mut self, bridge: &mut PortalGroup) -> Pending<()> {
        self.adding.clear();
        bridge.clear_pending_commit()
    }

    /// Feeds a handshake message (a proposal or commit someone else sent, already processed by the bridge's leaf)
    /// to every local leaf. Leaves that the commit removed are dropped and their state deleted. Returns each
    /// leaf's result.
    pub fn process_handshake(&mut self, message: &[u8]) -> Pending<Vec<(String, Result<Received, MlsError>)>> {
        let mut out = Vec::with_capacity(self.leaves.len());
        let mut durability = Durability::ready();
        let mut gone = Vec::new();
        for (uri, leaf) in &mut self.leaves {
            let (r, d) = leaf.group.process(message).into_parts();
            durability = durability.and(d);
            if matches!(r, Err(MlsError::Removed { .. })) {
                gone.push(uri.clone());
            }
            out.push((uri.clone(), r));
        }
        for u in gone {
            if let Some(leaf) = self.leaves.remove(&u) {
                durability = durability.and(leaf.group.delete().into_parts().1);
            }
        }
        Pending::from_result(Ok(out), durability)
    }

    /// The bridge's own commit, merged: every staying leaf processes it. `removed` leaves are skipped (their
    /// state is deleted by the caller).
    fn feed(&mut self, commit: &[u8], removed: Option<&[String]>) -> Durability {
        let mut durability = Durability::ready();
        for (uri, leaf) in &mut self.leaves {
            if removed.is_some_and(|r| r.contains(uri)) {
                continue;
            }
            let (r, d) = leaf.group.process(commit).into_parts();
            if let Err(e) = r {
                tracing::warn!(user = %uri, error = %e, "a per-user leaf could not process the bridge's commit");
            }
            durability = durability.and(d);
        }
        durability
    }
}
