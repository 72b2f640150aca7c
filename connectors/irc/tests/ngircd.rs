//! The IRC connector against a real ngIRCd (started by `tests/harness` on a free port): the conformance kit, a
//! 500-message burst, and a server restart mid-stream.

use async_trait::async_trait;
use bridge_core::capability::Feature;
use bridge_core::event::{InboundKind, MessageDraft, OutboundEvent};
use bridge_core::group::LocalRoom;
use bridge_core::loopback::LoopbackNetwork;
use bridge_core::router::{RouterConfig, RouterHandle};
use bridge_core::store::repo::{MlsIdentity, PortalRecord};
use bridge_core::store::{Backend, CommitConfig, open_data_dir};
use bridge_core::testkit::{self, Harness, KitOptions, NativeAction, Observed, TestUser};
use bridge_core::{Account, AccountContext, AccountId, Connector, Health, LegId, PortalId};
use connector_irc::message::Message;
use connector_irc::render::{RenderConfig, render};
use connector_irc::{Config, IrcConnector};
use harness::Ngircd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

const CHANNEL: &str = "#kit";
const BRIDGE: &str = "bridge";

/// A plain IRC client, as a test user.
struct Client {
    nick: String,
    lines: mpsc::UnboundedReceiver<Message>,
    tx: mpsc::UnboundedSender<String>,
}

impl Client {
    async fn connect(port: u16, nick: &str, channel: &str) -> Result<Self, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        let (r, mut w) = s.into_split();
        let (tx, mut out) = mpsc::unbounded_channel::<String>();
        let (in_tx, mut lines) = mpsc::unbounded_channel();
        let pong = tx.clone();
        tokio::spawn(async move {
            while let Some(l) = out.recv().await {
                if w.write_all(format!("{l}\r\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let mut r = BufReader::new(r).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let Ok(m) = Message::parse(&l) else { continue };
                if m.command == "PING" {
                    let _ = pong.send(format!("PONG :{}", m.param(0).unwrap_or_default()));
                    continue;
                }
                if in_tx.send(m).is_err() {
                    break;
                }
            }
        });
        let _ = tx.send(format!("NICK {nick}"));
        let _ = tx.send(format!("USER {nick} 0 * :{nick}"));
        let _ = tx.send(format!("JOIN {channel}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, lines.recv()).await {
                Ok(Some(m)) if m.command == "366" => break,
                Ok(Some(_)) => {}
                _ => return Err(format!("{nick} could not join {channel}")),
            }
        }
        Ok(Self { nick: nick.into(), lines, tx })
    }

    fn say(&self, channel: &str, text: &str) {
        let _ = self.tx.send(format!("PRIVMSG {channel} :{text}"));
    }
}

struct IrcHarness {
    server: Ngircd,
    user: Option<Mutex<Client>>,
}

#[async_trait]
impl Harness for IrcHarness {
    fn account_id(&self) -> AccountId {
        AccountId::parse("irc.kit").expect("account id")
    }

    async fn start_account(&mut self, ctx: AccountContext) -> Result<Arc<dyn Account>, String> {
        let cfg = Config::new(self.server.addr(), BRIDGE);
        IrcConnector.start(self.account_id(), cfg, ctx).await.map_err(|e| e.to_string())
    }

    fn room(&self) -> String {
        CHANNEL.into()
    }

    async fn create_user(&mut self, name: &str) -> Result<TestUser, String> {
        let c = Client::connect(self.server.port, name, CHANNEL).await?;
        self.user = Some(Mutex::new(c));
        Ok(TestUser { name: name.into(), native_id: name.into() })
    }

    async fn act(&mut self, _user: &TestUser, action: NativeAction) -> Result<Option<String>, String> {
        let c = self.user.as_ref().ok_or("no user")?.lock().await;
        match action {
            NativeAction::Message { text } => c.say(CHANNEL, &text),
            NativeAction::Reply { text, .. } | NativeAction::Edit { text, .. } => c.say(CHANNEL, &text),
            other => return Err(format!("IRC has no native {other:?}")),
        }
        Ok(None)
    }

    async fn observe(&mut self, _user: &TestUser, wait: Duration) -> Result<Vec<Observed>, String> {
        let mut c = self.user.as_ref().ok_or("no user")?.lock().await;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let m = if out.is_empty() {
                match tokio::time::timeout_at(deadline, c.lines.recv()).await {
                    Ok(Some(m)) => m,
                    _ => break,
                }
            } else {
                match c.lines.try_recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            };
            if !matches!(m.command.as_str(), "PRIVMSG" | "NOTICE") || m.param(0) != Some(CHANNEL) {
                continue;
            }
            let from = m.source_nick().unwrap_or_default().to_owned();
            if from == c.nick {
                continue;
            }
            let text = m.param(1).unwrap_or_default().to_owned();
            out.push(Observed::Message { from, text, native_id: None, notice: m.command == "NOTICE" });
        }
        Ok(out)
    }

    async fn drop_bridge_connection(&mut self) -> Result<(), String> {
        self.server.restart().map_err(|e| e.to_string())?;
        // The test user was disconnected too: bring it back.
        let name = self.user.as_ref().ok_or("no user")?.lock().await.nick.clone();
        let c = Client::connect(self.server.port, &name, CHANNEL).await?;
        self.user = Some(Mutex::new(c));
        Ok(())
    }

    fn degraded_contains(&self, feature: Feature, event: &OutboundEvent) -> Option<String> {
        // The documented fallback is exactly what the connector's renderer produces.
        let lines = render(event, &RenderConfig::default(), 400).ok()?;
        let first = lines.first()?.param(1)?.to_owned();
        match feature {
            Feature::Replies | Feature::Edits => Some(first),
            _ => None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_passes_the_conformance_kit_against_ngircd() {
    let server = Ngircd::start().expect("ngircd starts (installed by ./scripts/test)");
    let mut h = IrcHarness { server, user: None };
    let report = testkit::run(&mut h, KitOptions::default()).await;
    println!("{report}");
    report.assert_passed();
    assert_eq!(report.checks.len(), 12);
}

/// Router + store + loopback leg + the IRC account in one portal.
struct Slice {
    router: RouterHandle,
    lb: Arc<LoopbackNetwork>,
    account: Arc<dyn Account>,
    _dir: tempfile::TempDir,
}

async fn slice(server: &Ngircd, cfg: impl FnOnce(&mut Config)) -> Slice {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let router = RouterHandle::start(RouterConfig::new("irc.test"), store, Arc::new(LocalRoom)).await.expect("router");
    let lb_id = AccountId::parse("lb.other").expect("id");
    let lb = LoopbackNetwork::new(lb_id.clone(), AccountContext::new(lb_id, router.clone(), "irc.test"));
    router.add_account(lb.clone());
    let id = AccountId::parse("irc.t").expect("id");
    let mut c = Config::new(server.addr(), BRIDGE);
    cfg(&mut c);
    let account = IrcConnector
        .start(id.clone(), c, AccountContext::new(id.clone(), router.clone(), "irc.test"))
        .await
        .expect("start");
    router.add_account(account.clone());
    let p = PortalId::new("p").expect("portal");
    router.create_portal(PortalRecord { id: p.clone(), mls_identity: MlsIdentity::Shared }).await.expect("portal");
    router.link(LegId::new(id, CHANNEL).expect("leg"), &p).await.expect("link");
    router.link(lb.leg("#lb"), &p).await.expect("link");
    account.join(CHANNEL).await.expect("join");
    let mut h = account.health();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while *h.borrow_and_update() != Health::Connected {
        tokio::time::timeout_at(deadline, h.changed()).await.expect("connects in time").expect("health");
    }
    Slice { router, lb, account, _dir: dir }
}

async fn collect(c: &mut Client, n: usize, timeout: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, c.lines.recv()).await {
            Ok(Some(m)) if m.command == "PRIVMSG" && m.source_nick() == Some(BRIDGE) => {
                got.push(m.param(1).unwrap_or_default().to_owned())
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_500_arrives_complete_and_in_order_without_a_flood_kill() {
    // Stock ngIRCd flood control; the connector paces itself (burst 5, then 2 lines/s by default). To keep the
    // test short the account is configured at 20 lines/s and ngIRCd's penalty delays are off
    // (`MaxPenaltyTime = 0`, see peers.md); the 3-commands-per-read cap stays.
    let server = Ngircd::start_with(harness::NgircdOptions { no_penalty: true }).expect("ngircd");
    let s = slice(&server, |c| {
        c.flood_burst = 10;
        c.flood_rate = 20.0;
    })
    .await;
    let mut watcher = Client::connect(server.port, "watcher", CHANNEL).await.expect("watcher");
    let started = Instant::now();
    for i in 0..500 {
        let kind = InboundKind::Message { draft: MessageDraft::plain(format!("burst {i}")), reply_to: None };
        s.lb.say_with_id("#lb", "alice", &format!("b{i}"), kind).await.expect("accepted");
    }
    let got = collect(&mut watcher, 500, Duration::from_secs(90)).await;
    let took = started.elapsed();
    let want: Vec<String> = (0..500).map(|i| format!("<a\u{200B}lice> burst {i}")).collect();
    assert_eq!(got.len(), 500, "all 500 arrived");
    assert_eq!(got, want, "in order");
    assert_eq!(*s.account.health().borrow(), Health::Connected, "never killed");
    println!("500 lines relayed to IRC in {took:?} ({:.1} lines/s)", 500.0 / took.as_secs_f64());
    s.router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ngircd_restart_mid_stream_loses_nothing() {
    let mut server = Ngircd::start().expect("ngircd");
    let s = slice(&server, |c| c.flood_rate = 10.0).await;
    for i in 0..20 {
        let kind = InboundKind::Message { draft: MessageDraft::plain(format!("before {i}")), reply_to: None };
        s.lb.say_with_id("#lb", "alice", &format!("a{i}"), kind).await.expect("accepted");
    }
    server.restart().expect("restart");
    // Accepted while the bridge is disconnected: must be delivered after it reconnects.
    for i in 0..20 {
        let kind = InboundKind::Message { draft: MessageDraft::plain(format!("after {i}")), reply_to: None };
        s.lb.say_with_id("#lb", "alice", &format!("c{i}"), kind).await.expect("accepted");
    }
    let mut watcher = Client::connect(server.port, "watcher", CHANNEL).await.expect("watcher");
    // Lines not yet written when the server went away are sent again after the reconnect, so "before" lines
    // may come first; collect until the last "after" line.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !got.iter().any(|l: &String| l.ends_with("after 19")) && Instant::now() < deadline {
        got.extend(collect(&mut watcher, 1, Duration::from_secs(5)).await);
    }
    let after: Vec<&String> = got.iter().filter(|l| l.contains("after")).collect();
    assert_eq!(after.len(), 20, "every message accepted during the outage arrived: {got:?}");
    for (i, l) in after.iter().enumerate() {
        assert!(l.ends_with(&format!("after {i}")), "order: {l}");
    }
    // And IRC → the other side works again.
    watcher.say(CHANNEL, "back again");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if s.lb.delivered().iter().any(|e| matches!(&e.kind, bridge_core::event::OutboundKind::Message { draft, .. } if draft.body == "back again")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "IRC → bridge after reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = s.router.status().await;
    let failed: u64 = st.iter().flat_map(|p| &p.legs).map(|l| l.failed).sum();
    assert_eq!(failed, 0, "nothing given up: {st:?}");
    s.router.shutdown().await;
}
