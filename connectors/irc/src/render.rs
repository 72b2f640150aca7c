//! Outbound rendering, sans IO: a core [`OutboundEvent`] → the IRC lines that show it.
//!
//! The rules (documented for users in the README and in the declared capabilities):
//! * **Messages** are relayed as `<name> text` (`* name text` for emotes, NOTICE for notices), where `name` gets a
//!   zero-width space after its first character so that relaying does not highlight an IRC user of that name.
//! * **Long and multi-line messages** are split on line breaks, then wrapped on word boundaries (UTF-8 safe) to fit
//!   the 512-byte line limit computed from the bridge's real prefix. Beyond `max_lines` lines, the first
//!   `max_lines - 1` are sent followed by `… (N more lines)`.
//! * **Replies** start with `parent_nick: ` (degraded form).
//! * **Edits**, per config: `diff` sends `s/old/new/` when the change is small and unambiguous and otherwise
//!   resends the text marked `(edit)`; `resend` always resends; `suppress` sends nothing.
//! * **Reactions**, only with `reactions = true`: `* name reacted 👍 to nick: “excerpt”`. Otherwise refused.
//! * **Deletes** are refused: IRC cannot delete.
//! * **Per-user connections** (`puppet`): the sender's own nick says who speaks, so there is no `<name>` prefix;
//!   emotes and reactions are CTCP ACTIONs (`/me`), everything else as above.
//! * No CR, LF or NUL from the event ever reaches a line: text is split on them and other control characters
//!   (except IRC formatting codes produced by [`crate::format`]) are removed.

use crate::format::markdown_to_irc;
use crate::message::Message;
use bridge_api::connector::SendError;
use bridge_api::event::{MessageDraft, MessageStyle, OutboundEvent, OutboundKind, TextFormat};
use serde::Deserialize;

/// How edits are shown on IRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EditMode {
    /// `s/old/new/` for small edits, otherwise resend marked `(edit)`.
    #[default]
    Diff,
    /// Always resend marked `(edit)`.
    Resend,
    /// Do not show edits.
    Suppress,
}

/// Rendering settings (from the account's config).
#[derive(Debug, Clone)]
pub struct RenderConfig {
    /// Most lines one bridged message may take.
    pub max_lines: usize,
    /// Edit rendering.
    pub edits: EditMode,
    /// Bridge reactions as action lines.
    pub reactions: bool,
    /// Insert a zero-width space into relayed names.
    pub anti_ping: bool,
    /// Sent through the sender's own connection: no name prefix, emotes as CTCP ACTION.
    pub puppet: bool,
}

impl Default for RenderConfig {
    fn default() -> Self {
        Self { max_lines: 5, edits: EditMode::Diff, reactions: false, anti_ping: true, puppet: false }
    }
}

/// The bytes available for text in one `PRIVMSG target :text` line sent by `own_source`.
pub fn text_budget(own_source: &str, target: &str) -> usize {
    // ":" source " PRIVMSG " target " :" text "\r\n" ≤ 512
    512usize.saturating_sub(1 + own_source.len() + 9 + target.len() + 2 + 2).max(64)
}

fn shown_name(name: &str, anti_ping: bool) -> String {
    let clean: String = name.chars().filter(|c| !c.is_control() && !c.is_whitespace()).collect();
    let clean = if clean.is_empty() { "?".to_owned() } else { clean };
    if !anti_ping {
        return clean;
    }
    let mut it = clean.chars();
    let first = it.next().map(String::from).unwrap_or_default();
    format!("{first}\u{200B}{}", it.as_str())
}

/// Keeps IRC formatting codes, drops every other control character (CR, LF and NUL included).
fn clean_line(s: &str) -> String {
    s.chars().filter(|c| !c.is_control() || matches!(c, '\x02' | '\x1D' | '\x11' | '\x03' | '\x0F' | '\x1F')).collect()
}

/// Splits `s` into pieces of at most `max` bytes, on whitespace where possible, never inside a character.
pub fn wrap(s: &str, max: usize) -> Vec<String> {
    let max = max.max(8);
    let mut out = Vec::new();
    let mut rest = s.trim_end();
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let at = rest[..cut].rfind(' ').filter(|&i| i > max / 2).unwrap_or(cut);
        out.push(rest[..at].trim_end().to_owned());
        rest = rest[at..].trim_start();
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

fn body_text(d: &MessageDraft) -> String {
    let mut text = match d.format {
        TextFormat::Plain => d.body.clone(),
        TextFormat::Markdown => markdown_to_irc(&d.body),
    };
    for a in &d.attachments {
        let label = a.filename.clone().unwrap_or_else(|| a.media_type.clone());
        text.push_str(&format!("\n{label}: {}", a.url));
    }
    text
}

/// Renders `ev` for `target` with `budget` bytes of text per line.
pub fn render(ev: &OutboundEvent, cfg: &RenderConfig, budget: usize) -> Result<Vec<Message>, SendError> {
    let target = ev.leg.room.as_str();
    let name = shown_name(&ev.sender.display_name, cfg.anti_ping);
    let (style, text, lead) = match &ev.kind {
        OutboundKind::Message { draft, reply_to } => {
            let lead = reply_to.as_ref().map(|p| format!("{}: ", clean_line(&p.sender_name))).unwrap_or_default();
            (draft.style, body_text(draft), lead)
        }
        OutboundKind::Edit { target: parent, draft } => match cfg.edits {
            EditMode::Suppress => return Ok(Vec::new()),
            mode => {
                let new = body_text(draft);
                match (mode, sed(&parent.excerpt, &new)) {
                    (EditMode::Diff, Some(s)) => (MessageStyle::Normal, s, String::new()),
                    _ => (draft.style, new, "(edit) ".to_owned()),
                }
            }
        },
        OutboundKind::ReactionAdd { target: parent, key, .. } => {
            if !cfg.reactions {
                return Err(SendError::Rejected("reactions are not bridged to IRC (set reactions = true)".into()));
            }
            let excerpt: String = parent.excerpt.chars().take(40).collect();
            let text = format!("reacted {key} to {}: “{excerpt}”", parent.sender_name);
            (MessageStyle::Emote, text, String::new())
        }
        OutboundKind::ReactionRemove { .. } => {
            if !cfg.reactions {
                return Err(SendError::Rejected("reactions are not bridged to IRC (set reactions = true)".into()));
            }
            return Ok(Vec::new());
        }
        OutboundKind::Delete { .. } => return Err(SendError::Rejected("IRC cannot delete messages".into())),
        OutboundKind::Typing { .. } | OutboundKind::Membership { .. } => {
            return Err(SendError::Rejected(format!("relay mode does not show {}", ev.kind.name())));
        }
    };
    let (prefix, suffix) = match (style, cfg.puppet) {
        (MessageStyle::Emote, false) => (format!("* {name} "), ""),
        (_, false) => (format!("<{name}> "), ""),
        (MessageStyle::Emote, true) => ("\x01ACTION ".to_owned(), "\x01"),
        (_, true) => (String::new(), ""),
    };
    let command = if style == MessageStyle::Notice { "NOTICE" } else { "PRIVMSG" };
    let room = budget.saturating_sub(prefix.len() + suffix.len()).max(16);
    let mut lines: Vec<String> = Vec::new();
    for (i, raw) in text.split(['\n', '\r']).map(clean_line).filter(|l| !l.trim().is_empty()).enumerate() {
        let l = if i == 0 { format!("{lead}{raw}") } else { raw };
        lines.extend(wrap(&l, room));
    }
    if lines.is_empty() {
        return Ok(Vec::new());
    }
    let max = cfg.max_lines.max(1);
    if lines.len() > max {
        let more = lines.len() - (max - 1);
        lines.truncate(max - 1);
        lines.push(format!("… ({more} more lines)"));
    }
    Ok(lines.into_iter().map(|l| Message::new(command, &[target, &format!("{prefix}{l}{suffix}")])).collect())
}

/// `s/old/new/` for a small, unambiguous change of `old` into `new`; `None` when a resend is clearer.
pub fn sed(old: &str, new: &str) -> Option<String> {
    if old.is_empty() || old.ends_with('…') || old == new {
        return None;
    }
    let pre = old.chars().zip(new.chars()).take_while(|(a, b)| a == b).map(|(a, _)| a.len_utf8()).sum::<usize>();
    let (o, n) = (&old[pre..], &new[pre..]);
    let suf =
        o.chars().rev().zip(n.chars().rev()).take_while(|(a, b)| a == b).map(|(a, _)| a.len_utf8()).sum::<usize>();
    let (mut o_mid, mut n_mid) = (&o[..o.len() - suf], &n[..n.len() - suf]);
    // Extend to whole words on the left so the pattern is readable.
    let start = old[..pre].rfind(' ').map_or(0, |i| i + 1);
    let widen = &old[start..pre];
    // …and on the right, through the end of the word.
    let after = &old[pre + o_mid.len()..];
    let tail = &after[..after.find(' ').unwrap_or(after.len())];
    let (ow, nw) = (format!("{widen}{o_mid}{tail}"), format!("{widen}{n_mid}{tail}"));
    (o_mid, n_mid) = (&ow, &nw);
    let small = o_mid.len() + n_mid.len() <= 40 && o_mid.len() * 2 <= old.len();
    let unambiguous = !o_mid.is_empty() && old.matches(o_mid).count() == 1;
    if small && unambiguous && !o_mid.contains('/') && !n_mid.contains('/') {
        Some(format!("s/{o_mid}/{n_mid}/"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge_api::event::{Attachment, ParentRef, Sender};
    use bridge_api::{AccountId, LegId, MessageId, PortalId, TxnId};

    fn mid() -> MessageId {
        let mut b = [3u8; 32];
        b[0] = 1;
        MessageId::from_bytes(&b).expect("id")
    }

    fn ev(kind: OutboundKind) -> OutboundEvent {
        OutboundEvent {
            portal: PortalId::new("p").expect("p"),
            leg: LegId::new(AccountId::parse("irc.t").expect("a"), "#c").expect("leg"),
            message_id: mid(),
            txn_id: TxnId("t".into()),
            sender: Sender { uri: "u".into(), display_name: "alice".into(), network: "matrix".into(), legacy: None },
            kind,
            queued_at_ms: 0,
        }
    }

    fn msg(d: MessageDraft) -> OutboundEvent {
        ev(OutboundKind::Message { draft: d, reply_to: None })
    }

    fn texts(v: &[Message]) -> Vec<String> {
        v.iter().map(|m| m.params[1].clone()).collect()
    }

    const ZW: &str = "a\u{200B}lice";

    #[test]
    fn plain_emote_notice() {
        let cfg = RenderConfig::default();
        assert_eq!(texts(&render(&msg(MessageDraft::plain("hi")), &cfg, 400).expect("ok")), [format!("<{ZW}> hi")]);
        let mut d = MessageDraft::plain("waves");
        d.style = MessageStyle::Emote;
        assert_eq!(texts(&render(&msg(d), &cfg, 400).expect("ok")), [format!("* {ZW} waves")]);
        let mut d = MessageDraft::plain("fyi");
        d.style = MessageStyle::Notice;
        assert_eq!(render(&msg(d), &cfg, 400).expect("ok")[0].command, "NOTICE");
    }

    #[test]
    fn hostile_text_never_leaves_its_line() {
        let d = MessageDraft::plain("x\r\nQUIT :bye\r\nPRIVMSG #other :spam\0!");
        let lines = render(&msg(d), &RenderConfig::default(), 400).expect("ok");
        assert_eq!(lines.len(), 3);
        for l in &lines {
            let wire = l.to_line();
            assert!(!wire.contains(['\r', '\n', '\0']), "{wire:?}");
            assert!(wire.starts_with("PRIVMSG #c :<"), "{wire:?}");
        }
    }

    #[test]
    fn long_and_multiline_messages_are_split_and_capped() {
        let long = "word ".repeat(200);
        let lines =
            render(&msg(MessageDraft::plain(long.trim())), &RenderConfig { max_lines: 50, ..Default::default() }, 100)
                .expect("ok");
        assert!(lines.len() > 5);
        for l in &lines {
            assert!(l.params[1].len() <= 100, "{}", l.params[1].len());
        }
        let joined: Vec<String> =
            lines.iter().map(|l| l.params[1].trim_start_matches(&format!("<{ZW}> ")).to_owned()).collect();
        assert_eq!(joined.join(" "), long.trim());
        let many = (1..=10).map(|i| format!("line {i}")).collect::<Vec<_>>().join("\n");
        let t = texts(&render(&msg(MessageDraft::plain(many)), &RenderConfig::default(), 400).expect("ok"));
        assert_eq!(t.len(), 5);
        assert_eq!(t[4], format!("<{ZW}> … (6 more lines)"));
        let emoji = "é🎉".repeat(100);
        for piece in wrap(&emoji, 50) {
            assert!(piece.len() <= 50);
        }
    }

    #[test]
    fn replies_edits_reactions_deletes() {
        let cfg = RenderConfig::default();
        let parent = ParentRef {
            native_id: None,
            message_id: mid(),
            sender_name: "bob".into(),
            excerpt: "the quick brown fox".into(),
        };
        let r = ev(OutboundKind::Message { draft: MessageDraft::plain("yes"), reply_to: Some(parent.clone()) });
        assert_eq!(texts(&render(&r, &cfg, 400).expect("ok")), [format!("<{ZW}> bob: yes")]);
        let e = ev(OutboundKind::Edit { target: parent.clone(), draft: MessageDraft::plain("the quick red fox") });
        assert_eq!(texts(&render(&e, &cfg, 400).expect("ok")), [format!("<{ZW}> s/brown/red/")]);
        let e =
            ev(OutboundKind::Edit { target: parent.clone(), draft: MessageDraft::plain("something else entirely") });
        assert_eq!(texts(&render(&e, &cfg, 400).expect("ok")), [format!("<{ZW}> (edit) something else entirely")]);
        let sup = RenderConfig { edits: EditMode::Suppress, ..Default::default() };
        assert!(render(&e, &sup, 400).expect("ok").is_empty());
        let react = ev(OutboundKind::ReactionAdd { target: parent.clone(), key: "👍".into(), set_after: vec![] });
        assert!(matches!(render(&react, &cfg, 400), Err(SendError::Rejected(_))));
        let on = RenderConfig { reactions: true, ..Default::default() };
        assert_eq!(
            texts(&render(&react, &on, 400).expect("ok")),
            [format!("* {ZW} reacted 👍 to bob: “the quick brown fox”")]
        );
        assert!(matches!(render(&ev(OutboundKind::Delete { target: parent }), &cfg, 400), Err(SendError::Rejected(_))));
    }

    #[test]
    fn markdown_and_attachments() {
        let mut d = MessageDraft::markdown("**hi** there");
        d.attachments.push(Attachment {
            url: "https://x/f.png".into(),
            media_type: "image/png".into(),
            size: None,
            filename: Some("f.png".into()),
        });
        assert_eq!(
            texts(&render(&msg(d), &RenderConfig::default(), 400).expect("ok")),
            [format!("<{ZW}> \x02hi\x02 there"), format!("<{ZW}> f.png: https://x/f.png")]
        );
    }

    #[test]
    fn per_user_connections_speak_as_themselves() {
        let cfg = RenderConfig { puppet: true, reactions: true, ..Default::default() };
        assert_eq!(texts(&render(&msg(MessageDraft::plain("hi")), &cfg, 400).expect("ok")), ["hi"]);
        let mut d = MessageDraft::plain("waves");
        d.style = MessageStyle::Emote;
        assert_eq!(texts(&render(&msg(d), &cfg, 400).expect("ok")), ["\x01ACTION waves\x01"]);
        // Hostile text cannot start a CTCP or a new command.
        let d = MessageDraft::plain("\x01VERSION\x01\r\nQUIT :x");
        assert_eq!(texts(&render(&msg(d), &cfg, 400).expect("ok")), ["VERSION", "QUIT :x"]);
        let parent =
            ParentRef { native_id: None, message_id: mid(), sender_name: "bob".into(), excerpt: "the fox".into() };
        let react = ev(OutboundKind::ReactionAdd { target: parent, key: "👍".into(), set_after: vec![] });
        assert_eq!(texts(&render(&react, &cfg, 400).expect("ok")), ["\x01ACTION reacted 👍 to bob: “the fox”\x01"]);
        // Long emotes keep every piece inside the budget, ACTION wrapper included.
        let mut d = MessageDraft::plain("word ".repeat(100));
        d.style = MessageStyle::Emote;
        for l in render(&msg(d), &RenderConfig { max_lines: 50, ..cfg }, 100).expect("ok") {
            assert!(l.params[1].len() <= 100 && l.params[1].ends_with('\x01'), "{:?}", l.params[1]);
        }
    }

    #[test]
    fn sed_only_for_small_unambiguous_changes() {
        assert_eq!(sed("I like cats", "I like dogs"), Some("s/cats/dogs/".into()));
        assert_eq!(sed("a a a", "a b a"), None);
        assert_eq!(sed("short", "entirely different text"), None);
        assert_eq!(sed("truncated…", "x"), None);
        assert_eq!(text_budget("bridge!~mimi@localhost", "#c"), 512 - 1 - 22 - 9 - 2 - 2 - 2);
    }
}
