//! Core events → Matrix client-server API calls (sans-IO): what to send, as which ghost, with which transaction id.
//!
//! | core | Matrix |
//! |---|---|
//! | `Message` (normal / notice / emote) | `m.room.message` `m.text` / `m.notice` / `m.emote` |
//! | … with a parent delivered here | `m.relates_to.m.in_reply_to` (no reply fallback: removed in Matrix v1.13) |
//! | … with a parent not delivered here | the parent quoted above the text |
//! | … with attachments | the text (if any), then one `m.image` / `m.video` / `m.audio` / `m.file` per file, uploaded |
//! | `Edit` | `m.replace` with `m.new_content` (a `* ` message when the original is not here) |
//! | `Delete` | redaction |
//! | `ReactionAdd` / `ReactionRemove` | `m.reaction` (`m.annotation`) / redaction of it |
//! | `Membership` | the ghost joins / leaves |
//! | `Typing` | typing notification |
//!
//! Markdown becomes `formatted_body` with [`crate::format::markdown_to_html`] (raw HTML escaped); `mimi://` user
//! links become pills and `m.mentions`. Transaction ids are the core's [`bridge_api::TxnId`], derived from the MIMI
//! message id and the leg, so a retried send is the same Matrix transaction.

use crate::translate::Translator;
use crate::{format, media};
use bridge_api::event::{Attachment, Membership, MessageDraft, MessageStyle, ParentRef, TextFormat};
use bridge_api::{OutboundEvent, OutboundKind};
use mimi_content::markdown;
use serde_json::{Value, json};

/// One client-server API call, made as the ghost `as_user` (`?user_id=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatrixAction {
    /// `PUT /rooms/{room}/send/{event_type}/{txn_id}`.
    Send {
        /// The room id.
        room: String,
        /// The ghost sending it.
        as_user: String,
        /// `m.room.message` or `m.reaction`.
        event_type: &'static str,
        /// The transaction id (stable across retries).
        txn_id: String,
        /// The event content.
        content: Value,
    },
    /// Upload the file of `attachment` (from the media store) as the ghost, complete `content` with it
    /// ([`crate::media::complete`]) and send it as an `m.room.message`.
    SendMedia {
        /// The room id.
        room: String,
        /// The ghost sending it.
        as_user: String,
        /// The transaction id (stable across retries).
        txn_id: String,
        /// The file, in the daemon's media store.
        attachment: Attachment,
        /// The event content, without `url`.
        content: Value,
    },
    /// `PUT /rooms/{room}/redact/{event_id}/{txn_id}`.
    Redact {
        /// The room id.
        room: String,
        /// The ghost redacting.
        as_user: String,
        /// The event removed.
        event_id: String,
        /// The transaction id.
        txn_id: String,
    },
    /// Make sure the ghost exists, has `display_name`, and is in the room.
    Join {
        /// The room id.
        room: String,
        /// The ghost.
        as_user: String,
        /// The name to show.
        display_name: String,
    },
    /// The ghost leaves the room.
    Leave {
        /// The room id.
        room: String,
        /// The ghost.
        as_user: String,
    },
    /// `PUT /rooms/{room}/typing/{as_user}`.
    Typing {
        /// The room id.
        room: String,
        /// The ghost.
        as_user: String,
        /// Typing or not.
        active: bool,
    },
}

/// Why a core event cannot be performed on Matrix (never will be).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The sender can have no ghost.
    #[error(transparent)]
    Ghost(#[from] crate::ghost::GhostError),
    /// An edit cannot change the files of a Matrix message.
    #[error("an edit cannot change attachments on Matrix")]
    EditedAttachments,
}

impl Translator {
    /// The calls that perform `ev`, in order. Empty when there is nothing to do on Matrix (a reaction to, or the
    /// deletion of, a message that was never delivered here).
    ///
    /// In bot mode ([`Translator::relay`]) the bot sends everything: texts and edits carry the sender's name
    /// ([`relay_line`]), a reaction is a notice replying to its message (removed by redacting it), and joins,
    /// leaves and typing are not shown.
    pub fn outbound(&self, ev: &OutboundEvent) -> Result<Vec<MatrixAction>, OutboundError> {
        let room = ev.leg.room.clone();
        let as_user = match &self.relay {
            Some(_) => self.bot_user_id.clone(),
            None => self.ghosts.user_id(&ev.sender.uri)?,
        };
        let relayed = |draft: &MessageDraft| match &self.relay {
            Some(format) => relayed(format, &ev.sender.display_name, draft),
            None => draft.clone(),
        };
        let txn_id = ev.txn_id.0.clone();
        let send = |event_type, content| MatrixAction::Send {
            room: room.clone(),
            as_user: as_user.clone(),
            event_type,
            txn_id: txn_id.clone(),
            content,
        };
        let redact = |event_id: &str| MatrixAction::Redact {
            room: room.clone(),
            as_user: as_user.clone(),
            event_id: event_id.to_owned(),
            txn_id: txn_id.clone(),
        };
        Ok(match &ev.kind {
            OutboundKind::Message { draft, reply_to } => {
                let draft = &relayed(draft);
                let (draft, parent) = match reply_to {
                    Some(ParentRef { native_id: Some(id), .. }) => (draft.clone(), Some(id.0.as_str())),
                    Some(p) => (quoted(p, draft), None),
                    None => (draft.clone(), None),
                };
                // The text, then one event per file (its transaction id derived from the message's).
                let mut actions = Vec::new();
                if !draft.body.is_empty() || draft.attachments.is_empty() {
                    actions.push(send("m.room.message", self.content(&draft)));
                }
                for (i, a) in draft.attachments.iter().enumerate() {
                    actions.push(MatrixAction::SendMedia {
                        room: room.clone(),
                        as_user: as_user.clone(),
                        txn_id: format!("{txn_id}-a{i}"),
                        attachment: a.clone(),
                        content: media::content(a),
                    });
                }
                if let (
                    Some(parent),
                    Some(MatrixAction::Send { content, .. } | MatrixAction::SendMedia { content, .. }),
                ) = (parent, actions.first_mut())
                {
                    content["m.relates_to"] = json!({"m.in_reply_to": {"event_id": parent}});
                }
                actions
            }
            OutboundKind::Edit { target, draft } => {
                if !draft.attachments.is_empty() {
                    return Err(OutboundError::EditedAttachments);
                }
                let new_content = self.content(&relayed(draft));
                let mut content = new_content.clone();
                prefix_body(&mut content, "* ");
                if let Some(id) = &target.native_id {
                    content["m.new_content"] = new_content;
                    content["m.relates_to"] = json!({"rel_type": "m.replace", "event_id": id.0});
                    // Mentions of the edit itself notify no one again.
                    content["m.mentions"] = json!({});
                }
                vec![send("m.room.message", content)]
            }
            OutboundKind::Delete { target } => target.native_id.iter().map(|id| redact(&id.0)).collect(),
            OutboundKind::ReactionAdd { target, key, .. } => match &target.native_id {
                Some(id) if self.relay.is_some() => {
                    let text = format!("{} reacted with {key}", ev.sender.display_name);
                    let mut content = json!({"msgtype": "m.notice", "body": text, "m.mentions": {}});
                    content["m.relates_to"] = json!({"m.in_reply_to": {"event_id": id.0}});
                    vec![send("m.room.message", content)]
                }
                Some(id) => vec![send(
                    "m.reaction",
                    json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": id.0, "key": key}}),
                )],
                None => Vec::new(),
            },
            OutboundKind::ReactionRemove { reaction_native_id, .. } => {
                reaction_native_id.iter().map(|id| redact(&id.0)).collect()
            }
            OutboundKind::Membership { .. } | OutboundKind::Typing { .. } if self.relay.is_some() => Vec::new(),
            OutboundKind::Membership { change: Membership::Join } => {
                vec![MatrixAction::Join { room, as_user, display_name: ev.sender.display_name.clone() }]
            }
            OutboundKind::Membership { .. } => vec![MatrixAction::Leave { room, as_user }],
            OutboundKind::Typing { active } => vec![MatrixAction::Typing { room, as_user, active: *active }],
        })
    }

    /// The `m.room.message` content of a draft's text.
    fn content(&self, draft: &MessageDraft) -> Value {
        let msgtype = match draft.style {
            MessageStyle::Normal => "m.text",
            MessageStyle::Emote => "m.emote",
            MessageStyle::Notice => "m.notice",
        };
        let mut content = json!({"msgtype": msgtype, "m.mentions": {}});
        match draft.format {
            TextFormat::Plain => content["body"] = json!(draft.body),
            TextFormat::Markdown => {
                let md = markdown::sanitize_gfm_mimi(&draft.body);
                content["body"] = json!(markdown::to_plain_text(&md));
                let mut users: Vec<String> =
                    markdown::mentions(&md).iter().filter_map(|(_, uri)| self.matrix_user(uri)).collect();
                users.sort();
                users.dedup();
                if !users.is_empty() {
                    content["m.mentions"] = json!({"user_ids": users});
                }
                if !format::is_plain(&md) {
                    content["format"] = json!("org.matrix.custom.html");
                    content["formatted_body"] = json!(format::markdown_to_html(&md, &|uri| self.matrix_user(uri)));
                }
            }
        }
        content
    }
}

/// One relayed line: `format` with `{name}` and `{text}` replaced; an emote is `* name text` whatever the format.
pub fn relay_line(format: &str, name: &str, text: &str, emote: bool) -> String {
    if emote {
        return format!("* {name} {text}");
    }
    // One pass: a name or a text that holds `{text}` or `{name}` stays as it is.
    let mut out = String::with_capacity(format.len() + name.len() + text.len());
    let mut rest = format;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{name}") {
            out.push_str(name);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{text}") {
            out.push_str(text);
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// `draft` as the bot relays it for `name`: the line of [`relay_line`] (the name escaped in markdown), an emote as
/// an ordinary message (a Matrix emote would show the bot's name); its files follow as the bot's.
fn relayed(format: &str, name: &str, draft: &MessageDraft) -> MessageDraft {
    let emote = draft.style == MessageStyle::Emote;
    let style = if emote { MessageStyle::Normal } else { draft.style };
    let body = match draft.format {
        TextFormat::Plain => relay_line(format, name, &draft.body, emote),
        TextFormat::Markdown => relay_line(format, &markdown::plain_to_markdown(name), &draft.body, emote),
    };
    // Files alone still get the name: it is what says whose the file events after it are.
    let body = if draft.body.is_empty() && !emote { body.trim_end().to_owned() } else { body };
    MessageDraft { body, style, ..draft.clone() }
}

/// A reply whose parent is not in this room: the parent quoted above the text.
fn quoted(parent: &ParentRef, draft: &MessageDraft) -> MessageDraft {
    let body = match draft.format {
        TextFormat::Plain => markdown::plain_to_markdown(&draft.body),
        TextFormat::Markdown => draft.body.clone(),
    };
    let quote = format!(
        "> **{}**: {}\n\n{body}",
        markdown::plain_to_markdown(&parent.sender_name),
        markdown::plain_to_markdown(&parent.excerpt)
    );
    MessageDraft { body: quote, format: TextFormat::Markdown, ..draft.clone() }
}

/// Prefixes `body` and `formatted_body` (an edit's fallback for clients without edits).
fn prefix_body(content: &mut Value, prefix: &str) {
    for key in ["body", "formatted_body"] {
        if let Some(text) = content[key].as_str() {
            content[key] = json!(format!("{prefix}{text}"));
        }
    }
}

#[cfg(test)]
#[path = "outbound_tests.rs"]
mod tests;
