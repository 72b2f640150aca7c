use super::*;
use std::collections::VecDeque;

const LINE: usize = 63;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A fixture server on a fake clock: it processes input at `rate` lines/s after a burst of 5 (solanum and hybrid
/// alike), queueing the rest, answers PINGs in order with the lines, and records what it processed.
struct FakeServer {
    rate: f64,
    budget: f64,
    at: Instant,
    queue: VecDeque<(Option<String>, usize)>,
    max_lines: usize,
    max_bytes: usize,
    processed: Vec<Instant>,
    pings: usize,
    pongs: Vec<String>,
}

impl FakeServer {
    fn new(rate: f64, now: Instant) -> Self {
        let (queue, processed, pongs) = (VecDeque::new(), Vec::new(), Vec::new());
        Self { rate, budget: 5.0, at: now, queue, max_lines: 0, max_bytes: 0, processed, pings: 0, pongs }
    }

    fn receive(&mut self, ping: Option<String>, bytes: usize) {
        self.queue.push_back((ping, bytes));
        self.max_lines = self.max_lines.max(self.queue.len());
        self.max_bytes = self.max_bytes.max(self.queue.iter().map(|(_, b)| b).sum());
    }

    fn advance(&mut self, now: Instant) {
        self.budget = (self.budget + now.saturating_duration_since(self.at).as_secs_f64() * self.rate).min(5.0);
        self.at = now;
        while self.budget >= 1.0 {
            let Some((ping, _)) = self.queue.pop_front() else { break };
            self.budget -= 1.0;
            match ping {
                Some(token) => {
                    self.pings += 1;
                    self.pongs.push(token);
                }
                None => self.processed.push(now),
            }
        }
    }
}

/// Drives `pacer` with `n` queued lines of `len` bytes against `server` in 5 ms steps; returns when all were
/// processed (or after `limit`).
fn drive(pacer: &mut Pacer, server: &mut FakeServer, n: usize, len: usize, t0: Instant, limit: Duration) -> Instant {
    let mut queued = n;
    let mut now = t0;
    while server.processed.len() < n && now < t0 + limit {
        server.advance(now);
        for token in std::mem::take(&mut server.pongs) {
            assert!(pacer.pong(&token), "{token} is ours");
        }
        loop {
            match pacer.poll((queued > 0).then_some(len), now) {
                Pace::Send => {
                    pacer.paced(len, now);
                    server.receive(None, len);
                    queued -= 1;
                }
                Pace::Ping(m) => {
                    let token = m.param(0).unwrap_or_default().to_owned();
                    server.receive(Some(token), m.to_line().len() + 2);
                }
                Pace::Wait(_) => break,
                Pace::Stalled => panic!("stalled at {:?}", now - t0),
            }
        }
        now += ms(5);
    }
    now
}

/// Asserts that a line of [`LINE`] bytes may go now, and sends it.
fn send_one(pacer: &mut Pacer, now: Instant) {
    assert_eq!(pacer.poll(Some(LINE), now), Pace::Send);
    pacer.paced(LINE, now);
}

/// Lines per second over the sustained part (after the first 10 lines).
fn sustained_rate(processed: &[Instant]) -> f64 {
    let (first, last) = (processed[10], processed[processed.len() - 1]);
    (processed.len() - 11) as f64 / (last - first).as_secs_f64()
}

#[test]
fn follows_the_server_pace_and_never_overfills_its_queue() {
    for rate in [1.0, 2.0, 3.5, 10.0, 50.0] {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(PaceConfig::default(), t0);
        let mut server = FakeServer::new(rate, t0);
        let n = 200;
        drive(&mut pacer, &mut server, n, LINE, t0, Duration::from_secs(400));
        assert_eq!(server.processed.len(), n, "{rate}/s: all lines processed");
        // Our PING included, the server's queue never holds more than the window: under solanum's 20 lines and
        // hybrid's 2560 bytes.
        assert!(server.max_lines <= DEFAULT_WINDOW_LINES as usize, "{rate}/s: queue {} lines", server.max_lines);
        assert!(server.max_bytes <= WINDOW_BYTES, "{rate}/s: queue {} bytes", server.max_bytes);
        // Throughput follows the server: within 10 % of its rate (its input is never idle)…
        let got = sustained_rate(&server.processed);
        let share = server.pings as f64 / (server.pings + n) as f64;
        let lines_rate = rate * (1.0 - share);
        assert!(got >= 0.95 * lines_rate && got <= 1.05 * rate, "{rate}/s: sustained {got:.2} lines/s");
        // …and PINGs are a small share of the lines (one per 14 lines of 63 bytes).
        assert!(share <= 1.0 / 14.0, "{rate}/s: {} PINGs for {n} lines", server.pings);
    }
}

#[test]
fn long_lines_are_bounded_by_the_byte_window() {
    let t0 = Instant::now();
    let mut pacer = Pacer::new(PaceConfig::default(), t0);
    let mut server = FakeServer::new(1.0, t0);
    drive(&mut pacer, &mut server, 40, 510, t0, Duration::from_secs(120));
    assert_eq!(server.processed.len(), 40);
    assert!(server.max_bytes <= WINDOW_BYTES, "queue {} bytes", server.max_bytes);
    assert!(server.max_lines <= 4, "3 lines of 510 bytes and a PING: {}", server.max_lines);
}

#[test]
fn a_line_longer_than_the_window_goes_when_nothing_is_in_flight() {
    let t0 = Instant::now();
    let cfg = PaceConfig { window_bytes: 100, ..PaceConfig::default() };
    let mut pacer = Pacer::new(cfg, t0);
    assert_eq!(pacer.poll(Some(300), t0), Pace::Send);
    pacer.paced(300, t0);
    // Now held back: the PING goes first, then nothing until its PONG.
    let Pace::Ping(ping) = pacer.poll(Some(300), t0) else { panic!("a PING") };
    assert_eq!(pacer.poll(Some(300), t0), Pace::Wait(Some(t0 + PONG_TIMEOUT)));
    assert!(pacer.pong(ping.param(0).unwrap_or_default()));
    assert_eq!(pacer.in_flight(), (0, 0));
    assert_eq!(pacer.poll(Some(300), t0), Pace::Send);
}

#[test]
fn the_ping_carries_its_own_token_and_other_pongs_are_not_taken() {
    let t0 = Instant::now();
    let mut pacer = Pacer::new(PaceConfig { window_lines: 2, ..PaceConfig::default() }, t0);
    send_one(&mut pacer, t0);
    let Pace::Ping(ping) = pacer.poll(Some(LINE), t0) else { panic!("a PING at 7/8 of the window") };
    assert_eq!(ping.to_line(), "PING mimi-pace-1");
    assert_eq!(pacer.in_flight(), (2, LINE as u64 + 18));
    // A server's PONG to something else, a keepalive's, and a malformed token: not ours, nothing confirmed.
    for other in ["irc.test", "keepalive-1", "mimi-pace-x", ""] {
        assert!(!pacer.pong(other), "{other}");
    }
    assert!(pacer.ping_outstanding());
    assert_eq!(pacer.poll(Some(LINE), t0), Pace::Wait(Some(t0 + PONG_TIMEOUT)), "the window is full");
    // A stale token (an earlier PING) is ours but confirms nothing.
    assert!(pacer.pong("mimi-pace-0"));
    assert_eq!(pacer.in_flight().0, 2);
    assert!(pacer.pong("mimi-pace-1"));
    assert_eq!(pacer.in_flight(), (0, 0));
    assert!(!pacer.ping_outstanding());
    send_one(&mut pacer, t0);
    let Pace::Ping(next) = pacer.poll(None, t0) else { panic!("the next PING") };
    assert_eq!(next.param(0), Some("mimi-pace-2"), "a fresh token each time");
}

#[test]
fn lines_written_outside_the_queue_count_and_a_ping_covers_only_what_preceded_it() {
    let t0 = Instant::now();
    let mut pacer = Pacer::new(PaceConfig { window_lines: 8, ..PaceConfig::default() }, t0);
    for _ in 0..6 {
        pacer.wrote(20); // PONGs, JOINs
    }
    send_one(&mut pacer, t0);
    let Pace::Ping(ping) = pacer.poll(Some(LINE), t0) else { panic!("7 of 8 in flight: a PING") };
    assert_eq!(pacer.in_flight().0, 8);
    assert_eq!(pacer.poll(Some(LINE), t0), Pace::Wait(Some(t0 + PONG_TIMEOUT)));
    assert!(pacer.pong(ping.param(0).unwrap_or_default()));
    pacer.wrote(20);
    assert_eq!(pacer.in_flight(), (1, 20), "what was written after the PING is still in flight");
}

#[test]
fn an_unanswered_ping_stalls_the_connection() {
    let t0 = Instant::now();
    let mut pacer = Pacer::new(PaceConfig { window_lines: 1, ..PaceConfig::default() }, t0);
    send_one(&mut pacer, t0);
    assert!(matches!(pacer.poll(Some(LINE), t0), Pace::Ping(_)));
    assert_eq!(pacer.poll(Some(LINE), t0 + ms(59_000)), Pace::Wait(Some(t0 + PONG_TIMEOUT)));
    assert_eq!(pacer.poll(Some(LINE), t0 + PONG_TIMEOUT), Pace::Stalled);
}

#[test]
fn an_idle_pacer_sends_nothing_and_a_few_lines_wait_for_no_ping() {
    let t0 = Instant::now();
    let mut pacer = Pacer::new(PaceConfig::default(), t0);
    assert_eq!(pacer.poll(None, t0), Pace::Wait(None));
    for _ in 0..3 {
        send_one(&mut pacer, t0);
    }
    assert_eq!(pacer.poll(None, t0 + ms(10_000)), Pace::Wait(None), "3 of 16 in flight: no PING yet");
}

#[test]
fn the_rate_ceiling_still_caps_when_configured() {
    let t0 = Instant::now();
    let cfg = PaceConfig { window_lines: 5, max_rate: Some(2.0), ..PaceConfig::default() };
    let mut pacer = Pacer::new(cfg, t0);
    let mut server = FakeServer::new(1000.0, t0);
    let end = drive(&mut pacer, &mut server, 25, LINE, t0, Duration::from_secs(60));
    assert_eq!(server.processed.len(), 25);
    // A burst of 5, then 2 lines/s: the last of 25 after 10 s, even though the server is fast.
    let took = end - t0;
    assert!(took >= ms(9_900) && took <= ms(10_500), "{took:?}");
    // The wait is the bucket's, not the PONG's.
    let mut p = Pacer::new(PaceConfig { window_lines: 6, max_rate: Some(2.0), ..PaceConfig::default() }, t0);
    for _ in 0..5 {
        send_one(&mut p, t0);
    }
    let Pace::Ping(ping) = p.poll(Some(LINE), t0) else { panic!("a PING") };
    assert!(p.pong(ping.param(0).unwrap_or_default()));
    assert_eq!(p.in_flight().0, 0);
    send_one(&mut p, t0); // the 6th token of the burst
    assert_eq!(p.poll(Some(LINE), t0 + ms(100)), Pace::Wait(Some(t0 + ms(500))));
}
