//! Per-user quotas on what native clients put into rooms' logs: messages and bytes per minute, each a token
//! bucket (a burst of a minute's worth, refilled continuously). A client over its quota is answered 429, with the
//! time after which the same message would be taken ([`OverQuota::retry_after`]), and its message is not
//! sequenced; a well-behaved one never meets it. Sans-IO: the clock is an argument.
//!
//! The hub's log is the one thing every member, follower and bridge leaf keeps and replays: without a quota one
//! member could fill memory and disk with large Welcomes or messages (#15: 400 Welcomes of 1 MB in 13 s).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The quotas of one native user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Messages (application messages, handshakes, Welcomes, update bundles) per minute.
    pub messages_per_minute: u32,
    /// Bytes of those per minute.
    pub bytes_per_minute: u64,
    /// Rooms one user may create on this provider.
    pub rooms: usize,
}

impl Default for QuotaConfig {
    /// 120 messages and 8 MiB a minute: a busy human and a client catching up on key updates stay well within.
    fn default() -> Self {
        Self { messages_per_minute: 120, bytes_per_minute: 8 << 20, rooms: 100 }
    }
}

/// A token bucket: `capacity` tokens, refilled at `capacity` per minute.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Self {
        Self { tokens: capacity, at: now }
    }

    fn refill(&mut self, capacity: f64, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * capacity / 60.0).min(capacity);
        self.at = now;
    }
}

/// A message refused by [`Quotas::take`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct OverQuota {
    /// Which quota, for humans.
    pub reason: String,
    /// How long until the same message would be taken, if nothing else is taken meanwhile; `None` if it never
    /// would (larger than a minute's bytes).
    pub retry_after: Option<Duration>,
}

/// The buckets of every user who sent something recently.
#[derive(Debug, Default)]
pub struct Quotas {
    config: QuotaConfig,
    users: Mutex<HashMap<String, (Bucket, Bucket)>>,
}

/// What the refills' floating point may lose: a bucket this close to enough holds enough (a client that waited
/// the time a refusal said is not refused again for a rounding error).
const ROUNDING: f64 = 1e-6;

/// Most users tracked at once; beyond it, users whose buckets are full again are forgotten.
const MAX_TRACKED: usize = 10_000;

impl Quotas {
    /// Quotas with `config`.
    pub fn new(config: QuotaConfig) -> Self {
        Self { config, users: Mutex::new(HashMap::new()) }
    }

    /// The configuration.
    pub fn config(&self) -> QuotaConfig {
        self.config
    }

    /// Takes one message of `bytes` from `user`'s quota at `now`; `Err` with the reason and when to try again (and
    /// nothing taken) if it would exceed it.
    pub fn take(&self, user: &str, bytes: usize, now: Instant) -> Result<(), OverQuota> {
        let (msgs_cap, bytes_cap) = (f64::from(self.config.messages_per_minute), self.config.bytes_per_minute as f64);
        let mut users = self.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if users.len() >= MAX_TRACKED && !users.contains_key(user) {
            users.retain(|_, (m, b)| {
                m.refill(msgs_cap, now);
                b.refill(bytes_cap, now);
                m.tokens < msgs_cap || b.tokens < bytes_cap
            });
        }
        let (m, b) =
            users.entry(user.to_owned()).or_insert_with(|| (Bucket::full(msgs_cap, now), Bucket::full(bytes_cap, now)));
        m.refill(msgs_cap, now);
        b.refill(bytes_cap, now);
        let size = bytes as f64;
        // How long a bucket takes to hold `needed` (never: `None`).
        let wait = |bucket: &Bucket, needed: f64, capacity: f64| -> Option<Duration> {
            let missing = needed - bucket.tokens;
            if missing <= 0.0 {
                Some(Duration::ZERO)
            } else if needed > capacity {
                None
            } else {
                Some(Duration::from_secs_f64(missing * 60.0 / capacity))
            }
        };
        let over = |reason: String| {
            let retry_after = wait(m, 1.0, msgs_cap).zip(wait(b, size, bytes_cap)).map(|(a, b)| a.max(b));
            Err(OverQuota { reason, retry_after })
        };
        if m.tokens + ROUNDING < 1.0 {
            return over(format!("more than {} messages a minute", self.config.messages_per_minute));
        }
        if b.tokens + ROUNDING < size {
            return over(format!("more than {} bytes a minute", self.config.bytes_per_minute));
        }
        m.tokens -= 1.0;
        b.tokens -= size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_a_minutes_worth_then_the_refill_rate() {
        let q = Quotas::new(QuotaConfig { messages_per_minute: 3, bytes_per_minute: 1000, rooms: 1 });
        let t0 = Instant::now();
        for _ in 0..3 {
            q.take("a", 10, t0).expect("within the burst");
        }
        assert!(q.take("a", 10, t0).is_err(), "the fourth message in the same instant");
        q.take("b", 10, t0).expect("another user has a quota of their own");
        q.take("a", 10, t0 + Duration::from_secs(20)).expect("one message refilled after 20 s");
        assert!(q.take("c", 1001, t0).is_err(), "larger than a minute's bytes");
        q.take("c", 1000, t0).expect("a minute's bytes at once");
        assert!(q.take("c", 1, t0).expect_err("over the bytes").reason.contains("bytes"));
        q.take("c", 500, t0 + Duration::from_secs(30)).expect("half a minute refills half");
    }

    #[test]
    fn a_refusal_says_when_the_same_message_would_be_taken() {
        let q = Quotas::new(QuotaConfig { messages_per_minute: 3, bytes_per_minute: 1000, rooms: 1 });
        let t0 = Instant::now();
        for _ in 0..3 {
            q.take("a", 10, t0).expect("within the burst");
        }
        let refused = q.take("a", 10, t0).expect_err("over");
        assert_eq!(refused.retry_after, Some(Duration::from_secs(20)), "one message a 20 s");
        assert!(q.take("a", 10, t0 + Duration::from_millis(19_900)).is_err(), "not before");
        q.take("a", 10, t0 + Duration::from_secs(20)).expect("then taken");

        q.take("b", 900, t0).expect("within the bytes");
        let refused = q.take("b", 400, t0).expect_err("over the bytes");
        assert!(refused.reason.contains("bytes"), "{refused:?}");
        assert_eq!(refused.retry_after, Some(Duration::from_secs(18)), "300 bytes at 1000 a minute");
        q.take("b", 400, t0 + Duration::from_secs(18)).expect("then taken");

        assert_eq!(q.take("c", 1001, t0).expect_err("never fits").retry_after, None);
    }
}
