//! An XMPP user for the benchmark (a real client stream, tokio-xmpp through the XMPP connector's client): joins
//! one MUC, sends groupchat messages, notes the markers of every groupchat message from others (reader
//! `xmpp:ROOM`), and runs biboumi's ad-hoc `configure` command.

use crate::measure::Arrivals;
use connector_xmpp::client::{Login, Transport, connect};
use connector_xmpp::link::Link;
use connector_xmpp::minidom::Element;
use connector_xmpp::minidom::rxml::NcName;
use connector_xmpp::xmpp_parsers::iq::Iq;
use connector_xmpp::xmpp_parsers::jid::{BareJid, Jid};
use connector_xmpp::xmpp_parsers::message::{Lang, Message, MessageType};
use connector_xmpp::xmpp_parsers::presence::Presence;
use connector_xmpp::xmpp_parsers::stanza::Stanza;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const MUC: &str = "http://jabber.org/protocol/muc";
const COMMANDS: &str = "http://jabber.org/protocol/commands";
const DATA: &str = "jabber:x:data";

/// An attribute name (the names here are constants, always valid).
fn name(n: &'static str) -> NcName {
    NcName::try_from(n).unwrap_or_else(|_| unreachable!("{n} is an NCName"))
}

/// A logged-in user and what it has seen.
pub struct XmppUser {
    nick: String,
    outbound: mpsc::Sender<Stanza>,
    seen: Arc<Mutex<Vec<Element>>>,
    _link_task: tokio::task::JoinHandle<()>,
    n: u64,
}

impl XmppUser {
    /// Logs in as `user@localhost` (password `pw`) on the c2s port `server`.
    pub async fn login(server: &str, user: &str, nick: &str, arrivals: Arrivals) -> Result<Self, String> {
        let login = Login {
            server: server.to_owned(),
            jid: Jid::new(&format!("{user}@localhost")).map_err(|e| e.to_string())?,
            password: "pw".into(),
            transport: Transport::InsecureTcp,
            resource: "bench".into(),
        };
        let mut link: Link = connect(&login).await.map_err(|e| e.to_string())?;
        let outbound = link.outbound.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (seen2, me) = (seen.clone(), nick.to_owned());
        let reader = tokio::spawn(async move {
            while let Some(s) = link.inbound.recv().await {
                if let Stanza::Message(m) = &s
                    && m.type_ == MessageType::Groupchat
                    && let Some(from) = &m.from
                    && from.resource().map(|r| r.as_str()) != Some(me.as_str())
                    && let Some(body) = m.bodies.values().next()
                {
                    arrivals.saw(&format!("xmpp:{}", from.to_bare()), body);
                }
                seen2.lock().unwrap_or_else(|e| e.into_inner()).push(Element::from(s));
            }
        });
        Ok(Self { nick: nick.to_owned(), outbound, seen, _link_task: reader, n: 0 })
    }

    async fn send(&self, s: Stanza) -> Result<(), String> {
        self.outbound.send(s).await.map_err(|_| "the XMPP stream closed".to_owned())
    }

    /// Waits (60 s at most) until a stanza satisfying `pred` has arrived; returns it.
    pub async fn wait(&self, what: &str, pred: impl Fn(&Element) -> bool) -> Result<Element, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(e) = self.seen.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|e| pred(e)) {
                return Ok(e.clone());
            }
            if Instant::now() > deadline {
                return Err(format!("{what}: not seen within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Joins `room` (a MUC JID) under this user's nick and waits for its own presence.
    pub async fn join(&self, room: &str) -> Result<(), String> {
        let occupant = format!("{room}/{}", self.nick);
        let mut p = Presence::available().with_to(Jid::new(&occupant).map_err(|e| e.to_string())?);
        p.payloads.push(
            Element::builder("x", MUC).append(Element::builder("history", MUC).attr(name("maxstanzas"), "0")).build(),
        );
        self.send(Stanza::Presence(p)).await?;
        self.wait_occupant(room, &self.nick.clone()).await
    }

    /// Waits until `nick` is an occupant of `room`.
    pub async fn wait_occupant(&self, room: &str, nick: &str) -> Result<(), String> {
        let from = format!("{room}/{nick}");
        self.wait(&format!("{from} in the room"), |e| {
            e.name() == "presence" && e.attr("from") == Some(from.as_str()) && e.attr("type").is_none()
        })
        .await
        .map(|_| ())
    }

    /// Sends a groupchat message to `room`.
    pub async fn say(&mut self, room: &str, text: &str) -> Result<(), String> {
        self.n += 1;
        let to = BareJid::new(room).map_err(|e| e.to_string())?;
        let mut m = Message::new_with_type(MessageType::Groupchat, Some(Jid::from(to)));
        m.id = Some(connector_xmpp::xmpp_parsers::message::Id(format!("{}-{}", self.nick, self.n)));
        m.bodies.insert(Lang::new(), text.into());
        self.send(Stanza::Message(m)).await
    }

    /// Runs an ad-hoc command (XEP-0050) `node` on `to` and submits `fields` (var, values) in its form.
    pub async fn ad_hoc(&self, to: &str, node: &str, fields: &[(&str, &[&str])]) -> Result<(), String> {
        let execute =
            Element::builder("command", COMMANDS).attr(name("node"), node).attr(name("action"), "execute").build();
        let answer = self.iq(to, "bench-exec", execute).await?;
        let session = answer
            .get_child("command", COMMANDS)
            .and_then(|c| c.attr("sessionid"))
            .ok_or_else(|| format!("{node} on {to}: no session in {}", String::from(&answer)))?
            .to_owned();
        let mut form = Element::builder("x", DATA).attr(name("type"), "submit");
        for (var, values) in fields {
            let mut f = Element::builder("field", DATA).attr(name("var"), *var);
            for v in *values {
                f = f.append(Element::builder("value", DATA).append(*v));
            }
            form = form.append(f);
        }
        let submit = Element::builder("command", COMMANDS)
            .attr(name("node"), node)
            .attr(name("sessionid"), session)
            .append(form)
            .build();
        let done = self.iq(to, "bench-submit", submit).await?;
        match done.get_child("command", COMMANDS).and_then(|c| c.attr("status")) {
            Some("completed") => Ok(()),
            _ => Err(format!("{node} on {to} did not complete: {}", String::from(&done))),
        }
    }

    async fn iq(&self, to: &str, id: &str, payload: Element) -> Result<Element, String> {
        let iq = Element::builder("iq", "jabber:client")
            .attr(name("type"), "set")
            .attr(name("id"), id)
            .attr(name("to"), to)
            .append(payload)
            .build();
        self.send(Stanza::Iq(Iq::try_from(iq).map_err(|e| format!("iq to {to}: {e}"))?)).await?;
        let answer =
            self.wait(&format!("the answer to {id}"), |e| e.name() == "iq" && e.attr("id") == Some(id)).await?;
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).retain(|e| !(e.name() == "iq" && e.attr("id") == Some(id)));
        match answer.attr("type") {
            Some("result") => Ok(answer),
            _ => Err(format!("{id}: {}", String::from(&answer))),
        }
    }
}
