//! Sans IO: the search for the highest rate a bridge sustains in one direction.
//!
//! A trial sends messages at one rate for a while; it is **sustained** when every message arrived once and none
//! later than [`LATE`] after its send call. The search doubles the rate from [`RateSearch::new`]'s first one
//! while trials pass (up to its ceiling), halves it while the first ones fail, then bisects between the highest
//! rate that passed and the lowest that failed a few times. The answer is the highest rate that passed.

use crate::measure::Summary;
use std::time::Duration;

/// The latest a message may arrive for its trial to count as sustained.
pub const LATE: Duration = Duration::from_secs(5);

/// Whether a trial's summary is sustained: nothing missing or doubled, nothing later than [`LATE`].
pub fn sustained(s: &Summary) -> bool {
    s.lost == 0 && s.duplicates == 0 && s.max_ms <= LATE.as_secs_f64() * 1000.0
}

/// The search's state: feed it each trial's result, ask it for the next rate.
#[derive(Debug, Clone)]
pub struct RateSearch {
    /// Highest rate that passed.
    passed: Option<f64>,
    /// Lowest rate that failed.
    failed: Option<f64>,
    next: Option<f64>,
    ceiling: f64,
    floor: f64,
    bisections: u32,
    /// Every trial: (rate, sustained).
    trials: Vec<(f64, bool)>,
}

impl RateSearch {
    /// A search starting at `first` msg/s, never above `ceiling` nor below `floor`, that bisects `bisections`
    /// times once it has found a rate that passes and one that fails.
    pub fn new(first: f64, floor: f64, ceiling: f64, bisections: u32) -> Self {
        Self { passed: None, failed: None, next: Some(first), ceiling, floor, bisections, trials: Vec::new() }
    }

    /// The rate of the next trial, or `None` when the search is over.
    pub fn next(&self) -> Option<f64> {
        self.next
    }

    /// Notes that the trial at `rate` passed (`true`) or failed, and picks the next rate.
    pub fn record(&mut self, rate: f64, passed: bool) {
        self.trials.push((rate, passed));
        if passed {
            self.passed = Some(self.passed.map_or(rate, |p| p.max(rate)));
        } else {
            self.failed = Some(self.failed.map_or(rate, |f| f.min(rate)));
        }
        self.next = match (self.passed, self.failed) {
            (Some(p), None) if p < self.ceiling => Some((p * 2.0).min(self.ceiling)),
            (Some(_), None) => None,
            (None, Some(f)) if f / 2.0 >= self.floor => Some(f / 2.0),
            (None, Some(_)) => None,
            (Some(p), Some(f)) if self.bisections > 0 && f - p > 0.25 => {
                self.bisections -= 1;
                // Quarter steps: trials of 10.125 msg/s say nothing 10.25 would not.
                let mid = ((p + f) / 2.0 * 4.0).round() / 4.0;
                (mid > p && mid < f).then_some(mid)
            }
            (Some(_), Some(_)) => None,
            (None, None) => None,
        };
    }

    /// The highest rate that passed (`None`: not even the floor).
    pub fn result(&self) -> Option<f64> {
        self.passed
    }

    /// Whether the ceiling itself passed (the bridge may sustain more).
    pub fn hit_ceiling(&self) -> bool {
        self.passed.is_some_and(|p| p >= self.ceiling)
    }

    /// Every trial so far: (rate, sustained).
    pub fn trials(&self) -> &[(f64, bool)] {
        &self.trials
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a bridge that sustains anything up to `limit`.
    fn search(limit: f64) -> RateSearch {
        let mut s = RateSearch::new(1.0, 0.25, 64.0, 3);
        while let Some(r) = s.next() {
            s.record(r, r <= limit);
        }
        s
    }

    #[test]
    fn doubles_then_bisects_to_the_highest_passing_rate() {
        let s = search(11.0);
        let rates: Vec<f64> = s.trials().iter().map(|t| t.0).collect();
        assert_eq!(rates, [1.0, 2.0, 4.0, 8.0, 16.0, 12.0, 10.0, 11.0]);
        assert_eq!(s.result(), Some(11.0));
        assert!(!s.hit_ceiling());
    }

    #[test]
    fn halves_when_the_first_rate_fails_and_stops_at_the_floor() {
        let s = search(0.6);
        assert_eq!(s.trials().iter().map(|t| t.0).collect::<Vec<_>>(), [1.0, 0.5, 0.75]);
        assert_eq!(s.result(), Some(0.5));
        assert_eq!(search(0.1).result(), None, "not even the floor");
    }

    #[test]
    fn stops_at_the_ceiling() {
        let s = search(1000.0);
        assert_eq!(s.result(), Some(64.0));
        assert!(s.hit_ceiling());
    }

    #[test]
    fn a_trial_is_sustained_only_complete_single_and_in_time() {
        let ok = Summary { sent: 10, lost: 0, duplicates: 0, p50_ms: 3.0, p99_ms: 9.0, max_ms: 4999.0, send_rate: 1.0 };
        assert!(sustained(&ok));
        assert!(!sustained(&Summary { lost: 1, ..ok.clone() }));
        assert!(!sustained(&Summary { duplicates: 1, ..ok.clone() }));
        assert!(!sustained(&Summary { max_ms: 5001.0, ..ok }));
    }
}
