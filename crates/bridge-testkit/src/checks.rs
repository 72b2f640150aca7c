//! The checks of the conformance kit (see the table in the module docs).

use super::{Harness, KitOptions, NativeAction, Observed, Report, TestUser};
use crate::loopback::LoopbackNetwork;
use async_trait::async_trait;
use bridge_api::capability::{Capabilities, Feature, Grade};
use bridge_api::connector::{Account, AccountContext, ConnectorError, Delivery, Health, SendError};
use bridge_api::event::{InboundKind, MessageDraft, OutboundEvent, OutboundKind};
use bridge_api::ids::{AccountId, NativeId, PortalId};
use bridge_core::repo::{MlsIdentity, PortalRecord};
use bridge_core::room_of_record::LocalRoom;
use bridge_core::router::{RouterConfig, RouterHandle};
use mimi_store::{Backend, CommitConfig};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

const LB_ROOM: &str = "#kit";
const LB_USER: &str = "kitbob";

/// Wraps the connector's account to record what the core asked of it and what it answered.
struct Recording {
    inner: Arc<dyn Account>,
    sent: Mutex<Vec<(OutboundEvent, Result<Delivery, SendError>)>>,
}

#[async_trait]
impl Account for Recording {
    fn id(&self) -> &AccountId {
        self.inner.id()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn join(&self, room: &str) -> Result<(), ConnectorError> {
        self.inner.join(room).await
    }
    async fn leave(&self, room: &str) -> Result<(), ConnectorError> {
        self.inner.leave(room).await
    }
    async fn send(&self, event: &OutboundEvent) -> Result<Delivery, SendError> {
        let r = self.inner.send(event).await;
        if let Ok(mut s) = self.sent.lock() {
            s.push((event.clone(), r.clone()));
        }
        r
    }
    fn health(&self) -> watch::Receiver<Health> {
        self.inner.health()
    }
    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

struct Kit<'h, H: Harness> {
    h: &'h mut H,
    opt: KitOptions,
    router: RouterHandle,
    lb: Arc<LoopbackNetwork>,
    account: Arc<Recording>,
    health_log: Arc<Mutex<Vec<Health>>>,
    user: TestUser,
    seen: Vec<Observed>,
    caps: Capabilities,
    tag: u64,
    _dir: tempfile::TempDir,
}

pub(super) async fn run<H: Harness>(h: &mut H, opt: KitOptions) -> Report {
    let mut report = Report::default();
    let mut kit = match Kit::setup(h, opt).await {
        Ok(k) => k,
        Err(e) => {
            report.record("setup", Err(e));
            return report;
        }
    };
    let names: [&str; 12] = [
        "health",
        "inbound",
        "outbound",
        "ordering",
        "echo",
        "dedup",
        "replies",
        "edits",
        "deletes",
        "reactions",
        "hostile",
        "reconnect",
    ];
    for name in names {
        if let Some((_, why)) = kit.opt.skip.iter().find(|(n, _)| *n == name) {
            report.skip(name, why);
            continue;
        }
        let r = match name {
            "health" => kit.health().await,
            "inbound" => kit.inbound().await,
            "outbound" => kit.outbound().await,
            "ordering" => kit.ordering().await,
            "echo" => kit.echo().await,
            "dedup" => match kit.dedup().await {
                Ok(true) => Ok(()),
                Ok(false) => {
                    report.skip(name, "the network never redelivers events");
                    continue;
                }
                Err(e) => Err(e),
            },
            "replies" => kit.feature(Feature::Replies).await,
            "edits" => kit.feature(Feature::Edits).await,
            "deletes" => kit.feature(Feature::Deletes).await,
            "reactions" => kit.feature(Feature::Reactions).await,
            "hostile" => kit.hostile().await,
            _ => kit.reconnect().await,
        };
        report.record(name, r);
    }
    kit.router.shutdown().await;
    report
}

impl<'h, H: Harness> Kit<'h, H> {
    async fn setup(h: &'h mut H, opt: KitOptions) -> Result<Kit<'h, H>, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let store = bridge_core::open_store(dir.path(), Some(Backend::Redb), CommitConfig::default())
            .map_err(|e| e.to_string())?;
        let mut rc = RouterConfig::new("kit.test");
        rc.retry_initial = Duration::from_millis(100);
        rc.retry_max = Duration::from_secs(2);
        let router = RouterHandle::start(rc, store, Arc::new(LocalRoom)).await.map_err(|e| e.to_string())?;
        let lb_id = AccountId::parse("kitloop.other").map_err(|e| e.to_string())?;
        let lb = LoopbackNetwork::new(lb_id.clone(), AccountContext::new(lb_id, router.clone(), "kit.test"));
        router.add_account(lb.clone());
        let id = h.account_id();
        let account = h
            .start_account(AccountContext::new(id.clone(), router.clone(), "kit.test"))
            .await
            .map_err(|e| format!("start_account: {e}"))?;
        if account.id() != &id {
            return Err(format!("the account reports id {} but the harness said {id}", account.id()));
        }
        let caps = account.capabilities();
        let account = Arc::new(Recording { inner: account, sent: Mutex::default() });
        router.add_account(account.clone());
        let health_log = Arc::new(Mutex::new(Vec::new()));
        let mut rx = account.health();
        let log = health_log.clone();
        tokio::spawn(async move {
            loop {
                let h = rx.borrow_and_update().clone();
                if let Ok(mut l) = log.lock() {
                    l.push(h);
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
        let portal = PortalId::new("kit").map_err(|e| e.to_string())?;
        router
            .create_portal(PortalRecord { id: portal.clone(), mls_identity: MlsIdentity::Shared })
            .await
            .map_err(|e| e.to_string())?;
        let room = h.room();
        let leg = bridge_api::ids::LegId::new(account.id().clone(), room.clone()).map_err(|e| e.to_string())?;
        router.link(lb.leg(LB_ROOM), &portal).await.map_err(|e| e.to_string())?;
        match router.link_and_join(leg, &portal).await.map_err(|e| e.to_string())? {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("join {room}: {e}")),
            None => return Err(format!("the account of {room} is not registered with the router")),
        }
        let user = h.create_user("kituser").await.map_err(|e| format!("create_user: {e}"))?;
        let mut kit = Kit { h, opt, router, lb, account, health_log, user, seen: Vec::new(), caps, tag: 0, _dir: dir };
        kit.warm_up().await?;
        Ok(kit)
    }

    /// Setup, not a check: joining happens in the background, and a line said in the room before the bridge is in
    /// it never reaches the bridge. The test user says a warm-up line every half second until the other side gets
    /// one; the checks start after that.
    async fn warm_up(&mut self) -> Result<(), String> {
        self.await_health(|h| *h == Health::Connected, self.opt.timeout)
            .await
            .map_err(|e| format!("the account did not connect: {e}"))?;
        let user = self.user.clone();
        let deadline = Instant::now() + self.opt.timeout;
        for i in 0.. {
            let text = format!("kit warm-up {i}");
            self.h.act(&user, NativeAction::Message { text }).await?;
            let got = tokio::time::timeout(
                Duration::from_millis(500),
                self.await_lb("a warm-up line", |e| body(e).starts_with("kit warm-up")),
            )
            .await;
            if let Ok(Ok(_)) = got {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("the bridge never received anything the test user said in the room".into());
            }
        }
        Ok(())
    }

    fn fresh(&mut self, what: &str) -> String {
        self.tag += 1;
        format!("kit {what} {}", self.tag)
    }

    /// Collects the test user's observations until `pred` matches one (returns a clone of it) or time runs out.
    async fn await_seen(&mut self, what: &str, pred: impl Fn(&Observed) -> bool) -> Result<Observed, String> {
        let deadline = Instant::now() + self.opt.timeout;
        loop {
            if let Some(o) = self.seen.iter().find(|o| pred(o)) {
                return Ok(o.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("the test user never saw {what}; saw: {:?}", self.seen));
            }
            let wait = (deadline - now).min(Duration::from_millis(500));
            let new = self.h.observe(&self.user, wait).await?;
            self.seen.extend(new);
        }
    }

    /// Drains observations for a moment (to catch duplicates that would arrive late).
    async fn settle(&mut self) -> Result<(), String> {
        let new = self.h.observe(&self.user, Duration::from_millis(500)).await?;
        self.seen.extend(new);
        Ok(())
    }

    /// Waits until the loopback side got an event matching `pred`.
    async fn await_lb(&self, what: &str, pred: impl Fn(&OutboundEvent) -> bool) -> Result<OutboundEvent, String> {
        let deadline = Instant::now() + self.opt.timeout;
        loop {
            let d = self.lb.delivered();
            if let Some(e) = d.iter().find(|e| pred(e)) {
                return Ok(e.clone());
            }
            if Instant::now() >= deadline {
                let got: Vec<String> = d.iter().map(describe).collect();
                return Err(format!("the other side never got {what}; got: {got:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn await_health(&self, pred: impl Fn(&Health) -> bool, timeout: Duration) -> Result<Health, String> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.account.health();
        loop {
            let h = rx.borrow_and_update().clone();
            if pred(&h) {
                return Ok(h);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("health stayed {h:?}"));
            }
            let _ = tokio::time::timeout(deadline - now, rx.changed()).await;
        }
    }

    async fn lb_say(&self, text: &str, reply_to: Option<NativeId>) -> Result<NativeId, String> {
        let n = NativeId(format!("kitlb-{}", text.replace(' ', "-")));
        let kind = InboundKind::Message { draft: MessageDraft::plain(text), reply_to };
        self.lb.say_with_id(LB_ROOM, LB_USER, &n.0, kind).await.map_err(|e| format!("core refused: {e}"))?;
        Ok(n)
    }

    // ---- checks ----

    async fn health(&mut self) -> Result<(), String> {
        self.await_health(|h| *h == Health::Connected, self.opt.timeout)
            .await
            .map(|_| ())
            .map_err(|e| format!("the account did not report Connected: {e}"))
    }

    async fn inbound(&mut self) -> Result<(), String> {
        let text = self.fresh("inbound");
        let user = self.user.clone();
        self.h.act(&user, NativeAction::Message { text: text.clone() }).await?;
        let ev = self.await_lb(&format!("{text:?}"), |e| body(e).contains(&text)).await?;
        match &ev.sender.legacy {
            Some(u) if u.native_id == self.user.native_id => {}
            other => {
                return Err(format!("message attributed to {other:?}, expected native id {:?}", self.user.native_id));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = self.lb.delivered().iter().filter(|e| body(e).contains(&text)).count();
        if n != 1 {
            return Err(format!("the other side got {text:?} {n} times"));
        }
        Ok(())
    }

    async fn outbound(&mut self) -> Result<(), String> {
        let text = self.fresh("outbound");
        self.lb_say(&text, None).await?;
        self.await_seen(&format!("{text:?}"), |o| o.text().is_some_and(|t| t.contains(&text))).await?;
        self.settle().await?;
        let n = self.seen.iter().filter(|o| o.text().is_some_and(|t| t.contains(&text))).count();
        if n != 1 {
            return Err(format!("the test user saw {text:?} {n} times"));
        }
        Ok(())
    }

    async fn ordering(&mut self) -> Result<(), String> {
        let texts: Vec<String> = (0..10).map(|i| format!("{} #{i}", self.fresh("order-out"))).collect();
        for t in &texts {
            self.lb_say(t, None).await?;
        }
        let last = texts[9].clone();
        self.await_seen("the last of 10 ordered messages", |o| o.text().is_some_and(|t| t.contains(&last))).await?;
        let got: Vec<&String> = texts
            .iter()
            .filter(|t| self.seen.iter().any(|o| o.text().is_some_and(|x| x.contains(t.as_str()))))
            .collect();
        let positions: Vec<usize> = texts
            .iter()
            .filter_map(|t| self.seen.iter().position(|o| o.text().is_some_and(|x| x.contains(t.as_str()))))
            .collect();
        if got.len() != 10 || positions.windows(2).any(|w| w[0] > w[1]) {
            return Err(format!("outbound order broken: positions {positions:?} for {texts:?}"));
        }
        let ins: Vec<String> = (0..10).map(|i| format!("{} #{i}", self.fresh("order-in"))).collect();
        let user = self.user.clone();
        for t in &ins {
            self.h.act(&user, NativeAction::Message { text: t.clone() }).await?;
        }
        let last = ins[9].clone();
        self.await_lb("the last of 10 ordered messages", |e| body(e).contains(&last)).await?;
        let d = self.lb.delivered();
        let positions: Vec<usize> =
            ins.iter().filter_map(|t| d.iter().position(|e| body(e).contains(t.as_str()))).collect();
        if positions.len() != 10 || positions.windows(2).any(|w| w[0] > w[1]) {
            return Err(format!("inbound order broken: positions {positions:?}"));
        }
        Ok(())
    }

    async fn echo(&mut self) -> Result<(), String> {
        // Everything the other side said went through the connector; none of it may come back.
        let text = self.fresh("echo");
        self.lb_say(&text, None).await?;
        self.await_seen(&format!("{text:?}"), |o| o.text().is_some_and(|t| t.contains(&text))).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let echoes: Vec<String> = self
            .lb
            .delivered()
            .iter()
            .map(body)
            .filter(|b| b.contains("kit outbound") || b.contains("kit echo") || b.contains("kit order-out"))
            .collect();
        if !echoes.is_empty() {
            return Err(format!("the connector submitted the bridge's own messages back as inbound: {echoes:?}"));
        }
        Ok(())
    }

    /// The network delivers the last inbound event twice; the other side must get it once.
    async fn dedup(&mut self) -> Result<bool, String> {
        let text = self.fresh("dedup");
        let user = self.user.clone();
        self.h.act(&user, NativeAction::Message { text: text.clone() }).await?;
        self.await_lb(&format!("{text:?}"), |e| body(e).contains(&text)).await?;
        if !self.h.redeliver_last().await? {
            return Ok(false);
        }
        // A message after the redelivered copy: once it arrived, the copy (if bridged) has arrived too.
        let after = self.fresh("after-dedup");
        self.h.act(&user, NativeAction::Message { text: after.clone() }).await?;
        self.await_lb(&format!("{after:?}"), |e| body(e).contains(&after)).await?;
        let n = self.lb.delivered().iter().filter(|e| body(e).contains(&text)).count();
        if n != 1 {
            return Err(format!("a redelivered event reached the other side {n} times (its native id must be stable)"));
        }
        Ok(true)
    }

    /// A parent message from the other side, as the test user sees it: (core native id on lb, user's native id).
    async fn parent(&mut self, what: &str) -> Result<(NativeId, Option<String>), String> {
        let text = self.fresh(what);
        let lb_id = self.lb_say(&text, None).await?;
        let seen = self.await_seen(&format!("{text:?}"), |o| o.text().is_some_and(|t| t.contains(&text))).await?;
        // The test user may see the parent before the connector's send() returns (it may wait for the network's
        // answer): wait until the delivery is recorded, so that the next recorded send is the feature's own.
        let deadline = Instant::now() + self.opt.timeout;
        while !self.account.sent.lock().map(|s| s.iter().any(|(e, _)| body(e).contains(&text))).unwrap_or(true) {
            if Instant::now() >= deadline {
                return Err(format!("send() of {text:?} never returned"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let native = match seen {
            Observed::Message { native_id, .. } => native_id,
            _ => None,
        };
        Ok((lb_id, native))
    }

    async fn feature(&mut self, f: Feature) -> Result<(), String> {
        let grade = self.caps.grade(f);
        let (parent_lb, parent_user) = self.parent("parent").await?;
        let sent_before = self.sent_count();
        // Outbound: the other side uses the feature on the parent.
        let text = self.fresh("feature");
        let kind = match f {
            Feature::Replies => {
                InboundKind::Message { draft: MessageDraft::plain(&text), reply_to: Some(parent_lb.clone()) }
            }
            Feature::Edits => InboundKind::Edit { target: parent_lb.clone(), draft: MessageDraft::plain(&text) },
            Feature::Deletes => InboundKind::Delete { target: parent_lb.clone() },
            _ => InboundKind::ReactionAdd { target: parent_lb.clone(), key: "👍".into() },
        };
        let n = format!("kitlb-f-{}", self.tag);
        self.lb.say_with_id(LB_ROOM, LB_USER, &n, kind).await.map_err(|e| format!("core refused: {e}"))?;
        let ev = self.await_sent(sent_before).await?;
        let result = ev.1.clone();
        let ev = ev.0;
        match grade {
            Grade::Unsupported => {
                if !matches!(result, Err(SendError::Rejected(_))) {
                    return Err(format!("{f:?} is declared unsupported but send() answered {result:?}"));
                }
                self.await_lb("the undeliverable notice", |e| body(e).contains("not delivered")).await?;
                return Ok(());
            }
            Grade::Notice => {
                self.await_seen("a notice", |o| matches!(o, Observed::Message { notice: true, .. })).await?;
            }
            Grade::Degraded => {
                let want = self.h.degraded_contains(f, &ev);
                // Without a documented fallback text, replies and edits must at least carry their new text.
                let must = match (f, &want) {
                    (Feature::Replies | Feature::Edits, None) => Some(text.clone()),
                    _ => None,
                };
                if want.is_none() && must.is_none() {
                    return Err(format!("{f:?} is declared degraded but the harness documents no fallback text"));
                }
                let (w, m) = (want.clone(), must.clone());
                self.await_seen(&format!("the degraded form (containing {want:?} and {must:?})"), move |o| {
                    o.text().is_some_and(|t| {
                        w.as_ref().is_none_or(|w| t.contains(w.as_str()))
                            && m.as_ref().is_none_or(|m| t.contains(m.as_str()))
                    })
                })
                .await?;
            }
            Grade::Full => {
                let target = parent_user.clone().ok_or("the harness reported no native id for the parent")?;
                let t = text.clone();
                let tg = target.clone();
                self.await_seen(&format!("a native {f:?} on {target}"), move |o| match (f, o) {
                    (Feature::Replies, Observed::Reply { to, text, .. }) => *to == tg && text.contains(&t),
                    (Feature::Edits, Observed::Edit { target, text, .. }) => *target == tg && text.contains(&t),
                    (Feature::Deletes, Observed::Delete { target, .. }) => *target == tg,
                    (Feature::Reactions, Observed::Reaction { target, key, .. }) => *target == tg && key == "👍",
                    _ => false,
                })
                .await?;
                self.inbound_feature(f, parent_lb, target).await?;
            }
        }
        Ok(())
    }

    /// Inbound direction of a `full` feature: the test user uses it natively; the other side must get it.
    async fn inbound_feature(&mut self, f: Feature, parent_lb: NativeId, parent_user: String) -> Result<(), String> {
        let user = self.user.clone();
        let text = self.fresh("native");
        let (action, own) = match f {
            Feature::Replies => (NativeAction::Reply { to: parent_user, text: text.clone() }, None),
            Feature::Reactions => (NativeAction::React { target: parent_user, key: "🎉".into() }, None),
            Feature::Edits | Feature::Deletes => {
                let own_text = self.fresh("own");
                let own = self
                    .h
                    .act(&user, NativeAction::Message { text: own_text.clone() })
                    .await?
                    .ok_or("the harness reported no native id for the user's own message")?;
                self.await_lb(&format!("{own_text:?}"), |e| body(e).contains(&own_text)).await?;
                let a = if f == Feature::Edits {
                    NativeAction::Edit { target: own.clone(), text: text.clone() }
                } else {
                    NativeAction::Delete { target: own.clone() }
                };
                (a, Some(own_text))
            }
            _ => return Ok(()),
        };
        self.h.act(&user, action).await?;
        let lb_parent = parent_lb.clone();
        self.await_lb(&format!("the native {f:?}"), move |e| match (&e.kind, f) {
            (OutboundKind::Message { reply_to: Some(p), draft }, Feature::Replies) => {
                p.native_id.as_ref() == Some(&lb_parent) && draft.body.contains(&text)
            }
            (OutboundKind::ReactionAdd { target, key, .. }, Feature::Reactions) => {
                target.native_id.as_ref() == Some(&lb_parent) && key == "🎉"
            }
            (OutboundKind::Edit { target, draft }, Feature::Edits) => {
                own.as_ref().is_some_and(|o| target.excerpt.contains(o.as_str())) && draft.body.contains(&text)
            }
            (OutboundKind::Delete { target }, Feature::Deletes) => {
                own.as_ref().is_some_and(|o| target.excerpt.contains(o.as_str()))
            }
            _ => false,
        })
        .await?;
        Ok(())
    }

    fn sent_count(&self) -> usize {
        self.account.sent.lock().map(|s| s.len()).unwrap_or(0)
    }

    async fn await_sent(&self, before: usize) -> Result<(OutboundEvent, Result<Delivery, SendError>), String> {
        let deadline = Instant::now() + self.opt.timeout;
        loop {
            if let Some(e) = self.account.sent.lock().ok().and_then(|s| s.get(before).cloned()) {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                return Err("the core never asked the connector to send the event".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn hostile(&mut self) -> Result<(), String> {
        let evil = "kit hostile\r\nQUIT :injected\r\nPRIVMSG #kit :injected <script>alert(1)</script>\n\u{0}end";
        self.lb_say(evil, None).await?;
        let after = self.fresh("after-hostile");
        self.lb_say(&after, None).await?;
        self.await_seen(&format!("{after:?} after hostile text"), |o| o.text().is_some_and(|t| t.contains(&after)))
            .await?;
        if let Some(o) = self.seen.iter().find(|o| o.text().is_some_and(|t| t.trim_start().starts_with("injected"))) {
            return Err(format!("hostile text was interpreted as protocol: the test user saw {o:?}"));
        }
        let h = self.account.health().borrow().clone();
        if h != Health::Connected {
            return Err(format!("the connection did not survive hostile text: health {h:?}"));
        }
        // Inbound: markup from the network stays text.
        let user = self.user.clone();
        let text = format!("{} <b>bold</b> & <script>x</script>", self.fresh("markup"));
        self.h.act(&user, NativeAction::Message { text: text.clone() }).await?;
        self.await_lb("markup as literal text", |e| body(e).contains("<b>bold</b> & <script>x</script>")).await?;
        Ok(())
    }

    async fn reconnect(&mut self) -> Result<(), String> {
        let mark = self.health_log.lock().map(|l| l.len()).unwrap_or(0);
        self.h.drop_bridge_connection().await?;
        let lost = |l: &[Health]| l.iter().any(|h| *h != Health::Connected);
        let deadline = Instant::now() + self.opt.reconnect_timeout;
        loop {
            let (saw_loss, now_ok) = match self.health_log.lock() {
                Ok(l) => (lost(&l[mark.min(l.len())..]), l.last() == Some(&Health::Connected)),
                Err(_) => (false, false),
            };
            if saw_loss && now_ok {
                break;
            }
            if Instant::now() >= deadline {
                let l = self.health_log.lock().map(|l| l[mark.min(l.len())..].to_vec()).unwrap_or_default();
                return Err(format!(
                    "no reconnect within {:?}; health since the drop: {l:?}",
                    self.opt.reconnect_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Messages flow again both ways (the test user may have been disconnected too: the harness reconnects it).
        let text = self.fresh("after-reconnect-out");
        self.lb_say(&text, None).await?;
        self.await_seen(&format!("{text:?}"), |o| o.text().is_some_and(|t| t.contains(&text))).await?;
        let text = self.fresh("after-reconnect-in");
        let user = self.user.clone();
        self.h.act(&user, NativeAction::Message { text: text.clone() }).await?;
        self.await_lb(&format!("{text:?}"), |e| body(e).contains(&text)).await?;
        Ok(())
    }
}

fn body(e: &OutboundEvent) -> String {
    match &e.kind {
        OutboundKind::Message { draft, .. } | OutboundKind::Edit { draft, .. } => draft.body.clone(),
        _ => String::new(),
    }
}

fn describe(e: &OutboundEvent) -> String {
    format!("{} {:?}", e.kind.name(), body(e))
}
