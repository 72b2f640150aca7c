//! Content-defined chunks of a large record, so that rewriting it after a small change writes only the chunks
//! that changed.
//!
//! The hub writes the public state of a room's group with every commit (`mimi_provider::log`, `'P'`): 4.8 MiB at
//! 10 000 members, in the batch every other room's messages share; a member of that group writes its own state of
//! it, the ratchet tree with its keys, just as often (`mimi_mls::storage`). A commit changes a few dozen nodes of
//! the tree; cut at boundaries that depend on the content (a gear hash over the last 64 bytes, as FastCDC), the
//! encoding keeps its other chunks byte for byte, wherever they moved. Chunks are stored by their SHA-256, so the
//! record becomes a manifest (the list of its chunks' hashes) and the chunks it gained; the ones it lost are
//! deleted.
//!
//! Sans IO: [`split`] and the manifest's encoding; their owners write and read them.

use sha2::{Digest, Sha256};

/// Smallest chunk (but the last).
pub const MIN: usize = 2 << 10;
/// Largest chunk.
pub const MAX: usize = 64 << 10;
/// A boundary where the top 13 bits of the gear hash are zero: one in 8 KiB on average, after [`MIN`].
const BOUNDARY: u64 = !(u64::MAX >> 13);
/// First byte of a manifest (a public state record starts with its format byte, 1 or 2; OpenMLS state with a CBOR
/// map or array, or a list's length).
const MANIFEST: u8 = 0xC1;

/// The gear table: 256 pseudo-random words (splitmix64 from a fixed seed), the same in every build.
const GEAR: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut state: u64 = 0x6d69_6d69_2d68_7562;
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
};

/// A record cut into chunks: where each ends, and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunked {
    /// The end of each chunk in the record (the last is its length).
    pub ends: Vec<usize>,
    /// Each chunk's SHA-256, in order.
    pub hashes: Vec<[u8; 32]>,
}

impl Chunked {
    /// Chunk `i` of `record` (the record this was made from).
    pub fn chunk<'a>(&self, record: &'a [u8], i: usize) -> &'a [u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &record[start..self.ends[i]]
    }

    /// The manifest: [`MANIFEST`], the record's length (u64 BE), then the chunks' hashes.
    pub fn manifest(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + 32 * self.hashes.len());
        out.push(MANIFEST);
        out.extend(self.ends.last().map_or(0u64, |&e| e as u64).to_be_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }
}

/// Cuts `record` at content-defined boundaries (chunks of [`MIN`] to [`MAX`] bytes, the last one shorter).
pub fn split(record: &[u8]) -> Chunked {
    split_on(record, Chunked::default())
}

/// [`split`] of `record`, a new version of the record that `before` was made from whose first `same` bytes did not
/// change: `before`'s chunks that end within them are kept as they are (where a chunk ends depends on its own
/// bytes only), and only the rest is cut and hashed. The last chunk of `before` is cut again: it may have ended
/// where the record did.
pub fn split_reusing(record: &[u8], before: &Chunked, same: usize) -> Chunked {
    let same = same.min(record.len());
    let candidates = before.ends.len().saturating_sub(1);
    let kept = before.ends[..candidates].iter().take_while(|&&end| end <= same).count();
    split_on(record, Chunked { ends: before.ends[..kept].to_vec(), hashes: before.hashes[..kept].to_vec() })
}

/// How many bytes `a` and `b` have in common from their start.
pub fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    let len = a.len().min(b.len());
    let mut at = 0;
    // Whole blocks compare as slices (memcmp); only the first one that differs is walked byte by byte.
    while at + BLOCK <= len && a[at..at + BLOCK] == b[at..at + BLOCK] {
        at += BLOCK;
    }
    at + a[at..len].iter().zip(&b[at..len]).take_while(|(x, y)| x == y).count()
}

/// Cuts `record` on from the end of the chunks `out` already has (which must be its first ones).
fn split_on(record: &[u8], mut out: Chunked) -> Chunked {
    let mut start = out.ends.last().copied().unwrap_or(0);
    while start < record.len() {
        let end = boundary(&record[start..]) + start;
        out.hashes.push(Sha256::digest(&record[start..end]).into());
        out.ends.push(end);
        start = end;
    }
    out
}

/// The length of the first chunk of `rest`.
fn boundary(rest: &[u8]) -> usize {
    if rest.len() <= MIN {
        return rest.len();
    }
    let limit = rest.len().min(MAX);
    let mut h: u64 = 0;
    // The hash of the window before MIN is warmed up but never cut at.
    for (i, &b) in rest[..limit].iter().enumerate() {
        h = (h << 1).wrapping_add(GEAR[usize::from(b)]);
        if i + 1 >= MIN && h & BOUNDARY == 0 {
            return i + 1;
        }
    }
    limit
}

/// A manifest's record length and chunk hashes; `None` if `value` is not a manifest (a record stored whole).
pub fn parse_manifest(value: &[u8]) -> Option<(u64, Vec<[u8; 32]>)> {
    let (&first, rest) = value.split_first()?;
    if first != MANIFEST || rest.len() < 8 || (rest.len() - 8) % 32 != 0 {
        return None;
    }
    let (len, hashes) = rest.split_at(8);
    let len = u64::from_be_bytes(len.try_into().ok()?);
    Some((len, hashes.chunks_exact(32).map(|h| h.try_into().unwrap_or([0; 32])).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_record_within_their_bounds() {
        for len in [0, 1, MIN, MIN + 1, 3 * MAX + 17, 1 << 20] {
            let record = noise(len, 7);
            let c = split(&record);
            assert_eq!(c.ends.last().copied().unwrap_or(0), len);
            let sizes: Vec<usize> = (0..c.ends.len()).map(|i| c.chunk(&record, i).len()).collect();
            let (last, others) = sizes.split_last().unwrap_or((&0, &[]));
            assert!(others.iter().all(|&s| (MIN..=MAX).contains(&s)), "{len}: {sizes:?}");
            assert!(*last <= MAX);
            for (i, h) in c.hashes.iter().enumerate() {
                assert_eq!(<[u8; 32]>::from(Sha256::digest(c.chunk(&record, i))), *h);
            }
            assert_eq!(split(&record), c, "the same record, the same chunks");
        }
        // Low-entropy input (long runs) is cut at MAX, not left whole.
        assert!(split(&vec![0u8; 5 * MAX]).ends.len() >= 5);
    }

    /// A few bytes changed, inserted or removed in the middle of 1 MiB change a few chunks; the others are kept
    /// even where they moved.
    #[test]
    fn a_small_change_changes_few_chunks() {
        let record = noise(1 << 20, 42);
        let before = split(&record);
        let kept = |after: &Chunked| after.hashes.iter().filter(|h| before.hashes.contains(h)).count();
        let mut changed = record.clone();
        changed[500_000..500_040].copy_from_slice(&[9; 40]);
        let mut inserted = record.clone();
        inserted.splice(300_000..300_000, [1, 2, 3, 4, 5]);
        let mut removed = record.clone();
        removed.drain(700_000..700_100);
        for edited in [changed, inserted, removed] {
            let after = split(&edited);
            assert!(
                after.hashes.len() - kept(&after) <= 3,
                "{} of {} chunks new",
                after.hashes.len() - kept(&after),
                after.hashes.len()
            );
        }
        assert!(before.hashes.len() > 64, "about 8 KiB each: {}", before.hashes.len());
    }

    /// Cutting a new version of a record from its old chunks gives the chunks of cutting it afresh, whether it
    /// grew, shrank or changed after its common start, and wherever that start ends.
    #[test]
    fn reusing_the_chunks_of_a_common_start_gives_the_same_chunks() {
        let old = noise(300_000, 11);
        let before = split(&old);
        let mut versions = vec![old.clone(), old[..200_000].to_vec(), old[..5].to_vec(), Vec::new()];
        let mut grown = old.clone();
        grown.extend(noise(50_000, 12));
        versions.push(grown);
        for at in [0, 1, MIN, 150_000, 299_999] {
            let mut changed = old.clone();
            changed[at] ^= 0xFF;
            versions.push(changed);
        }
        // A record that ended inside what is now a longer chunk (its last chunk was cut by its end).
        let short = old[..before.ends[3] + 100].to_vec();
        versions.push(old[..before.ends[3] + 5000].to_vec());
        for new in &versions {
            let same = common_prefix(&old, new);
            assert_eq!(split_reusing(new, &before, same), split(new), "{} bytes, {same} in common", new.len());
            let from_short = split_reusing(new, &split(&short), common_prefix(&short, new));
            assert_eq!(from_short, split(new), "from the short one: {} bytes", new.len());
        }
        assert_eq!(common_prefix(&old, &old), old.len());
        assert_eq!(common_prefix(&old[..9000], &old), 9000);
    }

    #[test]
    fn manifests_round_trip_and_records_are_not_manifests() {
        let record = noise(100_000, 3);
        let c = split(&record);
        assert_eq!(parse_manifest(&c.manifest()), Some((100_000, c.hashes.clone())));
        assert_eq!(parse_manifest(&[2, 0, 0]), None, "a public state record (format 2)");
        assert_eq!(parse_manifest(&[MANIFEST, 0, 0, 0]), None, "truncated");
    }
}
