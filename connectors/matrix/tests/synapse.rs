//! The Matrix connector in appservice mode against a real Synapse (started by `tests/harness` on a free port, with
//! the registration the connector writes): the conformance kit (in bot mode too), and a homeserver outage in the
//! middle of sends.
//! Test users are plain Matrix clients driven with reqwest on the client-server API.

use async_trait::async_trait;
use bridge_api::event::{OutboundEvent, OutboundKind};
use bridge_api::{Account, AccountContext, AccountId, Connector, Feature, Health};
use bridge_testkit::{CheckResult, Harness, KitOptions, NativeAction, Observed, TestUser};
use connector_matrix::{Config, MatrixConnector, Mode, registration};
use harness::{MatrixUser, Synapse, SynapseOptions};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;
use common::{Client, Kept, PNG, TXN, await_body, await_delivered, delivered_bodies, enc, router, wait_health};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

const SERVER_NAME: &str = "hs.test";

/// What a test user saw, from one timeline event of someone else.
fn observed(ev: &Value) -> Option<Observed> {
    let from = ev["sender"].as_str()?.to_owned();
    let c = &ev["content"];
    match ev["type"].as_str()? {
        "m.room.message" => {
            if c["m.relates_to"]["rel_type"] == "m.replace" {
                let text = c["m.new_content"]["body"].as_str()?.to_owned();
                let target = c["m.relates_to"]["event_id"].as_str()?.to_owned();
                return Some(Observed::Edit { from, text, target });
            }
            let text = c["body"].as_str()?.to_owned();
            if let Some(to) = c["m.relates_to"]["m.in_reply_to"]["event_id"].as_str() {
                return Some(Observed::Reply { from, text, to: to.to_owned() });
            }
            let native_id = ev["event_id"].as_str().map(str::to_owned);
            Some(Observed::Message { from, text, native_id, notice: c["msgtype"] == "m.notice" })
        }
        "m.reaction" => Some(Observed::Reaction {
            from,
            key: c["m.relates_to"]["key"].as_str()?.to_owned(),
            target: c["m.relates_to"]["event_id"].as_str()?.to_owned(),
        }),
        "m.room.redaction" => {
            let target = ev["redacts"].as_str().or(c["redacts"].as_str())?.to_owned();
            Some(Observed::Delete { from, target })
        }
        _ => None,
    }
}

/// A Synapse with the connector's registration, and a public room made by its owner.
struct Setup {
    hs: Synapse,
    config: Config,
    room: String,
    owner: MatrixUser,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    setup_with(|_| {})
}

/// [`setup`], with the config changed by `edit` before the registration is written.
fn setup_with(edit: impl FnOnce(&mut Config)) -> Setup {
    setup_registered(edit, |yaml| yaml)
}

/// [`setup_with`], with the registration the homeserver is given changed by `registration`.
fn setup_registered(edit: impl FnOnce(&mut Config), registration: impl FnOnce(String) -> String) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("127.0.0.1:{}", harness::free_port().expect("port")).parse().expect("addr");
    let mut config = Config {
        mode: Mode::Appservice,
        homeserver_url: String::new(),
        server_name: SERVER_NAME.into(),
        listen: Some(listen),
        url: None,
        registration_id: "mimi-bridge-test".into(),
        ghost_prefix: "mimi_".into(),
        bot_localpart: "mimi-bridge".into(),
        as_token: registration::random_token(),
        hs_token: registration::random_token(),
        password: None,
        access_token: None,
        relay_format: "{name}: {text}".into(),
        store_passphrase: None,
        encryption: true,
    };
    edit(&mut config);
    let reg = dir.path().join("registration.yaml");
    std::fs::write(&reg, registration(registration::registration_yaml(&config))).expect("write registration");
    let opts = SynapseOptions { appservice_registrations: vec![reg], server_name: Some(SERVER_NAME.into()) };
    let hs = Synapse::start_with(opts).expect("synapse starts (installed by ./scripts/test)");
    config.homeserver_url = hs.url();
    let owner = hs.register_user("owner").expect("owner");
    let (status, room) = hs
        .request(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&owner.access_token),
            Some(&json!({"preset": "public_chat", "name": "kit"})),
        )
        .expect("createRoom");
    assert_eq!(status, 200, "{room}");
    let room = room["room_id"].as_str().expect("room id").to_owned();
    Setup { hs, config, room, owner, _dir: dir }
}

struct MatrixHarness {
    s: Setup,
    users: HashMap<String, Client>,
    last_seen_by_bridge: Option<Value>,
    /// Bot mode: the account's state directory (its session and keys).
    state: Option<tempfile::TempDir>,
}

impl MatrixHarness {
    fn user(&mut self, u: &TestUser) -> Result<&mut Client, String> {
        self.users.get_mut(&u.native_id).ok_or_else(|| format!("no user {}", u.native_id))
    }
}

#[async_trait]
impl Harness for MatrixHarness {
    fn account_id(&self) -> AccountId {
        AccountId::parse("matrix.kit").expect("account id")
    }

    async fn start_account(&mut self, ctx: AccountContext) -> Result<Arc<dyn Account>, String> {
        let ctx = match &self.state {
            Some(dir) => ctx.with_state_dir(dir.path()),
            None => ctx,
        };
        MatrixConnector::with_axum_serve()
            .start(self.account_id(), self.s.config.clone(), ctx)
            .await
            .map_err(|e| e.to_string())
    }

    fn room(&self) -> String {
        self.s.room.clone()
    }

    async fn create_user(&mut self, name: &str) -> Result<TestUser, String> {
        let user = self.s.hs.register_user(name).map_err(|e| e.to_string())?;
        let mut c = Client::new(&self.s.hs.url(), user.clone());
        c.join(&self.s.room).await?;
        c.sync(&self.s.room, Duration::ZERO).await?;
        self.users.insert(user.user_id.clone(), c);
        Ok(TestUser { name: name.into(), native_id: user.user_id })
    }

    async fn act(&mut self, user: &TestUser, action: NativeAction) -> Result<Option<String>, String> {
        let room = self.s.room.clone();
        let c = self.user(user)?;
        let (ty, content) = match action {
            NativeAction::Message { text } => ("m.room.message", json!({"msgtype": "m.text", "body": text})),
            NativeAction::Reply { to, text } => (
                "m.room.message",
                json!({"msgtype": "m.text", "body": text, "m.relates_to": {"m.in_reply_to": {"event_id": to}}}),
            ),
            NativeAction::Edit { target, text } => (
                "m.room.message",
                json!({"msgtype": "m.text", "body": format!("* {text}"),
                       "m.new_content": {"msgtype": "m.text", "body": text},
                       "m.relates_to": {"rel_type": "m.replace", "event_id": target}}),
            ),
            NativeAction::React { target, key } => {
                ("m.reaction", json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}}))
            }
            NativeAction::Delete { target } => {
                let txn = TXN.fetch_add(1, Ordering::SeqCst);
                let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/r{txn}", enc(&room), enc(&target));
                let v = c.call(reqwest::Method::PUT, &path, Some(json!({}))).await?;
                return Ok(v["event_id"].as_str().map(str::to_owned));
            }
        };
        let id = c.send(&room, ty, content.clone()).await?;
        self.last_seen_by_bridge = Some(json!({
            "type": ty, "event_id": id, "sender": user.native_id, "room_id": room,
            "origin_server_ts": 1, "content": content,
        }));
        Ok(Some(id))
    }

    async fn observe(&mut self, user: &TestUser, wait: Duration) -> Result<Vec<Observed>, String> {
        let room = self.s.room.clone();
        let me = user.native_id.clone();
        let c = self.user(user)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let events = c.sync(&room, left).await?;
            let seen: Vec<Observed> =
                events.iter().filter(|e| e["sender"] != me.as_str()).filter_map(observed).collect();
            if !seen.is_empty() || left.is_zero() {
                return Ok(seen);
            }
        }
    }

    /// Synapse retries a transaction whose answer was lost; the retry of the last event the test user sent is
    /// made here with a new transaction id, so what is checked is the core's deduplication by event id (a
    /// transaction id seen before is tested in `server_tests.rs` and by the daemon test).
    async fn redeliver_last(&mut self) -> Result<bool, String> {
        if self.s.config.mode == Mode::Bot {
            // A bot reads by `/sync` from its own saved position: the homeserver never hands an event again.
            return Ok(false);
        }
        let ev = self.last_seen_by_bridge.clone().ok_or("nothing sent yet")?;
        let url = format!(
            "http://{}/_matrix/app/v1/transactions/redeliver-{}",
            self.s.config.listen.expect("an appservice listens"),
            TXN.fetch_add(1, Ordering::SeqCst)
        );
        let resp = reqwest::Client::new()
            .put(url)
            .bearer_auth(&self.s.config.hs_token)
            .json(&json!({"events": [ev]}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("redelivery answered {}", resp.status()));
        }
        Ok(true)
    }

    /// Bot mode: Synapse restarted under the bot's `/sync` long-poll.
    async fn drop_bridge_connection(&mut self) -> Result<(), String> {
        if self.s.config.mode != Mode::Bot {
            return Err("an appservice has no connection to drop (see matrix_homeserver_outage_*)".into());
        }
        self.s.hs.restart().map_err(|e| e.to_string())
    }

    /// Bot mode: another network's reaction is the bot's notice (`bob reacted with 👍`).
    fn degraded_contains(&self, feature: Feature, event: &OutboundEvent) -> Option<String> {
        match (feature, &event.kind) {
            (Feature::Reactions, OutboundKind::ReactionAdd { key, .. }) => Some(format!("reacted with {key}")),
            _ => None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_appservice_passes_the_conformance_kit_against_synapse() {
    let mut h = MatrixHarness { s: setup(), users: HashMap::new(), last_seen_by_bridge: None, state: None };
    let opts = KitOptions {
        skip: vec![(
            "reconnect",
            "an appservice holds no connection the server could drop; homeserver outages are covered by \
             matrix_homeserver_outage_delays_sends_and_loses_nothing",
        )],
        ..KitOptions::default()
    };
    let report = bridge_testkit::run(&mut h, opts).await;
    println!("{report}");
    report.assert_passed();
    let skipped: Vec<&str> =
        report.checks.iter().filter(|(_, r)| matches!(r, CheckResult::Skipped(_))).map(|(n, _)| n.as_str()).collect();
    assert_eq!(skipped, ["reconnect"], "only reconnect is skipped");
}

/// Bot mode through the same kit: one ordinary account (its registration device logged out, so that its own login
/// is its one device) joins the public room and relays the other side as `name: text`; the other side's reactions
/// arrive as the bot's notices, as its capabilities say, and for the reconnect check Synapse is restarted under
/// its `/sync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_bot_mode_passes_the_conformance_kit_against_synapse() {
    let mut s = setup();
    s.hs.register_bot_account("relay").expect("bot account");
    s.config = Config {
        mode: Mode::Bot,
        listen: None,
        url: None,
        as_token: String::new(),
        hs_token: String::new(),
        bot_localpart: "relay".into(),
        password: Some("pw-relay".into()),
        ..s.config
    };
    s.config.check().expect("a valid bot config");
    let state = tempfile::tempdir().expect("state dir");
    let mut h = MatrixHarness { s, users: HashMap::new(), last_seen_by_bridge: None, state: Some(state) };
    let report = bridge_testkit::run(&mut h, KitOptions::default()).await;
    println!("{report}");
    report.assert_passed();
    let skipped: Vec<&str> =
        report.checks.iter().filter(|(_, r)| matches!(r, CheckResult::Skipped(_))).map(|(n, _)| n.as_str()).collect();
    assert_eq!(skipped, ["dedup"], "only dedup is skipped: a bot's `/sync` never hands an event twice");
}

/// Wrong `as_token`: health says the credentials are bad, with the homeserver's reason, and it does not retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_as_token_is_reported_as_bad_credentials() {
    let s = setup();
    let mut config = s.config.clone();
    config.as_token = "wrong".into();
    let (router, _dir) = router().await;
    let id = AccountId::parse("matrix.bad").expect("id");
    let account = MatrixConnector::with_axum_serve()
        .start(id.clone(), config, AccountContext::new(id, router.clone(), "b.test"))
        .await
        .expect("start returns at once");
    wait_health(&account, |h| matches!(h, Health::BadCredentials { .. }), "bad credentials").await;
    let h = account.health().borrow().clone();
    assert!(matches!(&h, Health::BadCredentials { reason } if reason.contains("M_UNKNOWN_TOKEN")), "{h:?}");
    router.shutdown().await;
}

/// A registration whose `url` the homeserver cannot reach: the ping fails, health says why, and the account keeps
/// trying (backing off) instead of pretending to be connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_homeserver_that_cannot_reach_the_appservice_is_reported() {
    let nowhere = harness::free_port().expect("port");
    let s = setup_with(|c| c.url = Some(format!("http://127.0.0.1:{nowhere}")));
    let (router, _dir) = router().await;
    let id = AccountId::parse("matrix.unreachable").expect("id");
    let account = MatrixConnector::with_axum_serve()
        .start(id.clone(), s.config.clone(), AccountContext::new(id, router.clone(), "b.test"))
        .await
        .expect("start returns at once");
    wait_health(&account, |h| matches!(h, Health::BackingOff { .. }), "backing off").await;
    let h = account.health().borrow().clone();
    println!("{h:?}");
    let want = format!("the homeserver cannot reach the appservice at http://127.0.0.1:{nowhere}");
    assert!(
        matches!(&h, Health::BackingOff { reason, .. } if reason.contains(&want) && reason.contains("M_CONNECTION_FAILED")),
        "{h:?}"
    );
    router.shutdown().await;
}

/// A ghost kicked from the room is not rejoined: what it would send is refused and the sender told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_ghost_is_not_rejoined() {
    use bridge_api::event::{InboundKind, MessageDraft, OutboundKind};
    let s = setup();
    let sl = slice(&s).await;
    let say = |word: &'static str| {
        let lb = sl.lb.clone();
        async move {
            let kind = InboundKind::Message { draft: MessageDraft::plain(word), reply_to: None };
            lb.say_with_id("#lb", "alice", word, kind).await.expect("accepted");
        }
    };
    say("first").await;
    let creator = Client::new(&s.hs.url(), s.owner.clone());
    let first = await_body(&creator, &s.room, "first").await;
    let ghost = first["sender"].as_str().expect("sender").to_owned();
    // The room's creator kicks the ghost.
    let path = format!("/_matrix/client/v3/rooms/{}/kick", enc(&s.room));
    creator.call(reqwest::Method::POST, &path, Some(json!({"user_id": ghost, "reason": "test"}))).await.expect("kick");
    // The portal hears of it, from the room's creator.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !sl.lb.delivered().iter().any(|e| {
        matches!(&e.kind, OutboundKind::Message { draft, .. } if draft.body == "removed alice from the Matrix room: test")
    }) {
        assert!(tokio::time::Instant::now() < deadline, "no notice of the kick: {:?}", sl.lb.delivered());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The next message is refused, not sent by a rejoined ghost (whether or not the bridge has seen the kick yet).
    say("second").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let notice = sl.lb.delivered().into_iter().find_map(|e| match e.kind {
            OutboundKind::Message { draft, .. } if draft.body.contains("not delivered") => Some(draft.body),
            _ => None,
        });
        if let Some(n) = notice {
            assert!(n.contains("does not rejoin"), "{n}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the sender was never told");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let members = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&s.room));
    let joined = creator.call(reqwest::Method::GET, &members, None).await.expect("members");
    assert!(joined["joined"].get(&ghost).is_none(), "the ghost stayed out: {joined}");
    sl.router.shutdown().await;
}

/// A router, a loopback leg and the Matrix account linked into one portal, the account connected.
struct Slice {
    router: bridge_core::router::RouterHandle,
    lb: Arc<bridge_testkit::loopback::LoopbackNetwork>,
    account: Arc<dyn Account>,
    _dir: tempfile::TempDir,
}

async fn slice(s: &Setup) -> Slice {
    use bridge_core::repo::{MlsIdentity, PortalRecord};
    use bridge_testkit::loopback::LoopbackNetwork;
    let (router, dir) = router().await;
    let lb_id = AccountId::parse("lb.other").expect("id");
    let lb = LoopbackNetwork::new(lb_id.clone(), AccountContext::new(lb_id, router.clone(), "b.test"));
    router.add_account(lb.clone());
    let id = AccountId::parse("matrix.hs").expect("id");
    let account = MatrixConnector::with_axum_serve()
        .start(id.clone(), s.config.clone(), AccountContext::new(id.clone(), router.clone(), "b.test"))
        .await
        .expect("start");
    router.add_account(account.clone());
    let p = bridge_api::PortalId::new("p").expect("portal");
    router.create_portal(PortalRecord { id: p.clone(), mls_identity: MlsIdentity::Shared }).await.expect("portal");
    router.link(lb.leg("#lb"), &p).await.expect("link");
    wait_health(&account, |h| *h == Health::Connected, "connected").await;
    let leg = bridge_api::LegId::new(id, s.room.clone()).expect("leg");
    router.link_and_join(leg, &p).await.expect("link").expect("running").expect("join");
    Slice { router, lb, account, _dir: dir }
}

/// Synapse killed while the other side keeps talking: sends fail as `Retry`, the account backs off, and once
/// Synapse is back every message arrives in the room once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_homeserver_outage_delays_sends_and_loses_nothing() {
    use bridge_api::event::{InboundKind, MessageDraft};

    let s = setup();
    let Slice { router, lb, account, _dir } = slice(&s).await;
    let say = |i: usize, word: &'static str| {
        let lb = lb.clone();
        async move {
            let kind = InboundKind::Message { draft: MessageDraft::plain(format!("{word} {i}")), reply_to: None };
            lb.say_with_id("#lb", "alice", &format!("{word}{i}"), kind).await.expect("accepted");
        }
    };
    for i in 0..5 {
        say(i, "before").await;
    }
    let t0 = std::time::Instant::now();
    s.hs.kill();
    for i in 0..5 {
        say(i, "during").await;
    }
    wait_health(&account, |h| matches!(h, Health::BackingOff { .. }), "backing off while Synapse is down").await;
    println!("backing off after {:?}", t0.elapsed());
    s.hs.restart().expect("synapse restarts");
    println!("synapse back after {:?}", t0.elapsed());
    wait_health(&account, |h| *h == Health::Connected, "connected again").await;
    println!("connected after {:?}", t0.elapsed());
    let watcher = s.hs.register_user("watcher").expect("watcher");
    let c = Client::new(&s.hs.url(), watcher);
    c.join(&s.room).await.expect("join");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let bodies = loop {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=200", enc(&s.room));
        let v = c.call(reqwest::Method::GET, &path, None).await.expect("messages");
        let bodies: Vec<String> = v["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect();
        if bodies.iter().any(|b| b == "during 4") || tokio::time::Instant::now() > deadline {
            break bodies;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("all arrived after {:?}", t0.elapsed());
    let want: Vec<String> =
        (0..5).map(|i| format!("before {i}")).chain((0..5).map(|i| format!("during {i}"))).collect();
    assert_eq!(bodies, want, "every message once, in order");
    router.shutdown().await;
}

/// A message from carol (a native MIMI user) for the test room, the `n`th of the test, queued at `queued_at_ms`.
fn delivery(s: &Setup, n: u8, body: &str, queued_at_ms: u64) -> bridge_api::OutboundEvent {
    use bridge_api::event::{MessageDraft, OutboundKind, Sender};
    use bridge_api::{LegId, MessageId, OutboundEvent, PortalId, TxnId};
    let leg = LegId::new(AccountId::parse("matrix.hs").expect("id"), s.room.clone()).expect("leg");
    let mut id = [n; 32];
    id[0] = 1;
    let message_id = MessageId::from_bytes(&id).expect("message id");
    OutboundEvent {
        portal: PortalId::new("p").expect("portal"),
        txn_id: TxnId::for_delivery(&message_id, &leg),
        leg,
        message_id,
        sender: Sender {
            uri: "mimi://b.test/u/carol".into(),
            display_name: "carol".into(),
            network: "mimi".into(),
            legacy: None,
        },
        kind: OutboundKind::Message { draft: MessageDraft::plain(body), reply_to: None },
        queued_at_ms,
    }
}

/// How many events of the room have `body`, read as its creator (who sees every event of the room).
async fn copies(s: &Setup, body: &str) -> usize {
    let creator = Client::new(&s.hs.url(), s.owner.clone());
    await_body(&creator, &s.room, body).await;
    let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=200", enc(&s.room));
    let v = creator.call(reqwest::Method::GET, &path, None).await.expect("messages");
    v["chunk"].as_array().into_iter().flatten().filter(|e| e["content"]["body"] == body).count()
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("ms fit")
}

/// A send retried after the homeserver restarted is still one event: ghosts send from a device of their own
/// (MSC4190), whose transaction ids Synapse keeps in its database. Without a device it keeps them only in memory,
/// and the same retry makes a second event (the control at the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_after_a_homeserver_restart_is_one_event() {
    use connector_matrix::homeserver::Homeserver;

    let s = setup();
    let Slice { router, account, .. } = slice(&s).await;
    let event = delivery(&s, 7, "exactly once", now_ms());
    let first = account.send(&event).await.expect("sent");
    s.hs.restart().expect("synapse restarts");
    let again = account.send(&event).await.expect("sent again");
    assert_eq!(again.native_ids, first.native_ids, "the retry is the same event");
    assert_eq!(copies(&s, "exactly once").await, 1, "one event in the room");

    // The control: the same ghost retrying without its device after a restart makes a second event.
    let creator = Client::new(&s.hs.url(), s.owner.clone());
    let ghost = await_body(&creator, &s.room, "exactly once").await["sender"].as_str().expect("sender").to_owned();
    let hs = Homeserver::new(&s.hs.url(), &s.config.as_token).expect("client");
    let content = json!({"msgtype": "m.text", "body": "twice"});
    let a = hs.send(&s.room, "m.room.message", "control", &content, (&ghost, None)).await.expect("send");
    s.hs.restart().expect("synapse restarts");
    let b = hs.send(&s.room, "m.room.message", "control", &content, (&ghost, None)).await.expect("send");
    assert_ne!(a, b, "without a device Synapse forgets transaction ids when it restarts");
    router.shutdown().await;
}

/// Synapse forgets a device's transaction ids after a day (`_cleanup_old_transaction_ids`; done here at once by
/// emptying its table and restarting it, which also clears its in-memory cache). A delivery queued more than 23 hours
/// ago is looked for in the room before it is sent again: its earlier attempt is found and it stays one event. The
/// control: a recent delivery sent again after the same forgetting is a second event (it is not looked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_delivery_sent_again_after_synapse_forgot_its_transaction_is_one_event() {
    let s = setup();
    let Slice { router, account, .. } = slice(&s).await;
    let forget_transactions = || {
        s.hs.sql("DELETE FROM event_txn_id_device_id").expect("transaction ids deleted");
        s.hs.restart().expect("synapse restarts");
    };

    // The first attempt, when the delivery was young; its answer is lost (the daemon killed), and the retry comes
    // a day later: the same delivery, queued a day before it.
    let first = account.send(&delivery(&s, 8, "queued a day ago", now_ms())).await.expect("sent");
    let old = delivery(&s, 8, "queued a day ago", now_ms() - 24 * 3600 * 1000);
    // Someone speaks in between: the earlier attempt is not the newest event of the room.
    let other = speaker(&s, "dora").await;
    for i in 0..3 {
        say_in_matrix(&other, &s.room, &format!("meanwhile {i}")).await;
    }
    forget_transactions();
    let again = account.send(&old).await.expect("sent again");
    assert_eq!(again.native_ids, first.native_ids, "the earlier attempt was found");
    assert_eq!(copies(&s, "queued a day ago").await, 1, "one event in the room");

    let recent = delivery(&s, 9, "queued just now", now_ms());
    let first = account.send(&recent).await.expect("sent");
    forget_transactions();
    let again = account.send(&recent).await.expect("sent again");
    assert_ne!(again.native_ids, first.native_ids, "a recent delivery is not looked for");
    assert_eq!(copies(&s, "queued just now").await, 2, "the control makes a second event");
    router.shutdown().await;
}

/// A Matrix user of the room, joined.
async fn speaker(s: &Setup, name: &str) -> Client {
    let c = Client::new(&s.hs.url(), s.hs.register_user(name).expect("register"));
    c.join(&s.room).await.expect("join");
    c
}

/// `c` says `body` in the room.
async fn say_in_matrix(c: &Client, room: &str, body: &str) {
    c.send(room, "m.room.message", json!({"msgtype": "m.text", "body": body})).await.expect("send");
}

/// The Matrix account started again (as after a daemon restart: same config, same listener address) and attached
/// to `router` (which has it join its linked rooms); returns once it is connected.
async fn restart_account(s: &Setup, router: &bridge_core::router::RouterHandle) -> Arc<dyn Account> {
    let id = AccountId::parse("matrix.hs").expect("id");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let account = loop {
        let ctx = AccountContext::new(id.clone(), router.clone(), "b.test");
        match MatrixConnector::with_axum_serve().start(id.clone(), s.config.clone(), ctx).await {
            Ok(a) => break a,
            // The stopped account's listener may not be closed yet.
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "restart: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    router.attach_account(account.clone()).await;
    wait_health(&account, |h| *h == Health::Connected, "connected again").await;
    account
}

/// Polls `sql` on Synapse's database until its answer satisfies `want`.
async fn await_sql(hs: &Synapse, sql: &str, want: impl Fn(&str) -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = hs.sql(sql).expect("sql");
        if want(&got) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {sql} gives {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Synapse's appservice scheduler can lose a transaction for good after a failed push (its recoverer finds
/// nothing left, marks the appservice up, and the transaction stored meanwhile is never sent). Reproduced
/// deterministically: the account is down while a Matrix user speaks, and the transaction Synapse stored for it
/// is deleted before Synapse retries it. The restarted account reads the message back from the room's timeline:
/// it reaches the portal once, and what is said afterwards once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_synapse_never_sends_is_caught_up_from_the_timeline() {
    let s = setup();
    let Slice { router, lb, account, _dir } = slice(&s).await;
    let carol = speaker(&s, "carol").await;
    say_in_matrix(&carol, &s.room, "before").await;
    await_delivered(&lb, "before").await;

    account.shutdown().await;
    say_in_matrix(&carol, &s.room, "lost").await;
    // Synapse could not push it: the transaction waits for its recoverer, the appservice is down.
    await_sql(&s.hs, "SELECT count(*) FROM application_services_txns", |n| n != "0", "a stored transaction").await;
    s.hs.sql("DELETE FROM application_services_txns").expect("delete the pending transactions");
    // The recoverer finds nothing left and marks the appservice up: the message is never pushed.
    await_sql(&s.hs, "SELECT state FROM application_services_state", |st| st == "up", "the appservice up").await;

    let account = restart_account(&s, &router).await;
    await_delivered(&lb, "lost").await;
    say_in_matrix(&carol, &s.room, "after 1").await;
    say_in_matrix(&carol, &s.room, "after 2").await;
    let bodies = await_delivered(&lb, "after 2").await;
    // Nothing more comes (a second catch-up, a late push).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bodies, delivered_bodies(&lb), "nothing after the last message");
    assert_eq!(bodies, ["before", "lost", "after 1", "after 2"], "each message once, in order");
    account.shutdown().await;
    router.shutdown().await;
}

/// A restart with nothing missed replays nothing, and the room's history from before it was linked is not
/// flooded into the portal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_nothing_missed_replays_nothing() {
    let s = setup();
    let dave = speaker(&s, "dave").await;
    say_in_matrix(&dave, &s.room, "old history").await;
    let Slice { router, lb, account, _dir } = slice(&s).await;
    say_in_matrix(&dave, &s.room, "one").await;
    await_delivered(&lb, "one").await;
    account.shutdown().await;
    let account = restart_account(&s, &router).await;
    say_in_matrix(&dave, &s.room, "two").await;
    await_delivered(&lb, "two").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(delivered_bodies(&lb), ["one", "two"], "no duplicates, no old history");
    account.shutdown().await;
    router.shutdown().await;
}

/// alice (who logs in with `pw-alice`) and an end-to-end encrypted room of hers.
fn encrypted_room(s: &Setup) -> (MatrixUser, String) {
    let alice = s.hs.register_user("alice").expect("alice");
    let encryption =
        json!({"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}});
    let body = json!({"preset": "public_chat", "name": "secret", "initial_state": [encryption]});
    let (status, v) =
        s.hs.request("POST", "/_matrix/client/v3/createRoom", Some(&alice.access_token), Some(&body)).expect("room");
    assert_eq!(status, 200, "{v}");
    (alice, v["room_id"].as_str().expect("room id").to_owned())
}

/// `room` linked to a loopback leg by an account keeping its keys in `state` and its files in `media`.
async fn encrypted_slice(s: &Setup, room: &str, state: &std::path::Path, media: &Arc<Kept>) -> Slice {
    use bridge_core::repo::{MlsIdentity, PortalRecord};
    use bridge_testkit::loopback::LoopbackNetwork;
    let (router, dir) = router().await;
    let lb_id = AccountId::parse("lb.other").expect("id");
    let lb = LoopbackNetwork::new(lb_id.clone(), AccountContext::new(lb_id, router.clone(), "b.test"));
    router.add_account(lb.clone());
    let id = AccountId::parse("matrix.hs").expect("id");
    let ctx = AccountContext::new(id.clone(), router.clone(), "b.test").with_state_dir(state).with_media(media.clone());
    let account = MatrixConnector::with_axum_serve().start(id.clone(), s.config.clone(), ctx).await.expect("start");
    router.add_account(account.clone());
    let p = bridge_api::PortalId::new("p").expect("portal");
    router.create_portal(PortalRecord { id: p.clone(), mls_identity: MlsIdentity::Shared }).await.expect("portal");
    router.link(lb.leg("#lb"), &p).await.expect("link");
    wait_health(&account, |h| *h == Health::Connected, "connected").await;
    let leg = bridge_api::LegId::new(id, room).expect("leg");
    router.link_and_join(leg, &p).await.expect("link").expect("running").expect("join");
    Slice { router, lb, account, _dir: dir }
}

/// An encrypted room of alice's linked by an account with a state directory and a media store, and alice's
/// encrypting client (trusting senders as `trust` says), whose device is there before the bridge comes (so that the
/// bridge's first words are shared with it).
struct EncryptedWorld {
    s: Setup,
    state: tempfile::TempDir,
    media: Arc<Kept>,
    alice_user: MatrixUser,
    room: String,
    alice: matrix_sdk::Client,
    alice_room: matrix_sdk::Room,
    alice_http: Client,
    b: Slice,
    _alice_store: tempfile::TempDir,
}

async fn encrypted_world(trust: matrix_sdk_crypto::TrustRequirement) -> EncryptedWorld {
    encrypted_world_on(setup(), trust).await
}

/// [`encrypted_world`] on a homeserver set up by the caller.
async fn encrypted_world_on(s: Setup, trust: matrix_sdk_crypto::TrustRequirement) -> EncryptedWorld {
    let state = tempfile::tempdir().expect("state dir");
    let media = Arc::new(Kept::default());
    let (alice_user, room) = encrypted_room(&s);
    let alice_store = tempfile::tempdir().expect("alice's store");
    let (user_id, hs_url) = (alice_user.user_id.as_str(), s.hs.url());
    let (alice, alice_room) =
        common::encrypting_client(&hs_url, user_id, alice_store.path(), trust, &room, user_id).await;
    let b = encrypted_slice(&s, &room, state.path(), &media).await;
    let alice_http = Client::new(&hs_url, alice_user.clone());
    EncryptedWorld { s, state, media, alice_user, room, alice, alice_room, alice_http, b, _alice_store: alice_store }
}

/// The first event of `room` whose content `client` decrypts to one that `matches`, syncing until it comes: the
/// event as the client has it. An event the client could not decrypt when it came (its sender's device not known
/// to it yet, say) is tried again at each round.
async fn decrypted_by(
    client: &matrix_sdk::Client,
    room: &str,
    matches: impl Fn(&Value) -> bool,
) -> matrix_sdk::deserialized_responses::TimelineEvent {
    use matrix_sdk::config::SyncSettings;
    use matrix_sdk::deserialized_responses::TimelineEventKind;
    let room_id = matrix_sdk::ruma::OwnedRoomId::try_from(room).expect("room id");
    let content = |ev: &matrix_sdk::deserialized_responses::TimelineEvent| {
        ev.raw().get_field::<Value>("content").ok().flatten().unwrap_or_default()
    };
    let mut undecrypted = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = client.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))).await.expect("sync");
        for ev in r.rooms.joined.get(&room_id).map(|u| u.timeline.events.clone()).unwrap_or_default() {
            if let TimelineEventKind::UnableToDecrypt { event, .. } = &ev.kind {
                undecrypted.push(event.clone());
            } else if matches(&content(&ev)) {
                return ev;
            }
        }
        if let Some(room) = client.get_room(&room_id) {
            for raw in &undecrypted {
                if let Ok(ev) = room.decrypt_event(raw.cast_ref_unchecked(), None).await
                    && matches!(ev.kind, TimelineEventKind::Decrypted(_))
                    && matches(&content(&ev))
                {
                    return ev;
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never decrypted what was looked for: {undecrypted:?}");
    }
}

/// An end-to-end encrypted room in appservice mode, against Synapse with the MSC2409/MSC3202/MSC4190 pieces: the
/// bridge says in the room where its encryption ends; alice's encrypted message and file reach the portal in the
/// clear; what the other side says arrives encrypted by the ghost's own cross-signed device, which alice's client
/// decrypts even when it insists on cross-signed senders (`CrossSignedOrLegacy`), never as `MismatchedSender` or
/// `UnsignedDevice`; a file arrives as an `EncryptedFile`; the homeserver sees no plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_room_is_bridged_both_ways_each_ghost_on_its_own_cross_signed_device() {
    use bridge_api::event::{InboundKind, MessageDraft};
    use matrix_sdk::deserialized_responses::{TimelineEventKind, VerificationLevel, VerificationState};
    let w = encrypted_world(matrix_sdk_crypto::TrustRequirement::CrossSignedOrLegacy).await;
    let EncryptedWorld { s, media, room, alice, alice_room, alice_http, b, .. } = &w;

    // The bridge says, encrypted, that the room's encryption ends at it.
    let notice = decrypted_by(alice, room, |c| c["msgtype"] == "m.notice").await;
    assert!(matches!(notice.kind, TimelineEventKind::Decrypted(_)), "the notice is encrypted: {:?}", notice.kind);
    let text = notice.raw().get_field::<Value>("content").ok().flatten().unwrap_or_default()["body"].clone();
    assert_eq!(text, json!(connector_matrix::account::ENCRYPTED_ROOM_BRIDGED_NOTICE));

    // alice → the portal, decrypted.
    alice_room.send(RoomMessageEventContent::text_plain("a secret hello")).await.expect("alice sends, encrypted");
    await_delivered(&b.lb, "a secret hello").await;

    // The other side → alice: encrypted by the ghost's own device, which its own identity signs.
    let kind = InboundKind::Message { draft: MessageDraft::plain("a secret reply"), reply_to: None };
    b.lb.say_with_id("#lb", "bob", "s1", kind).await.expect("accepted");
    let reply = decrypted_by(alice, room, |c| c["body"] == "a secret reply").await;
    let TimelineEventKind::Decrypted(decrypted) = &reply.kind else {
        panic!("alice cannot decrypt the ghost's message: {:?}", reply.kind)
    };
    let ghost = reply.raw().get_field::<String>("sender").ok().flatten().expect("sender");
    assert!(ghost.starts_with("@mimi_"), "said by bob's ghost: {ghost}");
    let level = match &decrypted.encryption_info.verification_state {
        VerificationState::Unverified(level) => Some(level.clone()),
        VerificationState::Verified => None,
    };
    assert!(
        !matches!(level, Some(VerificationLevel::UnsignedDevice | VerificationLevel::MismatchedSender)),
        "the ghost's device is its own and signed: {level:?}"
    );
    let query = json!({"device_keys": {&ghost: []}});
    let keys =
        alice_http.call(reqwest::Method::POST, "/_matrix/client/v3/keys/query", Some(query)).await.expect("keys");
    assert!(keys["master_keys"][&ghost].is_object() && keys["self_signing_keys"][&ghost].is_object(), "{keys}");

    // A second ghost: the room keys of the bridge's devices go to alice's device only, none to another of the
    // bridge's (nothing the bridge says is read back by it).
    let kind = InboundKind::Message { draft: MessageDraft::plain("a second voice"), reply_to: None };
    b.lb.say_with_id("#lb", "carol", "c1", kind).await.expect("accepted");
    decrypted_by(alice, room, |c| c["body"] == "a second voice").await;
    let among_the_bridge = "SELECT COUNT(*) FROM device_inbox WHERE user_id LIKE '@mimi%' \
        AND json_extract(message_json, '$.sender') LIKE '@mimi%' AND json_extract(message_json, '$.type') = 'm.room.encrypted'";
    assert_eq!(s.hs.sql(among_the_bridge).expect("inbox"), "0", "no Olm messages between the bridge's devices");

    // A file of the other side → alice, as an `EncryptedFile` she decrypts to the same bytes.
    let png = hex::decode(PNG).expect("png");
    let attachment =
        bridge_api::MediaStore::put(&**media, png.clone(), "image/png", Some("from-irc.png")).await.expect("kept");
    let draft = MessageDraft { attachments: vec![attachment], ..MessageDraft::plain("") };
    b.lb.say_with_id("#lb", "bob", "f1", InboundKind::Message { draft, reply_to: None }).await.expect("accepted");
    let image = decrypted_by(alice, room, |c| c["msgtype"] == "m.image").await;
    assert!(matches!(image.kind, TimelineEventKind::Decrypted(_)), "sent encrypted: {:?}", image.kind);
    let content = image.raw().get_field::<Value>("content").ok().flatten().unwrap_or_default();
    assert!(content["file"]["url"].is_string() && content.get("url").is_none(), "an EncryptedFile: {content}");
    let file: matrix_sdk::ruma::events::room::EncryptedFile =
        serde_json::from_value(content["file"].clone()).expect("encrypted file");
    let request = matrix_sdk::media::MediaRequestParameters {
        source: matrix_sdk::ruma::events::room::MediaSource::Encrypted(Box::new(file)),
        format: matrix_sdk::media::MediaFormat::File,
    };
    let got = alice.media().get_media_content(&request, false).await.expect("alice downloads it");
    assert_eq!(got, png, "the same bytes, decrypted by alice");

    // alice's file → the portal, decrypted by the bridge.
    alice_room.send_attachment("secret.png", &mime::IMAGE_PNG, png.clone(), Default::default()).await.expect("sent");
    let file = common::await_delivered_file(&b.lb).await;
    let kept = media.0.lock().expect("lock").iter().find(|(u, ..)| *u == file.url).map(|(_, bytes, _)| bytes.clone());
    assert_eq!(kept, Some(png), "the decrypted bytes, not the ciphertext");

    // The homeserver saw only ciphertext from the ghost.
    let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(room));
    let v = alice_http.call(reqwest::Method::GET, &path, None).await.expect("messages");
    let from_ghost: Vec<&Value> =
        v["chunk"].as_array().into_iter().flatten().filter(|e| e["sender"] == ghost.as_str()).collect();
    assert!(from_ghost.iter().any(|e| e["type"] == "m.room.encrypted"), "{from_ghost:?}");
    assert!(!from_ghost.iter().any(|e| e["type"] == "m.room.message"), "{from_ghost:?}");
    assert!(!v.to_string().contains("a secret reply"), "no plaintext on the homeserver");
    b.account.shutdown().await;
    b.router.shutdown().await;
}

/// Alice says `body` in a new room key while the account is stopped: Synapse cannot push the to-device message
/// carrying the key, and the transaction it pushes again later carries events only (its appservice catch-up keeps
/// no to-device messages). Returns the bridge's user id, the inbox's clause, the last inbox position before, and
/// the to-device messages held for the bridge's device.
async fn said_while_stopped(w: &EncryptedWorld, body: &str) -> (String, String, i64, Vec<Value>) {
    w.b.account.shutdown().await;
    let bot = w.s.hs.user_id("mimi-bridge");
    let device = bridge_device(&w.s.hs, &bot);
    let inbox = format!("FROM device_inbox WHERE user_id = '{bot}' AND device_id = '{device}'");
    let before = w.s.hs.sql(&format!("SELECT COALESCE(MAX(stream_id), 0) {inbox}")).expect("inbox");
    let before: i64 = before.trim().parse().expect("a stream id");
    w.alice_room.discard_room_key().await.expect("a new room key for the next message");
    w.alice_room.send(RoomMessageEventContent::text_plain(body)).await.expect("sent");
    let held = w.s.hs.sql(&format!("SELECT message_json {inbox} AND stream_id > {before}")).expect("inbox");
    let held: Vec<Value> = held.lines().map(|l| serde_json::from_str(l).expect("a to-device message")).collect();
    assert!(held.iter().any(|m| m["type"] == "m.room.encrypted"), "the key was on its way: {held:?}");
    (bot, inbox, before, held)
}

/// Starts the stopped account again (its state dir kept) and waits until it is connected.
async fn restarted(w: &EncryptedWorld) -> Arc<dyn Account> {
    let id = AccountId::parse("matrix.hs").expect("id");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let account = loop {
        let ctx = AccountContext::new(id.clone(), w.b.router.clone(), "b.test")
            .with_state_dir(w.state.path())
            .with_media(w.media.clone());
        match MatrixConnector::with_axum_serve().start(id.clone(), w.s.config.clone(), ctx).await {
            Ok(a) => break a,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "restart: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    w.b.router.attach_account(account.clone()).await;
    wait_health(&account, |h| *h == Health::Connected, "connected again").await;
    account
}

/// A message said while the bridge was down, in a room key sent meanwhile: the bridge reads the key from its
/// device's inbox (the transaction the homeserver pushes again lacks it) and bridges the message once, with no
/// "cannot decrypt" notice; the inbox is emptied as it is read. The account's stores are encrypted with a
/// passphrase (they open again after the restart, and hold none of what they keep in the clear).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_key_sent_while_the_bridge_was_down_is_read_from_its_inbox() {
    let s = setup_with(|c| c.store_passphrase = Some("correct horse battery staple".into()));
    let w = encrypted_world_on(s, matrix_sdk_crypto::TrustRequirement::Untrusted).await;
    w.alice_room.send(RoomMessageEventContent::text_plain("key on time")).await.expect("sent");
    await_delivered(&w.b.lb, "key on time").await;
    let (_, inbox, _, _) = said_while_stopped(&w, "said while away").await;
    let last = w.s.hs.sql(&format!("SELECT MAX(stream_id) {inbox}")).expect("inbox");

    let account = restarted(&w).await;
    await_delivered(&w.b.lb, "said while away").await;
    w.alice_room.send(RoomMessageEventContent::text_plain("then on")).await.expect("sent");
    await_delivered(&w.b.lb, "then on").await;
    let bodies = delivered_bodies(&w.b.lb);
    assert_eq!(bodies.iter().filter(|t| *t == "said while away").count(), 1, "{bodies:?}");
    assert!(!bodies.iter().any(|t| t.contains("cannot decrypt yet")), "no notice: {bodies:?}");
    // What the bridge read is gone from the homeserver.
    let left = format!("SELECT COUNT(*) {inbox} AND stream_id <= {last}");
    await_sql(&w.s.hs, &left, |n| n == "0", "the inbox read up to the held key").await;
    // The crypto stores hold their users' ids only encrypted (the Olm accounts, sessions and keys with them).
    let devices = w.state.path().join("e2ee/devices");
    assert!(devices.join(connector_matrix::store_passphrase::MARKER).exists(), "marked as protected");
    let mut files = 0;
    for store in std::fs::read_dir(&devices).expect("stores").flatten().filter(|e| e.path().is_dir()) {
        for file in std::fs::read_dir(store.path()).expect("store").flatten() {
            let bytes = std::fs::read(file.path()).expect("store file");
            let clear = bytes.windows(b"mimi-bridge:hs.test".len()).any(|w| w == b"mimi-bridge:hs.test");
            assert!(!clear, "{} holds a user id in the clear", file.path().display());
            files += 1;
        }
    }
    assert!(files > 0, "the stores were read");
    account.shutdown().await;
    w.b.router.shutdown().await;
}

/// The key of an encrypted message reaches the bridge only after the message: the portal hears at once that alice
/// said something the bridge cannot decrypt yet, and the message itself once the key arrives — once.
///
/// How the key comes late: alice says it while the account is stopped ([`said_while_stopped`]), and the test takes
/// the key out of the bridge device's inbox (a key still on its way), then sends the same Olm-encrypted content,
/// from alice, to the bridge's device again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_message_whose_key_comes_late_is_a_notice_then_bridged_once() {
    let w = encrypted_world(matrix_sdk_crypto::TrustRequirement::Untrusted).await;
    let EncryptedWorld { s, alice_user, alice_room, alice_http, b, .. } = &w;
    alice_room.send(RoomMessageEventContent::text_plain("key on time")).await.expect("sent");
    await_delivered(&b.lb, "key on time").await;
    let (bot, inbox, before, held) = said_while_stopped(&w, "key comes late").await;
    s.hs.sql(&format!("DELETE {inbox} AND stream_id > {before}")).expect("the key taken out of the inbox");

    // The account comes back: the message is there, its key is not.
    let account = restarted(&w).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !delivered_bodies(&b.lb).iter().any(|t| t.contains("cannot decrypt yet")) {
        assert!(tokio::time::Instant::now() < deadline, "no notice: {:?}", delivered_bodies(&b.lb));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let notice = b.lb.delivered().into_iter().find(|e| {
        matches!(&e.kind, bridge_api::OutboundKind::Message { draft, .. }
            if draft.body == connector_matrix::inbound::UNDECRYPTED_NOTICE)
    });
    let id = AccountId::parse("matrix.hs").expect("id");
    let alice_id = bridge_api::LegacyUser::new(id, &alice_user.user_id);
    assert_eq!(notice.expect("the notice").sender.uri, alice_id.uri("b.test"), "from alice");
    assert!(!delivered_bodies(&b.lb).iter().any(|t| t == "key comes late"), "not decrypted without its key");

    // The key comes: the message follows, once.
    for (n, m) in held.iter().filter(|m| m["type"] == "m.room.encrypted").enumerate() {
        let body = json!({"messages": {&bot: {bridge_device(&s.hs, &bot): m["content"]}}});
        let path = format!("/_matrix/client/v3/sendToDevice/m.room.encrypted/late{n}");
        alice_http.call(reqwest::Method::PUT, &path, Some(body)).await.expect("sent to the bridge's device");
    }
    await_delivered(&b.lb, "key comes late").await;
    alice_room.send(RoomMessageEventContent::text_plain("then on")).await.expect("sent");
    await_delivered(&b.lb, "then on").await;
    let bodies = delivered_bodies(&b.lb);
    assert_eq!(bodies.iter().filter(|t| *t == "key comes late").count(), 1, "{bodies:?}");
    assert_eq!(bodies.iter().filter(|t| t.contains("cannot decrypt yet")).count(), 1, "{bodies:?}");
    account.shutdown().await;
    b.router.shutdown().await;
}

/// A registration written before the bot was a user of the appservice's namespace (the bot is its sender, which
/// the homeserver lets no `/sync`): the bot's device cannot read its inbox (the log says to write the registration
/// again), and encrypted rooms are bridged as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_bot_as_the_registrations_sender_an_encrypted_room_is_still_bridged() {
    let old = |yaml: String| {
        let bot_namespace = "    - exclusive: true\n      regex: \"@mimi\\\\-bridge:hs\\\\.test\"\n";
        assert!(yaml.contains(bot_namespace), "{yaml}");
        yaml.replace(bot_namespace, "")
            .replace("sender_localpart: \"mimi-bridge.appservice\"", "sender_localpart: \"mimi-bridge\"")
    };
    let w = encrypted_world_on(setup_registered(|_| {}, old), matrix_sdk_crypto::TrustRequirement::Untrusted).await;
    w.alice_room.send(RoomMessageEventContent::text_plain("still read")).await.expect("sent");
    await_delivered(&w.b.lb, "still read").await;
    let kind = bridge_api::InboundKind::Message {
        draft: bridge_api::event::MessageDraft::plain("still written"),
        reply_to: None,
    };
    w.b.lb.say_with_id("#lb", "bob", "w1", kind).await.expect("accepted");
    let reply = decrypted_by(&w.alice, &w.room, |c| c["body"] == "still written").await;
    let decrypted = matches!(reply.kind, matrix_sdk::deserialized_responses::TimelineEventKind::Decrypted(_));
    assert!(decrypted, "alice decrypts the ghost's message: {:?}", reply.kind);
    w.b.account.shutdown().await;
    w.b.router.shutdown().await;
}

/// A homeserver that does not push to-device messages to the appservice (its registration lacks
/// `receive_ephemeral`): the probe finds out, and an encrypted room is told that the bridge cannot read it,
/// and why; an encrypted message reaches the portal as a notice that it cannot be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_to_device_pushes_an_encrypted_room_is_told_why_it_is_not_bridged() {
    let s = setup_registered(|_| {}, |yaml| yaml.replace("receive_ephemeral: true\n", ""));
    let state = tempfile::tempdir().expect("state dir");
    let media = Arc::new(Kept::default());
    let (alice_user, room) = encrypted_room(&s);
    let b = encrypted_slice(&s, &room, state.path(), &media).await;
    let alice = Client::new(&s.hs.url(), alice_user);
    // The probe begins at the link (the room is the account's first encrypted one) and gives up after its wait.
    let wait = connector_matrix::e2ee::PROBE_WAIT + Duration::from_secs(30);
    let notice = await_body_containing(&alice, &room, "cannot decrypt or encrypt here", wait).await;
    let body = notice["content"]["body"].as_str().unwrap_or_default();
    assert!(body.contains("does not push to-device messages") && body.contains("receive_ephemeral"), "{body}");
    let encrypted = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x", "sender_key": "k", "session_id": "s",
                           "device_id": "D"});
    alice.send(&room, "m.room.encrypted", encrypted).await.expect("send");
    await_delivered(&b.lb, connector_matrix::inbound::ENCRYPTED_NOTICE).await;
    b.account.shutdown().await;
    b.router.shutdown().await;
}

/// An account with `encryption = false`: its registration asks for no to-device pushes, and an encrypted room is
/// told at once (no probe) that the bridge cannot read it, and why; an encrypted message reaches the portal as a
/// notice that it cannot be read, the other side's messages go in unencrypted, and no crypto store is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_encryption_off_an_encrypted_room_is_told_so_at_once() {
    let s = setup_registered(
        |c| c.encryption = false,
        |yaml| {
            assert!(!yaml.contains("receive_ephemeral") && !yaml.contains("msc3202"), "{yaml}");
            yaml
        },
    );
    let state = tempfile::tempdir().expect("state dir");
    let media = Arc::new(Kept::default());
    let (alice_user, room) = encrypted_room(&s);
    let b = encrypted_slice(&s, &room, state.path(), &media).await;
    let alice = Client::new(&s.hs.url(), alice_user);
    // Well within the probe's wait: nothing is probed.
    let notice = await_body_containing(&alice, &room, "cannot decrypt or encrypt here", Duration::from_secs(20)).await;
    let body = notice["content"]["body"].as_str().unwrap_or_default();
    assert!(body.contains(connector_matrix::account::ENCRYPTION_OFF), "{body}");
    let encrypted = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x", "sender_key": "k", "session_id": "s",
                           "device_id": "D"});
    alice.send(&room, "m.room.encrypted", encrypted).await.expect("send");
    await_delivered(&b.lb, connector_matrix::inbound::ENCRYPTED_NOTICE).await;
    // What the other side says goes in at once, unencrypted, as the notice said: nothing waits for a probe.
    let kind = bridge_api::InboundKind::Message {
        draft: bridge_api::event::MessageDraft::plain("said in the clear"),
        reply_to: None,
    };
    b.lb.say_with_id("#lb", "bob", "c1", kind).await.expect("accepted");
    let sent = await_body_containing(&alice, &room, "said in the clear", Duration::from_secs(20)).await;
    assert_eq!(sent["type"], "m.room.message", "{sent}");
    assert!(!state.path().join("e2ee").exists(), "no crypto store made");
    b.account.shutdown().await;
    b.router.shutdown().await;
}

/// The first event of `room` whose body contains `text`, waiting for it up to `wait`.
async fn await_body_containing(c: &Client, room: &str, text: &str, wait: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=200", enc(room));
        let v = c.call(reqwest::Method::GET, &path, None).await.expect("messages");
        let found = v["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["content"]["body"].as_str().is_some_and(|b| b.contains(text)));
        if let Some(e) = found {
            return e.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{text:?} never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The device of the bridge's user `user` that has keys (its crypto store's).
fn bridge_device(hs: &Synapse, user: &str) -> String {
    let devices = keyed_devices(hs, user);
    assert_eq!(devices.len(), 1, "one device of {user} with keys: {devices:?}");
    devices[0].clone()
}

/// The devices of `user` that have keys on the homeserver (as Synapse stores them).
fn keyed_devices(hs: &Synapse, user: &str) -> Vec<String> {
    let ids =
        hs.sql(&format!("SELECT device_id FROM e2e_device_keys_json WHERE user_id = '{user}' ORDER BY device_id"));
    ids.expect("device keys").lines().map(str::to_owned).collect()
}

/// A bridge device whose crypto store was lost starts over under a new device id, and the old one goes: the
/// members' clients, which refuse new keys for a device id they knew, take the new device's, share their room
/// keys with it, and the room is bridged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_device_whose_store_was_lost_comes_back_under_a_new_id() {
    use matrix_sdk::config::SyncSettings;
    let w = encrypted_world(matrix_sdk_crypto::TrustRequirement::Untrusted).await;
    w.alice_room.send(RoomMessageEventContent::text_plain("before the loss")).await.expect("sent");
    await_delivered(&w.b.lb, "before the loss").await;
    let bot = w.s.hs.user_id("mimi-bridge");
    let before = keyed_devices(&w.s.hs, &bot);
    assert_eq!(before.len(), 1, "one device with keys: {before:?}");

    // The stores are lost while the bridge is down.
    w.b.account.shutdown().await;
    std::fs::remove_dir_all(w.state.path().join("e2ee/devices")).expect("stores removed");
    let account = restarted(&w).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let after = keyed_devices(&w.s.hs, &bot);
        if !after.is_empty() && after != before {
            break after;
        }
        assert!(tokio::time::Instant::now() < deadline, "the bridge's device never came back: {after:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(after.len(), 1, "the old device is gone: {after:?}");

    // alice's client takes the new device once it hears of it, and her next message is bridged.
    let bot_id = matrix_sdk::ruma::OwnedUserId::try_from(bot.as_str()).expect("user id");
    let new_device = matrix_sdk::ruma::OwnedDeviceId::from(after[0].as_str());
    loop {
        w.alice.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))).await.expect("sync");
        let devices = w.alice.encryption().get_user_devices(&bot_id).await.expect("devices");
        if devices.get(&new_device).is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "alice's client never took the bridge's new device");
    }
    w.alice_room.send(RoomMessageEventContent::text_plain("after the loss")).await.expect("sent");
    await_delivered(&w.b.lb, "after the loss").await;
    let bodies = delivered_bodies(&w.b.lb);
    assert!(!bodies.iter().any(|t| t.contains("cannot decrypt yet")), "no notice: {bodies:?}");
    account.shutdown().await;
    w.b.router.shutdown().await;
}

/// A client that shares room keys only with devices its user verified withholds them from the bridge's device
/// (`m.room_key.withheld`, `m.unverified`): the portal hears that the key was withheld, and why, instead of being
/// told that the message follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_key_withheld_from_the_bridge_is_a_notice_that_says_why() {
    let w = encrypted_world(matrix_sdk_crypto::TrustRequirement::Untrusted).await;
    let store = tempfile::tempdir().expect("alice's second store");
    let (user_id, hs_url) = (w.alice_user.user_id.as_str(), w.s.hs.url());
    let share = matrix_sdk_crypto::CollectStrategy::OnlyTrustedDevices;
    let untrusted = matrix_sdk_crypto::TrustRequirement::Untrusted;
    let (_strict, strict_room) =
        common::encrypting_client_sharing(&hs_url, user_id, store.path(), untrusted, share, &w.room, user_id).await;
    strict_room.send(RoomMessageEventContent::text_plain("only for verified devices")).await.expect("sent");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let notice = loop {
        let bodies = delivered_bodies(&w.b.lb);
        if let Some(n) = bodies.iter().find(|b| b.starts_with(connector_matrix::inbound::WITHHELD_NOTICE)) {
            break n.clone();
        }
        assert!(!bodies.iter().any(|b| b.contains("cannot decrypt yet")), "told the key would come: {bodies:?}");
        assert!(tokio::time::Instant::now() < deadline, "no notice: {bodies:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(notice.contains("unverified devices"), "{notice}");
    assert!(!delivered_bodies(&w.b.lb).iter().any(|b| b == "only for verified devices"), "not decrypted");
    w.b.account.shutdown().await;
    w.b.router.shutdown().await;
}

/// An account whose linked rooms are not encrypted sets up no end-to-end encryption: its user has no device with
/// keys, its state directory no crypto store, and the process loads none of that machinery. Once an encrypted room
/// is linked, encryption is set up before the link returns, and that room is bridged as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_is_set_up_only_once_a_linked_room_is_encrypted() {
    let s = setup();
    let (state, media) = (tempfile::tempdir().expect("state dir"), Arc::new(Kept::default()));
    let b = encrypted_slice(&s, &s.room, state.path(), &media).await;
    let carl = speaker(&s, "carl").await;
    say_in_matrix(&carl, &s.room, "in the clear").await;
    await_delivered(&b.lb, "in the clear").await;
    let bot = s.hs.user_id("mimi-bridge");
    assert_eq!(keyed_devices(&s.hs, &bot), Vec::<String>::new(), "no device of the bridge has keys");
    let stores = std::fs::read_dir(state.path().join("e2ee/devices")).map_or(0, |d| d.count());
    assert_eq!(stores, 0, "no crypto store");

    // An encrypted room linked to the same portal.
    let (alice_user, room) = encrypted_room(&s);
    let alice_store = tempfile::tempdir().expect("alice's store");
    let user_id = alice_user.user_id.as_str();
    let trust = matrix_sdk_crypto::TrustRequirement::Untrusted;
    let (_alice, alice_room) =
        common::encrypting_client(&s.hs.url(), user_id, alice_store.path(), trust, &room, user_id).await;
    let leg = bridge_api::LegId::new(AccountId::parse("matrix.hs").expect("id"), room.clone()).expect("leg");
    let p = bridge_api::PortalId::new("p").expect("portal");
    b.router.link_and_join(leg, &p).await.expect("link").expect("running").expect("join");
    assert_eq!(keyed_devices(&s.hs, &bot).len(), 1, "the bridge's device is set up before the link returns");
    alice_room.send(RoomMessageEventContent::text_plain("a secret after all")).await.expect("sent");
    await_delivered(&b.lb, "a secret after all").await;
    b.account.shutdown().await;
    b.router.shutdown().await;
}
