//! The closed set of events that cross the connector API.
//!
//! * [`InboundEvent`]: a connector saw something happen in a legacy room and hands it to the core.
//! * [`OutboundEvent`]: the core asks a connector to make something happen in a legacy room.
//!
//! Inbound events name other messages by the *network's* ids ([`NativeId`]); the core resolves them through its
//! ID map. Outbound events carry the target leg's native ids already resolved, plus enough context (parent excerpt,
//! sender name) for a connector to render a degraded form (a reply as a quote, an edit as `s/old/new/`).

use crate::ids::{LegId, MessageId, NativeId, PortalId, TxnId};
use crate::uri::LegacyUser;
use serde::{Deserialize, Serialize};

/// How a message's text is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TextFormat {
    /// Plain text: shown as is, nothing interpreted.
    #[default]
    Plain,
    /// MIMI markdown (draft-ietf-mimi-content's GFM variant, no raw HTML). Connectors convert their native
    /// formatting (IRC codes, XHTML-IM, Matrix HTML) to and from it with the shared markdown helper.
    Markdown,
}

/// The style of a message, where networks tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MessageStyle {
    /// An ordinary message.
    #[default]
    Normal,
    /// An action ("/me waves"; IRC CTCP ACTION, Matrix `m.emote`).
    Emote,
    /// An automated notice (IRC NOTICE, Matrix `m.notice`): never triggers other bots.
    Notice,
}

/// A file or media item, described; the bytes live at `url`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// Where the content can be fetched.
    pub url: String,
    /// Media type, e.g. `image/png`.
    pub media_type: String,
    /// Size in bytes, if known.
    pub size: Option<u64>,
    /// Original file name, if known.
    pub filename: Option<String>,
}

/// The content of a message, independent of any network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct MessageDraft {
    /// The text (may be empty for an attachment-only message).
    pub body: String,
    /// How to read `body`.
    pub format: TextFormat,
    /// Normal, emote or notice.
    pub style: MessageStyle,
    /// Attachments.
    pub attachments: Vec<Attachment>,
}

impl MessageDraft {
    /// A plain-text message.
    pub fn plain(body: impl Into<String>) -> Self {
        Self { body: body.into(), ..Self::default() }
    }
    /// A markdown message.
    pub fn markdown(body: impl Into<String>) -> Self {
        Self { body: body.into(), format: TextFormat::Markdown, ..Self::default() }
    }
    /// The size the core checks against its event limit: body plus attachment descriptions.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attachments
                .iter()
                .map(|a| a.url.len() + a.media_type.len() + a.filename.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }
}

/// A membership change in a legacy room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Membership {
    /// Joined the room.
    Join,
    /// Left the room.
    Leave,
    /// Was removed by someone else.
    Kick,
    /// Was banned.
    Ban,
}

/// Something that happened in a legacy room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundEvent {
    /// The room it happened in.
    pub leg: LegId,
    /// Who did it.
    pub sender: LegacyUser,
    /// The network's id of this event; required for everything but typing. Used for dedup (an event redelivered
    /// with the same id is processed once) and for later references (replies, edits…).
    pub native_id: Option<NativeId>,
    /// Set by the connector when the network tells it this event is the bridge's own (IRC echo-message of a line
    /// it sent, a Matrix event carrying our transaction id, an XMPP MUC reflection of our stanza). The core drops
    /// such events; it also drops events from senders registered as ghosts and events whose native id it recorded
    /// for a delivery.
    pub from_bridge: bool,
    /// What happened.
    pub kind: InboundKind,
}

/// What happened, in an [`InboundEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum InboundKind {
    /// A new message, optionally a reply to another (by its native id in the same room).
    Message {
        /// The content.
        draft: MessageDraft,
        /// The native id of the message replied to.
        reply_to: Option<NativeId>,
    },
    /// A new version of an earlier message.
    Edit {
        /// The native id of the message edited.
        target: NativeId,
        /// The new content.
        draft: MessageDraft,
    },
    /// Removal of an earlier message or reaction (a Matrix redaction of a reaction event is a reaction removal;
    /// the core tells the two apart through its ID map).
    Delete {
        /// The native id of the message or reaction removed.
        target: NativeId,
    },
    /// One reaction added (per-event shape: Matrix `m.reaction`).
    ReactionAdd {
        /// The message reacted to.
        target: NativeId,
        /// The reaction, usually one emoji.
        key: String,
    },
    /// One reaction removed, named by key.
    ReactionRemove {
        /// The message reacted to.
        target: NativeId,
        /// The reaction removed.
        key: String,
    },
    /// The sender's complete set of reactions on a message (set shape: XEP-0444). The core works out which were
    /// added and which removed.
    ReactionSet {
        /// The message reacted to.
        target: NativeId,
        /// Every reaction the sender now has on it; empty removes all.
        keys: Vec<String>,
    },
    /// Someone joined, left, was kicked or banned.
    Membership {
        /// The change.
        change: Membership,
    },
    /// Typing started or stopped.
    Typing {
        /// True while typing.
        active: bool,
    },
}

impl InboundKind {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            InboundKind::Message { .. } => "message",
            InboundKind::Edit { .. } => "edit",
            InboundKind::Delete { .. } => "delete",
            InboundKind::ReactionAdd { .. } => "reaction_add",
            InboundKind::ReactionRemove { .. } => "reaction_remove",
            InboundKind::ReactionSet { .. } => "reaction_set",
            InboundKind::Membership { .. } => "membership",
            InboundKind::Typing { .. } => "typing",
        }
    }

    /// Size in bytes of the variable-length parts, for the core's event size limit.
    pub fn size(&self) -> usize {
        match self {
            InboundKind::Message { draft, .. } | InboundKind::Edit { draft, .. } => draft.size(),
            InboundKind::ReactionAdd { key, .. } | InboundKind::ReactionRemove { key, .. } => key.len(),
            InboundKind::ReactionSet { keys, .. } => keys.iter().map(String::len).sum(),
            _ => 0,
        }
    }
}

/// Who an outbound event is from, as the target network should show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// The sender's MIMI URI (a native MLS user, or a legacy user's bridged URI).
    pub uri: String,
    /// The name to show.
    pub display_name: String,
    /// Where the sender is: a network kind (`irc`, `matrix`, …) or `mimi` for native MLS users.
    pub network: String,
    /// The legacy user, if the sender is on a legacy network (possibly another account of the same kind).
    pub legacy: Option<LegacyUser>,
}

/// The parent of a reply, resolved for the target leg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// The parent's id on the target leg, if it was delivered there.
    pub native_id: Option<NativeId>,
    /// The parent's MIMI message id.
    pub message_id: MessageId,
    /// Who wrote the parent, for "nick: " style fallbacks.
    pub sender_name: String,
    /// The start of the parent's text, for quote fallbacks (at most ~100 characters).
    pub excerpt: String,
}

/// Something the core asks a connector to do in one legacy room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundEvent {
    /// The portal it comes from.
    pub portal: PortalId,
    /// The room to act in.
    pub leg: LegId,
    /// The MIMI message this delivery belongs to.
    pub message_id: MessageId,
    /// Stable across retries: use it as the network's transaction / origin id where there is one.
    pub txn_id: TxnId,
    /// Who it is from.
    pub sender: Sender,
    /// What to do.
    pub kind: OutboundKind,
    /// When the core first queued this delivery, in milliseconds since the Unix epoch (0: unknown). Retries keep
    /// it. A network that remembers transaction ids only for a while (Matrix homeservers: about a day) lets a
    /// connector look for an earlier attempt of an old delivery before sending it again.
    #[serde(default)]
    pub queued_at_ms: u64,
}

/// What to do, in an [`OutboundEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum OutboundKind {
    /// Post a message.
    Message {
        /// The content.
        draft: MessageDraft,
        /// The parent, if this is a reply.
        reply_to: Option<ParentRef>,
    },
    /// Replace an earlier message's content.
    Edit {
        /// The message edited (its native id on this leg is in `target.native_id`, if it was delivered here).
        target: ParentRef,
        /// The new content.
        draft: MessageDraft,
    },
    /// Remove an earlier message.
    Delete {
        /// The message removed.
        target: ParentRef,
    },
    /// Add a reaction.
    ReactionAdd {
        /// The message reacted to.
        target: ParentRef,
        /// The reaction.
        key: String,
        /// The sender's full set of reactions on the target after this change (for set-shaped networks).
        set_after: Vec<String>,
    },
    /// Remove a reaction.
    ReactionRemove {
        /// The message reacted to.
        target: ParentRef,
        /// The reaction removed.
        key: String,
        /// The reaction's own message id.
        reaction: MessageId,
        /// The native id of the reaction event on this leg, if the core delivered it here (Matrix redacts it).
        reaction_native_id: Option<NativeId>,
        /// The sender's full set of reactions on the target after this change.
        set_after: Vec<String>,
    },
    /// A membership change of a bridged user.
    Membership {
        /// The change.
        change: Membership,
    },
    /// Typing notification.
    Typing {
        /// True while typing.
        active: bool,
    },
}

impl OutboundKind {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            OutboundKind::Message { .. } => "message",
            OutboundKind::Edit { .. } => "edit",
            OutboundKind::Delete { .. } => "delete",
            OutboundKind::ReactionAdd { .. } => "reaction_add",
            OutboundKind::ReactionRemove { .. } => "reaction_remove",
            OutboundKind::Membership { .. } => "membership",
            OutboundKind::Typing { .. } => "typing",
        }
    }
}
