//! The follower side of one room, sans-IO: it keeps a copy of the hub's log, in the hub's order, without gaps
//! or duplicates, whatever order notifies arrive in and however long the follower was down.
//!
//! Feed it the entries of `/notify` ([`FollowerRoom::on_notify`]) and of log pages it fetched
//! ([`FollowerRoom::on_log_page`]); it answers with [`FollowerAction`]s: append these entries (in order), or fetch
//! the hub's log after a sequence number. Entries ahead of a gap are held in memory (bounded) until the gap is
//! filled: past [`MAX_HELD`] the highest are dropped (a later page brings them again), never the entry that
//! continues the local copy, so every page that holds it makes progress.
//!
//! A log page that does not move the local copy on (an empty page while entries are held, or one of entries
//! already held) still answers [`FollowerAction::Fetch`] with the same `after`: the IO shell sees that it made no
//! progress and backs off ([`CatchUpBackoff`]) instead of asking again at once; it gives up after a few tries and
//! calls [`FollowerRoom::on_fetch_failed`], leaving the gap to the next notify or resync.
//!
//! A copy can fall so far behind that the hub no longer holds what it misses (retention: the hub answers 410).
//! It is then lost for good ([`FollowerRoom::on_fetch_gone`]): nothing is held or fetched for it until a member of
//! ours joins the room again (or commits: any update it hands the hub) and the copy starts over at that update's
//! place ([`FollowerRoom::restart`]).

use super::wire::SequencedFanout;
use std::collections::BTreeMap;
use std::time::Duration;

/// Most out-of-order entries held while a gap is being fetched; beyond this the highest are dropped (the fetch
/// brings them again).
pub const MAX_HELD: usize = 1024;

/// First wait after a log page that made no progress.
pub const FIRST_STALL_WAIT: Duration = Duration::from_millis(200);
/// Longest wait between two fetches of a page that makes no progress.
pub const MAX_STALL_WAIT: Duration = Duration::from_secs(5);
/// Pages in a row without progress after which a catch-up gives up (until the next notify or resync).
pub const MAX_STALLS: u32 = 7;

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
    /// Followed for a join still on its way to the hub: entries are held, not fetched for, until the join settled
    /// ([`FollowerRoom::joined`]).
    joining: bool,
    /// The hub no longer holds entries the copy misses ([`FollowerRoom::on_fetch_gone`]).
    gone: bool,
    /// The copy starts over at the next join's place, whatever it holds ([`FollowerRoom::restart`]).
    restarting: bool,
}

impl FollowerRoom {
    /// A follower of `room` whose local log ends at `last` (0 if empty).
    pub fn new(room: &str, last: u64) -> Self {
        Self {
            room: room.to_owned(),
            last,
            held: BTreeMap::new(),
            fetching: false,
            joining: false,
            gone: false,
            restarting: false,
        }
    }

    /// An empty copy of `room`, followed for a join of ours on its way to the hub: the hub's notify of the join
    /// may come before its answer, and must not make the copy fetch the room's whole log.
    pub fn joining(room: &str) -> Self {
        Self { joining: true, ..Self::new(room, 0) }
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

    /// Whether the copy was followed for a join still on its way to the hub ([`FollowerRoom::joining`]).
    pub fn is_joining(&self) -> bool {
        self.joining
    }

    /// The joins this copy was followed for settled; `first`: the lowest place in the log the hub gave one of
    /// them. A copy that holds nothing yet then starts there: what the hub sequenced before is not ours to read,
    /// and may be gone from its log (retention). Returns whether the start moved, and whether the next
    /// [`FollowerRoom::on_notify`] (with no entries, if need be) has something to do: append what is held, or
    /// fetch for it as any copy does. Nothing changes for a copy that is not joining (any more).
    pub fn joined(&mut self, first: Option<u64>) -> (bool, bool) {
        if !std::mem::take(&mut self.joining) {
            return (false, false);
        }
        let restarting = std::mem::take(&mut self.restarting);
        let moved = match first {
            Some(first) if (self.last == 0 || restarting) && first > self.last + 1 => {
                self.gone = false;
                self.last = first - 1;
                self.held.retain(|seq, _| *seq >= first);
                true
            }
            _ => false,
        };
        if restarting && !moved {
            // Still lost: it holds nothing ([`FollowerRoom::on_fetch_gone`]).
            self.held.clear();
        }
        (moved, !self.held.is_empty())
    }

    /// The fetch failed (hub unreachable): allow a later one.
    pub fn on_fetch_failed(&mut self) {
        self.fetching = false;
    }

    /// The hub no longer holds the entries after [`FollowerRoom::last`] (it answered 410): the copy cannot be
    /// completed. Nothing is fetched for it any more; it waits for [`FollowerRoom::restart`].
    pub fn on_fetch_gone(&mut self) {
        self.fetching = false;
        self.gone = true;
    }

    /// Whether the copy cannot be completed ([`FollowerRoom::on_fetch_gone`]) and has not started over since.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// A member of ours joins the room again, after the copy was lost ([`FollowerRoom::on_fetch_gone`]): followed
    /// for that join ([`FollowerRoom::joining`]), the copy starts over at its place in the log when it settles
    /// ([`FollowerRoom::joined`]), past what it holds. What it held ahead is dropped.
    pub fn restart(&mut self) {
        self.joining = true;
        self.restarting = true;
        self.fetching = false;
        self.held.clear();
    }

    fn take(&mut self, entries: Vec<SequencedFanout>) -> Vec<FollowerAction> {
        for e in entries {
            // Full: only an entry below the highest held one gets in (the lowest are the ones that fill the gap;
            // `last + 1` always does), and the highest goes.
            let room = self.held.len() < MAX_HELD || self.held.last_key_value().is_some_and(|(k, _)| e.seq < *k);
            // A lost copy holds nothing until a join restarts it (what comes then is its).
            if e.seq > self.last && room && (!self.gone || self.joining) {
                self.held.entry(e.seq).or_insert(e);
                while self.held.len() > MAX_HELD {
                    self.held.pop_last();
                }
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
        if !self.held.is_empty() && !self.fetching && !self.joining && !self.gone {
            self.fetching = true;
            actions.push(FollowerAction::Fetch { after: self.last });
        }
        actions
    }
}

/// What a catch-up does after a log page ([`CatchUpBackoff::on_page`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpStep {
    /// The page made progress: fetch the next one now.
    Now,
    /// The page made no progress: wait this long, then fetch again.
    Wait(Duration),
    /// Too many pages in a row made no progress: stop, and report the fetch as failed.
    GiveUp,
}

/// The pace of one catch-up (the IO shell's loop of [`FollowerAction::Fetch`]es) while its pages make no
/// progress: capped exponential backoff ([`FIRST_STALL_WAIT`] doubling to [`MAX_STALL_WAIT`]), giving up after
/// [`MAX_STALLS`] pages in a row.
#[derive(Debug, Clone, Default)]
pub struct CatchUpBackoff {
    stalls: u32,
    wait: Option<Duration>,
}

impl CatchUpBackoff {
    /// A page was fetched after `after` and the follower answered `Fetch { after: next }`.
    pub fn on_page(&mut self, after: u64, next: u64) -> CatchUpStep {
        if next > after {
            self.stalls = 0;
            self.wait = None;
            return CatchUpStep::Now;
        }
        self.stalls += 1;
        if self.stalls >= MAX_STALLS {
            return CatchUpStep::GiveUp;
        }
        let wait = self.wait.map_or(FIRST_STALL_WAIT, |d| (d * 2).min(MAX_STALL_WAIT));
        self.wait = Some(wait);
        CatchUpStep::Wait(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FanoutMessage, MlsMessageBytes};

    fn entry(seq: u64) -> SequencedFanout {
        // A KeyPackage-free minimal MLSMessage is not needed: the follower never looks inside.
        let msg = MlsMessageBytes::new(crate::test_group::private_message()).expect("framed");
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
    fn a_copy_followed_for_a_join_starts_at_the_join_and_fetches_nothing_before() {
        // The join's notify (9) comes before the hub's answer: held, nothing fetched.
        let mut f = FollowerRoom::joining("mimi://a/r/x");
        assert!(f.on_notify(vec![entry(9), entry(10)]).is_empty());
        assert!(f.is_joining());
        assert_eq!(f.joined(Some(9)), (true, true));
        assert_eq!(seqs(&f.on_notify(Vec::new())), [9, 10]);
        assert_eq!(f.last(), 10);
        // Once only.
        assert_eq!(f.joined(Some(3)), (false, false));
        // Without an earlier notify: the copy simply starts there.
        let mut g = FollowerRoom::joining("mimi://a/r/x");
        assert_eq!(g.joined(Some(5)), (true, false));
        assert_eq!(seqs(&g.on_notify(vec![entry(5)])), [5]);
    }

    #[test]
    fn a_lost_copy_fetches_nothing_and_starts_over_at_the_next_join() {
        let mut f = FollowerRoom::new("mimi://a/r/x", 10);
        f.on_fetch_gone();
        assert!(f.is_gone());
        assert!(f.on_notify(vec![entry(40)]).is_empty(), "nothing fetched for a gap the hub no longer holds");
        f.restart();
        assert!(f.is_joining());
        // The rejoin's notify may come before the hub's answer: held.
        assert!(f.on_notify(vec![entry(41)]).is_empty());
        assert_eq!(f.joined(Some(41)), (true, true));
        assert!(!f.is_gone());
        assert_eq!(seqs(&f.on_notify(Vec::new())), [41]);
        assert_eq!(f.last(), 41);
        // A rejoin that settles without a place leaves the copy lost.
        let mut g = FollowerRoom::new("mimi://a/r/x", 10);
        g.on_fetch_gone();
        g.restart();
        assert_eq!(g.joined(None), (false, false));
        assert!(g.is_gone());
        // A rejoin right after the copy's end (nothing was missed) does not move it.
        let mut h = FollowerRoom::new("mimi://a/r/x", 10);
        h.restart();
        assert_eq!(h.joined(Some(11)), (false, false));
        assert_eq!(seqs(&h.on_notify(vec![entry(11)])), [11]);
    }

    #[test]
    fn a_join_settled_without_a_place_fetches_what_it_holds_as_usual() {
        let mut f = FollowerRoom::joining("mimi://a/r/x");
        assert!(f.on_notify(vec![entry(7)]).is_empty());
        assert_eq!(f.joined(None), (false, true));
        assert_eq!(f.on_notify(Vec::new()), vec![FollowerAction::Fetch { after: 0 }]);
        // A copy that holds entries already keeps its start.
        let mut g = FollowerRoom::joining("mimi://a/r/x");
        g.joining = false;
        assert!(!g.on_notify(vec![entry(1)]).is_empty());
        g.joining = true;
        assert_eq!(g.joined(Some(9)), (false, false));
        assert_eq!(g.last(), 1);
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

    #[test]
    fn a_full_hold_still_takes_the_entry_that_fills_the_gap() {
        // Entry 1 was missed; more than MAX_HELD later notifies arrived.
        let mut f = FollowerRoom::new("mimi://a/r/x", 0);
        let n = MAX_HELD as u64 + 10;
        assert_eq!(f.on_notify(vec![entry(2)]), vec![FollowerAction::Fetch { after: 0 }]);
        for seq in 3..=n + 1 {
            assert!(f.on_notify(vec![entry(seq)]).is_empty());
        }
        // The page brings 1..=256: every entry of it below the highest held gets in, the highest held go.
        let a = f.on_log_page((1..=256).map(entry).collect());
        assert_eq!(seqs(&a), (1..=MAX_HELD as u64).collect::<Vec<_>>(), "the whole held run follows the gap");
        assert_eq!(a.last(), Some(&FollowerAction::Fetch { after: MAX_HELD as u64 }), "the rest from the log");
        assert_eq!(f.last(), MAX_HELD as u64);
        // A page of just the missing entry after a full hold: taken too.
        let mut f = FollowerRoom::new("mimi://a/r/x", 0);
        for seq in 2..=n {
            f.on_notify(vec![entry(seq)]);
        }
        let a = f.on_log_page(vec![entry(1)]);
        assert_eq!(seqs(&a), (1..=MAX_HELD as u64).collect::<Vec<_>>());
    }

    #[test]
    fn a_page_without_progress_asks_again_and_the_catch_up_backs_off_then_gives_up() {
        let mut f = FollowerRoom::new("mimi://a/r/x", 3);
        assert_eq!(f.on_notify(vec![entry(6)]), vec![FollowerAction::Fetch { after: 3 }]);
        // The hub answers an empty page although we hold 6: the same fetch, which the shell paces.
        let mut pace = CatchUpBackoff::default();
        let mut waits = Vec::new();
        loop {
            let a = f.on_log_page(Vec::new());
            assert_eq!(a, vec![FollowerAction::Fetch { after: 3 }]);
            match pace.on_page(3, 3) {
                CatchUpStep::Wait(w) => waits.push(w),
                CatchUpStep::GiveUp => break,
                CatchUpStep::Now => panic!("no progress was made"),
            }
        }
        assert_eq!(waits.len(), MAX_STALLS as usize - 1);
        assert_eq!(waits[0], FIRST_STALL_WAIT);
        assert!(waits.windows(2).all(|w| w[1] == (w[0] * 2).min(MAX_STALL_WAIT)));
        assert_eq!(waits.last(), Some(&MAX_STALL_WAIT));
        f.on_fetch_failed();
        // The next notify asks again; a page with progress resets the pace.
        assert_eq!(f.on_notify(vec![entry(7)]), vec![FollowerAction::Fetch { after: 3 }]);
        let a = f.on_log_page(vec![entry(4), entry(5)]);
        assert_eq!(seqs(&a), [4, 5, 6, 7]);
        let mut pace = CatchUpBackoff::default();
        assert_eq!(pace.on_page(3, 3), CatchUpStep::Wait(FIRST_STALL_WAIT));
        assert_eq!(pace.on_page(3, 7), CatchUpStep::Now);
        assert_eq!(pace.on_page(7, 7), CatchUpStep::Wait(FIRST_STALL_WAIT), "reset by progress");
    }
}
