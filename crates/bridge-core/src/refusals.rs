//! Which refused events (too large to bridge at intake, refused for good by the room of record) get a notice to
//! their sender, sans IO.
//!
//! A notice is visible to the whole room, so it must not be a way to make the bridge talk: a redelivery of a
//! refused event (a homeserver retrying its transaction, an XMPP archive replayed after a reconnect) gets none —
//! refused native ids are remembered —, and one sender gets at most one notice per [`PER_SENDER`].

use bridge_api::ids::{LegId, NativeId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Least time between two notices to one sender on one leg.
pub const PER_SENDER: Duration = Duration::from_secs(60);
/// Refused native ids (and senders) remembered; the oldest are forgotten first.
const REMEMBERED: usize = 1024;

/// The refusals seen lately.
#[derive(Debug, Default)]
pub struct Refusals {
    refused: HashSet<(LegId, NativeId)>,
    order: VecDeque<(LegId, NativeId)>,
    told: HashMap<(LegId, String), Instant>,
}

impl Refusals {
    /// Notes that the event `native` on `leg` was refused; true unless it was before (of those remembered).
    /// Without the limit per sender: for a refusal that only the sender's own messages can cause, one each.
    pub fn first(&mut self, leg: &LegId, native: &NativeId) -> bool {
        let key = (leg.clone(), native.clone());
        if self.refused.contains(&key) {
            return false;
        }
        if self.order.len() >= REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.refused.remove(&old);
        }
        self.refused.insert(key.clone());
        self.order.push_back(key);
        true
    }

    /// Notes that the event `native` from `sender` on `leg` was refused; true if its sender should be told now.
    pub fn refused(&mut self, leg: &LegId, native: Option<&NativeId>, sender: &str, now: Instant) -> bool {
        if let Some(n) = native
            && !self.first(leg, n)
        {
            return false;
        }
        if self.told.len() >= REMEMBERED {
            self.told.retain(|_, at| now.saturating_duration_since(*at) < PER_SENDER);
            if self.told.len() >= REMEMBERED {
                // A thousand senders refused within a minute: forget them all rather than grow.
                self.told.clear();
            }
        }
        let who = (leg.clone(), sender.to_owned());
        match self.told.get(&who) {
            Some(at) if now.saturating_duration_since(*at) < PER_SENDER => false,
            _ => {
                self.told.insert(who, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge_api::AccountId;

    fn leg() -> LegId {
        LegId::new(AccountId::parse("irc.t").expect("account"), "#c").expect("leg")
    }

    #[test]
    fn a_redelivery_is_not_told_again_and_a_sender_at_most_once_a_minute() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        let n = |s: &str| NativeId(s.into());
        assert!(r.refused(&leg(), Some(&n("1")), "alice", t0));
        assert!(!r.refused(&leg(), Some(&n("1")), "alice", t0 + PER_SENDER * 2), "the same event again");
        assert!(!r.refused(&leg(), Some(&n("2")), "alice", t0 + Duration::from_secs(1)), "alice was just told");
        assert!(r.refused(&leg(), Some(&n("3")), "bob", t0 + Duration::from_secs(1)), "bob was not");
        assert!(r.refused(&leg(), Some(&n("4")), "alice", t0 + PER_SENDER), "a minute later");
    }

    #[test]
    fn what_it_remembers_is_bounded() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        for i in 0..(3 * REMEMBERED) {
            r.refused(&leg(), Some(&NativeId(i.to_string())), &format!("u{i}"), t0);
        }
        assert!(r.refused.len() <= REMEMBERED && r.order.len() <= REMEMBERED);
        assert!(r.told.len() <= REMEMBERED + 1);
    }
}
