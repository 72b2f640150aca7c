//! Who is in the bot's channels, and which of their comings and goings the bridge passes on, sans IO: fed the
//! server's messages ([`Roster::handle`]) and polled for the changes that are due ([`Roster::poll`],
//! [`Roster::next_due`]).
//!
//! IRC membership is noisy, and every change passed on costs the other networks something (a Matrix ghost
//! joins or leaves, an XMPP occupant comes or goes), so it is damped:
//! * the people already in a channel when the bot joins it (its NAMES reply) are where it starts from, not a
//!   storm of joins;
//! * a change is held for [`CHANGE_HOLD`] and one undone within that time is not passed on at all (a join and
//!   part, a `/cycle`, a nick changed and changed back);
//! * a netsplit (a QUIT whose reason is two server names) is held for [`SPLIT_HOLD`]: the users that come back
//!   when the servers relink were never gone for the other networks; only those still missing then leave;
//! * a KICK is passed on at once.
//!
//! No change becomes an MLS commit: membership crosses from leg to leg only, and a legacy user's MLS leaf (in
//! per-user portals) is added when they first speak, not when they join.

use crate::isupport::{CaseMapping, Isupport};
use crate::message::Message;
use bridge_api::event::Membership;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How long a join, part or quit waits before it is passed on (undone within it: never passed on).
pub const CHANGE_HOLD: Duration = Duration::from_secs(3);
/// How long the users a netsplit took away have to come back before they are passed on as gone.
pub const SPLIT_HOLD: Duration = Duration::from_secs(60);
/// The most members tracked per channel (a bound against a hostile server; real channels stay far below).
const MAX_MEMBERS: usize = 100_000;
/// The most changes held at once; beyond it, changes are passed on without waiting.
const MAX_HELD: usize = 10_000;
/// A change in a channel's membership, due to be passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    /// The channel, as the server named it when the bot joined.
    pub channel: String,
    /// The user's nick.
    pub nick: String,
    /// Joined, left (part or quit) or kicked.
    pub change: Membership,
}

/// One channel the bot is in.
#[derive(Debug, Default)]
struct Channel {
    name: String,
    /// Folded nick → the nick as last seen.
    members: HashMap<String, String>,
    /// A NAMES reply being read; it replaces `members` at its end (366).
    listing: Option<HashMap<String, String>>,
    /// `members` was known before the NAMES reply being read (the bot rejoined, or reconnected): the reply is
    /// compared with it, and who came or went meanwhile is passed on.
    known: bool,
}

impl Channel {
    /// Adds `nick` (not beyond [`MAX_MEMBERS`]); true if it was not a member. A NAMES reply being read gets it
    /// too: the server listed the channel before this change, and the listing replaces the members at its end.
    fn add(&mut self, folded: String, nick: &str) -> bool {
        // Into the listing even for a member: after a reconnect the members are who was there before, and a
        // listing without them makes them leave at its end.
        if let Some(listing) = self.listing.as_mut().filter(|l| l.len() < MAX_MEMBERS) {
            listing.insert(folded.clone(), nick.to_owned());
        }
        if self.members.len() >= MAX_MEMBERS || self.members.contains_key(&folded) {
            return false;
        }
        self.members.insert(folded, nick.to_owned());
        true
    }

    /// Removes a member (from a NAMES reply being read too); returns its nick as last seen.
    fn remove(&mut self, folded: &str) -> Option<String> {
        if let Some(listing) = self.listing.as_mut() {
            listing.remove(folded);
        }
        self.members.remove(folded)
    }
}

/// A change not passed on yet.
#[derive(Debug, Clone)]
struct Held {
    change: MemberChange,
    due: Instant,
}

/// The members of the bot's channels and the changes held back.
#[derive(Debug, Default)]
pub struct Roster {
    casemapping: CaseMapping,
    /// By folded channel name.
    channels: HashMap<String, Channel>,
    /// By folded (channel, nick).
    held: BTreeMap<(String, String), Held>,
    /// The keys of `held` by due time, so that a line costs no scan of everything held (10 000 after a netsplit).
    by_due: BTreeSet<(Instant, (String, String))>,
}

impl Roster {
    /// An empty roster. It lives as long as the connection's task, across reconnects: the NAMES replies after a
    /// reconnect are compared with what it knew.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one message from the server; `me` is the bot's nick before the message, `isupport` what the server
    /// told of itself (its case mapping, the status prefixes of NAMES entries);
    /// `ours` tells the nicks of the bridge's own connections (its per-user connections, the bot's own nicks),
    /// which are never tracked.
    pub fn handle(&mut self, msg: &Message, me: &str, isupport: &Isupport, ours: &dyn Fn(&str) -> bool, now: Instant) {
        let casemapping = isupport.casemapping;
        self.casemapping = casemapping;
        let fold = |s: &str| casemapping.fold(s);
        let is_me = |n: &str| casemapping.eq(n, me);
        match msg.command.as_str() {
            "JOIN" => {
                let (Some(nick), Some(chan)) = (msg.source_nick(), msg.param(0)) else { return };
                if is_me(nick) {
                    // Members known from before (a rejoin after a KICK, a reconnect) stay until the NAMES reply.
                    let c = self.channels.entry(fold(chan)).or_default();
                    c.name = chan.to_owned();
                    c.listing = None;
                } else if !ours(nick)
                    && let Some(c) = self.channels.get_mut(&fold(chan))
                    && c.add(fold(nick), nick)
                {
                    let name = c.name.clone();
                    self.note(&name, nick, Membership::Join, now, CHANGE_HOLD);
                }
            }
            "PART" | "KICK" => {
                let Some(chan) = msg.param(0) else { return };
                let kick = msg.command == "KICK";
                let Some(nick) = (if kick { msg.param(1) } else { msg.source_nick() }) else { return };
                if is_me(nick) {
                    // Kicked, the bot rejoins and compares; parted, the channel is no longer bridged. What is
                    // held for it still goes out.
                    if !kick {
                        self.channels.remove(&fold(chan));
                    }
                } else if let Some(c) = self.channels.get_mut(&fold(chan))
                    && let Some(nick) = c.remove(&fold(nick))
                {
                    let name = c.name.clone();
                    let (change, hold) =
                        if kick { (Membership::Kick, Duration::ZERO) } else { (Membership::Leave, CHANGE_HOLD) };
                    self.note(&name, &nick, change, now, hold);
                }
            }
            "QUIT" => {
                let Some(nick) = msg.source_nick() else { return };
                let hold = if msg.param(0).is_some_and(is_netsplit) { SPLIT_HOLD } else { CHANGE_HOLD };
                for (name, nick) in self.remove_everywhere(nick) {
                    self.note(&name, &nick, Membership::Leave, now, hold);
                }
            }
            "NICK" => {
                let (Some(old), Some(new)) = (msg.source_nick(), msg.param(0)) else { return };
                if is_me(old) {
                    return;
                }
                // The other networks know people by nick: the old one leaves, the new one joins.
                for (name, old) in self.remove_everywhere(old) {
                    self.note(&name, &old, Membership::Leave, now, CHANGE_HOLD);
                    if !ours(new)
                        && let Some(c) = self.channels.get_mut(&fold(&name))
                        && c.add(fold(new), new)
                    {
                        self.note(&name, new, Membership::Join, now, CHANGE_HOLD);
                    }
                }
            }
            // Someone whose join is held speaks: the other networks see them join first (a Matrix ghost joins to
            // speak anyway, and would otherwise never be told that they left if they leave within the hold).
            "PRIVMSG" | "NOTICE" => {
                let (Some(nick), Some(chan)) = (msg.source_nick(), msg.param(0)) else { return };
                let key = (fold(chan), fold(nick));
                if let Some(h) = self.held.get_mut(&key)
                    && h.change.change == Membership::Join
                    && h.due > now
                {
                    self.by_due.remove(&(h.due, key.clone()));
                    h.due = now;
                    self.by_due.insert((now, key));
                }
            }
            // RPL_NAMREPLY: <me> <symbol> <channel> :<names>
            "353" => {
                let (Some(chan), Some(names)) = (msg.param(2), msg.params.last()) else { return };
                let Some(c) = self.channels.get_mut(&fold(chan)) else { return };
                let listing = c.listing.get_or_insert_with(HashMap::new);
                // Status prefixes as ISUPPORT PREFIX gives them (`multi-prefix`: several); `userhost-in-names`
                // would give nick!user@host.
                let status = |c: char| isupport.prefixes.contains(c);
                let nicks =
                    names.split(' ').map(|n| n.trim_start_matches(status)).map(|n| n.split('!').next().unwrap_or(n));
                for n in nicks.filter(|n| !n.is_empty() && !is_me(n) && !ours(n)) {
                    if listing.len() >= MAX_MEMBERS {
                        break;
                    }
                    listing.insert(fold(n), n.to_owned());
                }
            }
            // RPL_ENDOFNAMES: <me> <channel> :End of NAMES list
            "366" => {
                let Some(chan) = msg.param(1) else { return };
                let Some(c) = self.channels.get_mut(&fold(chan)) else { return };
                let Some(listing) = c.listing.take() else { return };
                let before = std::mem::replace(&mut c.members, listing);
                let (name, known) = (c.name.clone(), std::mem::replace(&mut c.known, true));
                if !known {
                    return;
                }
                let gone: Vec<String> =
                    before.iter().filter(|(f, _)| !c.members.contains_key(*f)).map(|(_, n)| n.clone()).collect();
                let came: Vec<String> =
                    c.members.iter().filter(|(f, _)| !before.contains_key(*f)).map(|(_, n)| n.clone()).collect();
                for n in gone {
                    self.note(&name, &n, Membership::Leave, now, CHANGE_HOLD);
                }
                for n in came {
                    self.note(&name, &n, Membership::Join, now, CHANGE_HOLD);
                }
            }
            _ => {}
        }
    }

    /// Forgets the channels `wanted` says no: after a reconnect, those unlinked while the connection was down
    /// (the bot never parted them). What is held for them still goes out.
    pub fn keep_only(&mut self, wanted: impl Fn(&str) -> bool) {
        self.channels.retain(|_, c| wanted(&c.name));
    }

    /// The changes due at `now`, oldest first.
    pub fn poll(&mut self, now: Instant) -> Vec<MemberChange> {
        let mut out = Vec::new();
        while self.by_due.first().is_some_and(|(due, _)| *due <= now) {
            let Some((_, key)) = self.by_due.pop_first() else { break };
            out.extend(self.held.remove(&key).map(|h| h.change));
        }
        out
    }

    /// When the next held change is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.by_due.first().map(|(due, _)| *due)
    }

    /// The members of `channel` (their nicks, sorted), if the bot is in it.
    pub fn members(&self, channel: &str) -> Option<Vec<String>> {
        let c = self.channels.get(&self.casemapping.fold(channel))?;
        let mut nicks: Vec<String> = c.members.values().cloned().collect();
        nicks.sort();
        Some(nicks)
    }

    /// Removes `nick` from every channel; returns the names of those it was in, with the nick as last seen.
    fn remove_everywhere(&mut self, nick: &str) -> Vec<(String, String)> {
        let folded = self.casemapping.fold(nick);
        self.channels.values_mut().filter_map(|c| c.remove(&folded).map(|n| (c.name.clone(), n))).collect()
    }

    /// Holds `change` of `nick` in `channel` for `hold`, unless it undoes a change still held: then neither is
    /// passed on. Beyond [`MAX_HELD`] changes held, a new one is due at once (passed on undamped).
    fn note(&mut self, channel: &str, nick: &str, change: Membership, now: Instant, hold: Duration) {
        let key = (self.casemapping.fold(channel), self.casemapping.fold(nick));
        let undoes = self.held.get(&key).map(|h| (h.change.change == Membership::Join) != (change == Membership::Join));
        if let Some(h) = self.held.remove(&key) {
            self.by_due.remove(&(h.due, key.clone()));
        }
        if undoes != Some(true) {
            let due = if self.held.len() >= MAX_HELD { now } else { now + hold };
            let change = MemberChange { channel: channel.to_owned(), nick: nick.to_owned(), change };
            self.by_due.insert((due, key.clone()));
            self.held.insert(key, Held { change, due });
        }
    }
}

/// True for the reason of a QUIT caused by a netsplit: the names of the two servers that lost each other
/// (`irc1.example.net irc2.example.net`). A user cannot quit with such a reason on most servers (they prefix it
/// with `Quit: `).
fn is_netsplit(reason: &str) -> bool {
    let mut parts = reason.split(' ');
    let host = |s: Option<&str>| {
        s.is_some_and(|s| {
            s.contains('.')
                && !s.starts_with('.')
                && !s.ends_with('.')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*'))
        })
    };
    let (a, b) = (parts.next(), parts.next());
    host(a) && host(b) && a != b && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "bridge";

    fn feed(r: &mut Roster, line: &str, at: Instant) {
        feed_with(r, &Isupport::default(), line, at);
    }

    fn feed_with(r: &mut Roster, isupport: &Isupport, line: &str, at: Instant) {
        r.handle(&Message::parse(line).expect("line"), ME, isupport, &|n| n.ends_with("[m]"), at);
    }

    /// The bot in #c with alice and bob already there.
    fn in_channel(at: Instant) -> Roster {
        let mut r = Roster::new();
        feed(&mut r, ":bridge!b@h JOIN #c", at);
        feed(&mut r, ":srv 353 bridge = #c :@alice +bob bridge", at);
        feed(&mut r, ":srv 366 bridge #c :End of NAMES list", at);
        r
    }

    fn change(nick: &str, change: Membership) -> MemberChange {
        MemberChange { channel: "#c".into(), nick: nick.into(), change }
    }

    #[test]
    fn who_was_there_is_where_it_starts_and_later_changes_come_after_the_hold() {
        let t0 = Instant::now();
        let mut r = in_channel(t0);
        assert_eq!(r.members("#C").expect("in #c"), ["alice", "bob"]);
        assert_eq!(r.next_due(), None, "no joins for who was there");
        feed(&mut r, ":carol!c@h JOIN #c", t0);
        feed(&mut r, ":bob!b@h PART #c :bye", t0);
        assert!(r.poll(t0 + CHANGE_HOLD / 2).is_empty(), "held");
        assert_eq!(r.next_due(), Some(t0 + CHANGE_HOLD));
        assert_eq!(r.poll(t0 + CHANGE_HOLD), [change("bob", Membership::Leave), change("carol", Membership::Join)]);
        assert_eq!(r.next_due(), None);
    }

    #[test]
    fn changes_while_a_names_reply_is_read_are_not_undone_by_it() {
        let t0 = Instant::now();
        let mut r = in_channel(t0);
        // A reconnect: the NAMES reply lists alice and bob, then bob quits and carol joins before its end.
        feed(&mut r, ":bridge!b@h JOIN #c", t0);
        feed(&mut r, ":srv 353 bridge = #c :@alice +bob bridge", t0);
        feed(&mut r, ":bob!b@h QUIT :bye", t0);
        feed(&mut r, ":carol!c@h JOIN #c", t0);
        feed(&mut r, ":srv 366 bridge #c :End of NAMES list", t0);
        assert_eq!(r.members("#c").expect("in #c"), ["alice", "carol"]);
        assert_eq!(r.poll(t0 + CHANGE_HOLD), [change("bob", Membership::Leave), change("carol", Membership::Join)]);
        // Another reconnect: alice, a member from before, was away when the server listed the channel, and is back
        // before its end. She never left as far as anyone knows.
        feed(&mut r, ":bridge!b@h JOIN #c", t0);
        feed(&mut r, ":srv 353 bridge = #c :carol bridge", t0);
        feed(&mut r, ":alice!a@h JOIN #c", t0);
        feed(&mut r, ":srv 366 bridge #c :End of NAMES list", t0);
        assert_eq!(r.members("#c").expect("in #c"), ["alice", "carol"]);
        assert!(r.poll(t0 + SPLIT_HOLD).is_empty(), "nothing to pass on");
    }

    #[test]
    fn names_lose_the_status_prefixes_the_server_announced() {
        let t0 = Instant::now();
        let mut isupport = Isupport::default();
        isupport.apply(&["PREFIX=(Yqaohv)!~&@%+".to_owned()]);
        let mut r = Roster::new();
        feed_with(&mut r, &isupport, ":bridge!b@h JOIN #c", t0);
        feed_with(&mut r, &isupport, ":srv 353 bridge = #c :!@alice ~+bob bridge", t0);
        feed_with(&mut r, &isupport, ":srv 366 bridge #c :End of NAMES list", t0);
        assert_eq!(r.members("#c").expect("in #c"), ["alice", "bob"]);
    }

    #[test]
    fn a_change_undone_within_the_hold_is_never_passed_on() {
        let t0 = Instant::now();
        let mut r = in_channel(t0);
        feed(&mut r, ":dave!d@h JOIN #c", t0);
        feed(&mut r, ":dave!d@h PART #c", t0 + Duration::from_secs(1));
        feed(&mut r, ":alice!a@h PART #c :cycling", t0);
        feed(&mut r, ":ALICE!a@h JOIN #c", t0 + Duration::from_secs(1));
        feed(&mut r, ":bob!b@h NICK bob_away", t0);
        feed(&mut r, ":bob_away!b@h NICK bob", t0 + Duration::from_secs(1));
        assert!(r.poll(t0 + SPLIT_HOLD).is_empty());
        assert!(r.members("#c").expect("in #c").contains(&"bob".to_owned()));
    }

    #[test]
    fn a_kick_is_passed_on_at_once_and_a_nick_change_is_a_leave_and_a_join() {
        let t0 = Instant::now();
        let mut r = in_channel(t0);
        feed(&mut r, ":alice!a@h KICK #c bob :spam", t0);
        assert_eq!(r.poll(t0), [change("bob", Membership::Kick)]);
        feed(&mut r, ":alice!a@h NICK alicia", t0);
        let mut due = r.poll(t0 + CHANGE_HOLD);
        due.sort_by(|a, b| a.nick.cmp(&b.nick));
        assert_eq!(due, [change("alice", Membership::Leave), change("alicia", Membership::Join)]);
    }

    #[test]
    fn a_netsplit_is_held_until_the_servers_relink_and_only_who_stays_away_leaves() {
        let t0 = Instant::now();
        let mut r = in_channel(t0);
        feed(&mut r, ":alice!a@h QUIT :irc1.example.net irc2.example.net", t0);
        feed(&mut r, ":bob!b@h QUIT :irc1.example.net irc2.example.net", t0);
        assert!(r.poll(t0 + CHANGE_HOLD * 2).is_empty(), "a split is held longer than a quit");
        feed(&mut r, ":alice!a@h JOIN #c", t0 + Duration::from_secs(20));
        assert_eq!(r.poll(t0 + SPLIT_HOLD), [change("bob", Membership::Leave)]);
        // An ordinary quit goes after the short hold.
        feed(&mut r, ":alice!a@h QUIT :Quit: irc1.example.net irc2.example.net", t0 + SPLIT_HOLD);
        assert_eq!(r.poll(t0 + SPLIT_HOLD + CHANGE_HOLD), [change("alice", Membership::Leave)]);
    }

    #[test]
    fn netsplit_reasons_are_two_server_names() {
        assert!(is_netsplit("irc1.example.net irc2.example.net"));
        assert!(is_netsplit("*.net *.split"));
        for not in ["Quit: bye", "irc1.example.net", "a.b a.b", "see http://x.y now", "a.b c.d e.f", "Ping timeout"] {
            assert!(!is_netsplit(not), "{not}");
        }
    }

    #[test]
    fn the_bridges_own_connections_are_never_passed_on() {
        let t0 = Instant::now();
        let mut r = Roster::new();
        feed(&mut r, ":bridge!b@h JOIN #c", t0);
        feed(&mut r, ":srv 353 bridge = #c :bridge alice kim[m]", t0);
        feed(&mut r, ":srv 366 bridge #c :End of NAMES list", t0);
        feed(&mut r, ":lee[m]!l@h JOIN #c", t0);
        feed(&mut r, ":kim[m]!k@h QUIT :idle", t0);
        feed(&mut r, ":lee[m]!l@h QUIT :idle", t0);
        assert!(r.poll(t0 + CHANGE_HOLD).is_empty());
        assert_eq!(r.members("#c").expect("in #c").len(), 1);
    }

    #[test]
    fn parting_forgets_the_channel_but_what_was_held_for_it_goes_out() {
        let t0 = Instant::now();
        let mut r = in_channel(t0);
        feed(&mut r, ":erin!e@h JOIN #c", t0);
        feed(&mut r, ":bridge!b@h PART #c", t0);
        assert!(r.members("#c").is_none());
        assert_eq!(r.poll(t0 + CHANGE_HOLD), [change("erin", Membership::Join)]);
        // Not in the channel: nothing is tracked.
        feed(&mut r, ":frank!f@h JOIN #c", t0);
        assert_eq!(r.next_due(), None);
    }

    #[test]
    fn a_channel_no_longer_wanted_at_a_reconnect_is_forgotten() {
        let t0 = Instant::now();
        let mut r = in_channel(t0);
        feed(&mut r, ":erin!e@h JOIN #c", t0);
        r.keep_only(|c| c == "#other");
        assert!(r.members("#c").is_none());
        assert_eq!(r.poll(t0 + CHANGE_HOLD), [change("erin", Membership::Join)]);
        let mut r = in_channel(t0);
        r.keep_only(|c| c == "#c");
        assert!(r.members("#c").is_some(), "a wanted channel is kept");
    }

    #[test]
    fn after_a_rejoin_or_a_reconnect_the_names_reply_tells_who_came_and_went() {
        let t0 = Instant::now();
        let mut r = in_channel(t0);
        feed(&mut r, ":op!o@h KICK #c bridge :out", t0);
        // Rejoined (or reconnected: the roster outlives the connection): bob left meanwhile, Carol came.
        feed(&mut r, ":bridge!b@h JOIN #c", t0);
        feed(&mut r, ":srv 353 bridge = #c :bridge @alice Carol", t0);
        feed(&mut r, ":srv 366 bridge #c :End of NAMES list", t0);
        assert_eq!(r.poll(t0 + CHANGE_HOLD), [change("bob", Membership::Leave), change("Carol", Membership::Join)]);
        assert_eq!(r.members("#c").expect("in #c"), ["Carol", "alice"]);
    }

    #[test]
    fn someone_who_speaks_is_seen_joining_first() {
        let t0 = Instant::now();
        let mut r = in_channel(t0);
        feed(&mut r, ":gus!g@h JOIN #c", t0);
        feed(&mut r, ":gus!g@h PRIVMSG #c :hi, and bye", t0);
        assert_eq!(r.poll(t0), [change("gus", Membership::Join)]);
        feed(&mut r, ":gus!g@h PART #c", t0);
        assert_eq!(r.poll(t0 + CHANGE_HOLD), [change("gus", Membership::Leave)]);
    }

    #[test]
    fn a_nick_change_to_a_member_or_to_one_of_ours_only_leaves() {
        let t0 = Instant::now();
        let mut r = in_channel(t0);
        feed(&mut r, ":alice!a@h NICK bob", t0);
        feed(&mut r, ":bob!b@h NICK kim[m]", t0 + Duration::from_secs(5));
        let mut due = r.poll(t0 + SPLIT_HOLD);
        due.sort_by(|a, b| a.nick.cmp(&b.nick));
        assert_eq!(due, [change("alice", Membership::Leave), change("bob", Membership::Leave)]);
        assert_eq!(r.members("#c").expect("in #c"), Vec::<String>::new());
    }

    #[test]
    fn beyond_the_bound_changes_go_out_undamped() {
        let t0 = Instant::now();
        let mut r = in_channel(t0);
        for i in 0..MAX_HELD + 5 {
            feed(&mut r, &format!(":u{i}!u@h JOIN #c"), t0);
        }
        assert_eq!(r.poll(t0).len(), 5, "the ones beyond the bound");
        assert_eq!(r.poll(t0 + CHANGE_HOLD).len(), MAX_HELD);
    }
}
