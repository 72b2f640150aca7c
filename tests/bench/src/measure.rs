//! Markers, arrival times and the statistics of one direction (sans IO).
//!
//! Every benchmark message carries a marker `mbDxI` (direction D, message I). The sender notes the instant just
//! before its send call; every reading client notes the instant a line or event carrying a marker arrives, keyed by
//! the reader's name. All clients live in one process, on one monotonic clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The marker of message `i` of direction `dir`.
pub fn marker(dir: usize, i: usize) -> String {
    format!("mb{dir}x{i}")
}

/// Every marker in `text` (`mb` digits `x` digits, not glued to other alphanumerics).
pub fn markers(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < b.len() {
        let starts = &b[i..i + 2] == b"mb" && (i == 0 || !b[i - 1].is_ascii_alphanumeric());
        if starts {
            let digits = |mut j: usize| {
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                j
            };
            let d_end = digits(i + 2);
            if d_end > i + 2 && d_end < b.len() && b[d_end] == b'x' {
                let n_end = digits(d_end + 1);
                if n_end > d_end + 1 && (n_end == b.len() || !b[n_end].is_ascii_alphanumeric()) {
                    out.push(text[i..n_end].to_owned());
                    i = n_end;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// (reader, marker) → (first arrival, times seen).
type ArrivalMap = HashMap<(String, String), (Instant, u32)>;

/// Arrivals seen by every reader.
#[derive(Clone, Default)]
pub struct Arrivals(Arc<Mutex<ArrivalMap>>);

impl Arrivals {
    /// Notes every marker of `text` as arrived at `reader` now.
    pub fn saw(&self, reader: &str, text: &str) {
        let now = Instant::now();
        let found = markers(text);
        if found.is_empty() {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for m in found {
            map.entry((reader.to_owned(), m)).and_modify(|e| e.1 += 1).or_insert((now, 1));
        }
    }

    /// The markers of `want` that have not reached `reader` (yet).
    pub fn missing(&self, reader: &str, want: &[String]) -> Vec<String> {
        want.iter().filter(|m| self.get(reader, m).is_none()).cloned().collect()
    }

    /// When `marker` first reached `reader`, and how often.
    pub fn get(&self, reader: &str, marker: &str) -> Option<(Instant, u32)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&(reader.to_owned(), marker.to_owned())).copied()
    }
}

/// What one direction measured.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Messages sent.
    pub sent: usize,
    /// Messages that had not arrived when the reader stopped waiting (late or lost).
    pub lost: usize,
    /// Extra copies that arrived.
    pub duplicates: u32,
    /// Latency percentiles of the arrived messages, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// The rate the sender achieved: messages per second from its first send call to its last (0 for one).
    pub send_rate: f64,
}

/// The summary of markers sent at `sent` (marker, instant) as seen by `reader`.
pub fn summarize(arrivals: &Arrivals, reader: &str, sent: &[(String, Instant)]) -> Summary {
    let mut lat = Vec::new();
    let mut duplicates = 0;
    for (m, t0) in sent {
        if let Some((t, n)) = arrivals.get(reader, m) {
            lat.push(t.saturating_duration_since(*t0));
            duplicates += n - 1;
        }
    }
    lat.sort();
    let span = match (sent.first(), sent.last()) {
        (Some((_, a)), Some((_, b))) => b.saturating_duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    Summary {
        send_rate: if span > 0.0 { (sent.len() - 1) as f64 / span } else { 0.0 },
        sent: sent.len(),
        lost: sent.len() - lat.len(),
        duplicates,
        p50_ms: ms(percentile(&lat, 0.50)),
        p99_ms: ms(percentile(&lat, 0.99)),
        max_ms: ms(lat.last().copied()),
    }
}

/// Per message of `sent` seen by both readers: how long after reaching `first` it reached `then`, sorted.
pub fn gaps(arrivals: &Arrivals, first: &str, then: &str, sent: &[(String, Instant)]) -> Vec<Duration> {
    let mut out: Vec<Duration> = sent
        .iter()
        .filter_map(|(m, _)| {
            let (a, _) = arrivals.get(first, m)?;
            let (b, _) = arrivals.get(then, m)?;
            Some(b.saturating_duration_since(a))
        })
        .collect();
    out.sort();
    out
}

/// The median of sorted durations in milliseconds (NaN for none).
pub fn median_ms(sorted: &[Duration]) -> f64 {
    ms(percentile(sorted, 0.5))
}

/// The nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_inside_relayed_lines_and_not_inside_words() {
        assert_eq!(markers("<mx\u{200b}user> bench mb3x17 fox"), vec!["mb3x17"]);
        assert_eq!(markers("mb1x2 mb10x200"), vec!["mb1x2", "mb10x200"]);
        assert!(markers("xmb1x2 mb1x mbx2 mb1x2y").is_empty());
    }

    #[test]
    fn summary_counts_losses_duplicates_and_percentiles() {
        let a = Arrivals::default();
        let t0 = Instant::now();
        let sent: Vec<(String, Instant)> = (0..4).map(|i| (marker(1, i), t0)).collect();
        for i in 0..3 {
            a.saw("r", &marker(1, i));
        }
        a.saw("r", &marker(1, 0));
        a.saw("other", &marker(1, 3));
        let s = summarize(&a, "r", &sent);
        assert_eq!((s.sent, s.lost, s.duplicates), (4, 1, 1));
        assert!(s.p50_ms >= 0.0 && s.p99_ms >= s.p50_ms && s.max_ms >= s.p99_ms);
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&d, 0.99), Some(Duration::from_millis(99)));
        assert!(median_ms(&[]).is_nan());
    }

    #[test]
    fn gaps_are_measured_per_message_between_two_readers() {
        let a = Arrivals::default();
        let sent: Vec<(String, Instant)> = (0..3).map(|i| (marker(2, i), Instant::now())).collect();
        a.saw("push", &marker(2, 0));
        a.saw("push", &marker(2, 1));
        std::thread::sleep(Duration::from_millis(20));
        a.saw("irc", &marker(2, 0));
        a.saw("irc", &marker(2, 2));
        let g = gaps(&a, "push", "irc", &sent);
        assert_eq!(g.len(), 1, "only mb2x0 reached both");
        assert!(g[0] >= Duration::from_millis(20));
    }
}
