//! Prometheus metrics: the recorder behind the `metrics` facade and the names the bridge exports.
//!
//! `bridge-core` records through the `metrics` facade (no exporter dependency there); this module installs the
//! process-wide Prometheus recorder once and renders it for `GET /metrics`. Histograms get fixed buckets so they
//! are exported as real Prometheus histograms (not summaries) and can be aggregated across instances.

use bridge_api::AccountId;
use bridge_api::connector::Health;
use bridge_core::router::RouterHandle;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashSet;
use std::sync::OnceLock;

/// Inbound events per leg and outcome (`bridged`, `duplicate`, `echo`, `ephemeral`, `ignored`, `refused`).
pub const MESSAGES_IN: &str = "mimi_bridge_messages_in_total";
/// Deliveries per leg and result (`delivered`, `failed`).
pub const MESSAGES_OUT: &str = "mimi_bridge_messages_out_total";
/// Seconds from an event being queued for a leg to its delivery, per network.
pub const DELIVERY_LATENCY: &str = "mimi_bridge_delivery_latency_seconds";
/// Events waiting in a portal's queue.
pub const QUEUE_DEPTH: &str = "mimi_bridge_portal_queue_depth";
/// Deliveries waiting in a leg's outbox.
pub const LEG_PENDING: &str = "mimi_bridge_leg_pending";
/// Times an account connected again after having been connected.
pub const RECONNECTS: &str = "mimi_bridge_account_reconnects_total";
/// 1 while an account is connected, 0 otherwise.
pub const ACCOUNT_UP: &str = "mimi_bridge_account_up";
/// Errors by kind.
pub const ERRORS: &str = "mimi_bridge_errors_total";
/// The MLS epoch of a portal's group (set by the MLS engine).
pub const MLS_EPOCH: &str = "mimi_bridge_mls_epoch";
/// Sending generations the bridge's groups skipped since the daemon started (after an unclean stop, those its lost
/// state may have used).
pub const MLS_SKIPPED_GENERATIONS: &str = "mimi_bridge_mls_skipped_generations_total";
/// Portals whose MLS group is open (in memory) now.
pub const OPEN_PORTALS: &str = "mimi_bridge_open_portals";
/// 1 while the daemon is ready (the same condition as `/health`).
pub const READY: &str = "mimi_bridge_ready";
/// Connections accepted and closed at once because a listener's cap was reached, per listener (`mimi`, `admin`).
pub const CONNECTIONS_REFUSED: &str = "mimi_bridge_connections_refused_total";
/// Connections open on a listener (TLS handshakes in progress included), per listener.
pub const CONNECTIONS_OPEN: &str = "mimi_bridge_connections_open";
/// Durable writes of the store (one fsync, or one PostgreSQL transaction, each).
pub const STORE_WRITES: &str = "mimi_bridge_store_writes_total";
/// Batches those durable writes carried (group commit puts several in one write).
pub const STORE_BATCHES: &str = "mimi_bridge_store_batches_total";
/// Bytes those batches wrote (keys and values put, keys deleted).
pub const STORE_BYTES: &str = "mimi_bridge_store_bytes_written_total";
/// Always 1; the `version` label carries the build's version.
pub const BUILD_INFO: &str = "mimi_bridge_build_info";

/// Delivery latency buckets, in seconds: from a local hop to a network that was down for minutes.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle; `None` if another recorder was
/// installed first (metrics are then not served).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.to_owned()), LATENCY_BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    describe_counter!(MESSAGES_IN, "Inbound events per leg and outcome.");
    describe_counter!(MESSAGES_OUT, "Deliveries per leg and result.");
    describe_histogram!(DELIVERY_LATENCY, Unit::Seconds, "Time from queueing an event for a leg to its delivery.");
    describe_gauge!(QUEUE_DEPTH, "Events waiting in a portal's queue.");
    describe_gauge!(LEG_PENDING, "Deliveries waiting in a leg's outbox.");
    describe_counter!(RECONNECTS, "Times an account connected again after having been connected.");
    describe_gauge!(ACCOUNT_UP, "1 while the account is connected.");
    describe_counter!(ERRORS, "Errors by kind.");
    describe_gauge!(MLS_EPOCH, "MLS epoch of each portal's group.");
    describe_counter!(STORE_WRITES, "Durable writes of the store (one fsync or transaction each).");
    describe_counter!(STORE_BATCHES, "Batches carried by the store's durable writes.");
    describe_counter!(STORE_BYTES, "Bytes written by the store's durable writes (keys and values put, keys deleted).");
    describe_counter!(MLS_SKIPPED_GENERATIONS, "Sending generations skipped by the groups after unclean stops.");
    describe_gauge!(OPEN_PORTALS, "Portals whose MLS group is open (in memory).");
    describe_gauge!(READY, "1 while the daemon is ready (as /health).");
    describe_counter!(CONNECTIONS_REFUSED, "Connections closed at once because a listener's cap was reached.");
    describe_gauge!(CONNECTIONS_OPEN, "Connections open on a listener.");
    describe_gauge!(BUILD_INFO, "Build information.");
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Renders every metric in the Prometheus text format (0.0.4).
pub fn render(handle: &PrometheusHandle) -> String {
    handle.render()
}

/// Follows the health of every account registered with the router: `account_up`, reconnects and backoffs. Call
/// periodically; it starts one watcher per account it has not seen yet.
#[derive(Default)]
pub struct AccountWatch {
    seen: HashSet<AccountId>,
}

impl AccountWatch {
    /// Starts watchers for accounts registered since the last call.
    pub fn scan(&mut self, router: &RouterHandle) {
        for account in router.accounts() {
            let id = account.id().clone();
            if !self.seen.insert(id.clone()) {
                continue;
            }
            let mut rx = account.health();
            tokio::spawn(async move {
                let label = id.to_string();
                let (mut ever_up, mut was_up) = (false, false);
                loop {
                    let h = rx.borrow_and_update().clone();
                    let up = matches!(h, Health::Connected);
                    gauge!(ACCOUNT_UP, "account" => label.clone()).set(if up { 1.0 } else { 0.0 });
                    if up && !was_up {
                        if ever_up {
                            counter!(RECONNECTS, "account" => label.clone()).increment(1);
                        }
                        ever_up = true;
                    }
                    was_up = up;
                    match h {
                        Health::BackingOff { .. } => counter!(ERRORS, "kind" => "account_backing_off").increment(1),
                        Health::BadCredentials { .. } => {
                            counter!(ERRORS, "kind" => "account_bad_credentials").increment(1)
                        }
                        Health::Connected | Health::Connecting | Health::Stopped => {}
                    }
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
            });
        }
    }
}
