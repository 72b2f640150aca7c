//! OpenMLS's public storage for the public state of one group ([`super::PublicState`]), its values in compact CBOR
//! ([`crate::cbor`]: byte sequences as byte strings).
//!
//! OpenMLS's `MemoryStorage` writes JSON, an array of numbers for every byte string: at 10 000 members the public
//! state took 9.6 MiB, which the hub parsed again for every commit it judged (a commit is merged into a copy) and
//! wrote with every commit. In CBOR it is about a third of that, and several times cheaper to read.
//!
//! A storage holds one group, so its keys are only what is stored: one label byte, and for a queued proposal its
//! place in the queue. [`FromJson`] reads a state stored by `MemoryStorage` (the hub's first format) into one.

use openmls_memory_storage::MemoryStorage;
use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{CURRENT_VERSION, traits};
use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

const TREE: u8 = 1;
const CONTEXT: u8 = 2;
const INTERIM_TRANSCRIPT_HASH: u8 = 3;
const CONFIRMATION_TAG: u8 = 4;
/// Followed by the proposal's place in the queue (u64, big-endian) and its ref's encoding; the value is
/// `(ref, proposal)`.
const PROPOSAL: u8 = 5;

/// Why the public storage failed.
#[derive(Debug, thiserror::Error)]
pub enum PublicStorageError {
    /// A value could not be encoded.
    #[error("encoding the group's {0}")]
    Encode(&'static str),
    /// A stored value could not be decoded.
    #[error("decoding the group's {what}: {message}")]
    Decode {
        /// What was read.
        what: &'static str,
        /// The decoder's complaint.
        message: String,
    },
    /// The state of the first format is only read ([`FromJson`]).
    #[error("the stored state of the first format is read-only")]
    ReadOnly,
}

/// The values of one group's public state, by key (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct PublicStorage {
    values: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

fn encode<V: serde::Serialize>(what: &'static str, value: &V) -> Result<Vec<u8>, PublicStorageError> {
    let mut out = Vec::new();
    crate::cbor::to_vec_into(value, &mut out).map_err(|_| PublicStorageError::Encode(what))?;
    Ok(out)
}

fn decode<V: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<V, PublicStorageError> {
    ciborium::from_reader(bytes).map_err(|e| PublicStorageError::Decode { what, message: e.to_string() })
}

impl PublicStorage {
    /// A storage of these values (from [`PublicStorage::values`]).
    pub(crate) fn from_values(values: BTreeMap<Vec<u8>, Vec<u8>>) -> Self {
        Self { values: RwLock::new(values) }
    }

    /// The values, in key order.
    pub(crate) fn values(&self) -> RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.values.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn values_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.values.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn put<V: serde::Serialize>(&self, label: u8, what: &'static str, value: &V) -> Result<(), PublicStorageError> {
        let bytes = encode(what, value)?;
        self.values_mut().insert(vec![label], bytes);
        Ok(())
    }

    fn get<V: serde::de::DeserializeOwned>(
        &self,
        label: u8,
        what: &'static str,
    ) -> Result<Option<V>, PublicStorageError> {
        self.values().get(&[label][..]).map(|b| decode(what, b)).transpose()
    }

    fn delete(&self, label: u8) {
        self.values_mut().remove(&[label][..]);
    }

    /// The queued proposals' keys and values, in queue order.
    fn proposals(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.values().range(vec![PROPOSAL]..vec![PROPOSAL + 1]).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl PublicStorageProvider<CURRENT_VERSION> for PublicStorage {
    type PublicError = PublicStorageError;

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
        tree: &T,
    ) -> Result<(), Self::PublicError> {
        self.put(TREE, "tree", tree)
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        hash: &H,
    ) -> Result<(), Self::PublicError> {
        self.put(INTERIM_TRANSCRIPT_HASH, "interim transcript hash", hash)
    }

    fn write_context<G: traits::GroupId<CURRENT_VERSION>, C: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        _: &G,
        context: &C,
    ) -> Result<(), Self::PublicError> {
        self.put(CONTEXT, "group context", context)
    }

    fn write_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>, T: traits::ConfirmationTag<CURRENT_VERSION>>(
        &self,
        _: &G,
        tag: &T,
    ) -> Result<(), Self::PublicError> {
        self.put(CONFIRMATION_TAG, "confirmation tag", tag)
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        proposal_ref: &R,
        proposal: &P,
    ) -> Result<(), Self::PublicError> {
        let bytes = encode("queued proposal", &(proposal_ref, proposal))?;
        let reference = encode("proposal ref", proposal_ref)?;
        let mut values = self.values_mut();
        let next = match values
            .range(vec![PROPOSAL]..vec![PROPOSAL + 1])
            .next_back()
            .and_then(|(k, _)| k.get(1..9))
            .and_then(|place| <[u8; 8]>::try_from(place).ok())
        {
            Some(last) => {
                u64::from_be_bytes(last).checked_add(1).ok_or(PublicStorageError::Encode("proposal queue"))?
            }
            None => 0,
        };
        let mut key = vec![PROPOSAL];
        key.extend(next.to_be_bytes());
        key.extend(reference);
        values.insert(key, bytes);
        Ok(())
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Vec<(R, P)>, Self::PublicError> {
        self.proposals().iter().map(|(_, v)| decode("queued proposal", v)).collect()
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<Option<T>, Self::PublicError> {
        self.get(TREE, "tree")
    }

    fn group_context<G: traits::GroupId<CURRENT_VERSION>, C: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<Option<C>, Self::PublicError> {
        self.get(CONTEXT, "group context")
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<H>, Self::PublicError> {
        self.get(INTERIM_TRANSCRIPT_HASH, "interim transcript hash")
    }

    fn confirmation_tag<G: traits::GroupId<CURRENT_VERSION>, T: traits::ConfirmationTag<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<Option<T>, Self::PublicError> {
        self.get(CONFIRMATION_TAG, "confirmation tag")
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), Self::PublicError> {
        self.delete(TREE);
        Ok(())
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), Self::PublicError> {
        self.delete(CONFIRMATION_TAG);
        Ok(())
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), Self::PublicError> {
        self.delete(CONTEXT);
        Ok(())
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), Self::PublicError> {
        self.delete(INTERIM_TRANSCRIPT_HASH);
        Ok(())
    }

    fn remove_proposal<G: traits::GroupId<CURRENT_VERSION>, R: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        _: &G,
        proposal_ref: &R,
    ) -> Result<(), Self::PublicError> {
        let wanted = encode("proposal ref", proposal_ref)?;
        self.values_mut().retain(|k, _| !(k.first() == Some(&PROPOSAL) && k.get(9..) == Some(&wanted[..])));
        Ok(())
    }

    fn clear_proposal_queue<G: traits::GroupId<CURRENT_VERSION>, R: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), Self::PublicError> {
        self.values_mut().retain(|k, _| k.first() != Some(&PROPOSAL));
        Ok(())
    }
}

/// A state stored by OpenMLS's `MemoryStorage` (JSON), read into a [`PublicStorage`]: every value OpenMLS reads
/// (loading its `PublicGroup`) is written to `into`, typed as OpenMLS reads it. Writes are refused.
pub(crate) struct FromJson<'a> {
    pub(crate) from: &'a MemoryStorage,
    pub(crate) into: &'a PublicStorage,
}

fn json<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> PublicStorageError {
    move |e| PublicStorageError::Decode { what, message: format!("{e:?}") }
}

/// Reads `what` with `read` from the JSON store and writes what it found with `write` into the new one.
fn carried<V>(
    what: &'static str,
    read: impl FnOnce() -> Result<Option<V>, openmls_memory_storage::MemoryStorageError>,
    write: impl FnOnce(&V) -> Result<(), PublicStorageError>,
) -> Result<Option<V>, PublicStorageError> {
    let value = read().map_err(json(what))?;
    if let Some(v) = &value {
        write(v)?;
    }
    Ok(value)
}

impl PublicStorageProvider<CURRENT_VERSION> for FromJson<'_> {
    type PublicError = PublicStorageError;

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
        _: &T,
    ) -> Result<(), Self::PublicError> {
        Err(PublicStorageError::ReadOnly)
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        _: &H,
    ) -> Result<(), Self::PublicError> {
        Err(PublicStorageError::ReadOnly)
    }

    fn write_context<G: traits::GroupId<CURRENT_VERSION>, C: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        _: &G,
        _: &C,
    ) -> Result<(), Self::PublicError> {
        Err(PublicStorageError::ReadOnly)
    }

    fn write_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>, T: traits::ConfirmationTag<CURRENT_VERSION>>(
        &self,
        _: &G,
        _: &T,
    ) -> Result<(), Self::PublicError> {
        Err(PublicStorageError::ReadOnly)
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        _: &R,
        _: &P,
    ) -> Result<(), Self::PublicError> {
        Err(PublicStorageError::ReadOnly)
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Vec<(R, P)>, Self::PublicError> {
        let queued: Vec<(R, P)> = self.from.queued_proposals(group_id).map_err(json("queued proposals"))?;
        for (r, p) in &queued {
            self.into.queue_proposal(group_id, r, p)?;
        }
        Ok(queued)
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<T>, Self::PublicError> {
        carried("tree", || self.from.tree(group_id), |v| self.into.write_tree(group_id, v))
    }

    fn group_context<G: traits::GroupId<CURRENT_VERSION>, C: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<C>, Self::PublicError> {
        carried("group context", || self.from.group_context(group_id), |v| self.into.write_context(group_id, v))
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<H>, Self::PublicError> {
        carried(
            "interim transcript hash",
            || self.from.interim_transcript_hash(group_id),
            |v| self.into.write_interim_transcript_hash(group_id, v),
        )
    }

    fn confirmation_tag<G: traits::GroupId<CURRENT_VERSION>, T: traits::ConfirmationTag<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<T>, Self::PublicError> {
        carried(
            "confirmation tag",
            || self.from.confirmation_tag(group_id),
            |v| self.into.write_confirmation_tag(group_id, v),
        )
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), Self::PublicError> {
        Err(PublicStorageError::ReadOnly)
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), Self::PublicError> {
        Err(PublicStorageError::ReadOnly)
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), Self::PublicError> {
        Err(PublicStorageError::ReadOnly)
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), Self::PublicError> {
        Err(PublicStorageError::ReadOnly)
    }

    fn remove_proposal<G: traits::GroupId<CURRENT_VERSION>, R: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        _: &G,
        _: &R,
    ) -> Result<(), Self::PublicError> {
        Err(PublicStorageError::ReadOnly)
    }

    fn clear_proposal_queue<G: traits::GroupId<CURRENT_VERSION>, R: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), Self::PublicError> {
        Err(PublicStorageError::ReadOnly)
    }
}
