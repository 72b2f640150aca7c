//! Nothing lost, nothing doubled when Prosody restarts mid-stream: the account reconnects, rejoins, catches up
//! from the room's archive (XEP-0313), and a delivery the core hands over again after the lost stream is looked
//! up there (by its origin-id) before it is sent a second time. Both modes, against a real Prosody.

mod common;

use bridge_api::{Account, AccountContext, AccountId, Connector};
use common::{ROOM, RecordingRoute, archive_bodies, join, message_event, say, send_like_the_core};
use connector_xmpp::client::Transport;
use connector_xmpp::{Config, XmppConnector};
use harness::Prosody;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How many messages the MLS side sends while the server restarts.
const OUT: u8 = 24;

async fn restart_mid_stream(component: bool) {
    let _ = tracing_subscriber::fmt().with_env_filter("connector_xmpp=debug").with_test_writer().try_init();
    let (mut server, config) = common::server_and_config(component);
    let id = AccountId::new("xmpp", "r").expect("account id");
    let route = RecordingRoute::default();
    let ctx = AccountContext::new(id.clone(), route.clone(), "bridge.test");
    let account: Arc<dyn Account> = XmppConnector.start(id.clone(), config, ctx).await.expect("start");
    common::joined(account.as_ref()).await;
    let alice = join(&server, "alice").await.expect("alice joins");
    say(&alice, "a-1", "in-before").await.expect("alice speaks");

    // The MLS side sends a stream of messages; the server restarts in the middle of it.
    let accepted = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (account, route, accepted, id) = (account.clone(), route.clone(), accepted.clone(), id.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for n in 1..=OUT {
                let event = message_event(id.clone(), ROOM, n, "bob", &format!("out-{n}"));
                match send_like_the_core(account.as_ref(), &event, Duration::from_secs(60)).await {
                    Ok(d) => {
                        route.delivered(&event, &d.native_ids);
                        accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failures.push(format!("out-{n}: {e}")),
                }
            }
            failures
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while accepted.load(Ordering::SeqCst) < usize::from(OUT) / 3 {
        assert!(tokio::time::Instant::now() < deadline, "the first messages were not delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.restart().expect("prosody restarts on the same ports and data");
    let failures = tokio::time::timeout(Duration::from_secs(120), sender).await.expect("in time").expect("task");
    assert!(failures.is_empty(), "every message is delivered after the restart: {failures:?}");

    // Alice (her stream died with the server) comes back and speaks again.
    let alice = join(&server, "alice").await.expect("alice joins again");
    say(&alice, "a-2", "in-after").await.expect("alice speaks");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !route.bodies().iter().any(|b| b == "in-after") {
        assert!(tokio::time::Instant::now() < deadline, "in-after never reached the core: {:?}", route.bodies());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let archive = archive_bodies(&server, "alice").await.expect("the room's archive");
    for n in 1..=OUT {
        let body = format!("out-{n}");
        // Client mode relays as `name: text`.
        let copies = archive.iter().filter(|b| **b == body || b.ends_with(&format!(": {body}"))).count();
        assert_eq!(copies, 1, "{body} is in the room once: {archive:?}");
    }
    let inbound = route.bodies();
    for body in ["in-before", "in-after"] {
        assert_eq!(inbound.iter().filter(|b| *b == body).count(), 1, "{body} reached the core once: {inbound:?}");
    }
    assert!(inbound.iter().all(|b| !b.contains("out-")), "the bridge's own messages came back: {inbound:?}");
    account.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_a_prosody_restart_mid_stream_loses_nothing_and_doubles_nothing() {
    restart_mid_stream(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_mode_a_prosody_restart_mid_stream_loses_nothing_and_doubles_nothing() {
    restart_mid_stream(true).await;
}

/// More than one archive page missed (the account was away while 120 messages were said): the catch-up pages
/// back (RSM) to the last message the core knows and passes on every one of them once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_longer_than_one_archive_page_misses_nothing() {
    const MISSED: usize = 120;
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    server.register("alice", "pw-alice").expect("register");
    server.register("bridge", "pw-bridge").expect("register");
    let id = AccountId::new("xmpp", "p").expect("account id");
    let mut config = Config::client(server.c2s_addr(), "bridge@localhost", "pw-bridge");
    config.transport = Transport::InsecureTcp;
    let route = RecordingRoute::default();
    let start = |route: &RecordingRoute| {
        let ctx = AccountContext::new(id.clone(), route.clone(), "bridge.test");
        XmppConnector.start(id.clone(), config.clone(), ctx)
    };
    let account = start(&route).await.expect("start");
    common::joined(account.as_ref()).await;
    let alice = join(&server, "alice").await.expect("alice joins");
    say(&alice, "anchor", "anchor").await.expect("alice speaks");
    let until = |n: usize| {
        let route = route.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while route.bodies().len() < n && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            route.bodies()
        }
    };
    assert_eq!(until(1).await, ["anchor"]);
    account.shutdown().await;
    // Wait until the room no longer has the bridge as an occupant, so nothing below reaches it live.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for n in 1..=MISSED {
        say(&alice, &format!("m-{n}"), &format!("missed {n}")).await.expect("alice speaks");
    }
    // Every message is in the archive before the bridge comes back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !archive_bodies(&server, "alice").await.expect("archive").iter().any(|b| *b == format!("missed {MISSED}")) {
        assert!(tokio::time::Instant::now() < deadline, "the archive took alice's messages");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let account = start(&route).await.expect("start again");
    common::joined(account.as_ref()).await;
    let got = until(1 + MISSED).await;
    let expected: Vec<String> =
        std::iter::once("anchor".to_owned()).chain((1..=MISSED).map(|n| format!("missed {n}"))).collect();
    assert_eq!(got, expected, "each missed message once, in order");
    account.shutdown().await;
}

/// Said live while the bridge reads the room's archive after a rejoin: held until what the archive replays has
/// been passed on, and beyond the hold (lowered to 2 here) read back from the archive after it — everything once,
/// in order. A correction said during the walk lands on the message the walk replays (held as it came, it is
/// read after the replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_said_during_a_catch_up_follows_it_once_in_order_even_beyond_the_hold() {
    const MISSED: usize = 300;
    const LIVE: usize = 30;
    let _ = tracing_subscriber::fmt().with_env_filter("connector_xmpp=info").with_test_writer().try_init();
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    server.register("alice", "pw-alice").expect("register");
    server.register("bridge", "pw-bridge").expect("register");
    let id = AccountId::new("xmpp", "h").expect("account id");
    let mut config = Config::client(server.c2s_addr(), "bridge@localhost", "pw-bridge");
    config.transport = Transport::InsecureTcp;
    config.catchup_hold = 2;
    let route = RecordingRoute::default();
    let start = |route: &RecordingRoute| {
        let ctx = AccountContext::new(id.clone(), route.clone(), "bridge.test");
        XmppConnector.start(id.clone(), config.clone(), ctx)
    };
    // What was said: messages and corrections (occupants' joins are events too).
    let said = |route: &RecordingRoute| -> Vec<bridge_api::InboundEvent> {
        let said = |e: &bridge_api::InboundEvent| {
            matches!(e.kind, bridge_api::InboundKind::Message { .. } | bridge_api::InboundKind::Edit { .. })
        };
        route.events().into_iter().filter(said).collect()
    };
    let until = |n: usize| {
        let route = route.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while said(&route).len() < n && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Anything more (a duplicate) would show up meanwhile.
            tokio::time::sleep(Duration::from_secs(1)).await;
            said(&route)
        }
    };
    let account = start(&route).await.expect("start");
    common::joined(account.as_ref()).await;
    let mut alice = join(&server, "alice").await.expect("alice joins");
    // Read what alice's stream receives (her own messages come back), or its stream stalls once the queue is full.
    let mut inbound = std::mem::replace(&mut alice.inbound, tokio::sync::mpsc::channel(1).1);
    tokio::spawn(async move { while inbound.recv().await.is_some() {} });
    say(&alice, "anchor", "anchor").await.expect("alice speaks");
    assert_eq!(until(1).await.len(), 1);
    account.shutdown().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    say(&alice, "orig", "original").await.expect("alice speaks");
    for n in 1..=MISSED {
        say(&alice, &format!("m-{n}"), &format!("missed {n}")).await.expect("alice speaks");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !archive_bodies(&server, "alice").await.expect("archive").iter().any(|b| *b == format!("missed {MISSED}")) {
        assert!(tokio::time::Instant::now() < deadline, "the archive took alice's messages");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let account = start(&route).await.expect("start again");
    common::joined(account.as_ref()).await;
    // The bridge is reading the archive (seven pages) now.
    correct(&alice, "fix", "orig", "corrected").await.expect("alice corrects");
    for n in 1..=LIVE {
        say(&alice, &format!("l-{n}"), &format!("live {n}")).await.expect("alice speaks");
    }
    let events = until(3 + MISSED + LIVE).await;
    let expected: Vec<String> = ["anchor", "original"]
        .into_iter()
        .map(str::to_owned)
        .chain((1..=MISSED).map(|n| format!("missed {n}")))
        .chain(std::iter::once("corrected".to_owned()))
        .chain((1..=LIVE).map(|n| format!("live {n}")))
        .collect();
    let got: Vec<String> = events
        .iter()
        .map(|e| match &e.kind {
            bridge_api::InboundKind::Message { draft, .. } | bridge_api::InboundKind::Edit { draft, .. } => {
                draft.body.clone()
            }
            _ => unreachable!("only messages and corrections"),
        })
        .collect();
    assert_eq!(got, expected, "each message once, in order, the correction after what it corrects");
    let original = events[1].native_id.clone().expect("the original's stanza-id");
    let edit = &events[2 + MISSED];
    assert!(
        matches!(&edit.kind, bridge_api::InboundKind::Edit { target, .. } if *target == original),
        "the correction names the replayed original: {edit:?}"
    );
    account.shutdown().await;
}

/// `link`'s user corrects their message `original` (its `id`).
async fn correct(link: &connector_xmpp::link::Link, id: &str, original: &str, text: &str) -> Result<(), String> {
    use minidom::Element;
    use minidom::rxml::xml_ncname;
    use xmpp_parsers::message::{Id, Lang, Message, MessageType};
    let room = xmpp_parsers::jid::BareJid::new(ROOM).map_err(|e| e.to_string())?;
    let mut m = Message::new_with_type(MessageType::Groupchat, Some(xmpp_parsers::jid::Jid::from(room)));
    m.id = Some(Id(id.to_owned()));
    m.bodies.insert(Lang::new(), text.to_owned());
    m.payloads.push(Element::builder("origin-id", xmpp_parsers::ns::SID).attr(xml_ncname!("id").into(), id).build());
    m.payloads.push(
        Element::builder("replace", xmpp_parsers::ns::MESSAGE_CORRECT).attr(xml_ncname!("id").into(), original).build(),
    );
    link.outbound.send(xmpp_parsers::stanza::Stanza::Message(m)).await.map_err(|e| e.to_string())
}

/// A room without an archive (its service refuses archive queries): the catch-up ends at once instead of holding
/// sends back, and messages flow both ways, before and after a server restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_without_an_archive_still_relays_across_a_restart() {
    let _ = tracing_subscriber::fmt().with_env_filter("connector_xmpp=debug").with_test_writer().try_init();
    let mut server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    server.register("alice", "pw-alice").expect("register");
    server.register("bridge", "pw-bridge").expect("register");
    let room = format!("plain@{}", server.nomam_domain);
    let id = AccountId::new("xmpp", "q").expect("account id");
    let mut config = Config::client(server.c2s_addr(), "bridge@localhost", "pw-bridge");
    config.transport = Transport::InsecureTcp;
    let route = RecordingRoute::default();
    let ctx = AccountContext::new(id.clone(), route.clone(), "bridge.test");
    let account = XmppConnector.start(id.clone(), config, ctx).await.expect("start");
    let mut health = account.health();
    for round in 1..=2u8 {
        while *health.borrow_and_update() != bridge_api::Health::Connected {
            tokio::time::timeout(Duration::from_secs(30), health.changed()).await.expect("connected").expect("health");
        }
        account.join(&room).await.expect("the bridge joins");
        let alice = common::join_room(&server, "alice", &room).await.expect("alice joins");
        let event = message_event(id.clone(), &room, round, "bob", &format!("out-{round}"));
        let started = tokio::time::Instant::now();
        send_like_the_core(account.as_ref(), &event, Duration::from_secs(30)).await.expect("delivered");
        assert!(started.elapsed() < Duration::from_secs(5), "the send waited {:?}", started.elapsed());
        common::say_in(&alice, &room, &format!("a-{round}"), &format!("in-{round}")).await.expect("alice speaks");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !route.bodies().contains(&format!("in-{round}")) {
            assert!(tokio::time::Instant::now() < deadline, "in-{round} reached the core: {:?}", route.bodies());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if round == 1 {
            server.restart().expect("prosody restarts");
        }
    }
    account.shutdown().await;
}
