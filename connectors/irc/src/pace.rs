//! Flood control that follows the server's pace, sans IO: a window on the lines the server has not processed yet.
//!
//! IRC servers pace a fast client in one of two ways. ngIRCd stops reading a client's socket while its penalty
//! is high (at most 3 commands per read, ≥ 256 bytes read in one second or lines left over cost 1 s: ngIRCd
//! `src/ngircd/conn.c`, `Handle_Buffer`/`Read_Request`); it delays, it never kills. solanum, ircd-hybrid,
//! InspIRCd (with fakelag) and UnrealIRCd read everything, queue it (the client's *recvq*) and process it at their
//! pace ("fake lag"); they disconnect with "Excess Flood" (InspIRCd: "RecvQ exceeded") when the unprocessed queue
//! exceeds a limit. Either way, a PING we send after some lines is answered only once the server reached it, in
//! order. So the [`Pacer`] counts the lines (and bytes) written but not yet confirmed by a PONG to a PING of its
//! own, keeps them under a window, and sends a PING when they approach it: throughput then follows the server's
//! pace, whatever it is, and the server's queue never holds more than the window.
//!
//! Default limits of the servers, from their current sources (the window must stay under all of them):
//!
//! | server | kills when the unprocessed input exceeds | processes after the burst |
//! |---|---|---|
//! | solanum (Libera.Chat) | `client_flood_max_lines = 20` lines (`ircd/packet.c`, `doc/reference.conf`) | 2 lines/s (`client_flood_message_num`) after 5 |
//! | ircd-hybrid | `class { recvq = 2560 bytes; }` (`src/defaults.h` `DEFAULT_RECVQ`, range 512–8000) | 2 lines/s (`flood_recalc`) after `MAX_FLOOD` = 5 |
//! | InspIRCd | `<connect recvq>` 4096 bytes (`include/users.h`; the example config says `10K`) | `commandrate="1000"`: 1 line/s |
//! | UnrealIRCd | `class::recvq` 8000 bytes (`include/config.h` `DEFAULT_RECVQ`) | fake lag per command |
//! | ngIRCd | never: it stops reading (TCP backpressure; its read buffer is 2048 bytes) | 3 commands per read, 256 bytes/s |
//!
//! All five process a client's lines, PINGs included, in the order received, which is what the window relies on.
//! Hence the defaults: [`DEFAULT_WINDOW_LINES`] = 16 lines, our PING included (with a few unpaced lines such as
//! PONGs and JOINs on top, still under solanum's 20), and [`WINDOW_BYTES`] = 2048 bytes (under hybrid's 2560). The
//! PING goes out when 7/8 of the window is in flight, so with 63-byte lines there is one PING per 14 lines (7 % of
//! the lines). With one PING outstanding, only the window's last eighth is queued while the PONG travels back:
//! throughput is about W / (W / R + RTT) for a window W, a server rate R and a round trip RTT — the server's pace
//! when the round trip is short next to W / R (a pacing server; loopback), less on a distant fast server.
//!
//! A server that processes everything at once and counts a rate instead (InspIRCd with `fakelag="no"`) is not
//! paced by a window: an optional rate ceiling (the [`Bucket`] of `flood_rate`) caps the paced lines as well.

use crate::flood::Bucket;
use crate::message::Message;
use std::time::{Duration, Instant};

/// The token prefix of the pacer's PINGs (`PING mimi-pace-7`): distinct from server PINGs (which carry the
/// server's name or a number) and from any keepalive PING.
pub const PING_PREFIX: &str = "mimi-pace-";
/// Default window in lines (`flood_burst`), our PING included: with a few unpaced lines it stays under solanum's 20.
pub const DEFAULT_WINDOW_LINES: u32 = 16;
/// Window in bytes: under ircd-hybrid's default recvq of 2560 bytes (and ngIRCd's 2048-byte read buffer).
pub const WINDOW_BYTES: usize = 2048;
/// A PING unanswered for this long means the server is gone (it answers within window / its rate, ≤ ~20 s).
pub const PONG_TIMEOUT: Duration = Duration::from_secs(60);
/// Room kept in the byte window for our PING (`PING mimi-pace-` + up to 20 digits + CRLF).
const PING_RESERVE: usize = 40;

/// Limits of a [`Pacer`].
#[derive(Debug, Clone, PartialEq)]
pub struct PaceConfig {
    /// Most lines in flight (written, not yet confirmed), our PING included (a window of 1 line lets one line and
    /// its PING go).
    pub window_lines: u32,
    /// Most bytes in flight (CRLF included), our PING included. A single longer line still goes out when nothing
    /// is in flight.
    pub window_bytes: usize,
    /// Optional hard cap on paced lines per second (a token bucket with a burst of `window_lines`).
    pub max_rate: Option<f64>,
}

impl Default for PaceConfig {
    fn default() -> Self {
        Self { window_lines: DEFAULT_WINDOW_LINES, window_bytes: WINDOW_BYTES, max_rate: None }
    }
}

/// What the IO shell should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Pace {
    /// Write the next queued line now (then report it with [`Pacer::paced`]).
    Send,
    /// Write this PING now; it is already counted as in flight.
    Ping(Message),
    /// Nothing may go: poll again at this instant, or after the next PONG / new line when `None`.
    Wait(Option<Instant>),
    /// Our PING has gone unanswered for [`PONG_TIMEOUT`]: the connection is dead.
    Stalled,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Count {
    lines: u64,
    bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    seq: u64,
    /// Everything written up to and including the PING.
    covers: Count,
    at: Instant,
}

/// One connection's pacer. Create one per connection: a reconnect starts from an empty server queue.
#[derive(Debug, Clone)]
pub struct Pacer {
    cfg: PaceConfig,
    cap: Option<Bucket>,
    written: Count,
    confirmed: Count,
    outstanding: Option<Outstanding>,
    next_seq: u64,
}

impl Pacer {
    /// An idle pacer (nothing in flight).
    pub fn new(cfg: PaceConfig, now: Instant) -> Self {
        let cfg = PaceConfig { window_lines: cfg.window_lines.max(1), window_bytes: cfg.window_bytes.max(1), ..cfg };
        let cap = cfg.max_rate.map(|rate| Bucket::new(cfg.window_lines, rate, now));
        Self { cfg, cap, written: Count::default(), confirmed: Count::default(), outstanding: None, next_seq: 1 }
    }

    /// Lines and bytes written but not yet confirmed.
    pub fn in_flight(&self) -> (u64, u64) {
        (self.written.lines - self.confirmed.lines, self.written.bytes - self.confirmed.bytes)
    }

    /// True while one of our PINGs awaits its PONG.
    pub fn ping_outstanding(&self) -> bool {
        self.outstanding.is_some()
    }

    /// A line of `bytes` (CRLF included) was written outside the queue (PONG, JOIN…): it is in flight too.
    pub fn wrote(&mut self, bytes: usize) {
        self.written.lines += 1;
        self.written.bytes += bytes as u64;
    }

    /// The line [`Pace::Send`] allowed was written (`bytes`, CRLF included).
    pub fn paced(&mut self, bytes: usize, now: Instant) {
        if let Some(cap) = &mut self.cap {
            cap.try_take(now);
        }
        self.wrote(bytes);
    }

    /// A PONG carrying `token` arrived. True if it answers one of our PINGs (the shell then drops it); false for
    /// anyone else's (a keepalive's), which the shell handles as before.
    pub fn pong(&mut self, token: &str) -> bool {
        let Some(seq) = token.strip_prefix(PING_PREFIX).and_then(|s| s.parse::<u64>().ok()) else { return false };
        if let Some(o) = self.outstanding.filter(|o| o.seq == seq) {
            self.confirmed = o.covers;
            self.outstanding = None;
        }
        true
    }

    /// What to do now, given the length of the next queued line (CRLF included), if any.
    pub fn poll(&mut self, next: Option<usize>, now: Instant) -> Pace {
        if let Some(o) = self.outstanding
            && now.saturating_duration_since(o.at) >= PONG_TIMEOUT
        {
            return Pace::Stalled;
        }
        let (lines, bytes) = self.in_flight();
        let held = next.is_some_and(|n| !self.fits(n));
        let (ping_lines, ping_bytes) = self.ping_at();
        if self.outstanding.is_none() && lines > 0 && (held || lines >= ping_lines || bytes >= ping_bytes) {
            return Pace::Ping(self.ping(now));
        }
        let stall_at = self.outstanding.map(|o| o.at + PONG_TIMEOUT);
        if next.is_none() || held {
            return Pace::Wait(stall_at);
        }
        match &mut self.cap {
            Some(cap) => {
                let ready = cap.ready_at(now);
                if ready <= now { Pace::Send } else { Pace::Wait(Some(stall_at.map_or(ready, |s| s.min(ready)))) }
            }
            None => Pace::Send,
        }
    }

    /// True if a line of `n` bytes fits the window, keeping room for our PING if none is out yet.
    fn fits(&self, n: usize) -> bool {
        let (lines, bytes) = self.in_flight();
        let (ping_line, ping_bytes) = if self.outstanding.is_some() { (0, 0) } else { (1, PING_RESERVE) };
        lines == 0
            || (lines + 1 + ping_line <= u64::from(self.cfg.window_lines)
                && bytes + (n + ping_bytes) as u64 <= self.cfg.window_bytes as u64)
    }

    /// In flight from which a PING goes out: 7/8 of the window (so the server's queue never runs dry while the
    /// PONG travels), and at the latest when only the PING's own slot is left.
    fn ping_at(&self) -> (u64, u64) {
        let l = u64::from(self.cfg.window_lines);
        let b = self.cfg.window_bytes as u64;
        ((l - l / 8).min(l - 1).max(1), (b - b / 8).max(1))
    }

    fn ping(&mut self, now: Instant) -> Message {
        let seq = self.next_seq;
        self.next_seq += 1;
        let msg = Message::new("PING", &[&format!("{PING_PREFIX}{seq}")]);
        self.wrote(msg.to_line().len() + 2);
        self.outstanding = Some(Outstanding { seq, covers: self.written, at: now });
        msg
    }
}

#[cfg(test)]
mod tests;
