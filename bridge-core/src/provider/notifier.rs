//! The notifies a hub owes one follower provider, sans-IO: in order, retried with capped exponential backoff
//! while the follower is unreachable, never given up.
//!
//! While the follower is unreachable the queue keeps only the newest entry of each room: a follower that
//! receives entry `n` while it holds less fetches the rest from the hub's log (see
//! [`FollowerRoom`](super::FollowerRoom)), so older notifies add nothing. Memory is thus bounded by the number of
//! rooms the follower is in, however long it is down. A follower that refuses a notify (4xx: it does not follow
//! the room, or does not know us) is not asked again for that entry.
//!
//! The IO shell (`src/mimi_http/outbound.rs`) runs one queue per follower: it sends [`NotifyQueue::next`], reports
//! the [`Outcome`], and waits as long as [`NotifyQueue::on_result`] says before the next attempt.

use std::collections::VecDeque;
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

/// The notifies waiting for one follower: `(room, seq)` in the order the hub accepted them.
#[derive(Debug, Clone, Default)]
pub struct NotifyQueue {
    pending: VecDeque<(String, u64)>,
    /// The current wait between attempts, while the follower is unreachable.
    retry: Option<Duration>,
}

impl NotifyQueue {
    /// Queues entry `seq` of `room`.
    pub fn push(&mut self, room: &str, seq: u64) {
        if let Some(e) = self.pending.iter_mut().find(|(r, s)| r == room && (*s == seq || self.retry.is_some())) {
            e.1 = e.1.max(seq);
            return;
        }
        self.pending.push_back((room.to_owned(), seq));
    }

    /// The notify to send now, if any.
    pub fn next(&self) -> Option<(&str, u64)> {
        self.pending.front().map(|(r, s)| (r.as_str(), *s))
    }

    /// How many notifies wait.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True if none waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// True while the follower is unreachable.
    pub fn backing_off(&self) -> bool {
        self.retry.is_some()
    }

    /// The outcome of sending [`NotifyQueue::next`]; returns how long to wait before the next attempt.
    pub fn on_result(&mut self, outcome: Outcome) -> Option<Duration> {
        match outcome {
            Outcome::Delivered | Outcome::Refused => {
                self.pending.pop_front();
                self.retry = None;
                None
            }
            Outcome::Unreachable => {
                let wait = self.retry.map_or(FIRST_RETRY, |d| (d * 2).min(MAX_RETRY));
                self.retry = Some(wait);
                self.coalesce();
                Some(wait)
            }
        }
    }

    /// Keeps the newest entry of each room, where the room's first entry was.
    fn coalesce(&mut self) {
        let mut out: VecDeque<(String, u64)> = VecDeque::with_capacity(self.pending.len());
        for (room, seq) in self.pending.drain(..) {
            match out.iter_mut().find(|(r, _)| *r == room) {
                Some(e) => e.1 = e.1.max(seq),
                None => out.push_back((room, seq)),
            }
        }
        self.pending = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_in_order_and_drops_refused_entries() {
        let mut q = NotifyQueue::default();
        q.push("r1", 1);
        q.push("r2", 1);
        q.push("r1", 2);
        q.push("r1", 2);
        assert_eq!(q.len(), 3, "an entry queued twice is sent once");
        assert_eq!(q.next(), Some(("r1", 1)));
        assert_eq!(q.on_result(Outcome::Delivered), None);
        assert_eq!(q.next(), Some(("r2", 1)));
        assert_eq!(q.on_result(Outcome::Refused), None, "a refusal is final for that entry");
        assert_eq!(q.next(), Some(("r1", 2)));
        q.on_result(Outcome::Delivered);
        assert!(q.is_empty());
        assert_eq!(q.next(), None);
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
        assert_eq!(q.len(), 3);
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
