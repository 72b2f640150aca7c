//! Per-user connections (`connections = "per-user"`), sans IO: nick derivation and the pool's decisions — which
//! connection sends a message, when a new connection is opened, when an idle one is reaped.
//!
//! The rules:
//! * A non-IRC sender gets their own IRC connection on their first message, while the account has fewer than
//!   `max_user_connections` of them; beyond the cap their messages are relayed through the bot (`<name> text`),
//!   and they get a connection once one is free again.
//! * The nick is derived from the display name: characters IRC does not allow in nicks are dropped (spaces and dots
//!   become `_`), a leading digit or `-` gets a `_` in front, the configured suffix (default `[m]`) is appended, and
//!   the whole is cut to the server's NICKLEN. Collisions (with another of our connections, or the server's 433)
//!   get a number before the suffix: `alice2[m]`, `alice3[m]`…
//! * A connection idle (no message sent) for `user_idle_secs` is closed with QUIT; one with a message in flight is
//!   never reaped.
//! * While a sender's connection is not (yet) registered, a message waits briefly for it; while it is backing off
//!   after a failure, messages are relayed through the bot so that nothing waits on a broken connection.

use crate::isupport::{CaseMapping, valid_nick};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Characters allowed in nicks besides ASCII letters and digits (RFC 2812 `special` and `-`).
const SPECIAL: &str = "[]\\`_^{|}-";

/// The sanitised base nick for `display_name` (before suffix and truncation); never empty.
pub fn sanitise(display_name: &str) -> String {
    let mut out = String::new();
    for c in display_name.chars() {
        let keep = if c.is_ascii_alphanumeric() || SPECIAL.contains(c) {
            Some(c)
        } else if c.is_whitespace() || c == '.' {
            Some('_')
        } else {
            None
        };
        if let Some(k) = keep
            && !(k == '_' && out.ends_with('_'))
        {
            out.push(k);
        }
    }
    let trimmed = out.trim_matches('_');
    let mut base = if trimmed.is_empty() { "user".to_owned() } else { trimmed.to_owned() };
    if base.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        base.insert(0, '_');
    }
    base
}

/// Nick number `attempt` (0 = no number) for `display_name` with `suffix`, at most `nicklen` bytes.
pub fn nick_candidate(display_name: &str, suffix: &str, attempt: usize, nicklen: usize) -> String {
    let base = sanitise(display_name);
    let number = if attempt == 0 { String::new() } else { (attempt + 1).to_string() };
    let nicklen = nicklen.max(1);
    // The suffix goes if even one character of the base would not fit with it.
    let suffix = if suffix.len() + number.len() < nicklen { suffix } else { "" };
    let room = nicklen.saturating_sub(suffix.len() + number.len()).max(1);
    let head: String = base.chars().take(room).collect(); // ASCII only after sanitising
    let nick = format!("{head}{number}{suffix}");
    if valid_nick(&nick, nicklen) { nick } else { format!("u{attempt}").chars().take(nicklen).collect() }
}

/// The first candidate nick that `taken` does not reject.
pub fn derive_nick(
    display_name: &str,
    suffix: &str,
    nicklen: usize,
    cm: CaseMapping,
    taken: &[&str],
) -> (String, usize) {
    let mut attempt = 0;
    loop {
        let n = nick_candidate(display_name, suffix, attempt, nicklen);
        if attempt > 10_000 || !taken.iter().any(|t| cm.eq(t, &n)) {
            return (n, attempt);
        }
        attempt += 1;
    }
}

/// Which connection sends a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The sender's own connection, which exists.
    Existing,
    /// Open the sender's connection now (it counted against the cap already), then send through it.
    Open,
    /// Relay through the bot (cap reached, or the sender's connection is down).
    Relay,
}

/// How a sender's connection is doing, as the IO shell reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Registered with the server: usable now.
    Ready,
    /// Connecting or registering for the first time (or again): worth a short wait.
    Connecting,
    /// Backing off after a failure, or refused: relay instead.
    Down,
}

/// What to do with one message given the state of the sender's connection.
pub fn via(state: ConnState, waited: Duration, max_wait: Duration) -> Via {
    match state {
        ConnState::Ready => Via::Own,
        ConnState::Connecting if waited < max_wait => Via::Wait,
        _ => Via::Bot,
    }
}

/// The outcome of [`via`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Send through the sender's connection.
    Own,
    /// Wait for the connection a little longer.
    Wait,
    /// Relay through the bot.
    Bot,
}

#[derive(Debug, Clone)]
struct Entry {
    last_active: Instant,
    busy: usize,
}

/// The pool's bookkeeping: which senders (by MIMI URI) have a connection, how busy and how idle each is.
#[derive(Debug)]
pub struct Pool {
    cap: usize,
    idle: Duration,
    entries: HashMap<String, Entry>,
}

impl Pool {
    /// A pool of at most `cap` connections, reaping after `idle`.
    pub fn new(cap: usize, idle: Duration) -> Self {
        Self { cap, idle, entries: HashMap::new() }
    }

    /// How many connections the pool holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the pool holds no connection.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if `uri` has a connection.
    pub fn contains(&self, uri: &str) -> bool {
        self.entries.contains_key(uri)
    }

    /// Decides the route for a message from `uri` and marks it in flight (call [`Pool::done`] afterwards unless
    /// the route is [`Route::Relay`]).
    pub fn begin(&mut self, uri: &str, now: Instant) -> Route {
        if let Some(e) = self.entries.get_mut(uri) {
            e.last_active = now;
            e.busy += 1;
            return Route::Existing;
        }
        if self.entries.len() >= self.cap {
            return Route::Relay;
        }
        self.entries.insert(uri.to_owned(), Entry { last_active: now, busy: 1 });
        Route::Open
    }

    /// The message from `uri` begun with [`Pool::begin`] is finished.
    pub fn done(&mut self, uri: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(uri) {
            e.busy = e.busy.saturating_sub(1);
            e.last_active = now;
        }
    }

    /// Removes `uri` (its connection could not be opened at all, or was closed).
    pub fn remove(&mut self, uri: &str) {
        self.entries.remove(uri);
    }

    /// Removes and returns the senders whose connections were idle for the idle time and have nothing in flight.
    pub fn reap(&mut self, now: Instant) -> Vec<String> {
        let idle = self.idle;
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.busy == 0 && now.saturating_duration_since(e.last_active) >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.entries.remove(k);
        }
        gone
    }

    /// When the next connection may become reapable (for the reaper's timer); `None` when the pool is empty.
    pub fn next_reap(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.last_active + self.idle).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicks_are_sanitised_to_the_server_rules() {
        assert_eq!(nick_candidate("Alice", "[m]", 0, 31), "Alice[m]");
        assert_eq!(nick_candidate("Alice Smith", "", 0, 31), "Alice_Smith");
        assert_eq!(nick_candidate("  J.R.R. Tolkien ", "", 0, 31), "J_R_R_Tolkien");
        assert_eq!(nick_candidate("Zoë 🎉", "", 0, 31), "Zo");
        assert_eq!(nick_candidate("42 is it", "", 0, 31), "_42_is_it");
        assert_eq!(nick_candidate("-dash", "", 0, 31), "_-dash");
        assert_eq!(nick_candidate("🎉🎉", "[m]", 0, 31), "user[m]");
        assert_eq!(nick_candidate("a\r\nQUIT :x", "", 0, 31), "a_QUIT_x");
        assert_eq!(nick_candidate("nick!user@host,#chan", "", 0, 31), "nickuserhostchan");
        // Cut to NICKLEN with the suffix kept; numbers go before the suffix.
        assert_eq!(nick_candidate("averyveryverylongname", "[m]", 0, 9), "averyv[m]");
        assert_eq!(nick_candidate("averyveryverylongname", "[m]", 1, 9), "avery2[m]");
        assert_eq!(nick_candidate("averyveryverylongname", "[m]", 11, 9), "aver12[m]");
        // No room for the suffix: it goes.
        assert_eq!(nick_candidate("bob", "[matrix]", 0, 5), "bob");
        for name in ["", "\0", "1", "-", "[m]", "ab cd", "ÄÖÜ", "x".repeat(600).as_str()] {
            for attempt in [0, 1, 99] {
                for len in [1, 2, 9, 31] {
                    let n = nick_candidate(name, "[m]", attempt, len);
                    assert!(valid_nick(&n, len), "{name:?} #{attempt} len {len}: {n:?}");
                }
            }
        }
    }

    #[test]
    fn collisions_get_numbers_under_the_case_mapping() {
        let cm = CaseMapping::Rfc1459;
        assert_eq!(derive_nick("alice", "[m]", 31, cm, &[]), ("alice[m]".into(), 0));
        assert_eq!(derive_nick("alice", "[m]", 31, cm, &["ALICE{m}"]), ("alice2[m]".into(), 1));
        assert_eq!(derive_nick("alice", "[m]", 31, cm, &["alice[m]", "alice2[m]"]), ("alice3[m]".into(), 2));
        assert_eq!(derive_nick("alice", "[m]", 31, CaseMapping::Ascii, &["alice{m}"]), ("alice[m]".into(), 0));
    }

    #[test]
    fn pool_opens_up_to_the_cap_then_relays() {
        let t0 = Instant::now();
        let mut p = Pool::new(2, Duration::from_secs(60));
        assert_eq!(p.begin("a", t0), Route::Open);
        p.done("a", t0);
        assert_eq!(p.begin("b", t0), Route::Open);
        p.done("b", t0);
        assert_eq!(p.begin("c", t0), Route::Relay, "cap reached");
        assert_eq!(p.begin("a", t0), Route::Existing);
        p.done("a", t0);
        assert_eq!(p.len(), 2);
        p.remove("b");
        assert_eq!(p.begin("c", t0), Route::Open, "a slot freed up");
    }

    #[test]
    fn idle_connections_are_reaped_busy_ones_never() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        let mut p = Pool::new(5, idle);
        assert_eq!(p.begin("a", t0), Route::Open);
        p.done("a", t0);
        assert_eq!(p.begin("b", t0), Route::Open); // still in flight
        assert_eq!(p.next_reap(), Some(t0 + idle));
        assert!(p.reap(t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(p.reap(t0 + idle), ["a".to_owned()]);
        assert!(p.reap(t0 + Duration::from_secs(600)).is_empty(), "b has a message in flight");
        p.done("b", t0 + Duration::from_secs(600));
        assert!(p.reap(t0 + Duration::from_secs(601)).is_empty(), "activity resets the clock");
        assert_eq!(p.reap(t0 + Duration::from_secs(660)), ["b".to_owned()]);
        assert!(p.is_empty() && p.next_reap().is_none());
    }

    #[test]
    fn which_connection_sends() {
        let w = Duration::from_secs(10);
        assert_eq!(via(ConnState::Ready, Duration::ZERO, w), Via::Own);
        assert_eq!(via(ConnState::Connecting, Duration::from_secs(1), w), Via::Wait);
        assert_eq!(via(ConnState::Connecting, w, w), Via::Bot);
        assert_eq!(via(ConnState::Down, Duration::ZERO, w), Via::Bot);
    }
}
