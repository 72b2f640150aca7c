//! The IO shell: one TCP connection to a toychat server, reconnected with backoff.
//!
//! Reads lines (bounded length), hands room events to the core through the [`InboundSink`] (which applies
//! backpressure), writes commands, and matches each command's `ACK`/`ERR` to the `send` waiting for it.

use crate::proto::{self, ClientLine, ServerLine};
use crate::{Config, translate};
use async_trait::async_trait;
use bridge_api::capability::Capabilities;
use bridge_api::connector::{Delivery, SendError};
use bridge_api::event::OutboundEvent;
use bridge_api::{Account, AccountContext, AccountId, ConnectorError, Health, InboundSink, NativeId};
use bridge_net::lines::{LineRead, LineReader};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

/// How long a command may wait for its acknowledgement before the core is told to retry.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

type Pending = Mutex<HashMap<String, oneshot::Sender<Result<String, String>>>>;

/// One toychat connection.
pub struct ToychatAccount {
    id: AccountId,
    health: watch::Sender<Health>,
    rooms: Mutex<BTreeSet<String>>,
    writer: Mutex<Option<mpsc::Sender<String>>>,
    pending: Pending,
    next_tag: AtomicU64,
    stop: watch::Sender<bool>,
}

impl ToychatAccount {
    /// Creates the account and starts its connection task; returns at once.
    pub fn start(id: AccountId, config: Config, ctx: AccountContext) -> Arc<Self> {
        let (health, _) = watch::channel(Health::Connecting);
        let (stop, _) = watch::channel(false);
        let acc = Arc::new(Self {
            id,
            health,
            rooms: Mutex::default(),
            writer: Mutex::default(),
            pending: Mutex::default(),
            next_tag: AtomicU64::new(1),
            stop,
        });
        tokio::spawn(acc.clone().run(config, ctx.inbound));
        acc
    }

    fn set_health(&self, h: Health) {
        Health::publish(&self.health, h);
    }

    async fn run(self: Arc<Self>, config: Config, sink: InboundSink) {
        let mut stop = self.stop.subscribe();
        let mut backoff = Duration::from_millis(100);
        while !*stop.borrow() {
            self.set_health(Health::Connecting);
            let reason = match TcpStream::connect(&config.server).await {
                Ok(stream) => match self.session(stream, &config, &sink, &mut stop).await {
                    Ok(()) => break, // stopped on request
                    Err(e) => {
                        backoff = Duration::from_millis(100);
                        e
                    }
                },
                Err(e) => format!("connect {}: {e}", config.server),
            };
            *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = None;
            // Commands waiting for an ACK will not get one: dropping their senders makes `send` retry.
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
            tracing::warn!(account = %self.id, %reason, retry_in = ?backoff, "toychat connection lost");
            self.set_health(Health::BackingOff { retry_in: backoff, reason });
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.set_health(Health::Stopped);
    }

    /// One connected session. `Ok` when stopped on request, `Err(reason)` when the connection ended.
    async fn session(
        &self,
        stream: TcpStream,
        config: &Config,
        sink: &InboundSink,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let (r, mut w) = stream.into_split();
        // Cancel-safe: it sits in the select! below.
        let mut reader = LineReader::new(r, proto::MAX_LINE);
        let hello = ClientLine::Hello(config.nick.clone()).to_line();
        w.write_all(format!("{hello}\n").as_bytes()).await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(ACK_TIMEOUT, next_line(&mut reader)).await {
            Ok(Ok(Some(l))) if matches!(ServerLine::parse(&l), Ok(ServerLine::Welcome(_))) => {}
            other => return Err(format!("no WELCOME from the server: {other:?}")),
        }
        // Publish the writer and take the room list under one lock, so a concurrent `join` either sees the
        // writer (and sends JOIN itself) or has its room in this list.
        let (tx, mut rx) = mpsc::channel::<String>(64);
        let rooms: Vec<String> = {
            let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
            rooms.iter().cloned().collect()
        };
        for room in rooms {
            w.write_all(format!("{}\n", ClientLine::Join(room).to_line()).as_bytes())
                .await
                .map_err(|e| e.to_string())?;
        }
        self.set_health(Health::Connected);
        tracing::info!(account = %self.id, server = %config.server, "toychat connected");
        loop {
            tokio::select! {
                line = next_line(&mut reader) => match line {
                    Ok(Some(l)) => self.handle(&l, &config.nick, sink).await,
                    Ok(None) => return Err("server closed the connection".into()),
                    Err(e) => return Err(e),
                },
                out = rx.recv() => match out {
                    Some(l) => w.write_all(format!("{l}\n").as_bytes()).await.map_err(|e| e.to_string())?,
                    None => return Err("writer closed".into()),
                },
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    async fn handle(&self, line: &str, nick: &str, sink: &InboundSink) {
        let parsed = match ServerLine::parse(line) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(account = %self.id, error = %e, "malformed line from the server dropped");
                return;
            }
        };
        match parsed {
            ServerLine::Ack { tag, id } => self.resolve(&tag, Ok(id)),
            ServerLine::Err { tag, reason } => self.resolve(&tag, Err(reason)),
            ServerLine::Welcome(_) => {}
            ServerLine::Evt { id, nick: who, verb } => {
                let Some(ev) = translate::inbound(&self.id, nick, &id, &who, verb) else { return };
                if ev.from_bridge {
                    return; // our own command reflected back
                }
                // Waits only for room in the portal's queue (backpressure); the durable ack is logged.
                match sink.enqueue(ev).await {
                    Ok(ack) => {
                        let account = self.id.clone();
                        tokio::spawn(async move {
                            if let Err(e) = ack.wait().await {
                                tracing::warn!(%account, error = %e, "inbound event not bridged");
                            }
                        });
                    }
                    Err(e) => tracing::debug!(account = %self.id, error = %e, "inbound event not routed"),
                }
            }
        }
    }

    fn resolve(&self, tag: &str, r: Result<String, String>) {
        if let Some(tx) = self.pending.lock().ok().and_then(|mut p| p.remove(tag)) {
            let _ = tx.send(r);
        }
    }
}

/// The next line; a line over [`proto::MAX_LINE`] ends the session (toychat servers never send one).
async fn next_line<R: AsyncRead + Unpin>(r: &mut LineReader<R>) -> Result<Option<String>, String> {
    match r.next().await.map_err(|e| e.to_string())? {
        Some(LineRead::Text(l)) => Ok(Some(l)),
        Some(LineRead::TooLong) => Err(format!("line longer than {} bytes", proto::MAX_LINE)),
        None => Ok(None),
    }
}

#[async_trait]
impl Account for ToychatAccount {
    fn id(&self) -> &AccountId {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        crate::capabilities()
    }

    async fn join(&self, room: &str) -> Result<(), ConnectorError> {
        proto::check_word(room).map_err(|e| ConnectorError::Room {
            account: self.id.clone(),
            room: room.to_owned(),
            reason: e.to_string(),
        })?;
        let (new, writer) = {
            let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            let new = rooms.insert(room.to_owned());
            (new, self.writer.lock().ok().and_then(|w| w.clone()))
        };
        if let (true, Some(w)) = (new, writer) {
            let _ = w.send(ClientLine::Join(room.to_owned()).to_line()).await;
        }
        Ok(())
    }

    async fn leave(&self, room: &str) -> Result<(), ConnectorError> {
        // toychat has no PART; forgetting the room stops re-joining it on reconnect.
        if let Ok(mut r) = self.rooms.lock() {
            r.remove(room);
        }
        Ok(())
    }

    async fn send(&self, event: &OutboundEvent) -> Result<Delivery, SendError> {
        let Some(verb) = translate::outbound(event)? else { return Ok(Delivery::default()) };
        let writer = self.writer.lock().ok().and_then(|w| w.clone()).ok_or(SendError::Retry("not connected".into()))?;
        let tag = format!("t{}", self.next_tag.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(tag.clone(), tx);
        }
        let line = ClientLine::Tagged { tag: tag.clone(), verb }.to_line();
        writer.send(line).await.map_err(|_| SendError::Retry("connection lost".into()))?;
        match tokio::time::timeout(ACK_TIMEOUT, rx).await {
            Ok(Ok(Ok(id))) => Ok(Delivery { native_ids: vec![NativeId(id)] }),
            Ok(Ok(Err(reason))) => Err(SendError::Rejected(reason)),
            Ok(Err(_)) => Err(SendError::Retry("connection lost before the acknowledgement".into())),
            Err(_) => {
                if let Ok(mut p) = self.pending.lock() {
                    p.remove(&tag);
                }
                Err(SendError::Retry("no acknowledgement".into()))
            }
        }
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    async fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}
