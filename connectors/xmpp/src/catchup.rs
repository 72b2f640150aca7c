//! Sans IO: catch-up from a room's archive (XEP-0313) after a (re)join.
//!
//! Room history is not replayed on join (`maxstanzas='0'`); instead, once the room confirms the join, the bridge
//! asks the room's archive for its last [`PAGE`] messages and passes on those that come *after* the newest one
//! the core already knows (its stanza-id is in the core's ID map: bridged from here, or delivered here by the
//! bridge). The core deduplicates by stanza-id as well, so a message is never bridged twice. Without any known
//! message in the page (the bridge's first join of the room, or more than a page missed) nothing is replayed:
//! a first join must not flood the portal with old history (the gap is logged).

use crate::ns;
use minidom::Element;
use minidom::rxml::xml_ncname;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::Message;

/// How many archived messages one catch-up looks at.
pub const PAGE: usize = 50;

/// The archive query for the last [`PAGE`] messages of `room`, tagged `query_id` (also the iq id).
pub fn query(room: &BareJid, query_id: &str) -> Iq {
    let rsm = Element::builder("set", xmpp_parsers::ns::RSM)
        .append(Element::builder("max", xmpp_parsers::ns::RSM).append(PAGE.to_string()))
        .append(Element::builder("before", xmpp_parsers::ns::RSM))
        .build();
    let q = Element::builder("query", xmpp_parsers::ns::MAM)
        .attr(xml_ncname!("queryid").into(), query_id)
        .append(rsm)
        .build();
    Iq::Set { from: None, to: Some(Jid::from(room.clone())), id: query_id.to_owned(), payload: q }
}

/// If `msg` carries an archive result for `query_id`: its stanza-id and the archived message, with the stanza-id
/// added as the room's `<stanza-id/>` (the archive gives it as the result's id) and the delay dropped.
pub fn archived(msg: &Message, room: &BareJid) -> Option<(String, String, Message)> {
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

/// What to replay from a page (oldest first): everything after the newest message `known` to the core; nothing
/// if none is.
pub fn to_replay(page: Vec<(String, Message)>, known: impl Fn(&str) -> bool) -> Vec<Message> {
    match page.iter().rposition(|(id, _)| known(id)) {
        Some(last) => page.into_iter().skip(last + 1).map(|(_, m)| m).collect(),
        None => Vec::new(),
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

    #[test]
    fn replays_only_what_follows_the_newest_known_message() {
        let page = vec![("a".into(), m("1")), ("b".into(), m("2")), ("c".into(), m("3")), ("d".into(), m("4"))];
        let bodies = |v: Vec<Message>| v.iter().map(|m| m.bodies[""].clone()).collect::<Vec<_>>();
        assert_eq!(bodies(to_replay(page.clone(), |id| id == "a" || id == "b")), ["3", "4"]);
        assert!(to_replay(page.clone(), |id| id == "d").is_empty());
        assert!(to_replay(page, |_| false).is_empty(), "no anchor: a first join replays nothing");
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
        let q = String::from(&Element::from(query(&room, "q1")));
        assert!(q.contains("urn:xmpp:mam:2") && q.contains("<max>50</max>"), "{q}");
    }
}
