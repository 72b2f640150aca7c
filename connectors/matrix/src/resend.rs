//! Looking for an earlier attempt before an old delivery is sent again (sans-IO).
//!
//! A homeserver deduplicates a device's transaction ids only for a while: Synapse forgets them after a day
//! (`_cleanup_old_transaction_ids`), and without a device at its next restart. A delivery the core queued longer
//! ago than [`LOOKUP_AFTER`] may have reached the room in an attempt whose answer was lost (the daemon killed, the
//! connection cut); sent again under the same transaction id after the homeserver forgot it, it would be a second
//! event. So before such a send the account reads the room's timeline back, as the sending device, to the time the
//! delivery was queued ([`scan`] over each page): an event of the sender whose `unsigned.transaction_id` is the
//! delivery's is the earlier attempt, and its id is the delivery's answer. The homeserver shows a transaction id
//! only to the device that sent the event, which is why ghosts send from a device of their own.
//!
//! The walk is bounded ([`MAX_PAGES`] of [`PAGE`] events): when it ends before reaching the time the delivery was
//! queued, the delivery is sent (a possible duplicate is better than a loss) and the account says so in its log.
//! Only the timestamps of the homeserver's own users end a walk: another server's clock may be off, and an event
//! federated late sits in the timeline after newer ones. A [`Walk`] remembers every earlier attempt it saw for a
//! while, so that a backlog of old deliveries (a day-long outage) costs one walk per room and ghost, not one each.

use ruma::events::AnyTimelineEvent;
use ruma::serde::Raw;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Deliveries queued longer ago than this are looked for before they are sent (Synapse keeps transaction ids for
/// 24 hours; an hour less leaves room for clocks that disagree).
pub const LOOKUP_AFTER: Duration = Duration::from_secs(23 * 3600);
/// Events per page of the walk.
pub const PAGE: usize = 100;
/// Pages the walk reads at most.
pub const MAX_PAGES: usize = 20;
/// How long a walk's findings answer for later deliveries of the same ghost in the same room.
pub const WALK_KEPT: Duration = Duration::from_secs(600);
/// How far before the queue time the walk still reads (the homeserver's clock may be behind ours).
const SKEW_MS: u64 = 10 * 60 * 1000;

/// True if a delivery queued at `queued_at_ms` (0: unknown) is old enough to be looked for before it is sent.
pub fn due(queued_at_ms: u64, now_ms: u64) -> bool {
    queued_at_ms != 0 && u128::from(now_ms.saturating_sub(queued_at_ms)) >= LOOKUP_AFTER.as_millis()
}

/// What a walk over one ghost's events in one room found.
#[derive(Debug, Clone)]
pub struct Walk {
    /// When it was made.
    pub at: Instant,
    /// Deliveries queued at or after this time (ms since the Unix epoch) are all among [`Walk::attempts`] if they
    /// were sent before the walk; `u64::MAX` if the walk ended before reaching any time.
    pub covers_from_ms: u64,
    /// The ghost's events seen: transaction id → event id.
    pub attempts: HashMap<String, String>,
}

impl Walk {
    /// A walk begun at `at`, nothing seen yet.
    pub fn new(at: Instant) -> Self {
        Self { at, covers_from_ms: u64::MAX, attempts: HashMap::new() }
    }

    /// The answer for a delivery with `txn_id` queued at `queued_at_ms`, if this walk has one at `now`: its
    /// earlier attempt's event id, or `Some(None)` for none.
    pub fn answer(&self, txn_id: &str, queued_at_ms: u64, now: Instant) -> Option<Option<String>> {
        let fresh = now.saturating_duration_since(self.at) < WALK_KEPT;
        let known = self.attempts.get(txn_id).cloned();
        match known {
            Some(id) if fresh => Some(Some(id)),
            None if fresh && queued_at_ms >= self.covers_from_ms => Some(None),
            _ => None,
        }
    }
}

/// The fields of a timeline event the walk looks at.
#[derive(Deserialize)]
struct Seen {
    event_id: String,
    sender: String,
    origin_server_ts: u64,
    #[serde(default)]
    unsigned: Unsigned,
}

#[derive(Deserialize, Default)]
struct Unsigned {
    transaction_id: Option<String>,
}

/// Reads one page of the timeline (newest first) into `walk`: the events `sender` sent with a transaction id;
/// returns true once the page reaches back past `since_ms` (ms since the Unix epoch) by the clock of the server
/// `local_server` (the walk then covers deliveries queued from `since_ms` on). Events that do not parse are skipped.
pub fn scan(walk: &mut Walk, chunk: &[Raw<AnyTimelineEvent>], sender: &str, local_server: &str, since_ms: u64) -> bool {
    let before = since_ms.saturating_sub(SKEW_MS);
    let local = |user: &str| user.rsplit_once(':').is_some_and(|(_, server)| server == local_server);
    for ev in chunk.iter().filter_map(|raw| serde_json::from_str::<Seen>(raw.json().get()).ok()) {
        if ev.sender == sender
            && let Some(txn) = ev.unsigned.transaction_id
        {
            walk.attempts.insert(txn, ev.event_id);
        }
        if ev.origin_server_ts < before && local(&ev.sender) {
            walk.covers_from_ms = walk.covers_from_ms.min(since_ms);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: serde_json::Value) -> Raw<AnyTimelineEvent> {
        Raw::from_json(serde_json::value::to_raw_value(&v).expect("raw"))
    }

    fn ev(id: &str, sender: &str, ts: u64, txn: Option<&str>) -> Raw<AnyTimelineEvent> {
        let mut v = json!({"event_id": id, "sender": sender, "origin_server_ts": ts, "type": "m.room.message",
            "room_id": "!r:hs", "content": {"msgtype": "m.text", "body": "x"}});
        if let Some(t) = txn {
            v["unsigned"] = json!({"transaction_id": t});
        }
        raw(v)
    }

    const DAY: u64 = 24 * 3600 * 1000;

    #[test]
    fn only_deliveries_older_than_23_hours_are_looked_for() {
        let now = 100 * DAY;
        assert!(!due(0, now), "unknown queue time");
        assert!(!due(now - DAY / 2, now));
        assert!(!due(now - 23 * 3600 * 1000 + 1, now));
        assert!(due(now - 23 * 3600 * 1000, now));
        assert!(due(now - 2 * DAY, now));
        assert!(!due(now + 5, now), "a queue time ahead of our clock");
    }

    #[test]
    fn the_senders_events_with_a_transaction_id_are_its_attempts() {
        let queued = 10 * DAY;
        let page = [
            ev("$new", "@a:hs", queued + 3000, None),
            ev("$other-txn", "@ghost:hs", queued + 2000, Some("t2")),
            ev("$someone-else", "@b:hs", queued + 1500, Some("t1")),
            ev("$it", "@ghost:hs", queued + 1000, Some("t1")),
        ];
        let mut walk = Walk::new(Instant::now());
        assert!(!scan(&mut walk, &page, "@ghost:hs", "hs", queued), "not back to the queue time yet");
        assert_eq!(walk.attempts.get("t1").map(String::as_str), Some("$it"));
        assert_eq!(walk.attempts.get("t2").map(String::as_str), Some("$other-txn"));
        assert_eq!(walk.answer("t1", queued, walk.at), Some(Some("$it".into())));
        assert_eq!(walk.answer("t3", queued, walk.at), None, "not covered: read on");
    }

    #[test]
    fn only_a_local_event_from_before_the_queue_time_ends_the_walk() {
        let queued = 10 * DAY;
        let old = queued - SKEW_MS - 1;
        let mut walk = Walk::new(Instant::now());
        // A federated event with an old timestamp (a clock behind, or late) does not end it.
        let page = [ev("$a", "@ghost:hs", queued + 10, Some("t2")), ev("$far", "@x:elsewhere", old, None)];
        assert!(!scan(&mut walk, &page, "@ghost:hs", "hs", queued));
        // Within the clock skew allowance the walk reads on.
        assert!(!scan(&mut walk, &[ev("$b", "@a:hs", queued - SKEW_MS + 1, None)], "@ghost:hs", "hs", queued));
        // Events that do not parse are skipped.
        let page = [raw(json!({"event_id": "$x"})), ev("$old", "@a:hs", old, None)];
        assert!(scan(&mut walk, &page, "@ghost:hs", "hs", queued));
        assert_eq!(walk.covers_from_ms, queued);
        assert_eq!(walk.answer("t1", queued, walk.at), Some(None), "covered: never sent");
        assert_eq!(walk.answer("t1", queued - 1, walk.at), None, "queued before what the walk covers");
        assert_eq!(walk.answer("t2", queued + 5, walk.at + WALK_KEPT), None, "a walk too old answers nothing");
    }
}
