//! The notifies a hub owes one follower provider, sans-IO: rooms in the order their entries came, retried with
//! capped exponential backoff while the follower is unreachable, never given up.
//!
//! The queue keeps at most one pending notify per room, the newest entry: a follower that receives entry `n`
//! while it holds less fetches the rest from the hub's log (see [`FollowerRoom`](super::FollowerRoom)), so older
//! notifies add nothing. Memory is thus bounded by the number of rooms the follower is in, however long it is
//! down or however slowly it answers, and each push costs O(1). A room keeps its place in the queue while its
//! pending entry is replaced by newer ones; once sent, its next entry goes to the back. A follower that refuses a
//! notify (4xx: it does not follow the room, or does not know us) is not asked again for that entry.
//!
//! The IO shell (`mimi-provider`'s `federation::notify`) runs one queue per follower: it sends [`NotifyQueue::next`], reports
//! the [`Outcome`], and waits as long as [`NotifyQueue::on_result`] says before the next attempt.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// First wait after a failed attempt.
pub const FIRST_RETRY: Duration = Duration::from_millis(200);
/// Longest wait between attempts (how long a returning follower may wait for the hub to notice).
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// How one attempt to notify went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The follower answered 201 (the draft's answer; any 2xx is taken as delivered).
    Delivered,
    /// The follower refused the notify for good (a 4xx answer other than 408 and 429).
    Refused,
    /// No answer, or one that asks to retry (5xx, 408, 429).
    Unreachable,
}

impl Outcome {
    /// The outcome of an HTTP answer with `status`.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Delivered,
            408 | 429 => Self::Unreachable,
            400..=499 => Self::Refused,
            _ => Self::Unreachable,
        }
    }
}

/// The notifies waiting for one follower: per room the newest entry, rooms in the order their first pending
/// entry was queued.
#[derive(Debug, Clone, Default)]
pub struct NotifyQueue {
    /// Rooms with a pending notify, in order.
    order: VecDeque<String>,
    /// The pending entry of each room in `order`.
    newest: HashMap<String, u64>,
    /// The current wait between attempts, while the follower is unreachable.
    retry: Option<Duration>,
}

impl NotifyQueue {
    /// Queues entry `seq` of `room` (replacing an older pending entry of the room). Not between
    /// [`NotifyQueue::next`] and its [`NotifyQueue::on_result`]: the result would then settle the newer entry.
    pub fn push(&mut self, room: &str, seq: u64) {
        match self.newest.get_mut(room) {
            Some(s) => *s = (*s).max(seq),
            None => {
                self.newest.insert(room.to_owned(), seq);
                self.order.push_back(room.to_owned());
            }
        }
    }

    /// The notify to send now, if any.
    pub fn next(&self) -> Option<(&str, u64)> {
        let room = self.order.front()?;
        self.newest.get(room).map(|s| (room.as_str(), *s))
    }

    /// How many notifies wait.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True if none waits.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// True while the follower is unreachable.
    pub fn backing_off(&self) -> bool {
        self.retry.is_some()
    }

    /// The outcome of sending [`NotifyQueue::next`]; returns how long to wait before the next attempt.
    pub fn on_result(&mut self, outcome: Outcome) -> Option<Duration> {
        match outcome {
            Outcome::Delivered | Outcome::Refused => {
                if let Some(room) = self.order.pop_front() {
                    self.newest.remove(&room);
                }
                self.retry = None;
                None
            }
            Outcome::Unreachable => {
                let wait = self.retry.map_or(FIRST_RETRY, |d| (d * 2).min(MAX_RETRY));
                self.retry = Some(wait);
                Some(wait)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_rooms_in_order_and_drops_refused_entries() {
        let mut q = NotifyQueue::default();
        q.push("r1", 1);
        q.push("r2", 1);
        q.push("r1", 2);
        q.push("r1", 2);
        assert_eq!(q.len(), 2, "one pending notify per room");
        assert_eq!(q.next(), Some(("r1", 2)), "the newest entry, where the room's first one was");
        assert_eq!(q.on_result(Outcome::Delivered), None);
        q.push("r1", 3);
        assert_eq!(q.next(), Some(("r2", 1)), "a room sent goes to the back");
        assert_eq!(q.on_result(Outcome::Refused), None, "a refusal is final for that entry");
        assert_eq!(q.next(), Some(("r1", 3)));
        q.on_result(Outcome::Delivered);
        assert!(q.is_empty());
        assert_eq!(q.next(), None);
    }

    #[test]
    fn a_reachable_but_slow_follower_keeps_one_entry_per_room() {
        let mut q = NotifyQueue::default();
        for seq in 1..=10_000 {
            q.push("busy", seq);
            q.push(&format!("r{}", seq % 3), seq);
            if seq % 100 == 0 {
                // Now and then a notify is delivered: never a backoff.
                assert_eq!(q.on_result(Outcome::Delivered), None);
            }
        }
        assert!(!q.backing_off());
        assert!(q.len() <= 4, "bounded by the rooms, not by the entries: {}", q.len());
        let mut sent = Vec::new();
        while let Some((room, seq)) = q.next() {
            sent.push((room.to_owned(), seq));
            q.on_result(Outcome::Delivered);
        }
        assert!(sent.contains(&("busy".to_owned(), 10_000)), "the newest entry is what is sent: {sent:?}");
    }

    #[test]
    fn an_unreachable_follower_gets_backoff_and_only_the_newest_entry_per_room() {
        let mut q = NotifyQueue::default();
        for seq in 1..=5 {
            q.push("r1", seq);
        }
        q.push("r2", 9);
        assert_eq!(q.on_result(Outcome::Unreachable), Some(FIRST_RETRY));
        assert!(q.backing_off());
        assert_eq!(q.len(), 2);
        assert_eq!(q.next(), Some(("r1", 5)), "the follower fetches 1..4 from the log when it sees 5");
        for seq in 6..=100 {
            q.push("r1", seq);
        }
        assert_eq!(q.len(), 2, "memory stays bounded by the number of rooms");
        assert_eq!(q.next(), Some(("r1", 100)));
        let mut waits = Vec::new();
        for _ in 0..8 {
            waits.push(q.on_result(Outcome::Unreachable).expect("wait"));
        }
        assert_eq!(waits[0], FIRST_RETRY * 2);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(waits.last(), Some(&MAX_RETRY), "capped");
        // Back again: delivered, backoff reset, later entries queue normally.
        assert_eq!(q.on_result(Outcome::Delivered), None);
        assert!(!q.backing_off());
        assert_eq!(q.next(), Some(("r2", 9)));
        q.push("r1", 101);
        q.push("r1", 102);
        assert_eq!(q.len(), 2);
        assert_eq!(q.next(), Some(("r2", 9)));
        q.on_result(Outcome::Delivered);
        assert_eq!(q.next(), Some(("r1", 102)));
    }

    #[test]
    fn statuses_map_to_outcomes() {
        for s in [200, 201, 204] {
            assert_eq!(Outcome::of_status(s), Outcome::Delivered, "{s}");
        }
        for s in [400, 403, 404, 413, 421] {
            assert_eq!(Outcome::of_status(s), Outcome::Refused, "{s}");
        }
        for s in [101, 302, 408, 429, 500, 502, 503] {
            assert_eq!(Outcome::of_status(s), Outcome::Unreachable, "{s}");
        }
    }
}
