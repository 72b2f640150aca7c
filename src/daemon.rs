//! The daemon's lifecycle: start (store, router, portals, accounts, admin API, watchdog), run until a signal,
//! shut down gracefully within a bounded time.
//!
//! Shutdown order: `/health` turns 503 and systemd hears STOPPING; the router stops intake (connectors get
//! [`RouteError::Closed`](bridge_core::router::RouteError::Closed) and keep the event unacknowledged, so the network
//! redelivers it), every portal finishes what it accepted (durably: messages and their outbox entries), delivery
//! workers stop (undelivered events stay in the durable outbox and go out after the restart), accounts disconnect
//! politely, the store is flushed. If that takes longer than `bridge.shutdown_timeout`, the daemon says so and
//! exits non-zero; nothing accepted is lost either way, because acceptance means "committed".

use crate::admin::{self, AdminState, Readiness};
use crate::config::Config;
use crate::listener::{self, Limits, Plain};
use crate::networks::Network;
use crate::{data_dir, notify, telemetry};
use bridge_api::connector::AccountContext;
use bridge_api::{AccountId, LegId, PortalId};
use bridge_core::MlsRooms;
use bridge_core::repo::PortalRecord;
use bridge_core::router::{RouterConfig, RouterHandle};
use mimi_provider::JoinPolicy;
use mimi_store::CommitConfig;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Errors of the daemon's lifecycle.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The graceful shutdown did not finish in time.
#[derive(Debug, thiserror::Error)]
#[error("graceful shutdown did not finish within {0:?}; undelivered events stay in the outbox")]
pub struct ShutdownTimeout(pub Duration);

/// A running daemon.
pub struct Daemon {
    router: RouterHandle,
    readiness: Arc<Readiness>,
    admin_addr: SocketAddr,
    admin_stop: watch::Sender<bool>,
    admin_task: JoinHandle<()>,
    mimi_addr: SocketAddr,
    mimi_task: JoinHandle<()>,
    room: Arc<MlsRooms>,
    store_closed: watch::Receiver<bool>,
    store_failed: watch::Receiver<bool>,
    probe_task: JoinHandle<()>,
    /// The retention pruner (`[retention]`); stops with the listeners.
    pruner_task: JoinHandle<()>,
    shutdown_timeout: Duration,
}

impl Daemon {
    /// Starts everything `cfg` describes; returns once ready (READY has been sent to systemd).
    pub async fn start(cfg: &Config, networks: &[Box<dyn Network>]) -> Result<Daemon, Error> {
        let data_dir = &cfg.bridge.data_dir;
        // Everything the daemon creates from here on (store, key material, token) is private to its user.
        data_dir::private_umask();
        data_dir::check(data_dir).map_err(|e| e.to_string())?;
        let metrics = telemetry::install();
        if cfg.bridge.store == mimi_store::Backend::Sled {
            tracing::warn!(
                "store = \"sled\": sled 0.34 may fail to reopen after a crash or kill -9 (upstream sled#1509) and \
                 makes writes durable with sync_file_range, not fsync; redb is the crash-tested default — move with \
                 `mimi-bridge store export` / `store import --backend redb`"
            );
        }
        let store = open_store(cfg).await?;
        let store_closed = store.closed();
        let store_failed = store.failed();
        let store_kv = store.kv().clone();
        let store_stats = store.stats();
        data_dir::check(data_dir).map_err(|e| e.to_string())?;
        tracing::info!(data_dir = %data_dir.display(), backend = %cfg.bridge.store, "store open");

        let mut rc = RouterConfig::new(cfg.bridge.domain.get_ref().clone());
        rc.queue_depth = *cfg.bridge.queue_depth.get_ref();
        rc.max_event_bytes = cfg.bridge.max_event_bytes;
        rc.give_up_after = Duration::from_secs(*cfg.bridge.delivery_give_up_secs.get_ref());
        rc.hub_give_up_after = cfg.hub_give_up();
        // The room of record: one MLS group per portal, sequenced by this daemon's own MIMI hub.
        let domain = cfg.bridge.domain.get_ref().clone();
        let room = MlsRooms::open(store.clone(), &domain, JoinPolicy::Open).await?;
        room.set_key_update_interval(cfg.bridge.key_update_interval());
        room.set_idle_close(cfg.bridge.portal_idle_close());
        room.set_max_open(cfg.bridge.max_open_portals());
        let mut pruner =
            bridge_core::retention::Pruner::new(store.clone(), room.provider().clone(), cfg.retention.config());
        let router = RouterHandle::start(rc, store, room.clone()).await?;
        room.attach_router(router.clone());

        // The config's portals and legs are ensured at every start; links made at runtime persist in the store.
        for p in &cfg.portal {
            let id = PortalId::new(p.name.get_ref().clone())?;
            router.create_portal(PortalRecord { id: id.clone(), mls_identity: *p.mls_identity.get_ref() }).await?;
            room.set_leaf_policy(&id, p.leaf_policy());
            room.set_join_policy(&id, p.join_policy());
            if let Some(uri) = &p.room {
                room.set_remote_room(&id, uri.get_ref().clone());
            }
            for leg in &p.legs {
                let leg_id = LegId::new(AccountId::parse(leg.account.get_ref())?, leg.room.get_ref().clone())?;
                router.link(leg_id, &id).await?;
            }
        }

        // Every portal's group and room exist (and its GroupInfo is served) before anyone posts; a portal whose
        // room is ready stays closed until it is used. Portals of rooms hosted elsewhere join them once the
        // federation is up (in the background: their hub may be unreachable now).
        let (remote, hosted): (Vec<_>, Vec<_>) =
            router.portal_ids().into_iter().partition(|p| cfg.portal.iter().any(|c| c.remote_room_of(p).is_some()));
        for p in hosted {
            room.register_portal(&p).await?;
        }
        // One stop signal for both HTTP servers (admin API and MIMI endpoints).
        let (admin_stop, _) = watch::channel(false);
        let (mimi_addr, mimi_task, media) = serve_mimi(cfg, room.clone(), admin_stop.subscribe()).await?;
        for p in remote {
            room.register_portal(&p).await?;
        }
        pruner.register(Arc::new(crate::media::PrunedMedia(media.clone())));
        room.set_media(media.clone());

        let token = match cfg.admin_token()? {
            Some(t) => t,
            None => data_dir::write_admin_token(data_dir)?,
        };
        let configured = start_accounts(cfg, networks, &router, media).await?;

        let readiness = Arc::new(Readiness::default());
        let state = Arc::new(
            AdminState::new(
                router.clone(),
                readiness.clone(),
                &token,
                metrics.clone(),
                cfg.admin.public_metrics,
                configured,
            )
            .with_rooms(room.clone())
            .with_store(store_kv.as_ref(), store_stats),
        );
        let listener = crate::listener::bind(*cfg.admin.listen.get_ref())
            .map_err(|e| format!("admin.listen {}: {e}", cfg.admin.listen.get_ref()))?;
        let admin_addr = listener.local_addr()?;
        let mut stop_rx = admin_stop.subscribe();
        let app = admin::router(state);
        let limits = bounded("admin", Limits::ADMIN, listener::ADMIN_NOFILE_DIVISOR);
        let admin_task = tokio::spawn(async move {
            let stopped = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            listener::serve("admin", listener, Plain, app, limits, stopped).await;
        });
        tracing::info!(%admin_addr, max_connections = limits.max_connections, "admin API listening");

        let probe_task = tokio::spawn(probe(router.clone(), readiness.clone(), metrics, room.clone()));
        let pruner_task = tokio::spawn(pruner.run(admin_stop.subscribe()));
        readiness.set_started();
        let legs = router.legs().len();
        tracing::info!(portals = cfg.portal.len(), legs, "bridge running");
        notify::ready(&format!("bridging {legs} room(s)"));
        Ok(Daemon {
            router,
            readiness,
            admin_addr,
            admin_stop,
            admin_task,
            mimi_addr,
            mimi_task,
            room,
            store_closed,
            store_failed,
            probe_task,
            pruner_task,
            shutdown_timeout: Duration::from_secs(*cfg.bridge.shutdown_timeout.get_ref()),
        })
    }

    /// Turns `true` once the store is closed: after [`Daemon::shutdown`] and once every account handle a test
    /// attached is dropped. A test that restarts the daemon in the same process waits for it.
    pub fn store_closed(&self) -> watch::Receiver<bool> {
        self.store_closed.clone()
    }

    /// The router (tests attach accounts to it).
    pub fn router(&self) -> &RouterHandle {
        &self.router
    }

    /// The portals' room of record (MLS groups on this daemon's hub), for tests and status.
    pub fn room_of_record(&self) -> &Arc<MlsRooms> {
        &self.room
    }

    /// The address the MIMI endpoints and client API listen on (useful with port 0).
    pub fn mimi_addr(&self) -> SocketAddr {
        self.mimi_addr
    }

    /// The address the admin API listens on (useful with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// After a store failure: no drain (nothing could be recorded, and a delivery now may repeat what another
    /// daemon delivers), only the listeners finish the answers they are writing — the 500 of the request whose
    /// write failed among them — within their shutdown grace, at most 2 s.
    pub async fn stop_after_store_failure(self) {
        self.readiness.set_stopping();
        close_listeners(&self.admin_stop, self.admin_task, self.mimi_task, Duration::from_secs(2)).await;
    }

    /// Stops intake, drains, closes accounts, flushes; bounded by `bridge.shutdown_timeout`.
    pub async fn shutdown(self) -> Result<(), ShutdownTimeout> {
        self.readiness.set_stopping();
        notify::stopping(self.shutdown_timeout + Duration::from_secs(5));
        tracing::info!(timeout = ?self.shutdown_timeout, "stopping: intake closed, draining portal queues");
        let drained = tokio::time::timeout(self.shutdown_timeout, self.router.shutdown()).await;
        self.room.shutdown().await;
        close_listeners(&self.admin_stop, self.admin_task, self.mimi_task, Duration::from_secs(5)).await;
        self.probe_task.abort();
        // A pass in progress is stopped after 5 s: each of its batches is atomic, so a stopped pass leaves every
        // record either kept or removed whole, and the next start's pass goes on from there.
        let mut pruner = self.pruner_task;
        if tokio::time::timeout(Duration::from_secs(5), &mut pruner).await.is_err() {
            tracing::warn!("retention pass still running at exit: stopped");
            pruner.abort();
            let _ = pruner.await;
        }
        let _ = self.probe_task.await;
        let shutdown_timeout = self.shutdown_timeout;
        // The store closes when its last handle goes. Drop ours, then give the tasks that still hold one a moment
        // (portal workers seeing the stop, a group closing — which writes its last state), so that a daemon
        // started again in this process finds the store free. A handle held outside the daemon (a test's
        // attached account) keeps it open longer: that is the holder's to drop.
        let mut closed = self.store_closed.clone();
        drop((self.router, self.room, self.readiness));
        if tokio::time::timeout(Duration::from_secs(2), closed.wait_for(|c| *c)).await.is_err() {
            tracing::debug!("the store is still open: a handle outside the daemon holds it");
        }
        match drained {
            Ok(()) => {
                tracing::info!("stopped");
                Ok(())
            }
            Err(_) => Err(ShutdownTimeout(shutdown_timeout)),
        }
    }
}

/// Stops both HTTP listeners (admin API and MIMI endpoints) and waits, at most `within`, until they closed: each
/// closes what is still open after its shutdown grace (`Limits::shutdown_grace`).
async fn close_listeners(stop: &watch::Sender<bool>, admin: JoinHandle<()>, mimi: JoinHandle<()>, within: Duration) {
    let _ = stop.send(true);
    let listeners = async {
        let _ = admin.await;
        let _ = mimi.await;
    };
    if tokio::time::timeout(within, listeners).await.is_err() {
        tracing::warn!("listeners still open at exit");
    }
}

/// Starts every configured account through its network and joins its linked rooms. Returns the configured ids.
async fn start_accounts(
    cfg: &Config,
    networks: &[Box<dyn Network>],
    router: &RouterHandle,
    media: Arc<bridge_media::FileMediaStore>,
) -> Result<Vec<AccountId>, Error> {
    let mut ids = Vec::new();
    for (id, table) in cfg.resolved_accounts()? {
        let network = networks
            .iter()
            .find(|n| n.name() == id.network())
            .ok_or_else(|| format!("this build has no {} connector", id.network()))?;
        let state_dir = cfg.bridge.data_dir.join("accounts").join(id.to_string());
        let ctx = AccountContext::new(id.clone(), router.clone(), router.domain())
            .with_media(media.clone())
            .with_state_dir(state_dir);
        // A failure here is a configuration problem; unreachable servers never fail `start`.
        let account = network.start(id.clone(), table, ctx).await?;
        router.attach_account(account).await;
        tracing::info!(account = %id, "account started");
        ids.push(id);
    }
    Ok(ids)
}

/// Probes the event loop (a status round-trip through every portal task) and, while it answers, pets the
/// systemd watchdog; refreshes per-leg gauges and account watchers; runs the metrics upkeep.
async fn probe(
    router: RouterHandle,
    readiness: Arc<Readiness>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    room: Arc<MlsRooms>,
) {
    let watchdog = notify::watchdog_interval();
    // sd_watchdog_enabled(3): notify at half the interval. Without a watchdog, probe every 5 s for /health.
    let every = watchdog.map_or(Duration::from_secs(5), |w| (w / 2).max(Duration::from_millis(50)));
    let mut accounts = telemetry::AccountWatch::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokio::time::timeout(every, router.status()).await {
            Ok(portals) => {
                // Before the readiness: a ready daemon's metrics list it.
                metrics::counter!(telemetry::MLS_SKIPPED_GENERATIONS).absolute(room.skipped_generations());
                readiness.set_loop_ok(true);
                metrics::gauge!(telemetry::OPEN_PORTALS).set(room.open_count() as f64);
                for p in &portals {
                    if let Ok(epoch) = room.provider().epoch(&room.room_of(&p.id)) {
                        metrics::gauge!(telemetry::MLS_EPOCH, "portal" => p.id.to_string()).set(epoch as f64);
                    }
                    for l in &p.legs {
                        metrics::gauge!(telemetry::LEG_PENDING, "leg" => l.leg.to_string()).set(l.pending as f64);
                    }
                }
                if watchdog.is_some() && readiness.is_ready() {
                    notify::watchdog();
                }
            }
            Err(_) => {
                readiness.set_loop_ok(false);
                metrics::counter!(telemetry::ERRORS, "kind" => "event_loop_stalled").increment(1);
                tracing::error!(after = ?every, "a portal did not answer its status probe; withholding WATCHDOG");
            }
        }
        accounts.scan(&router);
        if let Some(h) = &metrics {
            h.run_upkeep();
        }
    }
}

/// Serves the MIMI endpoints, the native-client API and the media store's files on `[mimi] listen` until `stop`,
/// and starts the tasks that notify followers and catch up followed rooms. Plain HTTP only on loopback. Returns the
/// media store too (its links are under the listener's public URL).
async fn serve_mimi(
    cfg: &Config,
    room: Arc<MlsRooms>,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>, Arc<bridge_media::FileMediaStore>), Error> {
    use crate::mimi_http::{self, MimiState, Registration};
    let listen = *cfg.mimi.listen.get_ref();
    let tls = match (&cfg.mimi.tls_cert, &cfg.mimi.tls_key) {
        (Some(cert), Some(key)) => Some(crate::mimi_tls::MimiTls::load(
            cert.get_ref(),
            key.get_ref(),
            cfg.mimi.trust_anchors.as_ref().map(|t| t.get_ref().as_path()),
        )?),
        // check-config refuses one without the other, and plain HTTP off loopback.
        _ => None,
    };
    let registration = match cfg.mimi.registration {
        crate::config::Registration::Open => Registration::Open,
        crate::config::Registration::Closed => Registration::Closed,
        crate::config::Registration::Token => Registration::Token(
            cfg.registration_token()?.map(|s| s.expose().to_owned()).ok_or("mimi.registration_token missing")?,
        ),
    };
    let urls = cfg.mimi.peer.iter().map(|p| (p.domain.clone(), p.url.get_ref().clone())).collect();
    let peers = Arc::new(mimi_http::http::Peers::new(urls, tls.clone()));
    let listener = crate::listener::bind(listen).map_err(|e| format!("mimi.listen {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let public_url = cfg.mimi.public_url.clone().unwrap_or_else(|| format!("{scheme}://{addr}"));
    let media = crate::media::open(&cfg.media, &cfg.bridge.data_dir, &public_url)?;
    let state = MimiState {
        provider: room.provider().clone(),
        room: Some(room.clone()),
        public_url,
        registration,
        peers,
        quotas: cfg.quota.config(),
        media: Some(media.clone()),
    };
    let federation = state.federation();
    room.set_federation(federation.clone());
    let notifier = tokio::spawn(federation.clone().run_notifier());
    let resync = tokio::spawn(async move { federation.resync_followed().await });
    let app = mimi_http::router(state);
    let limits = bounded("mimi", cfg.mimi.limits(), listener::MIMI_NOFILE_DIVISOR);
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match tls {
            Some(tls) => listener::serve("mimi", listener, tls, app, limits, stopped).await,
            None => listener::serve("mimi", listener, Plain, app, limits, stopped).await,
        }
        notifier.abort();
        resync.abort();
        let _ = notifier.await;
        let _ = resync.await;
    });
    tracing::info!(%addr, tls = scheme == "https", max_connections = limits.max_connections,
        max_connections_per_ip = limits.max_connections_per_ip, header_timeout = ?limits.header_timeout,
        idle_timeout = ?limits.idle_timeout, "MIMI endpoints and client API listening");
    Ok((addr, task, media))
}

/// `limits` with the global cap lowered to `1/divisor` of the soft `RLIMIT_NOFILE` (logged when it is).
fn bounded(name: &str, limits: Limits, divisor: u64) -> Limits {
    let (bounded, lowered_by) = limits.within_nofile(divisor);
    if let Some(nofile) = lowered_by {
        tracing::warn!(
            listener = name,
            configured = limits.max_connections,
            max_connections = bounded.max_connections,
            nofile,
            "connection cap lowered to 1/{divisor} of RLIMIT_NOFILE; raise LimitNOFILE= to allow more"
        );
    }
    bounded
}

/// Opens the store. A PostgreSQL standby waits here for the leader lease, off the async executor, while the admin
/// address says "standby" ([`crate::standby`]).
async fn open_store(cfg: &Config) -> Result<mimi_store::Store, Error> {
    let postgres = cfg.postgres()?;
    let standby = postgres.as_ref().is_some_and(|p| p.wait_for_lease);
    let (data_dir, backend) = (cfg.bridge.data_dir.clone(), cfg.bridge.store);
    let mut opening = tokio::task::spawn_blocking(move || {
        bridge_core::open_store_at(&data_dir, Some(backend), postgres.as_ref(), CommitConfig::default())
    });
    let opened = if standby {
        // Answer on the admin address only if the lease is not taken at once.
        match tokio::time::timeout(Duration::from_millis(500), &mut opening).await {
            Ok(r) => r,
            Err(_) => {
                let addr = *cfg.admin.listen.get_ref();
                let waiting = crate::standby::Standby::serve(addr).map_err(|e| format!("admin.listen {addr}: {e}"))?;
                let r = opening.await;
                waiting.stop().await;
                r
            }
        }
    } else {
        opening.await
    };
    Ok(opened.map_err(|e| format!("opening the store: {e}"))??)
}

/// `mimi-bridge run`: the process around [`Daemon`]: logging, umask, runtime, signals, exit code.
pub fn run(cfg: Config) -> Result<ExitCode, Error> {
    crate::logging::init(&cfg.log);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let code = rt.block_on(async {
        let mut signals = Signals::new()?;
        let networks = crate::networks::built_in();
        let daemon = tokio::select! {
            d = Daemon::start(&cfg, &networks) => d?,
            s = signals.recv() => {
                tracing::info!(signal = s, "signal during startup: exiting");
                return Ok::<_, Error>(ExitCode::SUCCESS);
            }
        };
        let mut store_failed = daemon.store_failed.clone();
        tokio::select! {
            s = signals.recv() => {
                tracing::info!(signal = s, "signal received");
            }
            _ = store_failed.wait_for(|f| *f) => {
                // Fail-stop: state in memory is ahead of what is stored and nothing more can be recorded, so
                // nothing more is done either: no drain (a delivery now could not be recorded, and with a lost
                // PostgreSQL lease another daemon is active and delivers the same from the outbox). Exit, and let
                // the service manager restart us from what is stored (accepted events are durable).
                tracing::error!(
                    "the store can write nothing more (a durable write failed, or the PostgreSQL connection or \
                     leader lease was lost): exiting with status 1, without a drain, to restart from what is stored"
                );
                daemon.stop_after_store_failure().await;
                return Ok(ExitCode::FAILURE);
            }
        }
        tokio::select! {
            r = daemon.shutdown() => Ok(match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "exiting with status 1");
                    ExitCode::FAILURE
                }
            }),
            s = signals.recv() => {
                tracing::error!(signal = s, "second signal during shutdown: exiting now with status 1; accepted \
                    events are durable and go out after the restart");
                Ok(ExitCode::FAILURE)
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}

/// SIGTERM and SIGINT.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
