//! One IRC connection (the bot's, or one user's in per-user mode), IO shell: TCP or TLS, driven by [`Session`],
//! reconnected with jittered exponential backoff; outgoing lines paced by its [`Pacer`] (the server's own pace,
//! learnt from PONGs to our PINGs, and an optional rate cap) without ever blocking reads (the server's PINGs are
//! answered at once). What it does with channel lines and with registration is its
//! [`Role`]'s business.

use crate::isupport::Isupport;
use crate::message::{MAX_LINE, MAX_TAGS, Message};
use crate::pace::{PONG_TIMEOUT, Pace, PaceConfig, Pacer};
use crate::roster::{MemberChange, Roster};
use crate::session::{Action, Session};
use crate::tls::{Io, Tls};
use async_trait::async_trait;
use bridge_api::Health;
use bridge_api::connector::SendError;
use bridge_net::lines::LineRead;
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(120);
/// How long a send waits for its lines to be written before the core is told to retry.
const SEND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for the server to close the link after our QUIT.
const QUIT_WAIT: Duration = Duration::from_secs(5);
/// How long after registration the connection waits for the server to answer its JOINs before it calls itself
/// connected anyway (a server that ignores a JOIN).
const JOIN_WAIT: Duration = Duration::from_secs(10);

/// Channel membership requests.
pub(crate) enum Control {
    Join(String),
    Part(String),
}

/// Signals that the last line of an [`Outgoing`] was written (or could not be).
type Done = oneshot::Sender<Result<(), String>>;

struct Outgoing {
    lines: Vec<Message>,
    done: Done,
}

/// What the connection task shares with senders (the renderer needs the real prefix and case mapping).
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    pub registered: bool,
    pub nick: String,
    pub own_source: Option<String>,
    pub isupport: Isupport,
    pub joined: BTreeSet<String>,
}

impl View {
    /// True if the connection is in `channel`.
    pub fn in_channel(&self, channel: &str) -> bool {
        self.joined.iter().any(|c| self.isupport.casemapping.eq(c, channel))
    }

    /// The source to compute line lengths from (the real one once seen, else the longest plausible).
    pub fn source(&self) -> String {
        self.own_source.clone().unwrap_or_else(|| format!("{}!{}@{}", self.nick, "x".repeat(10), "h".repeat(63)))
    }
}

/// What a connection does beyond the protocol.
#[async_trait]
pub(crate) trait Role: Send + Sync + 'static {
    /// Registration completed as `nick`; called before the channels are joined. An error drops the connection.
    async fn registered(&self, nick: &str) -> Result<(), String>;
    /// A PRIVMSG/NOTICE from someone else (awaiting it is the backpressure to the server).
    async fn privmsg(&self, session: &Session, msg: Message, target: &str, text: &str, notice: bool);
    /// True if the connection keeps a [`Roster`] of its channels and passes their membership changes to
    /// [`Role::members`].
    fn tracks_members(&self) -> bool {
        false
    }
    /// True if `nick` is one of the bridge's own connections (never tracked as a member).
    fn is_ours(&self, _nick: &str) -> bool {
        false
    }
    /// Membership changes in the connection's channels, damped by its [`Roster`], as they fall due.
    async fn members(&self, _session: &Session, _changes: Vec<MemberChange>) {}
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// For logs: `irc.libera` or `irc.libera/alice[m]`.
    pub label: String,
    pub server: String,
    pub tls: Option<Tls>,
    /// Flood control.
    pub pace: PaceConfig,
    /// Reason given in QUIT on shutdown.
    pub quit_message: String,
}

/// A running connection.
pub(crate) struct Conn {
    ctl: mpsc::UnboundedSender<Control>,
    out: mpsc::Sender<Outgoing>,
    view: watch::Receiver<View>,
    health: watch::Receiver<Health>,
    stop: watch::Sender<Option<String>>,
}

impl Conn {
    /// Starts the connection task; returns at once.
    pub fn spawn(settings: Settings, session: Session, role: std::sync::Arc<dyn Role>) -> Self {
        let (health_tx, health) = watch::channel(Health::Connecting);
        let (view_tx, view) = watch::channel(View { nick: session.nick.clone(), ..View::default() });
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (out, out_rx) = mpsc::channel(1);
        let (stop, _) = watch::channel(None);
        let task = Task { settings, role, health: health_tx, view: view_tx };
        tokio::spawn(task.run(session, ctl_rx, out_rx, stop.subscribe()));
        Self { ctl, out, view, health, stop }
    }

    /// The latest view of the connection.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// A watch on the health.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// Asks for `channel` to be joined (now and after every reconnect). False if the task has stopped.
    pub fn join(&self, channel: &str) -> bool {
        self.ctl.send(Control::Join(channel.to_owned())).is_ok()
    }

    /// Asks for `channel` to be left.
    pub fn part(&self, channel: &str) {
        let _ = self.ctl.send(Control::Part(channel.to_owned()));
    }

    /// Waits until the connection is in `channel`, up to `wait`.
    pub async fn joined(&self, channel: &str, wait: Duration) -> bool {
        let mut v = self.view.clone();
        tokio::time::timeout(wait, v.wait_for(|v| v.in_channel(channel))).await.is_ok_and(|r| r.is_ok())
    }

    /// Sends `lines` through the flood queue; returns once the last one is written.
    pub async fn send(&self, lines: Vec<Message>) -> Result<(), SendError> {
        let (done, wait) = oneshot::channel();
        self.out
            .send(Outgoing { lines, done })
            .await
            .map_err(|_| SendError::Retry("connection task stopped".into()))?;
        match tokio::time::timeout(SEND_TIMEOUT, wait).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(SendError::Retry(e)),
            Ok(Err(_)) => Err(SendError::Retry("connection lost".into())),
            Err(_) => Err(SendError::Retry("timed out waiting for the flood queue".into())),
        }
    }

    /// Closes the connection with QUIT `reason` and stops reconnecting.
    pub fn quit(&self, reason: &str) {
        let _ = self.stop.send(Some(reason.to_owned()));
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.stop.borrow().is_none() {
            let _ = self.stop.send(Some(String::new()));
        }
    }
}

enum Outcome {
    Stopped,
    BadCredentials(String),
    /// The connection ended after registering (reset the backoff).
    Registered(String),
}

struct Task {
    settings: Settings,
    role: std::sync::Arc<dyn Role>,
    health: watch::Sender<Health>,
    view: watch::Sender<View>,
}

type Reader = LineReader<ReadHalf<Box<dyn Io>>>;
type Writer = WriteHalf<Box<dyn Io>>;

impl Task {
    fn set_view(&self, s: &Session) {
        self.view.send_replace(View {
            registered: s.registered(),
            nick: s.nick.clone(),
            own_source: s.own_source.clone(),
            isupport: s.isupport.clone(),
            joined: s.joined.clone(),
        });
    }

    async fn open(&self) -> Result<Box<dyn Io>, String> {
        let server = &self.settings.server;
        let connect = async {
            let tcp = TcpStream::connect(server).await.map_err(|e| format!("connect to {server}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            match &self.settings.tls {
                Some(tls) => tls.handshake(tcp).await,
                None => Ok(Box::new(tcp) as Box<dyn Io>),
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| Err(format!("connect to {server}: timed out")))
    }

    async fn run(
        self,
        mut session: Session,
        mut ctl: mpsc::UnboundedReceiver<Control>,
        mut out: mpsc::Receiver<Outgoing>,
        mut stop: watch::Receiver<Option<String>>,
    ) {
        let label = self.settings.label.clone();
        let mut backoff = BACKOFF_MIN;
        // Outlives each connection: the NAMES replies after a reconnect are compared with what it knew.
        let mut roster = self.role.tracks_members().then(Roster::new);
        loop {
            if stop.borrow().is_some() {
                break;
            }
            Health::publish(&self.health, Health::Connecting);
            session.reset();
            let result = match self.open().await {
                Ok(stream) => self.connection(stream, &mut session, &mut roster, &mut ctl, &mut out, &mut stop).await,
                Err(e) => Err(e),
            };
            self.view.send_modify(|v| {
                v.registered = false;
                v.joined.clear();
            });
            match result {
                Ok(Outcome::Stopped) => break,
                Ok(Outcome::BadCredentials(reason)) => {
                    tracing::error!(connection = %label, %reason, "IRC login refused; not retrying until reconfigured");
                    Health::publish(&self.health, Health::BadCredentials { reason });
                    // Wait for the stop signal so the handle stays meaningful.
                    while stop.borrow().is_none() {
                        if stop.changed().await.is_err() {
                            break;
                        }
                    }
                    break;
                }
                Ok(Outcome::Registered(reason)) => {
                    backoff = BACKOFF_MIN;
                    self.back_off(reason, backoff, &mut stop).await;
                }
                Err(reason) => self.back_off(reason, backoff, &mut stop).await,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        Health::publish(&self.health, Health::Stopped);
    }

    /// Hands the role the membership changes of `roster` that are due now.
    async fn pass_on_due(&self, roster: &mut Option<Roster>, session: &Session) {
        let due = roster.as_mut().map(|r| r.poll(Instant::now())).unwrap_or_default();
        if !due.is_empty() {
            self.role.members(session, due).await;
        }
    }

    async fn back_off(&self, reason: String, base: Duration, stop: &mut watch::Receiver<Option<String>>) {
        // Jittered so many bridges (and many per-user connections) do not reconnect in lockstep.
        let wait = bridge_net::backoff::jitter(base);
        tracing::warn!(connection = %self.settings.label, %reason, retry_in = ?wait, "IRC connection lost");
        Health::publish(&self.health, Health::BackingOff { retry_in: wait, reason });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }

    async fn connection(
        &self,
        stream: Box<dyn Io>,
        session: &mut Session,
        roster: &mut Option<Roster>,
        ctl: &mut mpsc::UnboundedReceiver<Control>,
        out: &mut mpsc::Receiver<Outgoing>,
        stop: &mut watch::Receiver<Option<String>>,
    ) -> Result<Outcome, String> {
        let (r, w) = tokio::io::split(stream);
        let mut open = Open { reader: LineReader::new(r), w, queue: VecDeque::new(), ever_registered: false };
        // Every way out of `serve`, a failed write's `?` included, comes back here.
        let result = self.serve(&mut open, session, roster, ctl, out, stop).await;
        // Lines not written yet: their senders get an error, and the core retries them (after a reconnect, if
        // there is one).
        for (_, done) in open.queue {
            if let Some(d) = done {
                let _ = d.send(Err("connection lost".into()));
            }
        }
        match result {
            Err(e) if open.ever_registered => Ok(Outcome::Registered(e)),
            other => other,
        }
    }

    /// Runs one open connection until it ends: registers, joins, and moves lines both ways. Leaves the lines not
    /// written yet in `open.queue` and returns errors as they are: [`Task::connection`] drains and maps them.
    async fn serve(
        &self,
        open: &mut Open,
        session: &mut Session,
        roster: &mut Option<Roster>,
        ctl: &mut mpsc::UnboundedReceiver<Control>,
        out: &mut mpsc::Receiver<Outgoing>,
        stop: &mut watch::Receiver<Option<String>>,
    ) -> Result<Outcome, String> {
        let label = &self.settings.label;
        let Open { reader, w, queue, ever_registered } = open;
        for m in session.start() {
            write(w, &m).await?;
        }
        // Every line written counts as in flight; registration lines are settled by 001, when it starts afresh.
        let mut pacer = Pacer::new(self.settings.pace.clone(), Instant::now());
        // Registered, not yet in its channels: connected once every JOIN is answered, or at this deadline.
        let mut in_channels_by: Option<Instant> = None;
        loop {
            // Our PINGs go out first; then the queued lines, while the window (and the cap) allow. A line that may go
            // is written here, not at a timer's deadline of now: tokio rounds deadlines up to its millisecond tick,
            // which held each line up to a millisecond. What is left waits for `wake` (the cap's next token, or the
            // PING's deadline), a PONG or a new line.
            let mut wake = None;
            if session.registered() {
                wake = loop {
                    let next = queue.front().map(|(m, _)| wire_len(m));
                    match pacer.poll(next, Instant::now()) {
                        Pace::Ping(m) => {
                            write(w, &m).await?;
                        }
                        Pace::Send => {
                            if let Some((m, done)) = queue.pop_front() {
                                pacer.paced(write(w, &m).await?, Instant::now());
                                if let Some(d) = done {
                                    let _ = d.send(Ok(()));
                                }
                            }
                        }
                        Pace::Wait(at) => break at,
                        Pace::Stalled => {
                            return Err(format!("no PONG to a flood-control PING within {PONG_TIMEOUT:?}"));
                        }
                    }
                };
            }
            let now = Instant::now();
            let members_due = roster.as_ref().and_then(Roster::next_due);
            tokio::select! {
                line = reader.next() => {
                    let line = match line {
                        Ok(Some(l)) => l,
                        Ok(None) => break Err("the server closed the connection".to_owned()),
                        Err(e) => break Err(e),
                    };
                    let msg = match Message::parse(&line) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(connection = %label, error = %e, "malformed IRC line dropped");
                            continue;
                        }
                    };
                    // A PONG to our own PING confirms what preceded it; any other PONG is the session's business.
                    if msg.command == "PONG" && msg.params.iter().any(|p| pacer.pong(p)) {
                        continue;
                    }
                    // Before the session: it knows our nick as it was before this message (a NICK of ours).
                    if let Some(r) = roster.as_mut() {
                        let ours = |n: &str| self.role.is_ours(n) || session.could_be_me(n);
                        r.handle(&msg, &session.nick, &session.isupport, &ours, Instant::now());
                    }
                    self.pass_on_due(roster, session).await;
                    for action in session.handle(msg) {
                        match action {
                            Action::Send(m) => pacer.wrote(write(w, &m).await?),
                            Action::Registered => {
                                pacer = Pacer::new(self.settings.pace.clone(), Instant::now());
                                if let Err(e) = self.role.registered(&session.nick).await {
                                    break_quit(w, "bridge error").await;
                                    return Err(e);
                                }
                                *ever_registered = true;
                                // Channels unlinked while the connection was down are not joined again.
                                if let Some(r) = roster.as_mut() {
                                    r.keep_only(|c| session.wants(c));
                                }
                                self.set_view(session);
                                tracing::info!(connection = %label, nick = %session.nick, "IRC registered");
                                in_channels_by = Some(Instant::now() + JOIN_WAIT);
                            }
                            // Connected means the connection hears its channels: a line said before it rejoined
                            // them after a reconnect would never reach the bridge.
                            Action::InChannels => {
                                in_channels_by = None;
                                Health::publish(&self.health, Health::Connected);
                            }
                            Action::Joined(c) => {
                                self.set_view(session);
                                tracing::info!(connection = %label, channel = %c, "joined");
                            }
                            Action::JoinRefused { channel, reason } => {
                                tracing::warn!(connection = %label, %channel, %reason, "the server refused to let us into the channel");
                            }
                            Action::Left(c) => {
                                self.set_view(session);
                                tracing::warn!(connection = %label, channel = %c, "removed from channel");
                            }
                            Action::Privmsg { msg, target, text, notice } => {
                                self.role.privmsg(session, msg, &target, &text, notice).await;
                            }
                            Action::BadCredentials(reason) => return Ok(Outcome::BadCredentials(reason)),
                            Action::Closing(reason) => tracing::warn!(connection = %label, %reason, "server closing link"),
                        }
                    }
                }
                c = ctl.recv() => {
                    let msgs = match c {
                        Some(Control::Join(ch)) => session.join(&ch),
                        Some(Control::Part(ch)) => session.part(&ch),
                        None => {
                            // The handle is gone (it said why through `stop`, if it could).
                            let reason = stop.borrow().clone().filter(|r| !r.is_empty());
                            quit(w, reader, reason.as_deref().unwrap_or(&self.settings.quit_message)).await;
                            return Ok(Outcome::Stopped);
                        }
                    };
                    for m in msgs {
                        pacer.wrote(write(w, &m).await?);
                    }
                }
                o = out.recv(), if queue.is_empty() && session.registered() => {
                    let Some(o) = o else {
                        let reason = stop.borrow().clone().filter(|r| !r.is_empty());
                        quit(w, reader, reason.as_deref().unwrap_or(&self.settings.quit_message)).await;
                        return Ok(Outcome::Stopped);
                    };
                    let n = o.lines.len();
                    let mut done = Some(o.done);
                    for (i, l) in o.lines.into_iter().enumerate() {
                        queue.push_back((l, if i + 1 == n { done.take() } else { None }));
                    }
                    if let Some(d) = done {
                        let _ = d.send(Ok(()));
                    }
                }
                _ = tokio::time::sleep_until(wake.unwrap_or(now).into()), if wake.is_some() => {}
                _ = tokio::time::sleep_until(members_due.unwrap_or(now).into()), if members_due.is_some() => {
                    self.pass_on_due(roster, session).await;
                }
                _ = tokio::time::sleep_until(in_channels_by.unwrap_or(now).into()), if in_channels_by.is_some() => {
                    in_channels_by = None;
                    tracing::warn!(connection = %label, "some JOINs unanswered after {JOIN_WAIT:?}: connected anyway");
                    Health::publish(&self.health, Health::Connected);
                }
                _ = stop.changed() => {
                    let reason = stop.borrow().clone().filter(|r| !r.is_empty());
                    quit(w, reader, reason.as_deref().unwrap_or(&self.settings.quit_message)).await;
                    return Ok(Outcome::Stopped);
                }
            }
        }
    }
}

/// An open connection: its two halves, the lines waiting for the flood window, and whether it registered.
struct Open {
    reader: Reader,
    w: Writer,
    queue: VecDeque<(Message, Option<Done>)>,
    ever_registered: bool,
}

/// Sends QUIT, lets the server act on it (it closes the link) before closing our side — otherwise it may see the
/// close first and show "Client closed connection" instead of the reason —, ignoring errors.
async fn quit(w: &mut Writer, reader: &mut Reader, reason: &str) {
    let _ = write(w, &Message::new("QUIT", &[reason])).await;
    let _ = tokio::time::timeout(QUIT_WAIT, async { while let Ok(Some(_)) = reader.next().await {} }).await;
    let _ = w.shutdown().await;
}

/// Sends QUIT and closes the stream, ignoring errors (the connection is going away anyway).
async fn break_quit(w: &mut Writer, reason: &str) {
    let _ = write(w, &Message::new("QUIT", &[reason])).await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

/// Writes `m` and CRLF; returns the bytes written.
async fn write(w: &mut Writer, m: &Message) -> Result<usize, String> {
    let mut line = m.to_line();
    line.push_str("\r\n");
    w.write_all(line.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    // TLS buffers records: push them out now.
    w.flush().await.map_err(|e| format!("write: {e}"))?;
    Ok(line.len())
}

/// The bytes `m` takes on the wire, CRLF included.
fn wire_len(m: &Message) -> usize {
    m.to_line().len() + 2
}

/// Reads IRC lines, bounded to the IRCv3 maximum (tags + 512): a longer line is consumed and skipped, so a server
/// sending garbage cannot exhaust memory. Cancel-safe ([`bridge_net::lines::LineReader`]), so it can sit in a
/// `select!`.
pub(crate) struct LineReader<R>(bridge_net::lines::LineReader<R>);

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self(bridge_net::lines::LineReader::new(inner, MAX_TAGS + MAX_LINE))
    }

    /// The next line without CR/LF; `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<String>, String> {
        loop {
            match self.0.next().await.map_err(|e| format!("read: {e}"))? {
                Some(LineRead::Text(l)) => return Ok(Some(l)),
                Some(LineRead::TooLong) => tracing::warn!("IRC line longer than {} bytes skipped", MAX_TAGS + MAX_LINE),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_split_reads_are_kept() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = LineReader::new(rx);
        let writer = tokio::spawn(async move {
            tx.write_all(b"PING :a\r\nPRIV").await.expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.write_all(b"MSG #c :hi\r\n").await.expect("write");
            let huge = vec![b'x'; 20_000];
            tx.write_all(&huge).await.expect("write");
            tx.write_all(b"\r\nPING :b\n").await.expect("write");
        });
        assert_eq!(r.next().await, Ok(Some("PING :a".into())));
        // A cancelled read in the middle of a line loses nothing.
        let cancelled = tokio::time::timeout(Duration::from_millis(10), r.next()).await;
        assert!(cancelled.is_err());
        assert_eq!(r.next().await, Ok(Some("PRIVMSG #c :hi".into())));
        assert_eq!(r.next().await, Ok(Some("PING :b".into())), "the 20 kB line was skipped");
        writer.await.expect("writer");
        assert_eq!(r.next().await, Ok(None));
    }
}
