//! toychat ⇄ core events, sans IO.
//!
//! Rendering rules (what the declared capabilities promise):
//! * Messages are relayed as `<name> text` from the bridge's nick; markdown is shown as plain text.
//! * Replies, edits, deletes and reactions map to toychat's own commands when the target was delivered to this
//!   room (its toychat id is known); otherwise a reply is sent as a plain message and the rest are dropped.
//! * Multi-line text is joined with " ⏎ " (see [`crate::proto::sanitize_text`]).
//! * Typing and membership have no toychat form and are refused.

use crate::proto::Verb;
use bridge_api::connector::SendError;
use bridge_api::event::{
    InboundEvent, InboundKind, MessageDraft, MessageStyle, OutboundEvent, OutboundKind, TextFormat,
};
use bridge_api::{AccountId, LegId, LegacyUser, NativeId};
use mimi_content::markdown;

/// A toychat event seen in a room → the core's inbound event. `None` for events that are not for a room leg.
pub fn inbound(account: &AccountId, own_nick: &str, id: &str, nick: &str, verb: Verb) -> Option<InboundEvent> {
    let leg = LegId::new(account.clone(), verb.room()).ok()?;
    let n = |s: String| NativeId(s);
    let kind = match verb {
        Verb::Say { text, .. } => InboundKind::Message { draft: MessageDraft::plain(text), reply_to: None },
        Verb::Reply { parent, text, .. } => {
            InboundKind::Message { draft: MessageDraft::plain(text), reply_to: Some(n(parent)) }
        }
        Verb::Edit { target, text, .. } => InboundKind::Edit { target: n(target), draft: MessageDraft::plain(text) },
        Verb::Del { target, .. } => InboundKind::Delete { target: n(target) },
        Verb::React { target, key, .. } => InboundKind::ReactionAdd { target: n(target), key },
        Verb::Unreact { target, key, .. } => InboundKind::ReactionRemove { target: n(target), key },
    };
    Some(InboundEvent {
        leg,
        sender: LegacyUser {
            account: account.clone(),
            native_id: nick.to_owned(),
            display_name: Some(nick.to_owned()),
        },
        native_id: Some(NativeId(id.to_owned())),
        // toychat reflects our own commands back to us: those are echoes.
        from_bridge: nick == own_nick,
        kind,
    })
}

/// The text of a draft as toychat shows it, with the relay prefix.
fn render(ev: &OutboundEvent, draft: &MessageDraft) -> String {
    let body = match draft.format {
        TextFormat::Plain => draft.body.clone(),
        TextFormat::Markdown => markdown::to_plain_text(&draft.body),
    };
    let name = &ev.sender.display_name;
    match draft.style {
        MessageStyle::Emote => format!("* {name} {body}"),
        MessageStyle::Notice => format!("[notice] {body}"),
        MessageStyle::Normal => format!("<{name}> {body}"),
    }
}

/// The toychat command that performs `ev`, or `None` when there is nothing to do on this network (e.g. deleting
/// a message that never reached it).
pub fn outbound(ev: &OutboundEvent) -> Result<Option<Verb>, SendError> {
    let room = ev.leg.room.clone();
    let native = |p: &bridge_api::event::ParentRef| p.native_id.as_ref().map(|n| n.0.clone());
    Ok(match &ev.kind {
        OutboundKind::Message { draft, reply_to } => {
            let text = render(ev, draft);
            match reply_to.as_ref().and_then(native) {
                Some(parent) => Some(Verb::Reply { room, parent, text }),
                None => Some(Verb::Say { room, text }),
            }
        }
        OutboundKind::Edit { target, draft } => {
            native(target).map(|t| Verb::Edit { room, target: t, text: render(ev, draft) })
        }
        OutboundKind::Delete { target } => native(target).map(|t| Verb::Del { room, target: t }),
        OutboundKind::ReactionAdd { target, key, .. } => {
            native(target).map(|t| Verb::React { room, target: t, key: key.clone() })
        }
        OutboundKind::ReactionRemove { target, key, .. } => {
            native(target).map(|t| Verb::Unreact { room, target: t, key: key.clone() })
        }
        OutboundKind::Typing { .. } | OutboundKind::Membership { .. } => {
            return Err(SendError::Rejected(format!("toychat has no {}", ev.kind.name())));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge_api::event::{ParentRef, Sender};
    use bridge_api::{MessageId, PortalId, TxnId};

    fn ev(kind: OutboundKind) -> OutboundEvent {
        let mut id = [7u8; 32];
        id[0] = 1;
        let account = AccountId::parse("toychat.t").expect("id");
        OutboundEvent {
            portal: PortalId::new("p").expect("portal"),
            leg: LegId::new(account, "#r").expect("leg"),
            message_id: MessageId::from_bytes(&id).expect("id"),
            txn_id: TxnId("t".into()),
            sender: Sender {
                uri: "mimi://b/u/x".into(),
                display_name: "alice".into(),
                network: "irc".into(),
                legacy: None,
            },
            kind,
            queued_at_ms: 0,
        }
    }

    fn parent(native: Option<&str>) -> ParentRef {
        let mut id = [8u8; 32];
        id[0] = 1;
        ParentRef {
            native_id: native.map(|n| NativeId(n.into())),
            message_id: MessageId::from_bytes(&id).expect("id"),
            sender_name: "bob".into(),
            excerpt: "hi".into(),
        }
    }

    #[test]
    fn renders_messages_with_relay_prefix_and_plain_markdown() {
        let d = MessageDraft::markdown("**bold** move");
        let v = outbound(&ev(OutboundKind::Message { draft: d, reply_to: None })).expect("ok");
        assert_eq!(v, Some(Verb::Say { room: "#r".into(), text: "<alice> bold move".into() }));
        let r = outbound(&ev(OutboundKind::Message {
            draft: MessageDraft::plain("yes"),
            reply_to: Some(parent(Some("m1"))),
        }));
        assert_eq!(r, Ok(Some(Verb::Reply { room: "#r".into(), parent: "m1".into(), text: "<alice> yes".into() })));
    }

    #[test]
    fn unknown_targets_do_nothing_and_typing_is_refused() {
        assert_eq!(outbound(&ev(OutboundKind::Delete { target: parent(None) })), Ok(None));
        assert!(matches!(outbound(&ev(OutboundKind::Typing { active: true })), Err(SendError::Rejected(_))));
    }

    #[test]
    fn own_events_are_echoes() {
        let a = AccountId::parse("toychat.t").expect("id");
        let e =
            inbound(&a, "bridge", "m1", "bridge", Verb::Say { room: "#r".into(), text: "x".into() }).expect("event");
        assert!(e.from_bridge);
        let e =
            inbound(&a, "bridge", "m2", "al", Verb::React { room: "#r".into(), target: "m1".into(), key: "+".into() })
                .expect("event");
        assert!(!e.from_bridge);
        assert_eq!(e.kind, InboundKind::ReactionAdd { target: NativeId("m1".into()), key: "+".into() });
    }
}
