//! A standby daemon (`bridge.postgres_standby = true`): while another daemon holds the PostgreSQL store's leader
//! lease, this one waits for it, and says so on the admin address — nothing else runs, no account connects.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /health` | 503 `standby` |
//! | `GET /v1/status` | 503 `{"error": "standby: …"}` (the `status` command prints it) |
//!
//! systemd hears `STATUS=standby…` and no READY until the lease is taken: a standby unit needs
//! `TimeoutStartSec=infinity` (docs/operations.md). Once the lease is this daemon's, the standby listener closes and
//! the daemon starts as usual: it reloads the outbox and delivers what the old active daemon left pending.

use crate::listener::{self, Limits, Plain};
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What `/v1/status` says while waiting.
pub const STANDBY_STATUS: &str =
    "standby: another mimi-bridge holds the PostgreSQL store's leader lease; this one takes over when it stops";

/// The standby listener; [`Standby::stop`] closes it.
pub struct Standby {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Standby {
    /// Listens on `addr` (the admin address) until stopped.
    pub fn serve(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = listener::bind(addr)?;
        let (stop, mut stopped) = watch::channel(false);
        let app = Router::new().route("/health", get(health)).route("/v1/status", get(status));
        let task = tokio::spawn(async move {
            let stopped = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            listener::serve("admin", listener, Plain, app, Limits::ADMIN, stopped).await;
        });
        crate::notify::status("standby: waiting for the leader lease");
        tracing::info!(%addr, "standby: waiting for the PostgreSQL store's leader lease; /health says standby");
        Ok(Self { stop, task })
    }

    /// Closes the listener (so that the admin API can bind the address) and waits until it is closed.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

async fn health() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "standby\n").into_response()
}

async fn status() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "error": STANDBY_STATUS }))).into_response()
}
