//! `store check`: the bridge's records verified offline — schema version, known trees, the invariants between
//! trees, and the MLS state's chunked values ([`mimi_mls::storage::check_chunks`]).

use crate::outbox::{DeliveryRecord, FailedRecord};
use crate::repo::{self, IdEntry, MessageRecord, PortalRecord, ReactionSet, split_lp};
use bridge_api::ids::{LegId, MessageId, PortalId};
use mimi_store::export::{MAX_LISTED_PROBLEMS, for_each_entry, stored_schema_version};
use mimi_store::schema::{self, META};
use mimi_store::{KvStore, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The data directory checked.
    pub data_dir: PathBuf,
    /// The backend.
    pub backend: &'static str,
    /// The schema version stored, if any (an empty store has none yet).
    pub schema_version: Option<u32>,
    /// Entries per tree.
    pub entries: BTreeMap<String, u64>,
    /// Invariant violations, the first [`MAX_LISTED_PROBLEMS`] of them.
    pub problems: Vec<String>,
    /// How many violations there are in all.
    pub problem_count: u64,
    /// Things worth knowing that are not violations (an older schema that the daemon will migrate…).
    pub notes: Vec<String>,
}

impl CheckReport {
    /// True if no invariant is violated.
    pub fn is_ok(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(p);
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data directory: {}", self.data_dir.display())?;
        writeln!(f, "backend:        {}", self.backend)?;
        match self.schema_version {
            Some(v) => writeln!(f, "schema version: {v} (this build: {})", crate::SCHEMA.version())?,
            None => writeln!(f, "schema version: none (empty store)")?,
        }
        for (tree, n) in &self.entries {
            writeln!(f, "  {tree:<12} {n:>10} entries")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        if self.problem_count > self.problems.len() as u64 {
            writeln!(f, "… and {} more problems", self.problem_count - self.problems.len() as u64)?;
        }
        if self.is_ok() { write!(f, "OK") } else { write!(f, "{} problem(s)", self.problem_count) }
    }
}

/// `b` with its length in front (u16, big-endian), as the store's keys have it.
fn lp(b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(b.len() + 2);
    let n = u16::try_from(b.len()).unwrap_or(u16::MAX);
    k.extend_from_slice(&n.to_be_bytes());
    k.extend_from_slice(&b[..n as usize]);
    k
}

/// A key as an escaped byte string (`"n\x00\x11irc.libera…"`): readable where it is text, exact where not.
fn show(k: &[u8]) -> String {
    let mut s = String::with_capacity(k.len() + 2);
    s.push('"');
    for b in k {
        s.extend(std::ascii::escape_default(*b).map(char::from));
    }
    s.push('"');
    s
}

/// Verifies the store in `data_dir`: schema version, known trees, and the invariants between trees (every leg
/// points at an existing portal; every outbox entry decodes and its leg is linked; every `ids` entry decodes and
/// has its reverse entry; message, reaction and failed records decode…). Reads only.
///
/// Returns `Err` only if the store cannot be read; violations are listed in the report.
pub fn check(kv: &dyn KvStore, data_dir: &Path) -> Result<CheckReport, StoreError> {
    let mut r = CheckReport {
        data_dir: data_dir.to_owned(),
        backend: kv.backend(),
        schema_version: None,
        entries: BTreeMap::new(),
        problems: Vec::new(),
        problem_count: 0,
        notes: Vec::new(),
    };
    match stored_schema_version(kv) {
        Ok(v) => r.schema_version = v,
        Err(StoreError::Corrupt { message, .. }) => r.problem(format!("meta: {message}")),
        Err(e) => return Err(e),
    }
    match schema::check_schema(kv, data_dir, false, &crate::SCHEMA) {
        Ok(v) if v < crate::SCHEMA.version() => r.notes.push(format!(
            "schema version {v} is older than this build's {}: the daemon migrates it on start",
            crate::SCHEMA.version()
        )),
        Ok(_) => {}
        Err(e @ (StoreError::NewerSchema { .. } | StoreError::Foreign { .. } | StoreError::Corrupt { .. })) => {
            r.problem(e.to_string())
        }
        Err(e) => return Err(e),
    }
    if r.schema_version.is_none() && r.problem_count == 0 {
        r.notes.push("the store is empty: the daemon stamps the schema version on first start".into());
    }

    let trees = kv.trees()?;
    for t in &trees {
        if !crate::known_trees().contains(&t.as_str()) {
            let mut n = 0u64;
            for_each_entry(kv, t, |_, _| {
                n += 1;
                Ok(())
            })?;
            r.entries.insert(t.clone(), n);
            r.problem(format!("unknown tree {t:?} ({n} entries): not written by this mimi-bridge"));
        }
    }

    // Portals first: legs refer to them.
    let mut portals = BTreeSet::new();
    let mut n = 0u64;
    for_each_entry(kv, repo::PORTALS, |k, v| {
        n += 1;
        match serde_json::from_slice::<PortalRecord>(v) {
            Ok(rec) if rec.id.as_str().as_bytes() == k => {
                portals.insert(rec.id);
            }
            Ok(rec) => r.problem(format!("portals {}: record is for portal {:?}", show(k), rec.id.as_str())),
            Err(e) => r.problem(format!("portals {}: does not decode: {e}", show(k))),
        }
        Ok(())
    })?;
    r.entries.insert(repo::PORTALS.into(), n);

    let mut legs = BTreeSet::new();
    let mut n = 0u64;
    for_each_entry(kv, repo::LEGS, |k, v| {
        n += 1;
        match serde_json::from_slice::<(LegId, PortalId)>(v) {
            Ok((leg, portal)) => {
                if lp(&leg.key()) != k {
                    r.problem(format!("legs {}: record is for leg {leg}", show(k)));
                } else if !portals.contains(&portal) {
                    r.problem(format!("legs {leg}: linked to portal {:?}, which does not exist", portal.as_str()));
                }
                legs.insert(k.to_vec());
            }
            Err(e) => r.problem(format!("legs {}: does not decode: {e}", show(k))),
        }
        Ok(())
    })?;
    r.entries.insert(repo::LEGS.into(), n);

    let mut n = 0u64;
    for_each_entry(kv, META, |k, v| {
        n += 1;
        if k.starts_with(b"seq/") && v.len() != 8 {
            r.problem(format!("meta {}: sequence counter has {} bytes, expected 8", show(k), v.len()));
        }
        Ok(())
    })?;
    r.entries.insert(META.into(), n);

    let mut n = 0u64;
    for_each_entry(kv, repo::GHOSTS, |k, v| {
        n += 1;
        if split_lp(k).is_none() {
            r.problem(format!("ghosts {}: malformed key", show(k)));
        }
        if std::str::from_utf8(v).is_err() {
            r.problem(format!("ghosts {}: URI is not UTF-8", show(k)));
        }
        Ok(())
    })?;
    r.entries.insert(repo::GHOSTS.into(), n);

    let mut n = 0u64;
    for_each_entry(kv, repo::MSGS, |k, v| {
        n += 1;
        if MessageId::from_bytes(k).is_err() {
            r.problem(format!("msgs {}: key is not a message id", show(k)));
        }
        if let Err(e) = serde_json::from_slice::<MessageRecord>(v) {
            r.problem(format!("msgs {}: does not decode: {e}", show(k)));
        }
        Ok(())
    })?;
    r.entries.insert(repo::MSGS.into(), n);

    let mut n = 0u64;
    let mut reverse_missing = Vec::new();
    for_each_entry(kv, repo::IDS, |k, v| {
        n += 1;
        match k.first() {
            Some(b'm') => {
                let ok = k.len() > 33
                    && MessageId::from_bytes(&k[1..33]).is_ok()
                    && matches!(split_lp(&k[33..]), Some((_, rest)) if rest.is_empty());
                if !ok {
                    r.problem(format!("ids {}: malformed message → native key", show(k)));
                }
                if std::str::from_utf8(v).is_err() {
                    r.problem(format!("ids {}: native id is not UTF-8", show(k)));
                }
            }
            Some(b'n') => match (split_lp(&k[1..]), serde_json::from_slice::<IdEntry>(v)) {
                (None, _) => r.problem(format!("ids {}: malformed native → message key", show(k))),
                (_, Err(e)) => r.problem(format!("ids {}: does not decode: {e}", show(k))),
                (Some((leg_key, _)), Ok(entry)) => {
                    let mut m = vec![b'm'];
                    m.extend_from_slice(entry.message_id.as_bytes());
                    m.extend_from_slice(&lp(leg_key));
                    reverse_missing.push((k.to_vec(), m));
                }
            },
            Some(b'p') => {
                if split_lp(&k[1..]).is_none() || serde_json::from_slice::<repo::SentMarker>(v).is_err() {
                    r.problem(format!("ids {}: malformed published-not-recorded marker", show(k)));
                }
            }
            _ => r.problem(format!("ids {}: key is neither an `m`, an `n` nor a `p` entry", show(k))),
        }
        // Check reverse entries in chunks so memory stays bounded.
        if reverse_missing.len() >= 4096 {
            for (nk, mk) in reverse_missing.drain(..) {
                if kv.get(repo::IDS, &mk)?.is_none() {
                    r.problem(format!("ids {}: its message → native entry is missing", show(&nk)));
                }
            }
        }
        Ok(())
    })?;
    for (nk, mk) in reverse_missing.drain(..) {
        if kv.get(repo::IDS, &mk)?.is_none() {
            r.problem(format!("ids {}: its message → native entry is missing", show(&nk)));
        }
    }
    r.entries.insert(repo::IDS.into(), n);

    let mut n = 0u64;
    for_each_entry(kv, repo::REACTIONS, |k, v| {
        n += 1;
        if k.len() < 32 || MessageId::from_bytes(&k[..32]).is_err() {
            r.problem(format!("reactions {}: key does not start with a message id", show(k)));
        }
        if let Err(e) = serde_json::from_slice::<ReactionSet>(v) {
            r.problem(format!("reactions {}: does not decode: {e}", show(k)));
        }
        Ok(())
    })?;
    r.entries.insert(repo::REACTIONS.into(), n);

    for (tree, must_be_linked) in [(repo::OUTBOX, true), (repo::FAILED, false)] {
        let mut n = 0u64;
        for_each_entry(kv, tree, |k, v| {
            n += 1;
            let Some((leg_key, _)) = split_lp(k).filter(|(_, seq)| seq.len() == 8) else {
                r.problem(format!("{tree} {}: malformed key (expected leg and sequence number)", show(k)));
                return Ok(());
            };
            let leg = if tree == repo::OUTBOX {
                serde_json::from_slice::<DeliveryRecord>(v).map(|d| d.leg)
            } else {
                serde_json::from_slice::<FailedRecord>(v).map(|f| f.event.leg)
            };
            match leg {
                Err(e) => r.problem(format!("{tree} {}: does not decode: {e}", show(k))),
                Ok(leg) if leg.key() != leg_key => {
                    r.problem(format!("{tree} {}: holds an event for another leg ({leg})", show(k)))
                }
                Ok(leg) if must_be_linked && !legs.contains(&lp(leg_key)) => {
                    r.problem(format!("{tree} {}: pending delivery to leg {leg}, which is not linked", show(k)))
                }
                Ok(_) => {}
            }
            Ok(())
        })?;
        r.entries.insert(tree.into(), n);
    }

    // The MLS state's chunked values: no chunk missing, none left over.
    let chunks = mimi_mls::storage::check_chunks(kv)?;
    for p in chunks.problems {
        r.problem(p);
    }
    Ok(r)
}
