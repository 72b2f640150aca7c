//! The follower side of one room, sans-IO: it keeps a copy of the hub's log, in the hub's order, without gaps
//! or duplicates, whatever order notifies arrive in and however long the follower was down.
//!
//! Feed it the entries of `/notify` ([`FollowerRoom::on_notify`]) and of log pages it fetched
//! ([`FollowerRoom::on_log_page`]); it answers with [`FollowerAction`]s: append these entries (in order), or fetch
//! the hub's log after a sequence number. Entries ahead of a gap are held in memory (bounded) until the gap is
//! filled.

use super::wire::SequencedFanout;
use std::collections::BTreeMap;

/// Most out-of-order entries held while a gap is being fetched; beyond this they are dropped (the fetch brings
/// them again).
pub const MAX_HELD: usize = 1024;

/// What the follower asks its IO shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerAction {
    /// Append these entries to the local copy of the log, in order (they are contiguous and new), then wake the
    /// local clients.
    Append(Vec<SequencedFanout>),
    /// Fetch the hub's log after sequence number `after`.
    Fetch {
        /// The last sequence number held.
        after: u64,
    },
}

/// The follower's view of one room.
#[derive(Debug, Clone)]
pub struct FollowerRoom {
    room: String,
    last: u64,
    held: BTreeMap<u64, SequencedFanout>,
    fetching: bool,
}

impl FollowerRoom {
    /// A follower of `room` whose local log ends at `last` (0 if empty).
    pub fn new(room: &str, last: u64) -> Self {
        Self { room: room.to_owned(), last, held: BTreeMap::new(), fetching: false }
    }

    /// The room URI.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The last sequence number held locally.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// On start (or after an outage): ask the hub for what was missed.
    pub fn resync(&mut self) -> FollowerAction {
        self.fetching = true;
        FollowerAction::Fetch { after: self.last }
    }

    /// Entries announced by the hub (`/notify`).
    pub fn on_notify(&mut self, entries: Vec<SequencedFanout>) -> Vec<FollowerAction> {
        self.take(entries)
    }

    /// A page of the hub's log (answer to a [`FollowerAction::Fetch`]). An empty page ends the catch-up.
    pub fn on_log_page(&mut self, entries: Vec<SequencedFanout>) -> Vec<FollowerAction> {
        let empty = entries.is_empty();
        self.fetching = false;
        let mut actions = self.take(entries);
        if !empty && !actions.iter().any(|a| matches!(a, FollowerAction::Fetch { .. })) {
            // There may be more pages.
            self.fetching = true;
            actions.push(FollowerAction::Fetch { after: self.last });
        }
        actions
    }

    /// The fetch failed (hub unreachable): allow a later one.
    pub fn on_fetch_failed(&mut self) {
        self.fetching = false;
    }

    fn take(&mut self, entries: Vec<SequencedFanout>) -> Vec<FollowerAction> {
        for e in entries {
            if e.seq > self.last && self.held.len() < MAX_HELD {
                self.held.entry(e.seq).or_insert(e);
            }
        }
        let mut run = Vec::new();
        while let Some(e) = self.held.remove(&(self.last + 1)) {
            self.last = e.seq;
            run.push(e);
        }
        let mut actions = Vec::new();
        if !run.is_empty() {
            actions.push(FollowerAction::Append(run));
        }
        if !self.held.is_empty() && !self.fetching {
            self.fetching = true;
            actions.push(FollowerAction::Fetch { after: self.last });
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::wire::{FanoutMessage, MlsMessageBytes};

    fn entry(seq: u64) -> SequencedFanout {
        // A KeyPackage-free minimal MLSMessage is not needed: the follower never looks inside.
        let msg = MlsMessageBytes::new(crate::provider::tests_support::private_message()).expect("framed");
        SequencedFanout { seq, fanout: FanoutMessage::plain(seq, msg) }
    }

    fn seqs(a: &[FollowerAction]) -> Vec<u64> {
        a.iter()
            .flat_map(|a| match a {
                FollowerAction::Append(run) => run.iter().map(|e| e.seq).collect(),
                FollowerAction::Fetch { .. } => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn in_order_notifies_are_appended_and_duplicates_dropped() {
        let mut f = FollowerRoom::new("mimi://a/r/x", 0);
        assert_eq!(seqs(&f.on_notify(vec![entry(1)])), [1]);
        assert_eq!(seqs(&f.on_notify(vec![entry(2)])), [2]);
        assert!(f.on_notify(vec![entry(2), entry(1)]).is_empty(), "duplicates produce nothing");
        assert_eq!(f.last(), 2);
    }

    #[test]
    fn a_gap_triggers_one_fetch_and_the_page_fills_it_without_duplicates() {
        let mut f = FollowerRoom::new("mimi://a/r/x", 3);
        let a = f.on_notify(vec![entry(6)]);
        assert_eq!(a, vec![FollowerAction::Fetch { after: 3 }]);
        assert!(f.on_notify(vec![entry(7)]).is_empty(), "no second fetch while one is running");
        let a = f.on_log_page(vec![entry(4), entry(5), entry(6)]);
        assert_eq!(seqs(&a), [4, 5, 6, 7]);
        assert_eq!(a.last(), Some(&FollowerAction::Fetch { after: 7 }), "asks for a further page");
        assert!(f.on_log_page(Vec::new()).is_empty(), "an empty page ends the catch-up");
        assert_eq!(f.last(), 7);
    }

    #[test]
    fn resync_after_downtime_pages_through_the_log() {
        let mut f = FollowerRoom::new("mimi://a/r/x", 10);
        assert_eq!(f.resync(), FollowerAction::Fetch { after: 10 });
        let a = f.on_log_page((11..=20).map(entry).collect());
        assert_eq!(seqs(&a), (11..=20).collect::<Vec<_>>());
        let a = f.on_log_page(vec![entry(19), entry(21)]);
        assert_eq!(seqs(&a), [21]);
        f.on_log_page(Vec::new());
        f.on_fetch_failed();
        assert_eq!(f.last(), 21);
    }
}
