//! Inbound translation, sans IO: MUC stanzas (in the `jabber:client` namespace) → [`InboundEvent`]s.
//!
//! One [`RoomState`] per joined MUC. It is fed every groupchat `<message/>` and every `<presence/>` from the
//! room and answers with at most one event, or a reason for dropping the stanza (the shell logs it).
//!
//! * **Ids** (XEP-0359): a message's native id is the room's `<stanza-id by='room'/>`; without one, its
//!   `<origin-id/>`; the bare `id` attribute is never used alone. Replies (XEP-0461), reactions (XEP-0444) and
//!   retractions (XEP-0424) in groupchat name the room's stanza-id, and are passed on as such. Corrections
//!   (XEP-0308) name the original `id` attribute: the room state keeps, per occupant, the last
//!   [`MAX_REMEMBERED`] `id`/`origin-id` → stanza-id pairs and accepts a correction only from the occupant that
//!   sent the original.
//! * **Replies**: the XEP-0428 fallback (the quote of the parent) is cut from the body.
//! * **Styling** (XEP-0393): a styled body becomes MIMI markdown (`styling`), an unstyled one stays plain text.
//! * **Moderation** (XEP-0425) and **retraction** (XEP-0424, both the current and the `fasten` forms) → delete.
//! * **Membership**: occupants present when the bridge joined are not announced; later arrivals and departures
//!   are (`307` kick, `301` ban, `303` nick change is not a departure).
//! * **Nick changes** (`303`): the occupant stays the same bridged user. Its native id stays the occupant JID
//!   it had when the bridge first saw it (only its display name follows the new nick), its corrections of
//!   messages sent under the old nick are still accepted, and the new nick's arrival is not a join. Someone
//!   who then takes the old nick gets an identity of their own (the occupant JID with `#N`).
//! * **Encrypted** messages (OMEMO, XEP-0380) become a notice saying the bridge cannot read them.

use crate::ns;
use crate::styling;
use bridge_api::event::{InboundEvent, InboundKind, Membership, MessageDraft, MessageStyle};
use bridge_api::{AccountId, LegId, LegacyUser, NativeId};
use minidom::Element;
use std::collections::{HashMap, HashSet, VecDeque};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::muc::user::{MucUser, Status};
use xmpp_parsers::presence::{Presence, Type as PresenceType};

/// How many renamed occupants a room remembers (beyond it, all are forgotten and start afresh).
const MAX_RENAMED: usize = 4096;
/// How many `id` → stanza-id pairs a room remembers for corrections.
pub const MAX_REMEMBERED: usize = 4096;
/// Longest body the connector sends, in bytes (its `Limits::max_text_bytes`). Longer bodies that arrive (the
/// stream's stanza limit bounds them) go to the core, whose `max_event_bytes` decides and tells the sender.
pub const MAX_BODY: usize = 64 * 1024;
/// Most reactions one user may have on one message.
pub const MAX_REACTIONS: usize = 32;
/// Longest reaction, in bytes.
pub const MAX_REACTION_BYTES: usize = 64;

/// What an occupant said live ([`RoomState::said`]), by whether the room's archive can give it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// It carries the room's stanza-id: the archive holds it under that id.
    Archived(String),
    /// No stanza-id from the room: once dropped, it could not be read again.
    Unarchived,
}

/// What became of one stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An event for the core.
    Event(Box<InboundEvent>),
    /// A reflection of the bridge's own stanza (its origin-id and the stanza-id the room gave it).
    Reflection {
        /// The origin-id the bridge sent.
        origin_id: String,
        /// The room's stanza-id, if any.
        stanza_id: Option<String>,
    },
    /// The room refused a stanza the bridge sent (moderated room without voice, not a member, …): the error
    /// names the stanza by its `id`, which is the bridge's origin-id.
    Refused {
        /// The origin-id of the refused stanza.
        origin_id: String,
        /// The room's reason, for the sender's "not delivered" notice.
        reason: String,
    },
    /// The room refused the bridge's join.
    JoinRefused {
        /// The nick is taken (`conflict`): try another.
        nick_conflict: bool,
        /// The room's condition and text.
        reason: String,
    },
    /// The bridge's own presence in the room arrived: joined (`110`).
    Joined,
    /// Nothing to do; why (for logs).
    Ignored(&'static str),
}

/// One MUC as the bridge sees it.
#[derive(Debug)]
pub struct RoomState {
    /// The leg this room is.
    pub leg: LegId,
    /// The room's bare JID.
    pub jid: BareJid,
    account: AccountId,
    joined: bool,
    occupants: HashSet<String>,
    ids: HashMap<(String, String), String>,
    order: VecDeque<(String, String)>,
    /// Nick → the occupant JID the bridged user was first seen as, for occupants that changed nick.
    renamed: HashMap<String, String>,
    /// New nicks announced by a `303` whose arrival is still to come (not a join).
    arriving: HashSet<String>,
    /// How many newcomers took a nick a renamed occupant was first seen as (see `newcomer`).
    others: u64,
    /// The room's JID as text (to recognise references to its occupants).
    room_str: String,
    /// The bridge's MIMI domain (mentioned occupants' URIs); empty: mentions stay text.
    domain: String,
    /// Nicks of the bridge's own occupants (puppets) → the MIMI URI of the user each stands for.
    bridged: HashMap<String, String>,
}

impl RoomState {
    /// A room not joined yet.
    pub fn new(leg: LegId, jid: BareJid) -> Self {
        let account = leg.account.clone();
        let room_str = jid.to_string();
        Self {
            leg,
            jid,
            account,
            joined: false,
            occupants: HashSet::new(),
            ids: HashMap::new(),
            order: VecDeque::new(),
            renamed: HashMap::new(),
            arriving: HashSet::new(),
            others: 0,
            room_str,
            domain: String::new(),
            bridged: HashMap::new(),
        }
    }

    /// The same room with the bridge's MIMI domain: XEP-0372 mentions of occupants become MIMI mentions.
    pub fn with_domain(mut self, domain: &str) -> Self {
        self.domain = domain.to_owned();
        self
    }

    /// Component mode: the puppet `nick` stands for the MIMI user `uri` (`None`: it left).
    pub fn set_bridged(&mut self, nick: &str, uri: Option<&str>) {
        match uri {
            Some(uri) => self.bridged.insert(nick.to_owned(), uri.to_owned()),
            None => self.bridged.remove(nick),
        };
    }

    /// The nick the bridged XMPP user `identity` (an occupant JID, see [`RoomState::occupant_id`]) has now.
    pub fn nick_of(&self, identity: &str) -> Option<String> {
        if let Some((nick, _)) = self.renamed.iter().find(|(_, id)| id.as_str() == identity) {
            return Some(nick.clone());
        }
        identity.strip_prefix(&self.room_str)?.strip_prefix('/').filter(|n| !n.is_empty()).map(str::to_owned)
    }

    /// The MIMI URI a mention of the occupant `nick` links to.
    fn mention_uri(&self, nick: &str) -> Option<String> {
        if let Some(uri) = self.bridged.get(nick) {
            return Some(uri.clone());
        }
        // A reference to a nick no one holds names no one: it stays text.
        (!self.domain.is_empty() && self.occupants.contains(nick)).then(|| self.user(nick).uri(&self.domain))
    }

    /// Forgets the occupant list (after a stream reset the room is joined again).
    pub fn reset(&mut self) {
        self.joined = false;
        self.occupants.clear();
        self.arriving.clear();
    }

    /// Whether the bridge's own presence has come back since the last [`RoomState::reset`].
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// The occupant JID `room@service/nick`: the native id of a MUC user.
    pub fn occupant_id(&self, nick: &str) -> String {
        format!("{}/{nick}", self.jid)
    }

    /// A newcomer who takes the nick a renamed occupant was first seen as is someone else: an identity of its
    /// own (the occupant JID with `#N`), not the renamed occupant's.
    fn newcomer(&mut self, nick: &str) {
        if self.arriving.contains(nick) || self.renamed.contains_key(nick) {
            return;
        }
        let plain = self.occupant_id(nick);
        if self.renamed.values().any(|id| *id == plain) {
            self.others += 1;
            self.renamed.insert(nick.to_owned(), format!("{plain}#{}", self.others));
        }
    }

    /// Who `nick` is: the occupant JID it was first seen as (see the nick changes in the module documentation).
    fn identity(&self, nick: &str) -> String {
        self.renamed.get(nick).cloned().unwrap_or_else(|| self.occupant_id(nick))
    }

    fn user(&self, nick: &str) -> LegacyUser {
        LegacyUser {
            account: self.account.clone(),
            native_id: self.identity(nick),
            display_name: Some(nick.to_owned()),
        }
    }

    fn remember(&mut self, nick: &str, id: &str, stanza_id: &str) {
        let key = (self.identity(nick), id.to_owned());
        if self.ids.insert(key.clone(), stanza_id.to_owned()).is_none() {
            self.order.push_back(key);
            while self.order.len() > MAX_REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    /// What an occupant (or the room itself: a moderation) said live in this room, as a catch-up holds it back
    /// until the archive's replay has been passed on (see `account`): `None` for anything else (an error, the
    /// bridge's own reflection, the room's history, another room's).
    pub fn said(&self, msg: &Message, is_own_origin: impl Fn(&str) -> bool) -> Option<Said> {
        let from = msg.from.as_ref()?;
        if msg.type_ != MessageType::Groupchat || from.to_bare() != self.jid {
            return None;
        }
        let origin_id = child(&msg.payloads, "origin-id", xmpp_parsers::ns::SID).and_then(|e| e.attr("id"));
        if origin_id.is_some_and(is_own_origin) || child(&msg.payloads, "delay", ns::DELAY).is_some() {
            return None;
        }
        Some(match self.stanza_id(&msg.payloads) {
            Some(id) => Said::Archived(id),
            None => Said::Unarchived,
        })
    }

    /// Translates a groupchat message from this room. `is_own_nick` tells the bridge's own occupants (its nick in
    /// client mode, every puppet's in component mode) apart; `is_own_origin` the origin-ids the bridge sent.
    pub fn message(
        &mut self,
        msg: Message,
        is_own_nick: impl Fn(&str) -> bool,
        is_own_origin: impl Fn(&str) -> bool,
    ) -> Outcome {
        if msg.type_ == MessageType::Error {
            return match msg.id.as_ref().map(|i| i.0.clone()).filter(|id| is_own_origin(id)) {
                Some(origin_id) => Outcome::Refused { origin_id, reason: error_reason(&msg.payloads) },
                None => Outcome::Ignored("an error about a stanza the bridge did not send"),
            };
        }
        if msg.type_ != MessageType::Groupchat {
            return Outcome::Ignored("not a groupchat message");
        }
        let Some(from) = msg.from.clone() else { return Outcome::Ignored("message without from") };
        if from.to_bare() != self.jid {
            return Outcome::Ignored("message from another room");
        }
        let stanza_id = self.stanza_id(&msg.payloads);
        let origin_id = child(&msg.payloads, "origin-id", xmpp_parsers::ns::SID).and_then(|e| e.attr("id"));
        if child(&msg.payloads, "delay", ns::DELAY).is_some() {
            return Outcome::Ignored("room history (delayed); catch-up goes through the archive");
        }
        let Some(nick) = from.resource().map(|r| r.as_str().to_owned()) else {
            return self.room_message(&msg.payloads, stanza_id);
        };
        if let Some(origin) = origin_id.filter(|o| is_own_origin(o)) {
            return Outcome::Reflection { origin_id: origin.to_owned(), stanza_id };
        }
        let from_bridge = is_own_nick(&nick);
        let native_id = stanza_id.clone().or_else(|| origin_id.map(str::to_owned));
        let Some(native) = native_id.clone() else {
            return Outcome::Ignored("message without stanza-id or origin-id");
        };
        let body = msg.bodies.get("").or_else(|| msg.bodies.values().next()).cloned();
        let kind = match self.kind(&nick, &msg, body) {
            Ok(kind) => kind,
            Err(why) => return Outcome::Ignored(why),
        };
        if matches!(kind, InboundKind::Message { .. } | InboundKind::Edit { .. }) {
            if let Some(id) = msg.id.as_ref() {
                self.remember(&nick, &id.0, &native);
            }
            if let Some(o) = origin_id {
                self.remember(&nick, o, &native);
            }
        }
        Outcome::Event(Box::new(InboundEvent {
            leg: self.leg.clone(),
            sender: self.user(&nick),
            native_id: Some(NativeId(native)),
            from_bridge,
            kind,
        }))
    }

    /// The stanza-id this room gave `msg` (XEP-0359), under which its archive holds it.
    pub fn archive_id(&self, msg: &Message) -> Option<String> {
        self.stanza_id(&msg.payloads)
    }

    fn stanza_id(&self, payloads: &[Element]) -> Option<String> {
        payloads
            .iter()
            .filter(|e| e.is("stanza-id", xmpp_parsers::ns::SID))
            .find(|e| e.attr("by").and_then(|b| BareJid::new(b).ok()).as_ref() == Some(&self.jid))
            .and_then(|e| e.attr("id"))
            .map(str::to_owned)
    }

    fn kind(&self, nick: &str, msg: &Message, body: Option<String>) -> Result<InboundKind, &'static str> {
        let p = &msg.payloads;
        if let Some(target) = retraction_target(p) {
            return Ok(InboundKind::Delete { target: NativeId(target) });
        }
        if let Some(r) = child(p, "reactions", xmpp_parsers::ns::REACTIONS) {
            let target = r.attr("id").ok_or("reactions without id")?;
            let keys: Vec<String> = r
                .children()
                .filter(|c| c.is("reaction", xmpp_parsers::ns::REACTIONS))
                .map(|c| c.text())
                .filter(|k| !k.is_empty())
                .collect();
            if keys.len() > MAX_REACTIONS || keys.iter().any(|k| k.len() > MAX_REACTION_BYTES) {
                return Err("too many or too long reactions");
            }
            let mut unique: Vec<String> = Vec::new();
            for k in keys {
                if !unique.contains(&k) {
                    unique.push(k);
                }
            }
            return Ok(InboundKind::ReactionSet { target: NativeId(target.to_owned()), keys: unique });
        }
        if is_encrypted(p) {
            return Ok(InboundKind::Message {
                draft: MessageDraft {
                    body: "[an encrypted message (OMEMO) the bridge cannot read]".into(),
                    style: MessageStyle::Notice,
                    ..MessageDraft::default()
                },
                reply_to: None,
            });
        }
        let Some(body) = body else {
            if let Some(active) = chat_state(p) {
                return Ok(InboundKind::Typing { active });
            }
            return Err("message without body");
        };
        let cut = fallback_cut(&body, p, &[ns::REPLY]);
        let references = crate::mentions::references(p, cut.len());
        let mut body = strip_fallbacks(&body, p, &[ns::REPLY]);
        if let Some(replaced) = child(p, "replace", xmpp_parsers::ns::MESSAGE_CORRECT) {
            let id = replaced.attr("id").ok_or("correction without id")?;
            let target = self
                .ids
                .get(&(self.identity(nick), id.to_owned()))
                .ok_or("correction of a message this occupant did not send (or that is no longer remembered)")?;
            return Ok(InboundKind::Edit { target: NativeId(target.clone()), draft: draft(&body) });
        }
        let reply_to = child(p, "reply", ns::REPLY).and_then(|r| r.attr("id")).map(|id| NativeId(id.to_owned()));
        let (rest, attachments) = crate::oob::inbound(p, &body);
        body = rest;
        if body.trim().is_empty() && attachments.is_empty() {
            return Err("empty body");
        }
        let emote = body.starts_with("/me ");
        if emote {
            body = body["/me ".len()..].to_owned();
        }
        let skip = if emote { "/me ".len() } else { 0 };
        let links: Vec<(usize, usize, String)> = crate::mentions::shift(references, &cut, skip)
            .into_iter()
            .filter(|r| !body.is_empty() && r.end <= body.chars().count())
            .filter_map(|r| {
                let mentioned = crate::mentions::occupant_nick(&r.uri, &self.room_str)?;
                Some((r.begin, r.end, self.mention_uri(&mentioned)?))
            })
            .collect();
        let mut d = if links.is_empty() {
            draft(&body)
        } else {
            MessageDraft::markdown(crate::mentions::to_markdown(&body, &links))
        };
        if emote {
            d.style = MessageStyle::Emote;
        }
        d.attachments = attachments;
        Ok(InboundKind::Message { draft: d, reply_to })
    }

    /// A message from the room itself (no nick): moderation (XEP-0425) is a delete; the rest is ignored.
    fn room_message(&self, payloads: &[Element], stanza_id: Option<String>) -> Outcome {
        let Some((target, moderator)) = moderation(payloads) else {
            return Outcome::Ignored("message from the room itself");
        };
        let sender = match moderator.and_then(|m| Jid::new(&m).ok()).and_then(|j| j.resource().map(|r| r.to_string())) {
            Some(nick) => self.user(&nick),
            None => LegacyUser {
                account: self.account.clone(),
                native_id: self.jid.to_string(),
                display_name: Some("moderator".into()),
            },
        };
        Outcome::Event(Box::new(InboundEvent {
            leg: self.leg.clone(),
            sender,
            native_id: Some(NativeId(stanza_id.unwrap_or_else(|| format!("moderation:{target}")))),
            from_bridge: false,
            kind: InboundKind::Delete { target: NativeId(target) },
        }))
    }

    /// Translates a presence from this room into membership (or the bridge's own join).
    pub fn presence(&mut self, presence: Presence, is_own_nick: impl Fn(&str) -> bool) -> Outcome {
        let Some(from) = presence.from.clone() else { return Outcome::Ignored("presence without from") };
        if from.to_bare() != self.jid {
            return Outcome::Ignored("presence from another room");
        }
        if presence.type_ == PresenceType::Error {
            let nick_conflict = presence
                .payloads
                .iter()
                .filter(|e| e.name() == "error")
                .any(|e| e.has_child("conflict", xmpp_parsers::ns::XMPP_STANZAS));
            return Outcome::JoinRefused { nick_conflict, reason: error_reason(&presence.payloads) };
        }
        let Some(nick) = from.resource().map(|r| r.as_str().to_owned()) else {
            return Outcome::Ignored("presence from the room itself");
        };
        let status: Vec<Status> = presence
            .payloads
            .iter()
            .find(|e| e.is("x", xmpp_parsers::ns::MUC_USER))
            .and_then(|e| MucUser::try_from(e.clone()).ok())
            .map(|u| u.status)
            .unwrap_or_default();
        let available = presence.type_ == PresenceType::None;
        if status.contains(&Status::SelfPresence) {
            if available {
                self.joined = true;
                self.occupants.insert(nick);
                return Outcome::Joined;
            }
            self.reset();
            return Outcome::Ignored("the bridge left the room");
        }
        if available && !self.occupants.contains(&nick) {
            self.newcomer(&nick);
        }
        let sender = self.user(&nick);
        let change = if available {
            if !self.occupants.insert(nick.clone()) {
                return Outcome::Ignored("presence update of a known occupant");
            }
            if self.arriving.remove(&nick) {
                return Outcome::Ignored("an occupant's new nick");
            }
            if !self.joined {
                return Outcome::Ignored("occupant already present when the bridge joined");
            }
            Membership::Join
        } else if presence.type_ == PresenceType::Unavailable {
            self.occupants.remove(&nick);
            if status.contains(&Status::NewNick) {
                let new = presence
                    .payloads
                    .iter()
                    .find(|e| e.is("x", xmpp_parsers::ns::MUC_USER))
                    .and_then(|x| x.children().find(|c| c.name() == "item"))
                    .and_then(|i| i.attr("nick"))
                    .filter(|n| !n.is_empty() && n.len() <= 1023 && *n != nick);
                if let Some(new) = new {
                    let identity = self.identity(&nick);
                    self.renamed.remove(&nick);
                    if identity != self.occupant_id(new) {
                        if self.renamed.len() >= MAX_RENAMED {
                            self.renamed.clear();
                        }
                        self.renamed.insert(new.to_owned(), identity);
                    }
                    self.arriving.insert(new.to_owned());
                }
                return Outcome::Ignored("nick change");
            }
            self.renamed.remove(&nick);
            if status.contains(&Status::Banned) {
                Membership::Ban
            } else if status.contains(&Status::Kicked) {
                Membership::Kick
            } else {
                Membership::Leave
            }
        } else {
            return Outcome::Ignored("presence of another type");
        };
        Outcome::Event(Box::new(InboundEvent {
            leg: self.leg.clone(),
            sender,
            native_id: None,
            from_bridge: is_own_nick(&nick),
            kind: InboundKind::Membership { change },
        }))
    }
}

/// The condition and text of a stanza error, for people to read.
fn error_reason(payloads: &[Element]) -> String {
    let Some(e) = payloads.iter().find(|e| e.name() == "error") else { return "refused by the room".into() };
    let condition = e.children().find(|c| c.ns() == xmpp_parsers::ns::XMPP_STANZAS && c.name() != "text");
    let text = e.children().find(|c| c.name() == "text").map(|t| t.text());
    let mut reason = condition.map_or("refused", |c| c.name()).to_owned();
    if let Some(t) = text.filter(|t| !t.is_empty()) {
        reason.push_str(": ");
        reason.extend(t.chars().take(200));
    }
    reason
}

fn child<'a>(payloads: &'a [Element], name: &str, ns: &str) -> Option<&'a Element> {
    payloads.iter().find(|e| e.is(name, ns))
}

fn draft(body: &str) -> MessageDraft {
    if styling::has_styling(body) {
        MessageDraft::markdown(styling::styled_to_markdown(body))
    } else {
        MessageDraft::plain(body)
    }
}

/// The stanza-id a retraction (XEP-0424, current or `fasten` form) names.
fn retraction_target(p: &[Element]) -> Option<String> {
    if let Some(r) = child(p, "retract", ns::RETRACT) {
        return r.attr("id").map(str::to_owned);
    }
    child(p, "apply-to", ns::FASTEN)
        .filter(|a| a.has_child("retract", ns::RETRACT_0))
        .and_then(|a| a.attr("id"))
        .map(str::to_owned)
}

/// The stanza-id a moderation (XEP-0425, current or `fasten` form) retracts, and the moderator's occupant JID.
fn moderation(p: &[Element]) -> Option<(String, Option<String>)> {
    if let Some(r) = child(p, "retract", ns::RETRACT)
        && let Some(m) = r.get_child("moderated", ns::MODERATE)
    {
        return r.attr("id").map(|id| (id.to_owned(), m.attr("by").map(str::to_owned)));
    }
    let a = child(p, "apply-to", ns::FASTEN)?;
    let m = a.get_child("moderated", ns::MODERATE_0)?;
    a.attr("id").map(|id| (id.to_owned(), m.attr("by").map(str::to_owned)))
}

fn is_encrypted(p: &[Element]) -> bool {
    p.iter().any(|e| e.is("encrypted", ns::OMEMO_LEGACY) || e.is("encrypted", ns::OMEMO) || e.is("encryption", ns::EME))
}

fn chat_state(p: &[Element]) -> Option<bool> {
    p.iter().filter(|e| e.ns() == xmpp_parsers::ns::CHATSTATES).find_map(|e| match e.name() {
        "composing" => Some(true),
        "active" | "paused" | "inactive" | "gone" => Some(false),
        _ => None,
    })
}

/// Cuts the fallback ranges (XEP-0428) for the namespaces `fors` from `body`. Offsets count Unicode code points;
/// ranges that do not fit the body are ignored.
pub fn strip_fallbacks(body: &str, payloads: &[Element], fors: &[&str]) -> String {
    let cut = fallback_cut(body, payloads, fors);
    body.chars().zip(cut).filter(|(_, c)| !c).map(|(ch, _)| ch).collect()
}

/// Which code points of `body` the fallback ranges for `fors` cover.
fn fallback_cut(body: &str, payloads: &[Element], fors: &[&str]) -> Vec<bool> {
    let len = body.chars().count();
    let mut cut = vec![false; len];
    for fb in payloads.iter().filter(|e| e.is("fallback", ns::FALLBACK)) {
        if !fb.attr("for").is_some_and(|f| fors.contains(&f)) {
            continue;
        }
        for b in fb.children().filter(|c| c.is("body", ns::FALLBACK)) {
            let start = b.attr("start").and_then(|s| s.parse::<usize>().ok());
            let end = b.attr("end").and_then(|s| s.parse::<usize>().ok());
            if let (Some(s), Some(e)) = (start, end)
                && s <= e
                && e <= len
            {
                cut[s..e].iter_mut().for_each(|c| *c = true);
            }
        }
    }
    cut
}

#[cfg(test)]
mod tests;
