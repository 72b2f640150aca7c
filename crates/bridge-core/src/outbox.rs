//! The stored form of a pending delivery (`outbox` tree) and of one given up on (`failed` tree).
//!
//! These are records of their own, converted from and to the connector API's [`OutboundEvent`]: the API may
//! change shape (a new field, a renamed variant) without touching what is on disk, and what is on disk changes
//! only through a schema migration ([`crate::SCHEMA`]).
//!
//! Schema history of these two trees:
//!
//! * **version 1** (up to a7fa083): `outbox` values were the JSON of the API's `OutboundEvent`; `failed` values
//!   were `{"event": <OutboundEvent>, "reason": …}`.
//! * **version 2**: [`DeliveryRecord`] and [`FailedRecord`]. Their JSON reads version 1's (same field names and
//!   tags) and adds `queued_at_ms` (so a delivery's latency counts from when it was queued, across restarts) and
//!   `failed_at_ms` (for the retention of `failed`). [`migrate_v1_to_v2`] rewrites every entry, stamping the
//!   migration time. A later change of these records copies the version-2 types into a frozen module for its
//!   migration, as version 1's shape is frozen here.

use crate::repo::{FAILED, OUTBOX};
use bridge_api::event::{Attachment, MessageDraft, MessageStyle, OutboundEvent, OutboundKind, ParentRef, Sender};
use bridge_api::event::{Membership, TextFormat};
use bridge_api::ids::{AccountId, LegId, MessageId, NativeId, PortalId, TxnId};
use bridge_api::uri::LegacyUser;
use mimi_store::{Batch, KvStore, StoreError};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A pending delivery, as stored in the `outbox` tree under (leg, sequence number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The portal it comes from.
    pub portal: PortalId,
    /// The room to act in.
    pub leg: LegId,
    /// The MIMI message this delivery belongs to.
    pub message_id: MessageId,
    /// Stable across retries.
    pub txn_id: TxnId,
    /// Who it is from.
    pub sender: SenderRecord,
    /// What to do.
    pub kind: KindRecord,
    /// When the portal queued it (0 for entries migrated from version 1: unknown, counted from the migration).
    #[serde(default)]
    pub queued_at_ms: u64,
}

/// A delivery given up on, as stored in the `failed` tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRecord {
    /// What could not be delivered.
    pub event: DeliveryRecord,
    /// Why.
    pub reason: String,
    /// When it was given up on.
    #[serde(default)]
    pub failed_at_ms: u64,
}

/// [`Sender`], stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderRecord {
    /// The sender's MIMI URI.
    pub uri: String,
    /// The name to show.
    pub display_name: String,
    /// `irc`, `matrix`, … or `mimi`.
    pub network: String,
    /// The legacy user, if any.
    pub legacy: Option<LegacyUserRecord>,
}

/// [`LegacyUser`], stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyUserRecord {
    /// The account the user was seen through.
    pub account: AccountId,
    /// The network's id for the user.
    pub native_id: String,
    /// What to show.
    pub display_name: Option<String>,
}

/// [`ParentRef`], stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRecord {
    /// The parent's id on the target leg, if it was delivered there.
    pub native_id: Option<NativeId>,
    /// The parent's MIMI message id.
    pub message_id: MessageId,
    /// Who wrote the parent.
    pub sender_name: String,
    /// The start of the parent's text.
    pub excerpt: String,
}

/// [`MessageDraft`], stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftRecord {
    /// The text.
    pub body: String,
    /// `plain` or `markdown`.
    pub format: FormatRecord,
    /// `normal`, `emote` or `notice`.
    pub style: StyleRecord,
    /// Attachments.
    pub attachments: Vec<AttachmentRecord>,
}

/// [`TextFormat`], stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatRecord {
    /// Plain text.
    Plain,
    /// MIMI markdown.
    Markdown,
}

/// [`MessageStyle`], stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StyleRecord {
    /// An ordinary message.
    Normal,
    /// An action.
    Emote,
    /// An automated notice.
    Notice,
}

/// [`Attachment`], stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// Where the content can be fetched.
    pub url: String,
    /// Media type.
    pub media_type: String,
    /// Size in bytes.
    pub size: Option<u64>,
    /// Original file name.
    pub filename: Option<String>,
}

/// [`Membership`], stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipRecord {
    /// Joined.
    Join,
    /// Left.
    Leave,
    /// Kicked.
    Kick,
    /// Banned.
    Ban,
}

/// [`OutboundKind`], stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum KindRecord {
    /// Post a message.
    Message {
        /// The content.
        draft: DraftRecord,
        /// The parent of a reply.
        reply_to: Option<ParentRecord>,
    },
    /// Replace an earlier message's content.
    Edit {
        /// The message edited.
        target: ParentRecord,
        /// The new content.
        draft: DraftRecord,
    },
    /// Remove an earlier message.
    Delete {
        /// The message removed.
        target: ParentRecord,
    },
    /// Add a reaction.
    ReactionAdd {
        /// The message reacted to.
        target: ParentRecord,
        /// The reaction.
        key: String,
        /// The sender's set after the change.
        set_after: Vec<String>,
    },
    /// Remove a reaction.
    ReactionRemove {
        /// The message reacted to.
        target: ParentRecord,
        /// The reaction removed.
        key: String,
        /// The reaction's own message id.
        reaction: MessageId,
        /// The reaction event's native id on this leg.
        reaction_native_id: Option<NativeId>,
        /// The sender's set after the change.
        set_after: Vec<String>,
    },
    /// A membership change.
    Membership {
        /// The change.
        change: MembershipRecord,
    },
    /// Typing.
    Typing {
        /// True while typing.
        active: bool,
    },
}

impl DeliveryRecord {
    /// The record of `ev`, queued at `queued_at_ms`.
    pub fn new(ev: &OutboundEvent, queued_at_ms: u64) -> Self {
        Self {
            portal: ev.portal.clone(),
            leg: ev.leg.clone(),
            message_id: ev.message_id,
            txn_id: ev.txn_id.clone(),
            sender: SenderRecord::from(&ev.sender),
            kind: KindRecord::from(&ev.kind),
            queued_at_ms,
        }
    }

    /// The API event this record stands for.
    pub fn to_event(&self) -> OutboundEvent {
        OutboundEvent {
            portal: self.portal.clone(),
            leg: self.leg.clone(),
            message_id: self.message_id,
            txn_id: self.txn_id.clone(),
            sender: self.sender.to_api(),
            kind: self.kind.to_api(),
            queued_at_ms: self.queued_at_ms,
        }
    }
}

impl From<&Sender> for SenderRecord {
    fn from(s: &Sender) -> Self {
        Self {
            uri: s.uri.clone(),
            display_name: s.display_name.clone(),
            network: s.network.clone(),
            legacy: s.legacy.as_ref().map(|l| LegacyUserRecord {
                account: l.account.clone(),
                native_id: l.native_id.clone(),
                display_name: l.display_name.clone(),
            }),
        }
    }
}

impl SenderRecord {
    fn to_api(&self) -> Sender {
        Sender {
            uri: self.uri.clone(),
            display_name: self.display_name.clone(),
            network: self.network.clone(),
            legacy: self.legacy.as_ref().map(|l| LegacyUser {
                account: l.account.clone(),
                native_id: l.native_id.clone(),
                display_name: l.display_name.clone(),
            }),
        }
    }
}

impl From<&ParentRef> for ParentRecord {
    fn from(p: &ParentRef) -> Self {
        Self {
            native_id: p.native_id.clone(),
            message_id: p.message_id,
            sender_name: p.sender_name.clone(),
            excerpt: p.excerpt.clone(),
        }
    }
}

impl ParentRecord {
    fn to_api(&self) -> ParentRef {
        ParentRef {
            native_id: self.native_id.clone(),
            message_id: self.message_id,
            sender_name: self.sender_name.clone(),
            excerpt: self.excerpt.clone(),
        }
    }
}

impl From<&MessageDraft> for DraftRecord {
    fn from(d: &MessageDraft) -> Self {
        Self {
            body: d.body.clone(),
            format: match d.format {
                TextFormat::Plain => FormatRecord::Plain,
                TextFormat::Markdown => FormatRecord::Markdown,
            },
            style: match d.style {
                MessageStyle::Normal => StyleRecord::Normal,
                MessageStyle::Emote => StyleRecord::Emote,
                MessageStyle::Notice => StyleRecord::Notice,
            },
            attachments: d
                .attachments
                .iter()
                .map(|a| AttachmentRecord {
                    url: a.url.clone(),
                    media_type: a.media_type.clone(),
                    size: a.size,
                    filename: a.filename.clone(),
                })
                .collect(),
        }
    }
}

impl DraftRecord {
    fn to_api(&self) -> MessageDraft {
        MessageDraft {
            body: self.body.clone(),
            format: match self.format {
                FormatRecord::Plain => TextFormat::Plain,
                FormatRecord::Markdown => TextFormat::Markdown,
            },
            style: match self.style {
                StyleRecord::Normal => MessageStyle::Normal,
                StyleRecord::Emote => MessageStyle::Emote,
                StyleRecord::Notice => MessageStyle::Notice,
            },
            attachments: self
                .attachments
                .iter()
                .map(|a| Attachment {
                    url: a.url.clone(),
                    media_type: a.media_type.clone(),
                    size: a.size,
                    filename: a.filename.clone(),
                })
                .collect(),
        }
    }
}

fn membership_record(m: Membership) -> MembershipRecord {
    match m {
        Membership::Join => MembershipRecord::Join,
        Membership::Leave => MembershipRecord::Leave,
        Membership::Kick => MembershipRecord::Kick,
        Membership::Ban => MembershipRecord::Ban,
    }
}

fn membership_api(m: MembershipRecord) -> Membership {
    match m {
        MembershipRecord::Join => Membership::Join,
        MembershipRecord::Leave => Membership::Leave,
        MembershipRecord::Kick => Membership::Kick,
        MembershipRecord::Ban => Membership::Ban,
    }
}

impl From<&OutboundKind> for KindRecord {
    fn from(k: &OutboundKind) -> Self {
        match k {
            OutboundKind::Message { draft, reply_to } => {
                KindRecord::Message { draft: draft.into(), reply_to: reply_to.as_ref().map(ParentRecord::from) }
            }
            OutboundKind::Edit { target, draft } => KindRecord::Edit { target: target.into(), draft: draft.into() },
            OutboundKind::Delete { target } => KindRecord::Delete { target: target.into() },
            OutboundKind::ReactionAdd { target, key, set_after } => {
                KindRecord::ReactionAdd { target: target.into(), key: key.clone(), set_after: set_after.clone() }
            }
            OutboundKind::ReactionRemove { target, key, reaction, reaction_native_id, set_after } => {
                KindRecord::ReactionRemove {
                    target: target.into(),
                    key: key.clone(),
                    reaction: *reaction,
                    reaction_native_id: reaction_native_id.clone(),
                    set_after: set_after.clone(),
                }
            }
            OutboundKind::Membership { change } => KindRecord::Membership { change: membership_record(*change) },
            OutboundKind::Typing { active } => KindRecord::Typing { active: *active },
        }
    }
}

impl KindRecord {
    fn to_api(&self) -> OutboundKind {
        match self {
            KindRecord::Message { draft, reply_to } => {
                OutboundKind::Message { draft: draft.to_api(), reply_to: reply_to.as_ref().map(ParentRecord::to_api) }
            }
            KindRecord::Edit { target, draft } => OutboundKind::Edit { target: target.to_api(), draft: draft.to_api() },
            KindRecord::Delete { target } => OutboundKind::Delete { target: target.to_api() },
            KindRecord::ReactionAdd { target, key, set_after } => {
                OutboundKind::ReactionAdd { target: target.to_api(), key: key.clone(), set_after: set_after.clone() }
            }
            KindRecord::ReactionRemove { target, key, reaction, reaction_native_id, set_after } => {
                OutboundKind::ReactionRemove {
                    target: target.to_api(),
                    key: key.clone(),
                    reaction: *reaction,
                    reaction_native_id: reaction_native_id.clone(),
                    set_after: set_after.clone(),
                }
            }
            KindRecord::Membership { change } => OutboundKind::Membership { change: membership_api(*change) },
            KindRecord::Typing { active } => OutboundKind::Typing { active: *active },
        }
    }
}

/// Schema migration 1 → 2: every `outbox` and `failed` entry is decoded in version 1's shape and written back as
/// a version-2 record with the migration time as `queued_at_ms` / `failed_at_ms`. One atomic batch.
pub fn migrate_v1_to_v2(kv: &dyn KvStore) -> Result<(), StoreError> {
    let now = now_ms();
    let corrupt = |tree: &str, e: serde_json::Error| StoreError::Corrupt {
        tree: tree.into(),
        message: format!("schema 1 entry unreadable during migration to 2: {e}"),
    };
    let mut b = Batch::new();
    for (k, v) in kv.scan_prefix(OUTBOX, b"")? {
        let mut rec: DeliveryRecord = serde_json::from_slice(&v).map_err(|e| corrupt(OUTBOX, e))?;
        rec.queued_at_ms = now;
        b.put(OUTBOX, k, serde_json::to_vec(&rec).map_err(|e| corrupt(OUTBOX, e))?);
    }
    for (k, v) in kv.scan_prefix(FAILED, b"")? {
        let mut rec: FailedRecord = serde_json::from_slice(&v).map_err(|e| corrupt(FAILED, e))?;
        rec.event.queued_at_ms = now;
        rec.failed_at_ms = now;
        b.put(FAILED, k, serde_json::to_vec(&rec).map_err(|e| corrupt(FAILED, e))?);
    }
    kv.write(&[b])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bridge_api::event::MessageDraft;

    /// An event of `kind` for `#x` on `irc.libera`.
    pub(crate) fn event(kind: OutboundKind) -> OutboundEvent {
        let account = AccountId::parse("irc.libera").expect("account");
        let leg = LegId::new(account.clone(), "#x").expect("leg");
        let message_id = MessageId::from_bytes(&[1; 32]).expect("id");
        OutboundEvent {
            portal: PortalId::new("p").expect("portal"),
            txn_id: TxnId::for_delivery(&message_id, &leg),
            leg,
            message_id,
            sender: Sender {
                uri: "mimi://b/u/irc.libera~alice".into(),
                display_name: "alice".into(),
                network: "irc".into(),
                legacy: Some(LegacyUser { account, native_id: "alice".into(), display_name: Some("Alice".into()) }),
            },
            kind,
            queued_at_ms: 0,
        }
    }

    #[test]
    fn every_kind_round_trips_through_its_record() {
        let parent = ParentRef {
            native_id: Some(NativeId("n1".into())),
            message_id: MessageId::from_bytes(&[1; 32]).expect("id"),
            sender_name: "bob".into(),
            excerpt: "hi".into(),
        };
        let mut draft = MessageDraft::markdown("**x**");
        draft.style = MessageStyle::Emote;
        draft.attachments.push(Attachment {
            url: "https://x/y".into(),
            media_type: "image/png".into(),
            size: Some(3),
            filename: Some("y.png".into()),
        });
        let kinds = [
            OutboundKind::Message { draft: draft.clone(), reply_to: Some(parent.clone()) },
            OutboundKind::Edit { target: parent.clone(), draft },
            OutboundKind::Delete { target: parent.clone() },
            OutboundKind::ReactionAdd { target: parent.clone(), key: "+1".into(), set_after: vec!["+1".into()] },
            OutboundKind::ReactionRemove {
                target: parent,
                key: "+1".into(),
                reaction: MessageId::from_bytes(&[1; 32]).expect("id"),
                reaction_native_id: None,
                set_after: vec![],
            },
            OutboundKind::Membership { change: Membership::Kick },
            OutboundKind::Typing { active: true },
        ];
        for kind in kinds {
            let ev = OutboundEvent { queued_at_ms: 42, ..event(kind) };
            let rec = DeliveryRecord::new(&ev, ev.queued_at_ms);
            let json = serde_json::to_vec(&rec).expect("encode");
            let back: DeliveryRecord = serde_json::from_slice(&json).expect("decode");
            assert_eq!(back.to_event(), ev);
            assert_eq!(back.queued_at_ms, 42);
        }
    }
}
