//! Sans IO: catch-up from a room's archive (XEP-0313) after a (re)join, and what the archive says about our own
//! earlier sends.
//!
//! Room history is not replayed on join (`maxstanzas='0'`); instead, once the room confirms the join, the bridge
//! pages backwards through the room's archive ([`PAGE`] messages a page, RSM `<before/>`) until a page holds a
//! message the core took from this room (its stanza-id is in the core's ID map as bridged from here), the
//! archive's start, or [`MAX_PAGES`]. It then passes on every message after the newest such one that the core
//! does not know. A delivery of the bridge's own is no anchor: reflected after messages the bridge never took (it
//! was killed before it could), it would hide them. Without a message taken from here, the newest known one (a
//! delivery) anchors instead. The core deduplicates by stanza-id as well, so a message is never bridged twice.
//! Without any known message (the bridge's first join of the room, or more than [`MAX_PAGES`] pages missed)
//! nothing is replayed: a first join must not flood the portal with old history (the gap is logged).
//!
//! The same walk collects the XEP-0359 origin-id of every message it saw ([`Done::origins`]): a delivery the core
//! hands over again after a lost stream or a crash (its txn id is the origin-id the bridge gave it) is found
//! there and not sent a second time.

use crate::ns;
use bridge_net::catchup::Known;
use minidom::Element;
use minidom::rxml::xml_ncname;
use std::collections::HashMap;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::Message;

/// How many archived messages one page holds.
pub const PAGE: usize = 50;
/// How many pages one catch-up reads at most (2 500 messages).
pub const MAX_PAGES: usize = 50;

/// The archive query for the [`PAGE`] messages of `room` before the archive id `before` (the newest page when
/// `None`), tagged `query_id` (also the iq id).
pub fn query(room: &BareJid, query_id: &str, before: Option<&str>) -> Iq {
    let rsm = Element::builder("set", xmpp_parsers::ns::RSM)
        .append(Element::builder("max", xmpp_parsers::ns::RSM).append(PAGE.to_string()))
        .append(Element::builder("before", xmpp_parsers::ns::RSM).append(before.unwrap_or_default()))
        .build();
    let q = Element::builder("query", xmpp_parsers::ns::MAM)
        .attr(xml_ncname!("queryid").into(), query_id)
        .append(rsm)
        .build();
    Iq::Set { from: None, to: Some(Jid::from(room.clone())), id: query_id.to_owned(), payload: q }
}

/// If `msg` carries an archive result: its query id, its archive (stanza-)id and the archived message, with the
/// stanza-id added as the room's `<stanza-id/>` (the archive gives it as the result's id) and the delay dropped.
///
/// Only the room itself sends results: from its bare JID, never as groupchat. A result inside an occupant's
/// message (`room/nick`) is not one, or any occupant could put words in others' mouths during a catch-up, or
/// make the bridge believe the archive already holds a message it is about to resend.
pub fn archived(msg: &Message, room: &BareJid) -> Option<(String, String, Message)> {
    let from_room = msg.from.as_ref().is_some_and(|f| f.resource().is_none() && f.to_bare() == *room);
    if !from_room || msg.type_ == xmpp_parsers::message::MessageType::Groupchat {
        return None;
    }
    let result = msg.payloads.iter().find(|p| p.is("result", xmpp_parsers::ns::MAM))?;
    let query_id = result.attr("queryid")?.to_owned();
    let id = result.attr("id")?.to_owned();
    let inner = result.get_child("forwarded", xmpp_parsers::ns::FORWARD)?.get_child("message", ns::CLIENT)?;
    let mut m = Message::try_from(inner.clone()).ok()?;
    m.payloads.retain(|p| !p.is("stanza-id", xmpp_parsers::ns::SID) && !p.is("delay", ns::DELAY));
    m.payloads.push(
        Element::builder("stanza-id", xmpp_parsers::ns::SID)
            .attr(xml_ncname!("id").into(), id.as_str())
            .attr(xml_ncname!("by").into(), room.to_string())
            .build(),
    );
    Some((query_id, id, m))
}

/// The end of one page, from the iq result's `<fin/>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageEnd {
    /// The archive id of the page's oldest message (where the next, older page ends).
    pub first: Option<String>,
    /// The page reaches the archive's start.
    pub complete: bool,
}

/// Reads the `<fin/>` of an archive query's result; `None` if `payload` is not one.
pub fn page_end(payload: &Element) -> Option<PageEnd> {
    if !payload.is("fin", xmpp_parsers::ns::MAM) {
        return None;
    }
    let first = payload
        .get_child("set", xmpp_parsers::ns::RSM)
        .and_then(|s| s.get_child("first", xmpp_parsers::ns::RSM))
        .map(Element::text)
        .filter(|t| !t.is_empty());
    Some(PageEnd { first, complete: matches!(payload.attr("complete"), Some("true" | "1")) })
}

/// A message's XEP-0359 origin-id.
pub fn origin_id(msg: &Message) -> Option<&str> {
    msg.payloads.iter().find(|p| p.is("origin-id", xmpp_parsers::ns::SID)).and_then(|p| p.attr("id"))
}

/// What one catch-up found.
#[derive(Debug, Default)]
pub struct Done {
    /// What to pass on, oldest first.
    pub replay: Vec<Message>,
    /// origin-id → archive (stanza-)id of every message the walk saw.
    pub origins: HashMap<String, String>,
    /// How many messages the walk read.
    pub seen: usize,
    /// No known message was found: what was missed (if anything) is not replayed.
    pub no_anchor: bool,
}

/// The next step of a catch-up.
#[derive(Debug)]
pub enum Step {
    /// Ask for the page before this archive id.
    More(String),
    /// Finished.
    Done(Done),
}

/// One room's walk back through its archive: the connectors' shared walk ([`bridge_net::catchup::Walk`]), which
/// also collects the origin-ids it sees.
#[derive(Debug)]
pub struct Walk {
    walk: bridge_net::catchup::Walk<Message>,
    origins: HashMap<String, String>,
}

impl Default for Walk {
    fn default() -> Self {
        Self { walk: bridge_net::catchup::Walk::new(MAX_PAGES), origins: HashMap::new() }
    }
}

/// What the shared walk knows of a stanza-id: taken from this room (`Some(true)`) anchors, delivered here
/// (`Some(false)`) anchors only without one taken.
fn as_known(known: Option<bool>) -> Option<Known> {
    known.map(|taken| if taken { Known::FromLeg } else { Known::Delivery })
}

impl Walk {
    /// No page has been read yet.
    pub fn is_fresh(&self) -> bool {
        self.walk.is_fresh()
    }

    /// Takes the next (older) page, oldest first, and its end; `known` says whether the core took a stanza-id from
    /// this room (`Some(true)`), delivered it here (`Some(false)`) or does not know it (`None`).
    pub fn page(&mut self, page: Vec<(String, Message)>, end: &PageEnd, known: impl Fn(&str) -> Option<bool>) -> Step {
        for (id, m) in &page {
            if let Some(o) = origin_id(m) {
                self.origins.insert(o.to_owned(), id.clone());
            }
        }
        let before = end.first.clone().filter(|_| !end.complete);
        match self.walk.page(page, before, |id| as_known(known(id))) {
            bridge_net::catchup::Step::More(before) => Step::More(before),
            bridge_net::catchup::Step::Done(done) => Step::Done(self.done(done)),
        }
    }

    /// Ends the walk (also when the archive refused a page) with what it has seen.
    pub fn finish(&mut self, known: impl Fn(&str) -> Option<bool>) -> Done {
        let done = self.walk.finish(|id| as_known(known(id)));
        self.done(done)
    }

    fn done(&mut self, done: bridge_net::catchup::Done<Message>) -> Done {
        let origins = std::mem::take(&mut self.origins);
        Done { replay: done.replay, origins, seen: done.seen, no_anchor: done.no_anchor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(body: &str) -> Message {
        let mut m = Message::groupchat(None);
        m.bodies.insert(xmpp_parsers::message::Lang::new(), body.into());
        m
    }

    fn page(ids: &[&str]) -> Vec<(String, Message)> {
        ids.iter().map(|id| ((*id).to_owned(), m(id))).collect()
    }

    fn bodies(v: &[Message]) -> Vec<String> {
        v.iter().map(|m| m.bodies[""].clone()).collect()
    }

    fn end(first: &str, complete: bool) -> PageEnd {
        PageEnd { first: Some(first.into()), complete }
    }

    #[test]
    fn only_the_room_itself_sends_archive_results() {
        let room = BareJid::new("lobby@muc.localhost").expect("jid");
        let result = |from: &str, kind: &str| {
            let xml = format!(
                "<message xmlns='jabber:client' from='{from}' {kind}><result xmlns='urn:xmpp:mam:2' queryid='q1' \
                 id='A1'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' type='groupchat' \
                 from='lobby@muc.localhost/carol'><body>hi</body></message></forwarded></result></message>"
            );
            Message::try_from(xml.parse::<Element>().expect("xml")).expect("message")
        };
        assert!(archived(&result("lobby@muc.localhost", ""), &room).is_some());
        assert!(archived(&result("lobby@muc.localhost/mallory", "type='groupchat'"), &room).is_none());
        assert!(archived(&result("lobby@muc.localhost/mallory", ""), &room).is_none());
        assert!(archived(&result("lobby@muc.localhost", "type='groupchat'"), &room).is_none());
        assert!(archived(&result("other@muc.localhost", ""), &room).is_none());
    }

    /// Taken from the room: ids starting with `t`; delivered here: `d`; anything else is unknown.
    fn kind(id: &str) -> Option<bool> {
        match id.chars().next() {
            Some('t') => Some(true),
            Some('d') => Some(false),
            _ => None,
        }
    }

    #[test]
    fn replays_only_what_follows_the_newest_known_message() {
        let Step::Done(d) = Walk::default().page(page(&["ta", "tb", "c", "e"]), &end("ta", false), kind) else {
            panic!("an anchored page ends the walk")
        };
        assert_eq!(bodies(&d.replay), ["c", "e"]);
        assert!(!d.no_anchor);
        let Step::Done(d) = Walk::default().page(page(&["a", "tb"]), &end("a", false), kind) else {
            panic!("anchored")
        };
        assert!(d.replay.is_empty());
    }

    #[test]
    fn a_delivery_reflected_after_messages_never_taken_does_not_hide_them() {
        // The bridge was killed after the room took u1 and u2 and before it took them itself; a delivery (d1) it
        // had made was reflected after them.
        let Step::Done(d) = Walk::default().page(page(&["t0", "u1", "u2", "d1", "u3"]), &end("t0", false), kind) else {
            panic!("anchored on t0")
        };
        assert_eq!(bodies(&d.replay), ["u1", "u2", "u3"], "the delivery is not replayed, the rest is");
        // Without a message taken from the room, the newest delivery anchors.
        let Step::Done(d) = Walk::default().page(page(&["u0", "d1", "u1"]), &end("u0", true), kind) else {
            panic!("complete")
        };
        assert_eq!(bodies(&d.replay), ["u1"]);
        // A page with deliveries only does not end the walk.
        let mut walk = Walk::default();
        assert!(matches!(walk.page(page(&["d5", "u6"]), &end("d5", false), kind), Step::More(_)));
        let Step::Done(d) = walk.page(page(&["t3", "u4"]), &end("t3", false), kind) else { panic!("anchored") };
        assert_eq!(bodies(&d.replay), ["u4", "u6"]);
    }

    #[test]
    fn pages_back_until_a_known_message_and_replays_across_pages_in_order() {
        let known = |id: &str| (id == "b").then_some(true);
        let mut walk = Walk::default();
        let Step::More(before) = walk.page(page(&["e", "f"]), &end("e", false), known) else {
            panic!("no anchor yet: page on")
        };
        assert_eq!(before, "e");
        let Step::Done(d) = walk.page(page(&["a", "b", "c", "d"]), &end("a", false), known) else {
            panic!("anchored on the second page")
        };
        assert_eq!(bodies(&d.replay), ["c", "d", "e", "f"]);
        assert_eq!(d.seen, 6);
    }

    #[test]
    fn without_a_known_message_nothing_is_replayed_and_the_walk_stops() {
        let none = |_: &str| None;
        let mut walk = Walk::default();
        let Step::Done(d) = walk.page(page(&["a"]), &end("a", true), none) else { panic!("complete") };
        assert!(d.replay.is_empty() && d.no_anchor, "a first join replays nothing");
        let mut walk = Walk::default();
        for n in 1..MAX_PAGES {
            assert!(matches!(walk.page(page(&["x"]), &end("x", false), none), Step::More(_)), "page {n}");
        }
        assert!(matches!(walk.page(page(&["x"]), &end("x", false), none), Step::Done(_)), "capped");
        let Step::Done(d) = Walk::default().page(Vec::new(), &PageEnd::default(), none) else { panic!("empty") };
        assert!(!d.no_anchor, "an empty archive is no gap");
    }

    #[test]
    fn the_walk_collects_the_origin_ids_it_saw() {
        let mut own = m("ours");
        own.payloads
            .push(Element::builder("origin-id", xmpp_parsers::ns::SID).attr(xml_ncname!("id").into(), "txn-1").build());
        let Step::Done(d) =
            Walk::default().page(vec![("S1".into(), own), ("S2".into(), m("x"))], &end("S1", true), |_| None)
        else {
            panic!("complete")
        };
        assert_eq!(d.origins.get("txn-1").map(String::as_str), Some("S1"));
        assert_eq!(d.origins.len(), 1);
    }

    #[test]
    fn a_fin_gives_the_page_start_and_completeness() {
        let fin: Element = "<fin xmlns='urn:xmpp:mam:2' complete='true'><set xmlns='http://jabber.org/protocol/rsm'>\
                            <first index='0'>S1</first><last>S9</last></set></fin>"
            .parse()
            .expect("xml");
        assert_eq!(page_end(&fin), Some(end("S1", true)));
        let fin: Element =
            "<fin xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'/></fin>".parse().expect("xml");
        assert_eq!(page_end(&fin), Some(PageEnd::default()));
        let other: Element = "<query xmlns='urn:xmpp:mam:2'/>".parse().expect("xml");
        assert_eq!(page_end(&other), None);
    }

    #[test]
    fn an_archive_result_becomes_the_room_message_with_its_stanza_id() {
        let room = BareJid::new("r@muc.example").expect("jid");
        let xml = "<message xmlns='jabber:client' from='r@muc.example' to='b@example/x'>\
                   <result xmlns='urn:xmpp:mam:2' queryid='q1' id='SID1'><forwarded xmlns='urn:xmpp:forward:0'>\
                   <delay xmlns='urn:xmpp:delay' stamp='2026-01-01T00:00:00Z'/>\
                   <message xmlns='jabber:client' type='groupchat' from='r@muc.example/alice' id='x'>\
                   <body>while you were away</body></message></forwarded></result></message>";
        let outer = Message::try_from(xml.parse::<Element>().expect("xml")).expect("message");
        let (q, id, inner) = archived(&outer, &room).expect("an archive result");
        assert_eq!((q.as_str(), id.as_str()), ("q1", "SID1"));
        let sid = inner.payloads.iter().find(|p| p.is("stanza-id", xmpp_parsers::ns::SID)).expect("stanza-id");
        assert_eq!((sid.attr("id"), sid.attr("by")), (Some("SID1"), Some("r@muc.example")));
        assert_eq!(inner.bodies[""], "while you were away");
        let q = String::from(&Element::from(query(&room, "q1", None)));
        assert!(q.contains("urn:xmpp:mam:2") && q.contains("<max>50</max>"), "{q}");
        let q = String::from(&Element::from(query(&room, "q2", Some("S1"))));
        assert!(q.contains("<before>S1</before>"), "{q}");
    }
}
