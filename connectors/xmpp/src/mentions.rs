//! Sans IO: mentions as XEP-0372 references (`<reference xmlns='urn:xmpp:reference:0' type='mention'
//! begin='…' end='…' uri='xmpp:room@service/nick'/>`), whose offsets count Unicode code points of the body.
//!
//! Inbound, a reference to an occupant of the room becomes a MIMI mention link (`[@nick](mimi://…/u/…)`, see
//! `mimi_content::markdown::mention_link`) around the text it covered; the rest of the body becomes markdown as
//! it would without mentions. References that do not fit the body, overlap, or name no occupant stay text.
//!
//! Outbound, a MIMI mention of a user whose nick in the room is known (an XMPP occupant, or a bridged user's
//! puppet) becomes that nick in the body plus a reference to `xmpp:room/nick` ([`hold`], then [`place`] on the
//! rendered body); any other mention becomes its link text (never the `mimi:` URI).

use crate::styling;
use mimi_content::markdown::{mention_link, plain_to_markdown};
use minidom::Element;
use minidom::rxml::xml_ncname;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// The XEP-0372 namespace.
pub const REFERENCE: &str = "urn:xmpp:reference:0";
/// Most references read from one message.
pub const MAX_REFERENCES: usize = 32;

/// A mention reference: the code-point range `begin..end` of the body, and the `xmpp:` URI it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// First code point covered.
    pub begin: usize,
    /// One past the last code point covered.
    pub end: usize,
    /// The mentioned entity (`xmpp:room@service/nick` for an occupant).
    pub uri: String,
}

/// The mention references of a message whose body has `len` code points, in order, without overlaps.
pub fn references(payloads: &[Element], len: usize) -> Vec<Reference> {
    let mut refs: Vec<Reference> = payloads
        .iter()
        .filter(|p| p.is("reference", REFERENCE) && p.attr("type") == Some("mention"))
        .filter_map(|p| {
            let begin = p.attr("begin")?.parse::<usize>().ok()?;
            let end = p.attr("end")?.parse::<usize>().ok()?;
            let uri = p.attr("uri")?.to_owned();
            (begin < end && end <= len && uri.starts_with("xmpp:") && uri.len() <= 3072).then_some(Reference {
                begin,
                end,
                uri,
            })
        })
        .take(MAX_REFERENCES)
        .collect();
    refs.sort_by_key(|r| r.begin);
    let mut last_end = 0;
    refs.retain(|r| {
        let ok = r.begin >= last_end;
        if ok {
            last_end = r.end;
        }
        ok
    });
    refs
}

/// The references moved to a body from which the code points marked in `cut` were removed (and then the first
/// `skip` code points); those touching removed text are dropped.
pub fn shift(refs: Vec<Reference>, cut: &[bool], skip: usize) -> Vec<Reference> {
    let removed_before = |i: usize| cut.iter().take(i).filter(|c| **c).count();
    refs.into_iter()
        .filter(|r| !cut.get(r.begin..r.end).is_some_and(|s| s.iter().any(|c| *c)))
        .filter_map(|r| {
            let (b, e) = (r.begin - removed_before(r.begin), r.end - removed_before(r.begin));
            (b >= skip).then(|| Reference { begin: b - skip, end: e - skip, uri: r.uri })
        })
        .collect()
}

/// What an `xmpp:` URI (RFC 5122 §2.2) escapes in a room's bare JID: everything but the unreserved characters and
/// `!$&'()*+,;=:@` (`@` separates node and domain) — spaces, `/`, `?`, `#`, `%` and every non-ASCII byte of the
/// UTF-8 encoding.
const ESCAPED_ROOM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');
/// What it escapes in a resource (a nick): the same and `@` (RFC 5122's `resallow` has no `@`).
const ESCAPED_NICK: &AsciiSet = &ESCAPED_ROOM.add(b'@');

/// The `xmpp:` URI of the occupant `nick` of `room` (`xmpp:room@service/nick`), escaped as RFC 5122 requires.
pub fn occupant_uri(room: &str, nick: &str) -> String {
    format!("xmpp:{}/{}", utf8_percent_encode(room, ESCAPED_ROOM), utf8_percent_encode(nick, ESCAPED_NICK))
}

/// The nick of an occupant reference `uri` into `room` (`xmpp:room/nick`), if it is one. The URI's escapes
/// are undone (`Bob%20Smith` is `Bob Smith`); characters a client left unescaped are taken as they are.
pub fn occupant_nick(uri: &str, room: &str) -> Option<String> {
    let unescaped = percent_decode_str(uri.strip_prefix("xmpp:")?).decode_utf8().ok()?;
    let nick = unescaped.strip_prefix(room)?.strip_prefix('/')?;
    (!nick.is_empty()).then(|| nick.to_owned())
}

/// `body` as MIMI markdown with each `(begin, end, user URI)` range (code points, in order, no overlaps) as a
/// mention link; the rest is converted as a message without mentions would be (the whole body at once, each
/// mention held by a private-use placeholder meanwhile, so the conversion sees the text as it is).
pub fn to_markdown(body: &str, mentions: &[(usize, usize, String)]) -> String {
    let convert = |s: &str| if styling::has_styling(s) { styling::styled_to_markdown(s) } else { plain_to_markdown(s) };
    if mentions.len() > MAX_REFERENCES || body.chars().any(reserved) {
        return convert(body);
    }
    let chars: Vec<char> = body.chars().collect();
    let mut held = String::new();
    let mut at = 0;
    for (i, (begin, end, _)) in mentions.iter().enumerate() {
        held.extend(&chars[at..*begin]);
        held.push(placeholder(i));
        at = *end;
    }
    held.extend(&chars[at..]);
    let mut md = convert(&held);
    for (i, (begin, end, uri)) in mentions.iter().enumerate() {
        let shown: String = chars[*begin..*end].iter().collect();
        md = md.replacen(placeholder(i), &mention_link(shown.trim_start_matches('@'), uri), 1);
    }
    md
}

/// The first of the private-use code points that hold mentions while the text is converted.
const PLACEHOLDERS: u32 = 0xF0000;

/// Outbound, step one: `md` (MIMI markdown) with each mention link replaced by a placeholder, and what each
/// placeholder stands for: `(nick, true)` when `nick_of` knows the mentioned user's nick in the room (their
/// occupant, or their puppet), else `(link text, false)`. The markdown then renders as usual; [`place`] puts the
/// text back and makes the references. Unchanged (and nothing held) if `md` already holds placeholder code points.
pub fn hold(md: &str, nick_of: impl Fn(&str) -> Option<String>) -> (String, Vec<(String, bool)>) {
    use pulldown_cmark::{Event, Parser, Tag, TagEnd};
    if md.chars().any(reserved) {
        return (md.to_owned(), Vec::new());
    }
    let mut out = String::new();
    let mut held = Vec::new();
    let mut at = 0;
    let mut open: Option<(std::ops::Range<usize>, String, String)> = None;
    for (ev, range) in Parser::new(md).into_offset_iter() {
        match ev {
            Event::Start(Tag::Link { dest_url, .. })
                if open.is_none() && dest_url.starts_with("mimi:") && dest_url.contains("/u/") =>
            {
                open = Some((range, dest_url.to_string(), String::new()));
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, _, text)) = open.as_mut() {
                    text.push_str(&t);
                }
            }
            Event::End(TagEnd::Link) => {
                let Some((range, uri, text)) = open.take() else { continue };
                if held.len() >= MAX_REFERENCES || range.start < at {
                    continue;
                }
                out.push_str(&md[at..range.start]);
                out.push(placeholder(held.len()));
                at = range.end;
                held.push(match nick_of(&uri) {
                    Some(nick) => (nick, true),
                    None => (text, false),
                });
            }
            _ => {}
        }
    }
    out.push_str(&md[at..]);
    (out, held)
}

/// Outbound, step two: `body` with the placeholders of [`hold`] replaced by their text, and a XEP-0372 mention
/// reference (code-point offsets into the returned body) for each known nick of `room`.
pub fn place(body: &str, held: &[(String, bool)], room: &str) -> (String, Vec<Element>) {
    let mut out = String::new();
    let mut len = 0;
    let mut refs = Vec::new();
    for c in body.chars() {
        let index = u32::from(c).checked_sub(PLACEHOLDERS).map(|i| i as usize);
        match index.and_then(|i| held.get(i)) {
            Some((text, is_nick)) => {
                let begin = len;
                out.push_str(text);
                len += text.chars().count();
                if *is_nick {
                    refs.push(
                        Element::builder("reference", REFERENCE)
                            .attr(xml_ncname!("type").into(), "mention")
                            .attr(xml_ncname!("begin").into(), begin.to_string())
                            .attr(xml_ncname!("end").into(), len.to_string())
                            .attr(xml_ncname!("uri").into(), occupant_uri(room, text))
                            .build(),
                    );
                }
            }
            None => {
                out.push(c);
                len += 1;
            }
        }
    }
    (out, refs)
}

fn placeholder(i: usize) -> char {
    char::from_u32(PLACEHOLDERS + i as u32).unwrap_or(char::REPLACEMENT_CHARACTER)
}

fn reserved(c: char) -> bool {
    (PLACEHOLDERS..PLACEHOLDERS + MAX_REFERENCES as u32).contains(&u32::from(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(begin: &str, end: &str, uri: &str) -> Element {
        Element::builder("reference", REFERENCE)
            .attr(xml_ncname!("type").into(), "mention")
            .attr(xml_ncname!("begin").into(), begin)
            .attr(xml_ncname!("end").into(), end)
            .attr(xml_ncname!("uri").into(), uri)
            .build()
    }

    #[test]
    fn references_that_fit_are_read_in_order_and_others_dropped() {
        let r = references(
            &[
                reference("6", "9", "xmpp:r@m/Bob"),
                reference("0", "5", "xmpp:r@m/Ann"),
                reference("3", "7", "xmpp:r@m/overlap"),
                reference("9", "99", "xmpp:r@m/past-the-end"),
                reference("x", "2", "xmpp:r@m/bad"),
                reference("0", "2", "https://not-xmpp"),
            ],
            12,
        );
        assert_eq!(r.iter().map(|r| r.uri.as_str()).collect::<Vec<_>>(), ["xmpp:r@m/Ann", "xmpp:r@m/Bob"]);
    }

    #[test]
    fn references_follow_a_cut_fallback_and_a_skipped_prefix() {
        let refs = vec![
            Reference { begin: 1, end: 3, uri: "in-cut".into() },
            Reference { begin: 6, end: 9, uri: "after".into() },
        ];
        let cut = [true, true, true, true, false, false, false, false, false, false];
        assert_eq!(shift(refs.clone(), &cut, 0), [Reference { begin: 2, end: 5, uri: "after".into() }]);
        assert_eq!(shift(refs, &cut, 2), [Reference { begin: 0, end: 3, uri: "after".into() }]);
    }

    #[test]
    fn outbound_mentions_become_nicks_with_references_in_code_points() {
        let bob = "mimi://b.test/u/bob";
        let md = format!(
            "héllo {} and {}, **ok**?",
            mention_link("Bob Smith", bob),
            mention_link("Zed", "mimi://b.test/u/z")
        );
        let (held_md, held) = hold(&md, |uri| (uri == bob).then(|| "bobby".to_owned()));
        assert_eq!(held, [("bobby".to_owned(), true), ("@Zed".to_owned(), false)]);
        // The placeholders survive rendering (here: the XEP-0393 conversion, with a relay prefix added).
        let styled = format!("Ann: {}", styling::markdown_to_styled(&held_md));
        let (body, refs) = place(&styled, &held, "r@m.example");
        assert_eq!(body.trim_end(), "Ann: héllo bobby and @Zed, *ok*?");
        assert_eq!(refs.len(), 1);
        let r = &refs[0];
        assert_eq!(
            (r.attr("begin"), r.attr("end"), r.attr("uri")),
            (Some("11"), Some("16"), Some("xmpp:r@m.example/bobby"))
        );
        let chars: Vec<char> = body.chars().collect();
        assert_eq!(chars[11..16].iter().collect::<String>(), "bobby");
        // Read back by our own inbound side: the same range.
        assert_eq!(
            references(&refs, chars.len())[0],
            Reference { begin: 11, end: 16, uri: "xmpp:r@m.example/bobby".into() }
        );
    }

    #[test]
    fn mentions_become_links_and_the_rest_stays_as_it_was() {
        assert_eq!(occupant_nick("xmpp:r@m.example/Bob Smith", "r@m.example").as_deref(), Some("Bob Smith"));
        assert_eq!(occupant_nick("xmpp:other@m.example/Bob", "r@m.example"), None);
        let uri = "mimi://b.test/u/xmpp.t~r%40m%2FBob".to_owned();
        let md = to_markdown("héllo @Bob: [this]", &[(6, 10, uri.clone())]);
        assert_eq!(md, format!("héllo {}\\: \\[this\\]", mention_link("Bob", &uri)), "plain text escaped");
        assert_eq!(mimi_content::markdown::mentions(&md), [("@Bob".to_owned(), uri.clone())]);
        assert_eq!(mimi_content::markdown::to_plain_text(&md).trim(), "héllo @Bob: [this]");
        // Styled text around a mention is converted as it would be without it (XEP-0393 *strong*).
        let md = to_markdown("@Bob *see* this", &[(0, 4, uri.clone())]);
        assert_eq!(md, format!("{} **see** this", mention_link("Bob", &uri)));
        let found = mimi_content::markdown::mentions(&md);
        assert_eq!(found, [("@Bob".to_owned(), uri)]);
    }

    /// Occupant URIs are escaped as RFC 5122 asks and read back, escaped or not, to the same nick.
    #[test]
    fn occupant_uris_escape_their_nick_and_read_back() {
        let room = "r@m.example";
        for (nick, uri) in [
            ("Bob Smith", "xmpp:r@m.example/Bob%20Smith"),
            ("Zoë", "xmpp:r@m.example/Zo%C3%AB"),
            ("a/b?c#d%e", "xmpp:r@m.example/a%2Fb%3Fc%23d%25e"),
            ("it's(me)!", "xmpp:r@m.example/it's(me)!"),
            ("bob@home", "xmpp:r@m.example/bob%40home"),
        ] {
            assert_eq!(occupant_uri(room, nick), uri);
            assert_eq!(occupant_nick(uri, room).as_deref(), Some(nick), "{uri}");
        }
        assert_eq!(occupant_nick("xmpp:r@m.example/Zoë", room).as_deref(), Some("Zoë"), "an IRI as it came");
        assert_eq!(occupant_nick("xmpp:r%40m.example/Bob", room).as_deref(), Some("Bob"), "an escaped room");
        assert_eq!(occupant_nick("xmpp:r@m.example/%FF", room), None, "not UTF-8");
        assert_eq!(occupant_nick("xmpp:r@m.example/", room), None);
    }
}
