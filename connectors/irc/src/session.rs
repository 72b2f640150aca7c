//! One IRC connection's protocol state, sans IO: registration, CAP negotiation, SASL PLAIN/EXTERNAL, ISUPPORT,
//! nick collisions, PING, channel membership. Fed with parsed [`Message`]s, it returns [`Action`]s; the IO shell
//! writes the messages and acts on the rest.

use crate::isupport::{Isupport, valid_nick};
use crate::message::Message;
use base64::Engine;
use std::collections::BTreeSet;

/// IRCv3 capabilities requested when offered.
pub const WANTED_CAPS: &[&str] = &[
    "message-tags",
    "server-time",
    "echo-message",
    "labeled-response",
    "batch",
    "account-tag",
    "away-notify",
    "multi-prefix",
    "draft/multiline",
    "draft/chathistory",
];

/// SASL settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sasl {
    /// PLAIN with account and password.
    Plain {
        /// Account name.
        account: String,
        /// Password.
        password: String,
    },
    /// EXTERNAL (TLS client certificate).
    External,
}

/// Who to register as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Wanted nick.
    pub nick: String,
    /// Username (ident).
    pub user: String,
    /// Real name.
    pub realname: String,
    /// Server password (PASS), if any.
    pub password: Option<String>,
    /// SASL, if any.
    pub sasl: Option<Sasl>,
    /// How to pick another nick when the server refuses one during registration.
    pub alternatives: AltNicks,
}

/// How a connection picks another nick when the server says it is taken (433) or invalid (432).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AltNicks {
    /// Append underscores (`bridge_`, `bridge__`…): the bot.
    #[default]
    Underscores,
    /// Numbered candidates from [`crate::pool::nick_candidate`]: a per-user connection.
    Numbered {
        /// The display name the nick is derived from.
        display_name: String,
        /// The configured suffix.
        suffix: String,
        /// The attempt number of the wanted nick (the next one is tried first).
        first: usize,
        /// NICKLEN as the bot saw it (005 arrives only after registration).
        nicklen: usize,
    },
}

/// What the IO shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this message.
    Send(Message),
    /// Registration completed (001 seen); the connection is usable.
    Registered,
    /// We are now in this channel.
    Joined(String),
    /// Every channel wanted at registration was joined or refused: the connection hears its rooms now (what
    /// "connected" means to the bridge: a line said before this may not reach us).
    InChannels,
    /// The server refused to let us into this channel (numeric, reason).
    JoinRefused {
        /// The channel.
        channel: String,
        /// The server's numeric and text.
        reason: String,
    },
    /// We were removed from this channel (KICK/PART).
    Left(String),
    /// A message or notice from someone else (or our own, echoed with echo-message).
    Privmsg {
        /// The full message (tags, source…).
        msg: Message,
        /// Target channel or our nick.
        target: String,
        /// Text.
        text: String,
        /// NOTICE rather than PRIVMSG.
        notice: bool,
    },
    /// Authentication failed: retrying with the same credentials is pointless.
    BadCredentials(String),
    /// The server is closing the link.
    Closing(String),
}

/// Registration progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Negotiating,
    Authenticating,
    Registering,
    Registered,
}

/// The state of one connection.
#[derive(Debug, Clone)]
pub struct Session {
    id: Identity,
    phase: Phase,
    /// The nick we have (or are trying to get).
    pub nick: String,
    /// Server's ISUPPORT.
    pub isupport: Isupport,
    offered: BTreeSet<String>,
    /// Capabilities the server acknowledged.
    pub caps: BTreeSet<String>,
    /// Our own `nick!user@host` as the server shows it, once seen (for line-length computation).
    pub own_source: Option<String>,
    wanted_channels: BTreeSet<String>,
    /// Channels we are in.
    pub joined: BTreeSet<String>,
    /// Channels wanted at registration whose JOIN is not answered yet (`None`: [`Action::InChannels`] was given).
    settling: Option<BTreeSet<String>>,
    nick_attempt: usize,
}

impl Session {
    /// A new session; call [`Session::start`] once connected.
    pub fn new(id: Identity) -> Self {
        let nick = id.nick.clone();
        Self {
            id,
            phase: Phase::Negotiating,
            nick,
            isupport: Isupport::default(),
            offered: BTreeSet::new(),
            caps: BTreeSet::new(),
            own_source: None,
            wanted_channels: BTreeSet::new(),
            joined: BTreeSet::new(),
            settling: None,
            nick_attempt: 0,
        }
    }

    /// True once 001 was seen.
    pub fn registered(&self) -> bool {
        self.phase == Phase::Registered
    }

    /// The opening lines: CAP LS 302, PASS, NICK, USER.
    pub fn start(&mut self) -> Vec<Message> {
        let mut out = vec![Message::new("CAP", &["LS", "302"])];
        if let Some(p) = &self.id.password {
            out.push(Message::new("PASS", &[p]));
        }
        out.push(Message::new("NICK", &[&self.nick]));
        out.push(Message::new("USER", &[&self.id.user, "0", "*", &self.id.realname]));
        out
    }

    /// Wants `channel` joined (now if registered, else after registration and after every reconnect).
    pub fn join(&mut self, channel: &str) -> Vec<Message> {
        self.wanted_channels.insert(channel.to_owned());
        if self.registered() && !self.is_joined(channel) { vec![Message::new("JOIN", &[channel])] } else { Vec::new() }
    }

    /// No longer wants `channel`.
    pub fn part(&mut self, channel: &str) -> Vec<Message> {
        self.wanted_channels.retain(|c| !self.isupport.casemapping.eq(c, channel));
        if self.is_joined(channel) { vec![Message::new("PART", &[channel])] } else { Vec::new() }
    }

    /// True if `channel` is wanted joined (case-folded).
    pub fn wants(&self, channel: &str) -> bool {
        self.wanted_channels.iter().any(|c| self.isupport.casemapping.eq(c, channel))
    }

    /// True if we are in `channel` (case-folded).
    pub fn is_joined(&self, channel: &str) -> bool {
        self.joined.iter().any(|c| self.isupport.casemapping.eq(c, channel))
    }

    /// True if `nick` is ours.
    pub fn is_me(&self, nick: &str) -> bool {
        self.isupport.casemapping.eq(nick, &self.nick)
    }

    /// True if `nick` is one this connection registers as: the configured nick or one of the alternatives it
    /// falls back to (a connection of ours from before a reconnect may still hold one).
    pub fn could_be_me(&self, nick: &str) -> bool {
        let cm = self.isupport.casemapping;
        if self.is_me(nick) || cm.eq(nick, &self.id.nick) {
            return true;
        }
        match &self.id.alternatives {
            // What `alternative_nick` makes for some attempt: `k` underscores after the configured nick, cut to
            // leave room for them within NICKLEN (`bridge_`, `bridge__`; `longnic_` where NICKLEN is 8), or `b{k}`
            // where that is no valid nick. Not any start of the nick: a user called `bri_` is someone else.
            AltNicks::Underscores => {
                let underscores = nick.len() - nick.trim_end_matches('_').len();
                let numbered = nick.strip_prefix(['b', 'B']).and_then(|n| n.parse::<usize>().ok());
                // Under the server's NICKLEN, and under the default one where that is shorter: a nick taken at
                // registration, before ISUPPORT told the real length, was cut to the default (a longer one cannot
                // exist on the server).
                let lengths = [self.isupport.nicklen, Isupport::default().nicklen.min(self.isupport.nicklen)];
                [Some(underscores), numbered]
                    .into_iter()
                    .flatten()
                    .filter(|&k| k >= 1)
                    .any(|k| lengths.iter().any(|&len| cm.eq(nick, &underscore_alternative(&self.id.nick, k, len))))
            }
            AltNicks::Numbered { .. } => false,
        }
    }

    /// Forgets per-connection state before a reconnect (keeps wanted channels).
    pub fn reset(&mut self) {
        *self = Self { wanted_channels: std::mem::take(&mut self.wanted_channels), ..Self::new(self.id.clone()) };
    }

    /// Feeds one message from the server.
    pub fn handle(&mut self, msg: Message) -> Vec<Action> {
        let send = |m: Message| Action::Send(m);
        match msg.command.as_str() {
            "PING" => vec![send(Message { command: "PONG".into(), params: msg.params.clone(), ..Message::default() })],
            "CAP" => self.cap(&msg),
            "AUTHENTICATE" => self.authenticate(&msg),
            "903" => {
                self.phase = Phase::Registering;
                vec![send(Message::new("CAP", &["END"]))]
            }
            "902" | "904" | "905" | "906" | "908" => {
                let why = msg.params.last().cloned().unwrap_or_default();
                vec![send(Message::new("CAP", &["END"])), Action::BadCredentials(format!("SASL failed: {why}"))]
            }
            "001" => {
                self.phase = Phase::Registered;
                if let Some(n) = msg.param(0) {
                    self.nick = n.to_owned();
                }
                let mut out = vec![Action::Registered];
                out.extend(self.wanted_channels.iter().map(|c| send(Message::new("JOIN", &[c]))));
                self.settling = Some(self.wanted_channels.clone());
                out.extend(self.settled(None));
                out
            }
            // A JOIN refused: no such channel, too many channels, full, invite only, banned, bad key, needs an
            // account.
            "403" | "405" | "471" | "473" | "474" | "475" | "477" if self.registered() => {
                let Some(chan) = msg.param(1).map(str::to_owned) else { return Vec::new() };
                let reason = format!("{} {}", msg.command, msg.params.last().map(String::as_str).unwrap_or_default());
                let mut out = vec![Action::JoinRefused { channel: chan.clone(), reason }];
                out.extend(self.settled(Some(&chan)));
                out
            }
            "005" if msg.params.len() > 2 => {
                self.isupport.apply(&msg.params[1..msg.params.len() - 1]);
                Vec::new()
            }
            "432" | "433" | "436" if !self.registered() => {
                self.nick_attempt += 1;
                let next = self.alternative_nick();
                self.nick = next.clone();
                vec![send(Message::new("NICK", &[&next]))]
            }
            "464" | "465" => vec![Action::BadCredentials(msg.params.last().cloned().unwrap_or_default())],
            "JOIN" => {
                let (Some(nick), Some(chan)) = (msg.source_nick(), msg.param(0)) else { return Vec::new() };
                if self.is_me(nick) {
                    self.own_source = msg.source.clone();
                    self.joined.insert(chan.to_owned());
                    let mut out = vec![Action::Joined(chan.to_owned())];
                    out.extend(self.settled(Some(chan)));
                    return out;
                }
                Vec::new()
            }
            "PART" | "KICK" => {
                let chan = msg.param(0).unwrap_or_default().to_owned();
                let who = if msg.command == "KICK" { msg.param(1) } else { msg.source_nick() };
                if who.is_some_and(|w| self.is_me(w)) {
                    self.joined.retain(|c| !self.isupport.casemapping.eq(c, &chan));
                    let mut out = vec![Action::Left(chan.clone())];
                    if msg.command == "KICK"
                        && self.wanted_channels.iter().any(|c| self.isupport.casemapping.eq(c, &chan))
                    {
                        out.push(send(Message::new("JOIN", &[&chan])));
                    }
                    return out;
                }
                Vec::new()
            }
            "NICK" => {
                if msg.source_nick().is_some_and(|n| self.is_me(n))
                    && let Some(new) = msg.param(0)
                {
                    self.nick = new.to_owned();
                }
                Vec::new()
            }
            "PRIVMSG" | "NOTICE" => {
                let (Some(target), Some(text)) = (msg.param(0), msg.param(1)) else { return Vec::new() };
                if msg.source.is_none() || !self.registered() {
                    return Vec::new(); // server notices during registration
                }
                let (target, text, notice) = (target.to_owned(), text.to_owned(), msg.command == "NOTICE");
                vec![Action::Privmsg { msg, target, text, notice }]
            }
            "ERROR" => vec![Action::Closing(msg.params.last().cloned().unwrap_or_default())],
            _ => Vec::new(),
        }
    }

    /// `channel`'s JOIN was answered (joined or refused); [`Action::InChannels`] once every channel wanted at
    /// registration was.
    fn settled(&mut self, channel: Option<&str>) -> Option<Action> {
        let casemapping = self.isupport.casemapping;
        let waiting = self.settling.as_mut()?;
        if let Some(c) = channel {
            waiting.retain(|w| !casemapping.eq(w, c));
        }
        if waiting.is_empty() {
            self.settling = None;
            Some(Action::InChannels)
        } else {
            None
        }
    }

    fn alternative_nick(&self) -> String {
        if let AltNicks::Numbered { display_name, suffix, first, nicklen } = &self.id.alternatives {
            return crate::pool::nick_candidate(display_name, suffix, first + self.nick_attempt, *nicklen);
        }
        self.underscore_alternative(self.nick_attempt)
    }

    /// The nick of `attempt` (≥ 1) with [`AltNicks::Underscores`]: the configured nick with underscores, within
    /// NICKLEN, or `b{attempt}` where that is no valid nick.
    fn underscore_alternative(&self, attempt: usize) -> String {
        underscore_alternative(&self.id.nick, attempt, self.isupport.nicklen)
    }

    fn cap(&mut self, msg: &Message) -> Vec<Action> {
        let sub = msg.param(1).unwrap_or_default().to_ascii_uppercase();
        let list = msg.params.last().cloned().unwrap_or_default();
        match sub.as_str() {
            "LS" => {
                for c in list.split(' ').filter(|c| !c.is_empty()) {
                    self.offered.insert(c.split('=').next().unwrap_or(c).to_owned());
                }
                if msg.param(2) == Some("*") || self.phase != Phase::Negotiating {
                    return Vec::new(); // more LS lines follow, or a late LS
                }
                let mut req: Vec<&str> = WANTED_CAPS.iter().copied().filter(|c| self.offered.contains(*c)).collect();
                if self.id.sasl.is_some() && self.offered.contains("sasl") {
                    req.push("sasl");
                }
                if req.is_empty() {
                    self.phase = Phase::Registering;
                    return vec![Action::Send(Message::new("CAP", &["END"]))];
                }
                vec![Action::Send(Message::new("CAP", &["REQ", &req.join(" ")]))]
            }
            "ACK" => {
                for c in list.split(' ').filter(|c| !c.is_empty()) {
                    match c.strip_prefix('-') {
                        Some(off) => {
                            self.caps.remove(off);
                        }
                        None => {
                            self.caps.insert(c.to_owned());
                        }
                    }
                }
                if self.phase != Phase::Negotiating {
                    return Vec::new();
                }
                match (&self.id.sasl, self.caps.contains("sasl")) {
                    (Some(s), true) => {
                        self.phase = Phase::Authenticating;
                        let mech = if matches!(s, Sasl::External) { "EXTERNAL" } else { "PLAIN" };
                        vec![Action::Send(Message::new("AUTHENTICATE", &[mech]))]
                    }
                    (Some(_), false) => vec![
                        Action::Send(Message::new("CAP", &["END"])),
                        Action::BadCredentials("SASL is configured but the server does not offer it".into()),
                    ],
                    (None, _) => {
                        self.phase = Phase::Registering;
                        vec![Action::Send(Message::new("CAP", &["END"]))]
                    }
                }
            }
            "NAK" if self.phase == Phase::Negotiating => {
                self.phase = Phase::Registering;
                vec![Action::Send(Message::new("CAP", &["END"]))]
            }
            _ => Vec::new(),
        }
    }

    fn authenticate(&mut self, msg: &Message) -> Vec<Action> {
        if msg.param(0) != Some("+") || self.phase != Phase::Authenticating {
            return Vec::new();
        }
        let payload = match &self.id.sasl {
            Some(Sasl::Plain { account, password }) => {
                base64::engine::general_purpose::STANDARD.encode(format!("{account}\0{account}\0{password}"))
            }
            _ => "+".to_owned(),
        };
        // Payloads over 400 bytes are sent in 400-byte chunks, then "+" if the last chunk was exactly 400.
        let mut out: Vec<Action> = payload
            .as_bytes()
            .chunks(400)
            .map(|c| Action::Send(Message::new("AUTHENTICATE", &[&String::from_utf8_lossy(c)])))
            .collect();
        if payload.len() % 400 == 0 && payload != "+" {
            out.push(Action::Send(Message::new("AUTHENTICATE", &["+"])));
        }
        out
    }
}

/// The nick of `attempt` (≥ 1) for the configured `nick` within `nicklen`: see
/// [`Session::underscore_alternative`].
fn underscore_alternative(nick: &str, attempt: usize, nicklen: usize) -> String {
    let max = nicklen.max(2);
    let k = attempt.min(max - 1);
    let base: String = nick.chars().take(max - k).collect();
    let n = format!("{base}{}", "_".repeat(k));
    if valid_nick(&n, max) { n } else { format!("b{attempt}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sasl: Option<Sasl>) -> Identity {
        Identity {
            nick: "bridge".into(),
            user: "mimi".into(),
            realname: "mimi-bridge".into(),
            password: None,
            sasl,
            alternatives: AltNicks::Underscores,
        }
    }

    fn feed(s: &mut Session, lines: &[&str]) -> Vec<Action> {
        lines.iter().flat_map(|l| s.handle(Message::parse(l).expect("valid line"))).collect()
    }

    fn sent(actions: &[Action]) -> Vec<String> {
        actions.iter().filter_map(|a| if let Action::Send(m) = a { Some(m.to_line()) } else { None }).collect()
    }

    /// A transcript of a server offering IRCv3 capabilities and SASL (as InspIRCd/Libera do).
    #[test]
    fn cap_and_sasl_plain_transcript() {
        let mut s = Session::new(id(Some(Sasl::Plain { account: "acc".into(), password: "pw".into() })));
        assert_eq!(
            s.start().iter().map(Message::to_line).collect::<Vec<_>>(),
            ["CAP LS 302", "NICK bridge", "USER mimi 0 * mimi-bridge"]
        );
        let a = feed(
            &mut s,
            &[
                ":irc.test CAP * LS * :multi-prefix sasl=PLAIN,EXTERNAL server-time",
                ":irc.test CAP * LS :echo-message message-tags batch",
            ],
        );
        assert_eq!(sent(&a), ["CAP REQ :message-tags server-time echo-message batch multi-prefix sasl"]);
        let a =
            feed(&mut s, &[":irc.test CAP bridge ACK :message-tags server-time echo-message batch multi-prefix sasl"]);
        assert_eq!(sent(&a), ["AUTHENTICATE PLAIN"]);
        let a = feed(&mut s, &["AUTHENTICATE +"]);
        assert_eq!(sent(&a), ["AUTHENTICATE YWNjAGFjYwBwdw=="]);
        let a = feed(
            &mut s,
            &[
                ":irc.test 900 bridge bridge!m@h acc :You are now logged in",
                ":irc.test 903 bridge :SASL authentication successful",
            ],
        );
        assert_eq!(sent(&a), ["CAP END"]);
        s.join("#rust");
        let a = feed(&mut s, &[":irc.test 001 bridge :Welcome"]);
        assert!(a.contains(&Action::Registered));
        assert_eq!(sent(&a), ["JOIN #rust"]);
        assert!(s.caps.contains("echo-message"));
    }

    #[test]
    fn in_channels_once_every_wanted_channel_is_joined_or_refused() {
        let mut s = Session::new(id(None));
        s.join("#a");
        s.join("#b");
        let a = feed(&mut s, &[":irc.test 001 bridge :Welcome"]);
        assert!(!a.contains(&Action::InChannels), "registered is not yet in the channels");
        let a = feed(&mut s, &[":bridge!~m@h JOIN #A"]);
        assert!(!a.contains(&Action::InChannels));
        let a = feed(&mut s, &[":irc.test 474 bridge #b :Cannot join channel (+b)"]);
        assert!(
            a.contains(&Action::JoinRefused { channel: "#b".into(), reason: "474 Cannot join channel (+b)".into() })
        );
        assert!(a.contains(&Action::InChannels));
        // Once per registration.
        let a = feed(&mut s, &[":bridge!~m@h JOIN #b"]);
        assert!(!a.contains(&Action::InChannels));
    }

    #[test]
    fn without_channels_it_is_in_channels_at_registration() {
        let mut s = Session::new(id(None));
        let a = feed(&mut s, &[":irc.test 001 bridge :Welcome"]);
        assert!(a.contains(&Action::Registered) && a.contains(&Action::InChannels));
    }

    #[test]
    fn sasl_failure_is_bad_credentials() {
        let mut s = Session::new(id(Some(Sasl::Plain { account: "a".into(), password: "b".into() })));
        s.start();
        feed(&mut s, &[":x CAP * LS :sasl", ":x CAP * ACK :sasl", "AUTHENTICATE +"]);
        let a = feed(&mut s, &[":x 904 bridge :SASL authentication failed"]);
        assert!(a.iter().any(|a| matches!(a, Action::BadCredentials(_))));
    }

    #[test]
    fn its_own_nicks_are_the_alternatives_it_would_take_not_any_start_of_its_nick() {
        let mut s = Session::new(id(None));
        feed(&mut s, &[":irc.test 005 bridge NICKLEN=7 :are supported by this server"]);
        for ours in ["bridge", "BRIDGE", "bridge_", "bridg__", "brid___"] {
            assert!(s.could_be_me(ours), "{ours}");
        }
        for theirs in ["bri_", "b_", "bridge1", "bridges", "_", "bridge__", "bridg_", "b1", "b2"] {
            assert!(!s.could_be_me(theirs), "{theirs}");
        }
    }

    /// A nick taken at registration, before ISUPPORT, was cut to the default NICKLEN (9): still the bot's once the
    /// server says its NICKLEN is longer.
    #[test]
    fn a_fallback_nick_cut_before_isupport_is_still_its_own() {
        let mut s = Session::new(Identity { nick: "longbridge".into(), ..id(None) });
        feed(&mut s, &[":irc.test 005 longbridge NICKLEN=30 :are supported by this server"]);
        assert!(s.could_be_me("longbrid_"), "cut to 9 at registration");
        assert!(s.could_be_me("longbridge_"), "as it would be cut now");
        assert!(!s.could_be_me("longbri_"), "no length makes that one");
    }

    /// A configured nick whose underscore forms are no valid nicks (it starts with a digit) falls back to `b{n}`:
    /// those are its own then, and only then.
    #[test]
    fn its_numbered_fallback_nicks_are_its_own() {
        let mut s = Session::new(Identity { nick: "1bridge".into(), ..id(None) });
        feed(&mut s, &[":irc.test 005 1bridge NICKLEN=9 :are supported by this server"]);
        for ours in ["b1", "B2", "b17"] {
            assert!(s.could_be_me(ours), "{ours}");
        }
        for theirs in ["b0", "b", "b007", "bb1", "1bridge_"] {
            assert!(!s.could_be_me(theirs), "{theirs}");
        }
    }

    /// ngIRCd 26 offers only multi-prefix and no SASL.
    #[test]
    fn ngircd_transcript_with_nick_collision_and_isupport() {
        let mut s = Session::new(id(None));
        s.start();
        let a = feed(&mut s, &[":irc.test CAP * LS :multi-prefix"]);
        assert_eq!(sent(&a), ["CAP REQ multi-prefix"]);
        let a = feed(&mut s, &[":irc.test CAP * ACK :multi-prefix"]);
        assert_eq!(sent(&a), ["CAP END"]);
        let a = feed(&mut s, &[":irc.test 433 * bridge :Nickname already in use"]);
        assert_eq!(sent(&a), ["NICK bridge_"]);
        s.join("#A");
        let a = feed(
            &mut s,
            &[
                ":irc.test 001 bridge_ :Welcome",
                ":irc.test 005 bridge_ NICKLEN=31 CASEMAPPING=ascii CHANTYPES=#& :are supported",
            ],
        );
        assert_eq!(sent(&a), ["JOIN #A"]);
        assert_eq!((s.nick.as_str(), s.isupport.nicklen), ("bridge_", 31));
        let a = feed(&mut s, &[":bridge_!~mimi@localhost JOIN #a"]);
        assert_eq!(a, [Action::Joined("#a".into()), Action::InChannels], "in its one channel: connected");
        assert!(s.is_joined("#A"));
        assert_eq!(s.own_source.as_deref(), Some("bridge_!~mimi@localhost"));
        let a = feed(&mut s, &["PING :123"]);
        assert_eq!(sent(&a), ["PONG 123"]);
        let a = feed(&mut s, &[":op!u@h KICK #a bridge_ :bye"]);
        assert_eq!(sent(&a), ["JOIN #a"], "rejoins after a kick");
        let a = feed(&mut s, &[":al!u@h PRIVMSG #a :hi there"]);
        assert!(matches!(&a[0], Action::Privmsg { text, notice: false, .. } if text == "hi there"));
    }

    /// SASL EXTERNAL (the TLS client certificate authenticates): the payload is the empty response `+`.
    #[test]
    fn sasl_external_transcript() {
        let mut s = Session::new(id(Some(Sasl::External)));
        s.start();
        let a = feed(&mut s, &[":x CAP * LS :sasl=EXTERNAL message-tags"]);
        assert_eq!(sent(&a), ["CAP REQ :message-tags sasl"]);
        assert_eq!(sent(&feed(&mut s, &[":x CAP * ACK :message-tags sasl"])), ["AUTHENTICATE EXTERNAL"]);
        assert_eq!(sent(&feed(&mut s, &["AUTHENTICATE +"])), ["AUTHENTICATE +"]);
        assert_eq!(sent(&feed(&mut s, &[":x 903 bridge :SASL authentication successful"])), ["CAP END"]);
        // And with a server that offers no SASL at all, EXTERNAL is a configuration problem, not a retry.
        let mut s = Session::new(id(Some(Sasl::External)));
        s.start();
        feed(&mut s, &[":x CAP * LS :multi-prefix"]);
        let a = feed(&mut s, &[":x CAP * ACK :multi-prefix"]);
        assert!(a.iter().any(|a| matches!(a, Action::BadCredentials(_))));
    }

    #[test]
    fn per_user_connections_pick_numbered_nicks() {
        let mut s = Session::new(Identity {
            nick: "alice[m]".into(),
            alternatives: AltNicks::Numbered {
                display_name: "alice".into(),
                suffix: "[m]".into(),
                first: 0,
                nicklen: 31,
            },
            ..id(None)
        });
        s.start();
        assert_eq!(sent(&feed(&mut s, &[":x 433 * alice[m] :in use"])), ["NICK alice2[m]"]);
        assert_eq!(sent(&feed(&mut s, &[":x 433 * alice2[m] :in use"])), ["NICK alice3[m]"]);
    }

    #[test]
    fn no_caps_offered_ends_negotiation() {
        let mut s = Session::new(id(None));
        s.start();
        assert_eq!(sent(&feed(&mut s, &[":x CAP * LS :"])), ["CAP END"]);
        let mut s = Session::new(id(None));
        s.start();
        feed(&mut s, &[":x CAP * LS :batch"]);
        assert_eq!(sent(&feed(&mut s, &[":x CAP * NAK :batch"])), ["CAP END"]);
    }
}
