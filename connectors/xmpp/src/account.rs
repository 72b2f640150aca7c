//! IO shell: the account. Keeps one stream up (reconnecting with jittered backoff), joins the linked MUCs on
//! every new stream, feeds what the rooms say through [`crate::inbound`] to the core, and performs outbound
//! events rendered by [`crate::outbound`], waiting for the room's reflection to learn the stanza-id the room gave
//! each message (the id XMPP users' replies, reactions and retractions will name).

use crate::client::{self, Login};
use crate::component::{self, ComponentLogin};
use crate::inbound::{Outcome, RoomState, Said};
use crate::link::{ConnectError, Link};
use crate::outbound::{self, Voice};
use crate::puppets::{self, Puppet, Puppets};
use crate::{catchup, selfping};
use async_trait::async_trait;
use bridge_api::capability::Capabilities;
use bridge_api::connector::{Delivery, SendError};
use bridge_api::event::{InboundEvent, Membership, OutboundEvent, OutboundKind};
use bridge_api::{Account, AccountContext, AccountId, ConnectorError, Health, LegId, NativeId};
use bridge_net::backoff::Backoff;
use minidom::Element;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, FullJid, Jid};
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

/// How long `send` waits for the room to reflect a message.
const REFLECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `join` waits for the room to confirm.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `send` waits for a room's catch-up (the archive walk after a join).
const CATCHUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How many origin-ids of our own stanzas are remembered to recognise their reflections.
const OWN_ORIGINS: usize = 4096;
/// Most bytes of one room's live messages held while its archive is read (beyond it, as beyond
/// [`Settings::catchup_hold`] messages: see [`Held`]).
const HELD_BYTES: usize = 4 << 20;
/// Most stanza-ids remembered of messages passed on while a room's dropped messages wait for a walk (see
/// [`Held::passed`]).
const PASSED_MAX: usize = 10_000;
/// Inbound events waiting, in the order they came, for their attachments to be fetched and for the core
/// ([`deliver_inbound`]). When it is full the stream waits.
const INBOUND_QUEUE: usize = 256;

/// How the account attaches to the server.
#[derive(Debug, Clone)]
pub enum Attach {
    /// Client mode: one account relays everyone.
    Client(Login),
    /// Component mode: a puppet occupant per bridged user.
    Component(ComponentLogin),
}

/// The settings an account runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How to attach.
    pub attach: Attach,
    /// The nick the bridge uses in every room.
    pub nick: String,
    /// What the account can express.
    pub capabilities: Capabilities,
    /// How often each joined room is self-pinged (XEP-0410); an unanswered ping by the next one ends the stream.
    /// `None`: never.
    pub self_ping: Option<Duration>,
    /// Most live messages of one room held while its archive is read after a join (see [`Held`]).
    pub catchup_hold: usize,
}

#[derive(Default)]
struct State {
    rooms: HashMap<BareJid, RoomState>,
    nicks: HashMap<BareJid, String>,
    outbound: Option<mpsc::Sender<Stanza>>,
    pending: HashMap<String, oneshot::Sender<Result<Option<String>, String>>>,
    own_origins: HashSet<String>,
    own_order: VecDeque<String>,
    joined: HashMap<BareJid, Vec<oneshot::Sender<()>>>,
    /// Component mode: the component's own JID (the occupant that reads the rooms); `None` in client mode.
    me: Option<FullJid>,
    puppets: Puppets,
    puppet_joined: HashMap<FullJid, Vec<oneshot::Sender<Result<(), String>>>>,
    /// Archive queries in flight: query id → the room and the page so far (oldest first).
    catchup: HashMap<String, (BareJid, Vec<(String, xmpp_parsers::message::Message)>)>,
    /// Each room's walk back through its archive, while it lasts.
    walks: HashMap<BareJid, catchup::Walk>,
    /// Rooms whose archive was read since they were last joined.
    caught_up: HashSet<BareJid>,
    /// Sends waiting for a room's catch-up.
    catchup_waiters: HashMap<BareJid, Vec<oneshot::Sender<()>>>,
    /// origin-id → stanza-id of what the last catch-up of each room saw in its archive.
    archived_origins: HashMap<BareJid, HashMap<String, String>>,
    /// Rooms that refused an archive query (no MAM): a resend there cannot be checked.
    no_mam: HashSet<BareJid>,
    /// Live messages of a room that arrived while its archive was being read, in order: passed on after what the
    /// catch-up replays. Taken at once, they would become the walk's anchor (the newest message taken from the
    /// room) and hide what was said between the bridge's last message and its rejoin.
    held: HashMap<BareJid, Held>,
    /// Rooms whose current walk reads what a hold dropped (a walk after the one that followed the join): what it
    /// learns of our origin-ids adds to the join's, rather than replacing it.
    rewalks: HashSet<BareJid>,
    /// Rooms whose live messages are held, with their walk's number (from `walks_started`), so that a walk's
    /// deadline ends the hold of that walk and no later one.
    walk_ids: HashMap<BareJid, u64>,
    walks_started: u64,
    queries: u64,
    /// Self-pings in flight: iq id → the room.
    self_pings: HashMap<String, BareJid>,
}

impl State {
    fn remember_origin(&mut self, id: &str) {
        if self.own_origins.insert(id.to_owned()) {
            self.own_order.push_back(id.to_owned());
            while self.own_order.len() > OWN_ORIGINS {
                if let Some(old) = self.own_order.pop_front() {
                    self.own_origins.remove(&old);
                }
            }
        }
    }
}

struct Shared {
    id: AccountId,
    settings: Settings,
    ctx: AccountContext,
    state: Mutex<State>,
    health: watch::Sender<Health>,
    stop: watch::Sender<bool>,
    /// Resends into rooms without an archive, which may have doubled a message (see [`XmppAccount::send`]).
    possible_duplicates: AtomicU64,
    /// To [`deliver_inbound`]: what the rooms said, for the core.
    inbound: mpsc::Sender<InboundEvent>,
    /// The events queued for the core and not handed to it yet.
    in_flight: InFlight,
}

/// Events queued for the core and not handed to it yet, by leg and native id: a room's catch-up counts them as
/// taken (they are on their way), so that its walk back through the archive stops at the newest of them.
type InFlight = Arc<Mutex<HashSet<(LegId, NativeId)>>>;

fn lock_in_flight(in_flight: &InFlight) -> MutexGuard<'_, HashSet<(LegId, NativeId)>> {
    in_flight.lock().unwrap_or_else(|p| p.into_inner())
}

/// A room's live messages held during its catch-up, at most [`Settings::catchup_hold`] of them and [`HELD_BYTES`],
/// as the room sent them: they are translated only when they are passed on, after what the archive replays, so
/// that a correction of a replayed message finds it.
///
/// What does not fit is dropped when the archive has it (the room's stanza-id): once the walk is over and the
/// hold passed on, another walk reads it back from the archive, anchored at the newest message passed on — in
/// order, nothing lost (within what one walk reads, [`catchup::MAX_PAGES`] pages). A message without the room's stanza-id cannot be read again and goes on at once.
///
/// A walk whose archive does not answer within [`CATCHUP_TIMEOUT`] ends its hold early ([`walk_deadline`]): live
/// messages go on at once from then, ahead of what the archive will give back. With drops pending, their
/// stanza-ids are kept ([`Held::passed`]) so that the walks which read the dropped messages do not take them as
/// anchors (which would skip what was dropped before them).
#[derive(Default)]
struct Held {
    stanzas: Vec<xmpp_parsers::message::Message>,
    bytes: usize,
    /// Messages dropped because the hold was full: the walk after this one reads them.
    dropped: usize,
    /// Stanza-ids of live messages passed on at once while drops are pending (at most [`PASSED_MAX`]).
    passed: HashSet<String>,
}

impl Held {
    /// Holds `msg`, or gives it back if `max` messages or [`HELD_BYTES`] are held already.
    fn hold(&mut self, msg: xmpp_parsers::message::Message, max: usize) -> Option<xmpp_parsers::message::Message> {
        // The bodies and the payloads as serialised (what an occupant can make large), plus the envelope.
        let payloads: usize = msg.payloads.iter().map(|p| String::from(p).len()).sum();
        let size = msg.bodies.values().map(String::len).sum::<usize>() + payloads + 256;
        if self.stanzas.len() >= max || self.bytes + size > HELD_BYTES {
            return Some(msg);
        }
        self.bytes += size;
        self.stanzas.push(msg);
        None
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A client-mode account.
pub struct XmppAccount {
    shared: Arc<Shared>,
}

impl XmppAccount {
    /// Starts the account's connection task and returns at once.
    pub fn start(id: AccountId, settings: Settings, ctx: AccountContext) -> Self {
        let (health, _) = watch::channel(Health::Connecting);
        let (stop, stopped) = watch::channel(false);
        let (inbound, queue) = mpsc::channel(INBOUND_QUEUE);
        let in_flight = InFlight::default();
        tokio::spawn(deliver_inbound(id.clone(), ctx.clone(), queue, in_flight.clone(), stopped));
        let shared = Arc::new(Shared {
            id,
            settings,
            ctx,
            state: Mutex::default(),
            health,
            stop,
            possible_duplicates: AtomicU64::new(0),
            inbound,
            in_flight,
        });
        tokio::spawn(run(shared.clone()));
        Self { shared }
    }

    /// Component mode: `uri`'s puppet leaves `room`.
    async fn leave_puppet(&self, room: &BareJid, uri: &str) {
        let (puppet, out) = {
            let mut st = self.shared.state();
            (st.puppets.remove(room, uri), st.outbound.clone())
        };
        if let (Some(p), Some(out)) = (puppet, out)
            && let Ok(to) = room.with_resource_str(&p.nick)
        {
            let mut leave = Presence::unavailable().with_to(Jid::from(to));
            leave.from = Some(Jid::from(p.jid));
            let _ = out.send(Stanza::Presence(leave)).await;
        }
    }

    fn room_jid(&self, room: &str) -> Result<BareJid, ConnectorError> {
        BareJid::new(room).map_err(|e| ConnectorError::Room {
            account: self.shared.id.clone(),
            room: room.to_owned(),
            reason: format!("not a room JID: {e}"),
        })
    }
}

fn join_presence(room: &BareJid, nick: &str, from: Option<&FullJid>) -> Option<Stanza> {
    let to = room.with_resource_str(nick).ok()?;
    let mut p = Presence::available().with_to(Jid::from(to));
    p.from = from.cloned().map(Jid::from);
    // No room history on join: what was said before is not replayed (the archive is the catch-up path).
    p.payloads.push(
        Element::builder("x", xmpp_parsers::ns::MUC)
            .append(
                Element::builder("history", xmpp_parsers::ns::MUC)
                    .attr(minidom::rxml::xml_ncname!("maxstanzas").into(), "0"),
            )
            .build(),
    );
    Some(Stanza::Presence(p))
}

async fn run(shared: Arc<Shared>) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(120));
    let mut stop = shared.stop.subscribe();
    loop {
        if *stop.borrow() {
            break;
        }
        Health::publish(&shared.health, Health::Connecting);
        let link = match &shared.settings.attach {
            Attach::Client(login) => client::connect(login).await,
            Attach::Component(login) => component::connect(login).await,
        };
        let reason = match link {
            Ok(link) => {
                backoff.reset();
                let why = connection(&shared, link, &mut stop).await;
                disconnected(&shared);
                why
            }
            Err(ConnectError::Auth(reason)) | Err(ConnectError::Config(reason)) => {
                tracing::error!(account = %shared.id, %reason, "XMPP login refused; not retrying until reconfigured");
                Health::publish(&shared.health, Health::BadCredentials { reason });
                while !*stop.borrow() {
                    if stop.changed().await.is_err() {
                        break;
                    }
                }
                break;
            }
            Err(ConnectError::Other(reason)) => reason,
        };
        if *stop.borrow() {
            break;
        }
        let wait = backoff.next_delay();
        tracing::warn!(account = %shared.id, %reason, retry_in = ?wait, "XMPP connection lost");
        Health::publish(&shared.health, Health::BackingOff { retry_in: wait, reason });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
    Health::publish(&shared.health, Health::Stopped);
}

/// Forgets everything tied to the stream that ended: rooms must be joined again, pending sends are retried.
fn disconnected(shared: &Shared) {
    let mut st = shared.state();
    st.outbound = None;
    st.pending.clear();
    st.joined.clear();
    st.puppet_joined.clear();
    st.catchup.clear();
    st.walks.clear();
    // Never taken: the next catch-up finds them in the archive.
    st.held.clear();
    st.rewalks.clear();
    st.walk_ids.clear();
    st.caught_up.clear();
    st.catchup_waiters.clear();
    st.self_pings.clear();
    st.puppets.reset();
    for room in st.rooms.values_mut() {
        room.reset();
    }
}

/// Runs one stream until it ends; returns why.
async fn connection(shared: &Arc<Shared>, mut link: Link, stop: &mut watch::Receiver<bool>) -> String {
    let joins: Vec<Stanza> = {
        let mut st = shared.state();
        st.outbound = Some(link.outbound.clone());
        st.me = matches!(shared.settings.attach, Attach::Component(_)).then(|| link.jid.clone());
        let nicks = st.nicks.clone();
        let me = st.me.clone();
        st.rooms
            .keys()
            .filter_map(|r| join_presence(r, nicks.get(r).unwrap_or(&shared.settings.nick), me.as_ref()))
            .collect()
    };
    for j in joins {
        if link.outbound.send(j).await.is_err() {
            return "stream closed while joining".into();
        }
    }
    tracing::info!(account = %shared.id, jid = %link.jid, "XMPP stream up");
    Health::publish(&shared.health, Health::Connected);
    let mut pings = tokio::time::interval(shared.settings.self_ping.unwrap_or(Duration::from_secs(3600)));
    pings.reset();
    loop {
        tokio::select! {
            _ = pings.tick(), if shared.settings.self_ping.is_some() => {
                if self_ping(shared, &link.outbound).await.is_none() {
                    return "a MUC self-ping got no answer: the stream is dead".into();
                }
            }
            s = link.inbound.recv() => match s {
                Some(stanza) => handle(shared, stanza, &link.outbound).await,
                None => return "stream closed".into(),
            },
            _ = stop.changed() => {
                if *stop.borrow() {
                    return "shutdown".into();
                }
            }
        }
    }
}

async fn handle(shared: &Arc<Shared>, stanza: Stanza, out: &mpsc::Sender<Stanza>) {
    let to = match &stanza {
        Stanza::Message(m) => m.to.clone(),
        Stanza::Presence(p) => p.to.clone(),
        Stanza::Iq(_) => None,
    };
    let me = shared.state().me.clone();
    if let (Some(me), Some(Ok(to))) = (me, to.map(Jid::try_into_full))
        && to != me
    {
        puppet_stanza(shared, stanza, to, out).await;
        return;
    }
    let room_of_refusal = match &stanza {
        Stanza::Presence(p) if p.type_ == PresenceType::Error => p.from.as_ref().map(|f| f.to_bare()),
        _ => None,
    };
    let mut catchup_query = None;
    let outcome = match stanza {
        Stanza::Message(msg) => {
            let Some(room) = msg.from.as_ref().map(|f| f.to_bare()) else { return };
            let msg = {
                let mut st = shared.state();
                if !st.rooms.contains_key(&room) {
                    return;
                }
                if let Some((query, id, archived)) = catchup::archived(&msg, &room) {
                    if let Some((_, page)) = st.catchup.get_mut(&query).filter(|(q_room, _)| *q_room == room)
                        && page.len() < catchup::PAGE
                    {
                        page.push((id, archived));
                    }
                    return;
                }
                match hold(shared, &mut st, &room, msg) {
                    Some(msg) => msg,
                    None => return,
                }
            };
            let Some(outcome) = translate(shared, &room, msg) else { return };
            if let Outcome::Event(ev) = &outcome
                && let Some(NativeId(id)) = &ev.native_id
            {
                let mut st = shared.state();
                if let Some(held) = st.held.get_mut(&room).filter(|h| h.dropped > 0 || !h.passed.is_empty())
                    && held.passed.len() < PASSED_MAX
                {
                    held.passed.insert(id.clone());
                }
            }
            outcome
        }
        Stanza::Presence(p) => {
            let Some(room) = p.from.as_ref().map(|f| f.to_bare()) else { return };
            let mut st = shared.state();
            let nick = st.nicks.get(&room).cloned().unwrap_or_else(|| shared.settings.nick.clone());
            let State { rooms, puppets, .. } = &mut *st;
            let Some(r) = rooms.get_mut(&room) else { return };
            let outcome = r.presence(p, |n| n == nick || puppets.is_puppet_nick(&room, n));
            if outcome == Outcome::Joined {
                for w in st.joined.remove(&room).unwrap_or_default() {
                    let _ = w.send(());
                }
                // What was said while the bridge was away comes from the archive.
                st.caught_up.remove(&room);
                st.rewalks.remove(&room);
                catchup_query = Some(start_walk(shared, &mut st, &room));
            }
            outcome
        }
        Stanza::Iq(iq) => {
            let pinged = match &iq {
                Iq::Result { id, .. } | Iq::Error { id, .. } => shared.state().self_pings.remove(id),
                _ => None,
            };
            if let Some(room) = pinged {
                self_ping_answer(shared, room, &iq, out).await;
                return;
            }
            let done = match &iq {
                Iq::Result { id, .. } | Iq::Error { id, .. } => shared.state().catchup.remove(id),
                _ => None,
            };
            match done {
                Some((room, page)) => catchup_page(shared, room, page, &iq, out).await,
                None => answer_iq(iq, out).await,
            }
            return;
        }
    };
    if let Some(q) = catchup_query {
        let _ = out.send(q).await;
    }
    match outcome {
        Outcome::Event(ev) => submit(shared, *ev).await,
        Outcome::Reflection { origin_id, stanza_id } => {
            if let Some(w) = shared.state().pending.remove(&origin_id) {
                let _ = w.send(Ok(stanza_id));
            }
        }
        Outcome::Refused { origin_id, reason } => {
            tracing::warn!(account = %shared.id, %reason, "the room refused a bridged stanza");
            if let Some(w) = shared.state().pending.remove(&origin_id) {
                let _ = w.send(Err(reason));
            }
        }
        Outcome::JoinRefused { nick_conflict: true, .. } => {
            if let Some(room) = room_of_refusal {
                nick_conflict(shared, &room, out).await;
            }
        }
        Outcome::JoinRefused { nick_conflict: false, reason } => {
            // Not something another nick fixes (members only, banned…): the join fails with the room's reason.
            tracing::error!(account = %shared.id, %reason, "the room refused the bridge");
            if let Some(room) = room_of_refusal {
                shared.state().joined.remove(&room);
            }
        }
        Outcome::Joined => tracing::info!(account = %shared.id, "joined a room"),
        Outcome::Ignored(why) => tracing::trace!(account = %shared.id, why, "stanza ignored"),
    }
}

/// Sends a self-ping (XEP-0410) into every joined room; `None` if one sent at the previous tick is unanswered.
async fn self_ping(shared: &Shared, out: &mpsc::Sender<Stanza>) -> Option<()> {
    let pings: Vec<Stanza> = {
        let mut st = shared.state();
        if !st.self_pings.is_empty() {
            return None;
        }
        let me = st.me.clone();
        let joined: Vec<(BareJid, String)> = st
            .rooms
            .iter()
            .filter(|(_, r)| r.is_joined())
            .map(|(j, _)| (j.clone(), st.nicks.get(j).cloned().unwrap_or_else(|| shared.settings.nick.clone())))
            .collect();
        let mut pings = Vec::new();
        for (room, nick) in joined {
            let Ok(occupant) = room.with_resource_str(&nick) else { continue };
            st.queries += 1;
            let id = format!("selfping-{}", st.queries);
            let mut iq = selfping::ping(&occupant, &id);
            if let Iq::Get { from, .. } = &mut iq {
                *from = me.clone().map(Jid::from);
            }
            st.self_pings.insert(id, room);
            pings.push(Stanza::Iq(iq));
        }
        pings
    };
    for p in pings {
        let _ = out.send(p).await;
    }
    Some(())
}

/// Acts on a self-ping's answer: a room that forgot the bridge is joined again.
async fn self_ping_answer(shared: &Shared, room: BareJid, answer: &Iq, out: &mpsc::Sender<Stanza>) {
    if selfping::verdict(answer) != selfping::Verdict::NotJoined {
        return;
    }
    tracing::warn!(account = %shared.id, %room, "the room no longer has the bridge as an occupant; joining again");
    let join = {
        let mut st = shared.state();
        let nick = st.nicks.get(&room).cloned().unwrap_or_else(|| shared.settings.nick.clone());
        let me = st.me.clone();
        let Some(r) = st.rooms.get_mut(&room) else { return };
        r.reset();
        st.caught_up.remove(&room);
        join_presence(&room, &nick, me.as_ref())
    };
    if let Some(j) = join {
        let _ = out.send(j).await;
    }
}

/// Queues one event for the core (the bridge's own are not: the core would drop them), behind the events before
/// it ([`deliver_inbound`]).
async fn submit(shared: &Shared, ev: InboundEvent) {
    if ev.from_bridge {
        return;
    }
    let key = ev.native_id.clone().map(|n| (ev.leg.clone(), n));
    if let Some(k) = &key {
        lock_in_flight(&shared.in_flight).insert(k.clone());
    }
    if shared.inbound.send(ev).await.is_err() {
        if let Some(k) = &key {
            lock_in_flight(&shared.in_flight).remove(k);
        }
        tracing::warn!(account = %shared.id, "the account is stopping: an inbound event is left to the catch-up");
    }
}

/// Hands the rooms' events to the core in the order they came, each once its attachments are fetched into the
/// media store. It runs beside the stream: a slow download holds up the events after it (their order is kept)
/// but not the stream — self-pings, reflections of what the bridge sends and archive pages go on.
///
/// It stops when the account does (`stop`), even in the middle of a download. What it had not handed on then is
/// not bridged: messages come back with the next catch-up from a room's archive (the core has not taken them);
/// presence, nick changes and chat states are not replayed. An event whose handling panics (a bug) is dropped
/// with an error, and the task goes on with the next one.
async fn deliver_inbound(
    id: AccountId,
    ctx: AccountContext,
    mut queue: mpsc::Receiver<InboundEvent>,
    in_flight: InFlight,
    mut stop: watch::Receiver<bool>,
) {
    use futures::FutureExt as _;
    loop {
        let mut ev = tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            ev = queue.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        let key = ev.native_id.clone().map(|n| (ev.leg.clone(), n));
        let hand_on = std::panic::AssertUnwindSafe(async {
            if let bridge_api::InboundKind::Message { draft, .. } = &mut ev.kind {
                import_attachments(&id, &ctx, draft).await;
            }
            let kind = ev.kind.name();
            if let Err(e) = ctx.inbound.submit(ev).await {
                tracing::warn!(account = %id, kind, "the core refused an inbound event: {e}");
            }
        })
        .catch_unwind();
        let outcome = tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            outcome = hand_on => outcome,
        };
        if let Some(k) = &key {
            lock_in_flight(&in_flight).remove(k);
        }
        if outcome.is_err() {
            tracing::error!(account = %id, "handing an inbound event to the core panicked: the event is dropped");
        }
    }
}

/// Returns once the account is stopping (or gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Outbound mentions (see [`crate::mentions`]): `event` with its mention links held, and what they hold; `None`
/// when it has none. A mentioned user's nick here is their puppet's, or, for an XMPP user of this room, their
/// occupant's current nick.
fn hold_mentions(
    shared: &Shared,
    event: &OutboundEvent,
    room: &BareJid,
) -> Option<(OutboundEvent, Vec<(String, bool)>)> {
    let (OutboundKind::Message { draft, .. } | OutboundKind::Edit { draft, .. }) = &event.kind else { return None };
    if draft.format != bridge_api::event::TextFormat::Markdown {
        return None;
    }
    let (md, held) = {
        let st = shared.state();
        let nick_of = |uri: &str| -> Option<String> {
            if let Some(p) = st.puppets.get(room, uri).filter(|p| p.joined) {
                return Some(p.nick.clone());
            }
            let user = bridge_api::uri::LegacyUser::from_uri(uri, &shared.ctx.domain).ok()?;
            if user.account != shared.id {
                return None;
            }
            st.rooms.get(room)?.nick_of(&user.native_id)
        };
        crate::mentions::hold(&draft.body, nick_of)
    };
    if held.is_empty() {
        return None;
    }
    let mut held_event = event.clone();
    if let OutboundKind::Message { draft, .. } | OutboundKind::Edit { draft, .. } = &mut held_event.kind {
        draft.body = md;
    }
    Some((held_event, held))
}

/// Has the daemon's media store fetch each linked file (guarded against internal addresses, size-capped) and
/// keep it: the attachment then points at the store, and the core sends it on as a MIMI external part. A file
/// that cannot be fetched stays a link in the text, with the reason, never silently dropped.
async fn import_attachments(id: &AccountId, ctx: &AccountContext, draft: &mut bridge_api::event::MessageDraft) {
    let mut kept = Vec::new();
    for a in std::mem::take(&mut draft.attachments) {
        let why = match &ctx.media {
            None => "this bridge keeps no media store".to_owned(),
            Some(media) => match media.import(&a.url, a.filename.as_deref()).await {
                Ok(stored) => {
                    kept.push(stored);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(account = %id, url = %a.url, error = %e, "an attachment was not fetched");
                    // The room is told the kind of failure only: a fetch error can name internal addresses, and
                    // the bridge must not resolve them for room members.
                    match e {
                        bridge_api::media::MediaError::TooLarge { .. } => "too large".to_owned(),
                        bridge_api::media::MediaError::Full { .. } => "the bridge's media store is full".to_owned(),
                        bridge_api::media::MediaError::Io(_) => "it could not be fetched".to_owned(),
                    }
                }
            },
        };
        tracing::debug!(account = %id, url = %a.url, %why, "passed on as a link");
        if !draft.body.is_empty() {
            draft.body.push('\n');
        }
        draft.body.push_str(&format!("{} (file not bridged: {why})", a.url));
    }
    draft.attachments = kept;
}

/// During `room`'s walk, holds what an occupant said live (see [`Held`]); gives back what is to be translated now.
fn hold(
    shared: &Shared,
    st: &mut State,
    room: &BareJid,
    msg: xmpp_parsers::message::Message,
) -> Option<xmpp_parsers::message::Message> {
    if !st.walk_ids.contains_key(room) {
        return Some(msg);
    }
    let said = {
        let State { rooms, own_origins, .. } = &*st;
        rooms.get(room)?.said(&msg, |o| own_origins.contains(o))
    };
    let Some(said) = said else { return Some(msg) };
    // A room that refused its archive cannot give a dropped message back.
    let archived = matches!(said, Said::Archived(_)) && !st.no_mam.contains(room);
    let held = st.held.entry(room.clone()).or_default();
    // Once one is dropped, every later one the archive has is too (a smaller one held after it would anchor the
    // walk that reads it back past it).
    let msg = if archived && held.dropped > 0 { msg } else { held.hold(msg, shared.settings.catchup_hold)? };
    if archived {
        held.dropped += 1;
        if held.dropped == 1 {
            tracing::warn!(account = %shared.id, %room, held = held.stanzas.len(), bytes = held.bytes,
                    "too much said during the room's catch-up to hold: the rest is read from its archive after it");
        }
        return None;
    }
    tracing::warn!(account = %shared.id, %room, "a live message the room's archive cannot give back, during the \
                   room's catch-up, which is full: passed on at once, ahead of what the archive replays");
    Some(msg)
}

/// Translates a message of `room` (live, held or replayed from its archive) in the room's state; `None` when the
/// room is no longer joined.
fn translate(shared: &Shared, room: &BareJid, msg: xmpp_parsers::message::Message) -> Option<Outcome> {
    let mut st = shared.state();
    let nick = st.nicks.get(room).cloned().unwrap_or_else(|| shared.settings.nick.clone());
    let State { rooms, own_origins, puppets, .. } = &mut *st;
    let r = rooms.get_mut(room)?;
    Some(r.message(msg, |n| n == nick || puppets.is_puppet_nick(room, n), |o| own_origins.contains(o)))
}

/// Starts a walk back through `room`'s archive: holds its live messages meanwhile, and ends the hold at the
/// walk's deadline. Returns the walk's first query.
fn start_walk(shared: &Arc<Shared>, st: &mut State, room: &BareJid) -> Stanza {
    st.walks.insert(room.clone(), catchup::Walk::default());
    st.walks_started += 1;
    let walk = st.walks_started;
    st.walk_ids.insert(room.clone(), walk);
    tokio::spawn(walk_deadline(Arc::downgrade(shared), room.clone(), walk));
    archive_query(st, room, None)
}

/// The next archive query of `room`'s catch-up (the newest page, or the one before `before`).
fn archive_query(st: &mut State, room: &BareJid, before: Option<&str>) -> Stanza {
    st.queries += 1;
    // Unguessable as well as unique (the per-process random keys of the std hasher).
    let salt = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), st.queries);
    let query_id = format!("catchup-{}-{salt:016x}", st.queries);
    st.catchup.insert(query_id.clone(), (room.clone(), Vec::new()));
    let mut q = catchup::query(room, &query_id, before);
    if let Iq::Set { from, .. } = &mut q {
        *from = st.me.clone().map(Jid::from);
    }
    Stanza::Iq(q)
}

/// One page of a room's catch-up is complete (`answer` ends it): asks for the one before it, or ends the walk
/// (see [`catchup`]), passes on what was missed and lets the sends waiting for the room go.
async fn catchup_page(
    shared: &Arc<Shared>,
    room: BareJid,
    page: Vec<(String, xmpp_parsers::message::Message)>,
    answer: &Iq,
    out: &mpsc::Sender<Stanza>,
) {
    let (leg, passed) = {
        let st = shared.state();
        let Some(leg) = st.rooms.get(&room).map(|r| r.leg.clone()) else { return };
        (leg, st.held.get(&room).map(|h| h.passed.clone()).unwrap_or_default())
    };
    let known = |id: &str| {
        // Passed on live while dropped messages wait for this walk or a later one: known, but no anchor.
        if passed.contains(id) {
            return Some(false);
        }
        let native = NativeId(id.to_owned());
        // On its way to the core: as good as taken.
        if lock_in_flight(&shared.in_flight).contains(&(leg.clone(), native.clone())) {
            return Some(true);
        }
        shared.ctx.inbound.taken_from_leg(&leg, &native)
    };
    let (next, done) = {
        let mut st = shared.state();
        let State { walks, no_mam, .. } = &mut *st;
        let Some(walk) = walks.get_mut(&room) else { return };
        let step = match answer {
            Iq::Result { payload, .. } => {
                let end = payload.as_ref().and_then(catchup::page_end).unwrap_or_default();
                walk.page(page, &end, known)
            }
            _ => {
                if walk.is_fresh() {
                    tracing::warn!(account = %shared.id, %room, "the room has no archive: no catch-up, and a \
                                   resend after a lost stream cannot be checked");
                    no_mam.insert(room.clone());
                }
                catchup::Step::Done(walk.finish(known))
            }
        };
        match step {
            catchup::Step::More(before) => (Some(archive_query(&mut st, &room, Some(&before))), None),
            catchup::Step::Done(done) => {
                st.walks.remove(&room);
                st.walk_ids.remove(&room);
                st.caught_up.insert(room.clone());
                let rewalk = st.rewalks.remove(&room);
                let origins = st.archived_origins.entry(room.clone()).or_default();
                // A walk after a join replaces what the last join's walks learnt; one that reads what a hold
                // dropped adds to it (bounded by what a few walks read).
                if !rewalk || origins.len() > 4 * catchup::PAGE * catchup::MAX_PAGES {
                    origins.clear();
                }
                origins.extend(done.origins.iter().map(|(o, s)| (o.clone(), s.clone())));
                for w in st.catchup_waiters.remove(&room).unwrap_or_default() {
                    let _ = w.send(());
                }
                (None, Some(done))
            }
        }
    };
    if let Some(q) = next {
        let _ = out.send(q).await;
        return;
    }
    let Some(done) = done else { return };
    if done.no_anchor {
        tracing::info!(account = %shared.id, %room, seen = done.seen, "no known message in the room's archive: \
                       nothing replayed (first join, or more missed than one catch-up reads)");
    }
    if !done.replay.is_empty() {
        tracing::info!(account = %shared.id, %room, count = done.replay.len(), "catching up from the room's archive");
    }
    // Then what was said live during the walk, but for what the archive replayed already (said after the join,
    // before the archive's answer).
    let (held, live) = {
        let mut st = shared.state();
        let mut held = st.held.remove(&room).unwrap_or_default();
        let Some(r) = st.rooms.get(&room) else { return };
        let replayed: HashSet<String> = done.replay.iter().filter_map(|m| r.archive_id(m)).collect();
        let live: Vec<_> = std::mem::take(&mut held.stanzas)
            .into_iter()
            .filter(|m| r.archive_id(m).is_none_or(|id| !replayed.contains(&id)))
            .collect();
        (held, live)
    };
    for m in done.replay.into_iter().chain(live) {
        match translate(shared, &room, m) {
            Some(Outcome::Event(ev)) => submit(shared, *ev).await,
            Some(_) => {}
            None => return,
        }
    }
    if held.dropped > 0 {
        // Nothing newer than the hold has been passed on since (this runs on the stream's task), but for what a
        // deadline let go on live, noted in `passed`: the next walk anchors at the hold's last message, or at the
        // newest one before it, and reads the dropped ones.
        tracing::info!(account = %shared.id, %room, dropped = held.dropped,
            "reading what did not fit in the catch-up's hold from the room's archive");
        let query = {
            let mut st = shared.state();
            if !st.rooms.contains_key(&room) {
                return;
            }
            st.rewalks.insert(room.clone());
            st.held.insert(room.clone(), Held { passed: held.passed, ..Held::default() });
            start_walk(shared, &mut st, &room)
        };
        let _ = out.send(query).await;
    }
}

/// Stops holding `room`'s live messages if its walk number `walk` has not ended within [`CATCHUP_TIMEOUT`]: what was
/// held goes on now rather than wait for an archive that may never answer. The walk itself goes on, and replays
/// what it finds if the archive answers later.
///
/// It holds the account weakly: a stopped account (and the store behind its context) is not kept alive by it.
async fn walk_deadline(shared: std::sync::Weak<Shared>, room: BareJid, walk: u64) {
    tokio::time::sleep(CATCHUP_TIMEOUT).await;
    let Some(shared) = shared.upgrade() else { return };
    let held = {
        let mut st = shared.state();
        if st.walk_ids.get(&room) != Some(&walk) {
            return;
        }
        st.walk_ids.remove(&room);
        let mut held = st.held.remove(&room).unwrap_or_default();
        let stanzas = std::mem::take(&mut held.stanzas);
        // Dropped messages wait for the walk's end (and one more walk): what goes on meanwhile is noted (also
        // during a walk that reads dropped ones back, whose own hold ends here).
        if held.dropped > 0 || !held.passed.is_empty() {
            held.bytes = 0;
            st.held.insert(room.clone(), held);
        }
        stanzas
    };
    tracing::warn!(account = %shared.id, %room, held = held.len(),
        "the room's archive is slow to answer: live messages go on before its catch-up");
    for m in held {
        match translate(&shared, &room, m) {
            Some(Outcome::Event(ev)) => submit(&shared, *ev).await,
            Some(_) => {}
            None => return,
        }
    }
}

/// Waits until `room`'s catch-up is done: a send must see what the archive holds of its earlier attempts.
async fn caught_up(shared: &Shared, room: &BareJid) -> Result<(), SendError> {
    let wait = {
        let mut st = shared.state();
        if st.caught_up.contains(room) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        st.catchup_waiters.entry(room.clone()).or_default().push(tx);
        rx
    };
    match tokio::time::timeout(CATCHUP_TIMEOUT, wait).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(SendError::Retry("not in the room, or its archive is still being read".into())),
    }
}

/// Component mode: a stanza addressed to one of the puppets. The rooms are read through the component's own
/// occupant, so only what concerns the puppet itself counts here: its joins and the room's errors.
async fn puppet_stanza(shared: &Arc<Shared>, stanza: Stanza, to: FullJid, out: &mpsc::Sender<Stanza>) {
    match stanza {
        Stanza::Presence(p) => {
            let Some(room) = p.from.as_ref().map(|f| f.to_bare()) else { return };
            let refusal = {
                let mut st = shared.state();
                let State { rooms, puppets, puppet_joined, .. } = &mut *st;
                let Some(r) = rooms.get_mut(&room) else { return };
                let uri = puppets.uri_of(&room, &to).map(str::to_owned);
                let Some(puppet) = puppets.by_jid_mut(&room, &to) else { return };
                if let Some(joined) = puppets::self_presence(&p) {
                    puppet.joined = joined;
                    // Mentions of the puppet's nick are mentions of its user.
                    let nick = p.from.as_ref().and_then(|f| f.resource()).map(|n| n.to_string());
                    if let Some(nick) = nick {
                        r.set_bridged(&nick, uri.as_deref().filter(|_| joined));
                    }
                    if joined {
                        for w in puppet_joined.remove(&to).unwrap_or_default() {
                            let _ = w.send(Ok(()));
                        }
                    }
                    return;
                }
                match r.presence(p, |_| true) {
                    Outcome::JoinRefused { nick_conflict: true, .. } if puppet.nick.len() < puppets::MAX_NICK + 8 => {
                        puppet.nick.push('_');
                        Ok(join_presence(&room, &puppet.nick, Some(&puppet.jid)))
                    }
                    Outcome::JoinRefused { reason, .. } => Err(reason),
                    _ => return,
                }
            };
            match refusal {
                Ok(Some(join)) => {
                    let _ = out.send(join).await;
                }
                Ok(None) => {}
                Err(reason) => {
                    for w in shared.state().puppet_joined.remove(&to).unwrap_or_default() {
                        let _ = w.send(Err(reason.clone()));
                    }
                }
            }
        }
        Stanza::Message(m) => {
            let Some(room) = m.from.as_ref().map(|f| f.to_bare()) else { return };
            let outcome = {
                let mut st = shared.state();
                let State { rooms, own_origins, .. } = &mut *st;
                let Some(r) = rooms.get_mut(&room) else { return };
                if m.type_ != xmpp_parsers::message::MessageType::Error {
                    return;
                }
                r.message(m, |_| true, |o| own_origins.contains(o))
            };
            if let Outcome::Refused { origin_id, reason } = outcome {
                tracing::warn!(account = %shared.id, %reason, "the room refused a puppet's stanza");
                if let Some(w) = shared.state().pending.remove(&origin_id) {
                    let _ = w.send(Err(reason));
                }
            }
        }
        Stanza::Iq(iq) => answer_iq(iq, out).await,
    }
}

/// Component mode: the puppet of `sender` in `room`, joined (it joins now if it is not yet).
async fn ensure_puppet(
    shared: &Arc<Shared>,
    room: &BareJid,
    sender: &bridge_api::event::Sender,
    domain: &str,
) -> Result<Puppet, SendError> {
    let wanted = puppets::nick_for(&sender.display_name);
    let (wait, join, out) = {
        let mut st = shared.state();
        if let Some(p) =
            st.puppets.get(room, &sender.uri).filter(|p| p.joined && puppets::is_variant_of(&p.nick, &wanted))
        {
            return Ok(p.clone());
        }
        let Some(out) = st.outbound.clone() else { return Err(SendError::Retry("not connected".into())) };
        let puppet = match st.puppets.get(room, &sender.uri) {
            Some(p) if puppets::is_variant_of(&p.nick, &wanted) => p.clone(),
            // Its user was renamed: a presence to the new nick changes the puppet's nick (XEP-0045 §7.6).
            Some(p) => {
                tracing::info!(account = %shared.id, %room, from = %p.nick, to = %wanted, "a puppet changes nick");
                Puppet { nick: wanted.clone(), joined: false, ..p.clone() }
            }
            None => {
                let jid = puppets::jid_for(&sender.uri, domain).map_err(SendError::Rejected)?;
                Puppet { jid, nick: wanted, joined: false }
            }
        };
        st.puppets.insert(room, &sender.uri, puppet.clone());
        let (tx, rx) = oneshot::channel();
        st.puppet_joined.entry(puppet.jid.clone()).or_default().push(tx);
        (rx, join_presence(room, &puppet.nick, Some(&puppet.jid)), out)
    };
    if let Some(j) = join {
        out.send(j).await.map_err(|_| SendError::Retry("stream closed".into()))?;
    }
    match tokio::time::timeout(JOIN_TIMEOUT, wait).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(reason))) => return Err(SendError::Rejected(format!("the room refused the puppet: {reason}"))),
        _ => return Err(SendError::Retry("the room did not confirm the puppet's join".into())),
    }
    let puppet = shared
        .state()
        .puppets
        .get(room, &sender.uri)
        .cloned()
        .ok_or_else(|| SendError::Retry("the puppet left".into()))?;
    // Its occupant is the bridge's own: events from it are never bridged back.
    let occupant = format!("{room}/{}", puppet.nick);
    if let Err(e) = shared.ctx.register_ghost(&occupant, &sender.uri).await {
        tracing::warn!(account = %shared.id, "could not register a puppet as a ghost: {e}");
    }
    Ok(puppet)
}

/// Our nick is taken (or refused) in `room`: try again with an underscore appended.
async fn nick_conflict(shared: &Shared, room: &BareJid, out: &mpsc::Sender<Stanza>) {
    let join = {
        let mut st = shared.state();
        if !st.rooms.contains_key(room) || st.rooms.get(room).is_some_and(RoomState::is_joined) {
            return;
        }
        let nick = format!("{}_", st.nicks.get(room).cloned().unwrap_or_else(|| shared.settings.nick.clone()));
        if nick.len() > 64 {
            tracing::error!(account = %shared.id, %room, "cannot find a free nick in the room");
            return;
        }
        tracing::warn!(account = %shared.id, %room, %nick, "nick refused in the room; trying another");
        st.nicks.insert(room.clone(), nick.clone());
        join_presence(room, &nick, st.me.as_ref())
    };
    if let Some(j) = join {
        let _ = out.send(j).await;
    }
}

/// Answers pings (XEP-0199); every other request gets `service-unavailable`.
async fn answer_iq(iq: Iq, out: &mpsc::Sender<Stanza>) {
    let reply = match iq {
        Iq::Get { from, id, payload, .. } | Iq::Set { from, id, payload, .. } => {
            if payload.is("ping", xmpp_parsers::ns::PING) {
                Iq::Result { from: None, to: from, id, payload: None }
            } else {
                let error =
                    StanzaError::new(ErrorType::Cancel, DefinedCondition::ServiceUnavailable, "en", "not supported");
                Iq::Error { from: None, to: from, id, error, payload: None }
            }
        }
        _ => return,
    };
    let _ = out.send(Stanza::Iq(reply)).await;
}

#[async_trait]
impl Account for XmppAccount {
    fn id(&self) -> &AccountId {
        &self.shared.id
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.settings.capabilities.clone()
    }

    async fn join(&self, room: &str) -> Result<(), ConnectorError> {
        let jid = self.room_jid(room)?;
        let leg = LegId::new(self.shared.id.clone(), room).map_err(|e| ConnectorError::Room {
            account: self.shared.id.clone(),
            room: room.to_owned(),
            reason: e.to_string(),
        })?;
        let (wait, send) = {
            let mut st = self.shared.state();
            if st.rooms.get(&jid).is_some_and(RoomState::is_joined) {
                return Ok(());
            }
            st.rooms
                .entry(jid.clone())
                .or_insert_with(|| RoomState::new(leg, jid.clone()).with_domain(&self.shared.ctx.domain));
            let (tx, rx) = oneshot::channel();
            st.joined.entry(jid.clone()).or_default().push(tx);
            let nick = st.nicks.get(&jid).cloned().unwrap_or_else(|| self.shared.settings.nick.clone());
            (rx, st.outbound.clone().zip(join_presence(&jid, &nick, st.me.as_ref())))
        };
        // Not connected: the room is joined as soon as the stream is up.
        let Some((out, presence)) = send else { return Ok(()) };
        let _ = out.send(presence).await;
        match tokio::time::timeout(JOIN_TIMEOUT, wait).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(ConnectorError::Room {
                account: self.shared.id.clone(),
                room: room.to_owned(),
                reason: "the room did not confirm the join in time".into(),
            }),
        }
    }

    async fn leave(&self, room: &str) -> Result<(), ConnectorError> {
        let jid = self.room_jid(room)?;
        let out = {
            let mut st = self.shared.state();
            st.rooms.remove(&jid);
            // A room left is read no more: its walk ends, and what it held is not bridged.
            st.walks.remove(&jid);
            st.walk_ids.remove(&jid);
            st.held.remove(&jid);
            st.rewalks.remove(&jid);
            let nick = st.nicks.remove(&jid).unwrap_or_else(|| self.shared.settings.nick.clone());
            st.outbound.clone().zip(jid.with_resource_str(&nick).ok())
        };
        if let Some((out, to)) = out {
            let _ = out.send(Stanza::Presence(Presence::unavailable().with_to(Jid::from(to)))).await;
        }
        Ok(())
    }

    async fn send(&self, event: &OutboundEvent) -> Result<Delivery, SendError> {
        let room = BareJid::new(&event.leg.room).map_err(|e| SendError::Rejected(format!("not a room JID: {e}")))?;
        tracing::debug!(account = %self.shared.id, kind = event.kind.name(), %room, "sending");
        let puppet = match &self.shared.settings.attach {
            Attach::Client(_) => None,
            Attach::Component(login) => {
                if !self.shared.state().rooms.get(&room).is_some_and(RoomState::is_joined) {
                    return Err(SendError::Retry("not in the room (yet)".into()));
                }
                if let OutboundKind::Membership { change } = &event.kind {
                    if *change == Membership::Join {
                        ensure_puppet(&self.shared, &room, &event.sender, &login.domain).await?;
                    } else {
                        self.leave_puppet(&room, &event.sender.uri).await;
                    }
                    return Ok(Delivery::default());
                }
                Some(ensure_puppet(&self.shared, &room, &event.sender, &login.domain).await?)
            }
        };
        let voice = if puppet.is_some() { Voice::Puppet } else { Voice::Relay };
        let held = hold_mentions(&self.shared, event, &room);
        let to_render = held.as_ref().map_or(event, |(e, _)| e);
        let Some(mut rendered) = outbound::render(to_render, &room, voice)? else { return Ok(Delivery::default()) };
        if let Some((_, held)) = &held
            && let Some(body) = rendered.message.bodies.get_mut(&xmpp_parsers::message::Lang::new())
        {
            let (text, references) = crate::mentions::place(body, held, &room.to_string());
            *body = text;
            rendered.message.payloads.extend(references);
        }
        rendered.message.from = puppet.map(|p| Jid::from(p.jid));
        if let OutboundKind::Typing { .. } = event.kind {
            // A chat state is not stored and nothing refers to it: sent, not waited for.
            let out = self.shared.state().outbound.clone();
            let out = out.ok_or_else(|| SendError::Retry("not connected".into()))?;
            out.send(Stanza::Message(rendered.message)).await.map_err(|_| SendError::Retry("stream closed".into()))?;
            return Ok(Delivery::default());
        }
        caught_up(&self.shared, &room).await?;
        let origin = NativeId(rendered.origin_id.clone());
        let (out, reflection) = {
            let mut st = self.shared.state();
            if !st.rooms.get(&room).is_some_and(RoomState::is_joined) {
                return Err(SendError::Retry("not in the room (yet)".into()));
            }
            // Handed over again after a lost stream or a crash: if the room archived the earlier attempt, it is
            // there already (the origin-id is the core's txn id, stable across retries).
            if let Some(stanza_id) = st.archived_origins.get(&room).and_then(|o| o.get(&rendered.origin_id)) {
                tracing::info!(account = %self.shared.id, %stanza_id, "already in the room's archive: not sent again");
                let mut native_ids = vec![origin];
                if rendered.referenceable {
                    native_ids.insert(0, NativeId(stanza_id.clone()));
                }
                return Ok(Delivery { native_ids });
            }
            if st.no_mam.contains(&room) && st.own_origins.contains(&rendered.origin_id) {
                let n = self.shared.possible_duplicates.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(account = %self.shared.id, %room, possible_duplicates_total = n,
                               "resending into a room without an archive: the first attempt may have arrived");
            }
            let Some(out) = st.outbound.clone() else { return Err(SendError::Retry("not connected".into())) };
            st.remember_origin(&rendered.origin_id);
            // Every groupchat stanza comes back: as its reflection, or as the room's error (which must reach the
            // sender as "not delivered", never silence).
            let (tx, rx) = oneshot::channel();
            st.pending.insert(rendered.origin_id.clone(), tx);
            (out, rx)
        };
        out.send(Stanza::Message(rendered.message)).await.map_err(|_| SendError::Retry("stream closed".into()))?;
        match tokio::time::timeout(REFLECTION_TIMEOUT, reflection).await {
            Ok(Ok(Err(reason))) => Err(SendError::Rejected(format!("the room refused it: {reason}"))),
            Ok(Ok(Ok(Some(stanza_id)))) if rendered.referenceable => {
                tracing::debug!(account = %self.shared.id, %stanza_id, "reflected");
                Ok(Delivery { native_ids: vec![NativeId(stanza_id), origin] })
            }
            Ok(Ok(Ok(_))) => Ok(Delivery { native_ids: vec![origin] }),
            // The stream ended first: whether the room took it is unknown. The core hands it over again, and
            // the catch-up after the rejoin finds it in the archive if it arrived.
            Ok(Err(_)) => Err(SendError::Retry("the stream ended before the room confirmed the message".into())),
            Err(_) => {
                self.shared.state().pending.remove(&rendered.origin_id);
                tracing::warn!(account = %self.shared.id, "no reflection from the room; its stanza-id is unknown");
                Ok(Delivery { native_ids: vec![origin] })
            }
        }
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.shared.health.subscribe()
    }

    async fn shutdown(&self) {
        self.shared.stop.send_replace(true);
        let out = self.shared.state().outbound.take();
        drop(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> xmpp_parsers::message::Message {
        let mut m = xmpp_parsers::message::Message::groupchat(None);
        m.bodies.insert(xmpp_parsers::message::Lang::new(), text.to_owned());
        m
    }

    /// A hold takes at most `max` messages and HELD_BYTES of them; what does not fit is given back.
    #[test]
    fn a_hold_is_bounded_in_messages_and_bytes() {
        let mut held = Held::default();
        for i in 0..10 {
            assert!(held.hold(message(&format!("m{i}")), 10).is_none());
        }
        let back = held.hold(message("one more"), 10).map(|m| m.bodies[""].clone());
        assert_eq!(back, Some("one more".to_owned()));
        let big = "x".repeat(HELD_BYTES / 3);
        let mut held = Held::default();
        assert!(held.hold(message(&big), 1000).is_none() && held.hold(message(&big), 1000).is_none());
        assert!(held.hold(message(&"y".repeat(HELD_BYTES / 2)), 1000).is_some(), "past the byte cap");
        assert!(held.hold(message("small"), 1000).is_none(), "a small one still fits");
        assert_eq!(held.stanzas.len(), 3);
        assert!(held.bytes <= HELD_BYTES);
    }
}
