//! The admin HTTP API on `[admin].listen`: status, portal list/link/unlink/invite, `/metrics` and `/health`.
//!
//! | method and path | auth | answer |
//! |---|---|---|
//! | `GET /health` | none | 200 `ready` once started and while the event loop answers; 503 otherwise (`standby` on a PostgreSQL standby, [`crate::standby`]) |
//! | `GET /metrics` | token (unless `admin.public_metrics`) | Prometheus text format 0.0.4 |
//! | `GET /v1/status` | token | [`StatusReport`] |
//! | `GET /v1/portals` | token | [`PortalList`] |
//! | `POST /v1/link` | token | body [`LinkRequest`]; 200, 404 (no portal), 409 (linked elsewhere), 422 (bad ids or no such account) |
//! | `POST /v1/unlink` | token | body [`UnlinkRequest`]; 200, 404 (not linked) |
//! | `POST /v1/invite` | token | body [`InviteRequest`]; 200 with [`bridge_core::mls_rooms::Invited`] (who was added in one commit, who was in the group already, who was left out and why), 404 (no portal), 422 (a bad portal name, more than 500 users, a room hosted elsewhere, a commit the hub refused), 503 (the room unavailable, or the commit failed) |
//!
//! Auth is `Authorization: Bearer TOKEN`, compared in constant time. The token is never logged. Errors are JSON
//! `{"error": "..."}`.

use crate::secrets::Secret;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bridge_api::connector::Health;
use bridge_api::{AccountId, LegId, PortalId};
use bridge_core::portal::LegStatus;
use bridge_core::router::{RouteError, RouterHandle};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Whether the daemon is ready, shared by `/health`, the watchdog and the metrics.
#[derive(Debug, Default)]
pub struct Readiness {
    started: AtomicBool,
    stopping: AtomicBool,
    loop_ok: AtomicBool,
}

impl Readiness {
    /// Startup finished.
    pub fn set_started(&self) {
        self.loop_ok.store(true, Ordering::Release);
        self.started.store(true, Ordering::Release);
    }
    /// A graceful shutdown began.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }
    /// The last event-loop probe's result.
    pub fn set_loop_ok(&self, ok: bool) {
        self.loop_ok.store(ok, Ordering::Release);
    }
    /// Ready: started, not stopping, event loop answering.
    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Acquire)
            && !self.stopping.load(Ordering::Acquire)
            && self.loop_ok.load(Ordering::Acquire)
    }
    fn reason(&self) -> &'static str {
        if self.stopping.load(Ordering::Acquire) {
            "stopping"
        } else if !self.started.load(Ordering::Acquire) {
            "starting"
        } else if !self.loop_ok.load(Ordering::Acquire) {
            "event loop not answering"
        } else {
            "ready"
        }
    }
}

/// What the handlers share.
pub struct AdminState {
    /// The router.
    pub router: RouterHandle,
    /// Readiness.
    pub readiness: Arc<Readiness>,
    /// SHA-256 of the token (comparing digests hides the token's length too).
    token_digest: [u8; 32],
    /// The metrics recorder, if installed.
    pub metrics: Option<PrometheusHandle>,
    /// Serve `/metrics` without the token.
    pub public_metrics: bool,
    /// Accounts named in the config (link refuses others unless forced).
    pub configured_accounts: Vec<AccountId>,
    /// When the daemon started.
    pub started: Instant,
    /// The portals' room of record, for each portal's MLS epoch (absent in tests that run without MLS).
    pub rooms: Option<std::sync::Arc<bridge_core::MlsRooms>>,
    /// The store, as the status report shows it.
    pub store: StoreReport,
    /// What the store has made durable, for `/metrics`.
    pub store_stats: Option<Arc<mimi_store::CommitStats>>,
}

impl AdminState {
    /// Creates the state; only a digest of `token` is kept.
    pub fn new(
        router: RouterHandle,
        readiness: Arc<Readiness>,
        token: &Secret,
        metrics: Option<PrometheusHandle>,
        public_metrics: bool,
        configured_accounts: Vec<AccountId>,
    ) -> Self {
        Self {
            router,
            readiness,
            token_digest: Sha256::digest(token.expose().as_bytes()).into(),
            metrics,
            public_metrics,
            configured_accounts,
            started: Instant::now(),
            rooms: None,
            store: StoreReport::default(),
            store_stats: None,
        }
    }

    /// Reports the store's backend and leader lease, and counts its durable writes in `/metrics`.
    pub fn with_store(mut self, kv: &dyn mimi_store::KvStore, stats: Arc<mimi_store::CommitStats>) -> Self {
        self.store =
            StoreReport { backend: kv.backend().to_owned(), role: "active".into(), lease_epoch: kv.lease_epoch() };
        self.store_stats = Some(stats);
        self
    }

    /// Reports each portal's MLS epoch as the hub of its room (`rooms`' provider) has it.
    pub fn with_rooms(mut self, rooms: std::sync::Arc<bridge_core::MlsRooms>) -> Self {
        self.rooms = Some(rooms);
        self
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(given) =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        digest.ct_eq(&self.token_digest).into()
    }
}

/// One account in [`StatusReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountStatus {
    /// `network.name`.
    pub account: String,
    /// Its health.
    pub health: Health,
}

/// One portal in [`StatusReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortalReport {
    /// The portal's name.
    pub name: String,
    /// Events waiting in its queue.
    pub queue_depth: usize,
    /// The MLS epoch of its group as this daemon's hub has it (`null` until the MLS engine reports one, and for a
    /// room another provider hosts).
    pub mls_epoch: Option<u64>,
    /// Its legs with their delivery counters.
    pub legs: Vec<LegReport>,
}

/// One leg in [`PortalReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegReport {
    /// `network.name` of the account.
    pub account: String,
    /// The room's native name.
    pub room: String,
    /// Deliveries waiting (in the outbox).
    pub pending: u64,
    /// Deliveries done since start.
    pub delivered: u64,
    /// Deliveries given up since start.
    pub failed: u64,
}

/// The store in [`StatusReport`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreReport {
    /// `redb`, `sled` or `postgres`.
    pub backend: String,
    /// `active`: this daemon writes the store (a standby answers 503 instead of a report, see
    /// [`crate::standby`]).
    pub role: String,
    /// PostgreSQL: the epoch of the leader lease this daemon holds (grows by one at every takeover).
    pub lease_epoch: Option<i64>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// As `/health`.
    pub ready: bool,
    /// The daemon's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Every running account.
    pub accounts: Vec<AccountStatus>,
    /// Every portal.
    pub portals: Vec<PortalReport>,
    /// The store and this daemon's role.
    #[serde(default)]
    pub store: StoreReport,
}

/// One portal in [`PortalList`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortalEntry {
    /// The portal's name.
    pub name: String,
    /// Its legs.
    pub legs: Vec<LegRef>,
}

/// A leg by account and room.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct LegRef {
    /// `network.name` of the account.
    pub account: String,
    /// The room's native name.
    pub room: String,
}

/// `GET /v1/portals`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortalList {
    /// Every portal, by name.
    pub portals: Vec<PortalEntry>,
}

/// `POST /v1/link`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// The portal.
    pub portal: String,
    /// `network.name` of the account.
    pub account: String,
    /// The room's native name.
    pub room: String,
    /// Link even though the account is neither configured nor running (its deliveries wait in the outbox).
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/invite`: native users added to a portal's room in one commit of the bridge's leaf.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// The portal.
    pub portal: String,
    /// The users: URIs, or names of this provider's users; at most
    /// [`bridge_core::mls_rooms::MAX_INVITED_AT_ONCE`].
    pub users: Vec<String>,
}

/// `POST /v1/unlink`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlinkRequest {
    /// `network.name` of the account.
    pub account: String,
    /// The room's native name.
    pub room: String,
}

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}

fn fail(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

fn route_error(e: RouteError) -> Response {
    let status = match &e {
        RouteError::UnknownPortal(_) | RouteError::UnknownLeg(_) => StatusCode::NOT_FOUND,
        RouteError::AlreadyLinked { .. } => StatusCode::CONFLICT,
        RouteError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    fail(status, e.to_string())
}

/// The API's routes.
pub fn router(state: Arc<AdminState>) -> Router {
    let protected = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/portals", get(portals))
        .route("/v1/link", post(link))
        .route("/v1/unlink", post(unlink))
        .route("/v1/invite", post(invite))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(protected)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

async fn require_token(State(st): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    if !st.authorized(req.headers()) {
        let mut r = fail(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

async fn health(State(st): State<Arc<AdminState>>) -> Response {
    let code = if st.readiness.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, format!("{}\n", st.readiness.reason())).into_response()
}

async fn metrics(State(st): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if !st.public_metrics && !st.authorized(&headers) {
        let mut r = fail(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let Some(h) = &st.metrics else {
        return fail(StatusCode::SERVICE_UNAVAILABLE, "metrics recorder not installed");
    };
    metrics::gauge!(crate::telemetry::READY).set(if st.readiness.is_ready() { 1.0 } else { 0.0 });
    if let Some(stats) = &st.store_stats {
        metrics::counter!(crate::telemetry::STORE_WRITES).absolute(stats.writes());
        metrics::counter!(crate::telemetry::STORE_BATCHES).absolute(stats.batches());
        metrics::counter!(crate::telemetry::STORE_BYTES).absolute(stats.bytes());
    }
    let body = crate::telemetry::render(h);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

fn leg_report(l: &LegStatus) -> LegReport {
    LegReport {
        account: l.leg.account.to_string(),
        room: l.leg.room.clone(),
        pending: l.pending,
        delivered: l.delivered,
        failed: l.failed,
    }
}

/// Builds the status report of `GET /v1/status`.
pub async fn status_report(st: &AdminState) -> StatusReport {
    let mut accounts: Vec<AccountStatus> = st
        .router
        .accounts()
        .iter()
        .map(|a| AccountStatus { account: a.id().to_string(), health: a.health().borrow().clone() })
        .collect();
    accounts.sort_by(|a, b| a.account.cmp(&b.account));
    let portals = st
        .router
        .status()
        .await
        .into_iter()
        .map(|p| PortalReport {
            name: p.id.to_string(),
            queue_depth: p.queue_depth,
            mls_epoch: st.rooms.as_ref().and_then(|r| r.provider().epoch(&r.room_of(&p.id)).ok()),
            legs: p.legs.iter().map(leg_report).collect(),
        })
        .collect();
    StatusReport {
        ready: st.readiness.is_ready(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: st.started.elapsed().as_secs(),
        accounts,
        portals,
        store: st.store.clone(),
    }
}

async fn status(State(st): State<Arc<AdminState>>) -> Json<StatusReport> {
    Json(status_report(&st).await)
}

async fn portals(State(st): State<Arc<AdminState>>) -> Json<PortalList> {
    let mut by_portal: BTreeMap<String, Vec<LegRef>> =
        st.router.status().await.into_iter().map(|p| (p.id.to_string(), Vec::new())).collect();
    for (leg, portal) in st.router.legs() {
        by_portal
            .entry(portal.to_string())
            .or_default()
            .push(LegRef { account: leg.account.to_string(), room: leg.room });
    }
    let portals = by_portal
        .into_iter()
        .map(|(name, mut legs)| {
            legs.sort();
            PortalEntry { name, legs }
        })
        .collect();
    Json(PortalList { portals })
}

fn parse_leg(account: &str, room: &str) -> Result<LegId, String> {
    let account = AccountId::parse(account).map_err(|e| e.to_string())?;
    LegId::new(account, room).map_err(|e| e.to_string())
}

async fn link(State(st): State<Arc<AdminState>>, Json(req): Json<LinkRequest>) -> Response {
    let leg = match parse_leg(&req.account, &req.room) {
        Ok(l) => l,
        Err(e) => return fail(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let portal = match PortalId::new(req.portal.clone()) {
        Ok(p) => p,
        Err(e) => return fail(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let running = st.router.account(&leg.account).is_some();
    if !running && !st.configured_accounts.contains(&leg.account) && !req.force {
        return fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no account {} is configured or running (force links it anyway)", leg.account),
        );
    }
    if let Err(e) = st.router.link_and_join(leg.clone(), &portal).await {
        return route_error(e);
    }
    tracing::info!(%leg, %portal, "linked through the admin API");
    (
        StatusCode::OK,
        Json(serde_json::json!({ "linked": { "portal": portal, "account": req.account, "room": req.room } })),
    )
        .into_response()
}

async fn unlink(State(st): State<Arc<AdminState>>, Json(req): Json<UnlinkRequest>) -> Response {
    let leg = match parse_leg(&req.account, &req.room) {
        Ok(l) => l,
        Err(e) => return fail(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let portal = st.router.portal_of(&leg);
    if let Err(e) = st.router.unlink_and_leave(&leg).await {
        return route_error(e);
    }
    tracing::info!(%leg, "unlinked through the admin API");
    (
        StatusCode::OK,
        Json(serde_json::json!({ "unlinked": { "portal": portal, "account": req.account, "room": req.room } })),
    )
        .into_response()
}

async fn invite(State(st): State<Arc<AdminState>>, Json(req): Json<InviteRequest>) -> Response {
    let Some(rooms) = st.rooms.clone() else {
        return fail(StatusCode::SERVICE_UNAVAILABLE, "this daemon runs without MLS rooms");
    };
    let portal = match PortalId::new(req.portal.clone()) {
        Ok(p) => p,
        Err(e) => return fail(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    if !st.router.portal_ids().contains(&portal) {
        return route_error(RouteError::UnknownPortal(portal));
    }
    // In a task of its own: a client that goes away, or a shutdown, ends this handler, and must not stop the
    // invitation between its commit and the hub's answer.
    let invited = {
        let portal = portal.clone();
        tokio::spawn(async move { rooms.invite(&portal, &req.users).await })
    };
    let invited = invited.await.unwrap_or_else(|e| Err(bridge_api::RoomError::Unavailable(e.to_string())));
    match invited {
        Ok(done) => {
            let (added, left_out) = (done.added.len(), done.left_out.len());
            tracing::info!(%portal, added, left_out, "invited through the admin API");
            (StatusCode::OK, Json(done)).into_response()
        }
        Err(e @ bridge_api::RoomError::Refused(_)) => fail(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e) => fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
