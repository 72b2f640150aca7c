//! The Matrix connector in appservice mode against a real Synapse (started by `tests/harness` on a free port, with
//! the registration the connector writes): the conformance kit, and a homeserver outage in the middle of sends.
//! Test users are plain Matrix clients driven with reqwest on the client-server API.

use async_trait::async_trait;
use bridge_api::{Account, AccountContext, AccountId, Connector, Health};
use bridge_testkit::{CheckResult, Harness, KitOptions, NativeAction, Observed, TestUser};
use connector_matrix::{Config, MatrixConnector, Mode, registration};
use harness::{MatrixUser, Synapse, SynapseOptions};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;
use common::{Client, TXN, await_body, await_delivered, delivered_bodies, enc, router, wait_health};

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
    };
    edit(&mut config);
    let reg = dir.path().join("registration.yaml");
    std::fs::write(&reg, registration::registration_yaml(&config)).expect("write registration");
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

    async fn drop_bridge_connection(&mut self) -> Result<(), String> {
        Err("an appservice has no connection to drop (see matrix_homeserver_outage_*)".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_appservice_passes_the_conformance_kit_against_synapse() {
    let mut h = MatrixHarness { s: setup(), users: HashMap::new(), last_seen_by_bridge: None };
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
