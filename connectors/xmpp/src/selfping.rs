//! Sans IO: MUC self-ping (XEP-0410). The bridge pings its own occupant JID in each joined room; the answer says
//! whether it is still an occupant. A room that forgot the bridge (a MUC service restarted without telling, a
//! lost presence) answers "not an occupant" and is joined again; a ping that gets no answer at all means the
//! stream is dead, and the account reconnects.

use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{FullJid, Jid};
use xmpp_parsers::ping::Ping;
use xmpp_parsers::stanza_error::DefinedCondition;

/// What a self-ping's answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still an occupant (a result, or an error only an occupant's client can cause).
    Joined,
    /// Not an occupant any more: join again.
    NotJoined,
    /// The room's server is unreachable, or the answer says nothing: keep waiting for the next ping.
    Unknown,
}

/// The self-ping of `occupant` (our own occupant JID), with the iq id `id`.
pub fn ping(occupant: &FullJid, id: &str) -> Iq {
    let mut iq = Iq::from_get(id.to_owned(), Ping);
    if let Iq::Get { to, .. } = &mut iq {
        *to = Some(Jid::from(occupant.clone()));
    }
    iq
}

/// Reads the answer to a self-ping (XEP-0410 §3.2).
pub fn verdict(answer: &Iq) -> Verdict {
    match answer {
        Iq::Result { .. } => Verdict::Joined,
        Iq::Error { error, .. } => match error.defined_condition {
            DefinedCondition::ServiceUnavailable | DefinedCondition::FeatureNotImplemented => Verdict::Joined,
            DefinedCondition::ItemNotFound => Verdict::Joined,
            DefinedCondition::RemoteServerNotFound | DefinedCondition::RemoteServerTimeout => Verdict::Unknown,
            _ => Verdict::NotJoined,
        },
        _ => Verdict::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minidom::Element;

    fn answer(xml: &str) -> Iq {
        Iq::try_from(xml.parse::<Element>().expect("xml")).expect("iq")
    }

    fn error(condition: &str) -> Iq {
        answer(&format!(
            "<iq xmlns='jabber:client' type='error' id='p1' from='r@muc/me'><error type='cancel'>\
             <{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        ))
    }

    #[test]
    fn answers_are_read_as_xep_0410_says() {
        assert_eq!(verdict(&answer("<iq xmlns='jabber:client' type='result' id='p1'/>")), Verdict::Joined);
        assert_eq!(verdict(&error("service-unavailable")), Verdict::Joined);
        assert_eq!(verdict(&error("feature-not-implemented")), Verdict::Joined);
        assert_eq!(verdict(&error("item-not-found")), Verdict::Joined);
        assert_eq!(verdict(&error("not-acceptable")), Verdict::NotJoined);
        assert_eq!(verdict(&error("remote-server-not-found")), Verdict::Unknown);
        let occupant = FullJid::new("r@muc.example/bridge").expect("jid");
        let q = String::from(&Element::from(ping(&occupant, "p1")));
        assert!(q.contains("urn:xmpp:ping") && q.contains("to='r@muc.example/bridge'"), "{q}");
    }
}
