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
use super::schema::{META, Schema};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::PathBuf;

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
pub fn stored_schema_version(kv: &dyn KvStore) -> Result<Option<u32>, StoreError> {
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
pub fn for_each_entry(
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
pub fn export(kv: &dyn KvStore, out: &mut dyn Write, schema: &Schema) -> Result<u64, StoreError> {
    let trees = kv.trees()?;
    let schema_version = match stored_schema_version(kv)? {
        Some(v) => v,
        None if trees.is_empty() => schema.version(),
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
pub fn import(
    kv: &dyn KvStore,
    input: &mut dyn BufRead,
    schema: &Schema,
    known_trees: &[&'static str],
) -> Result<u64, StoreError> {
    let supported = schema.version();
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
    if header.schema_version > supported || header.schema_version == 0 {
        return Err(bad(
            line,
            format!(
                "the export has schema version {}, this mimi-bridge understands 1 to {supported}: import it \
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
        let tree = known_trees.iter().copied().find(|t| *t == entry.tree).ok_or_else(|| {
            partial(
                bad(line, format!("unknown tree {:?} (this build knows {})", entry.tree, known_trees.join(", "))),
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
