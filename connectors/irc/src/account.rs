//! The IO shell of an IRC account: one TCP connection driven by [`Session`], reconnected with jittered
//! exponential backoff; outgoing PRIVMSGs paced by the flood [`Bucket`] without ever blocking reads (PINGs are
//! answered at once); channel lines translated by [`crate::inbound`] and handed to the core.

use crate::flood::Bucket;
use crate::inbound::{self, Conventions, History, Line};
use crate::isupport::{CaseMapping, valid_channel};
use crate::message::{MAX_LINE, MAX_TAGS, Message};
use crate::render::{self, RenderConfig};
use crate::session::{Action, Identity, Sasl, Session};
use crate::{Config, capabilities};
use async_trait::async_trait;
use bridge_core::capability::Capabilities;
use bridge_core::connector::{Delivery, SendError};
use bridge_core::event::{OutboundEvent, OutboundKind};
use bridge_core::{Account, AccountContext, AccountId, ConnectorError, Health, InboundSink, NativeId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(120);
/// How long a send waits for its lines to be written before the core is told to retry.
const SEND_TIMEOUT: Duration = Duration::from_secs(120);

enum Control {
    Join(String),
    Part(String),
}

/// Signals that the last line of an [`Outgoing`] was written (or could not be).
type Done = oneshot::Sender<Result<(), String>>;

struct Outgoing {
    lines: Vec<Message>,
    done: Done,
}

/// What the connection task shares with `send` (the renderer needs the real prefix and case mapping).
#[derive(Debug, Clone)]
struct View {
    registered: bool,
    nick: String,
    own_source: Option<String>,
    casemapping: CaseMapping,
    isupport: crate::isupport::Isupport,
}

/// One relay-mode IRC connection.
pub struct IrcAccount {
    id: AccountId,
    config: Config,
    render: RenderConfig,
    health: watch::Sender<Health>,
    ctl: mpsc::UnboundedSender<Control>,
    out: mpsc::Sender<Outgoing>,
    view: Mutex<View>,
    history: Mutex<History>,
    next_out: AtomicU64,
    tag: String,
    stop: watch::Sender<bool>,
}

impl IrcAccount {
    /// Starts the account's connection task; returns at once.
    pub fn start(id: AccountId, config: Config, ctx: AccountContext) -> Result<Arc<dyn Account>, ConnectorError> {
        let password = config.password.clone();
        let sasl = match (&config.sasl_account, &config.sasl_password) {
            (Some(account), Some(password)) => {
                Some(Sasl::Plain { account: account.clone(), password: password.clone() })
            }
            _ => None,
        };
        let identity = Identity {
            nick: config.nick.clone(),
            user: config.username.clone().unwrap_or_else(|| config.nick.clone()),
            realname: config.realname.clone(),
            password,
            sasl,
        };
        let (health, _) = watch::channel(Health::Connecting);
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (out, out_rx) = mpsc::channel(1);
        let (stop, _) = watch::channel(false);
        let render = RenderConfig {
            max_lines: config.max_lines,
            edits: config.edits,
            reactions: config.reactions,
            anti_ping: config.anti_ping,
        };
        let view = View {
            registered: false,
            nick: config.nick.clone(),
            own_source: None,
            casemapping: CaseMapping::default(),
            isupport: Default::default(),
        };
        let acc = Arc::new(Self {
            id,
            config,
            render,
            health,
            ctl,
            out,
            view: Mutex::new(view),
            history: Mutex::default(),
            next_out: AtomicU64::new(1),
            tag: format!("{:08x}", rand::random::<u32>()),
            stop,
        });
        tokio::spawn(acc.clone().run(Session::new(identity), ctl_rx, out_rx, ctx.inbound));
        Ok(acc)
    }

    fn view(&self) -> View {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_view(&self, s: &Session) {
        let mut v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        v.registered = s.registered();
        v.nick = s.nick.clone();
        v.own_source = s.own_source.clone();
        v.casemapping = s.isupport.casemapping;
        v.isupport = s.isupport.clone();
    }

    async fn run(
        self: Arc<Self>,
        mut session: Session,
        mut ctl: mpsc::UnboundedReceiver<Control>,
        mut out: mpsc::Receiver<Outgoing>,
        sink: InboundSink,
    ) {
        let mut stop = self.stop.subscribe();
        let mut backoff = BACKOFF_MIN;
        loop {
            if *stop.borrow() {
                break;
            }
            self.health.send_replace(Health::Connecting);
            session.reset();
            let result = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.config.server)).await {
                Ok(Ok(stream)) => self.connection(stream, &mut session, &mut ctl, &mut out, &sink, &mut stop).await,
                Ok(Err(e)) => Err(format!("connect to {}: {e}", self.config.server)),
                Err(_) => Err(format!("connect to {}: timed out", self.config.server)),
            };
            self.set_view(&Session::new(Identity {
                nick: session.nick.clone(),
                user: String::new(),
                realname: String::new(),
                password: None,
                sasl: None,
            }));
            match result {
                Ok(Outcome::Stopped) => break,
                Ok(Outcome::BadCredentials(reason)) => {
                    tracing::error!(account = %self.id, %reason, "IRC login refused; not retrying until reconfigured");
                    self.health.send_replace(Health::BadCredentials { reason });
                    return;
                }
                Ok(Outcome::Registered(reason)) => {
                    backoff = BACKOFF_MIN;
                    self.back_off(reason, backoff, &mut stop).await;
                }
                Err(reason) => self.back_off(reason, backoff, &mut stop).await,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.health.send_replace(Health::Stopped);
    }

    async fn back_off(&self, reason: String, base: Duration, stop: &mut watch::Receiver<bool>) {
        // ±25 % jitter so many bridges do not reconnect in lockstep.
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        let wait = base.mul_f64(jitter);
        tracing::warn!(account = %self.id, %reason, retry_in = ?wait, "IRC connection lost");
        self.health.send_replace(Health::BackingOff { retry_in: wait, reason });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn connection(
        &self,
        stream: TcpStream,
        session: &mut Session,
        ctl: &mut mpsc::UnboundedReceiver<Control>,
        out: &mut mpsc::Receiver<Outgoing>,
        sink: &InboundSink,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Outcome, String> {
        let (r, mut w) = stream.into_split();
        let mut reader = BufReader::with_capacity(16 * 1024, r);
        for m in session.start() {
            write(&mut w, &m).await?;
        }
        let mut bucket = Bucket::new(self.config.flood_burst, self.config.flood_rate, Instant::now());
        let mut queue: VecDeque<(Message, Option<Done>)> = VecDeque::new();
        let mut ever_registered = false;
        let conv = Conventions {
            reply_window: Duration::from_secs(self.config.reply_window_secs),
            edit_window: Duration::from_secs(self.config.edit_window_secs),
        };
        let result = loop {
            let ready = bucket.ready_at(Instant::now());
            tokio::select! {
                line = read_line(&mut reader) => {
                    let line = match line {
                        Ok(Some(l)) => l,
                        Ok(None) => break Err("the server closed the connection".to_owned()),
                        Err(e) => break Err(e),
                    };
                    let msg = match Message::parse(&line) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(account = %self.id, error = %e, "malformed IRC line dropped");
                            continue;
                        }
                    };
                    for action in session.handle(msg) {
                        match action {
                            Action::Send(m) => write(&mut w, &m).await?,
                            Action::Registered => {
                                ever_registered = true;
                                self.set_view(session);
                                tracing::info!(account = %self.id, nick = %session.nick, "IRC registered");
                                self.health.send_replace(Health::Connected);
                            }
                            Action::Joined(c) => {
                                self.set_view(session);
                                tracing::info!(account = %self.id, channel = %c, "joined");
                            }
                            Action::Left(c) => tracing::warn!(account = %self.id, channel = %c, "removed from channel"),
                            Action::Privmsg { msg, target, text, notice } => {
                                self.inbound(session, &conv, msg, &target, &text, notice, sink).await;
                            }
                            Action::BadCredentials(reason) => return Ok(Outcome::BadCredentials(reason)),
                            Action::Closing(reason) => tracing::warn!(account = %self.id, %reason, "server closing link"),
                        }
                    }
                }
                c = ctl.recv() => {
                    let msgs = match c {
                        Some(Control::Join(ch)) => session.join(&ch),
                        Some(Control::Part(ch)) => session.part(&ch),
                        None => return Ok(Outcome::Stopped),
                    };
                    for m in msgs {
                        write(&mut w, &m).await?;
                    }
                }
                o = out.recv(), if queue.is_empty() && session.registered() => {
                    let Some(o) = o else { return Ok(Outcome::Stopped) };
                    let n = o.lines.len();
                    let mut done = Some(o.done);
                    for (i, l) in o.lines.into_iter().enumerate() {
                        queue.push_back((l, if i + 1 == n { done.take() } else { None }));
                    }
                    if let Some(d) = done {
                        let _ = d.send(Ok(()));
                    }
                }
                _ = tokio::time::sleep_until(ready.into()), if !queue.is_empty() => {
                    if bucket.try_take(Instant::now())
                        && let Some((m, done)) = queue.pop_front()
                    {
                        write(&mut w, &m).await?;
                        if let Some(d) = done {
                            let _ = d.send(Ok(()));
                        }
                    }
                }
                _ = stop.changed() => {
                    let _ = write(&mut w, &Message::new("QUIT", &["mimi-bridge shutting down"])).await;
                    let _ = w.shutdown().await;
                    return Ok(Outcome::Stopped);
                }
            }
        };
        // Lines not written yet: their senders get an error and the core retries them after reconnecting.
        for (_, done) in queue {
            if let Some(d) = done {
                let _ = d.send(Err("connection lost".into()));
            }
        }
        match result {
            Err(e) if ever_registered => Ok(Outcome::Registered(e)),
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn inbound(
        &self,
        session: &Session,
        conv: &Conventions,
        msg: Message,
        target: &str,
        text: &str,
        notice: bool,
        sink: &InboundSink,
    ) {
        let Some(nick) = msg.source_nick() else { return };
        if !session.isupport.is_channel(target) {
            return; // private messages are not bridged in relay mode
        }
        let from_bridge = session.is_me(nick);
        if from_bridge {
            return; // our own line, echoed back (echo-message)
        }
        let native = match msg.tag("msgid") {
            Some(id) => NativeId(id.to_owned()),
            None => NativeId(format!("{}-i{}", self.tag, self.next_out.fetch_add(1, Ordering::Relaxed))),
        };
        let line = Line { account: &self.id, channel: target, nick, native_id: native, text, notice, from_bridge };
        let ev = {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            inbound::translate(line, &mut h, conv, session.isupport.casemapping, Instant::now())
        };
        let Some(ev) = ev else { return };
        match sink.enqueue(ev).await {
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
}

enum Outcome {
    Stopped,
    BadCredentials(String),
    /// The connection ended after registering (reset the backoff).
    Registered(String),
}

async fn write(w: &mut OwnedWriteHalf, m: &Message) -> Result<(), String> {
    let mut line = m.to_line();
    line.push_str("\r\n");
    w.write_all(line.as_bytes()).await.map_err(|e| format!("write: {e}"))
}

/// Reads one line, bounded to the IRCv3 maximum (tags + 512); a longer line is consumed and skipped, so a
/// server sending garbage cannot exhaust memory.
async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Option<String>, String> {
    let max = MAX_TAGS + MAX_LINE;
    let mut buf = Vec::new();
    let mut overlong = false;
    loop {
        let chunk = r.fill_buf().await.map_err(|e| format!("read: {e}"))?;
        if chunk.is_empty() {
            return Ok(None);
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !overlong {
            buf.extend_from_slice(&chunk[..take]);
            if buf.len() > max {
                overlong = true;
                buf.clear();
            }
        }
        r.consume(take);
        if done {
            if overlong {
                tracing::warn!("IRC line longer than {max} bytes skipped");
                overlong = false;
                continue;
            }
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            // IRC has no declared encoding; invalid UTF-8 is replaced rather than dropped.
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
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
        if !valid_channel(room, &self.view().isupport) {
            return Err(ConnectorError::Room {
                account: self.id.clone(),
                room: room.to_owned(),
                reason: "not a valid IRC channel name".into(),
            });
        }
        self.ctl.send(Control::Join(room.to_owned())).map_err(|_| ConnectorError::Other {
            account: self.id.clone(),
            reason: "the connection task has stopped".into(),
        })
    }

    async fn leave(&self, room: &str) -> Result<(), ConnectorError> {
        let _ = self.ctl.send(Control::Part(room.to_owned()));
        Ok(())
    }

    async fn send(&self, event: &OutboundEvent) -> Result<Delivery, SendError> {
        let view = self.view();
        if !view.registered {
            return Err(SendError::Retry("not connected to IRC".into()));
        }
        let source =
            view.own_source.clone().unwrap_or_else(|| format!("{}!{}@{}", view.nick, "x".repeat(10), "h".repeat(63)));
        let budget = render::text_budget(&source, &event.leg.room);
        let lines = render::render(event, &self.render, budget)?;
        if lines.is_empty() {
            return Ok(Delivery::default());
        }
        let ids: Vec<NativeId> = lines
            .iter()
            .map(|_| NativeId(format!("{}-o{}", self.tag, self.next_out.fetch_add(1, Ordering::Relaxed))))
            .collect();
        let (done, wait) = oneshot::channel();
        self.out
            .send(Outgoing { lines, done })
            .await
            .map_err(|_| SendError::Retry("connection task stopped".into()))?;
        match tokio::time::timeout(SEND_TIMEOUT, wait).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(SendError::Retry(e)),
            Ok(Err(_)) => return Err(SendError::Retry("connection lost".into())),
            Err(_) => return Err(SendError::Retry("timed out waiting for the flood queue".into())),
        }
        if let (OutboundKind::Message { draft, .. }, Some(first)) = (&event.kind, ids.first()) {
            // So that `name: text` on IRC resolves to this message.
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            h.record(
                view.casemapping,
                &event.leg.room,
                &event.sender.display_name,
                first.clone(),
                &draft.body,
                Instant::now(),
            );
        }
        Ok(Delivery { native_ids: ids })
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    async fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}
