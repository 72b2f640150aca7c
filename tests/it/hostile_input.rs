//! Hostile input across the bridge, on the real servers of [`Three`]: protocol and markup one network's users can
//! type never become protocol or markup on another.
//!
//! * CR, LF and NUL from Matrix, XMPP or an MLS member never reach IRC as protocol: every line the IRC user gets
//!   with the sender's text is a `PRIVMSG` to the channel carrying the relay prefix.
//! * HTML from Matrix (its `formatted_body`), and `<`/`&` typed on XMPP, IRC or an MLS client, reach Matrix only
//!   escaped or sanitised: no script, no image, no `javascript:` link, no event handler.
//! * Markup from any side reaches XMPP as text: the body has no child element and no element the sender wrote.
//! * An oversized message is split (IRC) or carried whole where the network allows it; one beyond the bridge's
//!   `max_event_bytes` is refused with a notice to its sender; the bridge goes on either way.

use crate::common::client::{client, messages};
use crate::common::three::{CHANNEL, MUC, ROOM, Three};
use connector_xmpp::minidom::Element;
use mimi_bench::measure::marker;
use serde_json::{Value, json};

/// Markup a sender hopes reaches Matrix as HTML or XMPP as XML.
const MARKUP: &str = "<script>alert(1)</script><img src=x onerror=alert(2)><a href=\"javascript:alert(3)\">js</a> \
                      &amp; </body></message><message type='groupchat'><body>forged";

/// Lines a sender hopes the bridge writes to IRC as its own commands (unique per message `m`).
fn injection(m: &str) -> String {
    format!("\r\nQUIT :pwned {m}\r\nPRIVMSG {CHANNEL} :injected {m}\n\0NICK evil{m}")
}

/// On IRC: once the last piece of message `m` arrived, every line carrying its text is a relayed `PRIVMSG` to the
/// channel (the text after the relay prefix), and the bridge is still in the channel under its nick.
fn irc_kept_it_text(t: &Three, m: &str) {
    let last = format!("evil{m}");
    t.rt.block_on(t.ircuser.wait(|l| l.contains(&last), "the message's last line")).unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<String> = t.ircuser.lines().into_iter().filter(|l| l.contains(m)).collect();
    assert!(!lines.is_empty(), "the message's pieces: {lines:?}");
    for l in &lines {
        let mut parts = l.splitn(4, ' ');
        let (prefix, command, target, text) = (parts.next(), parts.next(), parts.next(), parts.next());
        assert!(prefix.is_some_and(|p| p.starts_with(":bridge!")), "sent by the bridge: {l:?}");
        assert_eq!((command, target), (Some("PRIVMSG"), Some(CHANNEL)), "a message to the channel: {l:?}");
        assert!(text.is_some_and(|t| t.starts_with(":<")), "the text carries the relay prefix: {l:?}");
        assert!(!l.contains('\0'), "no NUL: {l:?}");
    }
    let own_commands: Vec<String> = t
        .ircuser
        .lines()
        .into_iter()
        .filter(|l| l.starts_with(":bridge!") && matches!(l.split(' ').nth(1), Some("QUIT" | "NICK" | "PART")))
        .collect();
    assert!(own_commands.is_empty(), "the bridge neither left nor changed its nick: {own_commands:?}");
}

/// On Matrix: the message `m` has arrived, and its HTML, if any, carries nothing active.
fn matrix_kept_it_inert(t: &Three, m: &str) -> Value {
    let content =
        t.mx.wait_content(&t.room, m, |c| c["body"].as_str().is_some_and(|b| b.contains(m)))
            .unwrap_or_else(|e| panic!("{e}"));
    if let Some(html) = content["formatted_body"].as_str() {
        for tag in tags(html) {
            let name: String = tag.trim_start_matches('/').chars().take_while(char::is_ascii_alphanumeric).collect();
            assert!(INERT_TAGS.contains(&name.as_str()), "<{tag}> in formatted_body: {html}");
            let lower = tag.to_lowercase();
            assert!(!lower.contains("javascript:") && !lower.contains(" on"), "<{tag}> in formatted_body: {html}");
        }
    }
    content
}

/// Tags that carry formatting only (a subset of the Matrix spec's allowed HTML, without images).
const INERT_TAGS: &[&str] = &[
    "p",
    "br",
    "b",
    "strong",
    "i",
    "em",
    "u",
    "del",
    "s",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "a",
    "span",
    "font",
    "sub",
    "sup",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "mx-reply",
];

/// The tags of `html`: what stands between each `<` and the next `>` (escaped text has no `<`).
fn tags(html: &str) -> Vec<&str> {
    html.split('<').skip(1).map(|rest| rest.split('>').next().unwrap_or(rest)).collect()
}

/// Every element below `e`, depth first.
fn descendants(e: &Element) -> Vec<&Element> {
    e.children().flat_map(|c| std::iter::once(c).chain(descendants(c))).collect()
}

/// On XMPP: the message `m` has arrived as a groupchat message whose body is text only, with no element the
/// sender wrote anywhere in the stanza.
fn xmpp_kept_it_text(t: &Three, m: &str) -> String {
    let stanza =
        t.rt.block_on(t.xavier.wait(m, |e| {
            e.name() == "message"
                && e.attr("type") == Some("groupchat")
                && e.get_child("body", "jabber:client").is_some_and(|b| b.text().contains(m))
        }))
        .unwrap_or_else(|e| panic!("{e}"));
    let body = stanza.get_child("body", "jabber:client").expect("body");
    assert_eq!(body.children().count(), 0, "the body is text: {}", String::from(&stanza));
    for e in descendants(&stanza) {
        assert!(!["script", "img", "a", "message", "html"].contains(&e.name()), "{}", String::from(&stanza));
    }
    body.text()
}

/// What the native client `state` heard next: the texts of `n` messages.
fn native_heard(t: &Three, state: &std::path::Path, n: usize) -> Vec<String> {
    let got =
        messages(&client(state, &t.server, &["listen", ROOM, "--json", "--count", &n.to_string(), "--timeout", "60"]));
    got.iter().map(|m| m["text"].as_str().unwrap_or_default().to_owned()).collect()
}

#[test]
fn protocol_and_markup_from_each_side_stay_text_on_every_other() {
    let mut t = Three::start();

    // Matrix: HTML in formatted_body, line breaks and a NUL in both.
    let m = marker(11, 0);
    let body = format!("from matrix {m} {MARKUP}{}", injection(&m));
    let html = format!("from matrix {m} <b>bold</b> {MARKUP}<br>{}", injection(&m));
    let ev = json!({"msgtype": "m.text", "body": body, "format": "org.matrix.custom.html", "formatted_body": html});
    t.mx.call("PUT", &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/hostile1", t.room), Some(ev))
        .expect("Matrix send");
    irc_kept_it_text(&t, &m);
    let on_xmpp = xmpp_kept_it_text(&t, &m);
    assert!(on_xmpp.contains("bold") && on_xmpp.contains(&format!("injected {m}")), "the text crossed: {on_xmpp:?}");
    let heard = native_heard(&t, &t.alice, 1);
    assert!(heard[0].contains(&m) && !heard[0].contains("<script"), "alice: {heard:?}");

    // XMPP: markup typed as text (the XML layer escapes it on the way in), line breaks.
    let m = marker(12, 0);
    let text = format!("from xmpp {m} {MARKUP}{}", injection(&m).replace('\0', ""));
    t.rt.block_on(t.xavier.say(MUC, &text)).expect("XMPP send");
    irc_kept_it_text(&t, &m);
    let content = matrix_kept_it_inert(&t, &m);
    assert!(content["body"].as_str().is_some_and(|b| b.contains("<script>")), "typed text stays text: {content}");
    assert!(native_heard(&t, &t.alice, 1)[0].contains(&m));

    // IRC: markup and formatting codes (IRC itself cannot carry CR, LF or NUL).
    let m = marker(13, 0);
    t.rt.block_on(t.ircuser.say(&format!("from irc {m} {MARKUP} \x02bold\x02 \x0304red\x03"))).expect("IRC send");
    let content = matrix_kept_it_inert(&t, &m);
    assert!(content["body"].as_str().is_some_and(|b| b.contains("<script>")), "typed text stays text: {content}");
    xmpp_kept_it_text(&t, &m);
    assert!(native_heard(&t, &t.alice, 1)[0].contains(&m));

    // An MLS member: markup in its Markdown, line breaks (argv carries no NUL).
    let m = marker(14, 0);
    let text = format!("from bob {m} {MARKUP}{}", injection(&m).replace('\0', ""));
    client(&t.bob, &t.server, &["send", ROOM, &text]);
    irc_kept_it_text(&t, &m);
    matrix_kept_it_inert(&t, &m);
    xmpp_kept_it_text(&t, &m);

    let log = t.d.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn oversized_messages_are_split_or_refused_and_the_bridge_goes_on() {
    let mut t = Three::start();

    // 40 000 bytes from Matrix (under the bridge's 64 KiB): IRC gets it cut to its line budget, XMPP and the MLS
    // members whole.
    let m = marker(15, 0);
    let big = format!("from matrix {m} {}", "lorem ipsum ".repeat(3_330));
    t.mx.say(&t.room, &big).expect("Matrix send");
    let after = marker(15, 1);
    t.mx.say(&t.room, &format!("after {after}")).expect("Matrix send");
    t.rt.block_on(t.ircuser.wait(|l| l.contains(&after), "the next message")).unwrap_or_else(|e| panic!("{e}"));
    let lines = t.ircuser.lines();
    let first = lines.iter().position(|l| l.contains(&m)).expect("the big message's first line");
    let next = lines.iter().position(|l| l.contains(&after)).expect("the next message");
    let pieces = &lines[first..next];
    assert!(pieces.len() <= 5, "at most max_lines = 5 lines: {}", pieces.len());
    assert!(pieces.iter().all(|l| l.len() <= 510), "each within IRC's 512 bytes");
    assert!(pieces.last().is_some_and(|l| l.contains("more lines")), "the cut is said: {pieces:?}");
    let on_xmpp = xmpp_kept_it_text(&t, &m);
    assert!(on_xmpp.ends_with(&big), "XMPP got it whole (after the sender's name): {} bytes", on_xmpp.len());
    let heard = native_heard(&t, &t.alice, 2);
    assert_eq!(heard[0], big, "alice got it whole");

    // 100 000 bytes from XMPP (Prosody takes it; over the bridge's 64 KiB): refused, with a notice in the MUC; the
    // next message crosses as usual.
    let m = marker(16, 0);
    let huge = format!("from xmpp {m} {}", "dolor sit ".repeat(10_000));
    t.rt.block_on(t.xavier.say(MUC, &huge)).expect("XMPP send");
    t.rt.block_on(t.xavier.wait("the refusal", |e| {
        e.name() == "message" && e.get_child("body", "jabber:client").is_some_and(|b| b.text().contains("too large"))
    }))
    .unwrap_or_else(|e| panic!("{e}: {}", t.d.log()));
    let after = marker(16, 1);
    t.rt.block_on(t.xavier.say(MUC, &format!("after {after}"))).expect("XMPP send");
    t.rt.block_on(t.ircuser.wait(|l| l.contains(&after), "the next message")).unwrap_or_else(|e| panic!("{e}"));
    assert!(!t.ircuser.lines().iter().any(|l| l.contains(&m)), "the refused message is not on IRC");
    matrix_kept_it_inert(&t, &after);
}
