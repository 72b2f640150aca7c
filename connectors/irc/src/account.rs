//! The IO shell of an IRC account: the bot connection (which reads the channels for inbound in both modes and
//! sends relayed lines) and, in per-user mode, a pool of per-sender connections opened lazily, registered as
//! ghosts with the core, reaped when idle, capped (beyond the cap, the bot relays). The decisions are made by the
//! sans-IO [`crate::pool`]; each connection is a `conn::Conn` with its own flood control ([`crate::pace`]) and reconnect backoff.

use crate::conn::{Conn, Role, Settings, View};
use crate::inbound::{self, Conventions, History, Line};
use crate::isupport::valid_channel;
use crate::message::Message;
use crate::pace::{PaceConfig, WINDOW_BYTES};
use crate::pool::{self, ConnState, Pool, Route, Via};
use crate::render::{self, RenderConfig};
use crate::roster::MemberChange;
use crate::session::{AltNicks, Identity, Sasl, Session};
use crate::tls::Tls;
use crate::{Config, Connections, capabilities};
use async_trait::async_trait;
use bridge_api::capability::Capabilities;
use bridge_api::connector::{Delivery, SendError};
use bridge_api::event::{OutboundEvent, OutboundKind};
use bridge_api::{Account, AccountContext, AccountId, ConnectorError, Health, InboundSink, NativeId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a message waits for its sender's new connection to register before it is relayed by the bot.
const USER_CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long a message waits for its sender's connection to join the channel before it is relayed by the bot.
const USER_JOIN_WAIT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Nicks of the account's per-user connections (their lines are the bridge's own).
type Ghosts = Arc<Mutex<HashSet<String>>>;

/// An IRC account: the bot connection plus, in per-user mode, the per-sender connections.
pub struct IrcAccount {
    id: AccountId,
    config: Config,
    render: RenderConfig,
    user_render: RenderConfig,
    bot: Conn,
    history: Arc<Mutex<History>>,
    next_out: Arc<AtomicU64>,
    tag: String,
    per_user: Option<Arc<PerUser>>,
}

/// Per-user mode state.
struct PerUser {
    ctx: AccountContext,
    settings: Settings,
    identity: Identity,
    pool: Mutex<Pool>,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    ghosts: Ghosts,
    stop: watch::Sender<bool>,
}

impl IrcAccount {
    /// Starts the account's connection task(s); returns at once.
    pub fn start(id: AccountId, config: Config, ctx: AccountContext) -> Result<Arc<dyn Account>, ConnectorError> {
        let bad = |reason: String| ConnectorError::Config { account: id.clone(), reason };
        let sasl = match (&config.sasl_account, &config.sasl_password, config.sasl_external) {
            (_, _, true) => Some(Sasl::External),
            (Some(account), Some(password), false) => {
                Some(Sasl::Plain { account: account.clone(), password: password.clone() })
            }
            _ => None,
        };
        let user = config.username.clone().unwrap_or_else(|| config.nick.clone());
        let identity = Identity {
            nick: config.nick.clone(),
            user: user.clone(),
            realname: config.realname.clone(),
            password: config.password.clone(),
            sasl,
            alternatives: AltNicks::Underscores,
        };
        let tls = if config.tls { Some(Tls::from_config(&config).map_err(bad)?) } else { None };
        let settings = Settings {
            label: id.to_string(),
            server: config.server.clone(),
            tls,
            pace: PaceConfig {
                window_lines: config.flood_burst,
                window_bytes: WINDOW_BYTES,
                max_rate: config.flood_rate,
            },
            quit_message: "mimi-bridge shutting down".into(),
        };
        let render = RenderConfig {
            max_lines: config.max_lines,
            edits: config.edits,
            reactions: config.reactions,
            anti_ping: config.anti_ping,
            puppet: false,
        };
        let user_render = RenderConfig { puppet: true, ..render.clone() };
        let history = Arc::new(Mutex::new(History::default()));
        let next_out = Arc::new(AtomicU64::new(1));
        let tag = format!("{:08x}", rand::random::<u32>());
        let ghosts: Ghosts = Arc::default();
        let per_user = if config.connections == Connections::PerUser {
            // Per-user connections do not present the bot's client certificate (it would identify them as the
            // bot's services account) and do not log in.
            let user_tls = if config.tls {
                let plain = Config {
                    tls_client_cert_file: None,
                    tls_client_key_file: None,
                    sasl_external: false,
                    ..config.clone()
                };
                Some(Tls::from_config(&plain).map_err(bad)?)
            } else {
                None
            };
            let (stop, _) = watch::channel(false);
            Some(Arc::new(PerUser {
                ctx: ctx.clone(),
                settings: Settings { tls: user_tls, quit_message: "idle".into(), ..settings.clone() },
                identity: Identity { sasl: None, user, ..identity.clone() },
                pool: Mutex::new(Pool::new(config.max_user_connections, Duration::from_secs(config.user_idle_secs))),
                conns: Mutex::default(),
                ghosts: ghosts.clone(),
                stop,
            }))
        } else {
            None
        };
        let role = Arc::new(BotRole {
            id: id.clone(),
            history: history.clone(),
            next_out: next_out.clone(),
            tag: tag.clone(),
            sink: ctx.inbound.clone(),
            conv: Conventions {
                reply_window: Duration::from_secs(config.reply_window_secs),
                edit_window: Duration::from_secs(config.edit_window_secs),
            },
            ghosts,
        });
        let bot = Conn::spawn(settings, Session::new(identity), role);
        if let Some(pu) = &per_user {
            tokio::spawn(reaper(pu.clone()));
        }
        Ok(Arc::new(Self { id, config, render, user_render, bot, history, next_out, tag, per_user }))
    }

    fn ids(&self, n: usize) -> Vec<NativeId> {
        (0..n).map(|_| NativeId(format!("{}-o{}", self.tag, self.next_out.fetch_add(1, Ordering::Relaxed)))).collect()
    }

    fn record(&self, view: &View, name: &str, event: &OutboundEvent, first: Option<&NativeId>) {
        if let (OutboundKind::Message { draft, .. }, Some(first)) = (&event.kind, first) {
            // So that `name: text` on IRC resolves to this message.
            lock(&self.history).record(
                view.isupport.casemapping,
                &event.leg.room,
                name,
                first.clone(),
                &draft.body,
                Instant::now(),
            );
        }
    }

    /// Sends through the bot as `<name> text`.
    async fn relay(&self, event: &OutboundEvent, view: &View) -> Result<Delivery, SendError> {
        let budget = render::text_budget(&view.source(), &event.leg.room);
        let lines = render::render(event, &self.render, budget)?;
        if lines.is_empty() {
            return Ok(Delivery::default());
        }
        let ids = self.ids(lines.len());
        // Recorded before sending: an IRC user can answer `name: …` before `send` returns.
        self.record(view, &event.sender.display_name, event, ids.first());
        self.bot.send(lines).await?;
        Ok(Delivery { native_ids: ids })
    }

    /// True if `event` is shown through its sender's own connection in per-user mode.
    fn wants_own_connection(&self, event: &OutboundEvent) -> bool {
        let from_here = event.sender.legacy.as_ref().is_some_and(|u| u.account == self.id);
        !from_here
            && matches!(
                event.kind,
                OutboundKind::Message { .. } | OutboundKind::Edit { .. } | OutboundKind::ReactionAdd { .. }
            )
    }

    /// Sends through the sender's own connection; `None` means "relay it instead".
    async fn send_as_user(
        &self,
        pu: &PerUser,
        event: &OutboundEvent,
        bot: &View,
    ) -> Option<Result<Delivery, SendError>> {
        let uri = event.sender.uri.as_str();
        let route = lock(&pu.pool).begin(uri, Instant::now());
        let existing = lock(&pu.conns).get(uri).cloned();
        let conn = match (route, existing) {
            (Route::Relay, _) => return None,
            (Route::Existing, Some(c)) => c,
            (_, _) => self.open_user_connection(pu, event, bot),
        };
        let r = self.deliver_as_user(&conn, event).await;
        lock(&pu.pool).done(uri, Instant::now());
        r
    }

    fn open_user_connection(&self, pu: &PerUser, event: &OutboundEvent, bot: &View) -> Arc<Conn> {
        let uri = event.sender.uri.clone();
        let display = &event.sender.display_name;
        let mut conns = lock(&pu.conns);
        let mut taken: Vec<String> = conns.values().map(|c| c.view().nick).collect();
        taken.push(bot.nick.clone());
        let taken_refs: Vec<&str> = taken.iter().map(String::as_str).collect();
        let nicklen = bot.isupport.nicklen;
        let suffix = &self.config.user_nick_suffix;
        let (nick, first) = pool::derive_nick(display, suffix, nicklen, bot.isupport.casemapping, &taken_refs);
        let realname: String =
            format!("{display} via mimi-bridge").chars().filter(|c| !c.is_control()).take(100).collect();
        let identity = Identity {
            nick: nick.clone(),
            realname,
            alternatives: AltNicks::Numbered { display_name: display.clone(), suffix: suffix.clone(), first, nicklen },
            ..pu.identity.clone()
        };
        let settings = Settings { label: format!("{}/{nick}", self.id), ..pu.settings.clone() };
        let role = Arc::new(UserRole { ctx: pu.ctx.clone(), uri: uri.clone(), ghosts: pu.ghosts.clone() });
        tracing::info!(account = %self.id, %nick, sender = %uri, "opening a per-user IRC connection");
        let conn = Arc::new(Conn::spawn(settings, Session::new(identity), role));
        conns.insert(uri, conn.clone());
        conn
    }

    async fn deliver_as_user(&self, conn: &Conn, event: &OutboundEvent) -> Option<Result<Delivery, SendError>> {
        let started = Instant::now();
        let mut health = conn.health();
        loop {
            let state = match &*health.borrow_and_update() {
                Health::Connected => ConnState::Ready,
                Health::Connecting => ConnState::Connecting,
                _ => ConnState::Down,
            };
            match pool::via(state, started.elapsed(), USER_CONNECT_WAIT) {
                Via::Own => break,
                Via::Bot => return None,
                Via::Wait => {
                    let left = USER_CONNECT_WAIT.saturating_sub(started.elapsed());
                    let _ = tokio::time::timeout(left, health.changed()).await;
                }
            }
        }
        let room = &event.leg.room;
        if !conn.join(room) || !conn.joined(room, USER_JOIN_WAIT).await {
            tracing::warn!(account = %self.id, %room, "per-user connection could not join; relaying instead");
            return None;
        }
        let view = conn.view();
        let budget = render::text_budget(&view.source(), room);
        let lines = match render::render(event, &self.user_render, budget) {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        if lines.is_empty() {
            return Some(Ok(Delivery::default()));
        }
        let ids = self.ids(lines.len());
        // Recorded before sending: an IRC user can answer `nick: …` before `send` returns.
        self.record(&view, &view.nick, event, ids.first());
        if let Err(e) = conn.send(lines).await {
            return Some(Err(e));
        }
        Some(Ok(Delivery { native_ids: ids }))
    }
}

/// Closes per-user connections that have been idle for `user_idle_secs`.
async fn reaper(pu: Arc<PerUser>) {
    let mut stop = pu.stop.subscribe();
    loop {
        let next = lock(&pu.pool).next_reap();
        // New connections are never due before existing ones; an empty pool is looked at again after a second.
        let wake = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = stop.changed() => return,
        }
        // The pool stays locked while the connections go, so a message starting now opens a fresh connection
        // rather than picking one that is quitting.
        let gone = {
            let mut pool = lock(&pu.pool);
            let mut gone = Vec::new();
            for uri in pool.reap(Instant::now()) {
                if let Some(c) = lock(&pu.conns).remove(&uri) {
                    let nick = c.view().nick;
                    tracing::info!(%nick, sender = %uri, "per-user IRC connection idle: quitting");
                    lock(&pu.ghosts).remove(&nick);
                    c.quit("idle");
                    gone.push(nick);
                }
            }
            gone
        };
        // The nicks are free again: a real IRC user who takes one later must be bridged, not dropped as a ghost.
        for nick in gone {
            if let Err(e) = pu.ctx.unregister_ghost(&nick).await {
                tracing::warn!(%nick, error = %e, "could not forget a ghost nick");
            }
        }
    }
}

/// The bot connection's role: channel lines become inbound events.
struct BotRole {
    id: AccountId,
    history: Arc<Mutex<History>>,
    next_out: Arc<AtomicU64>,
    tag: String,
    sink: InboundSink,
    conv: Conventions,
    ghosts: Ghosts,
}

#[async_trait]
impl Role for BotRole {
    async fn registered(&self, _nick: &str) -> Result<(), String> {
        Ok(())
    }

    async fn privmsg(&self, session: &Session, msg: Message, target: &str, text: &str, notice: bool) {
        let Some(nick) = msg.source_nick() else { return };
        if !session.isupport.is_channel(target) {
            return; // private messages are not bridged
        }
        let cm = session.isupport.casemapping;
        if session.is_me(nick) || lock(&self.ghosts).iter().any(|g| cm.eq(g, nick)) {
            return; // our own line (echo-message) or one of our per-user connections
        }
        let native = match msg.tag("msgid") {
            Some(id) => NativeId(id.to_owned()),
            None => NativeId(format!("{}-i{}", self.tag, self.next_out.fetch_add(1, Ordering::Relaxed))),
        };
        let line =
            Line { account: &self.id, channel: target, nick, native_id: native, text, notice, from_bridge: false };
        let ev = inbound::translate(line, &mut lock(&self.history), &self.conv, cm, Instant::now());
        let Some(ev) = ev else { return };
        match self.sink.enqueue(ev).await {
            Ok(ack) => {
                let account = self.id.clone();
                tokio::spawn(async move {
                    if let Err(e) = ack.wait().await {
                        tracing::warn!(%account, error = %e, "IRC line not bridged");
                    }
                });
            }
            Err(e) => tracing::debug!(account = %self.id, error = %e, "IRC line not routed"),
        }
    }

    fn tracks_members(&self) -> bool {
        true
    }

    fn is_ours(&self, nick: &str) -> bool {
        lock(&self.ghosts).iter().any(|g| g.eq_ignore_ascii_case(nick))
    }

    async fn members(&self, _session: &Session, changes: Vec<MemberChange>) {
        for ev in changes.into_iter().filter_map(|c| inbound::membership(&self.id, c)) {
            if let Err(e) = self.sink.enqueue(ev).await {
                tracing::debug!(account = %self.id, error = %e, "IRC membership change not routed");
            }
        }
    }
}

/// A per-user connection's role: register its nick as a ghost before it joins anything; read nothing.
struct UserRole {
    ctx: AccountContext,
    uri: String,
    ghosts: Ghosts,
}

#[async_trait]
impl Role for UserRole {
    async fn registered(&self, nick: &str) -> Result<(), String> {
        // Durable before the connection says anything, so its lines are never bridged back.
        self.ctx.register_ghost(nick, &self.uri).await.map_err(|e| format!("registering ghost {nick}: {e}"))?;
        lock(&self.ghosts).insert(nick.to_owned());
        Ok(())
    }

    async fn privmsg(&self, _: &Session, _: Message, _: &str, _: &str, _: bool) {
        // The bot reads the channels; private messages to a per-user nick are not bridged.
    }
}

#[async_trait]
impl Account for IrcAccount {
    fn id(&self) -> &AccountId {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        capabilities(&self.config)
    }

    async fn join(&self, room: &str) -> Result<(), ConnectorError> {
        if !valid_channel(room, &self.bot.view().isupport) {
            return Err(ConnectorError::Room {
                account: self.id.clone(),
                room: room.to_owned(),
                reason: "not a valid IRC channel name".into(),
            });
        }
        if !self.bot.join(room) {
            return Err(ConnectorError::Other {
                account: self.id.clone(),
                reason: "the connection task has stopped".into(),
            });
        }
        Ok(())
    }

    async fn leave(&self, room: &str) -> Result<(), ConnectorError> {
        self.bot.part(room);
        if let Some(pu) = &self.per_user {
            for c in lock(&pu.conns).values() {
                c.part(room);
            }
        }
        Ok(())
    }

    async fn send(&self, event: &OutboundEvent) -> Result<Delivery, SendError> {
        let view = self.bot.view();
        if !view.registered {
            return Err(SendError::Retry("not connected to IRC".into()));
        }
        if let Some(pu) = &self.per_user
            && self.wants_own_connection(event)
            && let Some(result) = self.send_as_user(pu, event, &view).await
        {
            return result;
        }
        self.relay(event, &view).await
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.bot.health()
    }

    async fn shutdown(&self) {
        if let Some(pu) = &self.per_user {
            let _ = pu.stop.send(true);
            for (_, c) in lock(&pu.conns).drain() {
                c.quit("mimi-bridge shutting down");
            }
        }
        self.bot.quit("mimi-bridge shutting down");
    }
}
