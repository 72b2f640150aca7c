//! The template connector runs the conformance kit against its (fake, in-process) server — and a deliberately
//! broken variant fails it with a message that says what is wrong (the kit's own test).

use async_trait::async_trait;
use bridge_api::capability::{Capabilities, Feature, Grade};
use bridge_api::connector::{Delivery, SendError};
use bridge_api::event::{OutboundEvent, OutboundKind};
use bridge_api::{Account, AccountContext, AccountId, Connector, ConnectorError, Health};
use bridge_testkit::{CheckResult, Harness, KitOptions, NativeAction, Observed, TestUser};
use connector_template::fake_server::FakeServer;
use connector_template::proto::{ClientLine, ServerLine, Verb};
use connector_template::{Config, ToychatConnector};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, mpsc, watch};

const ROOM: &str = "#kit";
const BRIDGE_NICK: &str = "bridge";

/// A toychat user driven by the test.
struct Client {
    nick: String,
    w: OwnedWriteHalf,
    lines: mpsc::UnboundedReceiver<String>,
    tag: u64,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, nick: &str) -> Result<Self, String> {
        let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (r, mut w) = s.into_split();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(r).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        for l in [ClientLine::Hello(nick.into()), ClientLine::Join(ROOM.into())] {
            w.write_all(format!("{}\n", l.to_line()).as_bytes()).await.map_err(|e| e.to_string())?;
        }
        Ok(Self { nick: nick.into(), w, lines, tag: 0 })
    }

    async fn command(&mut self, verb: Verb) -> Result<Option<String>, String> {
        self.tag += 1;
        let tag = format!("c{}", self.tag);
        let line = ClientLine::Tagged { tag: tag.clone(), verb }.to_line();
        self.w.write_all(format!("{line}\n").as_bytes()).await.map_err(|e| e.to_string())?;
        // The ACK arrives before the room event; other lines stay queued for `observe`.
        let mut held = Vec::new();
        let r = loop {
            let Ok(Some(l)) = tokio::time::timeout(Duration::from_secs(10), self.lines.recv()).await else {
                break Err("no ACK".to_string());
            };
            match ServerLine::parse(&l) {
                Ok(ServerLine::Ack { tag: t, id }) if t == tag => break Ok(Some(id)),
                Ok(ServerLine::Err { tag: t, reason }) if t == tag => break Err(reason),
                _ => held.push(l),
            }
        };
        // Put back what we skipped, in order, ahead of anything newer.
        let (tx, rx) = mpsc::unbounded_channel();
        for l in held {
            let _ = tx.send(l);
        }
        while let Ok(l) = self.lines.try_recv() {
            let _ = tx.send(l);
        }
        let old = std::mem::replace(&mut self.lines, rx);
        tokio::spawn(forward(old, tx));
        r
    }
}

async fn forward(mut from: mpsc::UnboundedReceiver<String>, to: mpsc::UnboundedSender<String>) {
    while let Some(l) = from.recv().await {
        if to.send(l).is_err() {
            break;
        }
    }
}

/// How the harness breaks the connector, for the kit's self-test.
#[derive(Clone, Copy, PartialEq)]
enum Breakage {
    None,
    /// Claims native edits but posts them as new messages.
    EditsAsMessages,
}

struct ToyHarness {
    server: FakeServer,
    user: Option<Mutex<Client>>,
    breakage: Breakage,
}

/// The template's account with a bug injected.
struct Broken {
    inner: Arc<dyn Account>,
}

#[async_trait]
impl Account for Broken {
    fn id(&self) -> &AccountId {
        self.inner.id()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities().with(Feature::Edits, Grade::Full)
    }
    async fn join(&self, room: &str) -> Result<(), ConnectorError> {
        self.inner.join(room).await
    }
    async fn leave(&self, room: &str) -> Result<(), ConnectorError> {
        self.inner.leave(room).await
    }
    async fn send(&self, event: &OutboundEvent) -> Result<Delivery, SendError> {
        let mut ev = event.clone();
        if let OutboundKind::Edit { draft, .. } = &ev.kind {
            ev.kind = OutboundKind::Message { draft: draft.clone(), reply_to: None };
        }
        self.inner.send(&ev).await
    }
    fn health(&self) -> watch::Receiver<Health> {
        self.inner.health()
    }
    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

#[async_trait]
impl Harness for ToyHarness {
    fn account_id(&self) -> AccountId {
        AccountId::parse("toychat.kit").expect("account id")
    }

    async fn start_account(&mut self, ctx: AccountContext) -> Result<Arc<dyn Account>, String> {
        let cfg = Config { server: self.server.addr.to_string(), nick: BRIDGE_NICK.into() };
        let acc = ToychatConnector.start(self.account_id(), cfg, ctx).await.map_err(|e| e.to_string())?;
        Ok(match self.breakage {
            Breakage::None => acc,
            Breakage::EditsAsMessages => Arc::new(Broken { inner: acc }),
        })
    }

    fn room(&self) -> String {
        ROOM.into()
    }

    async fn create_user(&mut self, name: &str) -> Result<TestUser, String> {
        let c = Client::connect(self.server.addr, name).await?;
        self.user = Some(Mutex::new(c));
        Ok(TestUser { name: name.into(), native_id: name.into() })
    }

    async fn act(&mut self, _user: &TestUser, action: NativeAction) -> Result<Option<String>, String> {
        let c = self.user.as_ref().ok_or("no user")?;
        let room = ROOM.to_string();
        let verb = match action {
            NativeAction::Message { text } => Verb::Say { room, text },
            NativeAction::Reply { to, text } => Verb::Reply { room, parent: to, text },
            NativeAction::Edit { target, text } => Verb::Edit { room, target, text },
            NativeAction::Delete { target } => Verb::Del { room, target },
            NativeAction::React { target, key } => Verb::React { room, target, key },
        };
        c.lock().await.command(verb).await
    }

    async fn observe(&mut self, _user: &TestUser, wait: Duration) -> Result<Vec<Observed>, String> {
        let c = self.user.as_ref().ok_or("no user")?;
        let mut c = c.lock().await;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while out.is_empty() {
            let l = match tokio::time::timeout_at(deadline, c.lines.recv()).await {
                Ok(Some(l)) => l,
                _ => break,
            };
            let Ok(ServerLine::Evt { id, nick, verb }) = ServerLine::parse(&l) else { continue };
            if nick == c.nick {
                continue;
            }
            out.push(match verb {
                Verb::Say { text, .. } => {
                    let notice = text.starts_with("[notice]");
                    Observed::Message { from: nick, text, native_id: Some(id), notice }
                }
                Verb::Reply { parent, text, .. } => Observed::Reply { from: nick, text, to: parent },
                Verb::Edit { target, text, .. } => Observed::Edit { from: nick, text, target },
                Verb::Del { target, .. } => Observed::Delete { from: nick, target },
                Verb::React { target, key, .. } => Observed::Reaction { from: nick, key, target },
                Verb::Unreact { .. } => continue,
            });
            while let Ok(more) = c.lines.try_recv() {
                if let Ok(ServerLine::Evt { id, nick, verb: Verb::Say { text, .. } }) = ServerLine::parse(&more)
                    && nick != c.nick
                {
                    let notice = text.starts_with("[notice]");
                    out.push(Observed::Message { from: nick, text, native_id: Some(id), notice });
                } else if let Ok(ServerLine::Evt { nick, .. }) = ServerLine::parse(&more)
                    && nick != c.nick
                {
                    // Re-run the full translation for non-SAY events on the next call.
                    let (tx, rx) = mpsc::unbounded_channel();
                    let _ = tx.send(more);
                    let old = std::mem::replace(&mut c.lines, rx);
                    tokio::spawn(forward(old, tx));
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn redeliver_last(&mut self) -> Result<bool, String> {
        match self.server.redeliver_last(BRIDGE_NICK) {
            0 => Err("nothing to redeliver".into()),
            _ => Ok(true),
        }
    }

    async fn drop_bridge_connection(&mut self) -> Result<(), String> {
        match self.server.kick(BRIDGE_NICK) {
            0 => Err("the bridge was not connected".into()),
            _ => Ok(()),
        }
    }
}

async fn harness(breakage: Breakage) -> ToyHarness {
    ToyHarness { server: FakeServer::start().await.expect("fake server"), user: None, breakage }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_passes_the_conformance_kit() {
    let mut h = harness(Breakage::None).await;
    let report = bridge_testkit::run(&mut h, KitOptions::default()).await;
    println!("{report}");
    report.assert_passed();
    assert_eq!(report.checks.len(), 12, "every check ran");
    assert_eq!(report.get("dedup"), Some(&CheckResult::Passed), "toychat redelivers, so dedup is checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connector_fails_the_kit_with_a_clear_message() {
    let mut h = harness(Breakage::EditsAsMessages).await;
    let opts = KitOptions { timeout: Duration::from_secs(3), ..KitOptions::default() };
    let report = bridge_testkit::run(&mut h, opts).await;
    println!("{report}");
    match report.get("edits") {
        Some(CheckResult::Failed(msg)) => assert!(msg.contains("never saw a native Edits"), "{msg}"),
        other => panic!("the edits check should fail, got {other:?}"),
    }
    assert_eq!(report.get("replies"), Some(&CheckResult::Passed), "only the broken feature fails");
}
