//! Flood control: a token bucket per connection, so the bridge never earns an "Excess Flood" kill.
//!
//! `burst` lines may go out at once; after that one line per `1 / rate` seconds. Servers differ (ngIRCd delays
//! input above ~256 bytes/s; Libera's sendq kills floods), so both are configurable per account.

use std::time::{Duration, Instant};

/// A token bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// `burst` tokens, refilled at `rate` per second (both at least a small positive value).
    pub fn new(burst: u32, rate: f64, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self { capacity, rate: rate.max(0.01), tokens: capacity, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.at = now;
    }

    /// Takes a token if one is available now.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be available.
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 { now } else { now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, 2.0, t0);
        assert!(b.try_take(t0) && b.try_take(t0) && b.try_take(t0));
        assert!(!b.try_take(t0));
        assert_eq!(b.ready_at(t0), t0 + Duration::from_millis(500));
        assert!(b.try_take(t0 + Duration::from_millis(500)));
        assert!(!b.try_take(t0 + Duration::from_millis(600)));
        // Never more than the burst after a long pause.
        let later = t0 + Duration::from_secs(100);
        assert!((0..3).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
    }
}
