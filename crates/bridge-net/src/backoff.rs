//! Reconnect delays: exponential backoff with jitter, so that many connections (many bridges, per-user
//! connections, puppets) that lost their server at once do not come back in lockstep.

use std::time::Duration;

/// `base` scaled by a random factor in [0.75, 1.25) (±25 % jitter).
pub fn jitter(base: Duration) -> Duration {
    base.mul_f64(0.75 + rand::random::<f64>() * 0.5)
}

/// Exponential backoff between `min` and `max`, doubling after each failure.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, never exceeds `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }

    /// The delay to wait now (jittered); the following one is twice the base, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = jitter(self.next);
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to `min` (after a connection that worked).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        let d: Vec<f64> = (0..4).map(|_| b.next_delay().as_secs_f64()).collect();
        for (got, base) in d.iter().zip([1.0, 2.0, 4.0, 4.0]) {
            assert!(*got >= base * 0.75 && *got < base * 1.25, "{got} vs {base}");
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(1250));
    }
}
