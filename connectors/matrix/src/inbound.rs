//! Matrix timeline events → core events (sans-IO).
//!
//! | Matrix | core |
//! |---|---|
//! | `m.room.message` `m.text` / `m.notice` / `m.emote` | `Message` (style normal / notice / emote) |
//! | … with `m.relates_to.m.in_reply_to` | `Message` with `reply_to` (plain reply fallback stripped) |
//! | `m.image` / `m.file` / `m.video` / `m.audio` | `Message` with an attachment (its `url` the `mxc://` URI, which the IO shell downloads into the media store) and the caption, if any |
//! | … with `rel_type: m.replace` | `Edit` of the original, with `m.new_content` |
//! | `m.reaction` (`m.annotation`) | `ReactionAdd` |
//! | `m.room.redaction` | `Delete` (of a message or a reaction: the core tells them apart) |
//! | `m.room.member` | `Membership` (join, leave, kick, ban), display names on the sender |
//! | … kicking or banning a ghost | a notice from whoever did it (`removed NAME from the Matrix room: reason`) |
//! | `m.room.encrypted` | a notice from its sender that the bridge cannot read it ([`ENCRYPTED_NOTICE`]) |
//!
//! `formatted_body` becomes MIMI markdown ([`crate::format::html_to_markdown`]); user pills and `m.mentions`
//! become `mimi://` user links. Events of the bridge's own users are marked `from_bridge`.

use crate::translate::Translator;
use crate::{format, media};
use bridge_api::event::{Membership, MessageDraft, MessageStyle};
use bridge_api::{InboundEvent, InboundKind, LegId, LegacyUser, NativeId};
use matrix_sdk::deserialized_responses::WithheldCode;
use mimi_content::markdown;
use ruma::events::room::member::{MembershipState, RoomMemberEvent};
use ruma::events::room::message::{MessageFormat, MessageType, Relation, RoomMessageEvent};
use ruma::events::{AnyMessageLikeEvent, AnyStateEvent, AnyTimelineEvent, Mentions};

/// What the portal hears, from its sender, in place of an encrypted message (appservice mode has no end-to-end
/// encryption).
pub const ENCRYPTED_NOTICE: &str =
    "sent an end-to-end encrypted message, which this bridge cannot read: ask them to write in an unencrypted room";

/// What the portal hears, from its sender, in place of an encrypted message the bridge cannot decrypt yet (the
/// message follows once its room key arrives).
pub const UNDECRYPTED_NOTICE: &str =
    "sent an encrypted message the bridge cannot decrypt yet; it follows here once its keys arrive";

/// What the portal hears, from its sender, in place of an encrypted message whose room key the sender's client
/// withheld from the bridge (`m.room_key.withheld`); the reason follows in parentheses. Should the key come after
/// all, the message follows.
pub const WITHHELD_NOTICE: &str =
    "sent an encrypted message whose key their client withheld from the bridge, which cannot read it";

/// What [`WITHHELD_NOTICE`] says of a withheld key's code: the library's wording for the codes of the spec, and
/// nothing of a code it does not know (a client's own code is not repeated to the other networks).
pub fn withheld_reason(code: &WithheldCode) -> String {
    use WithheldCode::*;
    match code {
        Blacklisted | Unverified | Unauthorised | Unavailable | NoOlm | HistoryNotShared => code.to_string(),
        _ => "for a reason of its own".to_owned(),
    }
}

/// Why an event gives no core event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    /// Nothing to bridge (state other than membership, an invite, a display-name-only change…).
    #[error("not bridged: {0}")]
    Ignored(&'static str),
    /// A kind of content this connector does not bridge (yet): locations, encrypted media…
    #[error("unsupported content: {0}")]
    Unsupported(String),
    /// The room id is not a valid leg name.
    #[error("bad room id: {0}")]
    BadRoom(String),
}

impl Translator {
    /// The notice standing for the encrypted event `event_id` of `sender` (named `sender_name`) in `leg_room` that
    /// cannot be decrypted yet ([`UNDECRYPTED_NOTICE`], or [`WITHHELD_NOTICE`] with the reason the sender's client
    /// gave for `withheld`), under an id derived from the event's: the event itself is bridged under its own id once
    /// decrypted.
    pub fn undecrypted_notice(
        &self,
        leg_room: &str,
        sender: &str,
        sender_name: Option<String>,
        event_id: &str,
        withheld: Option<&WithheldCode>,
    ) -> Option<InboundEvent> {
        let body = match withheld {
            Some(code) => format!("{WITHHELD_NOTICE} ({})", withheld_reason(code)),
            None => UNDECRYPTED_NOTICE.to_owned(),
        };
        let draft = MessageDraft { style: MessageStyle::Notice, ..MessageDraft::plain(body) };
        Some(InboundEvent {
            leg: LegId::new(self.account.clone(), leg_room).ok()?,
            sender: LegacyUser {
                account: self.account.clone(),
                native_id: sender.to_owned(),
                display_name: sender_name,
            },
            native_id: Some(NativeId(format!("{event_id}#undecrypted"))),
            from_bridge: self.is_bridge_user(sender),
            kind: InboundKind::Message { draft, reply_to: None },
        })
    }

    /// Translates one timeline event. `sender_name` is the sender's display name in the room, if known.
    pub fn inbound(&self, event: &AnyTimelineEvent, sender_name: Option<&str>) -> Result<InboundEvent, Skipped> {
        let leg =
            LegId::new(self.account.clone(), event.room_id().as_str()).map_err(|e| Skipped::BadRoom(e.to_string()))?;
        let mut sender = event.sender().as_str();
        let mut name = sender_name.map(str::to_owned);
        let kind = match event {
            AnyTimelineEvent::MessageLike(AnyMessageLikeEvent::RoomMessage(RoomMessageEvent::Original(m))) => {
                self.message_kind(&m.content.msgtype, m.content.relates_to.as_ref(), m.content.mentions.as_ref())?
            }
            AnyTimelineEvent::MessageLike(AnyMessageLikeEvent::Reaction(r)) => {
                let r = r.as_original().ok_or(Skipped::Ignored("redacted reaction"))?;
                let a = &r.content.relates_to;
                InboundKind::ReactionAdd { target: NativeId(a.event_id.to_string()), key: a.key.clone() }
            }
            AnyTimelineEvent::MessageLike(AnyMessageLikeEvent::RoomRedaction(r)) => {
                let r = r.as_original().ok_or(Skipped::Ignored("redacted redaction"))?;
                let target = r.redacts.as_ref().or(r.content.redacts.as_ref()).ok_or(Skipped::Ignored("no target"))?;
                InboundKind::Delete { target: NativeId(target.to_string()) }
            }
            AnyTimelineEvent::State(AnyStateEvent::RoomMember(RoomMemberEvent::Original(m))) => {
                sender = m.state_key.as_str();
                if m.sender != m.state_key {
                    name = None; // `sender_name` is the name of whoever changed the membership
                }
                let prev = m.unsigned.prev_content.as_ref();
                let was_joined = prev.is_some_and(|p| p.membership == MembershipState::Join);
                let change = match &m.content.membership {
                    MembershipState::Join => {
                        let old_name = prev.and_then(|p| p.displayname.as_deref());
                        if was_joined && old_name == m.content.displayname.as_deref() {
                            return Err(Skipped::Ignored("profile change"));
                        }
                        name = m.content.displayname.clone().or(name);
                        Membership::Join
                    }
                    MembershipState::Leave if m.sender == m.state_key => Membership::Leave,
                    MembershipState::Leave if was_joined => Membership::Kick,
                    MembershipState::Ban => Membership::Ban,
                    _ => return Err(Skipped::Ignored("invite, knock or rejection")),
                };
                if name.is_none() {
                    name = prev.and_then(|p| p.displayname.clone());
                }
                if self.is_bridge_user(sender) && matches!(change, Membership::Kick | Membership::Ban) {
                    // A ghost removed by someone: the portal hears it from them (the bridge does not rejoin it).
                    let who =
                        name.clone().or_else(|| self.ghosts.identity(sender)).unwrap_or_else(|| sender.to_owned());
                    let verb = if change == Membership::Ban { "banned" } else { "removed" };
                    let reason = m.content.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                    let text = format!("{verb} {who} from the Matrix room{reason}");
                    sender = m.sender.as_str();
                    name = sender_name.map(str::to_owned);
                    let draft = MessageDraft { style: MessageStyle::Notice, ..MessageDraft::plain(text) };
                    InboundKind::Message { draft, reply_to: None }
                } else {
                    InboundKind::Membership { change }
                }
            }
            AnyTimelineEvent::MessageLike(AnyMessageLikeEvent::RoomMessage(_)) => {
                return Err(Skipped::Ignored("redacted message"));
            }
            // Never silence: the portal hears that something was said that the bridge cannot read.
            AnyTimelineEvent::MessageLike(AnyMessageLikeEvent::RoomEncrypted(e)) if e.as_original().is_some() => {
                let draft = MessageDraft { style: MessageStyle::Notice, ..MessageDraft::plain(ENCRYPTED_NOTICE) };
                InboundKind::Message { draft, reply_to: None }
            }
            _ => return Err(Skipped::Ignored("event type")),
        };
        Ok(InboundEvent {
            leg,
            sender: LegacyUser { account: self.account.clone(), native_id: sender.to_owned(), display_name: name },
            native_id: Some(NativeId(event.event_id().to_string())),
            from_bridge: self.is_bridge_user(sender),
            kind,
        })
    }

    /// A message, reply or edit.
    fn message_kind<C: HasMsgtype>(
        &self,
        msgtype: &MessageType,
        relation: Option<&Relation<C>>,
        mentions: Option<&Mentions>,
    ) -> Result<InboundKind, Skipped> {
        Ok(match relation {
            Some(Relation::Replacement(r)) => InboundKind::Edit {
                target: NativeId(r.event_id.to_string()),
                draft: self.draft(r.new_content.msgtype(), r.new_content.mentions().or(mentions), false)?,
            },
            Some(Relation::Reply(r)) => InboundKind::Message {
                draft: self.draft(msgtype, mentions, true)?,
                reply_to: Some(NativeId(r.in_reply_to.event_id.to_string())),
            },
            Some(Relation::Thread(t)) => {
                let parent = t.in_reply_to.as_ref().filter(|_| !t.is_falling_back).map_or(&t.event_id, |r| &r.event_id);
                InboundKind::Message {
                    draft: self.draft(msgtype, mentions, true)?,
                    reply_to: Some(NativeId(parent.to_string())),
                }
            }
            _ => InboundKind::Message { draft: self.draft(msgtype, mentions, false)?, reply_to: None },
        })
    }

    /// The content of a text, notice or emote.
    fn draft(&self, msgtype: &MessageType, mentions: Option<&Mentions>, reply: bool) -> Result<MessageDraft, Skipped> {
        if let Some((attachment, caption)) = media::inbound(msgtype) {
            return Ok(MessageDraft {
                attachments: vec![attachment],
                ..MessageDraft::plain(caption.unwrap_or_default())
            });
        }
        let (style, body, formatted) = match msgtype {
            MessageType::Text(t) => (MessageStyle::Normal, &t.body, t.formatted.as_ref()),
            MessageType::Notice(n) => (MessageStyle::Notice, &n.body, n.formatted.as_ref()),
            MessageType::Emote(e) => (MessageStyle::Emote, &e.body, e.formatted.as_ref()),
            other => return Err(Skipped::Unsupported(other.msgtype().to_owned())),
        };
        let body = if reply { strip_plain_reply_fallback(body) } else { body.as_str() };
        let html = formatted.filter(|f| f.format == MessageFormat::Html).map(|f| f.body.as_str());
        let unlinked: Vec<&str> = mentions
            .map(|m| m.user_ids.iter().map(|u| u.as_str()).filter(|u| !html.is_some_and(|h| h.contains(*u))).collect())
            .unwrap_or_default();
        let draft = match html {
            Some(html) => MessageDraft::markdown(format::html_to_markdown(html, &|u| self.user_uri(u))),
            None if unlinked.iter().any(|u| body.contains(u)) => {
                // A plain body with `m.mentions`: the user ids written in it become user links.
                let mut md = markdown::plain_to_markdown(body);
                for user in &unlinked {
                    let escaped = markdown::plain_to_markdown(user);
                    md = md
                        .replace(&escaped, &markdown::mention_link(user.trim_start_matches('@'), &self.user_uri(user)));
                }
                MessageDraft::markdown(md)
            }
            None => MessageDraft::plain(body),
        };
        Ok(MessageDraft { style, ..draft })
    }
}

/// Access to the content of `m.new_content` and of a whole message alike.
pub trait HasMsgtype {
    /// The message type and its content.
    fn msgtype(&self) -> &MessageType;
    /// The mentions.
    fn mentions(&self) -> Option<&Mentions>;
}

impl HasMsgtype for ruma::events::room::message::RoomMessageEventContentWithoutRelation {
    fn msgtype(&self) -> &MessageType {
        &self.msgtype
    }
    fn mentions(&self) -> Option<&Mentions> {
        self.mentions.as_ref()
    }
}

/// Removes a plain-text reply fallback (`> <@user:server> quoted` lines and the blank line after them).
fn strip_plain_reply_fallback(body: &str) -> &str {
    if !body.starts_with("> <") {
        return body;
    }
    let mut rest = body;
    while let Some(line_end) = rest.strip_prefix('>').and_then(|_| rest.find('\n')) {
        rest = &rest[line_end + 1..];
    }
    if rest.starts_with('>') {
        return body; // all quote, no answer: keep it as written
    }
    rest.strip_prefix('\n').unwrap_or(rest)
}

#[cfg(test)]
#[path = "inbound_tests.rs"]
mod tests;
