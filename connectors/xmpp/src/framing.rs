//! Sans IO: cuts a XEP-0114 component stream (as rxml raw events) into top-level elements, with bounds.
//!
//! Each child of the stream root is built on its own (a fresh `minidom` tree builder per stanza, under a
//! synthetic root that declares the stream's namespaces), so a stanza that is too large ([`MAX_STANZA_BYTES`]) or
//! too deep ([`MAX_DEPTH`]) or malformed is skipped whole — its events are counted, not kept — and the stream goes
//! on. rxml itself bounds every token ([`MAX_TOKEN`]) and knows no DTD, so no entity expansion happens.
//!
//! [`to_client_ns`] / [`to_component_ns`] rewrite the stanza namespace so that the typed parsers (built for
//! `jabber:client`, since the `component` feature must stay off) read and write component stanzas.

use crate::ns;
use minidom::tree_builder::TreeBuilder;
use minidom::{Element, Node};
use rxml::RawEvent;
use rxml::parser::EventMetrics;
use std::collections::BTreeMap;

/// Most bytes one stanza may take on the wire.
pub const MAX_STANZA_BYTES: usize = 256 * 1024;
/// Deepest element nesting inside a stanza (the stanza itself is depth 1).
pub const MAX_DEPTH: usize = 32;
/// Longest token (name, attribute value, text chunk) rxml accepts.
pub const MAX_TOKEN: usize = 64 * 1024;

/// What one event completed.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// Nothing yet.
    None,
    /// The stream header's attributes (`id`, `from`…).
    Header(BTreeMap<String, String>),
    /// One complete top-level element (a stanza, `<handshake/>`, `<stream:error/>`), in the stream's namespaces.
    Element(Element),
    /// A top-level element was skipped; why.
    Dropped(&'static str),
    /// The stream's closing tag.
    End,
}

/// The framing state of one stream.
#[derive(Default)]
pub struct Framer {
    depth: usize,
    in_root_head: bool,
    header: BTreeMap<String, String>,
    builder: Option<TreeBuilder>,
    skipping: Option<&'static str>,
    bytes: usize,
}

fn name(s: &str) -> Option<rxml::NcName> {
    rxml::NcName::try_from(s).ok()
}

/// A builder under a synthetic stream root with the component stream's namespaces.
fn fresh_builder() -> Option<TreeBuilder> {
    let mut b = TreeBuilder::new();
    let zero = EventMetrics::zero();
    b.process_event(RawEvent::ElementHeadOpen(zero, (name("stream"), name("stream")?))).ok()?;
    b.process_event(RawEvent::Attribute(zero, (None, name("xmlns")?), ns::COMPONENT.into())).ok()?;
    b.process_event(RawEvent::Attribute(
        zero,
        (name("xmlns"), name("stream")?),
        "http://etherx.jabber.org/streams".into(),
    ))
    .ok()?;
    b.process_event(RawEvent::ElementHeadClose(zero)).ok()?;
    Some(b)
}

impl Framer {
    /// A framer before the stream header.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one event.
    pub fn push(&mut self, ev: RawEvent) -> Frame {
        let len = ev.metrics().len();
        match ev {
            RawEvent::XmlDeclaration(..) => Frame::None,
            RawEvent::ElementHeadOpen(..) if self.depth == 0 => {
                self.depth = 1;
                self.in_root_head = true;
                Frame::None
            }
            RawEvent::Attribute(_, (_, local), value) if self.in_root_head => {
                self.header.insert(local.to_string(), value);
                Frame::None
            }
            RawEvent::ElementHeadClose(_) if self.in_root_head => {
                self.in_root_head = false;
                Frame::Header(std::mem::take(&mut self.header))
            }
            RawEvent::ElementFoot(_) if self.depth == 1 => {
                self.depth = 0;
                Frame::End
            }
            RawEvent::Text(..) if self.depth == 1 => Frame::None,
            ev => {
                let opens = matches!(ev, RawEvent::ElementHeadOpen(..));
                let closes = matches!(ev, RawEvent::ElementFoot(..));
                if opens {
                    if self.depth == 1 {
                        self.builder = fresh_builder();
                        self.skipping = if self.builder.is_none() { Some("internal builder error") } else { None };
                        self.bytes = 0;
                    }
                    self.depth += 1;
                    if self.depth - 1 > MAX_DEPTH {
                        self.skip("nested too deeply");
                    }
                }
                self.bytes += len;
                if self.bytes > MAX_STANZA_BYTES {
                    self.skip("too large");
                }
                if self.skipping.is_none()
                    && let Some(b) = self.builder.as_mut()
                    && b.process_event(ev).is_err()
                {
                    self.skip("malformed");
                }
                if closes {
                    self.depth -= 1;
                    if self.depth == 1 {
                        let built = self.builder.take().and_then(|mut b| b.unshift_child());
                        return match (self.skipping.take(), built) {
                            (Some(why), _) => Frame::Dropped(why),
                            (None, Some(el)) => Frame::Element(el),
                            (None, None) => Frame::Dropped("malformed"),
                        };
                    }
                }
                Frame::None
            }
        }
    }

    fn skip(&mut self, why: &'static str) {
        if self.skipping.is_none() {
            self.skipping = Some(why);
        }
        self.builder = None;
    }
}

fn rewrite(el: &Element, from: &str, to: &str) -> Element {
    let ns = if el.ns() == from { to.to_owned() } else { el.ns() };
    let mut out = Element::builder(el.name(), ns).build();
    *out.attrs_mut() = el.attrs().clone();
    for node in el.nodes() {
        match node {
            Node::Element(child) => {
                out.append_child(rewrite(child, from, to));
            }
            Node::Text(t) => out.append_text_node(t.clone()),
        }
    }
    out
}

/// `jabber:component:accept` → `jabber:client`, recursively (for the typed parsers).
pub fn to_client_ns(el: &Element) -> Element {
    rewrite(el, ns::COMPONENT, ns::CLIENT)
}

/// `jabber:client` → `jabber:component:accept`, recursively (for the wire).
pub fn to_component_ns(el: &Element) -> Element {
    rewrite(el, ns::CLIENT, ns::COMPONENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rxml::Parse;

    fn frames(input: &[u8]) -> Vec<Frame> {
        let mut p = rxml::RawParser::default();
        let mut f = Framer::new();
        let mut out = Vec::new();
        let mut buf = input;
        loop {
            match p.parse_buf(&mut buf, true) {
                Ok(Some(ev)) => match f.push(ev) {
                    Frame::None => {}
                    fr => out.push(fr),
                },
                Ok(None) => break,
                Err(e) => panic!("parse error {e:?}"),
            }
        }
        out
    }

    const HEAD: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
                        xmlns:stream='http://etherx.jabber.org/streams' from='c.example' id='abc'>";

    #[test]
    fn stanzas_come_out_whole_and_hostile_ones_are_skipped() {
        let deep = format!("<message>{}{}</message>", "<a>".repeat(40), "</a>".repeat(40));
        let big = format!("<message><body>{}</body></message>", "x".repeat(MAX_STANZA_BYTES));
        let input = format!(
            "{HEAD}<handshake/> {deep}{big}<message to='a@b'><body>ok &amp; fine</body></message></stream:stream>"
        );
        let f = frames(input.as_bytes());
        assert!(matches!(&f[0], Frame::Header(h) if h.get("id").map(String::as_str) == Some("abc")), "{f:?}");
        assert!(matches!(&f[1], Frame::Element(e) if e.is("handshake", ns::COMPONENT)));
        assert_eq!(f[2], Frame::Dropped("nested too deeply"));
        assert_eq!(f[3], Frame::Dropped("too large"));
        match &f[4] {
            Frame::Element(e) => {
                let m = to_client_ns(e);
                assert!(m.is("message", ns::CLIENT));
                assert_eq!(m.get_child("body", ns::CLIENT).map(|b| b.text()).as_deref(), Some("ok & fine"));
                let msg = xmpp_parsers::message::Message::try_from(m.clone()).expect("typed parser reads it");
                assert_eq!(to_component_ns(&Element::from(msg)).ns(), ns::COMPONENT);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f[5], Frame::End);
    }
}
