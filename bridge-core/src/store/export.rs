//! `store export`, `store import` and `store check`: back up, move between backends, and verify a store.
//!
//! # The export format (JSON lines)
//!
//! ```text
//! {"format":"mimi-bridge-store","version":1,"backend":"redb","schema_version":1}
//! {"tree":"ids","key":"6d01…","value":"7b22…"}
//! …one line per entry, trees in name order, keys in byte order…
//! {"end":{"entries":12345}}
//! ```
//!
//! Keys and values are lowercase hex, so any bytes survive. The last line counts the entries, so a truncated file
//! is refused on import instead of restoring part of a store.
//!
//! [`import`] refuses a store that already holds data, trees it does not know, and a file from a newer schema. It
//! writes the schema version last: a store whose import failed half-way holds data without a schema version, and
//! the daemon refuses to start on it rather than run on a partial copy.

use super::kv::{Batch, KvStore, StoreError};
use super::repo::{self, FailedDelivery, IdEntry, MessageRecord, PortalRecord, ReactionSet};
use super::schema::{self, META, SCHEMA_VERSION};
use crate::event::OutboundEvent;
use crate::ids::{LegId, MessageId, PortalId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// The `format` field of the header line.
pub const FORMAT: &str = "mimi-bridge-store";
/// The version of the export format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Entries per durable write during [`import`].
pub const IMPORT_BATCH: usize = 1000;
/// Most problems a [`CheckReport`] lists one by one (all are counted).
pub const MAX_LISTED_PROBLEMS: usize = 200;

const VERSION_KEY: &[u8] = b"schema_version";

/// The first line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// The export format version, [`FORMAT_VERSION`].
    pub version: u32,
    /// The backend the export was made from (informational: an export imports into either backend).
    pub backend: String,
    /// The store's schema version.
    pub schema_version: u32,
}

/// One entry line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry<'a> {
    tree: &'a str,
    key: String,
    value: String,
}

/// The last line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    end: End,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    entries: u64,
}

fn out_err(e: std::io::Error) -> StoreError {
    StoreError::Io { path: PathBuf::from("<export output>"), source: e }
}

/// The schema version stored in `meta`, if any.
fn stored_schema_version(kv: &dyn KvStore) -> Result<Option<u32>, StoreError> {
    match kv.get(META, VERSION_KEY)? {
        None => Ok(None),
        Some(v) => {
            let arr: [u8; 4] = v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                tree: META.into(),
                message: format!("schema_version has {} bytes, expected 4", v.len()),
            })?;
            Ok(Some(u32::from_be_bytes(arr)))
        }
    }
}

/// Every entry of `tree` in key order, handed to `f` in chunks (one per first key byte), so that a large tree is
/// never held in memory whole.
fn for_each_entry(
    kv: &dyn KvStore,
    tree: &str,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if let Some(v) = kv.get(tree, b"")? {
        f(b"", &v)?;
    }
    for first in 0..=u8::MAX {
        for (k, v) in kv.scan_prefix(tree, &[first])? {
            f(&k, &v)?;
        }
    }
    Ok(())
}

/// Writes every entry of the store to `out` as JSON lines (see the [module docs](self)) and returns the number of
/// entries written. Every tree is exported, including ones this build does not know (import will refuse those).
pub fn export(kv: &dyn KvStore, out: &mut dyn Write) -> Result<u64, StoreError> {
    let trees = kv.trees()?;
    let schema_version = match stored_schema_version(kv)? {
        Some(v) => v,
        None if trees.is_empty() => SCHEMA_VERSION,
        None => {
            return Err(StoreError::Corrupt {
                tree: META.into(),
                message: "the store holds data but no schema version: it is not a mimi-bridge store".into(),
            });
        }
    };
    let header =
        Header { format: FORMAT.into(), version: FORMAT_VERSION, backend: kv.backend().into(), schema_version };
    write_json_line(out, &header)?;
    let mut n = 0u64;
    for tree in &trees {
        for_each_entry(kv, tree, |k, v| {
            n += 1;
            write_json_line(out, &Entry { tree, key: hex::encode(k), value: hex::encode(v) })
        })?;
    }
    write_json_line(out, &Trailer { end: End { entries: n } })?;
    out.flush().map_err(out_err)?;
    Ok(n)
}

fn write_json_line<T: Serialize>(out: &mut dyn Write, v: &T) -> Result<(), StoreError> {
    serde_json::to_writer(&mut *out, v).map_err(|e| out_err(e.into()))?;
    out.write_all(b"\n").map_err(out_err)
}

/// True if the store holds nothing but (possibly) its schema version stamp.
fn is_empty(kv: &dyn KvStore) -> Result<bool, StoreError> {
    for tree in kv.trees()? {
        if tree != META {
            return Ok(false);
        }
        if kv.scan_prefix(META, b"")?.iter().any(|(k, _)| k != VERSION_KEY) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn bad(line: u64, message: impl Into<String>) -> StoreError {
    StoreError::Import { line, message: message.into() }
}

/// Reads an export made by [`export`] into `kv`, which must be empty (a freshly created data directory), and
/// returns the number of entries imported. Writes durably in batches of [`IMPORT_BATCH`] entries.
///
/// Errors name the line of the input. If an error comes after the first write, the store holds a partial import
/// without a schema version (the daemon refuses to open it): remove the data directory and import again.
pub fn import(kv: &dyn KvStore, input: &mut dyn BufRead) -> Result<u64, StoreError> {
    if !is_empty(kv)? {
        return Err(StoreError::Import {
            line: 0,
            message: "the target store is not empty: import only into a new data directory".into(),
        });
    }
    let mut buf = String::new();
    let mut line = 0u64;
    // Header.
    let header: Header = loop {
        buf.clear();
        line += 1;
        let read = input.read_line(&mut buf).map_err(|e| bad(line, format!("cannot read the input: {e}")))?;
        if read == 0 {
            return Err(bad(line, "the input is empty: expected a header line"));
        }
        if buf.trim().is_empty() {
            continue;
        }
        break serde_json::from_str(buf.trim()).map_err(|e| {
            bad(line, format!("not a mimi-bridge store export header ({e}); expected {{\"format\":\"{FORMAT}\",…}}"))
        })?;
    };
    if header.format != FORMAT {
        return Err(bad(line, format!("format is {:?}, expected {FORMAT:?}", header.format)));
    }
    if header.version != FORMAT_VERSION {
        return Err(bad(
            line,
            format!("export format version {} is not supported (this build reads {FORMAT_VERSION})", header.version),
        ));
    }
    if header.schema_version > SCHEMA_VERSION || header.schema_version == 0 {
        return Err(bad(
            line,
            format!(
                "the export has schema version {}, this mimi-bridge understands 1 to {SCHEMA_VERSION}: import it \
                 with a newer mimi-bridge",
                header.schema_version
            ),
        ));
    }

    let partial = |e: StoreError, wrote: bool| -> StoreError {
        match e {
            StoreError::Import { line, message } if wrote => StoreError::Import {
                line,
                message: format!(
                    "{message} (the target store now holds a partial import: remove the data directory and import \
                     again)"
                ),
            },
            other => other,
        }
    };

    let mut batch = Batch::new();
    // A partial import must not look like a complete store: drop the stamp first, write the version last.
    batch.delete(META, VERSION_KEY);
    let mut wrote = false;
    let mut entries = 0u64;
    let mut trailer: Option<(u64, u64)> = None;
    let mut file_version: Option<Vec<u8>> = None;
    loop {
        buf.clear();
        line += 1;
        let read =
            input.read_line(&mut buf).map_err(|e| partial(bad(line, format!("cannot read the input: {e}")), wrote))?;
        if read == 0 {
            break;
        }
        let text = buf.trim();
        if text.is_empty() {
            continue;
        }
        if let Some((end_line, _)) = trailer {
            return Err(partial(bad(line, format!("data after the end line (line {end_line})")), wrote));
        }
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| partial(bad(line, format!("not JSON: {e}")), wrote))?;
        if value.get("end").is_some() {
            let t: Trailer = serde_json::from_value(value)
                .map_err(|e| partial(bad(line, format!("malformed end line: {e}")), wrote))?;
            trailer = Some((line, t.end.entries));
            continue;
        }
        let entry: Entry<'_> = serde_json::from_str(text).map_err(|e| {
            partial(bad(line, format!("expected {{\"tree\":…,\"key\":\"<hex>\",\"value\":\"<hex>\"}}: {e}")), wrote)
        })?;
        let tree = repo::tree_name(entry.tree).ok_or_else(|| {
            partial(
                bad(line, format!("unknown tree {:?} (this build knows {})", entry.tree, repo::TREES.join(", "))),
                wrote,
            )
        })?;
        let key = hex::decode(&entry.key).map_err(|e| partial(bad(line, format!("key is not hex: {e}")), wrote))?;
        let value =
            hex::decode(&entry.value).map_err(|e| partial(bad(line, format!("value is not hex: {e}")), wrote))?;
        entries += 1;
        if tree == META && key == VERSION_KEY {
            let expected = header.schema_version.to_be_bytes();
            if value != expected {
                return Err(partial(
                    bad(line, format!("schema_version entry {} disagrees with the header", hex::encode(&value))),
                    wrote,
                ));
            }
            file_version = Some(value);
            continue;
        }
        batch.put(tree, key, value);
        if batch.ops.len() >= IMPORT_BATCH {
            kv.write(&[std::mem::take(&mut batch)])?;
            wrote = true;
        }
    }
    let Some((end_line, counted)) = trailer else {
        return Err(partial(
            bad(line, "the input ends without its end line: the export is truncated, use a complete one"),
            wrote,
        ));
    };
    if counted != entries {
        return Err(partial(
            bad(end_line, format!("the end line counts {counted} entries but the input holds {entries}")),
            wrote,
        ));
    }
    let version = file_version.unwrap_or_else(|| header.schema_version.to_be_bytes().to_vec());
    batch.put(META, VERSION_KEY, version);
    kv.write(&[batch])?;
    Ok(entries)
}

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
            Some(v) => writeln!(f, "schema version: {v} (this build: {SCHEMA_VERSION})")?,
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

/// Splits a u16-length-prefixed part off the front of `b`.
fn split_lp(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
    let part = b.get(2..2 + n)?;
    Some((part, &b[2 + n..]))
}

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
    match schema::check_schema(kv, data_dir, false) {
        Ok(v) if v < SCHEMA_VERSION => r.notes.push(format!(
            "schema version {v} is older than this build's {SCHEMA_VERSION}: the daemon migrates it on start"
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
        if repo::tree_name(t).is_none() {
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
            _ => r.problem(format!("ids {}: key is neither an `m` nor an `n` entry", show(k))),
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
                serde_json::from_slice::<OutboundEvent>(v).map(|ev| ev.leg)
            } else {
                serde_json::from_slice::<FailedDelivery>(v).map(|f| f.event.leg)
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
    Ok(r)
}
