//! The appservice API the homeserver calls (Matrix application service API v1), as an axum [`Router`].
//!
//! * `PUT /_matrix/app/v1/transactions/{txnId}`: decoded with ruma's `push_events` request type and handed to the
//!   [`Transactions`] handler; answered 200 only once the handler says its events are durably accepted, 500
//!   otherwise (the homeserver retries). A transaction id answered 200 before is answered 200 again without
//!   processing (the last [`SEEN_TXNS`] ids are remembered; the core also deduplicates by event id, so a
//!   redelivery after a restart doubles nothing). Transactions are processed one at a time, in order.
//! * `GET /_matrix/app/v1/users/{userId}`: 200 for a ghost id the handler accepts (it creates it), 404 otherwise.
//! * `POST /_matrix/app/v1/ping`: 200.
//! * `GET /_matrix/app/v1/rooms/{alias}`: 404 (no alias namespace); anything else 404 `M_UNRECOGNIZED`.
//!
//! Every request must carry the `hs_token` (`Authorization: Bearer`, or the legacy `access_token` query
//! parameter), compared in constant time: 401 `M_UNAUTHORIZED` without one, 403 `M_FORBIDDEN` with a wrong one.
//! The router is served by the daemon's bounded listener (connection caps, header and idle timeouts).

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use ruma::api::IncomingRequest;
use ruma::api::appservice::event::push_events;
use serde_json::json;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;

/// How many answered transaction ids are remembered.
pub const SEEN_TXNS: usize = 4096;
/// The largest transaction body taken (Synapse sends at most 100 events of at most 64 KiB, plus ephemeral data).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// What the appservice API hands its work to.
#[async_trait]
pub trait Transactions: Send + Sync + 'static {
    /// Processes a transaction (its events, and the to-device messages, device list changes and key counts of
    /// end-to-end encryption); `Ok` once its events are durably accepted (or deliberately dropped).
    async fn handle(&self, txn: push_events::v1::Request) -> Result<(), String>;
    /// Whether `user_id` is a user of the namespace that may exist; creates it if so.
    async fn query_user(&self, user_id: &str) -> bool;
}

struct AppState {
    hs_token: String,
    handler: Arc<dyn Transactions>,
    seen: Mutex<Seen>,
}

/// Answered transaction ids, oldest first.
#[derive(Default)]
struct Seen {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Seen {
    fn insert(&mut self, txn: String) {
        if self.set.insert(txn.clone()) {
            self.order.push_back(txn);
        }
        while self.order.len() > SEEN_TXNS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// The appservice API, checking `hs_token` and handing work to `handler`.
pub fn router(hs_token: &str, handler: Arc<dyn Transactions>) -> Router {
    let state = Arc::new(AppState { hs_token: hs_token.to_owned(), handler, seen: Mutex::new(Seen::default()) });
    Router::new()
        .route("/_matrix/app/v1/transactions/{txn_id}", put(transaction))
        .route("/_matrix/app/v1/users/{user_id}", get(query_user))
        .route("/_matrix/app/v1/rooms/{alias}", get(query_alias))
        .route("/_matrix/app/v1/ping", post(ping))
        .fallback(unrecognized)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A Matrix error answer.
fn error(status: StatusCode, errcode: &str, message: &str) -> Response {
    (status, axum::Json(json!({"errcode": errcode, "error": message}))).into_response()
}

fn ok() -> Response {
    (StatusCode::OK, axum::Json(json!({}))).into_response()
}

/// `None` when the request carries the right `hs_token`; the error answer otherwise.
fn unauthorized(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Option<Response> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let query =
        uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")).map(percent_decode));
    match bearer.or(query) {
        None => Some(error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", "missing hs_token")),
        Some(t) if bool::from(t.as_bytes().ct_eq(state.hs_token.as_bytes())) => None,
        Some(_) => Some(error(StatusCode::FORBIDDEN, "M_FORBIDDEN", "wrong hs_token")),
    }
}

async fn transaction(
    State(state): State<Arc<AppState>>,
    Path(txn_id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    if let Some(denied) = unauthorized(&state, &headers, &uri) {
        return denied;
    }
    let mut req = Request::builder().method(Method::PUT).uri(uri);
    if let Some(h) = req.headers_mut() {
        *h = headers;
    }
    let body_bytes = body.clone();
    let request =
        match req.body(body).map_err(|e| e.to_string()).and_then(|r| {
            push_events::v1::Request::try_from_http_request(r, &[txn_id.as_str()]).map_err(|e| e.to_string())
        }) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, "M_BAD_JSON", &format!("not a transaction: {e}")),
        };
    // Synapse numbers transactions from its database again after a restart (with SQLite, from the highest id of
    // the transactions it still holds — none once all were answered): an id alone does not make a transaction
    // seen before, its id and content together do.
    let key = format!("{}:{:016x}", request.txn_id, {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body_bytes.hash(&mut h);
        h.finish()
    });
    // One transaction at a time: the homeserver sends them in order and waits for each answer.
    let mut seen = state.seen.lock().await;
    if seen.set.contains(&key) {
        tracing::debug!(txn = %request.txn_id, "transaction seen before; not processed again");
        return ok();
    }
    tracing::debug!(txn = %request.txn_id, events = request.events.len(), "transaction");
    let txn_id = request.txn_id.clone();
    match state.handler.handle(request).await {
        Ok(()) => {
            seen.insert(key);
            ok()
        }
        Err(e) => {
            tracing::warn!(txn = %txn_id, error = %e, "transaction not accepted; the homeserver will retry");
            error(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "not accepted yet")
        }
    }
}

async fn query_user(
    State(state): State<Arc<AppState>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if let Some(denied) = unauthorized(&state, &headers, &uri) {
        return denied;
    }
    if state.handler.query_user(&user_id).await {
        ok()
    } else {
        error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such user")
    }
}

async fn query_alias(State(state): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> Response {
    unauthorized(&state, &headers, &uri).unwrap_or_else(|| error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no aliases"))
}

async fn ping(State(state): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> Response {
    unauthorized(&state, &headers, &uri).unwrap_or_else(ok)
}

async fn unrecognized(State(state): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> Response {
    unauthorized(&state, &headers, &uri)
        .unwrap_or_else(|| error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "unrecognized request"))
}

/// Decodes `%XX` escapes (invalid ones are kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
