//! Inbound translation, sans IO: an IRC PRIVMSG/NOTICE in a channel → a core [`InboundEvent`].
//!
//! IRC has no native replies or edits; two conventions stand in for them (both configurable, both documented):
//! * `nick: text` (or `nick, text`) where `nick` spoke in the channel within `reply_window` becomes a **reply** to
//!   that speaker's latest message (bridged speakers included, by their relayed name); the `nick: ` is removed.
//! * `s/old/new/` from a user who spoke within `edit_window` becomes an **edit** of their previous message, with
//!   the first occurrence of `old` replaced by `new`.
//!
//! CTCP ACTION becomes an emote; other CTCP requests are ignored; NOTICE becomes a notice; IRC formatting codes
//! become markdown ([`crate::format`]).

use crate::format::irc_to_markdown;
use crate::isupport::CaseMapping;
use crate::roster::MemberChange;
use bridge_api::event::{InboundEvent, InboundKind, MessageDraft, MessageStyle, TextFormat};
use bridge_api::{AccountId, LegId, LegacyUser, NativeId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The reply/edit conventions' settings.
#[derive(Debug, Clone)]
pub struct Conventions {
    /// `nick: text` → reply, if `nick` spoke within this window. Zero disables.
    pub reply_window: Duration,
    /// `s/old/new/` → edit, if the user spoke within this window. Zero disables.
    pub edit_window: Duration,
}

impl Default for Conventions {
    fn default() -> Self {
        Self { reply_window: Duration::from_secs(600), edit_window: Duration::from_secs(300) }
    }
}

#[derive(Debug, Clone)]
struct Said {
    native: NativeId,
    text: String,
    at: Instant,
}

/// Who said what last, per channel: what the conventions resolve against.
#[derive(Debug, Default)]
pub struct History {
    last: HashMap<(String, String), Said>,
}

impl History {
    /// Records that `name` (an IRC nick, or a relayed name) said `text` as `native` in `channel`.
    pub fn record(&mut self, cm: CaseMapping, channel: &str, name: &str, native: NativeId, text: &str, at: Instant) {
        if self.last.len() > 10_000 {
            self.last.retain(|_, s| at.duration_since(s.at) < Duration::from_secs(3600));
        }
        self.last.insert((cm.fold(channel), cm.fold(name)), Said { native, text: text.to_owned(), at });
    }

    fn get(&self, cm: CaseMapping, channel: &str, name: &str, window: Duration, now: Instant) -> Option<&Said> {
        self.last
            .get(&(cm.fold(channel), cm.fold(name)))
            .filter(|s| !window.is_zero() && now.saturating_duration_since(s.at) <= window)
    }
}

/// Parses `s/old/new/` (trailing slash optional; `\/` escapes a slash).
pub fn parse_sed(text: &str) -> Option<(String, String)> {
    let body = text.strip_prefix("s/")?;
    let mut parts = vec![String::new()];
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('/') => parts.last_mut()?.push('/'),
                Some(o) => {
                    parts.last_mut()?.push('\\');
                    parts.last_mut()?.push(o);
                }
                None => parts.last_mut()?.push('\\'),
            },
            '/' => parts.push(String::new()),
            c => parts.last_mut()?.push(c),
        }
    }
    match parts.as_slice() {
        [old, new] | [old, new, _] if !old.is_empty() => Some((old.clone(), new.clone())),
        _ => None,
    }
}

/// Everything needed to translate one channel message.
pub struct Line<'a> {
    /// The account.
    pub account: &'a AccountId,
    /// The channel (as the server spelled it).
    pub channel: &'a str,
    /// The speaker's nick.
    pub nick: &'a str,
    /// The id to give the event.
    pub native_id: NativeId,
    /// The text.
    pub text: &'a str,
    /// NOTICE rather than PRIVMSG.
    pub notice: bool,
    /// Our own line echoed back (echo-message).
    pub from_bridge: bool,
}

/// Translates a channel line; `None` for lines that are not for the bridge (CTCP requests, empty lines).
pub fn translate(
    line: Line<'_>,
    history: &mut History,
    conv: &Conventions,
    cm: CaseMapping,
    now: Instant,
) -> Option<InboundEvent> {
    let mut text = line.text;
    let mut style = if line.notice { MessageStyle::Notice } else { MessageStyle::Normal };
    if let Some(ctcp) = text.strip_prefix('\x01') {
        let ctcp = ctcp.strip_suffix('\x01').unwrap_or(ctcp);
        text = ctcp.strip_prefix("ACTION ")?;
        style = MessageStyle::Emote;
    }
    if text.trim().is_empty() {
        return None;
    }
    let leg = LegId::new(line.account.clone(), line.channel).ok()?;
    let sender = LegacyUser {
        account: line.account.clone(),
        native_id: line.nick.to_owned(),
        display_name: Some(line.nick.to_owned()),
    };
    let draft = |t: &str| {
        let (body, md) = irc_to_markdown(t);
        MessageDraft {
            body,
            format: if md { TextFormat::Markdown } else { TextFormat::Plain },
            style,
            attachments: Vec::new(),
        }
    };
    let mut kind = None;
    if style == MessageStyle::Normal
        && let Some((old, new)) = parse_sed(text)
        && let Some(prev) = history.get(cm, line.channel, line.nick, conv.edit_window, now)
        && prev.text.contains(&old)
    {
        let edited = prev.text.replacen(&old, &new, 1);
        let target = prev.native.clone();
        history.record(cm, line.channel, line.nick, target.clone(), &edited, now);
        kind = Some(InboundKind::Edit { target, draft: draft(&edited) });
    }
    if kind.is_none()
        && let Some((who, rest)) = text.split_once([':', ','])
        && rest.starts_with(' ')
        && !who.contains(' ')
        && !rest.trim().is_empty()
        && let Some(parent) = history.get(cm, line.channel, who, conv.reply_window, now)
    {
        let parent = parent.native.clone();
        let rest = rest.trim_start();
        history.record(cm, line.channel, line.nick, line.native_id.clone(), rest, now);
        kind = Some(InboundKind::Message { draft: draft(rest), reply_to: Some(parent) });
    }
    let kind = kind.unwrap_or_else(|| {
        history.record(cm, line.channel, line.nick, line.native_id.clone(), text, now);
        InboundKind::Message { draft: draft(text), reply_to: None }
    });
    Some(InboundEvent { leg, sender, native_id: Some(line.native_id), from_bridge: line.from_bridge, kind })
}

/// A membership change in a channel ([`crate::roster`]) as an inbound event; `None` for a channel name that is
/// not a room.
pub fn membership(account: &AccountId, change: MemberChange) -> Option<InboundEvent> {
    let leg = LegId::new(account.clone(), change.channel).ok()?;
    let sender =
        LegacyUser { account: account.clone(), native_id: change.nick.clone(), display_name: Some(change.nick) };
    Some(InboundEvent {
        leg,
        sender,
        native_id: None,
        from_bridge: false,
        kind: InboundKind::Membership { change: change.change },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct() -> AccountId {
        AccountId::parse("irc.t").expect("id")
    }

    fn line<'a>(a: &'a AccountId, nick: &'a str, id: &str, text: &'a str) -> Line<'a> {
        Line {
            account: a,
            channel: "#c",
            nick,
            native_id: NativeId(id.into()),
            text,
            notice: false,
            from_bridge: false,
        }
    }

    #[test]
    fn sed_parsing() {
        assert_eq!(parse_sed("s/a/b/"), Some(("a".into(), "b".into())));
        assert_eq!(parse_sed("s/a b/c"), Some(("a b".into(), "c".into())));
        assert_eq!(parse_sed("s/a\\/b/c/g"), Some(("a/b".into(), "c".into())));
        assert_eq!(parse_sed("s//x/"), None);
        assert_eq!(parse_sed("so/what"), None);
        assert_eq!(parse_sed("s/a/b/c/d"), None);
    }

    #[test]
    fn replies_and_edits_by_convention() {
        let a = acct();
        let (mut h, c, cm) = (History::default(), Conventions::default(), CaseMapping::Rfc1459);
        let t0 = Instant::now();
        let e = translate(line(&a, "bob", "1", "the quick brown fox"), &mut h, &c, cm, t0).expect("event");
        assert!(matches!(e.kind, InboundKind::Message { reply_to: None, .. }));
        // A bridged name recorded by the outbound side.
        h.record(cm, "#c", "alice", NativeId("out-1".into()), "hello", t0);
        let e = translate(line(&a, "carol", "2", "Alice: hi!"), &mut h, &c, cm, t0).expect("event");
        match e.kind {
            InboundKind::Message { reply_to: Some(p), draft } => {
                assert_eq!(p, NativeId("out-1".into()));
                assert_eq!(draft.body, "hi!");
            }
            other => panic!("{other:?}"),
        }
        let e = translate(line(&a, "bob", "3", "s/brown/red/"), &mut h, &c, cm, t0).expect("event");
        match e.kind {
            InboundKind::Edit { target, draft } => {
                assert_eq!(target, NativeId("1".into()));
                assert_eq!(draft.body, "the quick red fox");
            }
            other => panic!("{other:?}"),
        }
        // A second edit still targets the original message, on the edited text.
        let e = translate(line(&a, "bob", "4", "s/red/blue/"), &mut h, &c, cm, t0).expect("event");
        assert!(
            matches!(e.kind, InboundKind::Edit { ref target, ref draft } if target.0 == "1" && draft.body == "the quick blue fox")
        );
        // Outside the window: plain messages.
        let later = t0 + Duration::from_secs(601);
        let e = translate(line(&a, "dave", "5", "alice: late"), &mut h, &c, cm, later).expect("event");
        assert!(matches!(e.kind, InboundKind::Message { reply_to: None, .. }));
        let e = translate(line(&a, "bob", "6", "s/blue/green/"), &mut h, &c, cm, later).expect("event");
        assert!(matches!(e.kind, InboundKind::Message { .. }));
        // Unknown nick: not a reply.
        let e = translate(line(&a, "x", "7", "nobody: hi"), &mut h, &c, cm, t0).expect("event");
        assert!(matches!(e.kind, InboundKind::Message { reply_to: None, ref draft } if draft.body == "nobody: hi"));
    }

    #[test]
    fn ctcp_and_notice() {
        let a = acct();
        let (mut h, c, cm) = (History::default(), Conventions::default(), CaseMapping::Rfc1459);
        let now = Instant::now();
        let e = translate(line(&a, "bob", "1", "\x01ACTION waves\x01"), &mut h, &c, cm, now).expect("event");
        assert!(
            matches!(e.kind, InboundKind::Message { ref draft, .. } if draft.style == MessageStyle::Emote && draft.body == "waves")
        );
        assert!(translate(line(&a, "bob", "2", "\x01VERSION\x01"), &mut h, &c, cm, now).is_none());
        let mut l = line(&a, "bob", "3", "\x02hey\x02");
        l.notice = true;
        let e = translate(l, &mut h, &c, cm, now).expect("event");
        assert!(
            matches!(e.kind, InboundKind::Message { ref draft, .. } if draft.style == MessageStyle::Notice && draft.body == "**hey**" && draft.format == TextFormat::Markdown)
        );
    }
}
