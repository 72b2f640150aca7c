//! Outbound translation, sans IO: an [`OutboundEvent`] → the groupchat `<message/>` to send (in the
//! `jabber:client` namespace; the component shell rewrites it).
//!
//! Every stanza is built as elements (text is XML-escaped by the serialiser; nothing from another network is
//! ever parsed as XML). Its `id` and XEP-0359 `<origin-id/>` are the core's transaction id, stable across
//! retries, so the room's reflection can be matched and a retry recognised. A bridged message's `id` is
//! therefore `TxnId::for_delivery(message, leg)`, which lets a later correction (XEP-0308) name it from the
//! MIMI message id alone.
//!
//! | core event | stanza |
//! |---|---|
//! | message | `<body/>` (markdown → XEP-0393 styling; plain text that looks styled gets `<unstyled/>`); each attachment a line with its link and a XEP-0066 `<x xmlns='jabber:x:oob'/>` |
//! | mention | the mentioned user's nick in the room plus a XEP-0372 reference (the account holds and places them around this rendering, `mentions`); the link text when they have no nick here |
//! | reply | XEP-0461 `<reply id='stanza-id'/>` + a `> quote` fallback marked with XEP-0428; a quote only when the parent never reached the room |
//! | edit | XEP-0308 `<replace id='original id'/>` |
//! | delete | XEP-0424 `<retract id='stanza-id'/>` with a fallback body |
//! | reaction add/remove | component mode: XEP-0444 `<reactions/>` with the sender's whole set; client mode: a text line |
//! | typing | component mode: XEP-0085 `<composing/>`/`<paused/>` from the puppet; client mode: nothing (the one relay account would show everyone's typing as its own) |
//! | membership | nothing here (component mode joins or leaves the puppet) |
//!
//! In client mode one account speaks for everyone, so messages are prefixed `name: ` and emotes `* name`.

use crate::{ns, styling};
use bridge_api::connector::SendError;
use bridge_api::event::{MessageDraft, MessageStyle, OutboundEvent, OutboundKind, ParentRef, TextFormat};
use bridge_api::{LegId, TxnId};
use minidom::Element;
use minidom::rxml::xml_ncname;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Id, Lang, Message};

/// Who speaks in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voice {
    /// Client mode: the bridge's one account, prefixing each message with the sender's name.
    Relay,
    /// Component mode: the sender's own puppet occupant.
    Puppet,
}

/// What to send for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The stanza (no `from`; the shell sets it in component mode).
    pub message: Message,
    /// Its origin-id (the reflection carries it back).
    pub origin_id: String,
    /// Whether the room reflects it with a stanza-id that later stanzas reference (messages, corrections).
    pub referenceable: bool,
}

/// The `id` (and origin-id) of the message bridged for MIMI message `message` into `leg`.
pub fn message_stanza_id(message: &bridge_api::MessageId, leg: &LegId) -> String {
    TxnId::for_delivery(message, leg).0
}

/// Renders `ev` for the room `room`; `Ok(None)` when nothing is to be sent for it.
pub fn render(ev: &OutboundEvent, room: &BareJid, voice: Voice) -> Result<Option<Rendered>, SendError> {
    let name = xml_text(&ev.sender.display_name.replace(['\n', '\r'], " "));
    let mut msg = Message::groupchat(Some(Jid::from(room.clone())));
    let origin = ev.txn_id.0.clone();
    msg.id = Some(Id(origin.clone()));
    msg.payloads.push(
        Element::builder("origin-id", xmpp_parsers::ns::SID).attr(xml_ncname!("id").into(), origin.as_str()).build(),
    );
    let referenceable = match &ev.kind {
        OutboundKind::Message { draft, reply_to } => {
            if draft.body.trim().is_empty() && draft.attachments.is_empty() {
                return Err(SendError::Rejected("an empty message".into()));
            }
            let text = match voice {
                _ if !draft.body.trim().is_empty() => body_text(draft, &name, voice, &mut msg.payloads),
                Voice::Puppet => String::new(),
                Voice::Relay => format!("{name}:"),
            };
            let (text, links) = crate::oob::outbound(&text, &draft.attachments);
            msg.payloads.extend(links);
            match reply_to {
                Some(parent) => add_reply(&mut msg, parent, &text),
                None => set_body(&mut msg, text),
            }
            true
        }
        OutboundKind::Edit { target, draft } => {
            let text = body_text(draft, &name, voice, &mut msg.payloads);
            if target.native_id.is_some() {
                let original = message_stanza_id(&target.message_id, &ev.leg);
                msg.payloads.push(
                    Element::builder("replace", xmpp_parsers::ns::MESSAGE_CORRECT)
                        .attr(xml_ncname!("id").into(), original)
                        .build(),
                );
                set_body(&mut msg, text);
            } else {
                set_body(&mut msg, format!("✎ {text}"));
            }
            true
        }
        OutboundKind::Delete { target } => {
            let Some(id) = &target.native_id else { return Ok(None) };
            msg.payloads
                .push(Element::builder("retract", ns::RETRACT).attr(xml_ncname!("id").into(), id.0.as_str()).build());
            msg.payloads
                .push(Element::builder("fallback", ns::FALLBACK).attr(xml_ncname!("for").into(), ns::RETRACT).build());
            msg.payloads.push(Element::builder("store", ns::HINTS).build());
            set_body(&mut msg, format!("{name} retracted a message; your client does not show retractions."));
            false
        }
        OutboundKind::ReactionAdd { target, key, set_after }
        | OutboundKind::ReactionRemove { target, key, set_after, .. } => {
            let added = matches!(ev.kind, OutboundKind::ReactionAdd { .. });
            match (voice, &target.native_id) {
                (Voice::Puppet, Some(id)) => {
                    let reactions = set_after.iter().fold(
                        Element::builder("reactions", xmpp_parsers::ns::REACTIONS)
                            .attr(xml_ncname!("id").into(), id.0.as_str()),
                        |b, k| b.append(Element::builder("reaction", xmpp_parsers::ns::REACTIONS).append(xml_text(k))),
                    );
                    msg.payloads.push(reactions.build());
                    msg.payloads.push(Element::builder("store", ns::HINTS).build());
                }
                _ => {
                    let verb = if added { "reacted with" } else { "took back" };
                    let excerpt = one_line(&target.excerpt);
                    set_body(
                        &mut msg,
                        format!("{name} {verb} {key} to {}: \u{201c}{excerpt}\u{201d}", target.sender_name),
                    );
                    msg.payloads.push(unstyled());
                }
            }
            false
        }
        OutboundKind::Typing { active } => {
            if voice == Voice::Relay {
                return Ok(None);
            }
            let state = if *active { "composing" } else { "paused" };
            msg.payloads.push(Element::builder(state, xmpp_parsers::ns::CHATSTATES).build());
            msg.payloads.push(Element::builder("no-store", ns::HINTS).build());
            false
        }
        OutboundKind::Membership { .. } => return Ok(None),
    };
    Ok(Some(Rendered { message: msg, origin_id: origin, referenceable }))
}

fn set_body(msg: &mut Message, text: String) {
    msg.bodies.insert(Lang::new(), xml_text(&text));
}

/// `s` without the characters XML 1.0 cannot carry (C0 controls but tab, newline and carriage return; U+FFFE,
/// U+FFFF): text from other networks may hold them, and no escaping makes them legal.
pub fn xml_text(s: &str) -> String {
    s.chars()
        .filter(|&c| !matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}'))
        .collect()
}

fn unstyled() -> Element {
    Element::builder("unstyled", ns::STYLING).build()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The body for `draft`: styling from markdown, the relay prefix in client mode, `/me` for emotes. Adds the
/// `<unstyled/>` hint where plain text would otherwise be read as styling.
fn body_text(draft: &MessageDraft, name: &str, voice: Voice, payloads: &mut Vec<Element>) -> String {
    let text = match draft.format {
        TextFormat::Markdown => styling::markdown_to_styled(&draft.body),
        TextFormat::Plain => {
            if styling::has_styling(&draft.body) && !payloads.iter().any(|p| p.is("unstyled", ns::STYLING)) {
                payloads.push(unstyled());
            }
            draft.body.clone()
        }
    };
    match (voice, draft.style) {
        (Voice::Puppet, MessageStyle::Emote) => format!("/me {text}"),
        (Voice::Puppet, _) => text,
        (Voice::Relay, MessageStyle::Emote) => format!("* {name} {text}"),
        (Voice::Relay, _) => format!("{name}: {text}"),
    }
}

/// A XEP-0461 reply with a XEP-0428 quote fallback when the parent reached the room, else the quote alone.
fn add_reply(msg: &mut Message, parent: &ParentRef, text: &str) {
    let quote: String =
        one_line(&parent.excerpt).lines().map(|l| format!("> {}: {l}\n", parent.sender_name)).collect::<String>();
    let quote = if quote.is_empty() { format!("> {}\n", parent.sender_name) } else { quote };
    if let Some(id) = &parent.native_id {
        msg.payloads.push(Element::builder("reply", ns::REPLY).attr(xml_ncname!("id").into(), id.0.as_str()).build());
        let end = quote.chars().count();
        msg.payloads.push(
            Element::builder("fallback", ns::FALLBACK)
                .attr(xml_ncname!("for").into(), ns::REPLY)
                .append(
                    Element::builder("body", ns::FALLBACK)
                        .attr(xml_ncname!("start").into(), "0")
                        .attr(xml_ncname!("end").into(), end.to_string()),
                )
                .build(),
        );
    }
    set_body(msg, format!("{quote}{text}"));
}

#[cfg(test)]
mod tests;
