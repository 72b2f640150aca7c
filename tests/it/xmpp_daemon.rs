//! End to end with XMPP: a MUC on a real Prosody ⇄ the daemon (client-mode XMPP account, portal, MLS group, its own
//! MIMI hub) ⇄ a native MLS client holding its own keys (the real `mimi-client` binary), and an IRC channel on a
//! real ngIRCd linked to the same portal. The XMPP user is a real client (a tokio-xmpp stream).

use crate::client_support::client;
use connector_xmpp::client::{Login, Transport, connect};
use connector_xmpp::link::Link;
use connector_xmpp::minidom::Element;
use connector_xmpp::minidom::rxml::xml_ncname;
use connector_xmpp::ns;
use connector_xmpp::xmpp_parsers::jid::{BareJid, Jid};
use connector_xmpp::xmpp_parsers::message::{Id, Lang, Message, MessageType};
use connector_xmpp::xmpp_parsers::presence::Presence;
use connector_xmpp::xmpp_parsers::stanza::Stanza;
use harness::{IrcClient, Ngircd, Prosody};
use mimi_bridge::config::Config;
use mimi_bridge::daemon::Daemon;
use std::time::Duration;

pub(crate) const ROOM_JID: &str = "lobby@muc.localhost";
const PORTAL: &str = "mimi://bridge.test/r/lobby";

fn messages(listen_json: &str) -> Vec<serde_json::Value> {
    listen_json.lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
}

fn listen(state: &std::path::Path, server: &str, secs: &str) -> Vec<serde_json::Value> {
    messages(&client(state, server, &["listen", PORTAL, "--json", "--count", "1", "--timeout", secs]))
}

/// An XMPP user in the MUC.
pub(crate) struct XUser {
    pub(crate) link: Link,
    nick: String,
    n: u32,
}

/// The login of the test user `nick` (password `pw`) with `resource`.
pub(crate) fn login(prosody: &Prosody, nick: &str, resource: &str) -> Login {
    Login {
        server: prosody.c2s_addr(),
        jid: Jid::new(&format!("{nick}@localhost")).expect("jid"),
        password: "pw".into(),
        transport: Transport::InsecureTcp,
        resource: resource.into(),
    }
}

impl XUser {
    pub(crate) async fn join(prosody: &Prosody, nick: &str) -> Self {
        prosody.register(nick, "pw").expect("register");
        let link = connect(&login(prosody, nick, "e2e")).await.expect("the XMPP user logs in");
        let to = BareJid::new(ROOM_JID).expect("room").with_resource_str(nick).expect("occupant");
        let mut p = Presence::available().with_to(Jid::from(to));
        p.payloads.push(Element::builder("x", connector_xmpp::xmpp_parsers::ns::MUC).build());
        link.outbound.send(Stanza::Presence(p)).await.expect("join");
        let mut u = Self { link, nick: nick.into(), n: 0 };
        u.next(|s| matches!(s, Stanza::Presence(p) if p.from.as_ref().and_then(|f| f.resource()).map(|r| r.as_str()) == Some(nick)))
            .await;
        u
    }

    /// Sends a groupchat message with `payloads`; returns its id attribute and the room's stanza-id.
    pub(crate) async fn send(&mut self, body: Option<&str>, payloads: Vec<Element>) -> (String, String) {
        self.n += 1;
        let id = format!("{}-{}", self.nick, self.n);
        let mut m =
            Message::new_with_type(MessageType::Groupchat, Some(Jid::from(BareJid::new(ROOM_JID).expect("room"))));
        m.id = Some(Id(id.clone()));
        if let Some(b) = body {
            m.bodies.insert(Lang::new(), b.into());
        }
        m.payloads = payloads;
        self.link.outbound.send(Stanza::Message(m)).await.expect("send");
        let own = id.clone();
        let refl = self
            .next(move |s| matches!(s, Stanza::Message(m) if m.id.as_ref().map(|i| i.0.as_str()) == Some(own.as_str())))
            .await;
        (id, stanza_id(&refl).expect("the room gives a stanza-id"))
    }

    /// The next stanza matching `pred` (others are skipped), within 20 s.
    async fn next(&mut self, pred: impl Fn(&Stanza) -> bool) -> Stanza {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let s = tokio::time::timeout_at(deadline, self.link.inbound.recv())
                .await
                .expect("the expected stanza arrives in time")
                .expect("stream open");
            if pred(&s) {
                return s;
            }
        }
    }

    /// The next groupchat message from the bridge (`mimi-bridge`).
    async fn next_from_bridge(&mut self) -> Message {
        match self
            .next(|s| matches!(s, Stanza::Message(m) if m.from.as_ref().and_then(|f| f.resource()).map(|r| r.as_str()) == Some("mimi-bridge")))
            .await
        {
            Stanza::Message(m) => m,
            _ => unreachable!("matched a message"),
        }
    }
}

fn stanza_id(s: &Stanza) -> Option<String> {
    let Stanza::Message(m) = s else { return None };
    m.payloads.iter().find(|p| p.is("stanza-id", connector_xmpp::xmpp_parsers::ns::SID))?.attr("id").map(str::to_owned)
}

fn body(m: &Message) -> String {
    m.bodies.values().next().cloned().unwrap_or_default()
}

/// A daemon config in `dir` with `accounts` (TOML tables) and portal `lobby` linked to `legs`.
fn daemon_config(dir: &std::path::Path, accounts: &str, legs: &str) -> Config {
    let text = format!(
        "[bridge]\ndomain = \"bridge.test\"\ndata_dir = {:?}\n\n[mimi]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \
         \"127.0.0.1:0\"\n\n{accounts}\n[[portal]]\nname = \"lobby\"\nlegs = [{legs}]\n",
        dir.join("data").display().to_string(),
    );
    let cfg_path = dir.join("config.toml");
    std::fs::write(&cfg_path, &text).expect("config");
    Config::parse(&cfg_path, &text).expect("valid config")
}

/// The `[xmpp.t]` client-mode table for the account `bridge@localhost` (password `bridge-pw`).
fn client_account(prosody: &Prosody) -> String {
    format!(
        "[xmpp.t]\nmode = \"client\"\nserver = \"{}\"\njid = \"bridge@localhost\"\npassword = \"bridge-pw\"\n\
         transport = \"insecure-tcp\"\n",
        prosody.c2s_addr()
    )
}

fn el(name: &str, ns: &str, id: &str) -> Element {
    Element::builder(name, ns).attr(xml_ncname!("id").into(), id).build()
}

#[test]
fn an_xmpp_muc_a_native_mls_client_and_an_irc_channel_share_one_portal() {
    let prosody = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    let ircd = Ngircd::start().expect("ngircd starts (installed by ./scripts/test)");
    prosody.register("bridge", "bridge-pw").expect("register the bridge");
    let dir = tempfile::tempdir().expect("tempdir");
    let accounts = format!("{}[irc.t]\nserver = \"{}\"\nnick = \"bridge\"\n", client_account(&prosody), ircd.addr());
    let legs =
        format!("{{ account = \"xmpp.t\", room = \"{ROOM_JID}\" }}, {{ account = \"irc.t\", room = \"#lobby\" }}");
    let cfg = daemon_config(dir.path(), &accounts, &legs);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let daemon = rt.block_on(Daemon::start(&cfg, &mimi_bridge::networks::built_in())).expect("daemon starts");
    let server = format!("http://{}", daemon.mimi_addr());
    let alice = dir.path().join("alice");
    assert_eq!(client(&alice, &server, &["register", "alice"]).trim(), "mimi://bridge.test/u/alice");
    client(&alice, &server, &["join", PORTAL]);
    let mut irc = IrcClient::connect(&ircd.addr(), "ircbob").expect("irc user");
    irc.join("#lobby").expect("joins");
    let mut x = rt.block_on(XUser::join(&prosody, "xavier"));

    // XMPP → MLS (and IRC): say it until the bridge, joining in the background, hears it.
    let mut first = None;
    for i in 0..20 {
        let (id, _) = rt.block_on(x.send(Some(&format!("hello from xmpp {i}")), vec![]));
        if let Some(m) = listen(&alice, &server, "2").into_iter().next() {
            assert!(m["text"].as_str().is_some_and(|t| t.starts_with("hello from xmpp")), "{m}");
            assert!(m.to_string().contains("xmpp.t~lobby%40muc.localhost%2Fxavier"), "the occupant travels: {m}");
            first = Some((id, m["text"].as_str().unwrap_or_default().to_owned()));
            break;
        }
    }
    let (first_id, first_text) = first.expect("the native client heard the XMPP user");
    let line = irc.read_until(|l| l.contains(&first_text)).expect("the IRC channel hears it too");
    assert!(
        line.starts_with(":bridge!") && line.contains("<x\u{200B}avier>"),
        "relayed under the occupant nick: {line}"
    );
    // Drain what the retries may have left.
    while !listen(&alice, &server, "1").is_empty() {}

    // A correction (XEP-0308) becomes a MIMI edit.
    let correction = el("replace", connector_xmpp::xmpp_parsers::ns::MESSAGE_CORRECT, &first_id);
    rt.block_on(x.send(Some("hello from xmpp, corrected"), vec![correction]));
    let m = listen(&alice, &server, "10");
    let m = m.first().expect("the correction arrived");
    assert_eq!(m["text"], "hello from xmpp, corrected", "{m}");
    assert!(m["replaces"].is_string(), "a MIMI edit: {m}");

    // MLS → XMPP: the native client's message, relayed as `alice: text`, with the room's stanza-id.
    let mine = client(&alice, &server, &["send", PORTAL, "hello from mimi"]);
    let got = rt.block_on(x.next_from_bridge());
    assert_eq!(body(&got), "alice: hello from mimi");
    let sid = stanza_id(&Stanza::Message(got.clone())).expect("stanza-id");
    irc.read_until(|l| l.contains("hello from mimi")).expect("IRC hears the native client too");

    // A reply (XEP-0461, with its fallback) to the bridged message becomes a MIMI reply to alice's message.
    let fallback = "> alice: hello from mimi\n";
    let reply = vec![
        el("reply", ns::REPLY, &sid),
        Element::builder("fallback", ns::FALLBACK)
            .attr(xml_ncname!("for").into(), ns::REPLY)
            .append(
                Element::builder("body", ns::FALLBACK)
                    .attr(xml_ncname!("start").into(), "0")
                    .attr(xml_ncname!("end").into(), fallback.chars().count().to_string()),
            )
            .build(),
    ];
    rt.block_on(x.send(Some(&format!("{fallback}nice to meet you")), reply));
    let m = listen(&alice, &server, "10");
    let m = m.first().expect("the reply arrived");
    assert_eq!(m["text"], "nice to meet you", "the fallback quote is cut: {m}");
    assert_eq!(m["in_reply_to"].as_str(), Some(mine.trim()), "a MIMI reply to alice's message: {m}");

    // A reaction (XEP-0444) and a retraction (XEP-0424) reach the group as MIMI messages about their targets.
    let react = Element::builder("reactions", connector_xmpp::xmpp_parsers::ns::REACTIONS)
        .attr(xml_ncname!("id").into(), sid.as_str())
        .append(Element::builder("reaction", connector_xmpp::xmpp_parsers::ns::REACTIONS).append("👍"))
        .build();
    // As clients do (XEP-0444 §5), with a storage hint: Prosody archives (and gives a stanza-id to) bodiless
    // messages only with it.
    rt.block_on(x.send(None, vec![react, Element::builder("store", ns::HINTS).build()]));
    let m = listen(&alice, &server, "10");
    let m = m.first().expect("the reaction arrived");
    assert_eq!(m["text"], "👍", "{m}");
    assert_eq!(m["in_reply_to"].as_str(), Some(mine.trim()), "the reaction names alice's message: {m}");
    assert!(m["disposition"].as_str().is_some_and(|d| d.contains("Reaction")), "{m}");
    let (own_id, own_sid) = rt.block_on(x.send(Some("to be retracted"), vec![]));
    let m = listen(&alice, &server, "10");
    let own_mimi = m.first().expect("the message arrived")["message_id"].as_str().unwrap_or_default().to_owned();
    assert!(!own_id.is_empty() && !own_mimi.is_empty());
    rt.block_on(x.send(Some("retracted"), vec![el("retract", ns::RETRACT, &own_sid)]));
    let m = listen(&alice, &server, "10");
    let m = m.first().expect("the retraction arrived");
    assert_eq!(m["replaces"].as_str(), Some(own_mimi.as_str()), "a MIMI delete replaces the message: {m}");
    assert_eq!(m["text"], "", "with no content: {m}");

    // MLS → XMPP: a reply and an edit from the native side arrive as XEP-0461 and XEP-0308.
    let xmpp_msg = listen_first_id(&alice, &server, &rt, &mut x);
    client(&alice, &server, &["send", PORTAL, "welcome", "--reply-to", &xmpp_msg.0]);
    let got = rt.block_on(x.next_from_bridge());
    let r = got.payloads.iter().find(|p| p.is("reply", ns::REPLY)).expect("a XEP-0461 reply");
    assert_eq!(r.attr("id"), Some(xmpp_msg.1.as_str()), "it names the room's stanza-id of the parent");
    assert!(body(&got).ends_with("alice: welcome"), "{}", body(&got));
    let noon = client(&alice, &server, &["send", PORTAL, "at noon"]);
    let original = rt.block_on(x.next_from_bridge());
    client(&alice, &server, &["send", PORTAL, "at ten", "--edit", noon.trim()]);
    let edit = rt.block_on(x.next_from_bridge());
    let replace = edit
        .payloads
        .iter()
        .find(|p| p.is("replace", connector_xmpp::xmpp_parsers::ns::MESSAGE_CORRECT))
        .expect("XEP-0308");
    assert_eq!(replace.attr("id"), original.id.as_ref().map(|i| i.0.as_str()), "it corrects the original's id");
    assert_eq!(body(&edit), "alice: at ten");

    // IRC → XMPP through the same portal.
    irc.send("PRIVMSG #lobby :hello from irc").expect("send");
    let got = rt.block_on(x.next_from_bridge());
    assert!(body(&got).contains("hello from irc") && body(&got).contains("ircbob"), "{}", body(&got));

    rt.block_on(daemon.shutdown()).expect("clean shutdown");
}

/// Has the XMPP user say something and returns (its MIMI message id as the native client sees it, its stanza-id).
fn listen_first_id(
    alice: &std::path::Path,
    server: &str,
    rt: &tokio::runtime::Runtime,
    x: &mut XUser,
) -> (String, String) {
    let (_, sid) = rt.block_on(x.send(Some("a parent from xmpp"), vec![]));
    let m = listen(alice, server, "10");
    let id = m.first().expect("the message arrived")["message_id"].as_str().unwrap_or_default().to_owned();
    (id, sid)
}

/// Component mode through the daemon: the native MLS user appears in the MUC as an occupant of their own
/// (a puppet with their nick), and the MUC's messages reach the native client.
#[test]
fn component_mode_shows_the_native_user_as_their_own_occupant() {
    let prosody = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("component.secret");
    std::fs::write(&secret_file, &prosody.component_secret).expect("secret file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let accounts = format!(
        "[xmpp.c]\nmode = \"component\"\nserver = \"{}\"\ndomain = \"{}\"\nsecret_file = {:?}\n",
        prosody.component_addr(),
        prosody.component_domain,
        secret_file.display().to_string(),
    );
    let cfg = daemon_config(dir.path(), &accounts, &format!("{{ account = \"xmpp.c\", room = \"{ROOM_JID}\" }}"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let daemon = rt.block_on(Daemon::start(&cfg, &mimi_bridge::networks::built_in())).expect("daemon starts");
    let server = format!("http://{}", daemon.mimi_addr());
    let alice = dir.path().join("alice");
    client(&alice, &server, &["register", "Alice"]);
    client(&alice, &server, &["join", PORTAL]);
    let mut x = rt.block_on(XUser::join(&prosody, "xavier"));

    // XMPP → MLS.
    let mut heard = false;
    for i in 0..20 {
        rt.block_on(x.send(Some(&format!("hi from xmpp {i}")), vec![]));
        if let Some(m) = listen(&alice, &server, "2").into_iter().next() {
            assert!(m["text"].as_str().is_some_and(|t| t.starts_with("hi from xmpp")), "{m}");
            heard = true;
            break;
        }
    }
    assert!(heard, "the native client heard the XMPP user");

    // MLS → XMPP: from the puppet occupant `Alice`, the text as it is (no relay prefix).
    client(&alice, &server, &["send", PORTAL, "hello as myself"]);
    let got = match rt.block_on(
        x.next(|s| matches!(s, Stanza::Message(m) if m.bodies.values().any(|b| b.contains("hello as myself")))),
    ) {
        Stanza::Message(m) => m,
        _ => unreachable!("matched a message"),
    };
    assert_eq!(got.from.as_ref().and_then(|f| f.resource()).map(|r| r.to_string()).as_deref(), Some("Alice"));
    assert_eq!(body(&got), "hello as myself");
    rt.block_on(daemon.shutdown()).expect("clean shutdown");
}

/// Messages said in the MUC while the daemon was down are bridged once, in order, after it restarts (from the
/// room's archive, after the newest message the bridge had accepted).
#[test]
fn what_the_muc_said_while_the_daemon_was_down_arrives_once_after_restart() {
    let prosody = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    prosody.register("bridge", "bridge-pw").expect("register the bridge");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = daemon_config(
        dir.path(),
        &client_account(&prosody),
        &format!("{{ account = \"xmpp.t\", room = \"{ROOM_JID}\" }}"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let daemon = rt.block_on(Daemon::start(&cfg, &mimi_bridge::networks::built_in())).expect("daemon starts");
    let server = format!("http://{}", daemon.mimi_addr());
    let alice = dir.path().join("alice");
    client(&alice, &server, &["register", "alice"]);
    client(&alice, &server, &["join", PORTAL]);
    let mut x = rt.block_on(XUser::join(&prosody, "xavier"));
    let mut heard = false;
    for i in 0..20 {
        rt.block_on(x.send(Some(&format!("before {i}")), vec![]));
        if !listen(&alice, &server, "2").is_empty() {
            heard = true;
            break;
        }
    }
    assert!(heard, "the bridge relays before the restart");
    while !listen(&alice, &server, "1").is_empty() {}
    rt.block_on(daemon.shutdown()).expect("clean shutdown");

    // While the daemon is down.
    rt.block_on(x.send(Some("while down 1"), vec![]));
    rt.block_on(x.send(Some("while down 2"), vec![]));

    let daemon = rt.block_on(Daemon::start(&cfg, &mimi_bridge::networks::built_in())).expect("daemon restarts");
    let server = format!("http://{}", daemon.mimi_addr());
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(listen(&alice, &server, "3").into_iter().filter_map(|m| m["text"].as_str().map(str::to_owned)));
        if got.len() >= 2 {
            break;
        }
    }
    assert_eq!(got, ["while down 1", "while down 2"], "each once, in order");
    // Nothing else (no old history, no duplicate) follows, and live messages flow again.
    rt.block_on(x.send(Some("after restart"), vec![]));
    let next = listen(&alice, &server, "10");
    assert_eq!(next.first().and_then(|m| m["text"].as_str()), Some("after restart"), "{next:?}");
    rt.block_on(daemon.shutdown()).expect("clean shutdown");
}
