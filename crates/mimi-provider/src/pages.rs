//! Pages of a room's log as served to followers (`/v1/log`) and to native clients (`messages`): at most [`PAGE`]
//! entries and [`MAX_PAGE_BYTES`], one entry at least.

use crate::failure::Failure;
use crate::service::Provider;
use mimi_protocol::wire::{LogPage, SequencedFanout, WireMessage};

/// Most log entries per page.
pub const PAGE: usize = 256;
/// Most bytes of log entries per page (a longer run is cut; the first entry is always served, and is at most
/// about the largest request body the daemon accepts).
pub const MAX_PAGE_BYTES: usize = 4 << 20;

/// A log page of the first `entries` that fit in `max_bytes` (encoded), the first one always.
pub fn log_page(mut entries: Vec<SequencedFanout>, max_bytes: usize) -> LogPage {
    let mut total = 0usize;
    let keep = entries
        .iter()
        .position(|e| {
            total = total.saturating_add(e.encode().map_or(usize::MAX, |v| v.len()));
            total > max_bytes
        })
        .unwrap_or(entries.len())
        .max(1);
    entries.truncate(keep);
    LogPage(entries)
}

/// The page of `room`'s log after `after` (our copy, for a room we follow).
pub(crate) fn page_after(provider: &Provider, room: &str, after: u64) -> Result<LogPage, Failure> {
    Ok(log_page(provider.entries_after(room, after, PAGE)?, MAX_PAGE_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests_support::entry;

    #[test]
    fn log_pages_are_cut_by_bytes_but_never_empty() {
        let entries: Vec<_> = (1..=10).map(|s| entry(s, 1000)).collect();
        let one = entries[0].encode().expect("encode").len();
        assert_eq!(log_page(entries.clone(), usize::MAX).0.len(), 10);
        assert_eq!(log_page(entries.clone(), 3 * one).0.len(), 3);
        assert_eq!(log_page(entries.clone(), 3 * one - 1).0.len(), 2);
        assert_eq!(log_page(entries.clone(), 10).0.len(), 1, "one entry even if larger");
        assert!(log_page(Vec::new(), 10).0.is_empty());
    }
}
