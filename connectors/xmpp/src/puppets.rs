//! Sans IO: component mode's puppets — one occupant per bridged user and room, with its own JID and nick.
//!
//! A puppet's JID is `LOCAL@component.domain/bridge` where `LOCAL` is the [`crate::escape`]d user part of the
//! sender's MIMI URI (what follows `/u/`), so it is stable, reversible and keeps `Alice` and `alice` apart. Its
//! nick is the sender's display name (control characters removed, at most [`MAX_NICK`] bytes); a taken nick gets
//! `_` appended until the room accepts it.

use crate::escape;
use std::collections::HashMap;
use xmpp_parsers::jid::{BareJid, FullJid};
use xmpp_parsers::muc::user::{MucUser, Status};
use xmpp_parsers::presence::{Presence, Type as PresenceType};

/// Longest puppet nick, in bytes.
pub const MAX_NICK: usize = 48;

/// One bridged user in one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Puppet {
    /// The puppet's JID.
    pub jid: FullJid,
    /// Its nick in the room.
    pub nick: String,
    /// Whether the room confirmed the join on the current stream.
    pub joined: bool,
}

/// Every puppet, per room, by the sender's MIMI URI.
#[derive(Debug, Default)]
pub struct Puppets {
    rooms: HashMap<BareJid, HashMap<String, Puppet>>,
}

/// The puppet JID for the MIMI user `uri` on the component `domain`.
pub fn jid_for(uri: &str, domain: &str) -> Result<FullJid, String> {
    let user = uri.split_once("/u/").map_or(uri, |(_, u)| u);
    let local = escape::escape(user).map_err(|e| e.to_string())?;
    FullJid::new(&format!("{local}@{domain}/bridge")).map_err(|e| format!("puppet JID for {uri:?}: {e}"))
}

/// The nick a display name becomes.
pub fn nick_for(display: &str) -> String {
    let clean: String = display.chars().filter(|c| !c.is_control()).collect();
    let mut nick = clean.trim().to_owned();
    while nick.len() > MAX_NICK {
        nick.pop();
    }
    if nick.is_empty() { "user".to_owned() } else { nick }
}

/// Whether `nick` is `wanted` or one of its collision variants (`wanted` with underscores appended): a
/// puppet whose nick is not follows its user's new display name.
pub fn is_variant_of(nick: &str, wanted: &str) -> bool {
    nick.strip_prefix(wanted).is_some_and(|rest| rest.chars().all(|c| c == '_'))
}

/// `Some(true)`: the room confirms its occupant (status 110) is in; `Some(false)`: it is out; `None`: neither.
pub fn self_presence(p: &Presence) -> Option<bool> {
    let own = p
        .payloads
        .iter()
        .find(|e| e.is("x", xmpp_parsers::ns::MUC_USER))
        .and_then(|e| MucUser::try_from(e.clone()).ok())
        .is_some_and(|u| u.status.contains(&Status::SelfPresence));
    match p.type_ {
        PresenceType::None if own => Some(true),
        PresenceType::Unavailable if own => Some(false),
        _ => None,
    }
}

impl Puppets {
    /// The puppet of `uri` in `room`.
    pub fn get(&self, room: &BareJid, uri: &str) -> Option<&Puppet> {
        self.rooms.get(room)?.get(uri)
    }

    /// Adds or replaces the puppet of `uri` in `room`.
    pub fn insert(&mut self, room: &BareJid, uri: &str, puppet: Puppet) {
        self.rooms.entry(room.clone()).or_default().insert(uri.to_owned(), puppet);
    }

    /// The puppet with JID `jid` in `room`.
    pub fn by_jid_mut(&mut self, room: &BareJid, jid: &FullJid) -> Option<&mut Puppet> {
        self.rooms.get_mut(room)?.values_mut().find(|p| &p.jid == jid)
    }

    /// The MIMI URI of the user whose puppet in `room` is `jid`.
    pub fn uri_of(&self, room: &BareJid, jid: &FullJid) -> Option<&str> {
        self.rooms.get(room)?.iter().find(|(_, p)| &p.jid == jid).map(|(uri, _)| uri.as_str())
    }

    /// Whether `nick` in `room` is one of ours.
    pub fn is_puppet_nick(&self, room: &BareJid, nick: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| r.values().any(|p| p.nick == nick))
    }

    /// Forgets `uri`'s puppet in `room`.
    pub fn remove(&mut self, room: &BareJid, uri: &str) -> Option<Puppet> {
        self.rooms.get_mut(room)?.remove(uri)
    }

    /// Every puppet must join again (a new stream).
    pub fn reset(&mut self) {
        self.rooms.values_mut().flat_map(|r| r.values_mut()).for_each(|p| p.joined = false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puppet_jids_keep_case_apart_and_nicks_are_clean() {
        let a = jid_for("mimi://b.example/u/Alice", "bridge.example").expect("jid");
        let b = jid_for("mimi://b.example/u/alice", "bridge.example").expect("jid");
        assert_ne!(a, b);
        assert_eq!(a.to_string(), "\\41lice@bridge.example/bridge");
        assert_eq!(nick_for(" Bob\n\u{7}Smith "), "BobSmith");
        assert_eq!(nick_for("\n"), "user");
        assert!(nick_for(&"é".repeat(40)).len() <= MAX_NICK);
        assert!(is_variant_of("Bob", "Bob") && is_variant_of("Bob__", "Bob"));
        assert!(!is_variant_of("Bobby", "Bob") && !is_variant_of("Bob", "Robert") && !is_variant_of("Bo", "Bob"));
    }
}
